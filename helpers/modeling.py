"""Loading a course model the way the original scripts do (inference_hf.py, the web UI, the API server).

``load_model(base_model, lora_model=..., tokenizer_path=...)``: tokenizer from ``tokenizer_path`` or the
LoRA folder or the base; embeddings resized to the tokenizer *before* a LoRA with a larger vocabulary
is loaded; fp16 on GPU, fp32 on CPU; ``trust_remote_code`` off.
"""
from __future__ import annotations

from pathlib import Path

from .core import CourseError, pick_device


def pick_dtype(device: str):
    import torch

    if device.startswith("cuda"):
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.float32


def _is_padding(rows: int, tokens: int) -> bool:
    """Embeddings padded to a multiple of 64 for speed (e.g. 32064 rows for 32000 tokens) are fine."""
    return rows % 64 == 0 and rows - tokens < 128


def load_model(base_model: str | Path, lora_model: str | Path | None = None, tokenizer_path: str | Path | None = None,
               device: str | None = None, dtype=None, load_in_8bit: bool = False, gpus: str | None = None):
    """Returns ``(model, tokenizer)`` in eval mode. ``lora_model`` may be a PEFT adapter folder."""
    import os

    import torch
    from transformers import AutoModelForCausalLM

    from .tokenizer import load_tokenizer

    if gpus is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = gpus
    device = device or pick_device()
    dtype = dtype or pick_dtype(device)
    for flag, value in (("--base_model", base_model), ("--lora_model", lora_model), ("--tokenizer_path", tokenizer_path)):
        if value is not None and not Path(value).exists() and os.environ.get("HF_HUB_OFFLINE") == "1":
            raise CourseError(f"{flag} {value}: folder not found (offline mode cannot download; check the path)")
    tok_src = tokenizer_path or lora_model or base_model
    tokenizer = load_tokenizer(tok_src)
    kwargs = dict(dtype=dtype, trust_remote_code=False, low_cpu_mem_usage=True)
    if load_in_8bit:
        if not device.startswith("cuda"):
            raise CourseError("--load_in_8bit needs a CUDA GPU and bitsandbytes; on CPU drop the flag")
        from transformers import BitsAndBytesConfig

        kwargs["quantization_config"] = BitsAndBytesConfig(load_in_8bit=True)
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
    if not load_in_8bit:
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
    parser.add_argument("--load_in_8bit", action="store_true", help="8-bit weights (CUDA + bitsandbytes)")
    parser.add_argument("--seed", type=int, default=None, help="random seed for sampling (reproducible runs)")


def apply_model_arguments(args) -> dict:
    """Validate the shared flags, apply ``--gpus``/``--seed``; returns ``device``/``load_in_8bit`` for load_model."""
    import os

    from .core import set_seed

    if args.load_in_8bit and args.only_cpu:
        raise CourseError("--load_in_8bit needs a CUDA GPU (bitsandbytes); drop it together with --only_cpu")
    if args.gpus is not None and not args.only_cpu:
        os.environ["CUDA_VISIBLE_DEVICES"] = args.gpus
    if args.seed is not None:
        set_seed(args.seed)
    return {"device": "cpu" if args.only_cpu else None, "load_in_8bit": args.load_in_8bit}
