"""The tiny-artifact factory: small, deterministic stand-ins for everything the real course downloads.

Everything is built from ``data/`` with fixed seeds, cached in ``<workspace>/tiny/<name>`` and
rebuilt automatically when the factory code or its input data change. Same code + same data ->
byte-identical files (checked by SHA256 in the tests).

| artifact | real counterpart | tiny size |
|---|---|---|
| ``llama_sp``            | LLaMA ``tokenizer.model`` (32000 pieces)          | ~1000 BPE pieces, English |
| ``chinese_sp``          | ``chinese_sp.model`` (20000 pieces)               | see ``TINY_ZH_VOCAB`` |
| ``merged_tokenizers``   | Chinese-LLaMA 49953 / Chinese-Alpaca 49954        | base + Chinese (+ ``[PAD]``) |
| ``hf_model``            | ``llama-7b-hf`` (hidden 4096, 32 layers)          | hidden 64, 2 layers, 4 heads (GQA: 2 kv heads) |
| ``meta_checkpoint``     | ``7B/consolidated.00.pth`` + ``params.json``      | 1 shard, or 2 tensor-parallel shards |
| ``lora_adapters``       | Chinese-LLaMA-LoRA, Chinese-Alpaca-LoRA           | r=8 LoRA + embed_tokens/lm_head |
| ``merged_model``        | merged Chinese-LLaMA / Chinese-Alpaca (step 04)   | base + LoRA(s), HF safetensors |
"""
from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

from .core import DATA_DIR, workspace
from .io import atomic_dir
from .weights import load_hf_state_dict

FACTORY_VERSION = "1"
SEED = 1234
TINY_BASE_VOCAB = 1000
TINY_ZH_VOCAB = 3000

TINY_CONFIG = dict(
    hidden_size=64,
    intermediate_size=172,  # LLaMA's rule: multiple_of(4) * ceil(2/3 * 4 * 64 / 4)
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=4,
    max_position_embeddings=1024,
    rms_norm_eps=1e-6,
    initializer_range=0.1,
    tie_word_embeddings=False,
    bos_token_id=1,
    eos_token_id=2,
)
LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "down_proj", "up_proj"]
_SOURCES = ["tiny.py", "vocab.py", "tokenizer.py", "convert.py", "weights.py"]


def _fingerprint(name: str, inputs: list[Path], extra: str = "") -> str:
    h = hashlib.sha256(f"{FACTORY_VERSION}|{SEED}|{name}|{extra}".encode())
    here = Path(__file__).parent
    for src in _SOURCES:
        h.update((here / src).read_bytes())
    for p in inputs:
        h.update(Path(p).read_bytes())
    return h.hexdigest()


def _cached(name: str, build, inputs: list[Path] = (), extra: str = "") -> Path:
    """Return ``<workspace>/tiny/<name>``, building it (atomically, under a lock) when stale."""
    from filelock import FileLock

    root = workspace("tiny")
    target = root / name
    key = _fingerprint(name, list(inputs), extra)
    stamp = target / ".fingerprint"

    def fresh() -> bool:
        return stamp.is_file() and stamp.read_text(encoding="utf-8") == key

    if fresh():
        return target
    with FileLock(str(root / f".{name}.lock")):
        if not fresh():
            with atomic_dir(target, overwrite=True) as tmp:
                build(tmp)
                (tmp / ".fingerprint").write_text(key, encoding="utf-8")
    return target


# --------------------------------------------------------------------------- tokenizers
def _strip_paths(model_file: Path) -> Path:
    """sentencepiece stores the training ``input`` and ``model_prefix`` paths in the model: keep names only,
    so the same data gives byte-identical files wherever the workspace is."""
    from .tokenizer import load_sp_proto

    proto = load_sp_proto(model_file)
    spec = proto.trainer_spec
    names = [Path(x).name for x in spec.input]
    del spec.input[:]
    spec.input.extend(names)
    spec.model_prefix = Path(spec.model_prefix).name
    model_file.write_bytes(proto.SerializeToString())
    return model_file


def base_sp_model() -> Path:
    """LLaMA-like ``tokenizer.model`` trained on ``data/en_corpus.txt`` (BPE, byte_fallback, split_digits)."""
    from .vocab import train_sp_model

    src = DATA_DIR / "en_corpus.txt"

    def build(tmp: Path):
        _strip_paths(train_sp_model([src], tmp / "tokenizer", TINY_BASE_VOCAB, character_coverage=1.0))
        (tmp / "tokenizer.vocab").unlink()

    return _cached("llama_sp", build, [src]) / "tokenizer.model"


def chinese_sp_model() -> Path:
    """The Chinese SentencePiece model (``chinese_sp.model``), built by :func:`helpers.vocab.train_chinese_sp`."""
    from . import vocab

    inputs = vocab.chinese_training_inputs()

    def build(tmp: Path):
        _strip_paths(vocab.train_chinese_sp(tmp / "chinese_sp", vocab_size=TINY_ZH_VOCAB))
        for extra in tmp.glob("*.vocab"):
            extra.unlink()

    return _cached("chinese_sp", build, inputs, extra=str(TINY_ZH_VOCAB)) / "chinese_sp.model"


