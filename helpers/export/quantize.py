"""Quantized GGUF (Q4_0, Q4_K_M, Q5_K_M, Q8_0) made by llama.cpp's own quantizer, and what each type costs.

``quantize_gguf`` checks the block sizes first (from the GGUF tensor shapes and ``gguf.GGML_QUANT_SIZES``), then
calls ``llama_cpp.llama_model_quantize`` -- the code behind llama.cpp's ``llama-quantize`` -- on the f16/f32 GGUF
the course writes, and reports the type each tensor really got: a ``*_K_M`` file is a *mix* (llama.cpp keeps
``output.weight`` and part of ``attn_v``/``ffn_down`` in Q6_K), and where a row does not fit a block llama.cpp
silently falls back to another type. ``quant_table`` measures size, perplexity on held-out text (llama.cpp's
logits) and decode tokens/s for each file.
"""
from __future__ import annotations

import ctypes
import math
import os
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .source import ExportError

# llama.cpp file type (LLAMA_FTYPE_MOSTLY_<name>) -> the ggml type of its ordinary matrices
QUANT_TYPES = {"Q4_0": "Q4_0", "Q4_K_M": "Q4_K", "Q5_K_M": "Q5_K", "Q8_0": "Q8_0"}


def _block(ggml_type: str) -> int:
    """Values per block of a ggml type (32 for Q4_0/Q8_0, 256 for the K-quants), from ``gguf.GGML_QUANT_SIZES``."""
    import gguf

    return gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType[ggml_type]][0]


def _quantized_tensors(gguf_path: str | Path) -> list[tuple[str, list[int], str]]:
    """``(name, shape as ggml ne, type)`` of every tensor llama.cpp's quantizer converts (2-D weights)."""
    import gguf

    r = gguf.GGUFReader(str(gguf_path))
    return [(t.name, [int(x) for x in t.shape], t.tensor_type.name) for t in r.tensors
            if len(t.shape) >= 2 and t.name.endswith(".weight")]


def quant_blockers(gguf_path: str | Path, qtype: str) -> list[tuple[str, int, list[str]]]:
    """Tensors whose rows do not fit ``qtype``'s block: ``[(tensor, row length, quant types that would fit)]``."""
    if qtype not in QUANT_TYPES:
        raise ExportError(f"--type {qtype!r}: choose one of {', '.join(QUANT_TYPES)}")
    out = []
    for name, shape, _ in _quantized_tensors(gguf_path):
        row = shape[0]
        if row % _block(QUANT_TYPES[qtype]):
            out.append((name, row, [t for t, g in QUANT_TYPES.items() if row % _block(g) == 0]))
    return out


def check_quantizable(gguf_path: str | Path, qtype: str) -> None:
    """Raises ExportError naming the first tensor whose rows do not fit ``qtype``'s block and the types that
    would; returns None when every matrix fits."""
    bad = quant_blockers(gguf_path, qtype)
    if not bad:
        return
    name, row, ok = bad[0]
    block = _block(QUANT_TYPES[qtype])
    works = (f"{', '.join(ok)} would work" if ok else
             "no quantized type fits (keep it f16: python -m helpers.export gguf --outtype f16)")
    more = f" (and {len(bad) - 1} more tensor(s))" if len(bad) > 1 else ""
    raise ExportError(f"{gguf_path}: tensor {name} has rows of {row} values, not a multiple of {block} that "
                      f"{qtype} needs{more}; for this tensor {works}. Pass allow_fallback=True (--allow_fallback) to "
                      "let llama.cpp pick another type for such tensors")


@dataclass
class QuantResult:
    """What :func:`quantize_gguf` wrote: the file, the type asked for, the type of every quantized tensor, and the
    tensors that got another type than the file type's main one (llama.cpp's mixes and fallbacks)."""

    path: Path
    qtype: str
    types: dict[str, str] = field(default_factory=dict)
    other: dict[str, str] = field(default_factory=dict)
    log: str = ""

    def summary(self) -> dict:
        """``{ggml type: number of tensors}`` of the quantized matrices."""
        out: dict[str, int] = {}
        for t in self.types.values():
            out[t] = out.get(t, 0) + 1
        return out


