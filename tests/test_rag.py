"""Step 08 (helpers.rag): Chinese splitting, FAISS index round trip, BM25/hybrid retrieval on the QA set,
stuff/refine RetrievalQA chains (local HuggingFacePipeline and ChatOpenAI through the real course API
server), the CLI. Tiny answers are gibberish: the tests check the chain mechanics, not answer quality."""
import inspect
import json
import threading
import time

import pytest

from helpers import rag
from helpers.core import DATA_DIR, CourseError
from helpers.prompts import ALPACA_TEMPLATE

HEADER = ALPACA_TEMPLATE.split("{instruction}")[0]


@pytest.fixture(scope="session")
def embeddings():
    return rag.load_embeddings()


@pytest.fixture(scope="session")
def chunks():
    return rag.split_documents(rag.load_documents())


@pytest.fixture(scope="session")
def store(chunks, embeddings):
    return rag.build_index(chunks, embeddings)


def test_prompts_are_the_original_alpaca_texts():
    stuff = rag.qa_prompts("stuff")["prompt"]
    assert stuff.template == ALPACA_TEMPLATE.format(instruction="{context}\n{question}")
    assert set(stuff.input_variables) == {"context", "question"}
    refine = rag.qa_prompts("refine")
    assert set(refine["question_prompt"].input_variables) == {"context_str", "question"}
    assert set(refine["refine_prompt"].input_variables) == {"context_str", "question", "existing_answer"}
    assert refine["question_prompt"].template.startswith(HEADER) and "请根据以上背景知识" in refine["question_prompt"].template
    assert refine["refine_prompt"].template.endswith("### Response: ") and "已有的回答" in refine["refine_prompt"].template
    raw = rag.qa_prompts("stuff", template="raw")["prompt"]
    assert raw.template == "{context}\n{question}"
    with pytest.raises(CourseError, match="chain_type"):
        rag.qa_prompts("map_rerank")


def test_split_chinese_at_sentence_ends(chunks):
    text = (DATA_DIR / "docs" / "tea.txt").read_text(encoding="utf-8")
    tea = [c for c in chunks if c.metadata["source"].endswith("tea.txt")]
    assert len(tea) >= 3 and [c.metadata["chunk"] for c in tea] == list(range(len(tea)))
    assert all(len(c.page_content) <= rag.CHUNK_SIZE for c in chunks)
    # cut at Chinese sentence/clause punctuation (kept at the end), never mid-sentence
    assert all(c.page_content.rstrip()[-1] in "。！？；，：”" for c in tea), [c.page_content[-5:] for c in tea]
    assert all(c.page_content in text for c in tea)
    # the chunks cover the whole document (paragraph-aligned here: each paragraph < 600 chars)
    joined = "".join("".join(c.page_content.split()) for c in tea)
    assert all("".join(s.split()) in joined for s in text.split("。") if s.strip())
    # one long paragraph: cut at 。 with chunk_overlap=100 characters repeated in the next chunk
    long = "".join(f"这是第{i}句话，用来测试中文切分的重叠部分。" for i in range(60))
    parts = rag.text_splitter().split_text(long)
    assert len(parts) >= 3 and all(p.endswith("。") and len(p) <= 600 for p in parts)
    for a, b in zip(parts, parts[1:]):
        shared = next(n for n in range(min(len(a), len(b)), 0, -1) if a.endswith(b[:n]))
        assert 40 <= shared <= 100, shared
    small = rag.split_documents(rag.load_document(DATA_DIR / "docs" / "tea.txt"), 120, 20)
    assert len(small) > len(tea) and all(len(c.page_content) <= 120 for c in small)
    with pytest.raises(CourseError, match="chunk_overlap"):
        rag.text_splitter(100, 100)


def test_load_document_errors(tmp_path):
    with pytest.raises(CourseError, match="--file_path .*not found"):
        rag.load_document(tmp_path / "missing.txt")
    gbk = tmp_path / "gbk.txt"
    gbk.write_bytes("中文文档".encode("gbk"))
    with pytest.raises(CourseError, match="not UTF-8"):
        rag.load_document(gbk)
    doc = rag.load_document(DATA_DIR / "docs" / "panda.txt")
    assert len(doc) == 1 and "大熊猫" in doc[0].page_content


