"""Step 10: an OpenAI-compatible API server for the course model (seed 002, 第9步 ``openai_api_server.py``).

``create_app(model, tokenizer, ...)`` builds and returns the FastAPI app (tests use it without a server);
``python -m helpers.api --base_model ... [--lora_model ...] [--port 19327]`` loads a model with
:func:`helpers.modeling.load_model` and runs it under uvicorn on 127.0.0.1.

Endpoints: ``GET /v1/models``, ``POST /v1/completions``, ``POST /v1/chat/completions`` (``stream`` as
server-sent events ending with ``data: [DONE]``), ``POST /v1/embeddings`` (masked mean-pooled last hidden
state, L2-normalized; ``encoding_format`` float or base64), ``GET /health`` (counters). Bad requests get
OpenAI-style error bodies ``{"error": {"message", "type", "param", "code"}}`` with a 4xx status.

Generation runs on ONE worker thread (a FIFO queue): the model is never used by two requests at once, every
client is answered in turn, and a streaming client that disconnects cancels its own generation.
"""
from __future__ import annotations

import argparse
import asyncio
import base64
import json
import secrets
import sys
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from fastapi import Request  # module level: route annotations are resolved from module globals
from pydantic import BaseModel, ConfigDict, Field

from .catalog import repo_of, template_or_default
from .core import CourseError
from .generation import generation_kwargs, held_back
from .modeling import add_model_arguments, apply_model_arguments
from .prompts import get_family, render

DEFAULT_PORT = 19327
DEFAULT_MAX_TOKENS = 128  # the original server's default when a request gives no max_tokens
MAX_N = 8
ROLES = {"system", "developer", "user", "assistant"}


# --------------------------------------------------------------------------- request schemas
class _Strict(BaseModel):
    # strict: "max_tokens": "5" is a wrong type (400), not silently converted; extra fields are ignored
    model_config = ConfigDict(strict=True, extra="allow")


class ChatMessage(_Strict):
    role: str
    content: str | list[dict] | None = None
    message: str | None = None  # the seed's curl example sends "message" instead of "content"


class _Sampling(_Strict):
    model: str | None = None
    max_tokens: int | None = None
    max_completion_tokens: int | None = None
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, gt=0, le=1)
    top_k: int | None = Field(default=None, ge=0)
    repetition_penalty: float | None = Field(default=None, gt=0, le=10)
    n: int = Field(default=1, ge=1, le=MAX_N)
    stop: str | list[str] | None = None
    stream: bool = False
    stream_options: dict | None = None
    seed: int | None = None


class ChatCompletionRequest(_Sampling):
    messages: list[ChatMessage]


class CompletionRequest(_Sampling):
    prompt: str | list[str]


class EmbeddingRequest(_Strict):
    model: str | None = None
    input: str | list[str] | list[int] | list[list[int]]
    encoding_format: Literal["float", "base64"] = "float"


# --------------------------------------------------------------------------- errors
class APIError(Exception):
    """An OpenAI-style error: HTTP status, message, type, param, code."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None,
                 type: str = "invalid_request_error"):
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.type = status, message, param, code, type

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


def _error_response(err: APIError):
    from fastapi.responses import JSONResponse

    headers = {"WWW-Authenticate": "Bearer"} if err.status == 401 else None
    return JSONResponse(err.body(), status_code=err.status, headers=headers)


# --------------------------------------------------------------------------- prompts
def message_text(msg: ChatMessage, index: int) -> str:
    """The text of a chat message: ``content`` (string or text parts) or the seed's ``message`` field."""
    content = msg.content if msg.content is not None else msg.message
    if content is None:
        raise APIError(400, f"messages[{index}]: 'content' is required", f"messages.{index}.content")
    if isinstance(content, list):
        texts = []
        for part in content:
            if part.get("type") != "text" or not isinstance(part.get("text"), str):
                raise APIError(400, f"messages[{index}]: only text content parts are supported",
                               f"messages.{index}.content")
            texts.append(part["text"])
        content = "".join(texts)
    return content


