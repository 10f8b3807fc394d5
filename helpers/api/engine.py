"""The API server's engine: one worker thread runs the jobs in turn; cancellation; per-choice seeds.

Text comes from :func:`helpers.generation.stream` (stop strings are held back there). Two small logits
processors add what the API needs on top of it: OpenAI's presence/frequency penalties, and a step counter that
gives ``usage`` and ``finish_reason``.
"""
from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from ..core import CourseError
from ..generation import cut_at_stop, generation_kwargs, stream


# waking the server's event loop for every token costs more than a step of a small model: a streaming client
# gets the first piece at once, then what came meanwhile at most this often
FLUSH_SECONDS = 0.02


@dataclass(frozen=True)
class Job:
    """One choice to generate.

    ``ids``: the prompt's token ids (for ``usage`` and the context check); ``bos``: whether the tokenizer adds
    BOS to ``prompt`` (not when the rendered template starts with it); ``sampling``: ``generate()`` arguments
    (temperature, top_p, top_k, repetition_penalty, sequence_bias); ``penalties``: OpenAI's (presence, frequency).
    """

    prompt: str
    ids: tuple[int, ...]
    bos: bool
    max_tokens: int
    stop: tuple[str, ...] = ()
    sampling: dict = field(default_factory=dict)
    penalties: tuple[float, float] = (0.0, 0.0)
    seed: int | None = None


@dataclass(frozen=True)
class Result:
    """A finished choice: its text, the tokens generated, OpenAI's finish_reason ("stop" or "length"), and
    whether it ended because its client went away."""

    text: str
    tokens: int
    finish_reason: str
    cancelled: bool = False


@dataclass
class Stats:
    """Counters shown by ``GET /health``: HTTP generation requests, finished and cancelled choices, errors, and
    the tokens of the last choice."""

    requests: int = 0
    completed: int = 0
    cancelled: int = 0
    errors: int = 0
    last_tokens: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add(self, **counts: int) -> None:
        """Adds ``counts`` to the counters (``last_tokens`` is replaced)."""
        with self.lock:
            for k, v in counts.items():
                setattr(self, k, v if k == "last_tokens" else getattr(self, k) + v)

    def as_dict(self) -> dict:
        """Returns the counters."""
        return {k: getattr(self, k) for k in ("requests", "completed", "cancelled", "errors", "last_tokens")}


class Cancel(threading.Event):
    """A job's stop signal for :func:`helpers.generation.stream`: set by ``stream`` itself (stop string, end of
    generation) or through the request's signal ``parent`` (the client went away). Setting it leaves ``parent``
    alone, so the next choice of the same request still runs."""

    def __init__(self, parent: threading.Event):
        super().__init__()
        self.parent = parent

    def is_set(self) -> bool:
        """Returns whether this job or its request was stopped."""
        return super().is_set() or self.parent.is_set()


def choice_seeds(seed: int | None, count: int) -> list[int | None]:
    """Returns one seed per choice, derived from the request's ``seed`` by numpy's ``SeedSequence.spawn``:
    distinct for the n choices, the same for the same request (all ``None`` without a seed)."""
    if seed is None:
        return [None] * count
    import numpy as np

    children = np.random.SeedSequence(seed % 2**64).spawn(count)
    return [int(c.generate_state(1, np.uint64)[0]) for c in children]


class Penalties:
    """OpenAI's presence and frequency penalties (transformers has neither), as OpenAI documents them:
    ``logit[j] -= frequency * count[j] + presence * (count[j] > 0)``, ``count`` over the tokens generated so far.
    Returns the new scores."""

    def __init__(self, prompt_len: int, presence: float, frequency: float):
        self.prompt_len, self.presence, self.frequency = prompt_len, presence, frequency

    def __call__(self, input_ids, scores):
        new = input_ids[:, self.prompt_len:]
        counts = scores.new_zeros(scores.shape).scatter_add_(1, new, new.new_ones(new.shape, dtype=scores.dtype))
        return scores - self.frequency * counts - self.presence * (counts > 0).to(scores.dtype)


