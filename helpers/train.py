"""LoRA pre-training (PT) and instruction fine-tuning (SFT): ``run_clm_pt_with_peft.py`` / ``run_clm_sft_with_peft.py``.

    python -m helpers.train pt  --model_name_or_path BASE --tokenizer_name_or_path TOK --dataset_dir DIR \\
        --block_size 512 --output_dir OUT [--lora_rank 8 --lora_alpha 32 --trainable q_proj,... ] ...
    python -m helpers.train sft --model_name_or_path BASE --tokenizer_name_or_path TOK --dataset_dir DIR \\
        --max_seq_length 512 --output_dir OUT [--peft_path EXISTING_LORA] ...
    torchrun --nproc_per_node 2 -m helpers.train sft ... [--deepspeed helpers/assets/ds_zero2_no_offload.json]

Flags are those of the original scripts: every ``transformers.TrainingArguments`` flag plus the model / data /
LoRA flags below (parsed with ``HfArgumentParser`` like the originals). Flags that transformers 5 renamed are
translated: ``--evaluation_strategy`` -> ``--eval_strategy``, ``--warmup_ratio R`` -> ``--warmup_steps R``,
``--group_by_length`` -> ``--train_sampling_strategy group_by_length``, ``--lora_trainable`` -> ``--trainable``.

Precision follows :func:`helpers.device.choose` unless the command line sets ``--bf16`` / ``--fp16`` / ``--use_cpu``:
``--bf16 True`` on GPUs of compute >= 8.0, ``--fp16 True`` (loss scaling by the Trainer's GradScaler) on 7.x
(V100, T4), nothing on CPU; ``--torch_dtype auto`` then loads the base in that dtype.

The adapter and the tokenizer are saved to ``<output_dir>/pt_lora_model`` or ``<output_dir>/sft_lora_model``,
the log history to ``<output_dir>/loss_history.json``; every rank writes the digest of its LoRA weights to
``<output_dir>/ranks/rank<N>.json`` (data parallelism keeps them identical).
"""
from __future__ import annotations

import dataclasses
import hashlib
import importlib.util
import os
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path

from .core import CourseError, cli_main
from .device import choose, quantization_config
from .io import read_json
from .weights import WeightReader

ASSETS = Path(__file__).resolve().parent / "assets"
DS_ZERO2 = ASSETS / "ds_zero2_no_offload.json"
STAGES = ("pt", "sft")
DEFAULT_TRAINABLE = "q_proj,v_proj,k_proj,o_proj,gate_proj,down_proj,up_proj"
DEFAULT_MODULES_TO_SAVE = "embed_tokens,lm_head"
RENAMED_FLAGS = {"--evaluation_strategy": "--eval_strategy", "--warmup_ratio": "--warmup_steps",
                 "--lora_trainable": "--trainable"}


# --------------------------------------------------------------------------- arguments
@dataclass
class ModelArguments:
    model_name_or_path: str = field(metadata={"help": "HF-format base model folder (or hub name in the real profile)"})
    tokenizer_name_or_path: str | None = field(default=None, metadata={"help": "tokenizer folder; default: the model"})
    torch_dtype: str = field(default="auto", metadata={"help": "auto | float32 | float16 | bfloat16",
                                                       "choices": ["auto", "float32", "float16", "bfloat16"]})


