"""``create_app``: the routes of the OpenAI-compatible server, each handing its work to :mod:`.serving`."""
from __future__ import annotations

import secrets
import time

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..prompts import get_family, render
from . import serving
from .engine import Engine
from .protocol import (FIELD_NAMES, APIError, ChatCompletion, ChatCompletionRequest, Completion, CompletionRequest,
                       EmbeddingRequest, EmbeddingResponse, ErrorResponse, Health, Model, ModelList)

OWNER = "hands-on-chinese-llama-alpaca"
ERRORS = {code: {"model": ErrorResponse} for code in (400, 401)}
SSE = {200: {"content": {"text/event-stream": {}}, "description": 'JSON, or with "stream": true server-sent '
                                                                  "chunks of the same shape ending with [DONE]"}}


def create_app(model, tokenizer, model_name: str = "chinese-alpaca", api_key: str | None = None,
               template: str = "alpaca", completion_template: bool = True,
               context_length: int | None = None) -> FastAPI:
    """Returns the FastAPI app serving ``model`` with OpenAI's API (no server started).

    ``template``: chat family for prompts (``alpaca`` = Chinese-Alpaca, ``alpaca2`` = Chinese-Alpaca-2, or any
    family name of :mod:`helpers.prompts`). ``completion_template``: as the original server, wrap a completion
    prompt in the template too. ``api_key``: when set, every ``/v1`` request needs ``Authorization: Bearer <key>``.
    """
    template = get_family(template).name  # CourseError naming the known families if unknown
    engine = Engine(model, tokenizer, context_length)
    app = FastAPI(title="Chinese-LLaMA-Alpaca course API (OpenAI-compatible)", version="1.0")
    app.state.engine = engine
    add_error_handlers(app, engine)
    v1 = APIRouter(prefix="/v1", dependencies=[Depends(bearer_key(api_key))] if api_key else [], responses=ERRORS)
    card = Model(id=model_name, object="model", created=int(time.time()), owned_by=OWNER)

    @app.get("/health", response_model=Health)
    async def health():
        """Generation counters; needs no key."""
        return Health(model=model_name, context_length=engine.context_length, **engine.stats.as_dict())

    @v1.get("/models", response_model=ModelList, response_model_exclude_unset=True)
    async def list_models():
        """The one model this server serves."""
        return ModelList(object="list", data=[card])

    @v1.post("/chat/completions", response_model=ChatCompletion, responses=SSE, response_model_exclude_unset=True)
    async def chat_completions(req: ChatCompletionRequest, request: Request):
        """A conversation answered in the model's chat template."""
        prompt = serving.chat_prompt(req.messages, template)
        return await serving.answer(engine, req, [prompt], serving.ChatShape(model_name), request)

    @v1.post("/completions", response_model=Completion, responses=SSE, response_model_exclude_unset=True)
    async def completions(req: CompletionRequest, request: Request):
        """Text continued (by default wrapped in the chat template, as the original server did)."""
        prompts = [req.prompt] if isinstance(req.prompt, str) else req.prompt
        if completion_template:  # as the original server: the prompt is the user's message
            prompts = [render(template, [{"role": "user", "content": p}]) for p in prompts]
        return await serving.answer(engine, req, prompts, serving.TextShape(model_name), request)

    @v1.post("/embeddings", response_model=EmbeddingResponse, response_model_exclude_unset=True)
    async def embeddings(req: EmbeddingRequest):
        """Mean-pooled last hidden states, L2-normalized."""
        return await serving.embeddings(engine, req, model_name)

    app.include_router(v1)
    return app


def bearer_key(api_key: str):
    """Returns the dependency that lets a request through only with ``Authorization: Bearer <api_key>``."""
    scheme = HTTPBearer(auto_error=False, description="the key the server was started with (--api_key)")

    async def check(credentials: HTTPAuthorizationCredentials | None = Depends(scheme)) -> None:
        given = credentials.credentials if credentials else ""
        if not secrets.compare_digest(given.encode(), api_key.encode()):
            raise APIError(401, "invalid API key: send 'Authorization: Bearer <key>' with the key the server was "
                                "started with (--api_key)", None, "invalid_api_key")
    return check


def error_response(err: APIError) -> JSONResponse:
    """Returns OpenAI's error body with the error's status."""
    headers = {"WWW-Authenticate": "Bearer"} if err.status == 401 else None
    return JSONResponse(err.body(), status_code=err.status, headers=headers)


def validation_error(exc: RequestValidationError) -> APIError:
    """Returns the 400 for a request the models refuse: ``param`` names the field (``messages.0.role``)."""
    # a union reports one error per member: prefer a broken rule (too_long, greater_than) over "wrong type"
    errors = sorted(exc.errors(), key=lambda e: e["type"].endswith("_type") or e["type"] == "none_required")
    err = errors[0] if errors else {}
    if err.get("type") == "json_invalid":
        return APIError(400, f"invalid JSON body: {err.get('ctx', {}).get('error', err.get('msg'))}")
    # loc also names union members ("str", "list[str]"): keep field names and indexes
    param = ".".join(str(x) for x in err.get("loc", []) if x != "body" and (str(x).isdigit() or x in FIELD_NAMES))
    msg = "field required" if err.get("type") == "missing" else err.get("msg", "invalid request")
    return APIError(400, f"{param or 'body'}: {msg}", param or None)


def add_error_handlers(app: FastAPI, engine: Engine) -> None:
    """Answers every error with OpenAI's body: bad input 400 (401 bad key, 404/405 bad path or method), and 500
    only for a fault of the server itself (counted in ``/health``)."""

    @app.exception_handler(APIError)
    async def _api_error(request, exc: APIError):
        return error_response(exc)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request, exc: RequestValidationError):
        return error_response(validation_error(exc))

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request, exc: StarletteHTTPException):
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code)
        return error_response(APIError(exc.status_code, f"{request.method} {request.url.path}: {exc.detail}",
                                       None, code))

    @app.exception_handler(Exception)
    async def _internal(request, exc: Exception):
        engine.stats.add(errors=1)
        return error_response(APIError(500, f"internal error: {type(exc).__name__}: {exc}", type="server_error"))
