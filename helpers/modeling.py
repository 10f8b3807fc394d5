"""Loading a course model the way the original scripts do (inference_hf.py, the web UI, the API server).

``load_model(base_model, lora_model=..., tokenizer_path=...)``: tokenizer from ``tokenizer_path`` or the
LoRA folder or the base; embeddings resized to the tokenizer *before* a LoRA with a larger vocabulary
is loaded; device and dtype from ``helpers.device.choose`` (bf16 on compute >= 8.0, fp16 on older GPUs, fp32
on CPU/MPS), the GPU's free memory checked first; ``trust_remote_code`` off.

``--alpha`` (NTK scaling of the context, as in the original scripts' ``attn_and_long_ctx_patches.py``) is applied
through transformers' rope parameters of the loaded config, never by patching transformers: see
:func:`ntk_rope_parameters`.
"""
from __future__ import annotations

import math
from pathlib import Path

from .core import CourseError
from .device import check_fits, choose, quantization_config

# inference needs the weights plus KV cache and activations: x1.2 at 4K tokens (helpers.catalog.step_needs)
INFERENCE_OVERHEAD = 1.2


def _is_padding(rows: int, tokens: int) -> bool:
    """Embeddings padded to a multiple of 64 for speed (e.g. 32064 rows for 32000 tokens) are fine."""
    return rows % 64 == 0 and rows - tokens < 128


def _cuda_count() -> int:
    import torch

    return torch.cuda.device_count()


def _check_memory(base_model: str | Path, choice, precision: str) -> None:
    """On a CUDA GPU, refuse a model whose weights (x1.2) do not fit in the free memory (CourseError)."""
    from transformers import AutoConfig

    from .catalog import weights_gib

    try:
        cfg = AutoConfig.from_pretrained(str(base_model), trust_remote_code=False).to_dict()
        need = weights_gib(cfg, precision) * INFERENCE_OVERHEAD
    except (OSError, KeyError, TypeError, ValueError):
        return  # not a LLaMA-style config (or unreadable here): from_pretrained reports the real problem
    check_fits(need, choice, f"--base_model {base_model}", precision)


ALPHA_HELP = ("The scaling factor of NTK method, can be a float or 'auto' (the original scripts' --alpha; "
              "1.0 = off). A float multiplies rope_theta by alpha**(d/(d-2)); 'auto' = transformers' dynamic NTK")


def parse_alpha(value) -> float | str | None:
    """``--alpha`` checked: returns ``None`` (no NTK scaling: absent or 1.0), a float > 0, or ``"auto"``.

    Raises ``CourseError`` naming ``--alpha`` for anything else (``0``, ``-1``, ``fast``, ``nan``)."""
    if value is None:
        return None
    if isinstance(value, str) and value.strip().lower() == "auto":
        return "auto"
    try:
        alpha = float(value)
    except (TypeError, ValueError):
        alpha = float("nan")
    if not math.isfinite(alpha) or alpha <= 0:
        raise CourseError(f"--alpha {value}: the NTK scaling factor must be a number > 0 (e.g. 2, 4) or 'auto' "
                          "(1.0 = no scaling)")
    return None if alpha == 1.0 else alpha


