"""LoRA pre-training (PT) and instruction fine-tuning (SFT): ``run_clm_pt_with_peft.py`` / ``run_clm_sft_with_peft.py``.

    python -m helpers.train pt  --model_name_or_path BASE --tokenizer_name_or_path TOK --dataset_dir DIR \\
        --block_size 512 --output_dir OUT [--lora_rank 8 --lora_alpha 32 --trainable q_proj,... ] ...
    python -m helpers.train sft --model_name_or_path BASE --tokenizer_name_or_path TOK --dataset_dir DIR \\
        --max_seq_length 512 --output_dir OUT [--peft_path EXISTING_LORA] ...
    torchrun --nproc_per_node 2 -m helpers.train sft ... [--deepspeed helpers/assets/ds_zero2_no_offload.json]
    deepspeed --num_gpus 2 --no_local_rank --module helpers.train sft --deepspeed helpers/assets/ds_zero3.json ...
    bash scripts/run_sft.sh / scripts/run_pt.sh      (the seed's commands, flag by flag; DRY_RUN=1 prints them)

DeepSpeed runs on CPU too (``DS_ACCELERATOR=cpu``, gloo; set here when no GPU is visible): ZeRO-2 (the seed's
config), ZeRO-3 (16-bit weights gathered on save) and ZeRO-3 + CPU offload, checked against the flags before the
Trainer reads them (:func:`check_deepspeed_config`). Every checkpoint records the run's settings
(``course_run.json``) and a resume from another run is refused (:func:`check_resume`). After training, the logits
of a fixed input are saved (``probe_logits.safetensors``) for :func:`reload_check`.

Flags are those of the original scripts: every ``transformers.TrainingArguments`` flag plus the model / data /
LoRA flags below (parsed with ``HfArgumentParser`` like the originals). Flags that transformers 5 renamed are
translated: ``--evaluation_strategy`` -> ``--eval_strategy``, ``--warmup_ratio R`` -> ``--warmup_steps R``,
``--group_by_length`` -> ``--train_sampling_strategy group_by_length``, ``--lora_trainable`` -> ``--trainable``.
Added: ``--embedding_init mean|random`` (new vocabulary rows), ``--packing``; ``--preprocessing_num_workers N``
tokenizes in N processes.

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
from functools import partial
from pathlib import Path

from .core import CourseError, cli_main
from .device import choose, quantization_config
from .io import read_json
from .weights import WeightReader

ASSETS = Path(__file__).resolve().parent / "assets"
DS_ZERO2 = ASSETS / "ds_zero2_no_offload.json"  # the seed's config (min_loss_scale 1e-10 -> 1: deepspeed 0.19 wants an int)
DS_ZERO3 = ASSETS / "ds_zero3.json"  # ZeRO-3, 16-bit weights gathered on save (else the adapter is saved empty)
DS_ZERO3_OFFLOAD = ASSETS / "ds_zero3_offload.json"  # ZeRO-3 + optimizer states and parameters offloaded to CPU RAM
DS_CONFIGS = {"zero2": DS_ZERO2, "zero3": DS_ZERO3, "zero3_offload": DS_ZERO3_OFFLOAD}
RUN_SIGNATURE = "course_run.json"  # written into every checkpoint: what a resume must match
PROBE = "probe_logits.safetensors"  # the trained model's logits on a fixed input (the reload check)
PROBE_TEXT = "把下面的句子翻译成英文。今天的天气很好。"
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
        "help": "processes that tokenize the data (datasets.map num_proc; cached with --data_cache_dir)"})
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
    embedding_init: str = field(default="mean", metadata={
        "help": "rows added for new tokens start as: mean (of the existing rows, helpers.vocab.resize_embeddings) | "
                "random (normal(0, initializer_range): the original scripts' resize_token_embeddings)",
        "choices": ["mean", "random"]})
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
    if "--deepspeed" in given and not _cuda():
        # DeepSpeed picks its accelerator on import: "cpu" (oneCCL if installed, else gloo: see deepspeed/accelerator)
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
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
    ds_path = _flag_value(argv, "--deepspeed")
    if ds_path is not None:
        if importlib.util.find_spec("deepspeed") is None:
            raise CourseError("--deepspeed needs the deepspeed package (DS_BUILD_OPS=0 pip install deepspeed==0.19.8, "
                              "or pip install -e '.[train]'); without it drop --deepspeed: torchrun alone runs plain "
                              "data parallelism (DDP)")
        check_deepspeed_config(ds_path, argv, int(os.environ.get("WORLD_SIZE", "1")))
    parser = HfArgumentParser((ModelArguments, DataArguments, LoraArguments, TrainingArguments))
    return parser.parse_args_into_dataclasses(args=argv)


def _int_flag(argv: list[str], flag: str) -> int:
    """The integer value of ``flag`` in ``argv``, or the ``TrainingArguments`` default."""
    from transformers import TrainingArguments

    value = _flag_value(argv, flag)
    if value is None:
        return int(TrainingArguments.__dataclass_fields__[flag.lstrip("-")].default)
    try:
        return int(value)
    except ValueError:
        raise CourseError(f"{flag} {value}: expected an integer") from None


def check_deepspeed_config(path: str | Path, argv: list[str], world_size: int = 1) -> dict:
    """Check a DeepSpeed JSON config against the command line before the Trainer reads it; returns the config.

    Raises :class:`CourseError` naming the field and the flag when: the file is missing or not JSON; a numeric
    ``train_micro_batch_size_per_gpu`` / ``gradient_accumulation_steps`` differs from ``--per_device_train_batch_size``
    / ``--gradient_accumulation_steps``; a numeric ``train_batch_size`` is not micro x accumulation x ``world_size``
    (processes); ZeRO-3 does not gather the 16-bit weights on save (the adapter would be saved empty);
    ``fp16.min_loss_scale`` is not an integer >= 1 (deepspeed 0.19 rejects the seed's ``1e-10``).
    ``"auto"`` values are filled in by the Trainer from the flags.
    """
    import json

    p = Path(path)
    if not p.is_file():
        raise CourseError(f"--deepspeed {path}: file not found (the course ships {', '.join(c.name for c in DS_CONFIGS.values())} "
                          f"in {ASSETS})")
    try:
        cfg = json.loads(p.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise CourseError(f"--deepspeed {path}: not valid JSON ({e}); fix the file") from None
    micro = _int_flag(argv, "--per_device_train_batch_size")
    accum = _int_flag(argv, "--gradient_accumulation_steps")
    checks = (("train_micro_batch_size_per_gpu", micro, "--per_device_train_batch_size"),
              ("gradient_accumulation_steps", accum, "--gradient_accumulation_steps"))
    for key, want, flag in checks:
        have = cfg.get(key, "auto")
        if have != "auto" and int(have) != want:
            raise CourseError(f"--deepspeed {path}: {key} is {have} but {flag} is {want}; set {key} to \"auto\" "
                              f"(the Trainer fills it from the flag) or make them equal")
    total = cfg.get("train_batch_size", "auto")
    if total != "auto" and int(total) != micro * accum * world_size:
        raise CourseError(
            f"--deepspeed {path}: train_batch_size is {total} but --per_device_train_batch_size {micro} x "
            f"--gradient_accumulation_steps {accum} x {world_size} processes (WORLD_SIZE) = {micro * accum * world_size}; "
            "set train_batch_size to \"auto\" or change the flags / the number of processes")
    zero = cfg.get("zero_optimization", {})
    if int(zero.get("stage", 0)) == 3:
        gather = zero.get("stage3_gather_16bit_weights_on_model_save",
                          zero.get("gather_16bit_weights_on_model_save", False))
        if gather is not True:
            raise CourseError(
                f"--deepspeed {path}: ZeRO-3 splits every weight across the processes, and with "
                "zero_optimization.stage3_gather_16bit_weights_on_model_save not true the Trainer saves an empty "
                "adapter (and checkpoints only in DeepSpeed's own format); set it to true (as in "
                f"{DS_ZERO3.name})")
    fp16 = cfg.get("fp16", {})
    scale = fp16.get("min_loss_scale", 1)
    if not (isinstance(scale, int) or float(scale).is_integer()) or float(scale) < 1:
        raise CourseError(f"--deepspeed {path}: fp16.min_loss_scale is {scale}; deepspeed 0.19 wants an integer >= 1 "
                          "(the original ds_zero2_no_offload.json has 1e-10): set it to 1")
    return cfg


def zero_stage(targs) -> int | None:
    """The ZeRO stage of the run's DeepSpeed config (``targs.deepspeed``), or None without DeepSpeed."""
    if not targs.deepspeed:
        return None
    cfg = targs.deepspeed if isinstance(targs.deepspeed, dict) else read_json(targs.deepspeed)
    return int(cfg.get("zero_optimization", {}).get("stage", 0))


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
    """The PEFT model to train: base (+ 4/8-bit quantization), embeddings resized (new rows: ``--embedding_init``),
    new or continued LoRA; returns ``(model, vocabulary note)``. Under fp16 mixed precision the trainable
    parameters are float32."""
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
    if len(tokenizer) != config.vocab_size:
        note += f", new rows: {largs.embedding_init}"
        if largs.embedding_init == "mean":
            from .vocab import resize_embeddings

            resize_embeddings(model, len(tokenizer))  # new rows = mean of the old ones (neutral new tokens)
        else:  # what the original scripts did: transformers initialises the new rows like fresh weights
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
def tokenize_in_shards(build, items: list, workers: int = 1):
    """``build(items)`` -> ``(Dataset, TokenStats)``, run on ``workers`` contiguous shards of ``items`` in parallel
    processes (``--preprocessing_num_workers``); returns the shards' datasets concatenated in order and their
    statistics summed. One worker (or few items): ``build(items)`` in this process.

    (A process pool rather than ``datasets.map(num_proc)``: helpers.data tokenizes Python lists, not Arrow rows.)
    """
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor

    from datasets import concatenate_datasets

    n = min(int(workers or 1), len(items))
    if n <= 1:
        return build(items)
    size = -(-len(items) // n)
    shards = [items[i:i + size] for i in range(0, len(items), size)]
    with ProcessPoolExecutor(len(shards), mp_context=mp.get_context("fork")) as pool:
        parts = list(pool.map(build, shards))
    stats = parts[0][1]
    for _, more in parts[1:]:
        for name in ("records", "kept", "truncated", "dropped", "tokens", "target_tokens"):
            setattr(stats, name, getattr(stats, name) + getattr(more, name))
        for key, value in more.extra.items():
            stats.extra[key] = stats.extra.get(key, 0) + value
    return concatenate_datasets([ds for ds, _ in parts]), stats


def build_datasets(stage: str, dargs: DataArguments, tokenizer, seed: int):
    """``(train_dataset, eval_dataset | None, TokenStats)`` for ``stage``."""
    from . import data

    tok_key = data.tokenizer_fingerprint(tokenizer)

    workers = dargs.preprocessing_num_workers or 1

    def one(paths):
        if stage == "pt":
            # like the original's datasets.map(group_texts, num_proc=...), each shard drops its own tail
            key = data.cache_key("pt", *paths, dargs.text_column, dargs.block_size, tok_key, workers)
            return data.cached(dargs.data_cache_dir, key, lambda: tokenize_in_shards(
                partial(data.tokenize_pt, tokenizer=tokenizer, block_size=dargs.block_size),
                data.load_pt_texts(paths, dargs.text_column, dargs.data_cache_dir), workers))
        key = data.cache_key("sft", *paths, dargs.prompt_template, dargs.max_seq_length, tok_key)
        return data.cached(dargs.data_cache_dir, key, lambda: tokenize_in_shards(
            partial(data.tokenize_sft, tokenizer=tokenizer, max_seq_length=dargs.max_seq_length,
                    template=dargs.prompt_template), data.load_sft_records(paths), workers))

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


def _loss_axes(ax, title: str | None):
    """Labels a loss plot (step / loss, legend, optional title); returns ``ax``."""
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.legend()
    if title:
        ax.set_title(title)
    return ax


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
    return _loss_axes(ax, title)


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


def run_signature(stage: str, margs: ModelArguments, dargs: DataArguments, largs: LoraArguments, targs,
                  vocab_size: int) -> dict:
    """What a checkpoint of this run must share with a run that resumes from it: a ``{flag: value}`` dict (flag
    names as on the command line; ``vocab_size`` is the tokenizer's, ``zero_stage`` from ``--deepspeed``)."""
    data_files = sorted(p.name for p in _data_files(stage, dargs))
    return {"stage": stage, "--model_name_or_path": str(margs.model_name_or_path), "vocab_size": vocab_size,
            "--peft_path": largs.peft_path, "--lora_rank": largs.lora_rank, "--lora_alpha": largs.lora_alpha,
            "--trainable": ",".join(sorted(m.strip() for m in largs.trainable.split(",") if m.strip())),
            "--modules_to_save": largs.modules_to_save or "",
            "--per_device_train_batch_size": targs.per_device_train_batch_size,
            "--gradient_accumulation_steps": targs.gradient_accumulation_steps, "world_size": targs.world_size,
            "zero_stage": zero_stage(targs), "--seed": targs.seed, "--dataset_dir": data_files,
            ("--block_size" if stage == "pt" else "--max_seq_length"):
                dargs.block_size if stage == "pt" else dargs.max_seq_length,
            "--packing": dargs.packing if stage == "sft" else None}


def _data_files(stage: str, dargs: DataArguments) -> list[Path]:
    from . import data

    try:
        return data.dataset_files(dargs.dataset_dir, data.PT_SUFFIXES if stage == "pt" else data.SFT_SUFFIXES)
    except CourseError:
        return [Path(dargs.dataset_dir)]


def check_resume(checkpoint: str | Path, signature: dict) -> None:
    """Refuse ``--resume_from_checkpoint`` from another run: raises :class:`CourseError` naming every setting
    whose value differs between the checkpoint's ``course_run.json`` and ``signature`` (this run). Checkpoints
    written without it (other tools) are only checked for being Trainer checkpoints."""
    ckpt = Path(checkpoint)
    if not (ckpt / "trainer_state.json").is_file():
        raise CourseError(f"--resume_from_checkpoint {ckpt}: not a Trainer checkpoint (no trainer_state.json); "
                          "pass a checkpoint-N folder of an earlier run with the same flags")
    if not (ckpt / RUN_SIGNATURE).is_file():
        return
    saved = read_json(ckpt / RUN_SIGNATURE)
    diff = [f"{k}: checkpoint {saved.get(k)!r}, now {v!r}" for k, v in signature.items() if saved.get(k) != v]
    if diff:
        raise CourseError(f"--resume_from_checkpoint {ckpt} comes from another run: " + "; ".join(diff)
                          + ". Resume with the checkpoint's settings, or start a new run without "
                          "--resume_from_checkpoint")


def _signature_callback(signature: dict):
    """Returns a ``TrainerCallback`` that writes ``signature`` into every checkpoint folder (rank 0), for
    :func:`check_resume`."""
    from transformers import TrainerCallback

    from .io import write_json

    class SignatureCallback(TrainerCallback):
        def on_save(self, args, state, control, **kwargs):
            folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
            if state.is_world_process_zero and folder.is_dir():
                write_json(folder / RUN_SIGNATURE, signature)

    return SignatureCallback()


def _loss_guard_callback():
    """Returns a ``TrainerCallback`` that stops a run whose logged loss is NaN or infinite, with a CourseError saying
    the usual causes and fixes (HF Trainer would otherwise keep training a broken model to the last step)."""
    import math

    from transformers import TrainerCallback

    class LossGuard(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):
            logs = logs or {}
            loss, norm = logs.get("loss"), logs.get("grad_norm")
            bad_norm = norm is not None and not math.isfinite(norm)
            # Trainer's logging_nan_inf_filter hides a NaN loss (it logs 0 or the previous mean), but the gradient
            # norm stays NaN; under fp16 a non-finite norm is also the loss scaler skipping a step, which is normal
            if loss is not None and (not math.isfinite(loss) or (bad_norm and (loss == 0 or not args.fp16))):
                shown = loss if not math.isfinite(loss) else f"nan (logged as {loss:g}; grad_norm {norm})"
                raise CourseError(
                    f"the training loss became {shown} at step {state.global_step} (--output_dir {args.output_dir}): "
                    "an fp16 overflow (values above 65504: use --bf16 on a GPU with compute capability >= 8.0, or keep "
                    "fp16 with loss scaling), a learning rate too high (lower --learning_rate), exploding gradients "
                    "(--max_grad_norm 1.0), or a batch whose labels are all masked (-100: check --max_seq_length "
                    "against your records). Notebook 07's fp16 lesson reproduces the first case")

    return LossGuard()


def _gathered(model):
    """A context in which every parameter of ``model`` is whole: ZeRO-3's ``GatheredParameters`` (collective: all
    ranks enter it), else nothing."""
    from contextlib import nullcontext

    from transformers.integrations import is_deepspeed_zero3_enabled

    if not is_deepspeed_zero3_enabled():
        return nullcontext()
    import deepspeed

    return deepspeed.zero.GatheredParameters(list(model.parameters()), modifier_rank=None)


def _save_probe(path: Path, input_ids, logits) -> None:
    """The trained model's logits on :data:`PROBE_TEXT`, written atomically (safetensors)."""
    from safetensors.torch import save_file

    tmp = path.with_name(path.name + ".tmp")
    save_file({"input_ids": input_ids.contiguous(), "logits": logits.contiguous()}, str(tmp))
    os.replace(tmp, path)


def reload_check(output_dir: str | Path, base_model: str | Path | None = None) -> dict:
    """The reload check of a finished run: its saved adapter, loaded with PEFT onto the base, must reproduce the
    trained model's logits (saved as ``probe_logits.safetensors`` by :func:`run`) and differ from the base.

    Returns ``{"max_diff_vs_trained": float, "max_diff_vs_base": float, "adapter": path}``; the first should be
    ~1e-6 (float32 CPU), the second clearly > 0 (otherwise "my LoRA changed nothing"). ``base_model`` defaults to
    the adapter's ``base_model_name_or_path``.
    """
    import torch
    from peft import PeftModel
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    from .tokenizer import load_tokenizer

    out = Path(output_dir)
    adapters = sorted(out.glob("*_lora_model"))
    if not adapters or not (out / PROBE).is_file():
        raise CourseError(f"{out}: no *_lora_model adapter or {PROBE}; pass the --output_dir of a finished run")
    adapter = adapters[0]
    base_model = base_model or read_json(adapter / "adapter_config.json")["base_model_name_or_path"]
    probe = load_file(str(out / PROBE))
    base = AutoModelForCausalLM.from_pretrained(str(base_model), dtype=torch.float32, trust_remote_code=False)
    rows = adapter_vocab_size(adapter) or len(load_tokenizer(adapter))
    if rows != base.get_input_embeddings().weight.shape[0]:
        from .vocab import resize_embeddings

        resize_embeddings(base, rows)
    base.eval()
    with torch.no_grad():
        base_logits = base(input_ids=probe["input_ids"]).logits
    model = PeftModel.from_pretrained(base, str(adapter)).eval()
    with torch.no_grad():
        logits = model(input_ids=probe["input_ids"]).logits
    return {"max_diff_vs_trained": float((logits - probe["logits"]).abs().max()),
            "max_diff_vs_base": float((logits - base_logits).abs().max()), "adapter": str(adapter)}


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
    signature = run_signature(stage, margs, dargs, largs, targs, len(tokenizer))
    if resuming:
        check_resume(targs.resume_from_checkpoint, signature)
    if targs.deepspeed and targs.world_size > 1 and not _cuda():
        # with --use_cpu accelerate starts torch.distributed but not deepspeed.comm, and ZeRO-3's zero.Init (inside
        # from_pretrained) would then count 1 process: join the existing gloo group first
        import deepspeed

        deepspeed.init_distributed(dist_backend=targs.ddp_backend or "gloo")
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
                      data_collator=collator, processing_class=tokenizer, callbacks=[_signature_callback(signature), _loss_guard_callback()])
    train_out = trainer.train(resume_from_checkpoint=targs.resume_from_checkpoint)
    metrics = dict(train_out.metrics)
    if eval_ds is not None and targs.do_eval:
        metrics.update(trainer.evaluate())
    metrics["num_input_tokens_seen"] = trainer.state.num_input_tokens_seen  # all processes (--include_num_input_tokens_seen)
    adapter_dir = out / f"{stage}_lora_model"
    world = targs.world_size
    probe_ids = tokenizer(PROBE_TEXT, return_tensors="pt")["input_ids"]
    with _gathered(model):  # ZeRO-3: every process holds a shard of each weight; gather them (all ranks take part)
        digest = state_digest(get_peft_model_state_dict(model))
        model.eval()
        with torch.no_grad():
            probe_logits = model(input_ids=probe_ids.to(next(model.parameters()).device)).logits.float().cpu()
        if trainer.is_world_process_zero():
            with atomic_dir(adapter_dir, overwrite=True) as tmp:
                model.save_pretrained(tmp, safe_serialization=True)
                _save_tokenizer(tokenizer, tok_path, tmp)
    write_json(out / "ranks" / f"rank{targs.process_index}.json",
               {"rank": targs.process_index, "world_size": world, "digest": digest,
                "global_step": trainer.state.global_step, "deepspeed": trainer.is_deepspeed_enabled,
                "zero_stage": signature["zero_stage"]})
    if trainer.is_world_process_zero():
        _save_probe(out / PROBE, probe_ids, probe_logits)
        write_json(out / "loss_history.json", trainer.state.log_history)
        write_json(out / "data_stats.json", stats.as_dict())
        write_json(out / "train_metrics.json", metrics)
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.barrier()
    return TrainResult(stage, out, adapter_dir, list(trainer.state.log_history), stats.as_dict(), metrics, note, world)


def compare_embedding_init(output_dir: str | Path, stage: str = "pt", **kwargs) -> dict:
    """The same short run twice, new embedding rows started as the ``mean`` of the old rows and ``random``
    (``--embedding_init``); returns ``{"mean": [losses], "random": [losses]}`` (``kwargs``: the training flags)."""
    return {init: run(stage, flags(output_dir=Path(output_dir) / init, embedding_init=init, **kwargs)).losses
            for init in ("mean", "random")}


def precision_demo(dtype: str = "float16", learning_rate: float = 20.0, steps: int = 6,
                   max_grad_norm: float | None = None, seed: int = 0) -> dict:
    """The fp16 lesson on the tiny base: ``steps`` of plain SGD on one fixed random batch with *every* tensor
    (weights, activations, gradients) in ``dtype`` -- no fp32 master weights, no loss scaling.

    Returns ``{"loss": [...], "max_abs_logit": [...], "max_abs_hidden": [...]}`` per step (before the update). With a
    too-large ``learning_rate`` the weights grow each step; in float16 (largest value 65504) the activations
    overflow to inf and the loss becomes NaN, while float32 / bfloat16 (8 exponent bits) show the same divergence
    as a huge but finite loss. A lower learning rate or ``max_grad_norm`` (gradient clipping) avoid it.
    """
    import torch
    from transformers import AutoModelForCausalLM

    from . import tiny

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(tiny.hf_model(), dtype=getattr(torch, dtype))
    model.train()
    ids = torch.randint(3, model.config.vocab_size, (4, 32), generator=torch.Generator().manual_seed(seed))
    optimizer = torch.optim.SGD(model.parameters(), lr=learning_rate)
    out = {"loss": [], "max_abs_logit": [], "max_abs_hidden": []}
    for _ in range(steps):
        res = model(input_ids=ids, labels=ids, output_hidden_states=True)
        out["loss"].append(float(res.loss))
        out["max_abs_logit"].append(float(res.logits.detach().float().abs().max()))
        out["max_abs_hidden"].append(max(float(h.detach().float().abs().max()) for h in res.hidden_states))
        optimizer.zero_grad()
        res.loss.backward()
        if max_grad_norm is not None:
            torch.nn.utils.clip_grad_norm_(model.parameters(), max_grad_norm)
        optimizer.step()
    return out


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


def memory_per_gpu(model: str | dict, gpus: int = 1, zero: int = 0, kbits: int = 16, rank: int = 8,
                   train_embeddings: bool = True) -> dict:
    """Estimated GPU memory (GB) per GPU of a LoRA run on ``gpus`` GPUs with DeepSpeed ZeRO stage ``zero`` (0 = plain
    DDP or one GPU); returns ``{"base_gb", "trainable_gb", "total_gb"}``.

    The same byte counts as :func:`lora_budget` (frozen base at ``kbits`` bits; 16 bytes per trainable parameter:
    fp32 weight 4 + gradient 4 + two AdamW moments 8), split as ZeRO does: stage 1 partitions the moments, stage 2
    also the gradients, stage 3 also the weights (the frozen base too) over ``gpus``. Activations, the CUDA
    context (~0.5-1 GB) and ZeRO-3's gathered layer are not included.
    """
    from . import catalog

    cfg = model if isinstance(model, dict) else catalog.get(model).config
    base = catalog.param_count(cfg) * kbits / 8
    trainable = catalog.lora_param_count(cfg, rank, modules_to_save=("embed_tokens", "lm_head") if train_embeddings
                                         else ())
    weight, grad, moments = 4 * trainable, 4 * trainable, 8 * trainable
    n = max(gpus, 1)
    if zero >= 1:
        moments /= n
    if zero >= 2:
        grad /= n
    if zero >= 3:
        weight /= n
        base /= n
    gb = 1024 ** 3
    return {"base_gb": round(base / gb, 2), "trainable_gb": round((weight + grad + moments) / gb, 2),
            "total_gb": round((base + weight + grad + moments) / gb, 1)}


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


def _ds_config_path(deepspeed: bool | str | Path | None) -> Path | None:
    """``True`` / ``"zero2"`` / ``"zero3"`` / ``"zero3_offload"`` / a path -> the config file; falsy -> None."""
    if not deepspeed:
        return None
    if deepspeed is True:
        return DS_ZERO2
    return DS_CONFIGS.get(str(deepspeed), Path(deepspeed))


def launch_command(stage: str, nproc_per_node: int = 2, deepspeed: bool | str = True, launcher: str = "torchrun",
                   nnodes: int = 1, rdzv_endpoint: str | None = None, hostfile: str | None = None, **kwargs) -> str:
    """The command line that starts ``stage`` on ``nproc_per_node`` processes per machine, as text.

    ``launcher="torchrun"`` (the seed's way; several machines: ``nnodes`` > 1 and ``rdzv_endpoint`` host:port of
    the first one, the same command on every machine) or ``"deepspeed"`` (``hostfile`` lists the machines and their
    GPU slots; it starts the other machines over ssh). ``deepspeed``: ``True`` (ZeRO-2, the seed's config),
    ``"zero3"``, ``"zero3_offload"``, a path, or ``False`` (plain DDP). ``kwargs`` become the training flags.
    """
    root = Path(__file__).resolve().parents[1]
    if launcher == "torchrun":
        head = f"torchrun --nnodes {nnodes} --nproc_per_node {nproc_per_node}"
        if nnodes > 1:
            head += f" --rdzv-backend c10d --rdzv-endpoint {rdzv_endpoint or 'MASTER_HOST:29500'} --rdzv-id course"
        head += f" -m helpers.train {stage}"
    elif launcher == "deepspeed":
        head = "deepspeed" + (f" --hostfile {hostfile}" if hostfile else "") + \
               f" --num_gpus {nproc_per_node} --no_local_rank --module helpers.train {stage}"
    else:
        raise CourseError(f"launcher {launcher!r}: choose torchrun or deepspeed")
    extra = flags(**kwargs)
    config = _ds_config_path(deepspeed)
    if config is not None:
        extra = ["--deepspeed", str(config.relative_to(root) if config.is_relative_to(root) else config)] + extra
    pairs = [f"{extra[i]} {extra[i + 1]}" for i in range(0, len(extra), 2)]
    return " \\\n    ".join([head] + pairs)


def launch(stage: str, output_dir: str | Path, nproc_per_node: int = 2, deepspeed: bool | str = False,
           launcher: str = "torchrun", timeout: float = 900, **kwargs) -> dict:
    """Run ``stage`` in ``nproc_per_node`` new processes (``torchrun`` or the ``deepspeed`` launcher, on CPU with
    gloo) and wait; returns ``{"losses", "log_history", "metrics", "ranks", "output_dir", "seconds",
    "tokens_per_s_per_process"}`` read from what the run wrote. Raises :class:`CourseError` with the tail of the
    log when it fails. ``kwargs`` are training flags (``output_dir`` is set here)."""
    import subprocess
    import time

    out = Path(output_dir)
    argv = flags(output_dir=out, include_num_input_tokens_seen=True, **kwargs)
    config = _ds_config_path(deepspeed)
    if config is not None:
        argv = ["--deepspeed", str(config)] + argv
    bin_dir = Path(sys.executable).parent
    if launcher == "torchrun":
        cmd = [str(bin_dir / "torchrun"), "--nproc_per_node", str(nproc_per_node), "-m", "helpers.train", stage]
    else:
        cmd = [str(bin_dir / "deepspeed"), "--num_gpus", str(nproc_per_node), "--no_local_rank", "--module",
               "helpers.train", stage]
    root = Path(__file__).resolve().parents[1]
    # the venv's ninja first: DeepSpeed JIT-builds its CPU shared-memory op once (cached in ~/.cache/torch_extensions)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "DS_ACCELERATOR": os.environ.get("DS_ACCELERATOR", "cpu"),
           "PYTHONPATH": os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep),
           "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}"}
    start = time.perf_counter()
    proc = subprocess.run(cmd + argv, cwd=root, env=env, capture_output=True, text=True, timeout=timeout)
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        raise CourseError(f"{' '.join(cmd)} failed (exit {proc.returncode}):\n{proc.stderr[-2500:]}")
    return _read_run(out, seconds, nproc_per_node)


