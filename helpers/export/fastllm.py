"""fastllm: the ``.flm`` layout (version 2, as ``ftllm/torch2flm.py`` writes it) written, read back and run.

:func:`export_fastllm` writes seed 003's chat settings (``pre_prompt``, ``user_role``, ``bot_role``,
``history_sep``) into the file. We write the layout ourselves: ``torch2flm`` cannot read the course tokenizer
(transformers 5 has no slow LlamaTokenizer with ``sp_model``) and the ``ftllm`` wheel is 216 MB and depends on
CUDA runtime wheels. :func:`read_flm` reads the same documented layout back in pure Python; :func:`fastllm_run`
runs a file with ``ftllm``'s bundled CPU library when it is installed (``pip install --no-deps ftllm==1.9.0``).
"""
from __future__ import annotations

import enum
import json
import os
import shutil
import struct
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .. import prompts
from ..generation import GENERATION_DEFAULTS
from ..io import atomic_dir, atomic_write_text, write_manifest
from ..weights import WeightReader, kv_heads, rope_parameters
from .source import DEFAULT_FAMILY, ExportError, SpVocab, read_config, sp_model_path, sp_vocab, tokenizer_dir

FLM_VERSION = 2


class FlmDataType(enum.IntEnum):
    """fastllm's data-type ids of the weights ``torch2flm`` writes (its ``fastllm_data_type_dict``)."""

    FLOAT32 = 0
    INT8 = 3     # per row (min, max) floats + one byte per value
    FLOAT16 = 7
    INT4 = 8     # fastllm's INT4_NOZERO: per row (min, max) floats + two values per byte


#: ``--dtype`` names -> data type of the linear weights (embeddings and norms always stay float32)
FLM_DTYPES = {"float32": FlmDataType.FLOAT32, "float16": FlmDataType.FLOAT16, "int8": FlmDataType.INT8,
              "int4": FlmDataType.INT4}


def _flm_str(s: str) -> bytes:
    b = s.encode("utf-8")
    return struct.pack("<i", len(b)) + b


def flm_config(cfg: dict, vocab: SpVocab, family: str | None, system: str | None = None) -> dict[str, str]:
    """The key/value header of a ``.flm`` file: model hyper-parameters, rope (``rope_scaling.*`` flattened as
    torch2flm does), generation defaults, tokenizer flags and seed 003's chat settings
    (``pre_prompt``/``user_role``/``bot_role``/``history_sep``), all as strings."""
    keys = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "max_position_embeddings",
            "rms_norm_eps", "vocab_size", "bos_token_id", "eos_token_id", "pad_token_id", "tie_word_embeddings")
    rope = rope_parameters(cfg)
    out = {k: str(cfg[k]) for k in keys if cfg.get(k) is not None}
    out.update({"model_type": "llama", "architectures": "LlamaForCausalLM", "num_key_value_heads": str(kv_heads(cfg)),
                "rope_theta": str(rope.theta), "max_positions": str(cfg.get("max_position_embeddings", 2048)),
                "tokenizer_use_score": "1", "tokenizer_add_dummy_prefix": str(vocab.add_dummy_prefix),
                "temperature": str(GENERATION_DEFAULTS["temperature"]), "top_k": str(GENERATION_DEFAULTS["top_k"]),
                "top_p": str(GENERATION_DEFAULTS["top_p"]),
                "repetition_penalty": str(GENERATION_DEFAULTS["repetition_penalty"])})
    if rope.scaling is not None:
        out.update({"rope_scaling.type": rope.scaling, "rope_scaling.factor": str(rope.factor)})
        if rope.original_context:
            out["rope_scaling.original_max_position_embeddings"] = str(rope.original_context)
    if family:
        # like torch2flm: the three role strings always (fastllm falls back to its own defaults for missing
        # keys), history_sep only when non-empty
        out.update({k: v for k, v in prompts.fastllm_config(family, system=system).items() if v or k != "history_sep"})
    return out


