"""P8: speculative decoding (transformers assisted generation) vs the target alone, side by side in one run.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/p8_speculative.py [--max_new_tokens 64] [--width 768 --layers 12]

Two pairs sharing one vocabulary (the tiny base tokenizer, 1000 pieces), greedy decoding:
- ``tiny``: :func:`helpers.tiny.speculative_pair` (target 4 layers x 128; drafts: its first layer, an unrelated
  random 1-layer model, the target itself);
- ``medium``: the same recipe at ``--width`` x ``--layers`` (built in memory), where a forward pass costs enough
  for drafting to pay: the draft is again the target's first layer (deeper layers scaled by
  ``--deep_scale``, so the draft agrees with the target most of the time, as a trained small model does).
The "target itself" rows are a copy of the target drafting for it: every token accepted, the upper bound.
Every assisted variant must return exactly the target's own text (checked). Reported: tokens/s, the speed-up
over the target alone, acceptance rate (accepted / drafted tokens, from the forward passes of both models).
"""
from __future__ import annotations

import argparse
import copy
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

PROMPTS = ["Once upon a time", "The weather today is", "I like to read books about"]


def medium_pair(width: int, layers: int, vocab: int, deep_scale: float):
    """``(target, first-layer draft)`` built in memory with the recipe of ``tiny.speculative_pair``."""
    import torch
    from transformers import LlamaConfig

    from helpers import tiny

    cfg = LlamaConfig(**dict(tiny.TINY_CONFIG, hidden_size=width, intermediate_size=int(width * 8 / 3) // 4 * 4,
                             num_hidden_layers=layers, num_attention_heads=width // 64,
                             num_key_value_heads=width // 64), vocab_size=vocab)
    target = tiny._random_llama(cfg, 30)
    with torch.no_grad():
        for layer in list(target.model.layers)[1:]:
            layer.self_attn.o_proj.weight.mul_(deep_scale)
            layer.mlp.down_proj.weight.mul_(deep_scale)
    draft = copy.deepcopy(target)
    draft.model.layers = torch.nn.ModuleList(list(draft.model.layers)[:1])
    draft.config.num_hidden_layers = 1
    return target, draft


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--max_new_tokens", type=int, default=64)
    ap.add_argument("--width", type=int, default=768)
    ap.add_argument("--layers", type=int, default=12)
    ap.add_argument("--deep_scale", type=float, default=0.03,
                    help="medium pair: scale of layers 2.. (11 of them refine more than tiny's 3: smaller than 0.1)")
    ap.add_argument("--draft_k", type=int, default=-1, help="<= 0: adaptive (as the original --draft_k -1)")
    args = ap.parse_args(argv)

    import torch

    from helpers import tiny
    from helpers.bench import Measurement, report
    from helpers.generation import speculative_generate
    from helpers.modeling import load_model

    torch.set_num_threads(1)
    paths = tiny.speculative_pair()
    target, tok = load_model(paths["target"], device="cpu")
    drafts = {k: load_model(paths[k], device="cpu")[0] for k in ("draft", "draft_random", "target")}
    big, big_draft = medium_pair(args.width, args.layers, len(tok), args.deep_scale)
    setups = [("tiny", target, {"first layer": drafts["draft"], "random 1-layer": drafts["draft_random"],
                                "target itself": drafts["target"]}),
              (f"medium {args.width}x{args.layers}", big, {"first layer": big_draft,
                                                                     "target itself": copy.deepcopy(big)})]
    gen = dict(temperature=0, max_new_tokens=args.max_new_tokens)
    rows, ratios = [], {}
    for label, model, variants in setups:
        speculative_generate(model, tok, "warm up", None, temperature=0, max_new_tokens=4)
        runs = {"alone": None, **variants}
        totals = {name: [0.0, 0, 0, 0] for name in runs}  # seconds, tokens, accepted, drafted
        texts = {name: [] for name in runs}
        for prompt in PROMPTS:  # interleaved: every variant sees the same machine load
            for name, draft in runs.items():
                r = speculative_generate(model, tok, prompt, draft, args.draft_k, **gen)
                t = totals[name]
                t[0] += r.seconds
                t[1] += r.new_tokens
                t[2] += r.accepted if draft is not None else 0
                t[3] += r.draft_calls if draft is not None else 0
                texts[name].append(r.text)
        for name in runs:
            if texts[name] != texts["alone"]:
                raise SystemExit(f"{label} / {name}: assisted output differs from the target alone")
        alone_tps = totals["alone"][1] / totals["alone"][0]
        for name, (sec, tokens, accepted, drafted) in totals.items():
            extra = {"tokens_per_s": round(tokens / sec, 1)}
            if drafted:
                extra["acceptance"] = round(accepted / drafted, 2)
            rows.append(Measurement(f"{label}: {'target alone' if name == 'alone' else 'draft = ' + name}", sec,
                                    None, extra))
            if name != "alone":
                ratios[f"{label}: tokens/s with {name} / alone"] = (tokens / sec / alone_tps,
                                                                     "> 1 for a cheap draft on a costly target")
    print("assisted outputs identical to the target alone (greedy): True")
    report(f"P8 speculative decoding ({len(PROMPTS)} prompts x {args.max_new_tokens} new tokens, greedy)", rows,
           ratios)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
