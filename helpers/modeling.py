"""Loading a course model the way the original scripts do (inference_hf.py, the web UI, the API server).

``load_model(base_model, lora_model=..., tokenizer_path=...)``: tokenizer from ``tokenizer_path`` or the
LoRA folder or the base; embeddings resized to the tokenizer *before* a LoRA with a larger vocabulary
is loaded; device and dtype from ``helpers.device.choose`` (bf16 on compute >= 8.0, fp16 on older GPUs, fp32
on CPU/MPS), the GPU's free memory checked first; ``trust_remote_code`` off.
"""
from __future__ import annotations

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


def load_model(base_model: str | Path, lora_model: str | Path | None = None, tokenizer_path: str | Path | None = None,
               device: str | None = None, dtype=None, load_in_8bit: bool = False, gpus: str | None = None,
               load_in_4bit: bool = False):
    """Returns ``(model, tokenizer)`` in eval mode. ``lora_model`` may be a PEFT adapter folder.

    ``device`` / ``dtype`` (a ``torch.dtype``) default to :func:`helpers.device.choose`; ``load_in_8bit`` /
    ``load_in_4bit`` (NF4) quantize the base with bitsandbytes on a CUDA GPU.
    """
    import os

    from transformers import AutoModelForCausalLM

    from .tokenizer import load_tokenizer

    if gpus is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = gpus
    if load_in_8bit and load_in_4bit:
        raise CourseError("--load_in_8bit and --load_in_4bit exclude each other: pass one of them")
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
    model = AutoModelForCausalLM.from_pretrained(base_model, **kwargs)
    vocab = model.get_input_embeddings().weight.shape[0]
    if len(tokenizer) > vocab:
        # a LoRA trained with a larger (extended) vocabulary: grow the embeddings before loading it
        model.resize_token_embeddings(len(tokenizer), mean_resizing=False)
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


def apply_model_arguments(args) -> dict:
    """Validate the shared flags, apply ``--gpus``/``--seed``; returns ``device``/``load_in_8bit``/``load_in_4bit``
    for load_model."""
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
    return {"device": "cpu" if args.only_cpu else None, "load_in_8bit": args.load_in_8bit,
            "load_in_4bit": args.load_in_4bit}
