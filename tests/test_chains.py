"""helpers.chains: the LangChain pieces steps 08 and 09 share (prompt wrapping, splitter, LLM from the CLI flags,
token counting, prompt recorder). The chains themselves are tested in test_rag.py and test_summarize.py."""
import argparse

import pytest

from helpers import chains
from helpers.core import CourseError
from helpers.prompts import ALPACA_TEMPLATE


def test_wrap_renders_the_family_without_bos():
    assert chains.wrap("{text}") == ALPACA_TEMPLATE.format(instruction="{text}")
    assert chains.wrap("{text}", "raw") == "{text}"
    # Llama-2 chat format, typed from Chinese-LLaMA-Alpaca-2's scripts; the tokenizer adds <s> itself
    assert chains.wrap("问题", "chinese-alpaca-2") == (
        "[INST] <<SYS>>\nYou are a helpful assistant. 你是一个乐于助人的助手。\n<</SYS>>\n\n问题 [/INST]")
    with pytest.raises(CourseError, match="no-such-family"):
        chains.wrap("x", "no-such-family")


def test_splitter_refuses_overlap_not_below_size():
    with pytest.raises(CourseError, match="--chunk_overlap 50 must be smaller than --chunk_size 50"):
        chains.text_splitter(50, 50)


def _args(*argv: str) -> argparse.Namespace:
    p = argparse.ArgumentParser()
    chains.add_llm_arguments(p, ["stuff", "refine"])
    return p.parse_args(list(argv))


def test_llm_from_args_needs_exactly_one_source():
    for argv in ((), ("--model_path", "m", "--openai_api_base", "http://127.0.0.1:9/v1")):
        with pytest.raises(CourseError, match="exactly one of --model_path .* or --openai_api_base"):
            chains.llm_from_args(_args(*argv))


def test_api_llm_counts_tokens_with_the_course_tokenizer():
    """With --openai_api_base the server applies the template (prompts ``raw``); --tokenizer_path counts tokens
    (nothing is sent to the server to build the LLM)."""
    import sentencepiece as spm

    from helpers import tiny

    folder = tiny.merged_tokenizers()["alpaca_hf"]
    llm, template, tok = chains.llm_from_args(_args("--openai_api_base", "http://127.0.0.1:9/v1",
                                                    "--tokenizer_path", str(folder), "--max_new_tokens", "7"))
    assert template == "raw" and llm.max_tokens == 7 and llm.openai_api_base == "http://127.0.0.1:9/v1"
    sp = spm.SentencePieceProcessor(model_file=str(folder / "tokenizer.model"))  # the reference segmentation
    assert tok is not None
    assert llm.get_num_tokens("大熊猫吃竹子。") == len(sp.encode("大熊猫吃竹子。")) > 0


def test_prompt_recorder_keeps_llm_and_chat_prompts():
    from langchain_core.messages import HumanMessage, SystemMessage

    rec = chains.PromptRecorder()
    rec.on_llm_start({}, ["a", "b"])
    rec.on_chat_model_start({}, [[SystemMessage("系统"), HumanMessage("你好")]])
    assert rec.prompts == ["a", "b", "系统\n你好"]


def test_api_llm_sends_max_tokens_that_every_server_reads():
    """langchain-openai 1.x sends only ``max_completion_tokens``; llama.cpp's server ignores it and generates to its
    context. The request body must also carry OpenAI's ``max_tokens`` (the field every compatible server reads)."""
    import json

    import httpx

    bodies = []

    def handler(request: httpx.Request) -> httpx.Response:
        bodies.append(json.loads(request.content))
        return httpx.Response(200, json={
            "id": "x", "object": "chat.completion", "created": 0, "model": "m",
            "choices": [{"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": "好"}}],
            "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}})

    llm = chains.api_llm("http://127.0.0.1:9/v1", max_tokens=7, http_client=httpx.Client(transport=httpx.MockTransport(handler)),
                         extra_body={"top_k": 3})
    assert llm.invoke("你好").content == "好"
    assert bodies[0]["max_tokens"] == 7 and bodies[0]["top_k"] == 3