@dataclass
class DataArguments:
    dataset_dir: str = field(metadata={"help": "folder (or one file) of training data: PT .txt/.csv/.json/.jsonl, "
                                               "SFT .json/.jsonl (Alpaca, OpenAI messages, ShareGPT)"})
    validation_file: str | None = field(default=None, metadata={"help": "one file used for evaluation"})
    validation_split_percentage: float = field(default=0.0, metadata={
        "help": "fraction of the training data held out for evaluation when no --validation_file (0.001 = 0.1%)"})
    data_cache_dir: str | None = field(default=None, metadata={"help": "cache of tokenized datasets"})
    preprocessing_num_workers: int | None = field(default=None, metadata={
        "help": "accepted for the original command lines; tokenization here runs in one process (cached with "
                "--data_cache_dir)"})
    max_seq_length: int = field(default=512, metadata={"help": "SFT: tokens per example (longer ones are cut)"})
    block_size: int = field(default=512, metadata={"help": "PT: tokens per training block"})
    text_column: str = field(default="text", metadata={"help": "PT: the text column of CSV/JSON files"})
    prompt_template: str = field(default="alpaca", metadata={"help": "SFT prompt template: alpaca | alpaca2",
                                                             "choices": ["alpaca", "alpaca2"]})
    packing: str = field(default="flatten", metadata={
        "help": "SFT batching: flatten (no padding, position_ids restart per example, no cross-attention), "
                "longest (pad to the batch's longest, the original collator), pad_to_max",
        "choices": ["flatten", "longest", "pad_to_max"]})


@dataclass
class LoraArguments:
    trainable: str = field(default=DEFAULT_TRAINABLE, metadata={"help": "LoRA target modules, comma separated"})
    lora_rank: int = field(default=8, metadata={"help": "LoRA rank r"})
    lora_alpha: float = field(default=32.0, metadata={"help": "LoRA alpha (scale = alpha / r)"})
    lora_dropout: float = field(default=0.05, metadata={"help": "dropout on the LoRA input"})
    modules_to_save: str | None = field(default=DEFAULT_MODULES_TO_SAVE, metadata={
        "help": "modules trained in full and saved with the adapter (the resized embeddings)"})
    peft_path: str | None = field(default=None, metadata={
        "help": "an existing LoRA adapter to keep training (then the LoRA flags above are taken from it)"})
    load_in_kbits: int = field(default=16, metadata={"help": "4 = QLoRA (bitsandbytes NF4, CUDA only), 8, 16",
                                                     "choices": [4, 8, 16]})
    overwrite_output_dir: bool = field(default=False, metadata={"help": "replace an existing --output_dir"})


def _translate(argv: list[str]) -> list[str]:
    """Seed flag spellings -> transformers 5 ones (see the module docstring)."""
    out: list[str] = []
    i = 0
    while i < len(argv):
        a = argv[i]
        key, eq, value = a.partition("=")
        if key in RENAMED_FLAGS:
            out.append(RENAMED_FLAGS[key] + (eq + value if eq else ""))
        elif key == "--group_by_length":
            on = True
            if eq:
                on = value.lower() in ("1", "true", "yes")
            elif i + 1 < len(argv) and argv[i + 1].lower() in ("true", "false", "1", "0"):
                on = argv[i + 1].lower() in ("true", "1")
                i += 1
            if on:
                out += ["--train_sampling_strategy", "group_by_length"]
        else:
            out.append(a)
        i += 1
    given = {a.split("=")[0] for a in out}
    if "--report_to" not in given:
        out += ["--report_to", "none"]
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not _cuda():
        # torchrun on CPU: accelerate sets up multi-CPU DDP only with use_cpu, and CPU needs gloo
        if "--use_cpu" not in given:
            out += ["--use_cpu", "True"]
        if "--ddp_backend" not in given:
            out += ["--ddp_backend", "gloo"]
    return out


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def _flag_value(argv: list[str], flag: str) -> str | None:
    """The value of ``flag`` in ``argv`` (``--flag v`` or ``--flag=v``; a bare boolean flag gives ``"True"``),
    None when absent."""
    for i, a in enumerate(argv):
        key, eq, value = a.partition("=")
        if key == flag:
            if eq:
                return value
            return argv[i + 1] if i + 1 < len(argv) and not argv[i + 1].startswith("--") else "True"
    return None


def _true(value: str | None) -> bool:
    return value is not None and value.lower() in ("1", "true", "yes")


