"""How big each export is: weight bytes per format computed from a config (real models from :mod:`helpers.catalog`),
and the size table of files or folders already written."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from .. import catalog
from ..weights import kv_heads
from .source import ExportError

# Real model shapes come from the one table, helpers.catalog (config.json of the hfl releases).
SIZE_MODELS = ("hfl/chinese-alpaca-2-1.3b", "hfl/chinese-alpaca-2-7b", "hfl/chinese-alpaca-2-13b")
SIZE_FORMATS = ("hf fp16", "gguf f32", "gguf f16", "gguf q8_0", "flm float16", "flm int8", "flm int4")


def _shapes(cfg: dict) -> list[tuple[str, tuple[int, ...]]]:
    v, h, f = int(cfg["vocab_size"]), int(cfg["hidden_size"]), int(cfg["intermediate_size"])
    kv = h // int(cfg["num_attention_heads"]) * kv_heads(cfg)
    out = [("embed", (v, h)), ("norm", (h,))] + ([] if cfg.get("tie_word_embeddings") else [("lm_head", (v, h))])
    for _ in range(int(cfg["num_hidden_layers"])):
        out += [("q", (h, h)), ("k", (kv, h)), ("v", (kv, h)), ("o", (h, h)), ("gate", (f, h)), ("up", (f, h)),
                ("down", (h, f)), ("norm", (h,)), ("norm", (h,))]
    return out


def tensor_bytes(cfg: dict, fmt: str) -> int:
    """Bytes of the weights of a LLaMA with config ``cfg`` stored as ``fmt`` (one of ``SIZE_FORMATS``), from the
    storage rules of the writers (norms f32; q8_0 = 34 bytes per 32 values, f16 where rows are not a multiple of
    32; fastllm keeps embeddings in f32 and adds a (min, max) float pair per row of a quantized matrix).
    Headers (vocabulary, metadata) are not included."""
    if fmt not in SIZE_FORMATS:
        raise ExportError(f"format {fmt!r}: choose one of {SIZE_FORMATS}")
    total = 0
    for kind, shape in _shapes(cfg):
        n = int(np.prod(shape))
        if fmt == "hf fp16":
            total += 2 * n
        elif len(shape) == 1 or fmt == "gguf f32":
            total += 4 * n
        elif fmt == "gguf f16":
            total += 2 * n
        elif fmt == "gguf q8_0":
            total += n * 34 // 32 if shape[-1] % 32 == 0 else 2 * n
        elif kind == "embed":  # fastllm: embeddings stay float32
            total += 4 * n
        elif fmt == "flm float16":
            total += 2 * n
        else:  # flm int8 / int4
            total += (n if fmt == "flm int8" else n // 2) + 8 * shape[0]
    return total


def size_table(configs: dict[str, dict] | None = None):
    """A DataFrame (GiB) of :func:`tensor_bytes` for every format and config (default: the :data:`SIZE_MODELS` of
    :mod:`helpers.catalog`, columns named by their short names)."""
    import pandas as pd

    configs = configs or {catalog.get(r).short_name: catalog.get(r).config for r in SIZE_MODELS}
    return pd.DataFrame({name: {fmt: round(tensor_bytes(cfg, fmt) / 2**30, 2) for fmt in SIZE_FORMATS}
                         for name, cfg in configs.items()})


def artifact_sizes(paths: dict[str, str | Path]):
    """A table (pandas DataFrame) ``artifact, files, MiB`` of files or folders (hidden files excluded)."""
    import pandas as pd

    rows = []
    for name, p in paths.items():
        p = Path(p)
        files = [p] if p.is_file() else [f for f in p.rglob("*") if f.is_file() and not f.name.startswith(".")]
        rows.append({"artifact": name, "files": len(files), "MiB": round(sum(f.stat().st_size for f in files) / 2**20, 3)})
    return pd.DataFrame(rows)
