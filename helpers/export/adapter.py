"""A PEFT LoRA as llama.cpp's LoRA-adapter GGUF (``llama-cli --lora``, ``Llama(lora_path=...)``, Ollama ``ADAPTER``).

The layout is that of llama.cpp's ``convert_lora_to_gguf.py``: ``general.type = adapter``, ``adapter.type = lora``,
``adapter.lora.alpha``; for every adapted matrix two tensors ``<llama.cpp name>.lora_a`` (A, ``[r, in]``) and
``.lora_b`` (B, ``[out, r]``). llama.cpp scales ``B @ A`` by ``alpha / r`` (r read from the tensors); PEFT's
per-module ``rank_pattern``/``alpha_pattern`` and rsLoRA scale differently, so any difference is folded into B.
q/k rows are permuted to Meta's interleaved rotary order like the base GGUF (only B's rows: ``P(B A) = (P B) A``).

What cannot be an adapter: ``modules_to_save`` (full ``embed_tokens``/``lm_head`` replacements, e.g. a LoRA that
grew the vocabulary like Chinese-LLaMA-LoRA) -- llama.cpp's adapter holds only A/B pairs, and the base GGUF's
vocabulary is fixed; such adapters are refused (merge them with ``helpers.merge`` and export the merged model).
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np

from ..weights import hf_to_meta_tensor
from .source import ExportError


def _base_gguf(base_gguf: str | Path) -> tuple[dict[str, tuple[int, ...]], dict]:
    """``({tensor name: numpy-order shape}, metadata)`` of the base GGUF the adapter must fit."""
    import gguf

    p = Path(base_gguf)
    if not p.is_file():
        raise ExportError(f"--base_gguf {p}: no such file; export the base model first (python -m helpers.export gguf)")
    r = gguf.GGUFReader(str(p))
    shapes = {t.name: tuple(int(x) for x in reversed(t.shape)) for t in r.tensors}
    meta = {k: r.fields[k].contents() for k in ("general.architecture", "llama.attention.head_count",
                                                 "llama.attention.head_count_kv") if k in r.fields}
    return shapes, meta


def lora_gguf_plan(lora_model: str | Path, base_gguf: str | Path) -> list[tuple[str, str, tuple, tuple]]:
    """``[(HF key, llama.cpp name, delta shape [out, in], base shape)]`` for every LoRA matrix of the adapter,
    checked against the base GGUF; raises ExportError for modules_to_save, a tensor the base lacks, or a shape
    that differs (naming the tensor and both shapes)."""
    import gguf

    from ..merge import MergeError, load_adapter

    try:
        ad = load_adapter(lora_model)
    except MergeError as e:
        raise ExportError(str(e)) from e
    shapes, meta = _base_gguf(base_gguf)
    if ad.replace:
        keys = ", ".join(sorted(ad.replace))
        grew = f" (its vocabulary has {ad.vocab_size} rows)" if ad.vocab_size else ""
        raise ExportError(
            f"--lora_model {lora_model}: {keys} are full replacements (modules_to_save){grew}; a llama.cpp LoRA adapter "
            "holds only lora_a/lora_b pairs and cannot replace or grow the embeddings/lm_head. Merge this adapter "
            "(python -m helpers.merge) and export the merged model to GGUF instead")
    if not ad.lora:
        raise ExportError(f"--lora_model {lora_model}: no LoRA matrices in the adapter")
    n_layers = 1 + max((int(k.split(".")[2]) for k in ad.lora if k.startswith("model.layers.")), default=0)
    tmap = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, max(n_layers, 1))
    plan = []
    for key, (a, b) in sorted(ad.lora.items()):
        name = tmap.get_name(key, try_suffixes=(".weight",))
        if name is None:
            raise ExportError(f"{lora_model}: LoRA on {key}, which has no llama.cpp name (is the base a LLaMA?)")
        delta = (a.shape[0], b.shape[1]) if ad.config.get("fan_in_fan_out") else (b.shape[0], a.shape[1])
        if name not in shapes:
            raise ExportError(f"--base_gguf {base_gguf}: has no tensor {name} for the adapter's {key}; "
                              "was the adapter trained on another model?")
        if shapes[name] != delta:
            raise ExportError(f"--lora_model {lora_model}: {key} ({name}) changes a {list(delta)} matrix but the base "
                              f"GGUF's {name} is {list(shapes[name])}; the adapter was trained on another base model "
                              "(use the base it names in adapter_config.json)")
        plan.append((key, name, delta, shapes[name]))
    return plan


def export_lora_gguf(lora_model: str | Path, base_gguf: str | Path, outfile: str | Path, outtype: str = "f32",
                     overwrite: bool = False) -> Path:
    """Write ``outfile``: the PEFT LoRA ``lora_model`` as a llama.cpp LoRA-adapter GGUF for ``base_gguf`` (checked
    against its tensor shapes and head counts); ``outtype`` f32 or f16. Returns the path."""
    import gguf

    from ..merge import load_adapter

    if outtype not in ("f32", "f16"):
        raise ExportError(f"--outtype {outtype!r}: choose f32 or f16 for a LoRA adapter")
    out = Path(outfile)
    if out.exists() and not overwrite:
        raise ExportError(f"--outfile {out}: file exists; pass --overwrite to replace it")
    plan = lora_gguf_plan(lora_model, base_gguf)
    _, meta = _base_gguf(base_gguf)
    n_head, n_kv = int(meta["llama.attention.head_count"]), int(meta.get("llama.attention.head_count_kv") or 0)
    ad = load_adapter(lora_model)
    alpha = float(ad.config["lora_alpha"])
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", dir=out.parent)
    os.close(fd)
    writer = gguf.GGUFWriter(tmp, "llama")
    try:
        writer.add_type(gguf.GGUFType.ADAPTER)
        writer.add_string(gguf.Keys.Adapter.TYPE, "lora")
        writer.add_float32(gguf.Keys.Adapter.LORA_ALPHA, alpha)
        writer.add_name(Path(lora_model).name)
        dt = np.float16 if outtype == "f16" else np.float32
        for key, name, _, _ in plan:
            a, b = ad.lora[key]
            a, b = a.float(), b.float()
            if ad.config.get("fan_in_fan_out"):  # stored transposed: delta = A^T B^T
                a, b = b.T.contiguous(), a.T.contiguous()
            r = a.shape[0]
            fold = ad.scaling(key) / (alpha / r)  # llama.cpp applies alpha / r
            _, b = hf_to_meta_tensor(key, b * fold, n_head, n_kv or n_head)
            writer.add_tensor(f"{name}.lora_a", a.numpy().astype(dt))
            writer.add_tensor(f"{name}.lora_b", b.contiguous().numpy().astype(dt))
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        os.replace(tmp, out)
    except BaseException:
        writer.close()
        Path(tmp).unlink(missing_ok=True)
        raise
    return out