def chat_prompt(messages: list[ChatMessage], template: str = "alpaca") -> str:
    """The prompt text for a conversation, rendered by :func:`helpers.prompts.render` with a chat family.

    ``alpaca`` (Chinese-Alpaca): one user message gives exactly :func:`helpers.prompts.build_prompt`;
    ``alpaca2`` (Chinese-Alpaca-2): ``<s>`` + the Llama-2 chat format with the system prompt. Any family of
    ``helpers.prompts.FAMILIES`` works; for a family without a system slot a system message is put in front
    of the first user message (so it is not lost). Bad conversations raise :class:`APIError` (400).
    """
    if not messages:
        raise APIError(400, "messages: must contain at least one message", "messages")
    msgs: list[dict] = []
    for i, msg in enumerate(messages):
        if msg.role not in ROLES:
            raise APIError(400, f"messages[{i}].role: unknown role {msg.role!r}; use one of system, user, assistant",
                           f"messages.{i}.role")
        text = message_text(msg, i)
        role = "system" if msg.role == "developer" else msg.role
        if role == "system" and msgs:
            raise APIError(400, f"messages[{i}]: a system message must come first", f"messages.{i}.role")
        msgs.append({"role": role, "content": text})
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


# --------------------------------------------------------------------------- generation engine
@dataclass
class Result:
    """One finished generation: text, generated token count, finish_reason (stop/length/cancelled)."""

    text: str
    tokens: int
    finish_reason: str


@dataclass
class Stats:
    """Counters shown by ``GET /health``: HTTP generation requests, finished/cancelled generations (one per
    choice), errors, and the token count of the last generation."""

    requests: int = 0
    completed: int = 0
    cancelled: int = 0
    errors: int = 0
    last_tokens: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add(self, **kw):
        with self.lock:
            for k, v in kw.items():
                setattr(self, k, getattr(self, k) + v if k != "last_tokens" else v)

    def as_dict(self) -> dict:
        return {k: getattr(self, k) for k in ("requests", "completed", "cancelled", "errors", "last_tokens")}


