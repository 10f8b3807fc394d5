"""Step 05: inference with Transformers, the course version of ``scripts/inference_hf.py`` (seed 002 第4步).

    python -m helpers.infer --base_model DIR [--lora_model DIR] [--tokenizer_path DIR] --with_prompt --interactive
    python -m helpers.infer --base_model DIR --with_prompt --data_file q.txt --predictions_file out/pred.json

Same flags and defaults as the original (temperature 0.2, top_k 40, top_p 0.9, repetition_penalty 1.1,
max_new_tokens 400). Differences: file mode is batched with left padding (``--batch_size``, outputs equal
to one-at-a-time under greedy decoding), the interactive mode streams its answer, ``--template`` picks a
chat family from :mod:`helpers.prompts` (default ``alpaca``, the 1st-generation Chinese-Alpaca template).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .core import CourseError, cli_main
from .generation import GENERATION_DEFAULTS, generate, generation_kwargs, stream
from .io import write_json
from .modeling import add_model_arguments, apply_model_arguments, load_model
from .prompts import build_prompt, get_family, render, stop_strings

SAMPLE_DATA = ["为什么要减少污染，保护环境？"]  # the original script's sample when no --data_file is given


def make_prompt(instruction: str, with_prompt: bool, template: str = "alpaca") -> str:
    """What the model sees: the raw text, or the instruction wrapped in ``template``'s single-turn prompt.

    ``alpaca``/``alpaca2`` use :func:`helpers.prompts.build_prompt` (no ``<s>``: the tokenizer adds it); other
    families are rendered from the registry with their leading ``<s>`` removed for the same reason.
    """
    if not with_prompt:
        return instruction
    if template in ("alpaca", "alpaca2"):
        return build_prompt(instruction, template=template)
    text = render(template, [{"role": "user", "content": instruction}])
    return text[len("<s>"):] if text.startswith("<s>") else text


def read_instructions(path: str | Path) -> list[str]:
    """Returns the instructions of a UTF-8 file (``--data_file``): one per non-empty line, stripped."""
    p = Path(path)
    if not p.is_file():
        raise CourseError(f"--data_file {p}: file not found (one instruction per line, UTF-8)")
    try:
        lines = [x.strip() for x in p.read_text(encoding="utf-8").splitlines() if x.strip()]
    except UnicodeDecodeError as e:
        raise CourseError(f"--data_file {p}: not UTF-8 ({e.reason} at byte {e.start}); convert it, e.g. "
                          "iconv -f gbk -t utf-8") from e
    if not lines:
        raise CourseError(f"--data_file {p}: no instructions (write one instruction per line)")
    return lines


def predict(model, tokenizer, instructions: list[str], with_prompt: bool = True, template: str = "alpaca",
            batch_size: int = 8, progress: bool = False, **gen) -> list[dict]:
    """Answers for ``instructions`` as ``[{"Input": instruction, "Output": answer}, ...]`` (batched)."""
    prompts = [make_prompt(x, with_prompt, template) for x in instructions]
    stop = stop_strings(get_family(template)) if with_prompt else None
    outputs = generate(model, tokenizer, prompts, batch_size=batch_size, stop=stop, progress=progress, **gen)
    return [{"Input": x, "Output": y.strip()} for x, y in zip(instructions, outputs)]


def write_predictions(results: list[dict], predictions_file: str | Path, generation_config: dict) -> Path:
    """Write ``predictions_file`` (JSON list) and ``generation_config.json`` beside it; returns the JSON path."""
    path = write_json(predictions_file, results)
    write_json(path.parent / "generation_config.json", generation_config)
    return path


def interactive(model, tokenizer, with_prompt: bool, template: str = "alpaca", stdin=None, stdout=None, **gen) -> int:
    """Single-turn question loop (not a conversation): read a line, stream the answer; an empty line or
    end of input exits. Returns the number of questions answered."""
    stdin, stdout = stdin or sys.stdin, stdout or sys.stdout
    stop = stop_strings(get_family(template)) if with_prompt else None
    print("Start inference with instruction mode.", file=stdout)
    print("=" * 85, file=stdout)
    print("+ 该模式下仅支持单轮问答，无多轮对话能力。\n+ 输入空行退出。", file=stdout)
    print("=" * 85, file=stdout, flush=True)
    n = 0
    while True:
        print("Input:", end="", file=stdout, flush=True)
        line = stdin.readline()
        if not line or not line.strip():
            print(file=stdout)
            return n
        print("Response: ", end="", file=stdout, flush=True)
        for piece in stream(model, tokenizer, make_prompt(line.strip(), with_prompt, template), stop=stop, **gen):
            print(piece, end="", file=stdout, flush=True)
        print("\n", file=stdout, flush=True)
        n += 1


def build_parser() -> argparse.ArgumentParser:
    """Returns the parser of ``python -m helpers.infer`` (the flags of the original inference_hf.py)."""
    p = argparse.ArgumentParser(prog="python -m helpers.infer", description=__doc__.split("\n\n")[0])
    add_model_arguments(p, lora_help="LoRA folder; none: the base model alone")
    p.add_argument("--data_file", default=None, help="instructions, one per line")
    p.add_argument("--with_prompt", action="store_true", help="wrap the input with the prompt template")
    p.add_argument("--interactive", action="store_true", help="single-turn question loop; empty line exits")
    p.add_argument("--predictions_file", default="./predictions.json")
    p.add_argument("--template", default="alpaca", help="prompt family for --with_prompt (helpers.prompts)")
    p.add_argument("--batch_size", type=int, default=8, help="file mode: prompts per batch (left padding)")
    for name, typ in (("max_new_tokens", int), ("temperature", float), ("top_k", int), ("top_p", float),
                      ("repetition_penalty", float)):
        p.add_argument(f"--{name}", type=typ, default=None,
                       help=f"default {GENERATION_DEFAULTS[name]}" + ("; 0 = greedy" if name == "temperature" else ""))
    return p


def _run(args) -> int:
    """The CLI: check the flags, load the model, then the interactive loop or the file mode."""
    get_family(args.template)
    if args.batch_size < 1:
        raise CourseError("--batch_size must be >= 1")
    options = apply_model_arguments(args)
    instructions = read_instructions(args.data_file) if args.data_file and not args.interactive else None
    model, tokenizer = load_model(args.base_model, args.lora_model, args.tokenizer_path, **options)
    gen = {k: getattr(args, k) for k in ("max_new_tokens", "temperature", "top_k", "top_p", "repetition_penalty")}
    if args.interactive:
        interactive(model, tokenizer, args.with_prompt, args.template, **gen)
        return 0
    print("Start inference.", flush=True)
    results = predict(model, tokenizer, instructions or SAMPLE_DATA, args.with_prompt, args.template,
                      batch_size=args.batch_size, progress=True, **gen)
    for i, r in enumerate(results):
        print(f"======={i}=======\nInput: {r['Input']}\n\nOutput: {r['Output']}\n")
    config = {k: v for k, v in generation_kwargs(tokenizer, **gen).items() if k not in ("pad_token_id", "eos_token_id")}
    path = write_predictions(results, args.predictions_file, config)
    print(f"wrote {path} and {path.parent / 'generation_config.json'}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """``python -m helpers.infer ...``; returns the exit code (2 with a message on bad input)."""
    return cli_main(_run, argv, build_parser())


if __name__ == "__main__":
    raise SystemExit(main())
