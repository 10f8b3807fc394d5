"""P4: SFT batching efficiency: share of non-pad tokens and real tokens/s, side by side in one run.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/p4_sft_batching.py [--max_seq_length 512] [--batch_size 8]

Tiny base + Chinese-Alpaca tokenizer + a fresh LoRA (the seed's targets, embed_tokens/lm_head saved), the SFT
examples of data/alpaca_zh_sample.json in the Alpaca template. One epoch of forward + backward per variant:

- ``pad_to_max``: every row padded to ``--max_seq_length`` (the baseline of the goal);
- ``longest``: padded to the longest row of each batch (the original script's collator), random order;
- ``longest+grouped``: the same with ``LengthGroupedSampler`` (``--group_by_length``);
- ``flatten``: no padding, the batch is one row with ``position_ids`` restarting per example (block-diagonal
  causal mask, no cross-attention; ``--packing flatten``, the course default).

Real tokens/s counts only non-pad tokens. Goal: flatten ≥ 0.9 non-pad share and ≥ 1.3× pad_to_max tokens/s.
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
    ap.add_argument("--max_seq_length", type=int, default=512)
    ap.add_argument("--batch_size", type=int, default=8)
    ap.add_argument("--repeat", type=int, default=2, help="best of N epochs per variant")
    args = ap.parse_args(argv)

    import torch
    from torch.utils.data import DataLoader, RandomSampler
    from transformers.trainer_pt_utils import LengthGroupedSampler

    from helpers import data, tiny, train
    from helpers.bench import report, timed
    from helpers.core import DATA_DIR
    from helpers.tokenizer import load_tokenizer

    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
    tok_dir = tiny.merged_tokenizers()["alpaca_hf"]
    tok = load_tokenizer(tok_dir)
    tok.padding_side = "right"
    ds, stats = data.tokenize_sft(data.load_sft_records(DATA_DIR / "alpaca_zh_sample.json"), tok, args.max_seq_length)
    print(f"data: {stats}")
    margs, _, largs, targs = train.parse_args(["--model_name_or_path", str(tiny.hf_model()), "--dataset_dir", "-",
                                               "--tokenizer_name_or_path", str(tok_dir), "--output_dir", "/tmp/p4",
                                               "--lora_dropout", "0"])
    model, _ = train.build_model(margs, largs, targs, tok)
    model.train()
    feats = [{"input_ids": ds[i]["input_ids"], "labels": ds[i]["labels"]} for i in range(len(ds))]
    lengths = [len(f["input_ids"]) for f in feats]
    real_tokens = sum(lengths)

    def loader(name):
        g = torch.Generator().manual_seed(0)
        collate = data.make_collator(tok, "longest" if name.startswith("longest") else name, args.max_seq_length)
        sampler = (LengthGroupedSampler(args.batch_size, lengths=lengths, generator=g) if name == "longest+grouped"
                   else RandomSampler(feats, generator=g))
        return DataLoader(feats, batch_size=args.batch_size, sampler=sampler, collate_fn=collate)

    variants = ["pad_to_max", "longest", "longest+grouped", "flatten"]
    shares = {}
    for name in variants:  # non-pad share over one epoch
        batches = list(loader(name))
        shares[name] = real_tokens / sum(b["input_ids"].numel() for b in batches)

    def epoch(name):
        def run():
            for batch in loader(name):
                model(**batch).loss.backward()
            model.zero_grad(set_to_none=True)
        return run

    rows = []
    for name in variants:
        m = timed(name, epoch(name), repeat=args.repeat)
        m.extra = {"non_pad_share": round(shares[name], 3), "real_tokens_per_s": round(real_tokens / m.seconds)}
        rows.append(m)
    base = rows[0].seconds
    ratios = {
        "flatten non-pad share": (shares["flatten"], ">= 0.9"),
        "flatten real tokens/s vs pad_to_max": (base / rows[3].seconds, ">= 1.3x"),
        "longest+grouped real tokens/s vs pad_to_max": (base / rows[2].seconds, "report"),
        "longest (original collator) tokens/s vs pad_to_max": (base / rows[1].seconds, "report"),
    }
    report(f"P4 SFT batching (max_seq_length {args.max_seq_length}, batch {args.batch_size}, "
           f"{len(feats)} examples)", rows, ratios)
    return 0


if __name__ == "__main__":
    sys.exit(main())