class Engine:
    """Runs generations and embeddings one at a time on a single worker thread.

    Written here rather than with :func:`helpers.generation.stream` because the API needs the generated
    token ids (``usage``) and why generation ended (``finish_reason``); sampling defaults still come from
    :func:`helpers.generation.generation_kwargs`.
    """

    def __init__(self, model, tokenizer, context_length: int | None = None):
        self.model, self.tokenizer = model, tokenizer
        cfg = getattr(model, "config", None)
        self.context_length = int(context_length or getattr(cfg, "max_position_embeddings", 2048))
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="course-generate")
        self.lock = threading.Lock()
        self.stats = Stats()
        self.device = next(model.parameters()).device
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.unk_token

    def encode(self, text: str) -> list[int]:
        """Token ids of a prompt; BOS is added unless the rendered template already starts with it."""
        bos = self.tokenizer.bos_token
        add = not (bos and text.startswith(bos))
        return self.tokenizer(text, add_special_tokens=add)["input_ids"]

    def run(self, ids: list[int], max_tokens: int, stop: list[str], cancel: threading.Event,
            on_text=None, seed: int | None = None, flush_interval: float = 0.02, **sampling) -> Result:
        """Generate up to ``max_tokens`` after ``ids``; returns a :class:`Result`.

        ``on_text(delta)`` receives the new text as it becomes safe to send (not a possible stop-string
        prefix, not half a character): the first piece at once, then at most every ``flush_interval``
        seconds, because waking the server's event loop for every token costs more than a tiny model's step.
        """
        import torch
        from transformers import StoppingCriteria, StoppingCriteriaList
        from transformers.generation.streamers import BaseStreamer

        tok = self.tokenizer
        kw = generation_kwargs(tok, max_new_tokens=max_tokens, **sampling)
        eos = kw.get("eos_token_id")
        eos_ids = set(eos if isinstance(eos, list) else [eos])
        state = {"ids": [], "sent": 0, "text": "", "stopped": False, "eos": False, "prompt_seen": False,
                 "flushed": 0.0}
        halt = threading.Event()  # this generation hit a stop string (``cancel`` is the client's)

        def text_of(token_ids):
            return tok.decode([t for t in token_ids if t not in eos_ids], skip_special_tokens=True)

        class Collector(BaseStreamer):
            def put(self, value):
                if not state["prompt_seen"]:  # generate() first passes the prompt
                    state["prompt_seen"] = True
                    return
                for t in value.reshape(-1).tolist():
                    state["ids"].append(t)
                    state["eos"] = state["eos"] or t in eos_ids
                if not (stop or on_text):
                    return
                now = time.perf_counter()
                if not stop and state["sent"] and now - state["flushed"] < flush_interval and not state["eos"]:
                    return  # nothing to check, and the last piece went out a moment ago
                text = text_of(state["ids"])
                cut = min((text.find(s) for s in stop if s in text), default=-1)
                if cut >= 0:
                    text, state["stopped"] = text[:cut], True
                    halt.set()
                state["text"] = text
                if on_text is None:
                    return
                safe = len(text) if state["stopped"] else len(text) - held_back(text, stop)
                if text.endswith("\ufffd") and not state["stopped"]:
                    safe = min(safe, len(text) - 1)  # half of a multi-byte character
                due = not state["sent"] or state["stopped"] or now - state["flushed"] >= flush_interval
                if safe > state["sent"] and due:
                    on_text(text[state["sent"]:safe])
                    state["sent"], state["flushed"] = safe, now

            def end(self):
                pass

        class Cancelled(StoppingCriteria):
            def __call__(self, input_ids, scores, **kwargs):
                done = cancel.is_set() or halt.is_set()
                return torch.full((input_ids.shape[0],), done, dtype=torch.bool, device=input_ids.device)

        # without stop strings or streaming, plain generate() is all we need (no per-token Python work)
        hooks = dict(streamer=Collector(), stopping_criteria=StoppingCriteriaList([Cancelled()])) \
            if (stop or on_text) else {}
        with self.lock:
            if cancel.is_set():
                self.stats.add(cancelled=1)
                return Result("", 0, "cancelled")
            if seed is not None:
                torch.manual_seed(seed)
            input_ids = torch.tensor([ids], device=self.device)
            with torch.inference_mode():
                out = self.model.generate(input_ids=input_ids, attention_mask=torch.ones_like(input_ids), **hooks, **kw)
            if not hooks:
                new = out[0, input_ids.shape[1]:].tolist()
                if any(t in eos_ids for t in new):  # a batch of one never pads, but cut at EOS to be safe
                    new = new[:next(i for i, t in enumerate(new) if t in eos_ids) + 1]
                state["ids"] = new
                state["eos"] = any(t in eos_ids for t in new)
        text = state["text"] if state["stopped"] else text_of(state["ids"])
        if not state["stopped"] and on_text is not None and len(text) > state["sent"]:
            on_text(text[state["sent"]:])  # whatever was held back or not flushed yet
        if state["stopped"] or state["eos"]:
            reason = "stop"
        elif len(state["ids"]) >= max_tokens:
            reason = "length"
        else:
            reason = "cancelled"
        self.stats.add(completed=1 if reason != "cancelled" else 0, cancelled=1 if reason == "cancelled" else 0,
                       last_tokens=len(state["ids"]))
        return Result(text, len(state["ids"]), reason)

    def embed(self, batch: list[list[int]]) -> list[list[float]]:
        """Masked mean of the last hidden state for each token list, L2-normalized."""
        import torch

        pad = self.tokenizer.pad_token_id or 0
        width = max(len(x) for x in batch)
        ids = torch.tensor([x + [pad] * (width - len(x)) for x in batch], device=self.device)
        mask = torch.tensor([[1] * len(x) + [0] * (width - len(x)) for x in batch], device=self.device)
        with self.lock, torch.inference_mode():
            out = self.model(input_ids=ids, attention_mask=mask, output_hidden_states=True)
        hidden = out.hidden_states[-1].float()
        m = mask.unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * m).sum(1) / m.sum(1).clamp(min=1)
        return torch.nn.functional.normalize(pooled, p=2, dim=-1).cpu().tolist()