def _read_run(out: Path, seconds: float, world: int) -> dict:
    """What a finished run wrote into ``out`` (see :func:`launch`)."""
    history = read_json(out / "loss_history.json")
    metrics = read_json(out / "train_metrics.json")
    ranks = [read_json(p) for p in sorted((out / "ranks").glob("rank*.json"))]
    tokens = metrics.get("num_input_tokens_seen") or 0
    return {"losses": [v for _, v in loss_curve(history)], "log_history": history, "metrics": metrics,
            "ranks": ranks, "output_dir": out, "seconds": round(seconds, 1),
            "tokens_per_s_per_process": round(tokens / metrics["train_runtime"] / world, 1)}


def compare_parallelism(output_dir: str | Path, kinds=("single", "ddp", "zero2"), reuse: bool = True,
                        **kwargs) -> dict:
    """The same training (flags ``kwargs``, same seed and data) as one process with ``per_device_train_batch_size``
    B, and as two processes with B/2 each (plain DDP; DeepSpeed ZeRO-2 with the seed's config; ZeRO-3); returns
    ``{kind: launch() result}``. With ``reuse`` a finished run in ``output_dir/<kind>`` with the same flags is read
    back instead of trained again (the notebook's cache)."""
    import time

    from .io import write_json

    out = Path(output_dir)
    batch = int(kwargs.pop("per_device_train_batch_size", 4))
    results = {}
    for kind in kinds:
        run_dir = out / kind
        nproc = 1 if kind == "single" else 2
        run_flags = dict(kwargs, per_device_train_batch_size=batch // nproc)
        key = {k: str(v) for k, v in run_flags.items()}
        stamp = run_dir / "launch_flags.json"
        if reuse and stamp.is_file() and read_json(stamp) == key and (run_dir / "train_metrics.json").is_file():
            results[kind] = _read_run(run_dir, 0.0, nproc)
            results[kind]["cached"] = True
            continue
        if run_dir.exists():
            shutil.rmtree(run_dir)
        if kind == "single":
            start = time.perf_counter()
            run("sft" if "max_seq_length" in run_flags else "pt",
                flags(output_dir=run_dir, include_num_input_tokens_seen=True, **run_flags))
            results[kind] = _read_run(run_dir, time.perf_counter() - start, 1)
        else:
            deepspeed = {"ddp": False}.get(kind, kind)
            results[kind] = launch("sft" if "max_seq_length" in run_flags else "pt", run_dir, 2, deepspeed,
                                   **run_flags)
        write_json(stamp, key)
        results[kind]["cached"] = False
    return results


def plot_runs(results: dict, ax=None, title: str | None = "same data, same seed, global batch equal"):
    """Training loss of several runs (``{name: {"losses": [...]}}``, e.g. :func:`compare_parallelism`) on one
    Axes; returns it."""
    import matplotlib.pyplot as plt

    if ax is None:
        _, ax = plt.subplots(figsize=(6, 3))
    styles = ["-", "--", ":", "-."]
    for i, (name, res) in enumerate(results.items()):
        losses = res["losses"]
        ax.plot(range(1, len(losses) + 1), losses, styles[i % 4], marker="o", markersize=3, label=name)
    return _loss_axes(ax, title)


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
