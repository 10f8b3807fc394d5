"""P10: the packaged embeddings of step 08 side by side — Chinese-capable USE multilingual (the tiny default) vs the
English all-MiniLM-L6-v2 — on the course's QA set and the held-out set, in one run.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/p10_rag_zh_embeddings.py

Per embedding: load time (fresh process), time to embed every chunk of both sets (chunk 600 / 120) and every
question one by one (as the FAISS retriever does), dense hit@1 / hit@3 / MRR@3 on both sets. Goals: USE's held-out
dense hit@3 ≥ MiniLM's (the issue measured 0.75 for MiniLM's pipeline), and embedding the two sets in seconds.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

LOAD = ("import time; t = time.perf_counter(); from helpers import rag; e = rag.load_embeddings({name!r}); "
        "e.embed_query('热身'); import json; print(json.dumps({{'load_s': round(time.perf_counter() - t, 2)}}))")


def main() -> int:
    import torch

    from helpers import rag
    from helpers.bench import in_subprocess, report, timed
    from helpers.core import DATA_DIR

    torch.set_num_threads(1)
    held = DATA_DIR / "rag_heldout"
    sets = {"course": (rag.split_documents(rag.load_documents()), rag.load_qa_set()),
            "held-out": (rag.split_documents(rag.load_documents(held), 120, 20),
                         rag.load_qa_set(held / "questions.jsonl"))}
    rows, quality = [], {}
    for name in ("use-multilingual", "minilm-en"):
        rows.append(in_subprocess(f"{name}: load + first query", LOAD.format(name=name)))
        emb = rag.load_embeddings(name)
        texts = [c.page_content for chunks, _ in sets.values() for c in chunks]
        questions = [q["question"] for _, qa in sets.values() for q in qa]
        rows.append(timed(f"{name}: embed {len(texts)} chunks", lambda: emb.embed_documents(texts), repeat=2))
        rows.append(timed(f"{name}: {len(questions)} queries, 1 by 1", lambda: [emb.embed_query(q) for q in questions]))
        for set_name, (chunks, qa) in sets.items():
            table = rag.evaluate_retrieval({"dense": rag.retrievers(chunks, emb)["dense"]}, qa)
            quality[(name, set_name)] = table.loc["dense"].round(3).to_dict()
            rows[-1].extra[set_name] = quality[(name, set_name)]
    t = {m.name.split(":")[0] + m.name.split(":")[1].split()[0]: m.seconds for m in rows}
    report("P10 step 08 embeddings: USE multilingual vs MiniLM", rows, {
        "held-out dense hit@3, USE - MiniLM": (quality[("use-multilingual", "held-out")]["hit@3"]
                                               - quality[("minilm-en", "held-out")]["hit@3"], ">= 0"),
        "course dense hit@3, USE - MiniLM": (quality[("use-multilingual", "course")]["hit@3"]
                                             - quality[("minilm-en", "course")]["hit@3"], ">= 0"),
        "embed chunks time, USE / MiniLM": (t["use-multilingualembed"] / t["minilm-enembed"], "report"),
    })
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