def precision_flags(argv: list[str], choice) -> list[str]:
    """TrainingArguments flags to add to ``argv`` for the device ``choice`` (a :class:`helpers.device.DeviceChoice`).

    Returns ``[]`` when ``argv`` sets ``--bf16``, ``--fp16`` or ``--use_cpu`` itself. On a CUDA GPU: an explicit
    ``--torch_dtype float16`` / ``bfloat16`` gets the matching ``--fp16 True`` / ``--bf16 True`` (half-precision
    weights need their mixed precision: fp16 gradients need loss scaling); otherwise ``choice.bf16`` /
    ``choice.fp16``. Off CUDA: ``--use_cpu True`` when the choice is the CPU although a GPU is visible
    (``COURSE_DEVICE=cpu``), else nothing.
    """
    given = {a.split("=")[0] for a in argv}
    if given & {"--bf16", "--fp16", "--use_cpu"}:
        return []
    if not choice.is_cuda:
        return ["--use_cpu", "True"] if choice.device == "cpu" and _cuda() else []
    dtype = _flag_value(argv, "--torch_dtype")
    if dtype == "float16" or (dtype in (None, "auto", "float32") and choice.fp16):
        return ["--fp16", "True"]
    if dtype == "bfloat16" or (dtype in (None, "auto", "float32") and choice.bf16):
        return ["--bf16", "True"]
    return []


def train_choice(argv: list[str]):
    """The :class:`helpers.device.DeviceChoice` of a training command line (the CPU with ``--use_cpu True``)."""
    return choose("cpu" if _true(_flag_value(argv, "--use_cpu")) else None)


def parse_args(argv: list[str]):
    """``(ModelArguments, DataArguments, LoraArguments, TrainingArguments)`` from original-style flags, mixed
    precision added from the device choice (:func:`precision_flags`)."""
    from transformers import HfArgumentParser, TrainingArguments

    argv = _translate(list(argv))
    argv += precision_flags(argv, train_choice(argv))
    if "--output_dir" not in [a.split("=")[0] for a in argv]:
        raise CourseError("--output_dir is required (where the adapter, checkpoints and loss history go)")
    if any(a.split("=")[0] == "--deepspeed" for a in argv) and importlib.util.find_spec("deepspeed") is None:
        raise CourseError("--deepspeed needs the deepspeed package (pip install deepspeed, on a CUDA machine); "
                          "without it drop --deepspeed: torchrun alone runs plain data parallelism (DDP)")
    parser = HfArgumentParser((ModelArguments, DataArguments, LoraArguments, TrainingArguments))
    return parser.parse_args_into_dataclasses(args=argv)


# --------------------------------------------------------------------------- vocabulary checks
def adapter_vocab_size(peft_path: str | Path) -> int | None:
    """Rows of the ``embed_tokens`` (or ``lm_head``) saved in a PEFT adapter, or None if it saves neither (read from
    the file headers)."""
    with WeightReader(peft_path, "--peft_path", adapter=True) as r:
        for key in r.keys:
            if ("embed_tokens" in key or "lm_head" in key) and "lora_" not in key:
                return r.shape(key)[0]
    return None


def check_vocab(model_vocab: int, tokenizer_size: int, tokenizer_path: str, model_path: str,
                peft_path: str | None = None) -> str:
    """Check base model, tokenizer and adapter vocabulary sizes up front; returns what will happen.

    Raises :class:`CourseError` saying which tokenizer goes with which adapter.
    """
    pairing = ("Chinese-LLaMA-LoRA goes with the Chinese-LLaMA tokenizer (merged_tokenizer_hf: real 49953 tokens; "
               "tiny: helpers.tiny.merged_tokenizers()['llama_hf']), Chinese-Alpaca-LoRA with the Chinese-Alpaca "
               "tokenizer (real 49954 = LLaMA's + [PAD]; tiny: merged_tokenizers()['alpaca_hf']). "
               "The tokenizer saved next to an adapter is always the right one.")
    if tokenizer_size < model_vocab:
        raise CourseError(
            f"--tokenizer_name_or_path {tokenizer_path} has {tokenizer_size} tokens but --model_name_or_path "
            f"{model_path} already has {model_vocab} embeddings: this tokenizer belongs to a smaller vocabulary "
            f"and would mis-read the model. {pairing}")
    if peft_path:
        rows = adapter_vocab_size(peft_path)
        if rows is not None and rows != tokenizer_size:
            hint = ""
            if (Path(peft_path) / "tokenizer_config.json").is_file():
                hint = f" Pass --tokenizer_name_or_path {peft_path} (it holds the adapter's tokenizer)."
            raise CourseError(
                f"--peft_path {peft_path} was trained with a {rows}-token vocabulary but --tokenizer_name_or_path "
                f"{tokenizer_path} has {tokenizer_size} tokens.{hint} {pairing}")
    if tokenizer_size > model_vocab:
        return f"embeddings resized {model_vocab} -> {tokenizer_size} for the extended tokenizer"
    return f"vocabulary {model_vocab} matches the tokenizer"


