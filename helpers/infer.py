"""Step 05: inference with Transformers, the course version of ``scripts/inference_hf.py`` (seed 002 第4步).

    python -m helpers.infer --base_model DIR [--lora_model DIR] [--tokenizer_path DIR] --with_prompt --interactive
    python -m helpers.infer --base_model DIR --with_prompt --data_file q.txt --predictions_file out/pred.json
    python -m helpers.infer --base_model 7B_DIR --draft_base_model 1.3B_DIR --with_prompt --interactive
    python -m helpers.infer --base_model 16K_DIR --alpha 2 ...      (NTK: a longer context, helpers.modeling)

Same flags and defaults as the original (temperature 0.2, top_k 40, top_p 0.9, repetition_penalty 1.1,
max_new_tokens 400). Differences: file mode is batched with left padding (``--batch_size``, outputs equal
to one-at-a-time under greedy decoding), the interactive mode streams its answer, ``--template`` picks a
chat family from :mod:`helpers.prompts` (default ``alpaca``, the 1st-generation Chinese-Alpaca template).
``--alpha`` (NTK rope scaling) is set through transformers' rope parameters (:func:`helpers.modeling.ntk_rope_parameters`),
not the original's patch. Speculative decoding (the original ``--speculative_sampling --draft_base_model ...
--draft_k``; ``--draft_model`` is accepted as a shorter name) is transformers' assisted generation
(:mod:`helpers.generation`): same output as the target alone under greedy decoding, one prompt at a time.
"""
from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