def ntk_rope_parameters(config, alpha) -> dict:
    """The ``rope_parameters`` a transformers ``config`` gets for ``--alpha`` (``config`` itself is not changed).

    - a float ``alpha`` (fixed NTK-aware scaling): ``rope_theta * alpha ** (d / (d - 2))`` with ``d`` the head
      dimension, the rope type kept (``default``, or ``linear`` for the 16K PI models: the original patch also
      combines its NTK base with the config's linear factor) — exactly what the original patch computes;
    - ``"auto"``: transformers' dynamic NTK (``rope_type="dynamic"``, ``factor=2``). Its base
      ``theta * (2 * L / C - 1) ** (d / (d - 2))`` for a sequence of ``L > C`` tokens (``C`` =
      ``max_position_embeddings``) is the original's ``alpha = L / (C / 2) - 1`` (``AUTO_COEFF=1``); both keep
      the plain frequencies up to ``C`` tokens. Where it differs: the original also stacks 'auto' on a
      linear-scaled (16K) model; transformers cannot combine dynamic with linear, so that is refused here
      (use a float alpha on the 16K models).

    Raises ``CourseError`` naming ``--alpha`` for a model with another rope scaling (e.g. the 64K models' YaRN,
    which needs no NTK: the original README says the same) or for 'auto' on a linear-scaled model.
    """
    alpha = parse_alpha(alpha)
    rope = dict(getattr(config, "rope_parameters", None) or {})
    theta = float(rope.get("rope_theta") or getattr(config, "rope_theta", None) or 10000.0)
    kind = rope.get("rope_type", rope.get("type")) or "default"
    if alpha is None:
        return rope or {"rope_type": "default", "rope_theta": theta}
    if kind not in ("default", "linear"):
        raise CourseError(f"--alpha {alpha}: this model already scales rope with {kind!r} (rope_parameters "
                          f"{rope}); NTK --alpha only applies to plain or linear (PI, 16K) models: drop --alpha")
    if alpha == "auto":
        if kind != "default":
            raise CourseError(f"--alpha auto: the model uses {kind} rope scaling (factor {rope.get('factor')}); "
                              "transformers cannot stack dynamic NTK on it: pass a float, e.g. --alpha 2")
        return {"rope_type": "dynamic", "factor": 2.0, "rope_theta": theta}
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    return {**rope, "rope_type": kind, "rope_theta": theta * alpha ** (head_dim / (head_dim - 2))}


AUTO_CONTEXT_FACTOR = 4  # 'auto' has no fixed limit; the original README reports 12K-18K for the 4K models


def ntk_context(config, alpha) -> int:
    """Tokens a model loaded with ``--alpha`` is served for: ``max_position_embeddings`` times ``alpha`` (a float
    alpha divides the lowest rotary frequency by exactly ``alpha``, so ``alpha`` times the trained positions keep
    its angles in the trained range), or times :data:`AUTO_CONTEXT_FACTOR` for ``"auto"``; unchanged without."""
    context = int(getattr(config, "max_position_embeddings", 2048))
    alpha = parse_alpha(alpha)
    if alpha is None:
        return context
    return context * AUTO_CONTEXT_FACTOR if alpha == "auto" else max(context, int(context * alpha))


def load_model(base_model: str | Path, lora_model: str | Path | None = None, tokenizer_path: str | Path | None = None,
               device: str | None = None, dtype=None, load_in_8bit: bool = False, gpus: str | None = None,
               load_in_4bit: bool = False, alpha: float | str | None = None):
    """Returns ``(model, tokenizer)`` in eval mode. ``lora_model`` may be a PEFT adapter folder.

    ``device`` / ``dtype`` (a ``torch.dtype``) default to :func:`helpers.device.choose`; ``load_in_8bit`` /
    ``load_in_4bit`` (NF4) quantize the base with bitsandbytes on a CUDA GPU; ``alpha`` (``--alpha``: a float or
    ``"auto"``) sets NTK rope scaling in the model's config (:func:`ntk_rope_parameters`).
    """
    import os

    from transformers import AutoModelForCausalLM

    from .tokenizer import load_tokenizer

    if gpus is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = gpus
    if load_in_8bit and load_in_4bit:
        raise CourseError("--load_in_8bit and --load_in_4bit exclude each other: pass one of them")
    alpha = parse_alpha(alpha)
    choice = choose(device)
    device = choice.device
    dtype = dtype or choice.dtype
    bits = 8 if load_in_8bit else 4 if load_in_4bit else None
    quantization = quantization_config(bits, choice)
    for flag, value in (("--base_model", base_model), ("--lora_model", lora_model), ("--tokenizer_path", tokenizer_path)):
        if value is not None and not Path(value).exists() and os.environ.get("HF_HUB_OFFLINE") == "1":
            raise CourseError(f"{flag} {value}: folder not found (offline mode cannot download; check the path)")
    tok_src = tokenizer_path or lora_model or base_model
    tokenizer = load_tokenizer(tok_src)
    if choice.is_cuda and (quantization is None or _cuda_count() == 1):
        # one GPU holds the whole model (device_map="auto" may spread a quantized one over several: not checked)
        _check_memory(base_model, choice, {8: "int8", 4: "int4"}.get(bits, str(dtype).removeprefix("torch.")))
    kwargs = dict(dtype=dtype, trust_remote_code=False, low_cpu_mem_usage=True)
    if quantization is not None:
        kwargs["quantization_config"] = quantization
        kwargs["device_map"] = "auto"
    if alpha is not None:
        from transformers import AutoConfig

        config = AutoConfig.from_pretrained(str(base_model), trust_remote_code=False)
        config.rope_parameters = ntk_rope_parameters(config, alpha)
        kwargs["config"] = config
    model = AutoModelForCausalLM.from_pretrained(base_model, **kwargs)
    vocab = model.get_input_embeddings().weight.shape[0]
    if len(tokenizer) > vocab:
        # a LoRA trained with a larger (extended) vocabulary: grow the embeddings before loading it; new rows start
        # at the mean row, as in training and merging (an adapter without embedding rows then behaves as merged)
        from .vocab import resize_embeddings

        resize_embeddings(model, len(tokenizer))
    elif len(tokenizer) < vocab and not _is_padding(vocab, len(tokenizer)):
        raise CourseError(
            f"tokenizer {tok_src} has {len(tokenizer)} tokens but the model {base_model} has {vocab} rows: "
            "this tokenizer belongs to another model (e.g. LLaMA's 32000 vs Chinese-LLaMA's 49953). "
            "Pass the tokenizer saved with this model (--tokenizer_path)")
    if lora_model is not None:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, str(lora_model), torch_dtype=dtype)
    if quantization is None:
        model.to(device)
    model.eval()
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.unk_token  # LLaMA has no pad token; unk is never predicted
    tokenizer.padding_side = "left"
    return model, tokenizer