class StepCounter:
    """Counts generation steps (one per new token). ``stream`` reports neither token ids nor why generation
    ended, so generation is asked for ``max_tokens + 1`` steps and the last one is forced to EOS: it ends the
    generation without adding text, and ``new_ids`` then holds every real token. Returns the scores."""

    def __init__(self, prompt_len: int, max_tokens: int, eos_id: int):
        self.prompt_len, self.max_tokens, self.eos_id = prompt_len, max_tokens, eos_id
        self.calls = 0
        self.new_ids: list[int] = []

    def __call__(self, input_ids, scores):
        self.calls += 1
        if self.calls <= self.max_tokens:
            return scores
        self.new_ids = input_ids[0, self.prompt_len:].tolist()
        forced = scores.new_full(scores.shape, float("-inf"))
        forced[:, self.eos_id] = 0.0
        return forced

    @property
    def tokens(self) -> int:
        """Returns the tokens generated (the forced EOS not counted)."""
        return min(self.calls, self.max_tokens)


class Engine:
    """Runs generations and embeddings one at a time on a single worker thread: the model is never used by two
    requests at once, and requests are served in turn."""

    def __init__(self, model, tokenizer, context_length: int | None = None):
        self.model, self.tokenizer = model, tokenizer
        cfg = getattr(model, "config", None)
        self.context_length = int(context_length or getattr(cfg, "max_position_embeddings", 2048))
        if tokenizer.eos_token_id is None:
            raise CourseError("the tokenizer has no EOS token: the server could not tell where an answer ends; "
                              "pass the model's own tokenizer (--tokenizer_path)")
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.unk_token
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="course-generate")
        self.stats = Stats()
        self.device = next(model.parameters()).device

    def adds_bos(self, text: str) -> bool:
        """Returns whether BOS must be added to ``text`` (not when a rendered template starts with it)."""
        bos = self.tokenizer.bos_token
        return not (bos and text.startswith(bos))

    def encode(self, text: str) -> list[int]:
        """Returns the token ids of a prompt, BOS included once."""
        return self.tokenizer(text, add_special_tokens=self.adds_bos(text))["input_ids"]

    def generate(self, job: Job, cancel: threading.Event, on_text: Callable[[str], None] | None = None) -> Result:
        """Runs ``job`` on the calling thread (the worker); ``cancel`` is the request's signal. ``on_text(piece)``
        receives the text as it becomes safe to show: the first piece at once, then what came meanwhile at most
        every :data:`FLUSH_SECONDS`. Returns the :class:`Result`."""
        if cancel.is_set():
            return self._finished(Result("", 0, "length", cancelled=True))
        from transformers import LogitsProcessorList

        steps = StepCounter(len(job.ids), job.max_tokens, self.tokenizer.eos_token_id)
        processors = [Penalties(len(job.ids), *job.penalties)] if any(job.penalties) else []
        if job.seed is not None:
            import torch

            torch.manual_seed(job.seed)  # the one worker thread samples: the global generator is ours
        if on_text is None:  # nobody watches the text grow: plain generate, no streamer thread per token
            text = self._generate_plain(job, Cancel(cancel), [*processors, steps])
            return self._finished(Result(text, steps.tokens, self._reason(job, steps), cancelled=cancel.is_set()))
        pieces, sent, flushed = [], 0, 0.0
        for piece in stream(self.model, self.tokenizer, job.prompt, list(job.stop), Cancel(cancel),
                            add_special_tokens=job.bos, max_new_tokens=job.max_tokens + 1,
                            logits_processor=LogitsProcessorList([*processors, steps]), **job.sampling):
            pieces.append(piece)
            if on_text is not None and time.perf_counter() - flushed >= FLUSH_SECONDS:
                on_text("".join(pieces[sent:]))
                sent, flushed = len(pieces), time.perf_counter()
        if on_text is not None and sent < len(pieces):
            on_text("".join(pieces[sent:]))
        return self._finished(Result("".join(pieces), steps.tokens, self._reason(job, steps),
                                     cancelled=cancel.is_set()))

    def _reason(self, job: Job, steps: StepCounter) -> str:
        """Returns ``finish_reason``: ``stop`` when generation ended before ``max_tokens`` (EOS or a stop string) or
        the last allowed token completed a stop string, else ``length``."""
        if steps.calls <= job.max_tokens:
            return "stop"
        text = self.tokenizer.decode(steps.new_ids, skip_special_tokens=True)
        return "stop" if any(s in text for s in job.stop) else "length"

    def _generate_plain(self, job: Job, cancel: Cancel, processors: list) -> str:
        """The same generation as :func:`helpers.generation.stream` (same kwargs, processors, stop strings and
        cancellation, same random draws) in one ``model.generate`` call; returns the answer cut at a stop string."""
        import torch
        from transformers import LogitsProcessorList, StoppingCriteria, StoppingCriteriaList

        # a stop string completed by the newest token lies in the last 4 tokens per character (UTF-8 bytes)
        window = 4 * max(map(len, job.stop)) + 2 if job.stop else 0

        class _Stop(StoppingCriteria):  # a stop string in the newest tokens, or the request's cancel
            def __call__(self, input_ids, scores, **kwargs):
                if cancel.is_set():
                    return True
                tail = input_ids[0, max(n, input_ids.shape[1] - window):] if window else None
                return bool(window) and any(s in tok.decode(tail, skip_special_tokens=True) for s in job.stop)

        tok = self.tokenizer
        enc = tok(job.prompt, return_tensors="pt", add_special_tokens=job.bos).to(self.device)
        n = enc["input_ids"].shape[1]
        kw = generation_kwargs(tok, max_new_tokens=job.max_tokens + 1, **job.sampling)
        with torch.inference_mode():
            out = self.model.generate(**enc, **kw, logits_processor=LogitsProcessorList(processors),
                                      stopping_criteria=StoppingCriteriaList([_Stop()]))
        return cut_at_stop(tok.decode(out[0, n:], skip_special_tokens=True), list(job.stop))

    def _finished(self, result: Result) -> Result:
        """Counts ``result`` in the stats; returns it."""
        self.stats.add(cancelled=int(result.cancelled), completed=int(not result.cancelled),
                       last_tokens=result.tokens)
        return result

    async def run(self, jobs: list[Job], cancel: threading.Event) -> list[Result]:
        """Queues the jobs one after the other on the worker; returns their results."""
        loop = asyncio.get_running_loop()
        return [await loop.run_in_executor(self.executor, self.generate, job, cancel) for job in jobs]

    async def events(self, jobs: list[Job], cancel: threading.Event) -> AsyncIterator[tuple[int, str | Result]]:
        """Runs the jobs like :meth:`run`; yields ``(choice index, text piece)`` while a job generates and
        ``(choice index, Result)`` when it ends."""
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue = asyncio.Queue()
        for i, job in enumerate(jobs):
            def put(piece: str, i: int = i) -> None:
                loop.call_soon_threadsafe(queue.put_nowait, (i, piece))

            done = loop.run_in_executor(self.executor, self.generate, job, cancel, put)
            # the worker's pieces reach the loop before the future's result, so None comes after all of them
            done.add_done_callback(lambda _: queue.put_nowait(None))
            while (item := await queue.get()) is not None:
                yield item
            yield i, done.result()

    def embed(self, batch: list[list[int]]) -> list[list[float]]:
        """Returns, for each token list, the masked mean of the last hidden state, L2-normalized."""
        import torch

        pad = self.tokenizer.pad_token_id or 0
        width = max(len(x) for x in batch)
        ids = torch.tensor([x + [pad] * (width - len(x)) for x in batch], device=self.device)
        mask = torch.tensor([[1] * len(x) + [0] * (width - len(x)) for x in batch], device=self.device)
        with torch.inference_mode():
            out = self.model(input_ids=ids, attention_mask=mask, output_hidden_states=True)
        hidden = out.hidden_states[-1].float()
        m = mask.unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * m).sum(1) / m.sum(1).clamp(min=1)
        return torch.nn.functional.normalize(pooled, p=2, dim=-1).cpu().tolist()

    async def embeddings(self, batch: list[list[int]]) -> list[list[float]]:
        """Runs :meth:`embed` on the worker (in turn with the generations); returns the vectors."""
        return await asyncio.get_running_loop().run_in_executor(self.executor, self.embed, batch)
