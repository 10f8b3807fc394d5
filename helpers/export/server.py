"""llama.cpp's own OpenAI-compatible server (``python -m llama_cpp.server``, llama-cpp-python's ``server`` extra)
serving an exported GGUF on 127.0.0.1: the same ``openai`` / LangChain clients as the course's server (step 10)
talk to it unchanged. The process handle is the course server's :class:`helpers.api.launcher.ServerProcess`
(log file, ``stop()``, context manager, stopped at exit); only the command and the readiness check differ."""
from __future__ import annotations

import os
import sys
from pathlib import Path

from ..api.launcher import ServerProcess
from ..net import free_port
from .source import ExportError


class LlamaCppServer(ServerProcess):
    """``python -m llama_cpp.server --model FILE --host 127.0.0.1 --port P ...`` as a subprocess; ``url``/``v1``
    as for the course server, ``model`` the name clients pass (the server's ``--model_alias``)."""

    name = "llama_cpp.server"
    ready_path = "/v1/models"    # llama_cpp.server has no /health
    log_prefix = "llama-cpp-server-"

    def command(self, args: list[str], port: int) -> list[str]:
        """Returns ``python -m llama_cpp.server ARGS --host 127.0.0.1 --port PORT``."""
        return [sys.executable, "-m", "llama_cpp.server", *args, "--host", "127.0.0.1", "--port", str(port)]

    def __init__(self, args: list[str], port: int, timeout: float = 120.0, env: dict | None = None,
                 model: str = "chinese-alpaca"):
        self.model = model
        super().__init__(args, port, timeout=timeout, env=env)


def llama_cpp_server_args(gguf_file: str | Path, n_ctx: int = 2048, n_threads: int | None = None,
                          lora_path: str | Path | None = None, model_alias: str = "chinese-alpaca",
                          chat_format: str | None = None, api_key: str | None = None, kv_f32: bool = False) -> list[str]:
    """The ``llama_cpp.server`` flags (without host/port) for ``gguf_file``; returns the argument list.

    ``chat_format`` None: the server builds chat prompts from the GGUF's ``tokenizer.chat_template`` (the course
    writes the registry's template there). ``kv_f32``: KV cache in f32 (for parity checks; deployments keep f16)."""
    if not Path(gguf_file).is_file():
        raise ExportError(f"--model {gguf_file}: no such GGUF file; export one first (python -m helpers.export gguf)")
    threads = n_threads or int(os.environ.get("OMP_NUM_THREADS") or 1)
    args = ["--model", str(gguf_file), "--model_alias", model_alias, "--n_ctx", str(n_ctx),
            "--n_threads", str(threads), "--n_threads_batch", str(threads), "--verbose", "False"]
    if lora_path:
        args += ["--lora_path", str(lora_path)]
    if chat_format:
        args += ["--chat_format", chat_format]
    if api_key:
        args += ["--api_key", api_key]
    if kv_f32:
        args += ["--type_k", "0", "--type_v", "0"]  # 0 = GGML_TYPE_F32
    return args


def start_llama_cpp_server(gguf_file: str | Path, port: int | None = None, timeout: float = 120.0,
                           env: dict | None = None, **kwargs) -> LlamaCppServer:
    """Starts llama.cpp's OpenAI server on 127.0.0.1 (a free port unless given) for ``gguf_file``; returns the
    :class:`LlamaCppServer` once it answers. ``kwargs``: :func:`llama_cpp_server_args` (``n_ctx``, ``lora_path``,
    ``model_alias``, ``chat_format``, ``api_key``, ``n_threads``, ``kv_f32``)."""
    try:
        import llama_cpp.server  # noqa: F401
        import starlette_context  # noqa: F401
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ExportError(f"llama_cpp.server needs llama-cpp-python's server extra ({e.name} missing): "
                          "pip install -e '.[export]'") from e
    args = llama_cpp_server_args(gguf_file, **kwargs)
    return LlamaCppServer(args, port or free_port(), timeout, env, model=kwargs.get("model_alias", "chinese-alpaca"))


def vllm_serve_args(merged_dir: str | Path, served_name: str = "chinese-alpaca-2", lora_dir: str | Path | None = None,
                    max_model_len: int = 4096, dtype: str = "float16") -> list[str]:
    """The ``vllm serve`` arguments (without host/port) for ``merged_dir``, plus ``--enable-lora`` for a PEFT adapter
    (served as ``my-lora``); returns the argument list."""
    args = [str(merged_dir), "--served-model-name", served_name, "--dtype", dtype, "--max-model-len", str(max_model_len)]
    if lora_dir:
        args += ["--enable-lora", "--max-lora-rank", "64", "--lora-modules", f"my-lora={lora_dir}"]
    return args


class VllmServer(ServerProcess):
    """``vllm serve MODEL ... --host 127.0.0.1 --port P`` as a subprocess (CUDA GPU only); ``url``/``v1`` as for the
    course server, ``model`` the served name."""

    name = "vllm serve"
    ready_path = "/v1/models"
    log_prefix = "vllm-"

    def command(self, args: list[str], port: int) -> list[str]:
        """Returns ``vllm serve ARGS --host 127.0.0.1 --port PORT``."""
        return ["vllm", "serve", *args, "--host", "127.0.0.1", "--port", str(port)]

    def __init__(self, args: list[str], port: int, timeout: float = 600.0, env: dict | None = None,
                 model: str = "chinese-alpaca-2"):
        self.model = model
        super().__init__(args, port, timeout=timeout, env=env)


def start_vllm_server(merged_dir: str | Path, port: int | None = None, timeout: float = 600.0,
                      served_name: str = "chinese-alpaca-2", **kwargs) -> VllmServer:
    """Starts vLLM's OpenAI server on 127.0.0.1 for ``merged_dir`` (``kwargs``: :func:`vllm_serve_args`); returns the
    :class:`VllmServer` once it answers. Refuses, with the reason, a machine without a CUDA GPU or without vLLM."""
    import shutil

    import torch

    if not torch.cuda.is_available() or shutil.which("vllm") is None:
        raise ExportError("vLLM needs a CUDA GPU and `pip install vllm` (this machine: "
                          + ("no CUDA GPU" if not torch.cuda.is_available() else "no `vllm` command") + ")")
    return VllmServer(vllm_serve_args(merged_dir, served_name, **kwargs), port or free_port(), timeout,
                      model=served_name)


def vllm_commands(merged_dir: str = "chinese-alpaca-2-7b", lora_dir: str | None = "my-lora", port: int = 8000,
                  served_name: str = "chinese-alpaca-2") -> str:
    """The shell commands that serve a merged HF model with vLLM behind the OpenAI API (GPU only), and the same
    base with a PEFT adapter (``--enable-lora --lora-modules NAME=PATH``); returns them as one text."""
    lines = [f"vllm serve {merged_dir} --served-model-name {served_name} --host 127.0.0.1 --port {port} "
             "--dtype float16 --max-model-len 4096"]
    if lora_dir:
        lines.append(f"vllm serve {merged_dir} --served-model-name {served_name} --host 127.0.0.1 --port {port} "
                     f"--enable-lora --max-lora-rank 64 --lora-modules my-lora={lora_dir}")
    return "\n".join(lines)