# --------------------------------------------------------------------------- model
def _dtype(name: str, targs):
    """The base model's ``torch.dtype``: ``--torch_dtype``, or for ``auto`` the mixed precision of ``targs``
    (bf16 -> bfloat16, fp16 -> float16, else float32)."""
    import torch

    if name == "auto":
        if targs.bf16:
            return torch.bfloat16
        if targs.fp16:
            return torch.float16
        return torch.float32
    return getattr(torch, name)


def build_model(margs: ModelArguments, largs: LoraArguments, targs, tokenizer):
    """The PEFT model to train: base (+ 4/8-bit quantization), embeddings resized, new or continued LoRA; returns
    ``(model, vocabulary note)``. Under fp16 mixed precision the trainable parameters are float32."""
    from peft import LoraConfig, PeftModel, get_peft_model, prepare_model_for_kbit_training
    from transformers import AutoConfig, AutoModelForCausalLM

    tok_path = margs.tokenizer_name_or_path or margs.model_name_or_path
    config = AutoConfig.from_pretrained(margs.model_name_or_path, trust_remote_code=False)
    note = check_vocab(config.vocab_size, len(tokenizer), tok_path, margs.model_name_or_path, largs.peft_path)
    dtype = _dtype(margs.torch_dtype, targs)
    kwargs = dict(dtype=dtype, trust_remote_code=False, low_cpu_mem_usage=True)
    if largs.load_in_kbits in (4, 8):
        # bitsandbytes' kernels run only on CUDA: on CPU train LoRA on the full-precision base instead
        choice = dataclasses.replace(train_choice(["--use_cpu", str(targs.use_cpu)]),
                                     dtype_name=str(dtype).removeprefix("torch."))
        kwargs["quantization_config"] = quantization_config(
            largs.load_in_kbits, choice, flag=f"--load_in_kbits {largs.load_in_kbits} (QLoRA)")
        kwargs["device_map"] = {"": int(os.environ.get("LOCAL_RANK", "0"))}
    model = AutoModelForCausalLM.from_pretrained(margs.model_name_or_path, **kwargs)
    # no KV cache while training: with a cache transformers ignores packed position_ids and the flattened
    # examples would attend to each other (checked in tests/test_data.py)
    model.config.use_cache = False
    if len(tokenizer) != model.get_input_embeddings().weight.shape[0]:
        model.resize_token_embeddings(len(tokenizer), mean_resizing=False)
    if largs.load_in_kbits in (4, 8):
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=targs.gradient_checkpointing)
    if targs.gradient_checkpointing:
        model.enable_input_require_grads()
    if largs.peft_path:
        model = PeftModel.from_pretrained(model, largs.peft_path, is_trainable=True)
    else:
        cfg = LoraConfig(task_type="CAUSAL_LM", target_modules=[m.strip() for m in largs.trainable.split(",") if m.strip()],
                         r=largs.lora_rank, lora_alpha=largs.lora_alpha, lora_dropout=largs.lora_dropout,
                         modules_to_save=[m.strip() for m in (largs.modules_to_save or "").split(",") if m.strip()] or None,
                         inference_mode=False)
        model = get_peft_model(model, cfg)
    if targs.fp16 and not targs.deepspeed:
        _upcast_trainable(model)
    return model, note


