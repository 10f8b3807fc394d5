"""Text generation shared by inference, the web UI, the API server and the LangChain steps.

Defaults follow the original ``inference_hf.py``: temperature 0.2, top_k 40, top_p 0.9,
repetition_penalty 1.1, max_new_tokens 400.
"""
from __future__ import annotations

import threading
from collections.abc import Iterator

GENERATION_DEFAULTS = dict(temperature=0.2, top_k=40, top_p=0.9, num_beams=1, do_sample=True,
                           repetition_penalty=1.1, max_new_tokens=400)


def generation_kwargs(tokenizer, **overrides) -> dict:
    """Keyword arguments for ``model.generate``: the defaults, ``overrides``, and pad/eos ids.

    ``temperature=0`` (or ``do_sample=False``) means greedy decoding.
    """
    kw = dict(GENERATION_DEFAULTS)
    kw.update({k: v for k, v in overrides.items() if v is not None})
    if kw.get("temperature", 1.0) <= 0 or not kw.get("do_sample", True):
        kw["do_sample"] = False
        for key in ("temperature", "top_k", "top_p"):
            kw.pop(key, None)
    kw.setdefault("pad_token_id", tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.unk_token_id)
    kw.setdefault("eos_token_id", tokenizer.eos_token_id)
    return kw


def _device(model):
    return next(model.parameters()).device


def cut_at_stop(text: str, stop: list[str] | None) -> str:
    """``text`` up to the first occurrence of any stop string (unchanged when none occurs)."""
    cuts = [text.find(s) for s in (stop or []) if s and s in text]
    return text[:min(cuts)] if cuts else text


def held_back(text: str, stop: list[str] | None) -> int:
    """How many trailing characters of ``text`` could be the start of a stop string (not safe to show yet)."""
    keep = 0
    for s in stop or []:
        for k in range(min(len(s) - 1, len(text)), keep, -1):
            if text.endswith(s[:k]):
                keep = k
                break
    return keep


def generate(model, tokenizer, prompts: list[str], batch_size: int = 8, *, stop: list[str] | None = None,
             add_special_tokens: bool = True, sort_by_length: bool = False, progress: bool = False,
             **gen) -> list[str]:
    """Generate for many prompts, ``batch_size`` at a time with left padding; returns only new text.

    ``stop``: strings where an answer is cut; ``add_special_tokens=False`` when the prompts already carry
    ``<s>`` (chat templates); ``sort_by_length`` batches prompts of similar length together (less padding;
    results stay in input order); ``progress`` shows a tqdm bar over batches.
    """
    import torch

    kw = generation_kwargs(tokenizer, **gen)
    tokenizer.padding_side = "left"
    order = list(range(len(prompts)))
    if sort_by_length:
        lengths = [len(tokenizer(p, add_special_tokens=add_special_tokens)["input_ids"]) for p in prompts]
        order.sort(key=lambda i: lengths[i])
    starts = range(0, len(prompts), batch_size)
    if progress:
        from tqdm.auto import tqdm

        starts = tqdm(starts, desc="generate", unit="batch")
    outputs: list[str | None] = [None] * len(prompts)
    for i in starts:
        idx = order[i:i + batch_size]
        enc = tokenizer([prompts[j] for j in idx], return_tensors="pt", padding=True,
                        add_special_tokens=add_special_tokens).to(_device(model))
        with torch.inference_mode():
            out = model.generate(**enc, **kw)
        new = out[:, enc["input_ids"].shape[1]:]
        for j, text in zip(idx, tokenizer.batch_decode(new, skip_special_tokens=True)):
            outputs[j] = cut_at_stop(text, stop)
    return outputs


def stream(model, tokenizer, prompt: str, stop: list[str] | None = None, cancel: threading.Event | None = None,
           *, add_special_tokens: bool = True, **gen) -> Iterator[str]:
    """Yield new text pieces as they are generated; ends at EOS, ``max_new_tokens``, a stop string or ``cancel``.

    No part of a stop string is ever yielded: a tail that could be its beginning waits for the next piece.

    ``add_special_tokens=False`` when ``prompt`` already starts with ``<s>`` (a rendered chat template).
    """
    import torch
    from transformers import StoppingCriteria, StoppingCriteriaList, TextIteratorStreamer

    cancel = cancel or threading.Event()

    class _Cancel(StoppingCriteria):
        def __call__(self, input_ids, scores, **kwargs):
            return cancel.is_set()

    kw = generation_kwargs(tokenizer, **gen)
    enc = tokenizer(prompt, return_tensors="pt", add_special_tokens=add_special_tokens).to(_device(model))
    streamer = TextIteratorStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True)
    errors: list[BaseException] = []

    def work():
        try:
            with torch.inference_mode():
                model.generate(**enc, **kw, streamer=streamer, stopping_criteria=StoppingCriteriaList([_Cancel()]))
        except BaseException as e:  # surfaced in the consumer thread
            errors.append(e)
            streamer.end()

    thread = threading.Thread(target=work, daemon=True)
    thread.start()
    text, sent = "", 0  # everything generated so far; how much of it was yielded
    try:
        for piece in streamer:
            if not piece:
                continue
            text += piece
            answer = cut_at_stop(text, stop)
            if len(answer) < len(text):  # a stop string appeared: yield what precedes it and end
                if len(answer) > sent:
                    yield answer[sent:]
                cancel.set()
                break
            # hold back a tail that may grow into a stop string ("### " before "Instruction:" arrives)
            safe = len(text) - held_back(text, stop)
            if safe > sent:
                yield text[sent:safe]
                sent = safe
        else:
            if not errors and len(text) > sent:  # generation ended: the held-back tail was not a stop string
                yield text[sent:]
    finally:
        cancel.set()
        thread.join()
    if errors:
        raise errors[0]