# --------------------------------------------------------------------------- request -> jobs
@dataclass
class Job:
    ids: list[int]
    max_tokens: int
    stop: list[str]
    sampling: dict


def _stops(stop) -> list[str]:
    stops = [stop] if isinstance(stop, str) else list(stop or [])
    if len(stops) > 4:
        raise APIError(400, "stop: at most 4 stop sequences", "stop")
    return [s for s in stops if s]


def _max_tokens(req: _Sampling, prompt_tokens: int, ctx: int) -> int:
    room = ctx - prompt_tokens
    if room < 1:
        raise APIError(400, f"the prompt has {prompt_tokens} tokens but the model's context is {ctx} tokens; "
                            "shorten the prompt", "messages" if isinstance(req, ChatCompletionRequest) else "prompt",
                       "context_length_exceeded")
    wanted = req.max_completion_tokens if req.max_tokens is None else req.max_tokens
    if wanted is None:
        return min(DEFAULT_MAX_TOKENS, room)
    if wanted < 1 or wanted > ctx:
        raise APIError(400, f"max_tokens: must be between 1 and the context length {ctx}, got {wanted}", "max_tokens")
    if wanted > room:
        raise APIError(400, f"this model's context is {ctx} tokens; the prompt has {prompt_tokens} and max_tokens asks "
                            f"for {wanted} more. Lower max_tokens or shorten the prompt", "max_tokens",
                       "context_length_exceeded")
    return wanted


def _jobs(engine: Engine, req: _Sampling, prompts: list[str]) -> list[Job]:
    sampling = {k: getattr(req, k) for k in ("temperature", "top_p", "top_k", "repetition_penalty")}
    stop = _stops(req.stop)
    jobs = []
    for p in prompts:
        ids = engine.encode(p)
        mt = _max_tokens(req, len(ids), engine.context_length)
        jobs += [Job(ids, mt, stop, sampling) for _ in range(req.n)]
    return jobs