def add_model_arguments(parser, lora_help: str = "PEFT LoRA folder applied on top of --base_model") -> None:
    """The model flags every serving CLI shares, named as in the original inference_hf.py / openai_api_server.py."""
    parser.add_argument("--base_model", required=True, help="HF model folder (a merged model, or the base with --lora_model)")
    parser.add_argument("--lora_model", default=None, help=lora_help)
    parser.add_argument("--tokenizer_path", default=None, help="tokenizer folder or tokenizer.model (default: LoRA, else base)")
    parser.add_argument("--gpus", default=None, help="CUDA_VISIBLE_DEVICES, e.g. 0 or 0,1")
    parser.add_argument("--only_cpu", action="store_true", help="run on CPU even when a GPU is present")
    parser.add_argument("--load_in_8bit", action="store_true", help="8-bit weights, half of fp16 (CUDA + bitsandbytes)")
    parser.add_argument("--load_in_4bit", action="store_true",
                        help="4-bit NF4 weights, a quarter of fp16 (CUDA + bitsandbytes)")
    parser.add_argument("--seed", type=int, default=None, help="random seed for sampling (reproducible runs)")
    parser.add_argument("--alpha", default="1.0", help=ALPHA_HELP)


def apply_model_arguments(args) -> dict:
    """Validate the shared flags, apply ``--gpus``/``--seed``; returns ``device``/``load_in_8bit``/``load_in_4bit``
    for load_model, plus ``alpha`` when ``--alpha`` asks for NTK scaling (not 1.0)."""
    import os

    from .core import set_seed

    if args.load_in_8bit and args.load_in_4bit:
        raise CourseError("--load_in_8bit and --load_in_4bit exclude each other: pass one of them")
    for flag, on in (("--load_in_8bit", args.load_in_8bit), ("--load_in_4bit", args.load_in_4bit)):
        if on and args.only_cpu:
            raise CourseError(f"{flag} needs a CUDA GPU (bitsandbytes); on CPU drop the flag (or drop --only_cpu)")
    if args.gpus is not None and not args.only_cpu:
        os.environ["CUDA_VISIBLE_DEVICES"] = args.gpus
    if args.seed is not None:
        set_seed(args.seed)
    options = {"device": "cpu" if args.only_cpu else None, "load_in_8bit": args.load_in_8bit,
               "load_in_4bit": args.load_in_4bit}
    alpha = parse_alpha(getattr(args, "alpha", None))
    if alpha is not None:
        options["alpha"] = alpha
    return options