def test_index_round_trip(tmp_path, chunks, embeddings, store, monkeypatch):
    import pickle

    folder = rag.save_index(store, tmp_path / "index")
    assert {p.name for p in folder.iterdir()} == {"index.faiss", "docstore.json", "index_info.json", "SHA256SUMS"}

    def refuse(*args, **kwargs):
        raise AssertionError("load_index must not unpickle anything")

    monkeypatch.setattr(pickle, "load", refuse)
    monkeypatch.setattr(pickle, "loads", refuse)
    loaded = rag.load_index(folder, embeddings)
    monkeypatch.undo()
    # the same chunks (text and metadata) at the same vector positions as the store that was saved
    for i in range(len(chunks)):
        a = loaded.docstore.search(loaded.index_to_docstore_id[i])
        b = store.docstore.search(store.index_to_docstore_id[i])
        assert (a.page_content, a.metadata) == (b.page_content, b.metadata)
    assert loaded.index.ntotal == len(chunks)
    q = "乌龙茶属于什么茶？"
    assert [d.page_content for d in loaded.similarity_search(q, k=3)] == \
           [d.page_content for d in store.similarity_search(q, k=3)]
    with pytest.raises(CourseError, match="already exists"):
        rag.save_index(store, folder)
    from langchain_core.embeddings import DeterministicFakeEmbedding

    with pytest.raises(CourseError, match="same embedding model"):
        rag.load_index(folder, DeterministicFakeEmbedding(size=16))
    (folder / "docstore.json").write_bytes((folder / "docstore.json").read_bytes() + b" ")
    with pytest.raises(CourseError, match="changed since saving"):
        rag.load_index(folder, embeddings)
    (folder / "docstore.json").unlink()  # e.g. an index.pkl folder of an older course version
    with pytest.raises(CourseError, match="no docstore.json.*rebuild"):
        rag.load_index(folder, embeddings)


def test_jieba_tokens():
    toks = rag.jieba_tokens("高铁列车的最高时速是多少？LoRA 微调")
    assert "高铁" in toks and "lora" in toks and "？" not in toks and " " not in toks


def test_retrieval_table_hybrid_goal(chunks, embeddings, store):
    qa_set = rag.load_qa_set()
    assert len(qa_set) >= 20
    table = rag.evaluate_retrieval(rag.retrievers(chunks, embeddings, k=3, store=store), qa_set)
    assert list(table.index) == ["dense", "bm25", "hybrid"] and list(table.columns) == ["hit@1", "hit@3"]
    assert (table["hit@3"] >= table["hit@1"]).all()
    assert table.loc["hybrid", "hit@3"] >= 0.9, table
    assert table.loc["bm25", "hit@3"] >= 0.8, table


def test_qa_set_errors(tmp_path):
    bad = tmp_path / "qa.jsonl"
    bad.write_text('{"question": "问题", "passage": "答案"}\n\n{"question": "只有问题"}\n', encoding="utf-8")
    with pytest.raises(CourseError, match="line 3 .*'passage'"):
        rag.load_qa_set(bad)
    with pytest.raises(CourseError, match="not found"):
        rag.load_qa_set(tmp_path / "none.jsonl")
    with pytest.raises(CourseError, match="QA set is empty"):
        rag.evaluate_retrieval({}, [])


def test_is_hit_needs_the_whole_passage_from_the_right_doc(chunks):
    item = rag.load_qa_set()[0]
    holders = [c for c in chunks if rag.is_hit(c, item)]
    assert holders and all(c.metadata["source"].endswith(item["doc"]) for c in holders)
    assert not rag.is_hit(holders[0], dict(item, passage=item["passage"] + "不存在的尾巴"))


def test_qa_stuff_prompt_holds_retrieved_passages(llm, store):
    qa = rag.build_qa_chain(llm, store.as_retriever(search_kwargs={"k": 2}), "stuff")
    rec = rag.PromptRecorder()
    question = "大熊猫主要吃什么？"
    out = rag.answer(qa, question, callbacks=[rec])
    assert len(rec.prompts) == 1 and isinstance(out["answer"], str)
    assert len(out["sources"]) == 2
    prompt = rec.prompts[0]
    assert prompt.startswith(HEADER) and prompt.endswith(f"{question}\n\n### Response: ")
    assert all(src in prompt for src in out["sources"])
    assert [d.page_content for d in store.similarity_search(question, k=2)] == out["sources"]
    with pytest.raises(CourseError, match="empty"):
        rag.answer(qa, "  ")