class _CapturedStderr:
    """Collects llama.cpp's quantizer log: llama-cpp-python's log callback writes to ``sys.stderr``, C code
    without it to file descriptor 2; written by hand: contextlib.redirect_stderr only swaps the Python object."""

    def __enter__(self):
        import contextlib
        import io

        self.file, self.py = tempfile.TemporaryFile(mode="w+b"), io.StringIO()
        self.saved = os.dup(2)
        os.dup2(self.file.fileno(), 2)
        self.redirect = contextlib.redirect_stderr(self.py)
        self.redirect.__enter__()
        return self

    def __exit__(self, *exc):
        self.redirect.__exit__(*exc)
        os.dup2(self.saved, 2)
        os.close(self.saved)
        self.file.seek(0)
        self.text = self.py.getvalue() + self.file.read().decode("utf-8", errors="replace")
        self.file.close()


def quantize_gguf(gguf_path: str | Path, outfile: str | Path, qtype: str = "Q4_K_M", allow_fallback: bool = False,
                  overwrite: bool = False, nthread: int | None = None) -> QuantResult:
    """Quantize an f16/f32 GGUF to ``qtype`` with llama.cpp's quantizer; returns a :class:`QuantResult`.

    ``nthread``: default ``OMP_NUM_THREADS``, else every core (as ``llama-quantize`` does).
    Checks the block sizes first (:func:`check_quantizable`) unless ``allow_fallback``. The file is written under
    a temporary name beside ``outfile`` and renamed when llama.cpp reports success.
    """
    import llama_cpp

    src, out = Path(gguf_path), Path(outfile)
    if not src.is_file():
        raise ExportError(f"--gguf {src}: no such file; export one first (python -m helpers.export gguf --outtype f16)")
    if out.exists() and not overwrite:
        raise ExportError(f"--outfile {out}: file exists; pass --overwrite to replace it")
    if allow_fallback:
        quant_blockers(src, qtype)  # still validates qtype
    else:
        check_quantizable(src, qtype)
    already = {t for _, _, t in _quantized_tensors(src)} - {"F16", "F32", "BF16"}
    if already:
        raise ExportError(f"--gguf {src}: already quantized ({', '.join(sorted(already))}); quantize from the f16 or "
                          "f32 export (re-quantizing loses accuracy twice)")
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", dir=out.parent)
    os.close(fd)
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = getattr(llama_cpp, f"LLAMA_FTYPE_MOSTLY_{qtype}")
    params.nthread = nthread or int(os.environ.get("OMP_NUM_THREADS") or os.cpu_count() or 1)  # llama-quantize: all cores
    try:
        with _CapturedStderr() as err:
            rc = llama_cpp.llama_model_quantize(str(src).encode(), tmp.encode(), ctypes.byref(params))
        if rc != 0:
            raise ExportError(f"llama.cpp could not quantize {src} to {qtype} (code {rc}):\n{err.text[-2000:]}")
        os.replace(tmp, out)
    finally:
        Path(tmp).unlink(missing_ok=True)
    types = {name: t for name, _, t in _quantized_tensors(out)}
    main = QUANT_TYPES[qtype]
    return QuantResult(out, qtype, types, {k: v for k, v in types.items() if v != main}, err.text)


# --------------------------------------------------------------------------- what each type costs
def heldout_text() -> str:
    """The held-out Chinese text of the course (``data/zh_heldout.txt``): never used for training or vocabulary."""
    from ..core import DATA_DIR

    return (DATA_DIR / "zh_heldout.txt").read_text(encoding="utf-8")


