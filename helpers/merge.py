"""Course step 04: merge LoRA adapters into the base model, shard by shard, and package adapters.

``python -m helpers.merge --base_model DIR --lora_model a,b --output_type huggingface|pth --output_dir DIR``
works like the original ``merge_llama_with_chinese_lora.py``: the LoRAs are applied left to right
(Chinese-LLaMA-LoRA first, then Chinese-Alpaca-LoRA); for each one the vocabulary is resized to its
tokenizer, ``modules_to_save`` (embed_tokens / lm_head) replace the base tensors and every targeted
weight gets ``W += B @ A * scaling``. ``python -m helpers.merge verify DIR`` checks a folder against
its ``SHA256SUMS``; ``verify --manifest FILE [--model ID] DIR`` against a sha256sum file or a published table
(``data/published_sha256/``: the SHA256.md values of Chinese-LLaMA-Alpaca).

Streaming: the whole merge plan (every output tensor's name, shape and dtype) is known from the
shard headers and the adapters before any weight is read, so output safetensors files are written
tensor by tensor (header first) while the base is read one tensor at a time (helpers.weights). Peak memory is about
the adapters plus a few copies of the largest tensor (safetensors input), or one memory-mapped shard
(``.bin`` input), never the whole model (benchmark P2).
"""
from __future__ import annotations

import argparse
import contextlib
import math
import re
import shutil
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

from .core import DATA_DIR, CourseError, cli_main
from .device import check_ram
from .io import MANIFEST, atomic_dir, read_json, write_json, write_manifest
from .weights import (  # noqa: F401  (StreamingSafetensorsWriter: benchmarks time merge's writes)
    StreamingSafetensorsWriter, WeightReader, hf_to_meta_tensor, kv_heads, mapped_tensors, meta_key, nbytes)

