"""P7 — llama.cpp (GGUF) tokens/s vs transformers on CPU, same model, side by side (goal: report).

A random LLaMA-shaped model (hidden 512, 8 layers, 8 heads, FFN 1408: every row a multiple of 32, so q8_0
applies to all matrices; ~30 M parameters, 120 MB fp32) with the tiny Chinese-Alpaca tokenizer is written to
a temporary folder and exported with ``helpers.export`` to GGUF f32 / f16 / q8_0 (export times are measured
too). Each variant then runs in its own subprocess with the same thread count: load, prefill a 32-token
prompt, greedy-decode N tokens (no EOS stop), and reports decode tokens/s:

1. transformers fp32 (``model.generate``, KV cache, greedy);
2. llama.cpp via llama-cpp-python on GGUF f32, f16, q8_0 (``Llama.generate`` with its greedy sampler, KV cache
   in llama.cpp's default f16).

Both timings include the prompt's prefill, as ``generate`` does.

Quantized rows (issue 15): the same shape with FFN 1536 (every row a multiple of 256, so K-quants apply to all
matrices) is exported to GGUF f16 and quantized by llama.cpp's own quantizer (``helpers.export.quantize_gguf``) to
Q4_0, Q4_K_M, Q5_K_M, Q8_0; each file decodes in its own subprocess as above, and ``helpers.export.quant_table``
adds size, bits/weight, perplexity on ``data/zh_heldout.txt`` and KL / top-1 agreement with f16 (the model is
random: perplexity is reported, KL is what separates the types).

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/p7_llamacpp_vs_transformers.py [--tokens 128] [--keep DIR]
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from helpers.bench import Measurement, in_subprocess, report  # noqa: E402

CONFIG = dict(hidden_size=512, intermediate_size=1408, num_hidden_layers=8, num_attention_heads=8,
              num_key_value_heads=8, max_position_embeddings=1024, rms_norm_eps=1e-6, tie_word_embeddings=False,
              bos_token_id=1, eos_token_id=2)
PROMPT_TOKENS = 32

HF_CODE = """
import json, time, torch
torch.set_num_threads({threads})
from transformers import AutoModelForCausalLM
t0 = time.perf_counter()
m = AutoModelForCausalLM.from_pretrained({model!r}, dtype=torch.float32).eval()
load = time.perf_counter() - t0
ids = torch.tensor([[{ids}]])
with torch.inference_mode():
    t0 = time.perf_counter(); m(ids); prefill = time.perf_counter() - t0
    m.generate(ids, do_sample=False, max_new_tokens=4, min_new_tokens=4)  # warm-up
    t0 = time.perf_counter()
    out = m.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens={n},
                     min_new_tokens={n}, eos_token_id=None, pad_token_id=0)
    total = time.perf_counter() - t0
new = out.shape[1] - ids.shape[1]
print(json.dumps({{"load_s": round(load, 3), "prefill_s": round(prefill, 4), "new_tokens": new,
                  "tokens_per_s": round(new / total, 1), "first": out[0, ids.shape[1]:ids.shape[1] + 8].tolist()}}))
"""

LLAMA_CODE = """
import json, time
from llama_cpp import Llama
t0 = time.perf_counter()
llm = Llama(model_path={path!r}, n_ctx=512, n_threads={threads}, n_threads_batch={threads}, verbose=False)
load = time.perf_counter() - t0
ids = [{ids}]
t0 = time.perf_counter(); llm.eval(ids); prefill = time.perf_counter() - t0

def run(n):
    out = []
    for tok in llm.generate(ids, temp=0.0, top_k=1, top_p=1.0, min_p=0.0, repeat_penalty=1.0, reset=True):
        out.append(int(tok))
        if len(out) == n:
            return out

run(4)  # warm-up
t0 = time.perf_counter()
out = run({n})
total = time.perf_counter() - t0
print(json.dumps({{"load_s": round(load, 3), "prefill_s": round(prefill, 4), "new_tokens": len(out),
                  "tokens_per_s": round(len(out) / total, 1), "first": out[:8]}}))
"""


def build_model(folder: Path, **overrides) -> Path:
    """A random LLaMA with the tiny Chinese-Alpaca tokenizer (non-trivial norms), saved as safetensors."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from helpers import export
    from helpers.tokenizer import load_tokenizer

    tok_dir = export.tiny_merged_model("alpaca")
    tok = load_tokenizer(tok_dir)
    torch.manual_seed(0)
    cfg = LlamaConfig(**{**CONFIG, **overrides}, vocab_size=len(tok), initializer_range=0.05)
    model = LlamaForCausalLM(cfg).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.uniform_(0.5, 1.5)
    model.save_pretrained(folder, safe_serialization=True)
    for f in ("tokenizer.model", "tokenizer.json", "tokenizer_config.json"):
        shutil.copyfile(tok_dir / f, folder / f)
    return folder