def _upcast_trainable(model) -> int:
    """Trainable parameters to float32 for fp16 mixed precision: the GradScaler refuses to unscale fp16 gradients
    (PEFT upcasts the LoRA matrices, not the ``modules_to_save`` copies of embed_tokens/lm_head). Returns how many
    tensors were cast."""
    import torch

    cast = 0
    for param in model.parameters():
        if param.requires_grad and param.dtype != torch.float32:
            param.data = param.data.float()
            cast += 1
    return cast


# --------------------------------------------------------------------------- data
def build_datasets(stage: str, dargs: DataArguments, tokenizer, seed: int):
    """``(train_dataset, eval_dataset | None, TokenStats)`` for ``stage``."""
    from . import data

    tok_key = data.tokenizer_fingerprint(tokenizer)

    def one(paths):
        if stage == "pt":
            key = data.cache_key("pt", *paths, dargs.text_column, dargs.block_size, tok_key)
            return data.cached(dargs.data_cache_dir, key, lambda: data.tokenize_pt(
                data.load_pt_texts(paths, dargs.text_column, dargs.data_cache_dir), tokenizer, dargs.block_size))
        key = data.cache_key("sft", *paths, dargs.prompt_template, dargs.max_seq_length, tok_key)
        return data.cached(dargs.data_cache_dir, key, lambda: data.tokenize_sft(
            data.load_sft_records(paths), tokenizer, dargs.max_seq_length, dargs.prompt_template))

    suffixes = data.PT_SUFFIXES if stage == "pt" else data.SFT_SUFFIXES
    train, stats = one(data.dataset_files(dargs.dataset_dir, suffixes))
    evaluation = None
    if dargs.validation_file:
        evaluation, _ = one([Path(dargs.validation_file)])
    elif dargs.validation_split_percentage > 0:
        split = train.train_test_split(test_size=dargs.validation_split_percentage, seed=seed)
        train, evaluation = split["train"], split["test"]
    return train, evaluation, stats


