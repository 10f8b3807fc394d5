"""P4b: training tokens/s per process for one process, torchrun DDP and DeepSpeed ZeRO-2 (2 CPU processes, gloo),
side by side in one run.

    .venv/bin/python benchmarks/p4b_distributed.py [--steps 40] [--kinds single,ddp,zero2]

Same data (data/alpaca_zh_sample.json, Alpaca template, --packing flatten, --max_seq_length 128), same seed, same
global batch (8 = 1 x 8 = 2 x 4), tiny base + Chinese-Alpaca tokenizer + the seed's LoRA (embed_tokens/lm_head
saved); every process single-threaded (OMP_NUM_THREADS=1), so two processes use the two cores. Tokens are the
Trainer's ``num_input_tokens_seen`` (all processes; flatten packing has no padding); time is its ``train_runtime`` (includes the
DeepSpeed engine set-up and the first step). Also checks that the three loss curves agree (|diff| < 1e-3).
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--kinds", default="single,ddp,zero2", help="comma separated: single, ddp, zero2, zero3")
    args = ap.parse_args(argv)

    import torch

    from helpers import tiny, train
    from helpers.bench import Measurement, report
    from helpers.core import DATA_DIR
    from helpers.io import read_json

    torch.set_num_threads(1)
    kinds = tuple(args.kinds.split(","))
    with tempfile.TemporaryDirectory() as tmp:
        runs = train.compare_parallelism(
            tmp, kinds=kinds, reuse=False, model_name_or_path=tiny.hf_model(),
            tokenizer_name_or_path=tiny.merged_tokenizers()["alpaca_hf"], dataset_dir=DATA_DIR / "alpaca_zh_sample.json",
            max_seq_length=128, per_device_train_batch_size=8, learning_rate=3e-3, max_steps=args.steps,
            logging_steps=1, seed=7, lora_dropout=0.0, save_strategy="no", disable_tqdm=True)
        full = read_json(next(iter(runs.values()))["output_dir"] / "data_stats.json")["kept"] // 8  # full batches
    rows = [Measurement(k, r["metrics"]["train_runtime"], None,
                        {"tokens_per_s_per_process": r["tokens_per_s_per_process"], "wall_s": r["seconds"],
                         "tokens": r["metrics"]["num_input_tokens_seen"], "final_loss": round(r["losses"][-1], 4)})
            for k, r in runs.items()]
    base = runs["single"]["tokens_per_s_per_process"] if "single" in runs else None
    ratios = {f"{k} tokens/s per process vs single": (r["tokens_per_s_per_process"] / base, "report")
              for k, r in runs.items() if base and k != "single"}
    ratios.update({f"{k} tokens/s in all vs single": (r["tokens_per_s_per_process"] * (1 if k == "single" else 2) / base,
                                                      "report") for k, r in runs.items() if base and k != "single"})
    if "single" in runs:
        # within the first epoch the batches are the same; at the epoch's incomplete last batch the distributed
        # sampler pads each process's share with examples from the start (even batches), so later steps differ
        for k, r in runs.items():
            diffs = [abs(a - b) for a, b in zip(r["losses"], runs["single"]["losses"])]
            assert max(diffs[:full]) < 1e-3, f"{k}: loss curve differs from one process by {max(diffs[:full])}"
            print(f"{k}: max |loss - single| steps 1-{full}: {max(diffs[:full]):.2e}; after: "
                  f"{max(diffs[full:], default=0):.3f}")
    report("P4b: tokens/s per process, single vs DDP vs ZeRO-2 (2 CPU processes)", rows, ratios)
    return 0


if __name__ == "__main__":
    sys.exit(main())