def merged_tokenizers() -> dict[str, Path]:
    """Chinese-LLaMA (base + Chinese) and Chinese-Alpaca (+ ``[PAD]``) tokenizers, SP and HF formats."""
    from . import vocab

    base, zh = base_sp_model(), chinese_sp_model()

    def build(tmp: Path):
        vocab.merge_tokenizers(base, zh, tmp)

    root = _cached("merged_tokenizers", build, [base, zh])
    return {
        "llama_sp": root / "merged_tokenizer_sp" / "chinese_llama.model",
        "llama_hf": root / "merged_tokenizer_hf",
        "alpaca_sp": root / "merged_tokenizer_sp" / "chinese_alpaca.model",
        "alpaca_hf": root / "alpaca_tokenizer_hf",
    }


# --------------------------------------------------------------------------- models
def _seed(offset: int = 0):
    import torch

    torch.manual_seed(SEED + offset)


def tiny_config(vocab_size: int, gqa: bool = False, llama2: bool = False):
    from transformers import LlamaConfig

    cfg = dict(TINY_CONFIG, vocab_size=vocab_size)
    if gqa:
        cfg["num_key_value_heads"] = 2
    if llama2:
        cfg["rms_norm_eps"] = 1e-5
        cfg["max_position_embeddings"] = 4096
    return LlamaConfig(**cfg)


def _random_llama(config, seed_offset: int):
    """A random LLaMA with non-trivial norms (so layout mistakes show up in the logits)."""
    import torch
    from transformers import LlamaForCausalLM

    _seed(seed_offset)
    model = LlamaForCausalLM(config)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.uniform_(0.5, 1.5)
    model.generation_config.do_sample = False
    model.config._name_or_path = "tiny-llama"
    return model.eval()


def hf_model(gqa: bool = False) -> Path:
    """A tiny HF ``LlamaForCausalLM`` folder (config, safetensors, base tokenizer). ``gqa``: 4 heads, 2 kv heads."""
    from .tokenizer import save_hf_tokenizer
    import sentencepiece as spm

    sp_model = base_sp_model()
    name = "hf_llama_gqa" if gqa else "hf_llama"

    def build(tmp: Path):
        vocab_size = spm.SentencePieceProcessor(model_file=str(sp_model)).get_piece_size()
        model = _random_llama(tiny_config(vocab_size, gqa=gqa, llama2=gqa), 1 if gqa else 0)
        model.save_pretrained(tmp, safe_serialization=True)
        save_hf_tokenizer(sp_model, tmp)

    return _cached(name, build, [sp_model])


def meta_checkpoint(num_shards: int = 1, gqa: bool = False) -> Path:
    """An original-format Meta download: ``tokenizer.model`` + ``<size>/consolidated.0N.pth`` + ``params.json``.

    ``<size>`` is ``tiny`` (1 shard) or ``tiny-tp2`` (2 tensor-parallel shards); add ``gqa`` for LLaMA-2-70B-style
    grouped-query attention. The weights are those of :func:`hf_model` in Meta's layout.
    """
    import torch
    from transformers import AutoConfig

    from .convert import hf_to_meta_state_dict, meta_params_from_config, split_meta_shards

    src = hf_model(gqa=gqa)
    size = "tiny" + ("-gqa" if gqa else "") + (f"-tp{num_shards}" if num_shards > 1 else "")

    def build(tmp: Path):
        cfg = AutoConfig.from_pretrained(src)
        sd = load_hf_state_dict(src)
        meta = hf_to_meta_state_dict(sd, cfg.num_attention_heads, cfg.num_key_value_heads)
        params = meta_params_from_config(cfg)
        out = tmp / size
        out.mkdir()
        for rank, shard in enumerate(split_meta_shards(meta, num_shards)):
            torch.save(shard, out / f"consolidated.{rank:02d}.pth")
        (out / "params.json").write_text(json.dumps(params), encoding="utf-8")
        shutil.copyfile(src / "tokenizer.model", tmp / "tokenizer.model")

    return _cached(f"meta_{size}", build, [src / "model.safetensors", src / "config.json"])


def _save_adapter(peft_model, tokenizer_dir: Path, out: Path, base_name: str) -> None:
    peft_model.save_pretrained(out, safe_serialization=True, save_embedding_layers=True)
    cfg_path = out / "adapter_config.json"
    cfg = json.loads(cfg_path.read_text(encoding="utf-8"))
    # Keep files byte-identical wherever they are built: no absolute workspace paths, and PEFT's
    # set-valued fields (target_modules) in a fixed order.
    cfg["base_model_name_or_path"] = base_name
    cfg = {k: sorted(v) if isinstance(v, list) and all(isinstance(x, str) for x in v) else v for k, v in cfg.items()}
    cfg_path.write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    (out / "README.md").write_text(
        f"# {out.name} (tiny stand-in)\n\nA random LoRA for the course's tiny `{base_name}` model, built by "
        "`helpers.tiny.lora_adapters()`; it mirrors the real release (PEFT LoRA r=8 on q,k,v,o,gate,down,up plus "
        "full embed_tokens/lm_head, shipped with its tokenizer). Load it with "
        "`helpers.modeling.load_model(base, lora_model=<this folder>)`.\n", encoding="utf-8")
    for f in tokenizer_dir.iterdir():
        if f.is_file() and f.name.startswith(("tokenizer", "special_tokens")):
            shutil.copyfile(f, out / f.name)