def _flm_quant(a: np.ndarray, dtype: FlmDataType) -> bytes:
    """One weight's payload: data-type id then the data, as ``torch2flm.py`` writes it."""
    if dtype == FlmDataType.FLOAT32:
        return struct.pack("<i", dtype) + a.astype("<f4").tobytes()
    if dtype == FlmDataType.FLOAT16:
        return struct.pack("<i", dtype) + a.astype("<f2").tobytes()
    if dtype == FlmDataType.INT8:  # per row: symmetric range (-max|w|, max|w|), codes 1..255 around 128
        c_max = np.maximum(np.abs(a).max(axis=-1, keepdims=True), 0.1)
        q = np.clip(a / (c_max / 127.0) + 128.5, 1, 255).astype(np.uint8)
        mm = np.concatenate([-c_max, c_max], axis=1).astype("<f4")
        return struct.pack("<ii", dtype, 0) + mm.tobytes() + q.tobytes()
    if a.shape[-1] % 2:  # INT4: per row (min, max) with min on the zero-point grid, two 4-bit codes per byte
        raise ExportError(f"int4 needs an even row length, got {a.shape}")
    c_min, c_max = a.min(axis=-1, keepdims=True), a.max(axis=-1, keepdims=True)
    scale = np.where(c_max > c_min, (c_max - c_min) / 15.0, 1.0)
    zero = np.clip(np.round(-c_min / scale), 0, 15)
    c_min = -scale * zero
    q = np.clip((a - c_min) / scale + 0.5, 0, 15).astype(np.int8).astype(np.uint8)
    packed = (q[:, 0::2] * 16 + q[:, 1::2]).astype(np.uint8)
    mm = np.concatenate([c_min, c_max], axis=1).astype("<f4")
    return struct.pack("<ii", dtype, 0) + mm.tobytes() + packed.tobytes()


def export_fastllm(base_model: str | Path, outfile: str | Path, dtype: str = "float16", family: str | None = DEFAULT_FAMILY,
                   system: str | None = None, tokenizer_path: str | Path | None = None, overwrite: bool = False,
                   progress: bool = True) -> Path:
    """Write fastllm's ``.flm`` (version 2) from an HF LLaMA folder; returns its path.

    Layout (little endian): ``int32 version``; ``int32 n`` then ``n`` key/value strings (``int32 len`` +
    UTF-8, keys sorted); the vocabulary (``int32 n``; per piece ``int32 len``, ``len`` x ``int32`` bytes,
    ``int32 id``, ``float32 score``); the weights (``int32 n``; per weight name, ``int32 ndim``, dims, ``int32
    dtype`` + data). Linear weights get ``dtype`` (float16, int8 or int4 with per-row min/max); embeddings and
    norms stay float32 -- as ``torch2flm.tofile`` does.
    """
    from tqdm.auto import tqdm

    if dtype not in FLM_DTYPES:
        raise ExportError(f"--dtype {dtype!r}: choose one of {', '.join(FLM_DTYPES)}")
    model_dir, out = Path(base_model), Path(outfile)
    if out.exists() and not overwrite:
        raise ExportError(f"--outfile {out}: file exists; pass --overwrite to replace it")
    cfg = read_config(model_dir)
    vocab = sp_vocab(sp_model_path(model_dir, tokenizer_path), int(cfg["vocab_size"]),
                     tokenizer_dir(model_dir, tokenizer_path))
    header = flm_config(cfg, vocab, family, system)
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{out.name}.", dir=out.parent)
    try:
        with os.fdopen(fd, "wb") as fo, WeightReader(model_dir) as weights:
            fo.write(struct.pack("<ii", FLM_VERSION, len(header)))
            for k in sorted(header):
                fo.write(_flm_str(k) + _flm_str(header[k]))
            fo.write(struct.pack("<i", vocab.n_pieces))
            for i in range(vocab.n_pieces):
                b = vocab.tokens[i].encode("utf-8")
                fo.write(struct.pack(f"<i{len(b)}iif", len(b), *b, i, vocab.scores[i]))
            keys = [k for k in weights.keys if not k.endswith("rotary_emb.inv_freq")]
            fo.write(struct.pack("<i", len(keys)))
            for k in tqdm(keys, desc=f"flm {dtype}", unit="tensor", disable=not progress):
                a = weights.get(k).float().contiguous().numpy()
                fo.write(_flm_str(k) + struct.pack(f"<i{a.ndim}i", a.ndim, *a.shape))
                linear = a.ndim == 2 and "embed_tokens" not in k
                fo.write(_flm_quant(a, FLM_DTYPES[dtype] if linear else FlmDataType.FLOAT32))
        os.replace(tmp_name, out)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
    return out


