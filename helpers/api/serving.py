"""From an OpenAI request to engine jobs, and from their results to OpenAI responses (JSON or SSE chunks)."""
from __future__ import annotations

import asyncio
import base64
import json
import threading
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import ClassVar

from fastapi import Request
from sse_starlette import EventSourceResponse

from ..core import CourseError
from ..prompts import get_family, render
from .engine import Engine, Job, Result, choice_seeds
from .protocol import (GREEDY_BELOW, APIError, ChatCompletion, ChatCompletionChunk, ChatCompletionRequest,
                       ChatMessage, Completion, CompletionChunk, CompletionUsage, EmbeddingData, EmbeddingRequest,
                       EmbeddingResponse, SamplingRequest)

DEFAULT_MAX_TOKENS = 128  # the original server's default when a request gives no max_tokens


# --------------------------------------------------------------------------- prompts
def message_text(msg: ChatMessage, index: int) -> str:
    """Returns the text of a chat message: ``content`` (a string or text parts) or the seed's ``message``."""
    content = msg.content if msg.content is not None else msg.message
    if content is None:
        raise APIError(400, f"messages[{index}]: 'content' is required", f"messages.{index}.content")
    return content if isinstance(content, str) else "".join(part.text for part in content)


def chat_prompt(messages: list[ChatMessage], template: str = "alpaca") -> str:
    """Returns the prompt text for a conversation, rendered by :func:`helpers.prompts.render`.

    ``alpaca`` (Chinese-Alpaca): one user message gives exactly :func:`helpers.prompts.build_prompt`;
    ``alpaca2`` (Chinese-Alpaca-2): ``<s>`` + the Llama-2 chat format with the system prompt. Any family of
    ``helpers.prompts.FAMILIES`` works; for a family without a system slot a system message is put in front
    of the first user message (so it is not lost). Bad conversations raise :class:`APIError` (400).
    """
    if not messages:
        raise APIError(400, "messages: must contain at least one message", "messages")
    msgs: list[dict] = []
    for i, msg in enumerate(messages):
        role = "system" if msg.role == "developer" else msg.role
        if role == "system" and msgs:
            raise APIError(400, f"messages[{i}]: a system message must come first", f"messages.{i}.role")
        msgs.append({"role": role, "content": message_text(msg, i)})
    if msgs[-1]["role"] != "user":
        raise APIError(400, "messages: the last message must come from the user", "messages")
    fam = get_family(template)
    if msgs[0]["role"] == "system" and not fam.has_system:
        # a family without a system slot (Chinese-Alpaca): the system text opens the first user turn
        system = msgs.pop(0)["content"]
        if msgs and msgs[0]["role"] == "user" and system.strip():
            msgs[0] = {"role": "user", "content": f"{system}\n\n{msgs[0]['content']}"}
    try:
        return render(fam, msgs)
    except CourseError as e:
        raise APIError(400, f"messages: {e}", "messages") from None


# --------------------------------------------------------------------------- request -> jobs
def _max_tokens(req: SamplingRequest, prompt_tokens: int, ctx: int) -> int:
    """Returns how many tokens a choice may generate (128 by default); 400 when the prompt leaves no room."""
    room = ctx - prompt_tokens
    where = "messages" if isinstance(req, ChatCompletionRequest) else "prompt"
    if room < 1:
        raise APIError(400, f"the prompt has {prompt_tokens} tokens but the model's context is {ctx} tokens; "
                            "shorten the prompt", where, "context_length_exceeded")
    wanted = req.max_completion_tokens if req.max_tokens is None else req.max_tokens
    if wanted is None:
        return min(DEFAULT_MAX_TOKENS, room)
    if wanted > room:
        raise APIError(400, f"this model's context is {ctx} tokens; the prompt has {prompt_tokens} and max_tokens asks "
                            f"for {wanted} more. Lower max_tokens or shorten the prompt", "max_tokens",
                       "context_length_exceeded")
    return wanted