def test_qa_refine_calls_llm_once_per_passage(llm, store):
    qa = rag.build_qa_chain(llm, store.as_retriever(search_kwargs={"k": 3}), "refine")
    rec = rag.PromptRecorder()
    out = rag.answer(qa, "绿茶是怎样制作的？", callbacks=[rec])
    assert len(rec.prompts) == 3 == len(out["sources"])
    assert "以下为背景知识" in rec.prompts[0] and out["sources"][0] in rec.prompts[0]
    for i in (1, 2):
        assert "已有的回答" in rec.prompts[i] and out["sources"][i] in rec.prompts[i]


def test_build_qa_reuses_saved_index_only_for_the_same_document(tmp_path, llm, embeddings):
    doc = DATA_DIR / "docs" / "high_speed_rail.txt"
    index_dir = tmp_path / "idx"
    rag.build_qa(doc, llm, embeddings, chain_type="stuff", index_dir=index_dir)
    stamp = (index_dir / "SHA256SUMS").stat().st_mtime_ns
    qa = rag.build_qa(doc, llm, embeddings, chain_type="stuff", index_dir=index_dir)
    out = rag.answer(qa, "高铁的最高运营时速是多少？")
    assert (index_dir / "SHA256SUMS").stat().st_mtime_ns == stamp  # reused, not rebuilt
    assert len(out["sources"]) == 1 and out["sources"][0] in doc.read_text(encoding="utf-8")
    other = DATA_DIR / "docs" / "panda.txt"  # another document: the old index must not answer for it
    qa = rag.build_qa(other, llm, embeddings, chain_type="stuff", index_dir=index_dir)
    out = rag.answer(qa, "大熊猫主要吃什么？")
    assert (index_dir / "SHA256SUMS").stat().st_mtime_ns != stamp
    assert out["sources"][0] in other.read_text(encoding="utf-8")
    with pytest.raises(CourseError, match="--file_path"):
        rag.build_qa(tmp_path / "missing.txt", llm, embeddings, index_dir=index_dir)


@pytest.fixture(scope="module")
def api_server(model_tok):
    """The course API server (helpers.api.create_app) under a real uvicorn on 127.0.0.1; yields /v1 URL."""
    import uvicorn

    from helpers.api import create_app
    from helpers.net import free_port

    model, tok = model_tok
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(model, tok), host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    for _ in range(200):
        if server.started:
            break
        time.sleep(0.05)
    assert server.started
    yield f"http://127.0.0.1:{port}/v1"
    server.should_exit = True
    thread.join(10)


@pytest.mark.server
def test_qa_through_chat_openai_and_api_server(api_server, store, model_tok):
    llm = rag.api_llm(api_server, max_tokens=8, temperature=0, tokenizer=model_tok[1])
    assert llm.get_num_tokens("大熊猫") == len(model_tok[1].encode("大熊猫", add_special_tokens=False))
    qa = rag.build_qa_chain(llm, store.as_retriever(search_kwargs={"k": 1}), "stuff", template="raw")
    rec = rag.PromptRecorder()
    out = rag.answer(qa, "大熊猫一天睡多久？", callbacks=[rec])
    assert isinstance(out["answer"], str) and len(out["sources"]) == 1
    # raw prompts: the server applies the Chinese-Alpaca template itself (no double wrapping)
    assert len(rec.prompts) == 1 and "### Instruction" not in rec.prompts[0] and out["sources"][0] in rec.prompts[0]