def quant_rows(work: Path, threads: int, ids: str, tokens: int) -> None:
    """The quantized rows: f16 and Q4_0 / Q4_K_M / Q5_K_M / Q8_0 of a K-quant-friendly model, side by side."""
    import pandas as pd

    from helpers import export

    model_dir = work / "model-k"
    if not (model_dir / "config.json").is_file():
        build_model(model_dir, intermediate_size=1536)
    f16 = export.export_gguf(model_dir, work / "p7k-f16.gguf", "f16", family=None, overwrite=True, progress=False)
    files, secs = {"f16": f16}, {}
    for q in export.QUANT_TYPES:
        t0 = time.perf_counter()
        res = export.quantize_gguf(f16, work / f"p7k-{q}.gguf", q, overwrite=True, nthread=threads)
        secs[q], files[q] = time.perf_counter() - t0, res.path
        print(f"{q}: {res.summary()} (not {export.QUANT_TYPES[q]}: {sorted(res.other)})")
    rows = [in_subprocess(f"llama.cpp GGUF {q}", LLAMA_CODE.format(threads=threads, path=str(p), ids=ids, n=tokens))
            for q, p in files.items()]
    rows += [Measurement(f"quantize f16 -> {q}", s, None, {}) for q, s in secs.items()]
    base = rows[0].extra["tokens_per_s"]
    report("P7 quantized GGUF (llama.cpp's quantizer), decode speed", rows,
           {f"tokens/s {q} / f16": (r.extra["tokens_per_s"] / base, "report") for q, r in zip(files, rows)})
    table = export.quant_table(files, n_ctx=256, max_tokens=2048, new_tokens=8).drop(columns="tokens/s")
    with pd.option_context("display.width", 160):
        print(table)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tokens", type=int, default=128, help="new tokens to decode per variant")
    ap.add_argument("--keep", default=None, help="build the model and GGUF files here and keep them")
    ap.add_argument("--no_quant", action="store_true", help="skip the llama.cpp-quantized rows (Q4_0 ... Q8_0)")
    args = ap.parse_args(argv)
    threads = int(os.environ.get("OMP_NUM_THREADS") or 2)
    from helpers import export

    work = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="p7-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        model_dir = work / "model"
        if not (model_dir / "config.json").is_file():
            build_model(model_dir)
        mb = sum(p.stat().st_size for p in model_dir.glob("*.safetensors")) / 2**20
        exports = {}
        export.export_gguf(model_dir, work / "warm-up.gguf", "f16", overwrite=True, progress=False)  # imports, page cache
        for t in export.GGUF_OUTTYPES:
            path = work / f"p7-{t}.gguf"
            t0 = time.perf_counter()
            export.export_gguf(model_dir, path, t, overwrite=True, progress=False)
            exports[t] = (path, time.perf_counter() - t0)
        import random

        random.seed(0)
        ids = ", ".join(str(random.randrange(3, 3000)) for _ in range(PROMPT_TOKENS))
        rows: list[Measurement] = [in_subprocess("transformers fp32", HF_CODE.format(
            threads=threads, model=str(model_dir), ids="1, " + ids, n=args.tokens))]
        for t, (path, _) in exports.items():
            rows.append(in_subprocess(f"llama.cpp GGUF {t}", LLAMA_CODE.format(
                threads=threads, path=str(path), ids="1, " + ids, n=args.tokens)))
        for t, (path, secs) in exports.items():
            rows.append(Measurement(f"export GGUF {t}", secs, None,
                                    {"MiB": round(path.stat().st_size / 2**20, 1), "MB_per_s_in": round(mb / secs, 1)}))
        hf = rows[0].extra["tokens_per_s"]
        ratios = {f"tokens/s llama.cpp {t} / transformers fp32": (r.extra["tokens_per_s"] / hf, "report")
                  for t, r in zip(export.GGUF_OUTTYPES, rows[1:4])}
        ratios["greedy ids equal (f32 vs transformers) 1=yes"] = (float(rows[1].extra["first"] == rows[0].extra["first"]),
                                                                  "1")
        print(f"model: {mb:.0f} MiB fp32 safetensors, {threads} thread(s), prompt {PROMPT_TOKENS + 1} tokens, "
              f"{args.tokens} new tokens")
        report("P7 llama.cpp vs transformers on CPU", rows, ratios)
        print(json.dumps({r.name: r.extra.get("tokens_per_s") for r in rows[:4]}))
        if not args.no_quant:
            quant_rows(work, threads, "1, " + ids, args.tokens)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