def make_jobs(engine: Engine, req: SamplingRequest, prompts: list[str]) -> list[Job]:
    """Returns one :class:`Job` per choice: ``n`` per prompt, prompt by prompt, each with its own seed."""
    sampling = {k: getattr(req, k) for k in ("temperature", "top_p", "top_k", "repetition_penalty")}
    if sampling["temperature"] is not None and sampling["temperature"] < GREEDY_BELOW:
        sampling["temperature"] = 0.0  # greedy, as documented in the schema
    if req.logit_bias:
        vocab = len(engine.tokenizer)
        if any(int(t) >= vocab for t in req.logit_bias):
            raise APIError(400, f"logit_bias: token ids must be in 0..{vocab - 1}", "logit_bias")
        sampling["sequence_bias"] = {(int(t),): b for t, b in req.logit_bias.items()}  # transformers' own processor
    penalties = (req.presence_penalty or 0.0, req.frequency_penalty or 0.0)
    stop = tuple(s for s in ([req.stop] if isinstance(req.stop, str) else req.stop or []) if s)
    n = req.n or 1
    seeds = iter(choice_seeds(req.seed, n * len(prompts)))
    jobs = []
    for prompt in prompts:
        ids = tuple(engine.encode(prompt))
        limit = _max_tokens(req, len(ids), engine.context_length)
        jobs += [Job(prompt, ids, engine.adds_bos(prompt), limit, stop, sampling, penalties, next(seeds))
                 for _ in range(n)]
    return jobs


def usage(jobs: list[Job], results: list[Result], n: int) -> CompletionUsage:
    """Returns the usage of a request: each prompt counted once, every choice's tokens."""
    prompt = sum(len(j.ids) for j in jobs[::n])
    completion = sum(r.tokens for r in results)
    return CompletionUsage(prompt_tokens=prompt, completion_tokens=completion, total_tokens=prompt + completion)


# --------------------------------------------------------------------------- results -> responses
@dataclass
class Shape:
    """One endpoint's OpenAI objects: the whole answer (:meth:`response`) and its stream (:meth:`chunk`)."""

    prefix: ClassVar[str]
    objects: ClassVar[tuple[str, str]]  # the "object" of the answer and of a chunk
    types: ClassVar[tuple[type, type]]  # their openai types
    model: str
    id: str = ""
    created: int = field(default_factory=lambda: int(time.time()))

    def __post_init__(self):
        self.id = self.id or f"{self.prefix}-{uuid.uuid4().hex}"

    def response(self, results: list[Result], used: CompletionUsage):
        """Returns the whole answer."""
        return self._build(0, [self.choice(i, r) for i, r in enumerate(results)], used)

    def chunk(self, index: int, text: str | None = None, finish: str | None = None, first: bool = False,
              used: CompletionUsage | None = None):
        """Returns a chunk: the opening one of a choice, a text piece, its end, or (``used``) the usage."""
        return self._build(1, [] if used else [self.piece(index, text, finish, first)], used)

    def _build(self, which: int, choices: list[dict], used: CompletionUsage | None):
        """Returns the answer (``which`` 0) or a chunk (1) with these choices."""
        extra = {"usage": used} if used else {}
        return self.types[which](id=self.id, object=self.objects[which], created=self.created, model=self.model,
                                 choices=choices, **extra)


class ChatShape(Shape):
    """``chat.completion`` and its ``chat.completion.chunk`` stream (the first chunk of a choice names the role)."""

    prefix, objects, types = "chatcmpl", ("chat.completion", "chat.completion.chunk"), (ChatCompletion,
                                                                                         ChatCompletionChunk)

    def choice(self, index: int, r: Result) -> dict:
        """Returns one choice of the whole answer."""
        return {"index": index, "message": {"role": "assistant", "content": r.text}, "logprobs": None,
                "finish_reason": r.finish_reason}

    def piece(self, index: int, text: str | None, finish: str | None, first: bool) -> dict:
        """Returns one choice of a chunk."""
        delta = {"role": "assistant", "content": ""} if first else {"content": text} if text else {}
        return {"index": index, "delta": delta, "logprobs": None, "finish_reason": finish}


class TextShape(Shape):
    """``text_completion``, streamed as ``text_completion`` chunks too."""

    prefix, objects, types = "cmpl", ("text_completion", "text_completion"), (Completion, CompletionChunk)

    def choice(self, index: int, r: Result) -> dict:
        """Returns one choice of the whole answer."""
        return {"index": index, "text": r.text, "logprobs": None, "finish_reason": r.finish_reason}

    def piece(self, index: int, text: str | None, finish: str | None, first: bool) -> dict:
        """Returns one choice of a chunk."""
        return {"index": index, "text": text or "", "logprobs": None, "finish_reason": finish}