def llama_cpp_perplexity(gguf_path: str | Path, text: str, n_ctx: int = 256, max_tokens: int = 2048) -> dict:
    """Perplexity of ``text`` under the GGUF in llama.cpp: the text's tokens (at most ``max_tokens``) in windows of
    ``n_ctx`` (each starting with BOS), every next token scored from llama.cpp's logits.

    Returns ``{"perplexity", "nll", "tokens", "first_log_probs"}`` (``nll``: mean negative log-likelihood in nats;
    ``first_log_probs``: the next-token log-probabilities ``[n_ctx, vocab]`` of the first window)."""
    from .runtime import llama_cpp_logits, llama_cpp_model, llama_cpp_tokenize

    llm = llama_cpp_model(gguf_path, n_ctx=n_ctx, kv_f32=False)
    first = None
    try:
        ids = llama_cpp_tokenize(llm, text, add_bos=False)[:max_tokens]
        bos, total, count = llm.token_bos(), 0.0, 0
        for start in range(0, len(ids) - 1, n_ctx - 1):
            window = [bos] + ids[start:start + n_ctx - 1]
            if len(window) < 3:
                break
            logits = llama_cpp_logits(llm, window).astype(np.float64)
            logp = logits - logits.max(-1, keepdims=True)
            logp -= np.log(np.exp(logp).sum(-1, keepdims=True))
            first = logp if first is None else first
            targets = np.array(window[1:])
            total -= float(logp[np.arange(len(targets)), targets][1:].sum())  # skip scoring the first token after BOS
            count += len(targets) - 1
    finally:
        llm.close()
    if count == 0:
        raise ExportError("llama_cpp_perplexity: the text has fewer than 3 tokens; pass a longer text")
    return {"perplexity": math.exp(total / count), "nll": total / count, "tokens": count, "first_log_probs": first}


def llama_cpp_tokens_per_s(gguf_path: str | Path, prompt: str = "北京有什么好玩的？", new_tokens: int = 64,
                           n_threads: int | None = None) -> float:
    """Greedy decode speed of the GGUF in llama.cpp (tokens/s, prompt prefill included; no EOS stop, KV cache f16
    as deployed), after a short warm-up."""
    from .runtime import llama_cpp_model, llama_cpp_tokenize

    llm = llama_cpp_model(gguf_path, n_ctx=max(128, new_tokens + 64), n_threads=n_threads, kv_f32=False)
    try:
        ids = llama_cpp_tokenize(llm, prompt)

        def run(n: int) -> int:
            k = 0
            for _ in llm.generate(ids, temp=0.0, top_k=1, top_p=1.0, min_p=0.0, repeat_penalty=1.0, reset=True):
                k += 1
                if k == n:
                    return k
            return k

        run(4)
        t0 = time.perf_counter()
        n = run(new_tokens)
        return n / (time.perf_counter() - t0)
    finally:
        llm.close()


def quant_table(files: dict[str, str | Path], reference: str = "f16", text: str | None = None, n_ctx: int = 256,
                max_tokens: int = 2048, new_tokens: int = 64):
    """A DataFrame, one row per GGUF in ``files`` (name -> path): ``MiB``, ``bits/weight`` (of the 2-D tensors),
    ``perplexity`` on ``text`` (default: :func:`heldout_text`), ``ppl / <reference>``, the mean KL divergence
    from the reference's next-token distribution and how often its top-1 token agrees (first window of ``n_ctx``,
    as llama.cpp's ``llama-perplexity --kl-divergence`` reports), and decode ``tokens/s``."""
    import gguf
    import pandas as pd

    text = heldout_text() if text is None else text
    if reference not in files:
        raise ExportError(f"quant_table: reference {reference!r} is not one of {list(files)}")
    ppls = {name: llama_cpp_perplexity(path, text, n_ctx, max_tokens) for name, path in files.items()}
    ref = ppls[reference]["first_log_probs"]
    rows = []
    for name, path in files.items():
        mats = [t for t in gguf.GGUFReader(str(path)).tensors if len(t.shape) >= 2]
        bpw = 8 * sum(int(t.n_bytes) for t in mats) / sum(int(t.n_elements) for t in mats)
        ppl, lp = ppls[name], ppls[name]["first_log_probs"]
        rows.append({"type": name, "MiB": round(Path(path).stat().st_size / 2**20, 3), "bits/weight": round(bpw, 2),
                     "perplexity": ppl["perplexity"],
                     f"KL vs {reference}": float((np.exp(ref) * (ref - lp)).sum(-1).mean()),
                     f"top-1 = {reference}": float((lp.argmax(-1) == ref.argmax(-1)).mean()),
                     "tokens/s": round(llama_cpp_tokens_per_s(path, new_tokens=new_tokens), 1)})
    df = pd.DataFrame(rows).set_index("type")
    df.insert(3, f"ppl / {reference}", (df["perplexity"] / df.loc[reference, "perplexity"]).round(4))
    df["perplexity"] = df["perplexity"].round(2)
    return df.round({f"KL vs {reference}": 5, f"top-1 = {reference}": 3})
