"""Step 10: an OpenAI-compatible API server for the course model (seed 002, 第9步 ``openai_api_server.py``).

``create_app(model, tokenizer, ...)`` builds and returns the FastAPI app (tests use it without a server);
``python -m helpers.api --base_model ... [--lora_model ...] [--port 19327]`` loads a model with
:func:`helpers.modeling.load_model` and runs it under uvicorn on 127.0.0.1.

Endpoints: ``GET /v1/models``, ``POST /v1/completions``, ``POST /v1/chat/completions`` (``stream`` as
server-sent events ending with ``data: [DONE]``), ``POST /v1/embeddings`` (masked mean-pooled last hidden
state, L2-normalized; ``encoding_format`` float or base64), ``GET /health`` (counters). Bad requests get
OpenAI-style error bodies ``{"error": {"message", "type", "param", "code"}}`` with a 4xx status.

The package, in reading order:

- :mod:`.protocol`: the request models (every per-field rule in the schema ``/openapi.json`` publishes), the
  ``openai`` package's response types, :class:`APIError`.
- :mod:`.engine`: ONE worker thread runs the choices in turn on :func:`helpers.generation.stream`; a client
  that disconnects cancels its generation; ``seed`` gives each of the n choices its own reproducible seed.
- :mod:`.serving`: request -> jobs (prompts, limits, seeds) and results -> JSON or SSE chunks.
- :mod:`.app`: :func:`create_app`, the routes on one screen (key check, OpenAI error bodies).
- :mod:`.launcher`: the CLI, :func:`start_server` / :class:`ServerProcess` for notebooks and tests, the seed's
  curl commands.
"""
from ..net import free_port
from .app import create_app
from .engine import Engine, Job, Result, Stats
from .launcher import DEFAULT_PORT, SEED_CURLS, ServerProcess, build_parser, main, run_curl, start_server
from .protocol import (MAX_N, APIError, ChatCompletionRequest, ChatMessage, CompletionRequest, EmbeddingRequest,
                       TextPart)
from .serving import DEFAULT_MAX_TOKENS, chat_prompt, message_text

__all__ = ["APIError", "ChatCompletionRequest", "ChatMessage", "CompletionRequest", "DEFAULT_MAX_TOKENS",
           "DEFAULT_PORT", "EmbeddingRequest", "Engine", "Job", "MAX_N", "Result", "SEED_CURLS", "ServerProcess",
           "Stats", "TextPart", "build_parser", "chat_prompt", "create_app", "free_port", "main", "message_text",
           "run_curl", "start_server"]
