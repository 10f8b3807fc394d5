"""The LangChain pieces steps 08 (:mod:`helpers.rag`) and 09 (:mod:`helpers.summarize`) share.

* documents: :func:`load_document` (UTF-8 checked), :func:`text_splitter` (Chinese separators, 600/100);
* prompts: :func:`wrap` (an instruction in a chat family's template, or ``raw`` for a chat API);
* LLMs: :func:`local_llm` / :func:`load_local_llm` (the course model as a ``HuggingFacePipeline``),
  :func:`api_llm` (``ChatOpenAI`` on an OpenAI-compatible server), :func:`token_counter` (the course tokenizer,
  never LangChain's downloaded GPT-2), :func:`tiny_model` (the tiny Chinese-Alpaca stand-in);
* :class:`PromptRecorder`: the prompts a chain really sent;
* the CLI flags both steps take (:func:`add_llm_arguments`) and the LLM they build (:func:`llm_from_args`).
"""
from __future__ import annotations

import argparse
from pathlib import Path

from langchain_core.callbacks import BaseCallbackHandler

from . import tiny
from .catalog import template_or_default
from .core import CourseError
from .generation import generation_kwargs
from .modeling import load_model
from .prompts import FIX_TOKEN_RE, get_family, render, resolve_fix_tokens
from .tokenizer import load_tokenizer

ZH_SEPARATORS = ["\n\n", "\n", "。", "！", "？", "；", "，", ""]
CHUNK_SIZE = 600
CHUNK_OVERLAP = 100


# --------------------------------------------------------------------------- prompts and documents
def wrap(instruction: str, template: str = "alpaca") -> str:
    """The full prompt text for ``instruction``: rendered with a chat family of :mod:`helpers.prompts`
    (``alpaca`` for the first generation, ``chinese-alpaca-2`` for Chinese-Alpaca-2, as in each generation's
    langchain_qa.py), or ``raw`` for a chat API that applies its own template. The leading BOS text is dropped:
    the tokenizer adds BOS itself. Returns the text (LangChain ``{variables}`` kept)."""
    if template == "raw":
        return instruction
    fam = get_family(template)  # CourseError listing the families for an unknown name
    bos = FIX_TOKEN_RE.match(fam.pre_prompt)
    text = render(fam, [{"role": "user", "content": instruction}])
    return text.removeprefix(resolve_fix_tokens(bos.group(0), None, fam.fix_tokens)) if bos else text


def load_document(file_path: str | Path) -> list:
    """The file as a list with one LangChain ``Document`` (UTF-8; ``metadata['source']`` is the path)."""
    from langchain_community.document_loaders import TextLoader

    path = Path(file_path)
    if not path.is_file():
        raise CourseError(f"--file_path {path}: file not found; pass a UTF-8 text file")
    try:
        path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise CourseError(f"--file_path {path}: not UTF-8 ({e.reason} at byte {e.start}); "
                          "convert it first, e.g. iconv -f gbk -t utf-8") from e
    return TextLoader(str(path), encoding="utf-8").load()


def text_splitter(chunk_size: int = CHUNK_SIZE, chunk_overlap: int = CHUNK_OVERLAP):
    """A ``RecursiveCharacterTextSplitter`` that cuts Chinese text at paragraphs, lines, then 。！？；，.

    The punctuation stays at the end of its sentence (``keep_separator="end"``); lengths are characters.
    Returns the splitter.
    """
    from langchain_text_splitters import RecursiveCharacterTextSplitter

    if chunk_overlap >= chunk_size:
        raise CourseError(f"--chunk_overlap {chunk_overlap} must be smaller than --chunk_size {chunk_size}")
    return RecursiveCharacterTextSplitter(separators=ZH_SEPARATORS, chunk_size=chunk_size,
                                          chunk_overlap=chunk_overlap, keep_separator="end", length_function=len)


# --------------------------------------------------------------------------- LLMs
def token_counter(tokenizer):
    """Returns ``text -> token ids`` with the course tokenizer (no BOS), for ``custom_get_token_ids``."""
    def ids(text: str) -> list[int]:
        return tokenizer.encode(text, add_special_tokens=False)

    return ids


def local_llm(model, tokenizer, max_new_tokens: int = 400, **gen):
    """The course model as a LangChain LLM: a transformers ``text-generation`` pipeline (new text only,
    the course generation defaults) wrapped by ``HuggingFacePipeline``, which is returned. Token counting
    (map_reduce, prompt length checks) uses this tokenizer, never LangChain's downloaded GPT-2 fallback."""
    from langchain_huggingface import HuggingFacePipeline
    from transformers import pipeline

    kw = generation_kwargs(tokenizer, max_new_tokens=max_new_tokens, **gen)
    pipe = pipeline("text-generation", model=model, tokenizer=tokenizer, return_full_text=False, **kw)
    return HuggingFacePipeline(pipeline=pipe, custom_get_token_ids=token_counter(tokenizer))


