"""P6: batched file inference (left padding) vs one instruction at a time, side by side in one run.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/p6_batched_inference.py [--n 32] [--max_new_tokens 32]

Tiny Chinese-Alpaca (base + LoRA, larger vocab), the instructions of data/instructions_zh.txt wrapped in
the Alpaca template, greedy decoding. Variants: ``batch_size=1`` (what inference_hf.py does),
``batch_size=8`` and ``batch_size=16``; the script checks that every variant returns exactly the same
answers, then reports instructions/s. Goal: batched ≥ 3× the one-at-a-time throughput.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=32, help="number of instructions")
    ap.add_argument("--max_new_tokens", type=int, default=32)
    ap.add_argument("--repeat", type=int, default=2, help="best of N timings per variant")
    args = ap.parse_args(argv)

    import torch

    from helpers import tiny
    from helpers.bench import report, timed
    from helpers.core import DATA_DIR
    from helpers.generation import generate
    from helpers.infer import make_prompt, read_instructions
    from helpers.modeling import load_model

    torch.set_num_threads(1)
    model, tok = load_model(tiny.hf_model(), tiny.lora_adapters()["alpaca"], device="cpu")
    instructions = read_instructions(DATA_DIR / "instructions_zh.txt")  # repeated up to --n
    instructions = (instructions * (args.n // len(instructions) + 1))[:args.n]
    prompts = [make_prompt(x, True) for x in instructions]
    results: dict[int, list[str]] = {}

    def run(bs: int):
        def fn():
            results[bs] = generate(model, tok, prompts, batch_size=bs, temperature=0,
                                   max_new_tokens=args.max_new_tokens)
        return fn

    generate(model, tok, prompts[:2], batch_size=2, temperature=0, max_new_tokens=4)  # warm-up
    rows = []
    for bs in (1, 8, 16):  # one process, one after another: the same machine load for every variant
        m = timed(f"batch_size={bs}", run(bs), repeat=args.repeat)
        m.extra = {"instructions_per_s": round(len(prompts) / m.seconds, 2)}
        rows.append(m)
    same = results[1] == results[8] == results[16]
    print(f"identical answers across batch sizes (greedy): {same}")
    if not same:
        raise SystemExit("batched answers differ from one-at-a-time")
    base = rows[0].seconds
    report(f"P6 batched inference ({len(prompts)} instructions, {args.max_new_tokens} new tokens, greedy)", rows, {
        "throughput batch 8 / batch 1": (base / rows[1].seconds, ">= 3"),
        "throughput batch 16 / batch 1": (base / rows[2].seconds, ">= 3"),
    })
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