# --------------------------------------------------------------------------- the app
def create_app(model, tokenizer, model_name: str = "chinese-alpaca", api_key: str | None = None,
               template: str = "alpaca", completion_template: bool = True, context_length: int | None = None):
    """Returns the FastAPI app serving ``model`` with OpenAI's API (no server started).

    ``template``: chat family for prompts (``alpaca`` = Chinese-Alpaca, ``alpaca2`` = Chinese-Alpaca-2, or any
    family name of :mod:`helpers.prompts`).
    ``completion_template``: as the original server, wrap a completion prompt in the template too.
    ``api_key``: when set, every ``/v1`` request needs ``Authorization: Bearer <api_key>``.
    """
    from fastapi import FastAPI
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import StreamingResponse
    from starlette.exceptions import HTTPException as StarletteHTTPException

    template = get_family(template).name  # CourseError naming the known families if unknown
    engine = Engine(model, tokenizer, context_length)
    app = FastAPI(title="Chinese-LLaMA-Alpaca course API (OpenAI-compatible)", version="1.0")
    app.state.engine = engine
    created = int(time.time())

    @app.exception_handler(APIError)
    async def _api_error(request, exc: APIError):
        return _error_response(exc)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request, exc: RequestValidationError):
        err = exc.errors()[0] if exc.errors() else {}
        if err.get("type") == "json_invalid":
            return _error_response(APIError(400, f"invalid JSON body: {err.get('ctx', {}).get('error', err.get('msg'))}"))
        loc = [str(x) for x in err.get("loc", []) if x != "body"]
        # a union type reports its member types in loc (e.g. "str"); keep only field names and indexes
        loc = [x for x in loc if x.isdigit() or x in _FIELD_NAMES]
        param = ".".join(loc) or None
        msg = err.get("msg", "invalid request")
        if err.get("type") == "missing":
            msg = "field required"
        return _error_response(APIError(400, f"{param or 'body'}: {msg}", param))

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request, exc: StarletteHTTPException):
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code)
        return _error_response(APIError(exc.status_code, f"{request.method} {request.url.path}: {exc.detail}",
                                        None, code))

    @app.exception_handler(Exception)
    async def _internal_error(request, exc: Exception):
        engine.stats.add(errors=1)
        return _error_response(APIError(500, f"internal error: {type(exc).__name__}: {exc}", type="server_error"))

    @app.middleware("http")
    async def _auth(request: Request, call_next):
        if api_key and request.url.path.startswith("/v1"):
            given = request.headers.get("authorization", "")
            token = given[7:] if given.lower().startswith("bearer ") else ""
            if not secrets.compare_digest(token.encode(), api_key.encode()):
                return _error_response(APIError(401, "invalid API key: send 'Authorization: Bearer <key>' with the "
                                                     "key the server was started with (--api_key)", None, "invalid_api_key"))
        return await call_next(request)

    def _model_card() -> dict:
        return {"id": model_name, "object": "model", "created": created, "owned_by": "hands-on-chinese-llama-alpaca"}

    @app.get("/v1/models")
    async def list_models():
        return {"object": "list", "data": [_model_card()]}

    @app.get("/health")
    async def health():
        return {"status": "ok", "model": model_name, "context_length": engine.context_length,
                **engine.stats.as_dict()}

    async def _run_all(jobs: list[Job], req: _Sampling) -> list[Result]:
        loop = asyncio.get_running_loop()
        cancel = threading.Event()
        engine.stats.add(requests=1)
        try:
            results = []
            for j in jobs:
                results.append(await loop.run_in_executor(engine.executor, lambda j=j: engine.run(
                    j.ids, j.max_tokens, j.stop, cancel, seed=req.seed, **j.sampling)))
            return results
        finally:
            cancel.set()

    def _usage(jobs: list[Job], results: list[Result], n: int) -> dict:
        prompt = sum(len(j.ids) for j in jobs[::n])
        completion = sum(r.tokens for r in results)
        return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}

    async def _sse(jobs: list[Job], req: _Sampling, request: Request, chunk) -> Any:
        """Yield SSE lines: ``chunk(index, delta_text|None, finish_reason|None)`` objects, then ``[DONE]``."""
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue = asyncio.Queue()
        cancel = threading.Event()
        engine.stats.add(requests=1)

        def put(*item):
            loop.call_soon_threadsafe(queue.put_nowait, item)

        def work():
            try:
                for i, j in enumerate(jobs):
                    res = engine.run(j.ids, j.max_tokens, j.stop, cancel, seed=req.seed,
                                     on_text=lambda d, i=i: put("delta", i, d), **j.sampling)
                    put("finish", i, res)
            except Exception as e:  # reported to the client as an error event
                engine.stats.add(errors=1)
                put("error", None, e)
            finally:
                put("end", None, None)

        engine.executor.submit(work)
        results: list[Result] = []
        try:
            for i in range(len(jobs)):  # one opening chunk per choice (prompts × n)
                yield f"data: {json.dumps(chunk(i, None, None, role=True), ensure_ascii=False)}\n\n"
            finished = False
            while not finished:
                try:
                    items = [await asyncio.wait_for(queue.get(), timeout=0.5)]
                except asyncio.TimeoutError:
                    if await request.is_disconnected():
                        return
                    continue
                while not queue.empty():  # a slow reader gets what queued up meanwhile in fewer events
                    items.append(queue.get_nowait())
                merged: list = []
                for item in items:
                    if merged and item[0] == "delta" and merged[-1][0] == "delta" and merged[-1][1] == item[1]:
                        merged[-1] = ("delta", item[1], merged[-1][2] + item[2])
                    else:
                        merged.append(item)
                for kind, i, payload in merged:
                    if kind == "delta":
                        yield f"data: {json.dumps(chunk(i, payload, None), ensure_ascii=False)}\n\n"
                    elif kind == "finish":
                        results.append(payload)
                        reason = "length" if payload.finish_reason == "cancelled" else payload.finish_reason
                        yield f"data: {json.dumps(chunk(i, None, reason), ensure_ascii=False)}\n\n"
                    elif kind == "error":
                        yield f"data: {json.dumps(APIError(500, str(payload), type='server_error').body())}\n\n"
                    else:
                        finished = True
                if not finished and await request.is_disconnected():
                    return
            if (req.stream_options or {}).get("include_usage"):
                yield f"data: {json.dumps(chunk(None, None, None, usage=_usage(jobs, results, req.n)))}\n\n"
            yield "data: [DONE]\n\n"
        finally:
            cancel.set()  # a client that went away stops its generation

    def _streaming(gen):
        return StreamingResponse(gen, media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    @app.post("/v1/chat/completions")
    async def chat_completions(req: ChatCompletionRequest, request: Request):
        prompt = chat_prompt(req.messages, template)
        jobs = _jobs(engine, req, [prompt])
        cid, now = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())
        if req.stream:
            def chunk(i, text, reason, role=False, usage=None):
                out = {"id": cid, "object": "chat.completion.chunk", "created": now, "model": model_name}
                if usage is not None:
                    return {**out, "choices": [], "usage": usage}
                delta = {"role": "assistant", "content": ""} if role else ({"content": text} if text else {})
                return {**out, "choices": [{"index": i, "delta": delta, "logprobs": None, "finish_reason": reason}]}
            return _streaming(_sse(jobs, req, request, chunk))
        results = await _run_all(jobs, req)
        return {"id": cid, "object": "chat.completion", "created": now, "model": model_name,
                "choices": [{"index": i, "message": {"role": "assistant", "content": r.text}, "logprobs": None,
                             "finish_reason": r.finish_reason} for i, r in enumerate(results)],
                "usage": _usage(jobs, results, req.n)}

    @app.post("/v1/completions")
    async def completions(req: CompletionRequest, request: Request):
        prompts = [req.prompt] if isinstance(req.prompt, str) else list(req.prompt)
        if not prompts:
            raise APIError(400, "prompt: must not be an empty list", "prompt")
        if completion_template:
            prompts = [render(template, [{"role": "user", "content": p}]) for p in prompts]
        jobs = _jobs(engine, req, prompts)
        cid, now = f"cmpl-{uuid.uuid4().hex}", int(time.time())
        if req.stream:
            def chunk(i, text, reason, role=False, usage=None):
                out = {"id": cid, "object": "text_completion", "created": now, "model": model_name}
                if usage is not None:
                    return {**out, "choices": [], "usage": usage}
                return {**out, "choices": [{"index": i, "text": text or "", "logprobs": None, "finish_reason": reason}]}
            return _streaming(_sse(jobs, req, request, chunk))
        results = await _run_all(jobs, req)
        return {"id": cid, "object": "text_completion", "created": now, "model": model_name,
                "choices": [{"index": i, "text": r.text, "logprobs": None, "finish_reason": r.finish_reason}
                            for i, r in enumerate(results)],
                "usage": _usage(jobs, results, req.n)}

    @app.post("/v1/embeddings")
    async def embeddings(req: EmbeddingRequest):
        raw = req.input
        if isinstance(raw, str):
            batch = [engine.encode(raw)]
        elif not raw:
            raise APIError(400, "input: must not be empty", "input")
        elif all(isinstance(x, str) for x in raw):
            batch = [engine.encode(x) for x in raw]
        elif all(isinstance(x, int) for x in raw):
            batch = [list(raw)]
        else:
            batch = [list(x) for x in raw]
        vocab = len(tokenizer)
        for k, ids in enumerate(batch):
            if not ids or len(ids) > engine.context_length:
                raise APIError(400, f"input[{k}]: {len(ids)} tokens; must be 1..{engine.context_length}", "input",
                               "context_length_exceeded" if ids else None)
            if any(t < 0 or t >= vocab for t in ids):
                raise APIError(400, f"input[{k}]: token ids must be in 0..{vocab - 1}", "input")
        loop = asyncio.get_running_loop()
        vectors = await loop.run_in_executor(engine.executor, engine.embed, batch)

        def encode(v):
            if req.encoding_format == "base64":
                import numpy as np

                return base64.b64encode(np.asarray(v, dtype="<f4").tobytes()).decode("ascii")
            return v

        n_tokens = sum(len(x) for x in batch)
        return {"object": "list", "model": model_name,
                "data": [{"object": "embedding", "index": i, "embedding": encode(v)} for i, v in enumerate(vectors)],
                "usage": {"prompt_tokens": n_tokens, "total_tokens": n_tokens}}

    return app


