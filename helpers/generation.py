"""Text generation shared by inference, the web UI, the API server and the LangChain steps.

Defaults follow the original ``inference_hf.py``: temperature 0.2, top_k 40, top_p 0.9,
repetition_penalty 1.1, max_new_tokens 400.

Speculative decoding (the original ``--speculative_sampling`` with a draft model) is transformers' assisted
generation: ``model.generate(..., assistant_model=draft)``. :func:`check_draft` refuses a draft with another
vocabulary before anything is generated; :func:`speculative_generate` also counts the forward passes of both
models (forward hooks) to report how many drafted tokens the target accepted.
"""
from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass

from .core import CourseError

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


def vocab_rows(model) -> int:
    """Rows of ``model``'s output layer (``lm_head``): the vocabulary its next-token scores range over."""
    head = model.get_output_embeddings()
    return int(head.weight.shape[0]) if head is not None else int(model.config.vocab_size)


def check_draft(model, draft_model) -> None:
    """Refuse (``CourseError`` naming both sizes) a draft whose vocabulary differs from the target's: a drafted
    token id must mean the same piece to both models. Returns ``None`` when they match."""
    target, draft = vocab_rows(model), vocab_rows(draft_model)
    if target != draft:
        raise CourseError(f"--draft_base_model: the draft model has a vocabulary of {draft} tokens but the target "
                          f"(--base_model) has {target}: speculative decoding needs the same tokenizer (e.g. "
                          "hfl/chinese-alpaca-2-1.3b drafting for hfl/chinese-alpaca-2-7b, both 55296)")


def draft_kwargs(draft_model, draft_k: int | None = None) -> dict:
    """``model.generate`` keywords for assisted generation with ``draft_model``; returns
    ``{"assistant_model": draft_model}``. Sets the draft's ``generation_config`` (where transformers' candidate
    generator reads them) as the original ``--draft_k``: > 0 drafts exactly that many tokens per round; ``None``
    or <= 0 adapts from 4 (+2 after a fully accepted round, -1 otherwise, restarting at 4 for every call:
    transformers' ``heuristic_transient``, the original's rule). transformers' extra confidence cut-off
    (``assistant_confidence_threshold``, not in the original) is switched off so the draft length is only ``k``."""
    cfg = draft_model.generation_config
    adaptive = draft_k is None or draft_k <= 0
    cfg.num_assistant_tokens = 4 if adaptive else int(draft_k)
    cfg.num_assistant_tokens_schedule = "heuristic_transient" if adaptive else "constant"
    cfg.assistant_confidence_threshold = 0.0
    return {"assistant_model": draft_model}


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
    results stay in input order); ``progress`` shows a tqdm bar over batches. ``assistant_model=draft`` (see
    :func:`draft_kwargs`) decodes speculatively, one prompt at a time (transformers' assisted generation takes
    batches of 1).
    """
    import torch

    kw = generation_kwargs(tokenizer, **gen)
    if kw.get("assistant_model") is not None:
        check_draft(model, kw["assistant_model"])
        batch_size = 1
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
    if kw.get("assistant_model") is not None:
        check_draft(model, kw["assistant_model"])
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


# --------------------------------------------------------------------------- speculative decoding, measured
@dataclass
class Speculation:
    """One speculative generation: the text and what it cost. ``target_calls`` / ``draft_calls`` are forward
    passes; every target pass verifies a round of drafted tokens and adds one token of its own."""

    text: str
    new_tokens: int
    target_calls: int
    draft_calls: int
    seconds: float

    @property
    def accepted(self) -> int:
        """Drafted tokens the target kept (each target pass contributes one token beyond them)."""
        return max(0, self.new_tokens - self.target_calls)

    @property
    def acceptance_rate(self) -> float | None:
        """Accepted / drafted tokens (``None`` without a draft). Approximate: the last round may stop early."""
        return min(1.0, self.accepted / self.draft_calls) if self.draft_calls else None

    @property
    def tokens_per_second(self) -> float:
        return self.new_tokens / self.seconds if self.seconds else 0.0


def _count_calls(model) -> tuple[list[int], object]:
    """A forward hook counting ``model``'s forward passes; returns ``(counter, handle)``."""
    counter = [0]

    def hook(module, args, output):
        counter[0] += 1

    return counter, model.register_forward_hook(hook)


def speculative_generate(model, tokenizer, prompt: str, draft_model=None, draft_k: int | None = None, *,
                         add_special_tokens: bool = True, stop: list[str] | None = None, **gen) -> Speculation:
    """Generate for one ``prompt`` with ``draft_model`` drafting (``None``: the target alone, for comparison);
    returns a :class:`Speculation` (text cut at ``stop``, new tokens, forward passes of each model, seconds).

    Under greedy decoding (``temperature=0``) the text is exactly the target's own: the target verifies every
    drafted token and keeps only those it would have chosen. A draft with another vocabulary is refused first."""
    import torch

    extra = draft_kwargs(draft_model, draft_k) if draft_model is not None else {}
    kw = generation_kwargs(tokenizer, **gen, **extra)
    if draft_model is not None:
        check_draft(model, draft_model)
    enc = tokenizer(prompt, return_tensors="pt", add_special_tokens=add_special_tokens).to(_device(model))
    target_count, h1 = _count_calls(model)
    draft_count, h2 = _count_calls(draft_model) if draft_model is not None else ([0], None)
    try:
        start = time.perf_counter()
        with torch.inference_mode():
            out = model.generate(**enc, **kw)
        seconds = time.perf_counter() - start
    finally:
        h1.remove()
        if h2 is not None:
            h2.remove()
    new = out[0, enc["input_ids"].shape[1]:]
    text = cut_at_stop(tokenizer.decode(new, skip_special_tokens=True), stop)
    return Speculation(text, int(new.shape[0]), target_count[0], draft_count[0], seconds)