from .core import CourseError, cli_main
from .generation import GENERATION_DEFAULTS, check_draft, draft_kwargs, generate, generation_kwargs, stream
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
    p.add_argument("--speculative_sampling", action="store_true",
                   help="speculative decoding with --draft_base_model (implied when a draft model is given)")
    p.add_argument("--draft_base_model", "--draft_model", dest="draft_base_model", default=None,
                   help="draft model for speculative decoding, same vocabulary (e.g. hfl/chinese-alpaca-2-1.3b)")
    p.add_argument("--draft_lora_model", default=None, help="LoRA applied on the draft model")
    p.add_argument("--draft_k", type=int, default=-1,
                   help="tokens the draft proposes per round; <= 0: adaptive from 4 (+2 / -1)")
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
    if args.speculative_sampling and not args.draft_base_model:
        raise CourseError("--speculative_sampling needs a draft model: pass --draft_base_model DIR (same vocabulary "
                          "as --base_model, e.g. hfl/chinese-alpaca-2-1.3b for hfl/chinese-alpaca-2-7b)")
    instructions = read_instructions(args.data_file) if args.data_file and not args.interactive else None
    model, tokenizer = load_model(args.base_model, args.lora_model, args.tokenizer_path, **options)
    gen = {k: getattr(args, k) for k in ("max_new_tokens", "temperature", "top_k", "top_p", "repetition_penalty")}
    if args.draft_base_model:
        draft_options = {k: v for k, v in options.items() if k in ("device", "alpha")}  # the draft: unquantized
        draft, _ = load_model(args.draft_base_model, args.draft_lora_model, **draft_options)
        check_draft(model, draft)  # refused before anything is generated
        gen.update(draft_kwargs(draft, args.draft_k))
        print(f"speculative decoding: {args.draft_base_model} drafts for {args.base_model}", flush=True)
    if args.interactive:
        interactive(model, tokenizer, args.with_prompt, args.template, **gen)
        return 0
    print("Start inference.", flush=True)
    results = predict(model, tokenizer, instructions or SAMPLE_DATA, args.with_prompt, args.template,
                      batch_size=args.batch_size, progress=True, **gen)
    for i, r in enumerate(results):
        print(f"======={i}=======\nInput: {r['Input']}\n\nOutput: {r['Output']}\n")
    config = {k: v for k, v in generation_kwargs(tokenizer, **gen).items()
              if k not in ("pad_token_id", "eos_token_id", "assistant_model")}
    path = write_predictions(results, args.predictions_file, config)
    print(f"wrote {path} and {path.parent / 'generation_config.json'}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """``python -m helpers.infer ...``; returns the exit code (2 with a message on bad input)."""
    return cli_main(_run, argv, build_parser())


if __name__ == "__main__":
    raise SystemExit(main())


# --------------------------------------------------------------------------- long context: rope scaling, taught
ROPE_METHODS = ("rope", "pi", "ntk", "dynamic", "yarn")


def rope_inv_freq(method: str, head_dim: int = 128, theta: float = 10000.0, factor: float = 4.0,
                  context: int = 4096, seq_len: int | None = None):
    """Rotary inverse frequencies (radians per position, one per dimension pair) of a context-extension method;
    returns a float64 numpy array of ``head_dim // 2``. Written from the papers' formulas so the notebook shows
    the maths (transformers' ``ROPE_INIT_FUNCTIONS`` is the test's reference):

    - ``rope``: ``theta ** (-2i/d)``; ``pi`` (position interpolation, linear): divided by ``factor``;
    - ``ntk`` (fixed alpha = ``factor``): base ``theta * factor ** (d/(d-2))``;
    - ``dynamic`` (NTK by length): base ``theta * (factor * L / C - (factor - 1)) ** (d/(d-2))`` once ``L =
      seq_len`` exceeds ``C = context``, plain rope before;
    - ``yarn``: pairs turning fewer than 1 time over ``C`` are interpolated (/``factor``), more than 32 times kept,
      a linear ramp between (pair indices rounded outwards, as the YaRN reference code does).
    """
    import numpy as np

    if method not in ROPE_METHODS:
        raise CourseError(f"method {method!r}: choose one of {ROPE_METHODS}")
    d = head_dim
    i = np.arange(0, d, 2, dtype=np.float64) / d  # 2i/d
    base = theta
    if method == "ntk":
        base = theta * factor ** (d / (d - 2))
    elif method == "dynamic" and seq_len is not None and seq_len > context:
        base = theta * (factor * seq_len / context - (factor - 1)) ** (d / (d - 2))
    inv = 1.0 / base ** i
    if method == "pi":
        inv = inv / factor
    elif method == "yarn":
        def pair_index(rotations: float) -> float:  # the pair whose wavelength fits `rotations` times in C
            return d * math.log(context / (rotations * 2 * math.pi)) / (2 * math.log(theta))

        low, high = max(math.floor(pair_index(32)), 0), min(math.ceil(pair_index(1)), d - 1)
        ramp = np.clip((np.arange(d // 2) - low) / max(high - low, 1e-3), 0, 1)  # 0: keep, 1: interpolate
        inv = inv * (1 - ramp) + inv / factor * ramp
    return inv


def plot_rope_scaling(head_dim: int = 128, theta: float = 10000.0, context: int = 4096, factor: float = 4.0):
    """A matplotlib figure comparing the methods for a model trained on ``context`` tokens extended ``factor``
    times: left, the wavelength (positions per full turn) of every dimension pair; right, the angle of the slowest
    pair against position, with the largest angle seen in training. Returns the figure."""
    import matplotlib.pyplot as plt
    import numpy as np

    long = int(context * factor)
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 3.8))
    positions = np.linspace(0, long, 200)
    for method in ROPE_METHODS:
        inv = rope_inv_freq(method, head_dim, theta, factor, context, seq_len=long)
        left.plot(2 * np.pi / inv, label=method)
        right.plot(positions, positions * inv[-1], label=method)
    left.axhline(context, color="gray", ls=":", lw=1)
    left.set(yscale="log", xlabel="dimension pair i", ylabel="wavelength (positions)",
             title=f"wavelengths (trained on {context}, target {long})")
    right.axhline(context * rope_inv_freq("rope", head_dim, theta)[-1], color="gray", ls=":", lw=1,
                  label="max angle in training")
    right.set(xlabel="position", ylabel="angle of the slowest pair (rad)", title="slowest pair: angle vs position")
    right.legend(fontsize=8)
    fig.tight_layout()
    return fig
