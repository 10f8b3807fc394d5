"""Step 09 (helpers.summarize): stuff / refine / map_reduce summarize chains with the original Chinese-Alpaca
prompts, offline-safe token counting for map_reduce, the CLI."""
import json
import subprocess
import sys

import pytest

from helpers import summarize as S
from helpers.chains import PromptRecorder
from helpers.core import DATA_DIR, CourseError
from helpers.prompts import ALPACA_TEMPLATE

HEADER = ALPACA_TEMPLATE.split("{instruction}")[0]
DOC = DATA_DIR / "summarize" / "meeting_notes.txt"


@pytest.fixture(scope="module")
def docs():
    return S.split_text(DOC.read_text(encoding="utf-8"), chunk_size=300, chunk_overlap=50)


def test_split_text(docs):
    assert len(docs) >= 5 and all(len(d.page_content) <= 300 for d in docs)
    with pytest.raises(CourseError, match="empty"):
        S.split_text(" \n")


def test_stuff_one_call_with_every_chunk(llm, docs):
    rec = PromptRecorder()
    summary = S.summarize(S.build_summarize_chain(llm, "stuff"), docs, callbacks=[rec])
    assert isinstance(summary, str) and len(rec.prompts) == 1
    prompt = rec.prompts[0]
    assert prompt.startswith(HEADER + "请为以下文字写一段摘要:\n")
    assert prompt.endswith("### Response: ") and all(d.page_content in prompt for d in docs)


def test_refine_one_call_per_chunk(llm, docs):
    rec = PromptRecorder()
    S.summarize(S.build_summarize_chain(llm, "refine"), docs, callbacks=[rec])
    assert len(rec.prompts) == len(docs)
    assert "请为以下文字写一段摘要" in rec.prompts[0] and docs[0].page_content in rec.prompts[0]
    for prompt, doc in zip(rec.prompts[1:], docs[1:]):
        assert "已有一段摘要" in prompt and doc.page_content in prompt and "请你生成一个最终的摘要" in prompt


def test_map_reduce_counts_with_course_tokenizer_and_collapses(llm, docs, model_tok):
    tok = model_tok[1]
    text = docs[0].page_content
    assert llm.get_num_tokens(text) == len(tok.encode(text, add_special_tokens=False)) > 0
    # generous budget: map every chunk, then one combine call
    rec = PromptRecorder()
    S.summarize(S.build_summarize_chain(llm, "map_reduce", token_max=4000), docs, callbacks=[rec])
    assert len(rec.prompts) == len(docs) + 1
    assert all(d.page_content in p for d, p in zip(docs, rec.prompts))
    # tight budget: the mapped summaries no longer fit -> extra collapse calls before the final combine
    final_prompt_tokens = llm.get_num_tokens(rec.prompts[-1])
    rec = PromptRecorder()
    chain = S.build_summarize_chain(llm, "map_reduce", token_max=final_prompt_tokens - 1, collapse_max_retries=5)
    S.summarize(chain, docs, callbacks=[rec])
    assert len(rec.prompts) > len(docs) + 1
    assert all(llm.get_num_tokens(p) <= final_prompt_tokens for p in rec.prompts[len(docs):])


def test_map_reduce_refuses_an_empty_token_counter(llm, model_tok):
    from langchain_huggingface import HuggingFacePipeline

    bare = HuggingFacePipeline(pipeline=llm.pipeline)  # LangChain's default counter: GPT-2 from the hub
    with pytest.raises(CourseError, match="token counter"):
        S.build_summarize_chain(bare, "map_reduce")
    zero = bare.model_copy(update={"custom_get_token_ids": lambda text: []})
    with pytest.raises(CourseError, match="0 tokens"):
        S.build_summarize_chain(zero, "map_reduce")
    fixed = S.ensure_token_counter(bare, tokenizer=model_tok[1])
    assert fixed.get_num_tokens("摘要") == len(model_tok[1].encode("摘要", add_special_tokens=False))
    with pytest.raises(CourseError, match="chain_type"):
        S.build_summarize_chain(llm, "map_rerank")


@pytest.mark.slow
def test_langchain_default_counter_is_empty_offline(tmp_path):
    """The trap this step guards against: offline, LangChain's GPT-2 fallback counts every text as 0 tokens
    (or fails) — never a real count."""
    code = ("from langchain_core.language_models.base import _get_token_ids_default_method as f\n"
            "try:\n    print(len(f('这是一个用于数词元的句子。')))\n"
            "except Exception as e:\n    print('error', type(e).__name__)\n")
    env = {"HF_HOME": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
           "PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    last = out.stdout.strip().splitlines()[-1]
    assert last == "0" or last.startswith("error"), out.stdout + out.stderr


def test_cli_each_chain_type(capsys, monkeypatch):
    from helpers import tiny

    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    base = ["--file_path", str(DOC), "--model_path", str(tiny.hf_model()), "--gpus", "",
            "--tokenizer_path", str(tiny.merged_tokenizers()["alpaca_hf"]), "--max_new_tokens", "4",
            "--chunk_size", "400", "--chunk_overlap", "50"]
    for chain_type in S.CHAIN_TYPES:
        assert S.main(base + ["--chain_type", chain_type]) == 0
        out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
        assert out["chain_type"] == chain_type and out["chunks"] >= 4 and isinstance(out["summary"], str)
    assert S.main(["--file_path", str(DOC / "missing"), "--model_path", str(tiny.hf_model())]) == 2
    assert "--file_path" in capsys.readouterr().err
    flags = {a.dest for a in S.parser()._actions}
    assert {"file_path", "model_path", "chain_type", "gpus"} <= flags and S.parser().get_default("chain_type") == "refine"


def test_cli_empty_tokenizer_folder_exits_2_with_a_message(tmp_path, capsys, monkeypatch):
    """``--tokenizer_path <empty folder>`` (the issue's example) is a message and exit 2, with a local model and
    with an API server (where the tokenizer only counts tokens; nothing is contacted before it loads)."""
    from helpers import tiny

    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    empty = tmp_path / "empty"
    empty.mkdir()
    for source in (["--model_path", str(tiny.hf_model()), "--gpus", ""],
                   ["--openai_api_base", "http://127.0.0.1:9/v1"]):
        assert S.main(["--file_path", str(DOC), *source, "--tokenizer_path", str(empty)]) == 2
        assert capsys.readouterr().err.startswith(f"error: {empty}: no tokenizer.model")


def test_summarize_does_not_import_rag():
    """Step 09 takes the shared LangChain pieces from helpers.chains, not from step 08."""
    import ast

    tree = ast.parse(__import__("inspect").getsource(S))
    imported = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    imported |= {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    assert "chains" in imported and not {"rag", "helpers.rag"} & imported