def _make_lora(model, seed_offset: int):
    """Wrap ``model`` in a LoRA with non-zero B (so merging visibly changes it) and trainable embed/lm_head."""
    import torch
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(r=8, lora_alpha=32, lora_dropout=0.05, target_modules=LORA_TARGETS,
                        modules_to_save=["embed_tokens", "lm_head"], task_type="CAUSAL_LM")
    pm = get_peft_model(model, config)
    _seed(seed_offset)
    with torch.no_grad():
        for name, p in pm.named_parameters():
            if "lora_B" in name:
                p.normal_(0.0, 0.05)
            elif "modules_to_save" in name:
                p.add_(torch.randn_like(p) * 0.02)
    return pm


def lora_adapters() -> dict[str, Path]:
    """Tiny Chinese-LLaMA-LoRA (vocab base+Chinese) and Chinese-Alpaca-LoRA (+ ``[PAD]``) in PEFT format.

    As in the real release, the Alpaca LoRA was trained on top of the LLaMA LoRA merged into the base,
    so the two must be applied in that order.
    """
    import torch
    from transformers import AutoModelForCausalLM

    from .tokenizer import load_tokenizer

    base = hf_model()
    toks = merged_tokenizers()

    def build(tmp: Path):
        llama_vocab = len(load_tokenizer(toks["llama_hf"]))
        alpaca_vocab = len(load_tokenizer(toks["alpaca_hf"]))
        model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
        _seed(10)
        model.resize_token_embeddings(llama_vocab, mean_resizing=False)
        pm = _make_lora(model, 12)
        _save_adapter(pm, toks["llama_hf"], tmp / "chinese-llama-lora", "tiny-llama")
        merged = pm.merge_and_unload()
        _seed(13)
        merged.resize_token_embeddings(alpaca_vocab, mean_resizing=False)
        pm2 = _make_lora(merged, 14)
        _save_adapter(pm2, toks["alpaca_hf"], tmp / "chinese-alpaca-lora", "tiny-llama")

    root = _cached("lora_adapters", build, [base / "model.safetensors", toks["llama_sp"], toks["alpaca_sp"]])
    return {"llama": root / "chinese-llama-lora", "alpaca": root / "chinese-alpaca-lora"}


def merged_model(kind: str = "alpaca") -> Path:
    """The tiny merged model with the extended vocabulary, merged by :func:`helpers.merge.merge_lora_into` as in
    step 04: ``llama`` = base + Chinese-LLaMA-LoRA, ``alpaca`` = base + Chinese-LLaMA-LoRA + Chinese-Alpaca-LoRA.
    Returns the HF folder (``<workspace>/tiny/merged_<kind>/tiny-chinese-<kind>-merged``)."""
    from .core import CourseError
    from .merge import merge_lora_into

    if kind not in ("llama", "alpaca"):
        raise CourseError(f"kind {kind!r}: choose llama or alpaca")
    loras = lora_adapters()
    chain = [loras["llama"]] + ([loras["alpaca"]] if kind == "alpaca" else [])
    base, name = hf_model(), f"tiny-chinese-{kind}-merged"
    here = Path(__file__).parent

    def build(tmp: Path):
        merge_lora_into(base, chain, tmp / name, output_type="huggingface", progress=False)

    inputs = [base / "model.safetensors", *(p / "adapter_model.safetensors" for p in chain), here / "merge.py"]
    return _cached(f"merged_{kind}", build, inputs) / name


def build_all() -> dict[str, Path]:
    """Build (or reuse) every tiny artifact; returns their paths."""
    paths = {
        "llama_sp": base_sp_model(),
        "chinese_sp": chinese_sp_model(),
        "hf_llama": hf_model(),
        "hf_llama_gqa": hf_model(gqa=True),
        "meta_tiny": meta_checkpoint(1),
        "meta_tiny_tp2": meta_checkpoint(2),
        "meta_tiny_gqa_tp2": meta_checkpoint(2, gqa=True),
    }
    paths.update({f"tok_{k}": v for k, v in merged_tokenizers().items()})
    paths.update({f"lora_{k}": v for k, v in lora_adapters().items()})
    return paths


def describe(paths: dict[str, Path] | None = None):
    """A table (pandas DataFrame) of the tiny artifacts: path, files, size."""
    import pandas as pd

    paths = paths or build_all()
    rows = []
    for name, p in paths.items():
        files = [p] if p.is_file() else [f for f in p.rglob("*") if f.is_file() and not f.name.startswith(".")]
        rows.append({"artifact": name, "path": str(p.relative_to(workspace())), "files": len(files),
                     "size_kb": round(sum(f.stat().st_size for f in files) / 1024, 1)})
    return pd.DataFrame(rows)
