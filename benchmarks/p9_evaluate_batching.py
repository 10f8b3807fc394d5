"""P9: multiple-choice scoring batched vs one question at a time (helpers.evaluate.choice_eval), same model, same
66 questions, side by side in one run. Goal: batched >= 3x faster. Also checks both give the same predictions.

    HF_HUB_OFFLINE=1 python benchmarks/p9_evaluate_batching.py
"""
from __future__ import annotations

from helpers import evaluate as ev
from helpers import tiny
from helpers.bench import report, timed
from helpers.core import DATA_DIR
from helpers.modeling import load_model


def main() -> dict:
    model, tok = load_model(tiny.trained_model("sft"), device="cpu")
    test = ev.load_questions(DATA_DIR / "choice_zh" / "test.jsonl")
    dev = ev.load_questions(DATA_DIR / "choice_zh" / "dev.jsonl")
    results = {}

    def run(bs, method):
        results[(bs, method)] = ev.choice_eval(model, tok, test, dev, shots=2, method=method, batch_size=bs)

    rows = []
    for method in ("letter", "loglik"):
        for bs in (1, 16):
            rows.append(timed(f"{method} batch_size={bs}", lambda: run(bs, method), repeat=2, questions=len(test)))
    for method in ("letter", "loglik"):
        a = [p["pred"] for p in results[(1, method)].predictions]
        b = [p["pred"] for p in results[(16, method)].predictions]
        assert a == b, f"{method}: batched predictions differ from one-by-one"
    t = {m.name: m.seconds for m in rows}
    return report("P9 evaluate batching", rows, {
        "letter: one-by-one / batched": (t["letter batch_size=1"] / t["letter batch_size=16"], ">= 3"),
        "loglik: one-by-one / batched": (t["loglik batch_size=1"] / t["loglik batch_size=16"], ">= 3"),
    })


if __name__ == "__main__":
    main()
