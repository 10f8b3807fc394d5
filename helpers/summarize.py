"""Step 09: summarizing a Chinese document with LangChain 1.x and the course model (seed 002, 第8步 摘要生成).

The original ``scripts/langchain/langchain_sum.py`` (``stuff`` and ``refine`` with the Chinese-Alpaca
prompts) plus ``map_reduce``. map_reduce decides when to collapse intermediate summaries by counting
tokens; LangChain's default counter is a GPT-2 tokenizer fetched from the hub, which under
``HF_HUB_OFFLINE=1`` silently loads as an *empty* tokenizer (every text counts 0 tokens, so nothing is
ever collapsed and the final prompt can overflow the context). Here the counter is the course tokenizer,
and a chain whose LLM counts 0 tokens is refused.

    python -m helpers.summarize --model_path merged_model/ --file_path sample.txt --chain_type refine
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from .chains import (CHUNK_OVERLAP, CHUNK_SIZE, add_llm_arguments, llm_from_args, load_document, text_splitter,
                     token_counter, wrap)
from .core import CourseError, cli_main

CHAIN_TYPES = ("stuff", "refine", "map_reduce")
# The instruction texts of the original langchain_sum.py, wrapped in the Chinese-Alpaca template.
SUMMARY_INSTRUCTION = "请为以下文字写一段摘要:\n{text}"
REFINE_SUMMARY_INSTRUCTION = (
    "已有一段摘要：{existing_answer}\n"
    "现在还有一些文字，（如果有需要）你可以根据它们完善现有的摘要。\n"
    "{text}\n\n"
    "如果这段文字没有用，返回原来的摘要即可。请你生成一个最终的摘要。"
)
TOKEN_MAX = 3000  # LangChain's default budget for the combined map_reduce summaries


def split_text(text: str, chunk_size: int = CHUNK_SIZE, chunk_overlap: int = CHUNK_OVERLAP) -> list:
    """``Document`` chunks of ``text`` (Chinese-aware separators, lengths in characters)."""
    from langchain_core.documents import Document

    if not text.strip():
        raise CourseError("the text to summarize is empty: pass a --file_path with some UTF-8 text")
    return [Document(page_content=t) for t in text_splitter(chunk_size, chunk_overlap).split_text(text)]


def ensure_token_counter(llm, tokenizer=None):
    """Returns ``llm`` with a working token counter: ``tokenizer`` when given, else the LLM's own; refuses a
    counter that returns 0 tokens for Chinese text (LangChain's offline GPT-2 fallback)."""
    if tokenizer is not None:
        llm = llm.model_copy(update={"custom_get_token_ids": token_counter(tokenizer)})
    if getattr(llm, "custom_get_token_ids", None) is None:
        raise CourseError("map_reduce needs a token counter: build the LLM with helpers.chains.local_llm / "
                          "api_llm(tokenizer=...) or pass tokenizer= (LangChain's GPT-2 default needs the hub)")
    if llm.get_num_tokens("这是一个用于数词元的句子。") == 0:
        raise CourseError("the LLM's token counter returns 0 tokens (empty tokenizer?); pass the course tokenizer")
    return llm


def build_summarize_chain(llm, chain_type: str = "refine", template: str = "alpaca", token_max: int = TOKEN_MAX,
                          tokenizer=None, collapse_max_retries: int = 3):
    """Returns a ``load_summarize_chain`` chain with the original prompts; ``map_reduce`` uses the summary prompt
    for map, collapse and combine, and counts tokens with the course tokenizer."""
    from langchain_classic.chains.summarize import load_summarize_chain
    from langchain_core.prompts import PromptTemplate

    prompt = PromptTemplate.from_template(wrap(SUMMARY_INSTRUCTION, template))
    if chain_type == "stuff":
        return load_summarize_chain(llm, chain_type="stuff", prompt=prompt)
    if chain_type == "refine":
        refine = PromptTemplate.from_template(wrap(REFINE_SUMMARY_INSTRUCTION, template))
        return load_summarize_chain(llm, chain_type="refine", question_prompt=prompt, refine_prompt=refine)
    if chain_type == "map_reduce":
        llm = ensure_token_counter(llm, tokenizer)
        return load_summarize_chain(llm, chain_type="map_reduce", map_prompt=prompt, combine_prompt=prompt,
                                    collapse_prompt=prompt, token_max=token_max,
                                    collapse_max_retries=collapse_max_retries)
    raise CourseError(f"--chain_type {chain_type!r}: choose one of {', '.join(CHAIN_TYPES)}")


def summarize(chain, docs: list, callbacks: list | None = None) -> str:
    """The summary of ``docs`` (the chain's ``output_text``)."""
    out = chain.invoke({"input_documents": docs}, config={"callbacks": callbacks or []})
    return out["output_text"].strip()


def parser() -> argparse.ArgumentParser:
    """Returns the parser of ``python -m helpers.summarize`` (the flags of the original langchain_sum.py)."""
    p = argparse.ArgumentParser(prog="python -m helpers.summarize", description=__doc__.split("\n\n")[0])
    p.add_argument("--file_path", required=True, help="UTF-8 document to summarize")
    add_llm_arguments(p, CHAIN_TYPES)
    p.add_argument("--token_max", type=int, default=TOKEN_MAX, help="map_reduce: collapse summaries above this")
    return p


def _run(args) -> int:
    """The CLI: split the document, build the chain, print one JSON line with the summary."""
    docs = split_text(load_document(args.file_path)[0].page_content, args.chunk_size, args.chunk_overlap)
    llm, template, tokenizer = llm_from_args(args)
    chain = build_summarize_chain(llm, args.chain_type, template, args.token_max, tokenizer)
    print(json.dumps({"file_path": str(Path(args.file_path)), "chain_type": args.chain_type,
                      "chunks": len(docs), "summary": summarize(chain, docs)}, ensure_ascii=False))
    return 0


def main(argv: list[str] | None = None) -> int:
    """``python -m helpers.summarize ...``; returns the exit code (2 with a message on bad input)."""
    return cli_main(_run, argv, parser())


if __name__ == "__main__":
    raise SystemExit(main())