_FIELD_NAMES = (set(ChatCompletionRequest.model_fields) | set(CompletionRequest.model_fields)
                | set(EmbeddingRequest.model_fields) | set(ChatMessage.model_fields))


# --------------------------------------------------------------------------- launcher
def free_port() -> int:
    """A free TCP port on 127.0.0.1."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServerProcess:
    """``python -m helpers.api ...`` running as a subprocess (notebooks, tests, benchmarks).

    ``url`` is the base URL (``http://127.0.0.1:PORT``), ``v1`` the OpenAI ``base_url``; ``stop()`` ends it
    (also called at interpreter exit, so a notebook kernel that shuts down does not leave it running).
    Usable as a context manager.
    """

    def __init__(self, args: list[str], port: int, timeout: float = 180.0, env: dict | None = None):
        import atexit
        import os
        import subprocess
        import tempfile

        import httpx

        from .core import REPO_ROOT

        self.port, self.url, self.v1 = port, f"http://127.0.0.1:{port}", f"http://127.0.0.1:{port}/v1"
        self.log = tempfile.NamedTemporaryFile("w+", encoding="utf-8", prefix="course-api-", suffix=".log",
                                               delete=False)
        self._final_output: str | None = None
        full_env = {**os.environ, "PYTHONPATH": str(REPO_ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""),
                    **(env or {})}
        self.proc = subprocess.Popen([sys.executable, "-m", "helpers.api", *args, "--port", str(port)],
                                     cwd=REPO_ROOT, env=full_env, stdout=self.log, stderr=subprocess.STDOUT)
        atexit.register(self.stop)
        deadline = time.time() + timeout
        try:
            while True:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"the API server exited with code {self.proc.returncode}:\n{self.output()}")
                try:
                    if httpx.get(f"{self.url}/health", timeout=2).status_code == 200:
                        return
                except httpx.HTTPError:
                    pass
                if time.time() > deadline:
                    raise RuntimeError(f"the API server did not answer within {timeout:.0f} s:\n{self.output()}")
                time.sleep(0.3)
        except BaseException:
            self.stop()
            raise

    def output(self) -> str:
        """What the server printed so far (everything, once it is stopped)."""
        if self._final_output is not None:
            return self._final_output
        return Path(self.log.name).read_text(encoding="utf-8", errors="replace")

    def stop(self) -> int:
        """Terminate the server (kill after 20 s) and remove its log file; returns its exit code."""
        import atexit
        import subprocess

        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self._final_output is None:
            self._final_output = self.output()
            self.log.close()
            Path(self.log.name).unlink(missing_ok=True)
        atexit.unregister(self.stop)
        return self.proc.returncode

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()


def start_server(base_model: str | Path, lora_model: str | Path | None = None, port: int | None = None,
                 api_key: str | None = None, extra: list[str] | None = None, timeout: float = 180.0,
                 env: dict | None = None, only_cpu: bool = True) -> ServerProcess:
    """Start ``python -m helpers.api`` on 127.0.0.1 (a free port unless given); returns when it answers."""
    args = ["--base_model", str(base_model)] + (["--only_cpu"] if only_cpu else [])
    if lora_model:
        args += ["--lora_model", str(lora_model)]
    if api_key:
        args += ["--api_key", api_key]
    return ServerProcess(args + list(extra or []), port or free_port(), timeout, env)


# The three test commands of seed 002 (第9步), verbatim.
SEED_CURLS = {
    "completions": """curl http://localhost:19327/v1/completions \\
  -H "Content-Type: application/json" \\
  -d '{
    "prompt": "告诉我中国的首都在哪里"
  }'""",
    "chat": """curl http://localhost:19327/v1/chat/completions \\
  -H "Content-Type: application/json" \\
  -d '{
    "messages": [
      {"role": "user","message": "给我讲一些有关杭州的故事吧"}
    ],
    "repetition_penalty": 1.0
  }'""",
    "embeddings": """curl http://localhost:19327/v1/embeddings \\
  -H "Content-Type: application/json" \\
  -d '{
    "input": "今天天气真不错"
  }'""",
}


