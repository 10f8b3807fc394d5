"""``python -m helpers.export gguf|modelfile|fastllm ...``: the command line of step 11."""
from __future__ import annotations

import argparse
from pathlib import Path

from ..core import cli_main
from ..io import atomic_write_text
from .adapter import export_lora_gguf
from .fastllm import FLM_DTYPES, export_fastllm
from .gguf import GGUF_OUTTYPES, export_gguf
from .ollama import modelfile
from .quantize import QUANT_TYPES, quantize_gguf
from .source import DEFAULT_FAMILY


def build_parser() -> argparse.ArgumentParser:
    """Returns the parser: one sub-command per export (``gguf``, ``quantize``, ``lora``, ``modelfile``, ``fastllm``)."""
    p = argparse.ArgumentParser(prog="python -m helpers.export",
                                description="Export a merged LLaMA: GGUF (llama.cpp / Ollama), Modelfile, fastllm .flm")
    sub = p.add_subparsers(dest="cmd", required=True)
    g = sub.add_parser("gguf", help="HF LLaMA folder -> GGUF (llama.cpp / Ollama)")
    g.add_argument("--base_model", required=True)
    g.add_argument("--outfile", required=True)
    g.add_argument("--outtype", default="f16", choices=GGUF_OUTTYPES)
    g.add_argument("--tokenizer_path", default=None)
    g.add_argument("--template", default=DEFAULT_FAMILY, help="chat family stored as tokenizer.chat_template ('' = none)")
    g.add_argument("--overwrite", action="store_true")
    q = sub.add_parser("quantize", help="f16/f32 GGUF -> Q4_0 / Q4_K_M / Q5_K_M / Q8_0 with llama.cpp's quantizer")
    q.add_argument("--gguf", required=True, help="the f16 or f32 GGUF (python -m helpers.export gguf)")
    q.add_argument("--outfile", required=True)
    q.add_argument("--type", default="Q4_K_M", choices=tuple(QUANT_TYPES))
    q.add_argument("--allow_fallback", action="store_true",
                   help="let llama.cpp pick another type for tensors whose rows do not fit the block size")
    q.add_argument("--overwrite", action="store_true")
    lo = sub.add_parser("lora", help="PEFT LoRA folder -> llama.cpp LoRA-adapter GGUF (for --lora / Ollama ADAPTER)")
    lo.add_argument("--lora_model", required=True)
    lo.add_argument("--base_gguf", required=True, help="the GGUF of the base model the adapter was trained on")
    lo.add_argument("--outfile", required=True)
    lo.add_argument("--outtype", default="f32", choices=("f32", "f16"))
    lo.add_argument("--overwrite", action="store_true")
    m = sub.add_parser("modelfile", help="Ollama Modelfile for a GGUF file")
    m.add_argument("--gguf", required=True, help="GGUF path as FROM writes it (relative to the Modelfile or absolute)")
    m.add_argument("--adapter", default=None, help="LoRA-adapter GGUF written as ADAPTER (python -m helpers.export lora)")
    m.add_argument("--template", default=DEFAULT_FAMILY)
    m.add_argument("--system", default=None)
    m.add_argument("--num_ctx", type=int, default=None)
    m.add_argument("--temperature", type=float, default=None)
    m.add_argument("--outfile", default="Modelfile")
    f = sub.add_parser("fastllm", help="HF LLaMA folder -> fastllm .flm")
    f.add_argument("--base_model", required=True)
    f.add_argument("--outfile", required=True)
    f.add_argument("--dtype", default="float16", choices=tuple(FLM_DTYPES))
    f.add_argument("--template", default=DEFAULT_FAMILY, help="chat family for pre_prompt/user_role/bot_role/history_sep")
    f.add_argument("--system", default=None)
    f.add_argument("--tokenizer_path", default=None)
    f.add_argument("--overwrite", action="store_true")
    return p


def _run(args: argparse.Namespace) -> int:
    """Do the export ``args.cmd`` names and print what was written; returns 0."""
    if args.cmd == "gguf":
        out = export_gguf(args.base_model, args.outfile, args.outtype, args.tokenizer_path, args.template or None,
                          overwrite=args.overwrite)
    elif args.cmd == "quantize":
        res = quantize_gguf(args.gguf, args.outfile, args.type, args.allow_fallback, args.overwrite)
        out = res.path
        print(f"{args.type}: tensor types {res.summary()}" + (f"; not {args.type}'s main type: {res.other}" if res.other else ""))
    elif args.cmd == "lora":
        out = export_lora_gguf(args.lora_model, args.base_gguf, args.outfile, args.outtype, args.overwrite)
    elif args.cmd == "modelfile":
        out = atomic_write_text(args.outfile, modelfile(args.gguf, args.template, args.system, args.num_ctx,
                                                        adapter=args.adapter, temperature=args.temperature))
    else:
        out = export_fastllm(args.base_model, args.outfile, args.dtype, args.template or None, args.system,
                             args.tokenizer_path, overwrite=args.overwrite)
    print(f"wrote {out} ({Path(out).stat().st_size / 2**20:.2f} MiB)")
    return 0


def main(argv: list[str] | None = None) -> int:
    """``python -m helpers.export ...``; returns the exit code (2 with a message on bad input, no traceback)."""
    return cli_main(_run, argv, build_parser())