# --------------------------------------------------------------------------- running a request
async def _cancel_on_disconnect(request: Request, cancel: threading.Event) -> None:
    """Sets ``cancel`` when the client hangs up: the body is read already, so the next ASGI message is the
    disconnect (Starlette's ``is_disconnected()`` would have to be polled)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass
    cancel.set()


async def answer(engine: Engine, req: SamplingRequest, prompts: list[str], shape: Shape,
                 request: Request) -> EventSourceResponse | ChatCompletion | Completion:
    """Returns the response to a (chat) completion request: the whole answer, or an SSE stream when asked."""
    jobs = make_jobs(engine, req, prompts)
    engine.stats.add(requests=1)
    if req.stream:
        include_usage = bool(req.stream_options and req.stream_options.include_usage)
        return EventSourceResponse(_events(engine, jobs, req.n or 1, shape, include_usage), sep="\n")
    cancel = threading.Event()
    watch = asyncio.ensure_future(_cancel_on_disconnect(request, cancel))
    try:
        results = await engine.run(jobs, cancel)
    finally:
        watch.cancel()
        cancel.set()
    return shape.response(results, usage(jobs, results, req.n or 1))


async def _events(engine: Engine, jobs: list[Job], n: int, shape: Shape,
                  include_usage: bool) -> AsyncIterator[dict]:
    """Yields the SSE events: an opening chunk per choice, text deltas, finish chunks, usage, ``[DONE]``."""
    cancel = threading.Event()
    results: list[Result] = []
    try:
        for i in range(len(jobs)):
            yield {"data": shape.chunk(i, first=True).to_json(indent=None)}
        try:
            async for i, item in engine.events(jobs, cancel):
                if isinstance(item, Result):
                    results.append(item)
                    yield {"data": shape.chunk(i, finish=item.finish_reason).to_json(indent=None)}
                else:
                    yield {"data": shape.chunk(i, text=item).to_json(indent=None)}
        except Exception as e:  # reported to the client as an error event (the status line has gone out)
            engine.stats.add(errors=1)
            err = APIError(500, f"internal error: {type(e).__name__}: {e}", type="server_error")
            yield {"data": json.dumps(err.body(), ensure_ascii=False)}
            return
        if include_usage:
            yield {"data": shape.chunk(0, used=usage(jobs, results, n)).to_json(indent=None)}
        yield {"data": "[DONE]"}
    finally:
        cancel.set()  # a client that went away stops its generation


# --------------------------------------------------------------------------- embeddings
def token_lists(engine: Engine, req: EmbeddingRequest, vocab: int) -> list[list[int]]:
    """Returns the token ids of each input (texts are encoded); refuses inputs longer than the context or ids
    outside the vocabulary (400: the schema cannot know either)."""
    raw = req.input
    if isinstance(raw, str):
        batch = [engine.encode(raw)]
    elif all(isinstance(x, str) for x in raw):
        batch = [engine.encode(x) for x in raw]
    elif all(isinstance(x, int) for x in raw):
        batch = [list(raw)]
    else:
        batch = [list(x) for x in raw]
    for k, ids in enumerate(batch):
        if len(ids) > engine.context_length:
            raise APIError(400, f"input[{k}]: {len(ids)} tokens; must be 1..{engine.context_length}", "input",
                           "context_length_exceeded")
        if any(t >= vocab for t in ids):
            raise APIError(400, f"input[{k}]: token ids must be in 0..{vocab - 1}", "input")
    return batch


async def embeddings(engine: Engine, req: EmbeddingRequest, model: str) -> EmbeddingResponse:
    """Returns the embeddings response: one L2-normalized vector per input, floats or base64 float32."""
    batch = token_lists(engine, req, len(engine.tokenizer))
    vectors = await engine.embeddings(batch)
    if req.encoding_format == "base64":
        import numpy as np

        vectors = [base64.b64encode(np.asarray(v, dtype="<f4").tobytes()).decode("ascii") for v in vectors]
    tokens = sum(len(x) for x in batch)
    return EmbeddingResponse(object="list", model=model, usage={"prompt_tokens": tokens, "total_tokens": tokens},
                             data=[EmbeddingData(object="embedding", index=i, embedding=v)
                                   for i, v in enumerate(vectors)])