EMBED = "model.embed_tokens.weight"
LM_HEAD = "lm_head.weight"
TOKENIZER_FILES = ("tokenizer.model", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")
# Meta's release: shards per model size, keyed by hidden size (as in merge_llama_with_chinese_lora.py).
META_NUM_SHARDS = {4096: 1, 5120: 2, 6656: 4, 8192: 8}


class MergeError(CourseError):
    """A merge that cannot be done as asked; the message says why and what to do."""


# --------------------------------------------------------------------------- adapters
@dataclass(frozen=True)
class Saved:
    """A full tensor stored in an adapter file (modules_to_save, or the original it was trained on), read only when
    it is needed and released after: a 55296-row embedding is 0.4 GiB in fp16, and a memory-mapped ``.bin`` keeps
    every page it touched resident while any tensor of it is alive."""

    folder: Path
    key: str
    shape: tuple
    dtype: object

    def load(self):
        """The tensor, read now from the adapter file."""
        with WeightReader(self.folder, "--lora_model", adapter=True) as r:
            return r.get(self.key)


@dataclass
class Adapter:
    """One PEFT LoRA folder: the LoRA matrices in memory (small), full saved tensors as :class:`Saved` handles."""

    path: Path
    config: dict
    lora: dict = field(default_factory=dict)         # base key -> (A, B)
    replace: dict = field(default_factory=dict)      # base key -> Saved full tensor (modules_to_save)
    original: dict = field(default_factory=dict)     # base key -> Saved base tensor the adapter was trained on
    tokenizer_len: int | None = None

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def vocab_size(self) -> int | None:
        """Rows of the adapter's embedding (modules_to_save), else its tokenizer's length, else None."""
        if EMBED in self.replace:
            return self.replace[EMBED].shape[0]
        return self.tokenizer_len

    def scaling(self, key: str) -> float:
        """``alpha / r`` (``alpha / sqrt(r)`` with rslora) with PEFT's rank_pattern / alpha_pattern."""
        module = key.rsplit(".weight", 1)[0]
        r = _pattern_value(self.config.get("rank_pattern") or {}, module, self.config["r"])
        alpha = _pattern_value(self.config.get("alpha_pattern") or {}, module, self.config["lora_alpha"])
        return alpha / math.sqrt(r) if self.config.get("use_rslora") else alpha / r

    def add_delta_(self, acc, key: str) -> None:
        """``acc += B @ A * scaling`` in place (float32 ``acc``): one fused matrix product, no temporaries."""
        a, b = self.lora[key]
        if self.config.get("fan_in_fan_out"):
            acc.addmm_(a.float().T, b.float().T, alpha=self.scaling(key))
        else:
            acc.addmm_(b.float(), a.float(), alpha=self.scaling(key))


def _pattern_value(patterns: dict, module: str, default):
    for pat, value in patterns.items():  # the same regex as peft.utils.other.get_pattern_key
        if re.match(rf"(.*\.)?({pat})$", module):
            return value
    return default


_LORA_KEY = re.compile(r"^(?P<mod>.+)\.lora_(?P<ab>[AB])(?:\.[^.]+)?\.weight$")


def load_adapter(path: str | Path) -> Adapter:
    """Read a PEFT LoRA folder (adapter_config.json + adapter_model.safetensors/.bin + tokenizer)."""
    path = Path(path)
    if not (path / "adapter_config.json").is_file():
        raise MergeError(f"--lora_model {path}: no adapter_config.json; pass a PEFT LoRA folder "
                         "(adapter_config.json + adapter_model.safetensors)")
    config = read_json(path / "adapter_config.json")
    if config.get("peft_type", "LORA") != "LORA":
        raise MergeError(f"{path / 'adapter_config.json'}: peft_type {config.get('peft_type')!r}; only LoRA adapters can be merged here")
    if config.get("use_dora"):
        raise MergeError(f"{path}: DoRA adapters are not supported by the streaming merge; use PEFT's merge_and_unload")
    if config.get("bias", "none") != "none" or config.get("lora_bias"):
        raise MergeError(f"{path}: LoRA biases are not supported by the streaming merge; use PEFT's merge_and_unload")
    ad = Adapter(path, config)
    saved = [m.split(".")[-1] for m in (config.get("modules_to_save") or [])]
    pairs: dict[str, dict] = {}
    with WeightReader(path, "--lora_model", adapter=True) as r:
        weights = r.files[0]
        for key in r.keys:
            k = key.removeprefix("base_model.model.")
            m, handle = _LORA_KEY.match(k), Saved(path, key, tuple(r.shape(key)), r.dtype(key))
            if m:  # cloned out of the file mapping, which is released when the reader closes
                pairs.setdefault(m["mod"] + ".weight", {})[m["ab"]] = r.get(key).clone()
            elif ".original_module." in k:
                ad.original[k.replace(".original_module.", ".")] = handle
            elif ".modules_to_save." in k:
                ad.replace[re.sub(r"\.modules_to_save(\.[^.]+)?\.", ".", k)] = handle
            elif any(k.rsplit(".", 1)[0].endswith(m) for m in saved):  # saved without the infix; PEFT matches
                # modules_to_save names by suffix ("norm" also takes every input_layernorm)
                ad.replace.setdefault(k, handle)
            else:
                raise MergeError(f"{weights}: tensor {key} is neither a LoRA A/B matrix nor a modules_to_save weight; "
                                 "this kind of adapter (e.g. LoRA on embeddings, DoRA) needs PEFT's merge_and_unload")
    for key, ab in pairs.items():
        if set(ab) != {"A", "B"}:
            raise MergeError(f"{weights}: {key} has lora_{''.join(ab)} but not both lora_A and lora_B; the adapter is incomplete")
        ad.lora[key] = (ab["A"], ab["B"])
    if any((path / f).is_file() for f in ("tokenizer.model", "tokenizer.json")):
        ad.tokenizer_len = tokenizer_length(path)
    return ad


def tokenizer_length(folder: str | Path) -> int:
    """``len(tokenizer)`` of a tokenizer folder without importing transformers (slow to import on a busy CPU).

    ``tokenizer.json``: the ``tokenizers`` vocabulary with added tokens; else the SentencePiece piece count
    plus any added token ids beyond it from ``tokenizer_config.json``.
    """
    folder = Path(folder)
    try:
        if (folder / "tokenizer.json").is_file():
            from tokenizers import Tokenizer

            return Tokenizer.from_file(str(folder / "tokenizer.json")).get_vocab_size(with_added_tokens=True)
        import sentencepiece as spm

        n = spm.SentencePieceProcessor(model_file=str(folder / "tokenizer.model")).get_piece_size()
    except Exception as e:
        raise MergeError(f"{folder}: cannot read the tokenizer ({e}); the tokenizer files look corrupt") from e
    cfg = folder / "tokenizer_config.json"
    added = read_json(cfg).get("added_tokens_decoder", {}) if cfg.is_file() else {}
    return max([n - 1] + [int(i) for i in added]) + 1


# --------------------------------------------------------------------------- the plan
@dataclass
class Plan:
    """What a merge will do, checked before any weight is written."""

    base_model: Path
    files: list[Path]
    keys: list[str]                       # every base tensor, in file (= output) order
    shapes: dict                          # key -> final shape
    dtypes: dict                          # key -> dtype
    adapters: list[Adapter]
    vocab_steps: list[int]                # base vocab, then after each LoRA
    config: dict

    def table(self) -> list[dict]:
        """One row per step: LoRA, tokenizer length, vocab before/after, targeted weights, scaling."""
        rows = [{"step": "base", "folder": self.base_model.name, "tokenizer": None, "vocab": self.vocab_steps[0],
                 "lora_weights": 0, "modules_to_save": ""}]
        for i, ad in enumerate(self.adapters):
            rows.append({"step": f"LoRA {i + 1}", "folder": ad.name, "tokenizer": ad.tokenizer_len,
                         "vocab": self.vocab_steps[i + 1], "lora_weights": len(ad.lora),
                         "modules_to_save": ",".join(k.split(".")[-2] for k in ad.replace)})
        return rows


def plan_merge(base_model: str | Path, lora_models, check_base: bool = True) -> Plan:
    """Check the base and the LoRAs against each other and return the merge plan (no weights written).

    Raises :class:`MergeError` for wrong order, vocabulary mismatches, adapters made for another base,
    unreadable files.
    """
    base = Path(base_model)
    if not (base / "config.json").is_file():
        raise MergeError(f"--base_model {base}: no config.json; pass a Hugging Face model folder "
                         "(convert Meta's consolidated.*.pth first with python -m helpers.convert)")
    config = read_json(base / "config.json")
    with WeightReader(base) as r:  # headers only
        files, keys = r.files, r.keys
        shapes, dtypes = {k: r.shape(k) for k in keys}, {k: r.dtype(k) for k in keys}
    paths = _split_loras(lora_models)
    adapters = [load_adapter(p) for p in paths]
    if EMBED not in shapes:
        raise MergeError(f"--base_model {base}: no {EMBED}; is this a LLaMA-family model?")
    vocab = shapes[EMBED][0]
    if config.get("vocab_size") not in (None, vocab):
        raise MergeError(f"{base / 'config.json'}: vocab_size {config['vocab_size']} but {EMBED} has {vocab} rows; "
                         "the config does not belong to these weights")
    v = vocab
    for n, ad in enumerate(adapters):  # order and tokenizer checks first: they explain the most common mistakes
        _check_adapter_vocab(ad, paths, n, v, adapters)
        v = ad.vocab_size or v
    steps, real_rows, embed_source = [vocab], vocab, None  # None: the base's own embedding
    for n, ad in enumerate(adapters):
        new_vocab = ad.vocab_size or vocab
        _check_shapes(ad, shapes, base, new_vocab)
        if check_base and EMBED in ad.original:  # read the current embedding only for this check, then drop it
            _check_trained_on(ad, _current_embedding(base, embed_source), real_rows)
        if EMBED in ad.replace:
            embed_source, real_rows = ad.replace[EMBED], new_vocab
        if new_vocab != vocab and EMBED not in ad.replace:
            warnings.warn(f"{ad.path}: the vocabulary grows {vocab} -> {new_vocab} but the adapter does not train "
                          "embed_tokens/lm_head (no modules_to_save); the new rows get the mean embedding, untrained, "
                          "so the new tokens mean nothing to the model. Retrain the LoRA with --modules_to_save "
                          "embed_tokens,lm_head (python -m helpers.train pt|sft; it is the default there), or merge "
                          "it with the tokenizer it was trained with", stacklevel=2)
        vocab = new_vocab
        steps.append(vocab)
    for key in (EMBED, LM_HEAD):
        if key in shapes:
            shapes[key] = (vocab, shapes[key][1])
    return Plan(base, files, keys, shapes, dtypes, adapters, steps, config)


def _check_shapes(ad: Adapter, shapes: dict, base: Path, new_vocab: int) -> None:
    """Every tensor ``ad`` replaces or adapts exists in the base with a matching shape; raises MergeError."""
    for key in ad.replace:  # modules_to_save: embed_tokens/lm_head (with the step's vocabulary), or any other
        if key not in shapes:
            raise MergeError(f"{ad.path}: replaces {key} but the base has no such tensor (tied embeddings?)")
        want = (new_vocab, shapes[key][1]) if key in (EMBED, LM_HEAD) else tuple(shapes[key])
        if tuple(ad.replace[key].shape) != want:
            raise MergeError(f"{ad.path}: modules_to_save tensor {key} has shape {tuple(ad.replace[key].shape)} "
                             f"but the base needs {want} at this step: the adapter was made for another base model")
    for key, (a, b) in ad.lora.items():
        if key not in shapes:
            raise MergeError(f"{ad.path}: LoRA targets {key} but the base {base} has no such tensor: "
                             "the adapter was made for another base model (different architecture or depth)")
        got = (b.shape[0], a.shape[1])
        got = got[::-1] if ad.config.get("fan_in_fan_out") else got
        if tuple(got) != tuple(shapes[key]) or a.shape[0] != b.shape[1]:
            raise MergeError(
                f"{ad.path}: adapter tensors for {key} give B@A of shape {tuple(got)} "
                f"(lora_A {tuple(a.shape)}, lora_B {tuple(b.shape)}) but the base tensor {key} has shape "
                f"{tuple(shapes[key])}: the adapter was made for another base model "
                "(e.g. a LLaMA-2 GQA model has fewer key/value heads); use the base it was trained on")


def _split_loras(lora_models) -> list[Path]:
    if isinstance(lora_models, (str, Path)):
        lora_models = [p for p in str(lora_models).split(",") if p.strip()]
    paths = [Path(str(p).strip()) for p in lora_models]
    if not paths:
        raise MergeError("--lora_model: give at least one LoRA folder (several: comma-separated, in training order)")
    for p in paths:
        if not p.is_dir():
            raise MergeError(f"--lora_model {p}: folder not found (offline: the course never downloads adapters)")
    return paths


def _check_adapter_vocab(ad: Adapter, paths, n: int, vocab: int, adapters) -> None:
    rows = ad.replace[EMBED].shape[0] if EMBED in ad.replace else None
    if rows is not None and ad.tokenizer_len is not None and rows != ad.tokenizer_len:
        raise MergeError(
            f"{ad.path}: its tokenizer has {ad.tokenizer_len} tokens but its embed_tokens has {rows} rows. "
            "A LoRA must be merged with the tokenizer it was trained with (the one in its own folder). "
            "In the real release Chinese-LLaMA's tokenizer has 49953 tokens and Chinese-Alpaca's 49954 "
            "(49953 + [PAD]): mixing them up gives exactly this 49953 vs 49954 mismatch.")
    new = ad.vocab_size
    if new is not None and new < vocab:
        prev = adapters[n - 1].name if n else "the base model"
        raise MergeError(
            f"--lora_model order: {ad.name} (vocabulary {new}) comes after {prev} (vocabulary {vocab}); the "
            f"vocabulary would shrink from {vocab} to {new} and drop trained rows. LoRAs are applied left to right "
            "in the order they were trained: the pre-training LoRA first (Chinese-LLaMA, 49953 tokens), then the "
            "instruction LoRA trained on top of it (Chinese-Alpaca, 49954 tokens). Pass "
            f"--lora_model {','.join(str(p) for p in sorted(paths, key=lambda p: _vocab_of(p, adapters, paths)))}")


def _vocab_of(p, adapters, paths) -> int:
    return adapters[list(paths).index(p)].vocab_size or 0


def _current_embedding(base: Path, source: Saved | None):
    """The embedding the next adapter sees: the last modules_to_save one, else the base's (read now)."""
    if source is not None:
        return source.load()
    with WeightReader(base) as r:
        return r.get(EMBED)


def _check_trained_on(ad: Adapter, current, real_rows: int, block: int = 4096) -> None:
    orig = ad.original[EMBED].load()
    n = min(real_rows, orig.shape[0], current.shape[0])
    diff = top = 0.0
    for i in range(0, n, block):  # in row blocks: no float32 copy of a whole 0.4 GiB embedding
        end = min(i + block, n)
        o, c = orig[i:end].float(), current[i:end].float()
        diff, top = max(diff, (o - c).abs().max().item()), max(top, c.abs().max().item())
    if diff > 1e-3 + 1e-2 * top:
        raise MergeError(
            f"{ad.path}: the adapter stores the embedding it was trained on, and it differs from the current "
            f"{EMBED} (max |diff| {diff:.3g} over the first {n} rows): the adapter was made for another base. "
            "Chinese-Alpaca-Plus LoRA was trained on top of the merged Chinese-LLaMA-Plus LoRA, so merge that "
            "first (--lora_model llama_lora,alpaca_lora), or pass --skip_base_check if you are sure.")


def _resize_rows(w, rows: int):
    """Grow (rows > current) with the mean row, deterministic; never shrinks."""
    import torch

    if rows <= w.shape[0]:
        return w
    extra = w.float().mean(0, keepdim=True).expand(rows - w.shape[0], -1).to(w.dtype)
    return torch.cat([w, extra], 0)


def last_replacing(plan: Plan, key: str) -> int:
    """Index of the last adapter whose modules_to_save replace ``key`` (-1: none): the merge starts there and
    never reads the base tensor."""
    return max((i for i, ad in enumerate(plan.adapters) if key in ad.replace), default=-1)


def merged_tensor(plan: Plan, key: str, w=None):
    """The base tensor ``w`` after every LoRA in order (resize, modules_to_save, ``W += B@A*s``). ``w`` may be
    ``None`` when an adapter replaces ``key`` (see :func:`last_replacing`)."""
    import torch

    dtype = plan.dtypes[key]  # the base's dtype, also when the base tensor is not read
    first = max(last_replacing(plan, key), 0)
    for ad, vocab in list(zip(plan.adapters, plan.vocab_steps[1:]))[first:]:
        if key in ad.replace:  # modules_to_save: the adapter's full tensor
            w = ad.replace[key].load()
        elif key in (EMBED, LM_HEAD):
            w = _resize_rows(w, vocab)
        if key in ad.lora:
            # round to the base dtype after each LoRA, as saving the intermediate merged model would
            acc = w.to(torch.float32, copy=True)  # never modify the tensor read from a file in place
            ad.add_delta_(acc, key)
            w = acc.to(dtype)
    return w.to(dtype).contiguous()


# --------------------------------------------------------------------------- writing
def parse_size(size: str | int) -> int:
    """``"2GB"`` -> 2_000_000_000 (``GiB``/``MiB`` binary), ints pass through."""
    if isinstance(size, int):
        return size
    m = re.fullmatch(r"\s*(\d+(?:\.\d*)?|\.\d+)\s*([KMGT]?i?B)?\s*", str(size), re.I)
    if not m:
        raise MergeError(f"--max_shard_size {size!r}: use a size such as 2GB, 500MB or 1GiB")
    unit = (m[2] or "B").upper()
    mult = {"B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12,
            "KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40}[unit]
    return int(float(m[1]) * mult)


def _group_by_size(specs: list, max_bytes: int) -> list[list]:
    groups, cur, size = [], [], 0
    for s in specs:
        n = nbytes(s[1], s[2])
        if cur and size + n > max_bytes:
            groups.append(cur)
            cur, size = [], 0
        cur.append(s)
        size += n
    if cur:
        groups.append(cur)
    return groups


def meta_params(config: dict) -> dict:
    """``params.json`` for the merged model (a ``config.json`` dict) via :func:`helpers.convert.meta_params`
    (``multiple_of`` and, for 70B-style models, ``ffn_dim_multiplier`` recovered)."""
    from types import SimpleNamespace

    from . import convert

    cfg = SimpleNamespace(**dict(config, num_key_value_heads=kv_heads(config)))
    try:
        return convert.meta_params(cfg)
    except convert.ConvertError as e:
        raise MergeError(f"{e}; use --output_type huggingface") from e


@dataclass
class MergeResult:
    output_dir: Path
    output_type: str
    vocab_size: int
    files: list[str]
    seconds: float
    plan: Plan


def merge_lora_into(base_model: str | Path, lora_models, output_dir: str | Path, output_type: str = "huggingface",
                    overwrite: bool = False, max_shard_size: str | int = "2GB", num_shards: int | None = None,
                    check_base: bool = True, progress: bool = True) -> MergeResult:
    """Merge the LoRAs (in order) into ``base_model`` and write ``output_dir`` atomically; returns a MergeResult.

    ``output_type="huggingface"``: sharded safetensors + index, ``config.json`` (vocab updated), the last
    LoRA's tokenizer, a model card. ``"pth"``: Meta's ``consolidated.0N.pth`` (shards per model size, or
    ``num_shards``) + ``params.json`` + ``tokenizer.model``. Both get a ``SHA256SUMS`` manifest.
    """
    from tqdm.auto import tqdm

    if output_type not in ("huggingface", "pth"):
        raise MergeError(f"--output_type {output_type!r}: choose huggingface or pth")
    out = Path(output_dir)
    if out.exists() and not overwrite:
        raise MergeError(f"--output_dir {out}: folder already exists; pass --overwrite to replace it (or choose another folder)")
    start = time.perf_counter()
    max_bytes = parse_size(max_shard_size)  # a bad flag fails before the adapters are read
    plan = plan_merge(base_model, lora_models, check_base=check_base)
    check_ram(ram_needed(plan, check_base), f"merge of {plan.base_model} + {len(plan.adapters)} LoRA(s)",
              "the merge streams one tensor at a time, so its peak is the LoRA matrices plus the largest tensor "
              "and does not shrink with smaller output shards; ")
    with atomic_dir(out, overwrite=overwrite) as tmp:
        with tqdm(total=len(plan.keys), desc="merge", unit="tensor", disable=not progress) as bar:
            known = _write_hf(plan, tmp, max_bytes, bar) if output_type == "huggingface" else \
                _write_pth(plan, tmp, num_shards, bar)
        _copy_tokenizer(plan, tmp, output_type)
        write_model_card(tmp, merged_card(plan, output_type))
        write_manifest(tmp, known=known)
        files = sorted(p.name for p in tmp.iterdir())
    return MergeResult(out, output_type, plan.vocab_steps[-1], files, time.perf_counter() - start, plan)


def ram_needed(plan: Plan, check_base: bool = True) -> int:
    """The bytes the streaming merge holds at its peak, from the plan's shapes and dtypes (estimate, no margin):
    every adapter's LoRA matrices (in memory for the whole merge) plus the larger of the working set of one
    output tensor (:func:`merged_tensor`: the tensor as read, a float32 accumulator and the result in the base
    dtype when a LoRA targets it or the vocabulary grows; else the tensor alone) and, with ``check_base``, the two
    embeddings the base check compares. Memory-mapped pages of a ``.bin`` base are not counted: the system drops
    them when it needs the memory. Returns the byte count."""
    import torch

    lora = sum(t.numel() * t.element_size() for ad in plan.adapters for pair in ad.lora.values() for t in pair)
    work = 0
    for key in plan.keys:
        last = last_replacing(plan, key)  # the merge of this key starts there (-1: from the base tensor)
        start_vocab = plan.vocab_steps[last + 1] if last >= 0 else plan.vocab_steps[0]
        changed = any(key in ad.lora for ad in plan.adapters[max(last, 0):]) or (
            key in (EMBED, LM_HEAD) and plan.vocab_steps[-1] > start_vocab)
        size = nbytes(plan.shapes[key], plan.dtypes[key])
        f32 = math.prod(plan.shapes[key]) * torch.empty((), dtype=torch.float32).element_size()
        work = max(work, 2 * size + f32 if changed else size)
    check = 2 * nbytes(plan.shapes[EMBED], plan.dtypes[EMBED]) \
        if check_base and any(EMBED in ad.original for ad in plan.adapters) else 0
    return lora + max(work, check)


def _iter_merged(plan: Plan, bar):
    """Yield ``(key, merged tensor)`` in plan order, the base read one tensor at a time (use it in ``with closing()``:
    the reader is closed when the generator is)."""
    with WeightReader(plan.base_model) as reader:
        for key in plan.keys:
            base = None if last_replacing(plan, key) >= 0 else reader.get(key)  # replaced: not read at all
            yield key, merged_tensor(plan, key, base)
            bar.update(1)


def _write_hf(plan: Plan, tmp: Path, max_bytes: int, bar) -> dict[str, str]:
    """Sharded safetensors + index + config; returns the SHA256 of each shard, computed while writing."""
    specs = [(k, plan.shapes[k], plan.dtypes[k]) for k in plan.keys]
    groups = _group_by_size(specs, max_bytes)
    names = (["model.safetensors"] if len(groups) == 1 else
             [f"model-{i + 1:05d}-of-{len(groups):05d}.safetensors" for i in range(len(groups))])
    weight_map, total, digests = {}, 0, {}
    with contextlib.closing(_iter_merged(plan, bar)) as it:
        for name, group in zip(names, groups):
            with StreamingSafetensorsWriter(tmp / name, group, {"format": "pt"}) as w:
                for _ in group:
                    key, t = next(it)
                    w.write(key, t)
                    weight_map[key] = name
                    total += t.numel() * t.element_size()
                    del t  # free it before the next tensor is read: at most one large tensor alive
            digests[name] = w.sha256.hexdigest()
    if len(groups) > 1:
        write_json(tmp / "model.safetensors.index.json", {"metadata": {"total_size": total}, "weight_map": weight_map})
    config = dict(plan.config, vocab_size=plan.vocab_steps[-1])
    write_json(tmp / "config.json", config)
    gen = plan.base_model / "generation_config.json"
    if gen.is_file():
        shutil.copyfile(gen, tmp / "generation_config.json")
    return digests


def _write_pth(plan: Plan, tmp: Path, num_shards: int | None, bar) -> None:
    """Merged tensors -> Meta layout, split per rank into temporary safetensors, then one torch.save per rank.

    ``torch.save`` needs a dict of tensors: they are memory-mapped from the temporary file, so the pages
    are file-backed (evictable), not a second in-memory copy of the model.
    """
    import torch

    from .convert import split_meta_shards

    cfg = plan.config
    n = num_shards if num_shards is not None else META_NUM_SHARDS.get(cfg["hidden_size"], 1)
    heads, kv = cfg["num_attention_heads"], kv_heads(cfg)
    if n < 1 or heads % n or kv % n:
        raise MergeError(f"--num_shards {n}: the shard count must divide the {heads} attention and {kv} key/value "
                         "heads of the base; pass another --num_shards (1 always works)")
    specs: list[list] = [[] for _ in range(n)]
    for key in plan.keys:
        meta = meta_key(key)
        fake = torch.empty(plan.shapes[key], dtype=plan.dtypes[key], device="meta")
        for rank, piece in enumerate(split_meta_shards({meta: fake}, n)):
            specs[rank].append((meta, tuple(piece[meta].shape), plan.dtypes[key]))
    staging = tmp / ".staging"
    staging.mkdir()
    with contextlib.ExitStack() as stack:
        writers = [stack.enter_context(StreamingSafetensorsWriter(staging / f"rank{r}.safetensors", specs[r]))
                   for r in range(n)]
        for key, t in stack.enter_context(contextlib.closing(_iter_merged(plan, bar))):
            meta, t = hf_to_meta_tensor(key, t, heads, kv)
            for w, piece in zip(writers, split_meta_shards({meta: t}, n)):
                w.write(meta, piece[meta])
            del t, piece
    for r, w in enumerate(writers):
        torch.save(mapped_tensors(w.path, [name for name, _, _ in w.specs]), tmp / f"consolidated.{r:02d}.pth")
        (staging / f"rank{r}.safetensors").unlink()
    staging.rmdir()
    write_json(tmp / "params.json", meta_params(cfg))


def _copy_tokenizer(plan: Plan, tmp: Path, output_type: str) -> None:
    src = next((ad.path for ad in reversed(plan.adapters)
                if any((ad.path / f).is_file() for f in TOKENIZER_FILES)), plan.base_model)
    names = ("tokenizer.model",) if output_type == "pth" else TOKENIZER_FILES
    for name in names:
        if (src / name).is_file():
            shutil.copyfile(src / name, tmp / name)


# --------------------------------------------------------------------------- verification
PUBLISHED_DIR = DATA_DIR / "published_sha256"
PUBLISHED_V1 = PUBLISHED_DIR / "chinese_llama_alpaca_v1.json"   # SHA256.md of Chinese-LLaMA-Alpaca (v1)
_HEX64 = re.compile(r"^[0-9a-fA-F]{64}$")


def published_entries(path: str | Path = PUBLISHED_V1) -> list[dict]:
    """The entries of a published-hash table (JSON: ``{"source", "entries": [{"id", "model", "kind", "format",
    "recipe", "files": {name: sha256}}]}``), each checked; returns the list. Raises MergeError naming the field."""
    path = Path(path)
    doc = read_json(path)
    entries = doc.get("entries") if isinstance(doc, dict) else None
    if not isinstance(entries, list) or not doc.get("source"):
        raise MergeError(f"{path}: a published-hash table needs a 'source' and an 'entries' list")
    for n, e in enumerate(entries):
        files = e.get("files") if isinstance(e, dict) else None
        if not isinstance(files, dict) or not files or not e.get("id"):
            raise MergeError(f"{path}: entries[{n}] needs an 'id' and a non-empty 'files' mapping")
        for name, digest in files.items():
            if not isinstance(digest, str) or not _HEX64.match(digest):
                raise MergeError(f"{path}: entries[{n}] ({e['id']}) file {name}: {digest!r} is not a 64-digit SHA256")
    return entries


def read_manifest_file(path: str | Path, model: str | None = None) -> dict[str, str]:
    """``{relative file: lowercase sha256}`` from ``path``: a ``sha256sum`` file (``<hash>  <file>``, ``*`` binary
    marker, ``#`` comment lines ignored as GNU sha256sum does) or a published JSON table (``model`` = an entry id
    or model name; may be left out when the table holds one entry). Raises MergeError naming the line or flag."""
    path = Path(path)
    if not path.is_file():
        raise MergeError(f"--manifest {path}: file not found; pass a sha256sum file or a table from {PUBLISHED_DIR}")
    if path.suffix == ".json":
        entries = published_entries(path)
        hits = [e for e in entries if model in (e["id"], e.get("model"))] if model else entries
        if len(hits) != 1:
            ids = ", ".join(e["id"] for e in entries)
            what = f"--model {model!r} matches {len(hits)} entries" if model else "the table holds several models"
            raise MergeError(f"{path}: {what}; pass --model with one of: {ids}")
        return {name: digest.lower() for name, digest in hits[0]["files"].items()}
    if model:
        raise MergeError(f"--model {model}: only a JSON table ({PUBLISHED_DIR}) holds several models; "
                         f"{path} is a sha256sum file")
    out: dict[str, str] = {}
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        parts = line.strip().split(maxsplit=1)
        if len(parts) != 2 or not _HEX64.match(parts[0]):
            raise MergeError(f"{path}: line {n} is not '<sha256>  <file>' (64 hex digits, spaces, a file name): {line!r}")
        out[parts[1].lstrip("*").strip()] = parts[0].lower()
    if not out:
        raise MergeError(f"{path}: no '<sha256>  <file>' lines; is this a SHA256 manifest?")
    return out


def verify(folder: str | Path, manifest: str | Path | None = None, model: str | None = None) -> dict:
    """Check the files of ``folder`` named by its ``SHA256SUMS`` (or by ``manifest``, entry ``model`` of a published
    JSON table); only those files are hashed. Returns ``{"mismatch": [], "missing": [], "extra": [files not listed]}``;
    raises MergeError naming every bad file."""
    from .io import sha256_file, tree_files

    folder = Path(folder)
    if not folder.is_dir():
        raise MergeError(f"{folder}: folder not found; pass the folder that holds the files to check")
    man = Path(manifest) if manifest else folder / MANIFEST
    if not man.is_file():
        raise MergeError(f"{man}: manifest not found; pass --manifest FILE (sha256sum format or a published table)")
    want = read_manifest_file(man, model)
    have = {p.relative_to(folder).as_posix() for p in tree_files(folder)}
    res = {"mismatch": sorted(f for f in want if f in have and sha256_file(folder / f) != want[f]),
           "missing": sorted(f for f in want if f not in have),
           "extra": sorted(have - set(want) - {man.name if man.parent == folder else MANIFEST})}
    bad = []
    for kind, what in (("mismatch", "differs from the manifest (corrupt or changed)"), ("missing", "is missing")):
        bad += [f"  {f}: {what}" for f in res[kind]]
    if bad:
        own = man.parent.resolve() == folder.resolve()
        hint = ("Copy or download these files again; do not use the folder until verify passes." if own else
                "Download or copy these files again. A published hash only holds for the same bytes: files made by "
                "another script, output format, sharding or PyTorch version differ even when the weights are right "
                "(the course's merge writes safetensors: check it with its own SHA256SUMS).")
        raise MergeError(f"{folder}: {len(bad)} file(s) fail the SHA256 check against {man}"
                         f"{f' ({model})' if model else ''}:\n" + "\n".join(bad) + "\n" + hint)
    return res


# --------------------------------------------------------------------------- distribution
def folder_size(folder: str | Path) -> int:
    """Total bytes of the files under ``folder``."""
    return sum(p.stat().st_size for p in Path(folder).rglob("*") if p.is_file())


def write_model_card(folder: str | Path, text: str) -> Path:
    from .io import atomic_write_text

    return atomic_write_text(Path(folder) / "README.md", text)


def merged_card(plan: Plan, output_type: str) -> str:
    """Model card of a merged model: base, LoRAs in order, vocab, how to load."""
    loras = "\n".join(f"{i + 1}. `{ad.name}` (r={ad.config['r']}, alpha={ad.config['lora_alpha']}, vocab "
                      f"{plan.vocab_steps[i + 1]})" for i, ad in enumerate(plan.adapters))
    load = ("from transformers import AutoModelForCausalLM, AutoTokenizer\n"
            "model = AutoModelForCausalLM.from_pretrained(PATH, dtype='auto')\n"
            "tokenizer = AutoTokenizer.from_pretrained(PATH)") if output_type == "huggingface" else (
            "# Meta layout (consolidated.0N.pth + params.json), e.g. for llama.cpp's converter;\n"
            "# python -m helpers.convert turns it into a Hugging Face folder")
    return (f"---\nlibrary_name: transformers\ntags: [llama, chinese, lora-merged]\n---\n"
            f"# Merged model ({output_type})\n\nBase model: `{plan.base_model.name}` (vocab {plan.vocab_steps[0]}).\n\n"
            f"LoRAs merged in this order:\n\n{loras}\n\nFinal vocabulary: {plan.vocab_steps[-1]} tokens "
            f"(tokenizer of the last LoRA).\n\n## Load\n\n```python\n{load}\n```\n\n"
            f"Check the files first: `python -m helpers.merge verify PATH` (or `sha256sum -c {MANIFEST}`).\n")


def adapter_card(config: dict, base_name: str, vocab: int | None) -> str:
    """Model card of an adapter-only package: which base, how to resize and load it with PEFT."""
    resize = f"base.resize_token_embeddings({vocab})\n" if vocab else ""
    return (f"---\nlibrary_name: peft\nbase_model: {base_name}\ntags: [lora, llama, chinese]\n---\n"
            f"# LoRA adapter for `{base_name}`\n\nThis folder holds only the adapter (r={config['r']}, "
            f"alpha={config['lora_alpha']}, targets {', '.join(sorted(config.get('target_modules') or []))}; "
            f"modules_to_save {config.get('modules_to_save')}) and its tokenizer ({vocab} tokens). You need the "
            f"base model `{base_name}` too; the adapter does not work with another base.\n\n## Load\n\n```python\n"
            "from transformers import AutoModelForCausalLM, AutoTokenizer\nfrom peft import PeftModel\n"
            f"base = AutoModelForCausalLM.from_pretrained('{base_name}', dtype='auto')\n"
            "tokenizer = AutoTokenizer.from_pretrained(ADAPTER_PATH)\n"
            f"{resize}model = PeftModel.from_pretrained(base, ADAPTER_PATH)\n```\n\n"
            f"Merge it for deployment: `python -m helpers.merge --base_model BASE --lora_model ADAPTER_PATH "
            f"--output_type huggingface --output_dir OUT`. Check files with `sha256sum -c {MANIFEST}`.\n")


def package_adapter(lora_model: str | Path, output_dir: str | Path, base_name: str, overwrite: bool = False) -> Path:
    """Adapter-only distribution: adapter weights + config + tokenizer + model card + SHA256SUMS; returns the folder."""
    src = Path(lora_model)
    ad = load_adapter(src)
    with atomic_dir(output_dir, overwrite=overwrite) as tmp:
        for f in ("adapter_config.json", "adapter_model.safetensors", "adapter_model.bin") + TOKENIZER_FILES:
            if (src / f).is_file():
                shutil.copyfile(src / f, tmp / f)
        write_model_card(tmp, adapter_card(ad.config, base_name, ad.vocab_size))
        write_manifest(tmp)
    return Path(output_dir)


# --------------------------------------------------------------------------- the PEFT way (reference, multi-adapter)
def peft_reference(base_model: str | Path, lora_models, merge: bool = False):
    """The model PEFT builds: base, resize, LoRA 1, merge_and_unload, resize, LoRA 2, ...

    The last LoRA stays wrapped (a ``PeftModel``) unless ``merge``. Returns the model in eval mode.
    """
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    paths = _split_loras(lora_models)
    model = AutoModelForCausalLM.from_pretrained(base_model, dtype=torch.float32)
    for i, p in enumerate(paths):
        vocab = load_adapter(p).vocab_size
        if vocab and vocab != model.get_input_embeddings().weight.shape[0]:
            model.resize_token_embeddings(vocab, mean_resizing=False)
        model = PeftModel.from_pretrained(model, str(p))
        if i < len(paths) - 1 or merge:
            model = model.merge_and_unload()
    return model.eval()


def logits_of(model, input_ids):
    """Float32 logits of ``model`` on ``input_ids`` (a list of ids or a 2-D tensor), no grad."""
    import torch

    ids = torch.as_tensor(input_ids)
    ids = ids[None] if ids.dim() == 1 else ids
    with torch.no_grad():
        return model(input_ids=ids).logits.float()


def make_task_adapters(base_model: str | Path, out_dir: str | Path, names=("poem", "qa"), seed: int = 7) -> dict[str, Path]:
    """Small random LoRAs (q_proj/v_proj, r=4, no vocab change) on one base, for the multi-adapter demo."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    out = {}
    for i, name in enumerate(names):
        model = AutoModelForCausalLM.from_pretrained(base_model, dtype=torch.float32)
        pm = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"],
                                              lora_dropout=0.0, task_type="CAUSAL_LM"))
        torch.manual_seed(seed + i)
        with torch.no_grad():
            for n, p in pm.named_parameters():
                if "lora_B" in n:
                    p.normal_(0.0, 0.2)
        target = Path(out_dir) / name
        pm.save_pretrained(target, safe_serialization=True)
        out[name] = target
    return out


# --------------------------------------------------------------------------- CLI
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m helpers.merge", description=(
        "Merge LoRA(s) into a Hugging Face LLaMA base, shard by shard. "
        "Verify a folder: python -m helpers.merge verify DIR [--manifest FILE [--model ID]]"))
    p.add_argument("--base_model", required=True, help="HF-format base model folder")
    p.add_argument("--lora_model", required=True, help="LoRA folder(s), comma-separated, in training order")
    p.add_argument("--output_type", default="huggingface", choices=["huggingface", "pth"])
    p.add_argument("--output_dir", default="./merged")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --output_dir")
    p.add_argument("--max_shard_size", default="2GB", help="huggingface output shard size, e.g. 2GB, 500MB")
    p.add_argument("--num_shards", type=int, default=None, help="pth output: shards (default: per model size like Meta)")
    p.add_argument("--skip_base_check", action="store_true", help="do not compare the adapter's stored base embedding")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


def _run(argv: list[str]) -> int:
    """The CLI: ``verify DIR [--manifest FILE]``, or a merge with the flags of :func:`build_parser`."""
    if argv[:1] == ["verify"]:
        vp = argparse.ArgumentParser(prog="python -m helpers.merge verify",
                                     description="Check a folder against its SHA256SUMS, a sha256sum file or a "
                                                 f"published table ({PUBLISHED_DIR.name}/*.json with --model)")
        vp.add_argument("folder")
        vp.add_argument("--manifest", default=None, help="sha256sum file or published JSON table (default DIR/SHA256SUMS)")
        vp.add_argument("--model", default=None, help="entry of a JSON table, e.g. merged/Chinese-LLaMA-Plus-7B")
        a = vp.parse_args(argv[1:])
        res = verify(a.folder, a.manifest, a.model)
        extra = f" ({len(res['extra'])} extra file(s) not in the manifest: {res['extra']})" if res["extra"] else ""
        print(f"OK: every file in the manifest matches{extra}")
        return 0
    a = build_parser().parse_args(argv)
    res = merge_lora_into(a.base_model, a.lora_model, a.output_dir, a.output_type, overwrite=a.overwrite,
                          max_shard_size=a.max_shard_size, num_shards=a.num_shards,
                          check_base=not a.skip_base_check, progress=not a.quiet)
    print(f"merged {len(res.plan.adapters)} LoRA(s) into {res.plan.base_model} -> {res.output_dir} "
          f"({res.output_type}, vocab {res.vocab_size}, {res.seconds:.1f}s); files: {', '.join(res.files)}")
    return 0


def main(argv=None) -> int:
    """``python -m helpers.merge --base_model B --lora_model L ...`` or ``... verify DIR``; returns the exit code
    (2 with a message on bad input)."""
    return cli_main(_run, list(sys.argv[1:] if argv is None else argv))


if __name__ == "__main__":
    sys.exit(main())