def run_curl(command: str, base_url: str | None = None, timeout: float = 300.0) -> tuple[int, dict]:
    """Run a ``curl ...`` command line (e.g. from :data:`SEED_CURLS`) with the real ``curl`` binary.

    ``base_url`` replaces ``http://localhost:19327`` (the seed's address). Returns ``(HTTP status, JSON body)``.
    """
    import shlex
    import subprocess

    if base_url:
        command = command.replace("http://localhost:19327", base_url.rstrip("/"))
    argv = shlex.split(command.replace("\\\n", " "))
    out = subprocess.run(argv + ["-s", "-w", "\n%{http_code}"], capture_output=True, encoding="utf-8", timeout=timeout)
    body, _, status = out.stdout.rpartition("\n")
    return int(status or 0), json.loads(body) if body.strip() else {}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m helpers.api", description="OpenAI-compatible API server (seed 002 第9步)")
    add_model_arguments(p)
    p.add_argument("--port", type=int, default=DEFAULT_PORT)
    p.add_argument("--host", default="127.0.0.1", help="bind address (0.0.0.0 exposes the server: set --api_key)")
    p.add_argument("--api_key", default=None, help="require 'Authorization: Bearer <key>' on /v1 requests")
    p.add_argument("--model_name", default=None, help="name reported by /v1/models (default: folder name)")
    p.add_argument("--template", default=None,
                   help="chat family of helpers.prompts: alpaca (Chinese-Alpaca), alpaca2 (Chinese-Alpaca-2), ...; "
                        "default: the model's own (helpers.catalog), else alpaca")
    return p


def main(argv: list[str] | None = None) -> int:
    """Load the model and serve it with uvicorn until interrupted; returns the exit code."""
    args = build_parser().parse_args(argv)
    try:
        from .modeling import load_model

        options = apply_model_arguments(args)
        tok_path = args.tokenizer_path
        if tok_path and Path(tok_path).name == "tokenizer.model" and Path(tok_path).is_file() \
                and (Path(tok_path).parent / "tokenizer_config.json").is_file():
            tok_path = str(Path(tok_path).parent)  # the seed passes tokenizer.model: prefer the saved HF tokenizer
        model, tokenizer = load_model(args.base_model, args.lora_model, tok_path, **options)
        source = str(args.lora_model or args.base_model)
        name = args.model_name or Path(repo_of(source)).name or "chinese-alpaca"
        app = create_app(model, tokenizer, model_name=name, api_key=args.api_key,
                         template=template_or_default(source, args.template))
    except (CourseError, ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    import uvicorn

    if args.host not in ("127.0.0.1", "localhost", "::1") and not args.api_key:
        print(f"warning: listening on {args.host} without --api_key: anyone on the network can use the model",
              file=sys.stderr)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning", timeout_graceful_shutdown=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
