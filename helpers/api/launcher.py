"""Starting the server: the CLI (``python -m helpers.api``), a subprocess handle for notebooks and tests, and
the seed's curl commands."""
from __future__ import annotations

import argparse
import atexit
import json
import os
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import uvicorn

from ..catalog import repo_of, template_or_default
from ..core import REPO_ROOT, CourseError, cli_main
from ..modeling import add_model_arguments, apply_model_arguments, load_model, ntk_context
from ..net import free_port
from ..prompts import get_family
from .app import create_app

DEFAULT_PORT = 19327
LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")


class ServerProcess:
    """``python -m helpers.api ...`` running as a subprocess (notebooks, tests, benchmarks).

    ``url`` is the base URL (``http://127.0.0.1:PORT``), ``v1`` the OpenAI ``base_url``; ``stop()`` ends it
    (also called at interpreter exit, so a notebook kernel that shuts down does not leave it running).
    Usable as a context manager.
    """

    name = "the API server"      # in messages
    ready_path = "/health"       # answers 200 once the model is loaded
    log_prefix = "course-api-"

    def command(self, args: list[str], port: int) -> list[str]:
        """Returns the command line that starts the server on 127.0.0.1:``port``."""
        return [sys.executable, "-m", "helpers.api", *args, "--port", str(port)]

    def __init__(self, args: list[str], port: int, timeout: float = 180.0, env: dict | None = None):
        self.port, self.url, self.v1 = port, f"http://127.0.0.1:{port}", f"http://127.0.0.1:{port}/v1"
        self.log = tempfile.NamedTemporaryFile("w+", encoding="utf-8", prefix=self.log_prefix, suffix=".log",
                                               delete=False)
        self._final_output: str | None = None
        full_env = {**os.environ, "PYTHONPATH": str(REPO_ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""),
                    **(env or {})}
        self.proc = subprocess.Popen(self.command(args, port), cwd=REPO_ROOT, env=full_env, stdout=self.log,
                                     stderr=subprocess.STDOUT)
        atexit.register(self.stop)
        try:
            self._wait_ready(timeout)
        except BaseException:
            self.stop()
            raise

    def _wait_ready(self, timeout: float) -> None:
        """Returns once ``ready_path`` answers; raises RuntimeError (with the server's output) if it never does."""
        deadline = time.time() + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with code {self.proc.returncode}:\n{self.output()}")
            try:
                if httpx.get(f"{self.url}{self.ready_path}", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            if time.time() > deadline:
                raise RuntimeError(f"{self.name} did not answer within {timeout:.0f} s:\n{self.output()}")
            time.sleep(0.3)

    def output(self) -> str:
        """Returns what the server printed so far (everything, once it is stopped)."""
        if self._final_output is not None:
            return self._final_output
        return Path(self.log.name).read_text(encoding="utf-8", errors="replace")

    def stop(self) -> int:
        """Terminates the server (kill after 20 s) and removes its log file; returns its exit code."""
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
    """Starts ``python -m helpers.api`` on 127.0.0.1 (a free port unless given); returns the
    :class:`ServerProcess` once it answers."""
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
    """Runs a ``curl ...`` command line (e.g. from :data:`SEED_CURLS`) with the real ``curl`` binary.

    ``base_url`` replaces ``http://localhost:19327`` (the seed's address). Returns ``(HTTP status, JSON body)``.
    """
    if base_url:
        command = command.replace("http://localhost:19327", base_url.rstrip("/"))
    argv = shlex.split(command.replace("\\\n", " "))
    out = subprocess.run(argv + ["-s", "-w", "\n%{http_code}"], capture_output=True, encoding="utf-8", timeout=timeout)
    body, _, status = out.stdout.rpartition("\n")
    return int(status or 0), json.loads(body) if body.strip() else {}


def build_parser() -> argparse.ArgumentParser:
    """Returns the parser of ``python -m helpers.api`` (the original openai_api_server.py flags)."""
    p = argparse.ArgumentParser(prog="python -m helpers.api",
                                description="OpenAI-compatible API server (seed 002 第9步)")
    add_model_arguments(p)
    p.add_argument("--port", type=int, default=DEFAULT_PORT)
    p.add_argument("--host", default="127.0.0.1", help="bind address (0.0.0.0 exposes the server: set --api_key)")
    p.add_argument("--api_key", default=None, help="require 'Authorization: Bearer <key>' on /v1 requests")
    p.add_argument("--model_name", default=None, help="name reported by /v1/models (default: folder name)")
    p.add_argument("--template", default=None,
                   help="chat family of helpers.prompts: alpaca (Chinese-Alpaca), alpaca2 (Chinese-Alpaca-2), ...; "
                        "default: the model's own (helpers.catalog), else alpaca")
    return p


def build_app_from_args(args: argparse.Namespace):
    """Loads the model the flags name; returns the app (``CourseError`` naming the flag on bad input)."""
    if args.template:
        get_family(args.template)  # an unknown family fails before the model loads
    options = apply_model_arguments(args)
    tok_path = args.tokenizer_path
    if tok_path and Path(tok_path).name == "tokenizer.model" and Path(tok_path).is_file() \
            and (Path(tok_path).parent / "tokenizer_config.json").is_file():
        tok_path = str(Path(tok_path).parent)  # the seed passes tokenizer.model: prefer the saved HF tokenizer
    try:
        model, tokenizer = load_model(args.base_model, args.lora_model, tok_path, **options)
    except CourseError:
        raise
    except (OSError, ValueError) as e:  # transformers' "not a folder / not a model" errors, with the flags named
        given = {"--base_model": args.base_model, "--lora_model": args.lora_model, "--tokenizer_path": tok_path}
        flags = " ".join(f"{k} {v}" for k, v in given.items() if v)
        raise CourseError(f"{flags}: cannot load the model ({e}); check the paths") from e
    source = str(args.lora_model or args.base_model)
    name = args.model_name or Path(repo_of(source)).name or "chinese-alpaca"
    # --alpha (NTK) lengthens the context the server accepts (helpers.modeling.ntk_context)
    context = ntk_context(model.config, options["alpha"]) if "alpha" in options else None
    return create_app(model, tokenizer, model_name=name, api_key=args.api_key,
                      template=template_or_default(source, args.template), context_length=context)


def _serve(args: argparse.Namespace) -> int:
    """Serves the app the flags describe until interrupted; returns 0."""
    app = build_app_from_args(args)
    if args.host not in LOCAL_HOSTS and not args.api_key:
        print(f"warning: listening on {args.host} without --api_key: anyone on the network can use the model",
              file=sys.stderr)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning", timeout_graceful_shutdown=2)
    return 0


def main(argv: list[str] | None = None) -> int:
    """``python -m helpers.api ...``: load the model and serve it until interrupted; returns the exit code (2 with
    a message on bad input)."""
    return cli_main(_serve, argv, build_parser())