def test_cli_answers_with_sources_and_saves_index(tmp_path, capsys, monkeypatch, model_tok):
    from helpers import tiny

    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    argv = ["--file_path", str(DATA_DIR / "docs" / "tea.txt"), "--model_path", str(tiny.hf_model()),
            "--tokenizer_path", str(tiny.merged_tokenizers()["alpaca_hf"]), "--chain_type", "stuff",
            "--gpus", "", "--max_new_tokens", "4", "--index_dir", str(tmp_path / "idx"),
            "--question", "龙井茶产自哪里？"]
    assert rag.main(argv) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out["question"] == "龙井茶产自哪里？" and len(out["sources"]) == 1
    assert (tmp_path / "idx" / "SHA256SUMS").is_file()
    assert rag.main(["--file_path", str(tmp_path / "none.txt"), "--model_path", "x", "--openai_api_base", "y"]) == 2
    assert "exactly one of --model_path" in capsys.readouterr().err


def test_cli_empty_tokenizer_folder_is_a_message_not_a_traceback(tmp_path):
    """The issue's example: ``python -m helpers.rag ... --tokenizer_path <empty folder>`` printed a traceback and
    exited 1 (TokenizerError was no CourseError)."""
    import os
    import subprocess
    import sys

    from helpers import tiny
    from helpers.core import REPO_ROOT

    empty = tmp_path / "empty"
    empty.mkdir()
    proc = subprocess.run([sys.executable, "-m", "helpers.rag", "--file_path", str(DATA_DIR / "docs" / "tea.txt"),
                           "--model_path", str(tiny.hf_model()), "--tokenizer_path", str(empty), "--gpus", "",
                           "--question", "龙井茶产自哪里？"], capture_output=True, text=True, cwd=REPO_ROOT,
                          env={**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}, timeout=300)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert proc.stderr.startswith(f"error: {empty}: no tokenizer.model") and "Traceback" not in proc.stderr


def test_cli_flags_match_the_original_script():
    flags = {a.dest for a in rag.parser()._actions}
    assert {"file_path", "embedding_path", "model_path", "chain_type", "gpus"} <= flags
    assert rag.parser().get_default("chain_type") == "refine"


def test_langchain_signatures_did_not_drift():
    """The library calls this step makes: fail loudly if a LangChain upgrade renames them."""
    from langchain_classic.chains import RetrievalQA
    from langchain_classic.retrievers import EnsembleRetriever
    from langchain_community.retrievers import BM25Retriever
    from langchain_community.vectorstores import FAISS
    from langchain_text_splitters import RecursiveCharacterTextSplitter

    assert {"llm", "chain_type", "chain_type_kwargs"} <= set(inspect.signature(RetrievalQA.from_chain_type).parameters)
    assert list(inspect.signature(FAISS.__init__).parameters)[1:5] == ["embedding_function", "index", "docstore",
                                                                         "index_to_docstore_id"]
    assert "preprocess_func" in inspect.signature(BM25Retriever.from_documents).parameters
    assert {"retrievers", "weights", "id_key"} <= set(EnsembleRetriever.model_fields)
    assert "keep_separator" in inspect.signature(RecursiveCharacterTextSplitter.__init__).parameters or \
        "keep_separator" in inspect.signature(RecursiveCharacterTextSplitter.__mro__[1].__init__).parameters


def test_chinese_alpaca_2_prompts_are_the_llama_2_chat_format():
    """Chinese-LLaMA-Alpaca-2's langchain_qa.py wraps the QA prompt in the Llama-2 chat format with this system
    prompt (typed from the original script); the tokenizer adds BOS itself, so the text does not start with <s>."""
    want = ("[INST] <<SYS>>\nYou are a helpful assistant. 你是一个乐于助人的助手。\n<</SYS>>\n\n"
            "{context}\n{question} [/INST]")
    assert rag.qa_prompts("stuff", template="chinese-alpaca-2")["prompt"].template == want


def test_local_llm_template_follows_the_model(tmp_path):
    from types import SimpleNamespace

    from helpers.catalog import template_or_default

    assert template_or_default("/hf/models--hfl--chinese-alpaca-2-7b/snapshots/abc") == "chinese-alpaca-2"
    assert template_or_default(tmp_path) == "alpaca" and template_or_default(tmp_path, "llama-2-chat") == "llama-2-chat"
    args = rag.parser().parse_args(["--file_path", "x.txt", "--model_path", "m", "--template", "chinese-alpaca-2"])
    assert args.template == "chinese-alpaca-2"
