"""Running an exported GGUF in llama.cpp (``llama-cpp-python``, the ``[export]`` extra) beside transformers on the
HF folder it came from: logits, greedy continuations and token ids, compared on the same inputs."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ..tokenizer import load_tokenizer
from .source import ExportError


def llama_cpp_model(gguf_path: str | Path, n_ctx: int = 512, vocab_only: bool = False, n_threads: int | None = None,
                    kv_f32: bool = True):
    """A ``llama_cpp.Llama`` on ``gguf_path`` with every position's logits kept (``logits_all``), quiet.

    ``kv_f32``: keep the KV cache in f32 (llama.cpp's default f16 cache alone moves logits by ~1e-3, which
    would hide layout mistakes in a parity check; deployments keep the f16 default).
    """
    try:
        from llama_cpp import Llama
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ExportError("llama-cpp-python is not installed: pip install llama-cpp-python==0.3.36 "
                          "(it compiles llama.cpp, ~4 min on 2 cores)") from e
    threads = n_threads or int(os.environ.get("OMP_NUM_THREADS") or 1)
    kv = dict(type_k=0, type_v=0) if kv_f32 else {}  # 0 = GGML_TYPE_F32
    return Llama(model_path=str(gguf_path), n_ctx=n_ctx, logits_all=True, vocab_only=vocab_only, n_threads=threads,
                 n_threads_batch=threads, verbose=False, seed=0, **kv)


def llama_cpp_tokenize(llm, text: str, add_bos: bool = True, special: bool = False) -> list[int]:
    """llama.cpp's token ids for ``text`` (``special``: parse control-token text such as ``</s>``)."""
    return list(llm.tokenize(text.encode("utf-8"), add_bos=add_bos, special=special))


def llama_cpp_logits(llm, ids: list[int]) -> np.ndarray:
    """Logits ``[len(ids), vocab]`` of llama.cpp for a whole sequence (fresh context)."""
    llm.reset()
    llm.eval(list(ids))
    return np.array(llm.scores[:len(ids)], dtype=np.float32)


def llama_cpp_greedy(llm, ids: list[int], max_new_tokens: int = 8) -> list[int]:
    """Greedy continuation with llama.cpp's own sampler (temperature 0, no repetition penalty); new ids only."""
    out = []
    for tok in llm.generate(list(ids), temp=0.0, top_k=1, top_p=1.0, min_p=0.0, repeat_penalty=1.0, reset=True):
        if tok == llm.token_eos() or len(out) >= max_new_tokens:
            break
        out.append(int(tok))
    return out


def hf_logits(model, ids: list[int]) -> np.ndarray:
    """Logits ``[len(ids), vocab]`` of a transformers model, float32."""
    import torch

    with torch.inference_mode():
        return model(torch.tensor([ids])).logits[0].float().numpy()


def hf_greedy(model, ids: list[int], max_new_tokens: int = 8, eos_id: int | None = None) -> list[int]:
    """Greedy continuation with ``model.generate`` (no sampling, no penalty); new ids only, stops at EOS."""
    import torch

    with torch.inference_mode():
        out = model.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                             do_sample=False, max_new_tokens=max_new_tokens, eos_token_id=eos_id,
                             pad_token_id=eos_id, repetition_penalty=1.0)
    return [int(t) for t in out[0, len(ids):]]


def compare_with_llama_cpp(hf_dir: str | Path, gguf_path: str | Path, texts: list[str], max_new_tokens: int = 8,
                           model=None) -> dict:
    """llama.cpp on the GGUF vs transformers on the HF folder, on the same token ids.

    Returns ``{"token_mismatches", "max_abs_logit_diff", "greedy_equal", "greedy": [(hf, llama.cpp), ...]}``;
    ids are those of the course tokenizer, checked against llama.cpp's tokenizer first.
    """
    import torch
    from transformers import AutoModelForCausalLM

    if not texts:
        raise ExportError("compare_with_llama_cpp: pass at least one text to compare")
    tok = load_tokenizer(hf_dir)
    model = model or AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32).eval()
    llm = llama_cpp_model(gguf_path)
    mism, diffs, greedy = [], [], []
    try:
        for text in texts:
            ids = tok(text)["input_ids"]
            ll_ids = llama_cpp_tokenize(llm, text)
            if ll_ids != ids:
                mism.append((text, ids, ll_ids))
            diffs.append(float(np.abs(llama_cpp_logits(llm, ids) - hf_logits(model, ids)).max()))
            greedy.append((hf_greedy(model, ids, max_new_tokens, tok.eos_token_id),
                           llama_cpp_greedy(llm, ids, max_new_tokens)))
    finally:
        llm.close()
    return {"token_mismatches": mism, "max_abs_logit_diff": max(diffs), "greedy_equal": all(a == b for a, b in greedy),
            "greedy": greedy}
