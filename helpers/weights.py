"""Weight formats in one place: what convert, merge, export, tiny and train all need to know about a LLaMA's files.

- :class:`WeightReader`: the tensors of a Hugging Face folder (a model or a PEFT adapter; safetensors or ``.bin``;
  one file or shards with an index), read one tensor at a time; a context manager. :func:`load_hf_state_dict`
  reads a whole (small) model; :func:`load_torch_file` is the one ``torch.load`` (``weights_only=True``).
- :class:`StreamingSafetensorsWriter`: one safetensors file written tensor by tensor, header first.
- The HF <-> Meta names (:func:`meta_key`, :func:`hf_key`, :func:`name_pairs`) and the q/k rotary permutation
  (:func:`permute_hf_to_meta` / :func:`permute_meta_to_hf`, applied by :func:`hf_to_meta_tensor` /
  :func:`meta_to_hf_tensor`).
- :func:`rope_parameters`: theta and rope scaling (type, factor, original context) of a ``config.json``.
- :data:`TokenType`: SentencePiece piece types (the same ids GGUF stores as ``tokenizer.ggml.token_type``).
- :func:`kv_heads`: key/value heads of a config (grouped-query attention).

torch is imported inside the functions that need it: :mod:`helpers.merge` and :mod:`helpers.train` import this
module on the light path.
"""
from __future__ import annotations

import enum
import hashlib
import json
import math
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from sentencepiece import sentencepiece_model_pb2 as _sp_pb2

from .core import CourseError
from .io import read_json


class WeightsError(CourseError):
    """A weight folder or file the course cannot read; the message names it and says what to do."""


# --------------------------------------------------------------------------- token types
#: SentencePiece piece types, from sentencepiece_model.proto (``ModelProto.SentencePiece.Type``): NORMAL 1,
#: UNKNOWN 2, CONTROL 3, USER_DEFINED 4, UNUSED 5, BYTE 6. GGUF's ``gguf.TokenType`` uses the same ids.
TokenType = enum.IntEnum("TokenType", sorted(_sp_pb2.ModelProto.SentencePiece.Type.items(), key=lambda kv: kv[1]),
                         module=__name__)


# --------------------------------------------------------------------------- config facts
def _getter(config):
    """``get(name, default)`` over a ``config.json`` dict or a transformers config object."""
    if isinstance(config, dict):
        return config.get
    return lambda name, default=None: getattr(config, name, default)


def kv_heads(config) -> int:
    """Key/value heads of a LLaMA config (``num_key_value_heads``, else ``num_attention_heads``); returns an int."""
    get = _getter(config)
    return int(get("num_key_value_heads") or get("num_attention_heads"))


@dataclass(frozen=True)
class RopeParameters:
    """Rotary position embedding settings: ``theta`` (base frequency) and the context-extension scaling.

    ``scaling`` is ``None`` (plain rope) or transformers' ``rope_type`` (``linear`` = position interpolation,
    ``dynamic``, ``yarn``, ``llama3``, ...); ``factor`` stretches the trained context, ``original_context`` is
    the context the model was pre-trained with (YaRN/llama3 need it).
    """

    theta: float = 10000.0
    scaling: str | None = None
    factor: float = 1.0
    original_context: int | None = None


def rope_parameters(config) -> RopeParameters:
    """The rope settings of ``config`` (a ``config.json`` dict or a transformers config), whichever way it spells
    them: transformers 5 ``rope_parameters`` (``rope_type``, ``rope_theta``, ...) or the older top-level
    ``rope_theta`` plus ``rope_scaling`` (``type``/``rope_type``, ``factor``). Returns :class:`RopeParameters`."""
    get = _getter(config)
    merged = {**(get("rope_scaling") or {}), **(get("rope_parameters") or {})}
    kind = merged.get("rope_type", merged.get("type"))
    original = merged.get("original_max_position_embeddings")
    return RopeParameters(theta=float(merged.get("rope_theta", get("rope_theta") or 10000.0)),
                          scaling=None if kind in (None, "default") else str(kind),
                          factor=float(merged.get("factor") or 1.0),
                          original_context=int(original) if original else None)