def load_local_llm(model_path: str | Path, gpus: str | None = None, max_new_tokens: int = 400,
                   tokenizer_path: str | Path | None = None, lora_model: str | Path | None = None, **gen):
    """Returns ``(llm, model, tokenizer)``: a merged Chinese-Alpaca folder loaded by
    :func:`helpers.modeling.load_model` (the course tokenizer loader, so no ``use_fast=False`` patch of
    LangChain is needed)."""
    model, tokenizer = load_model(model_path, lora_model=lora_model, tokenizer_path=tokenizer_path, gpus=gpus)
    return local_llm(model, tokenizer, max_new_tokens=max_new_tokens, **gen), model, tokenizer


def tiny_model():
    """Returns ``(model, tokenizer)``: the tiny Chinese-Alpaca stand-in — the tiny LLaMA with the tiny
    Chinese-Alpaca tokenizer (embeddings resized). The base tokenizer would spend ~3 byte tokens per Chinese
    character and push a 600-character chunk past the tiny model's 1024 positions."""
    return load_model(tiny.hf_model(), tokenizer_path=tiny.merged_tokenizers()["alpaca_hf"], device="cpu")


def api_llm(base_url: str, model: str = "chinese-alpaca", api_key: str = "EMPTY", max_tokens: int = 400,
            temperature: float = 0.2, tokenizer=None, **kwargs):
    """Returns a ``ChatOpenAI`` pointed at an OpenAI-compatible server (``python -m helpers.api``, vLLM, ...).

    The server applies the chat template itself, so use ``template="raw"`` prompts with it. Pass the
    course ``tokenizer`` so token counting does not need tiktoken's downloaded encodings.
    """
    from langchain_openai import ChatOpenAI

    extra = {"custom_get_token_ids": token_counter(tokenizer)} if tokenizer is not None else {}
    # langchain-openai 1.x sends the limit only as `max_completion_tokens`, which llama.cpp's server ignores (it
    # then generates up to its context); `max_tokens` in the body too keeps every OpenAI-compatible server bounded.
    body = {"max_tokens": max_tokens, **(kwargs.pop("extra_body", None) or {})}
    return ChatOpenAI(base_url=base_url, api_key=api_key, model=model, max_tokens=max_tokens,
                      temperature=temperature, extra_body=body, **extra, **kwargs)


class PromptRecorder(BaseCallbackHandler):
    """A LangChain callback that keeps every prompt sent to the LLM (``.prompts``): what the chain really asked."""

    def __init__(self):
        self.prompts: list[str] = []

    def on_llm_start(self, serialized, prompts, **kwargs):
        self.prompts.extend(prompts)

    def on_chat_model_start(self, serialized, messages, **kwargs):
        self.prompts.extend("\n".join(str(m.content) for m in batch) for batch in messages)


# --------------------------------------------------------------------------- CLI pieces
def add_llm_arguments(p: argparse.ArgumentParser, chain_types: list[str] | tuple[str, ...]) -> None:
    """Add the flags shared by ``helpers.rag`` and ``helpers.summarize`` (langchain_qa.py / langchain_sum.py)."""
    p.add_argument("--model_path", default=None, help="merged Chinese-Alpaca model folder")
    p.add_argument("--tokenizer_path", default=None,
                   help="tokenizer folder (default: the one in --model_path; with --openai_api_base: for token counting)")
    p.add_argument("--openai_api_base", default=None,
                   help="instead of --model_path: an OpenAI-compatible server, e.g. http://127.0.0.1:19327/v1")
    p.add_argument("--chain_type", default="refine", choices=list(chain_types))
    p.add_argument("--gpus", default="0", help="GPU ids, e.g. 0 or 0,1,2 (sets CUDA_VISIBLE_DEVICES)")
    p.add_argument("--chunk_size", type=int, default=CHUNK_SIZE)
    p.add_argument("--chunk_overlap", type=int, default=CHUNK_OVERLAP)
    p.add_argument("--max_new_tokens", type=int, default=400)
    p.add_argument("--template", default=None,
                   help="chat family for --model_path prompts (default: from the model, e.g. chinese-alpaca-2 for "
                        "hfl/chinese-alpaca-2-*; alpaca for an unknown folder)")


def llm_from_args(args) -> tuple:
    """Returns ``(llm, template, tokenizer)`` from ``--model_path`` (local pipeline, the model's chat family) or
    ``--openai_api_base`` (ChatOpenAI; the server applies the template, so prompts are ``raw``)."""
    if bool(args.model_path) == bool(args.openai_api_base):
        raise CourseError("pass exactly one of --model_path (local model) or --openai_api_base (API server)")
    if args.model_path:
        llm, _, tokenizer = load_local_llm(args.model_path, gpus=args.gpus, max_new_tokens=args.max_new_tokens,
                                           tokenizer_path=args.tokenizer_path)
        return llm, template_or_default(args.model_path, args.template), tokenizer
    tokenizer = load_tokenizer(args.tokenizer_path) if args.tokenizer_path else None
    return api_llm(args.openai_api_base, max_tokens=args.max_new_tokens, tokenizer=tokenizer), "raw", tokenizer