@dataclass
class FlmFile:
    version: int
    config: dict[str, str]
    vocab: list[tuple[bytes, int, float]]
    tensors: dict[str, np.ndarray] = field(default_factory=dict)  # dequantized, float32
    dtypes: dict[str, FlmDataType] = field(default_factory=dict)


class _Cursor:
    """Little-endian values read in turn from the bytes of a ``.flm`` file."""

    def __init__(self, data: bytes):
        self.data, self.pos = data, 0

    def take(self, fmt: str) -> tuple:
        vals = struct.unpack_from(fmt, self.data, self.pos)
        self.pos += struct.calcsize(fmt)
        return vals

    def int(self) -> int:
        return self.take("<i")[0]

    def string(self) -> str:
        n = self.int()
        self.pos += n
        return self.data[self.pos - n:self.pos].decode("utf-8")

    def array(self, dtype: str, count: int) -> np.ndarray:
        a = np.frombuffer(self.data, dtype, count, self.pos)
        self.pos += a.nbytes
        return a


def _read_weight(cur: _Cursor, path: Path, name: str, shape: tuple[int, ...]) -> tuple[np.ndarray, FlmDataType]:
    """One weight's payload, dequantized the way fastllm does (``scale = (max - min) / (2^bits - 1)``,
    ``zero = round(-min / scale)``)."""
    code, count = cur.int(), int(np.prod(shape))
    try:
        dt = FlmDataType(code)
    except ValueError:
        raise ExportError(f"{path}: weight {name} has data type {code}, which this reader does not handle") from None
    if dt in (FlmDataType.FLOAT32, FlmDataType.FLOAT16):
        a = cur.array("<f4" if dt == FlmDataType.FLOAT32 else "<f2", count)
        return a.astype(np.float32).reshape(shape), dt
    cur.int()  # the per-row quantization flag torch2flm writes (0)
    bits = 8 if dt == FlmDataType.INT8 else 4
    mm = cur.array("<f4", shape[0] * 2).reshape(shape[0], 2)
    raw = cur.array(np.uint8, count if bits == 8 else count // 2)
    q = raw if bits == 8 else np.stack([raw >> 4, raw & 15], axis=-1).reshape(-1)
    scale = (mm[:, 1:] - mm[:, :1]) / (2 ** bits - 1)
    zero = np.round(-mm[:, :1] / np.where(scale == 0, 1, scale))
    return (q.reshape(shape).astype(np.float32) - zero) * scale, dt


def read_flm(path: str | Path) -> FlmFile:
    """Read a ``.flm`` file (the layout :func:`export_fastllm` and ``torch2flm`` write) with every weight
    dequantized to float32; returns a :class:`FlmFile`."""
    path = Path(path)
    cur = _Cursor(path.read_bytes())
    version = cur.int()
    if version != FLM_VERSION:
        raise ExportError(f"{path}: .flm version {version}; only version {FLM_VERSION} is supported")
    config = {}
    for _ in range(cur.int()):
        k = cur.string()
        config[k] = cur.string()
    vocab = []
    for _ in range(cur.int()):
        b = bytes(cur.take(f"<{cur.int()}i"))
        tid, score = cur.take("<if")
        vocab.append((b, tid, score))
    out = FlmFile(version, config, vocab)
    for _ in range(cur.int()):
        name = cur.string()
        shape = cur.take(f"<{cur.int()}i")
        out.tensors[name], out.dtypes[name] = _read_weight(cur, path, name, shape)
    if cur.pos != len(cur.data):
        raise ExportError(f"{path}: {len(cur.data) - cur.pos} trailing bytes; the file is damaged")
    return out


def package_fastllm(flm_file: str | Path, output_dir: str | Path, model_name: str = "course-model",
                    overwrite: bool = False) -> Path:
    """A fastllm folder: the ``.flm``, a model card with the ``ftllm`` commands and ``SHA256SUMS``; returns it."""
    src = Path(flm_file)
    with atomic_dir(output_dir, overwrite=overwrite) as tmp:
        shutil.copyfile(src, tmp / src.name)
        atomic_write_text(tmp / "README.md", (
            f"---\ntags: [fastllm, chinese]\n---\n# {model_name} (fastllm)\n\n`{src.name}` "
            f"({src.stat().st_size / 2**20:.1f} MiB), chat settings inside the file.\n\n```python\n"
            f"from ftllm import llm\nmodel = llm.model('{src.name}')\nprint(model.response('你好'))\n```\n\n"
            "Check the files first: `sha256sum -c SHA256SUMS`.\n"))
        write_manifest(tmp)
    return Path(output_dir)


# --------------------------------------------------------------------------- running a .flm
def fastllm_path() -> str | None:
    """Where the ``ftllm`` package is: ``FTLLM_PATH`` (a folder holding ``ftllm/``), else the installed one."""
    env = os.environ.get("FTLLM_PATH")
    if env and (Path(env) / "ftllm" / "llm.py").is_file():
        return env
    import importlib.util

    spec = importlib.util.find_spec("ftllm")
    if spec and spec.origin:
        return str(Path(spec.origin).parent.parent)
    return None


_FASTLLM_DRIVER = r"""
import ctypes, json, sys
req = json.loads(sys.argv[1])
sys.path.insert(0, req["ftllm_path"])
from ftllm import llm
llm.set_cpu_threads(req["threads"])
m = llm.model(req["flm"])
lib = llm.fastllm_lib
out = {"encode": [m.encode(t) for t in req.get("encode", [])]}
if req.get("chat"):
    q, hist = req["chat"]["query"], [tuple(h) for h in req["chat"]["history"]]
    out["prompt"] = m.get_prompt(q, hist)
greedy, logits = [], []
for ids in req.get("ids", []):
    arr = (ctypes.c_int * len(ids))(*ids)
    h = lib.launch_response_llm_model(m.model, len(ids), arr, req["max_new_tokens"], 0, False, 1.0, 1, 1.0, 1.0,
                                      False, 0, None)
    toks = []
    while True:
        t = lib.fetch_response_llm_model(m.model, h)
        if t <= -1:
            break
        toks.append(t)
    greedy.append(toks)
    h = lib.launch_response_llm_model(m.model, len(ids), arr, 1, 0, False, 1.0, 1, 1.0, 1.0, True, 0, None)
    n = lib.get_tokenizer_vocab_size(m.model)
    buf = (ctypes.c_float * (n * 4))()
    lib.fetch_response_logits_llm_model(m.model, h, buf)
    logits.append(list(buf)[:n])
    while lib.fetch_response_logits_llm_model(m.model, h, buf) != -1:
        pass
out["greedy"], out["last_logits"] = greedy, logits
print("\n@@JSON@@" + json.dumps(out))
"""


def fastllm_run(flm_path: str | Path, ids: list[list[int]] = (), encode: list[str] = (), chat: dict | None = None,
                max_new_tokens: int = 8, timeout: int = 300) -> dict:
    """Load ``flm_path`` in fastllm (``ftllm``'s CPU library) in a subprocess and return what it computed.

    ``ids``: token sequences to continue greedily (``greedy``: new ids) and to score (``last_logits``: logits at
    the last position); ``encode``: texts for fastllm's tokenizer; ``chat``: ``{"query", "history": [[q, a]]}``
    for fastllm's own prompt builder (``prompt``). A subprocess because ``ftllm`` calls ``exit()`` when its
    library does not load. Raises ExportError when ``ftllm`` is not installed.
    """
    path = fastllm_path()
    if path is None:
        raise ExportError("fastllm (ftllm) is not installed: pip install --no-deps ftllm==1.9.0 (its CPU library "
                          "libfastllm_tools-cpu.so works without CUDA), or set FTLLM_PATH to an unpacked wheel")
    req = {"ftllm_path": path, "flm": str(flm_path), "ids": [list(map(int, x)) for x in ids], "encode": list(encode),
           "chat": chat, "max_new_tokens": max_new_tokens, "threads": int(os.environ.get("OMP_NUM_THREADS") or 1)}
    proc = subprocess.run([sys.executable, "-c", _FASTLLM_DRIVER, json.dumps(req)], capture_output=True, encoding="utf-8",
                          errors="replace", timeout=timeout, env={**os.environ, "PYTHONIOENCODING": "utf-8"})
    if "@@JSON@@" not in proc.stdout:
        raise ExportError(f"fastllm could not run {flm_path} (exit {proc.returncode}):\n"
                          f"{(proc.stdout + proc.stderr)[-2000:]}")
    return json.loads(proc.stdout.split("@@JSON@@", 1)[1])