# --------------------------------------------------------------------------- HF <-> Meta names, q/k rows
# Meta's parameter names (llama/model.py) and transformers' LlamaForCausalLM names of the same weights.
_GLOBAL_NAMES = {"tok_embeddings.weight": "model.embed_tokens.weight", "norm.weight": "model.norm.weight",
                 "output.weight": "lm_head.weight"}
_LAYER_NAMES = {"attention.wq": "self_attn.q_proj", "attention.wk": "self_attn.k_proj",
                "attention.wv": "self_attn.v_proj", "attention.wo": "self_attn.o_proj",
                "feed_forward.w1": "mlp.gate_proj", "feed_forward.w2": "mlp.down_proj",
                "feed_forward.w3": "mlp.up_proj", "attention_norm": "input_layernorm",
                "ffn_norm": "post_attention_layernorm"}
_HF_GLOBAL = {v: k for k, v in _GLOBAL_NAMES.items()}
_HF_LAYER = {v: k for k, v in _LAYER_NAMES.items()}
_ROTARY = {"attention.wq": "q", "attention.wk": "k"}  # rows stored differently (rotary pairs) in the two layouts


def name_pairs(n_layers: int) -> list[tuple[str, str]]:
    """``(Meta name, HF name)`` of every LLaMA weight, in the order Meta's checkpoints list them."""
    pairs = list(_GLOBAL_NAMES.items())
    for i in range(n_layers):
        pairs += [(f"layers.{i}.{m}.weight", f"model.layers.{i}.{h}.weight") for m, h in _LAYER_NAMES.items()]
    return pairs


def meta_key(hf_name: str) -> str:
    """Meta's name for the HF weight ``hf_name`` (``model.layers.3.self_attn.q_proj.weight`` ->
    ``layers.3.attention.wq.weight``). Raises WeightsError for a tensor LLaMA's Meta layout does not have."""
    if hf_name in _HF_GLOBAL:
        return _HF_GLOBAL[hf_name]
    m = re.fullmatch(r"model\.layers\.(\d+)\.(.+)\.weight", hf_name)
    if not m or m[2] not in _HF_LAYER:
        raise WeightsError(f"{hf_name}: no Meta (consolidated.*.pth) name for this tensor: it is not a LLaMA weight; "
                           "keep the model in Hugging Face format (--output_type huggingface)")
    return f"layers.{m[1]}.{_HF_LAYER[m[2]]}.weight"


def hf_key(meta_name: str) -> str:
    """The HF name for Meta's weight ``meta_name``: the inverse of :func:`meta_key`."""
    if meta_name in _GLOBAL_NAMES:
        return _GLOBAL_NAMES[meta_name]
    m = re.fullmatch(r"layers\.(\d+)\.(.+)\.weight", meta_name)
    if not m or m[2] not in _LAYER_NAMES:
        raise WeightsError(f"{meta_name}: not a weight of Meta's LLaMA checkpoint (llama/model.py names)")
    return f"model.layers.{m[1]}.{_LAYER_NAMES[m[2]]}.weight"