# --------------------------------------------------------------------------- results
def state_digest(tensors: dict) -> str:
    """SHA256 over sorted names and float32 bytes of a state dict (equal weights -> equal digest)."""
    import torch

    h = hashlib.sha256()
    for name in sorted(tensors):
        h.update(name.encode())
        h.update(tensors[name].detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    return h.hexdigest()


def adapter_digest(adapter_dir: str | Path) -> str:
    """:func:`state_digest` of a saved adapter (``adapter_model.safetensors`` or ``.bin``)."""
    with WeightReader(adapter_dir, "adapter folder", adapter=True) as r:
        return state_digest(r.state_dict())


def loss_curve(log_history: list[dict], key: str = "loss") -> list[tuple[int, float]]:
    """``[(step, value)]`` of ``key`` (``loss`` or ``eval_loss``) from a Trainer log history."""
    return [(int(e["step"]), float(e[key])) for e in log_history if key in e]


def plot_loss(log_history: list[dict] | str | Path, ax=None, title: str | None = None):
    """Plot training (and eval) loss against the step; returns the matplotlib Axes."""
    import matplotlib.pyplot as plt

    if isinstance(log_history, (str, Path)):
        log_history = read_json(log_history)
    if ax is None:
        _, ax = plt.subplots(figsize=(5, 3))
    for key, label in (("loss", "train"), ("eval_loss", "eval")):
        curve = loss_curve(log_history, key)
        if curve:
            ax.plot(*zip(*curve), marker="o", markersize=3, label=label)
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.legend()
    if title:
        ax.set_title(title)
    return ax


@dataclass
class TrainResult:
    """What a run produced: adapter folder, log history, data statistics, Trainer metrics."""

    stage: str
    output_dir: Path
    adapter_dir: Path
    log_history: list
    data_stats: dict
    metrics: dict
    vocab_note: str
    world_size: int = 1

    @property
    def losses(self) -> list[float]:
        return [v for _, v in loss_curve(self.log_history)]


def _save_tokenizer(tokenizer, src: str, out: Path) -> None:
    tokenizer.save_pretrained(out)
    sp = Path(src) / "tokenizer.model"
    if sp.is_file():  # keep the SentencePiece file for the merge / llama.cpp steps
        shutil.copyfile(sp, out / "tokenizer.model")


def tokenizer_folder(name_or_path: str) -> str:
    """A local folder for ``--tokenizer_name_or_path``: the path itself, or (real profile) the tokenizer files of a
    hub model downloaded with ``huggingface_hub`` (``HF_ENDPOINT`` may point to a mirror)."""
    if Path(name_or_path).exists() or os.environ.get("HF_HUB_OFFLINE") == "1":
        return str(name_or_path)
    from huggingface_hub import snapshot_download

    return snapshot_download(name_or_path, allow_patterns=["tokenizer*", "special_tokens_map.json"])


def run(stage: str, argv: list[str]) -> TrainResult:
    """Train a LoRA for ``stage`` (``pt`` | ``sft``) from original-style flags; returns a :class:`TrainResult`."""
    import torch
    from peft import get_peft_model_state_dict
    from transformers import Trainer, default_data_collator, set_seed

    from . import data
    from .io import atomic_dir, write_json
    from .tokenizer import load_tokenizer

    if stage not in STAGES:
        raise CourseError(f"stage {stage!r}: choose pt or sft")
    margs, dargs, largs, targs = parse_args(argv)
    out = Path(targs.output_dir)
    resuming = targs.resume_from_checkpoint is not None
    if out.is_dir() and any(out.glob("*_lora_model")) and not (largs.overwrite_output_dir or resuming):
        raise CourseError(f"--output_dir {out} already holds a trained adapter; pass --overwrite_output_dir "
                          "or --resume_from_checkpoint")
    for flag, value in (("--model_name_or_path", margs.model_name_or_path),
                        ("--tokenizer_name_or_path", margs.tokenizer_name_or_path), ("--peft_path", largs.peft_path)):
        if value and not Path(value).exists() and (flag == "--peft_path" or os.environ.get("HF_HUB_OFFLINE") == "1"):
            raise CourseError(f"{flag} {value}: folder not found (offline mode cannot download; check the path)")
    set_seed(targs.seed)
    tok_path = tokenizer_folder(margs.tokenizer_name_or_path or margs.model_name_or_path)
    tokenizer = load_tokenizer(tok_path)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.unk_token  # LLaMA has no pad token; padded positions carry no label
    tokenizer.padding_side = "right"
    with targs.main_process_first(desc="tokenize"):
        train_ds, eval_ds, stats = build_datasets(stage, dargs, tokenizer, targs.seed)
    if targs.process_index == 0:
        print(f"[{stage}] data: {stats}")
    model, note = build_model(margs, largs, targs, tokenizer)
    if targs.process_index == 0:
        print(f"[{stage}] {note}")
        model.print_trainable_parameters()
    collator = (default_data_collator if stage == "pt"
                else data.make_collator(tokenizer, dargs.packing, dargs.max_seq_length))
    trainer = Trainer(model=model, args=targs, train_dataset=train_ds, eval_dataset=eval_ds,
                      data_collator=collator, processing_class=tokenizer)
    train_out = trainer.train(resume_from_checkpoint=targs.resume_from_checkpoint)
    metrics = dict(train_out.metrics)
    if eval_ds is not None and targs.do_eval:
        metrics.update(trainer.evaluate())
    adapter_dir = out / f"{stage}_lora_model"
    digest = state_digest(get_peft_model_state_dict(model))
    world = targs.world_size
    write_json(out / "ranks" / f"rank{targs.process_index}.json",
               {"rank": targs.process_index, "world_size": world, "digest": digest,
                "global_step": trainer.state.global_step})
    if trainer.is_world_process_zero():
        with atomic_dir(adapter_dir, overwrite=True) as tmp:
            model.save_pretrained(tmp, safe_serialization=True)
            _save_tokenizer(tokenizer, tok_path, tmp)
        write_json(out / "loss_history.json", trainer.state.log_history)
        write_json(out / "data_stats.json", stats.as_dict())
        write_json(out / "train_metrics.json", metrics)
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.barrier()
    return TrainResult(stage, out, adapter_dir, list(trainer.state.log_history), stats.as_dict(), metrics, note, world)


def lora_budget(model: str | dict, rank: int = 8, kbits: int = 16, train_embeddings: bool = True,
                tokens: int = 512) -> dict:
    """Rough GPU memory (GB), adapter size (GB) and training FLOPs per sequence for a LoRA run on ``model`` (a repo
    id of :mod:`helpers.catalog` or a LLaMA ``config.json`` dict).

    Estimates, not measurements: frozen base weights at ``kbits`` bits; trainable parameters (LoRA on the 7 seed
    modules, plus ``embed_tokens``/``lm_head`` when ``train_embeddings``) cost 16 bytes each (fp32 weight, grad,
    two AdamW moments); activations are not included (gradient checkpointing keeps them ~1-2 GB at 512 tokens).
    """
    from . import catalog

    cfg = model if isinstance(model, dict) else catalog.get(model).config
    base = catalog.param_count(cfg)
    trainable = catalog.lora_param_count(cfg, rank, modules_to_save=("embed_tokens", "lm_head") if train_embeddings else ())
    gb = 1024 ** 3
    return {"params_b": round(base / 1e9, 2), "trainable_m": round(trainable / 1e6, 1),
            "weights_gb": round(base * kbits / 8 / gb, 1), "optimizer_gb": round(trainable * 16 / gb, 2),
            "total_gb": round((base * kbits / 8 + trainable * 16) / gb, 1),
            "adapter_gb_fp16": round(trainable * 2 / gb, 2), "tflop_per_seq": round(4 * base * tokens / 1e12, 1)}


def flags(**kwargs) -> list[str]:
    """``dict`` -> CLI flags (``None`` values skipped): the notebook way of writing the same command line."""
    argv: list[str] = []
    for key, value in kwargs.items():
        if value is None:
            continue
        argv += [f"--{key}", str(value)]
    return argv


def train(stage: str, **kwargs) -> TrainResult:
    """``run(stage, flags(**kwargs))``: ``train("sft", model_name_or_path=..., output_dir=..., max_steps=30)``."""
    return run(stage, flags(**kwargs))


def launch_command(stage: str, nproc_per_node: int = 2, deepspeed: bool = True, **kwargs) -> str:
    """The ``torchrun`` (+ DeepSpeed ZeRO-2) command line for ``stage`` with ``kwargs`` as flags."""
    head = f"torchrun --nnodes 1 --nproc_per_node {nproc_per_node} -m helpers.train {stage}"
    extra = flags(**kwargs)
    if deepspeed:
        extra = ["--deepspeed", str(DS_ZERO2.relative_to(Path(__file__).resolve().parents[1]))] + extra
    pairs = [f"{extra[i]} {extra[i + 1]}" for i in range(0, len(extra), 2)]
    return " \\\n    ".join([head] + pairs)


def main(argv: list[str] | None = None) -> int:
    """``python -m helpers.train pt|sft --flag ...``; exit 2 with a message on bad input."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in STAGES:
        print("usage: python -m helpers.train {pt,sft} --model_name_or_path ... --dataset_dir ... --output_dir ...\n"
              "       python -m helpers.train sft --help", file=sys.stderr)
        return 2
    return cli_main(_run, argv)


def _run(argv: list[str]) -> int:
    """The CLI: train ``argv[0]`` (pt or sft) with the flags ``argv[1:]``; rank 0 prints the loss."""
    result = run(argv[0], argv[1:])
    if result.world_size == 1 or int(os.environ.get("RANK", "0")) == 0:
        losses = result.losses
        if losses:
            print(f"[{result.stage}] loss {losses[0]:.3f} -> {losses[-1]:.3f}; adapter + tokenizer: {result.adapter_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