def permute_meta_to_hf(w, n_heads: int):
    """Interleaved rotary rows (Meta: pairs (0,1), (2,3), ...) -> half-split rows (HF: pairs (i, i+d/2)), per head."""
    rows, cols = w.shape
    return w.view(n_heads, rows // n_heads // 2, 2, cols).transpose(1, 2).reshape(rows, cols)


def permute_hf_to_meta(w, n_heads: int):
    """Half-split rows (HF) -> interleaved rotary rows (Meta): the inverse of :func:`permute_meta_to_hf`."""
    rows, cols = w.shape
    return w.view(n_heads, 2, rows // n_heads // 2, cols).transpose(1, 2).reshape(rows, cols)


def _rotary_heads(meta_name: str, n_heads: int, n_kv_heads: int) -> int | None:
    kind = _ROTARY.get(meta_name.removesuffix(".weight").split(".", 2)[-1])
    return {"q": n_heads, "k": n_kv_heads}.get(kind)


def hf_to_meta_tensor(hf_name: str, w, n_heads: int, n_kv_heads: int):
    """``(Meta name, tensor in Meta's layout)`` for the HF weight ``hf_name``: q/k rows interleaved (q with
    ``n_heads``, k with ``n_kv_heads`` heads), every other weight unchanged."""
    name = meta_key(hf_name)
    heads = _rotary_heads(name, n_heads, n_kv_heads)
    return name, (w if heads is None else permute_hf_to_meta(w, heads))


def meta_to_hf_tensor(meta_name: str, w, n_heads: int, n_kv_heads: int):
    """``(HF name, tensor in HF's layout)`` for Meta's weight ``meta_name``: the inverse of :func:`hf_to_meta_tensor`."""
    heads = _rotary_heads(meta_name, n_heads, n_kv_heads)
    return hf_key(meta_name), (w if heads is None else permute_meta_to_hf(w, heads))


# --------------------------------------------------------------------------- dtypes
# safetensors' dtype names (its format specification) and torch's
_ST_DTYPES = {"F64": "float64", "F32": "float32", "F16": "float16", "BF16": "bfloat16", "I64": "int64",
              "I32": "int32", "I16": "int16", "I8": "int8", "U8": "uint8", "BOOL": "bool"}


def torch_dtype(st_name: str):
    """The torch dtype of a safetensors dtype name (``"BF16"`` -> ``torch.bfloat16``); raises WeightsError for a
    dtype the course does not handle (e.g. FP8)."""
    import torch

    if st_name not in _ST_DTYPES:
        raise WeightsError(f"safetensors dtype {st_name} is not handled here; use a float32/float16/bfloat16 model")
    return getattr(torch, _ST_DTYPES[st_name])


def safetensors_dtype(dtype) -> str:
    """The safetensors name of a torch dtype; raises WeightsError for one safetensors cannot store."""
    name = str(dtype).removeprefix("torch.")
    for st, torch_name in _ST_DTYPES.items():
        if torch_name == name:
            return st
    raise WeightsError(f"dtype {dtype} cannot be written to safetensors")


def nbytes(shape, dtype) -> int:
    """Bytes of a tensor of ``shape`` and torch ``dtype``."""
    import torch

    return math.prod(shape) * torch.empty((), dtype=dtype).element_size()


# --------------------------------------------------------------------------- files of a folder
_MODEL_FILES = (("model.safetensors.index.json", "model.safetensors"),
                ("pytorch_model.bin.index.json", "pytorch_model.bin"))
_ADAPTER_FILES = ((None, "adapter_model.safetensors"), (None, "adapter_model.bin"))


def weight_files(folder: str | Path, flag: str = "--base_model", adapter: bool = False) -> list[Path]:
    """The weight files of an HF folder in order: ``model.safetensors`` or its shards (through the index, else
    ``model-NNNNN-of-NNNNN.safetensors``), else the same for ``pytorch_model*.bin``; ``adapter``: a PEFT folder's
    ``adapter_model.safetensors`` / ``.bin``. ``flag`` names the input in errors. Raises WeightsError."""
    base = Path(folder)
    for index, single in _ADAPTER_FILES if adapter else _MODEL_FILES:
        if index and (base / index).is_file():
            weight_map = read_json(base / index).get("weight_map")
            if not isinstance(weight_map, dict):
                raise WeightsError(f"{base / index}: no 'weight_map'; the index file is damaged")
            files = list(dict.fromkeys(weight_map.values()))
            missing = [f for f in files if not (base / f).is_file()]
            if missing:
                raise WeightsError(f"{base / index} lists {missing} but they are missing from {base}; download them "
                                   "again")
            return [base / f for f in files]
        if (base / single).is_file():
            return [base / single]
        stem, suffix = single.rsplit(".", 1)
        shards = sorted(base.glob(f"{stem}-*-of-*.{suffix}"))
        if shards and not adapter:
            return shards
    names = " or ".join(s for _, s in _ADAPTER_FILES) if adapter else \
        "model.safetensors(.index.json) or pytorch_model.bin(.index.json)"
    what = "a PEFT LoRA folder" if adapter else "a Hugging Face model folder"
    raise WeightsError(f"{flag} {base}: no {names} found; pass {what}")


def load_torch_file(path: str | Path, hint: str = "download it again and compare its SHA256 with the published "
                    "value") -> dict:
    """A ``.bin``/``.pth`` state dict via ``torch.load(weights_only=True, mmap=True)`` (a legacy non-zip file is
    read without the memory map). Raises WeightsError naming the file (truncated, corrupt, or holding Python
    objects that the safe unpickler refuses); ``hint`` says what to do."""
    import torch

    path = Path(path)
    try:
        try:
            sd = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as e:  # mmap needs the zip format
            if "mmap" not in str(e):
                raise
            sd = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        first = str(e).splitlines()[0].split(". ")[0][:200] if str(e) else ""
        raise WeightsError(f"{path}: cannot be read as a PyTorch checkpoint ({type(e).__name__}: {first}). The file "
                           f"is truncated or corrupt: {hint}") from e
    if not isinstance(sd, dict):
        raise WeightsError(f"{path}: expected a state dict, found {type(sd).__name__}")
    return sd


@dataclass(frozen=True)
class TensorInfo:
    """Where a tensor is stored and what it is, read from the file headers."""

    file: Path
    shape: tuple[int, ...]
    dtype: object  # torch.dtype


def _corrupt(path: Path, e: Exception) -> WeightsError:
    return WeightsError(f"{path}: cannot read it ({type(e).__name__}: {str(e)[:200]}). The file is truncated or "
                        "corrupt: download it again and compare its SHA256 with the published value")


class WeightReader:
    """The tensors of an HF folder (a model, or a PEFT adapter with ``adapter=True``), read one at a time.

    Headers are read up front (``keys``, ``info``, ``shape``, ``dtype``: no weights loaded). safetensors files
    are opened with the library's ``safe_open`` for each tensor, so only the tensor in hand is resident; ``.bin``
    files go through :func:`load_torch_file` (memory-mapped), one file held at a time. Use it as a context
    manager (or call :meth:`close`)::

        with WeightReader(folder) as r:
            for key, tensor in r.items():
                ...
    """

    def __init__(self, folder: str | Path, flag: str = "--base_model", adapter: bool = False):
        self.folder = Path(folder)
        self.files = weight_files(self.folder, flag, adapter)
        self.info: dict[str, TensorInfo] = {}
        self._bin: tuple[Path, dict] | None = None  # the one .bin state dict held open
        try:
            for f in self.files:
                for key, shape, dtype in self._headers(f):
                    self.info[key] = TensorInfo(f, shape, dtype)
        except BaseException:
            self.close()
            raise

    def _headers(self, path: Path) -> Iterator[tuple[str, tuple[int, ...], object]]:
        if path.suffix != ".safetensors":
            for key, t in self._state(path).items():
                yield key, tuple(t.shape), t.dtype
            return
        from safetensors import safe_open

        try:
            with safe_open(str(path), framework="pt") as h:
                for key in h.offset_keys():  # file order: reading them in turn reads the file front to back
                    s = h.get_slice(key)
                    yield key, tuple(s.get_shape()), torch_dtype(s.get_dtype())
        except WeightsError:
            raise
        except Exception as e:  # safetensors checks the header against the file size: truncation shows here
            raise _corrupt(path, e) from e

    def _state(self, path: Path) -> dict:
        if self._bin is None or self._bin[0] != path:
            self._bin = None  # release the previous file's map first
            self._bin = (path, load_torch_file(path))
        return self._bin[1]

    @property
    def keys(self) -> list[str]:
        """Every tensor name, in file order."""
        return list(self.info)

    def shape(self, key: str) -> tuple[int, ...]:
        return self.info[key].shape

    def dtype(self, key: str):
        return self.info[key].dtype

    def get(self, key: str):
        """The tensor ``key`` as stored (its own dtype)."""
        path = self.info[key].file
        if path.suffix != ".safetensors":
            return self._state(path)[key]
        from safetensors import safe_open

        try:
            with safe_open(str(path), framework="pt") as h:
                return h.get_tensor(key)
        except Exception as e:
            raise _corrupt(path, e) from e

    def items(self) -> Iterator[tuple[str, object]]:
        """``(name, tensor)`` for every tensor, one at a time, in file order."""
        for key in self.keys:
            yield key, self.get(key)

    def state_dict(self) -> dict:
        """Every tensor in one dict (small models and adapters only: the whole folder in memory)."""
        return dict(self.items())

    def close(self) -> None:
        self._bin = None

    def __enter__(self) -> WeightReader:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def load_hf_state_dict(model_dir: str | Path, flag: str = "--input_dir") -> dict:
    """The full state dict of an HF model folder (safetensors or ``.bin``, one file or sharded)."""
    with WeightReader(model_dir, flag) as r:
        return r.state_dict()


def mapped_tensors(path: str | Path, names: list[str] | None = None) -> dict:
    """Tensors of one safetensors file without copying them: memory-mapped by the safetensors library, so their
    pages are file-backed (evictable) and read when used. ``names`` fixes the order (default: file order)."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as h:
        return {name: h.get_tensor(name) for name in (names if names is not None else h.offset_keys())}


# --------------------------------------------------------------------------- writing
class StreamingSafetensorsWriter:
    """Write one safetensors file tensor by tensor: the header comes first, from the known names/shapes/dtypes.

    Written by hand because the safetensors library only saves whole in-memory dicts; the layout is its format
    specification (8-byte little-endian header size, JSON header padded to 8 bytes, raw little-endian data).
    Use it as a context manager; :meth:`close` checks that every announced tensor was written.
    """

    def __init__(self, path: Path, specs: list[tuple[str, tuple, object]], metadata: dict | None = None):
        header, offset = {}, 0
        for name, shape, dtype in specs:
            n = nbytes(shape, dtype)
            header[name] = {"dtype": safetensors_dtype(dtype), "shape": list(shape), "data_offsets": [offset, offset + n]}
            offset += n
        if metadata:
            header["__metadata__"] = metadata
        raw = json.dumps(header, separators=(",", ":")).encode()
        raw += b" " * (-len(raw) % 8)
        self.path, self.specs, self.i = Path(path), specs, 0
        self.data_start = 8 + len(raw)
        self.offsets = {name: header[name]["data_offsets"][0] for name, _, _ in specs}
        self.f = open(self.path, "wb")
        self.sha256 = hashlib.sha256()  # of every byte written: the manifest needs no second read of the file
        self._put(len(raw).to_bytes(8, "little") + raw)

    def _put(self, data) -> None:
        self.f.write(data)
        self.sha256.update(data)

    def write(self, name: str, t) -> None:
        """Append tensor ``t``; it must be the next announced one (name, shape and dtype)."""
        import torch

        want_name, shape, dtype = self.specs[self.i]
        if name != want_name or tuple(t.shape) != tuple(shape) or t.dtype != dtype:
            raise RuntimeError(f"{self.path}: expected {want_name} {shape} {dtype}, got {name} {tuple(t.shape)} {t.dtype}")
        self._put(memoryview(t.contiguous().reshape(-1).view(torch.uint8).numpy()))
        self.i += 1

    def close(self) -> None:
        self.f.close()
        if self.i != len(self.specs):
            raise RuntimeError(f"{self.path}: only {self.i} of {len(self.specs)} tensors written")

    def __enter__(self) -> StreamingSafetensorsWriter:
        return self

    def __exit__(self, exc_type, *exc) -> None:
        if exc_type is None:
            self.close()
        else:  # the block failed: release the file, the caller's atomic_dir removes it
            self.f.close()
