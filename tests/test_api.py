"""helpers.api: the OpenAI-compatible server. Error handling in process (TestClient); everything else against
the REAL server (uvicorn subprocess on 127.0.0.1) with the official openai client, LangChain, curl, 16 streams."""
import json
import threading
import time
from pathlib import Path

import pytest


@pytest.fixture(scope="module")
def tiny_base():
    from helpers import tiny

    return tiny.hf_model()


@pytest.fixture(scope="module")
def client(tiny_base):
    """In-process app with an API key (no server): for error handling."""
    from fastapi.testclient import TestClient

    from helpers.api import create_app
    from helpers.modeling import load_model

    model, tok = load_model(tiny_base, device="cpu")
    app = create_app(model, tok, model_name="tiny", api_key="sk-test")
    with TestClient(app) as c:
        c.headers["Authorization"] = "Bearer sk-test"
        yield c


@pytest.fixture(scope="module")
def server(tiny_base):
    """``python -m helpers.api`` as a real uvicorn subprocess (helpers.api.start_server); yields its base URL."""
    from helpers.api import start_server

    srv = start_server(tiny_base, extra=["--model_name", "tiny-alpaca"], env={"OMP_NUM_THREADS": "1"})
    yield srv.url
    assert srv.stop() in (0, -15)
    assert srv.proc.poll() is not None and not Path(srv.log.name).exists()  # process ended, log file removed


@pytest.fixture(scope="module")
def oai(server):
    from openai import OpenAI

    return OpenAI(base_url=f"{server}/v1", api_key="not-needed", max_retries=0, timeout=120)


def _messages(text="给我讲一些有关杭州的故事吧"):
    return [{"role": "user", "content": text}]


# --------------------------------------------------------------------------- prompts (no model)
def test_chat_prompt_matches_templates():
    from helpers.api import APIError, ChatMessage, chat_prompt
    from helpers.prompts import build_prompt, render

    one = [ChatMessage(role="user", content="你好")]
    assert chat_prompt(one) == build_prompt("你好")
    assert chat_prompt(one, "alpaca2") == "<s>" + build_prompt("你好", template="alpaca2")
    seed_style = [ChatMessage(role="user", message="你好")]
    assert chat_prompt(seed_style) == build_prompt("你好")
    multi = [ChatMessage(role="system", content="你是导游。"), ChatMessage(role="user", content="杭州?"),
             ChatMessage(role="assistant", content="西湖。"), ChatMessage(role="user", content="还有呢?")]
    text = chat_prompt(multi)
    assert text.startswith(build_prompt("你是导游。\n\n杭州?")) and text.endswith("### Instruction:\n还有呢?\n\n### Response: ")
    assert "西湖。" in text
    two = chat_prompt(multi, "alpaca2")
    assert two.count("[INST]") == 2 and "<<SYS>>\n你是导游。\n<</SYS>>" in two and two.endswith("还有呢? [/INST]")
    assert two == render("chinese-alpaca-2", [m.model_dump(include={"role", "content"}) for m in multi])
    for bad in ([ChatMessage(role="assistant", content="x")],
                [ChatMessage(role="user", content="a"), ChatMessage(role="user", content="b")],
                [ChatMessage(role="user", content="a"), ChatMessage(role="system", content="b")]):
        with pytest.raises(APIError):
            chat_prompt(bad)


def test_alpaca2_prompt_has_one_bos(client):
    from helpers.api import ChatMessage, chat_prompt

    engine = client.app.state.engine
    ids = engine.encode(chat_prompt([ChatMessage(role="user", content="你好")], "alpaca2"))
    assert ids.count(engine.tokenizer.bos_token_id) == 1 and ids[0] == engine.tokenizer.bos_token_id
    assert engine.encode("你好")[0] == engine.tokenizer.bos_token_id


# --------------------------------------------------------------------------- errors (in process)
BAD_CHAT = [
    ("{not json", "invalid JSON", None),
    ("[]", "body", None),
    (json.dumps({}), "messages", "messages"),
    (json.dumps({"messages": []}), "at least 1", "messages"),
    (json.dumps({"messages": [{"role": "robot", "content": "x"}]}), "should be 'system'", "messages.0.role"),
    (json.dumps({"messages": [{"role": "user"}]}), "content", "messages.0.content"),
    (json.dumps({"messages": [{"role": "user", "content": 5}]}), "messages", "messages.0.content"),
    (json.dumps({"messages": "hi"}), "messages", "messages"),
    (json.dumps({"messages": _messages(), "max_tokens": "5"}), "integer", "max_tokens"),
    (json.dumps({"messages": _messages(), "max_tokens": 10**9}), "max_tokens", "max_tokens"),
    (json.dumps({"messages": _messages(), "max_tokens": 0}), "max_tokens", "max_tokens"),
    (json.dumps({"messages": _messages(), "max_tokens": 1000}), "context", "max_tokens"),
    (json.dumps({"messages": _messages("很长的问题" * 800)}), "context", "messages"),
    (json.dumps({"messages": _messages(), "temperature": -1}), "temperature", "temperature"),
    (json.dumps({"messages": _messages(), "top_p": 0}), "top_p", "top_p"),
    (json.dumps({"messages": _messages(), "n": 100}), "n", "n"),
    (json.dumps({"messages": _messages(), "stop": ["a", "b", "c", "d", "e"]}), "at most 4", "stop"),
    (json.dumps({"messages": _messages(), "stream": "yes"}), "stream", "stream"),
]


@pytest.mark.parametrize("body,words,param", BAD_CHAT)
def test_bad_chat_requests_get_openai_errors(client, body, words, param):
    r = client.post("/v1/chat/completions", content=body, headers={"Content-Type": "application/json"})
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"}
    assert err["type"] == "invalid_request_error" and words.lower() in err["message"].lower()
    assert err["param"] == param
    if "context" in words:
        assert err["code"] == "context_length_exceeded"


def test_other_errors(client):
    assert client.post("/v1/completions", json={"prompt": []}).status_code == 400
    assert client.post("/v1/completions", json={}).json()["error"]["param"] == "prompt"
    assert client.post("/v1/embeddings", json={"input": []}).status_code == 400
    assert client.post("/v1/embeddings", json={"input": [[10**7]]}).status_code == 400
    assert client.post("/v1/embeddings", json={"input": {"a": 1}}).status_code == 400
    r = client.get("/v1/nothing")
    assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"
    assert client.get("/v1/chat/completions").status_code == 405


def test_api_key(client):
    for headers in ({"Authorization": "Bearer wrong"}, {"Authorization": ""}, {"Authorization": "sk-test"}):
        r = client.get("/v1/models", headers=headers)
        assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
    assert client.get("/v1/models").json()["data"][0]["id"] == "tiny"
    assert client.get("/health").status_code == 200  # health needs no key


def test_stop_n_and_usage(client):
    body = {"prompt": "告诉我中国的首都在哪里", "temperature": 0, "max_tokens": 12}
    full = client.post("/v1/completions", json=body).json()
    choice = full["choices"][0]
    assert choice["finish_reason"] == "length" and full["usage"]["completion_tokens"] == 12
    assert full["usage"]["total_tokens"] == full["usage"]["prompt_tokens"] + 12
    text = choice["text"]
    stop = text[len(text) // 2: len(text) // 2 + 2]
    cut = client.post("/v1/completions", json={**body, "stop": stop}).json()["choices"][0]
    assert cut["finish_reason"] == "stop" and cut["text"] == text[:text.find(stop)]
    two = client.post("/v1/completions", json={**body, "n": 2, "prompt": ["a", "b"]}).json()
    assert [c["index"] for c in two["choices"]] == [0, 1, 2, 3]
    assert two["choices"][0]["text"] == two["choices"][1]["text"]  # greedy: n copies agree
    assert two["usage"]["completion_tokens"] == 48


# --------------------------------------------------------------------------- real server
def test_openai_client_chat_completions_embeddings(oai):
    assert [m.id for m in oai.models.list().data] == ["tiny-alpaca"]
    chat = oai.chat.completions.create(model="tiny-alpaca", messages=_messages(), max_tokens=16, temperature=0)
    assert chat.choices[0].finish_reason == "length" and chat.usage.completion_tokens == 16
    text = chat.choices[0].message.content
    assert text and chat.choices[0].message.role == "assistant"
    pieces, reasons = [], []
    for chunk in oai.chat.completions.create(model="tiny-alpaca", messages=_messages(), max_tokens=16,
                                             temperature=0, stream=True):
        if chunk.choices:
            pieces.append(chunk.choices[0].delta.content or "")
            reasons.append(chunk.choices[0].finish_reason)
    assert "".join(pieces) == text and reasons[-1] == "length" and len(pieces) > 3
    comp = oai.completions.create(model="tiny-alpaca", prompt="告诉我中国的首都在哪里", max_tokens=8, temperature=0)
    assert comp.choices[0].text and comp.usage.completion_tokens == 8
    emb = oai.embeddings.create(model="tiny-alpaca", input=["今天天气真不错", "hello", "今天天气真不错"])  # base64
    vecs = [e.embedding for e in emb.data]
    assert len(vecs) == 3 and len(vecs[0]) == 64
    assert all(abs(sum(x * x for x in v) - 1) < 1e-4 for v in vecs)
    assert vecs[0] == pytest.approx(vecs[2], abs=1e-6) and vecs[0] != pytest.approx(vecs[1], abs=1e-3)
    floats = oai.embeddings.create(model="tiny-alpaca", input="今天天气真不错", encoding_format="float")
    assert floats.data[0].embedding == pytest.approx(vecs[0], abs=1e-5)


def test_langchain_chat_openai(server):
    from langchain_openai import ChatOpenAI

    llm = ChatOpenAI(base_url=f"{server}/v1", api_key="not-needed", model="tiny-alpaca", temperature=0,
                     max_tokens=10, max_retries=0)
    msg = llm.invoke("给我讲一些有关杭州的故事吧")
    assert isinstance(msg.content, str) and msg.content
    assert msg.response_metadata["finish_reason"] == "length"
    streamed = "".join(c.content for c in llm.stream("给我讲一些有关杭州的故事吧"))
    assert streamed == msg.content


@pytest.mark.parametrize("name", ["completions", "chat", "embeddings"])
def test_seed_curl_commands(server, name):
    from helpers.api import SEED_CURLS, run_curl

    assert "localhost:19327" in SEED_CURLS[name]  # verbatim from the seed; only the address is replaced
    status, data = run_curl(SEED_CURLS[name], server)
    assert status == 200, data
    if name == "embeddings":
        assert len(data["data"]) == 1 and len(data["data"][0]["embedding"]) == 64
    else:
        choice = data["choices"][0]
        assert choice["finish_reason"] in ("stop", "length") and data["usage"]["completion_tokens"] > 0
        if name == "chat":  # the seed's "message" field was read as the content
            assert data["object"] == "chat.completion" and choice["message"]["role"] == "assistant"
            assert isinstance(choice["message"]["content"], str)
        else:
            assert data["object"] == "text_completion" and isinstance(choice["text"], str)


@pytest.mark.slow
def test_16_concurrent_streaming_clients(server, oai):
    want = oai.chat.completions.create(model="tiny-alpaca", messages=_messages("西湖"), max_tokens=12,
                                       temperature=0).choices[0].message.content
    results, errors = [None] * 16, []

    def one(i):
        try:
            from openai import OpenAI

            c = OpenAI(base_url=f"{server}/v1", api_key="x", max_retries=0, timeout=300)
            text, reason = "", None
            for chunk in c.chat.completions.create(model="tiny-alpaca", messages=_messages("西湖"), max_tokens=12,
                                                   temperature=0, stream=True):
                if chunk.choices:
                    text += chunk.choices[0].delta.content or ""
                    reason = chunk.choices[0].finish_reason or reason
            results[i] = (text, reason)
        except Exception as e:  # collected and reported below
            errors.append(repr(e))

    threads = [threading.Thread(target=one, args=(i,)) for i in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert not errors, errors
    assert results == [(want, "length")] * 16


def test_disconnect_stops_generation(server, tiny_base):
    import httpx

    from helpers.tokenizer import load_tokenizer

    before = httpx.get(f"{server}/health").json()
    eos = load_tokenizer(tiny_base).eos_token_id
    body = {"messages": _messages(), "max_tokens": 900, "temperature": 0, "stream": True,
            "logit_bias": {str(eos): -100}}  # runs all 900 tokens unless stopped
    with httpx.stream("POST", f"{server}/v1/chat/completions", json=body, timeout=60) as r:
        assert r.status_code == 200
        lines = r.iter_lines()
        got = [next(lines) for _ in range(6)]
    assert any('"content"' in x for x in got)
    for _ in range(100):
        after = httpx.get(f"{server}/health").json()
        if after["cancelled"] > before["cancelled"]:
            break
        time.sleep(0.1)
    assert after["cancelled"] == before["cancelled"] + 1
    assert after["last_tokens"] < 900
    # the server is still fine afterwards
    assert httpx.post(f"{server}/v1/chat/completions", json={**body, "stream": False, "max_tokens": 4}).status_code == 200


def test_stream_format_and_usage_chunk(client):
    body = {"messages": _messages(), "max_tokens": 6, "temperature": 0, "stream": True,
            "stream_options": {"include_usage": True}}
    with client.stream("POST", "/v1/chat/completions", json=body) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        events = [line[len("data: "):] for line in r.iter_lines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert chunks[-2]["choices"][0]["finish_reason"] == "length"
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] == 6


def test_stream_several_prompts_and_n(client):
    """Streaming completions with 2 prompts × n=2: every choice index opens, streams and finishes."""
    body = {"prompt": ["a", "b"], "n": 2, "max_tokens": 4, "temperature": 0, "stream": True}
    with client.stream("POST", "/v1/completions", json=body) as r:
        assert r.status_code == 200
        events = [line[len("data: "):] for line in r.iter_lines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e)["choices"][0] for e in events[:-1]]
    assert [c["index"] for c in chunks[:4]] == [0, 1, 2, 3]  # one opening chunk per choice
    finished = {c["index"]: c["finish_reason"] for c in chunks if c["finish_reason"]}
    assert finished == {0: "length", 1: "length", 2: "length", 3: "length"}
    texts = ["".join(c["text"] for c in chunks if c["index"] == i) for i in range(4)]
    plain = client.post("/v1/completions", json={**body, "stream": False}).json()["choices"]
    assert texts == [c["text"] for c in plain]


def test_cli_bad_input_exits_2_with_a_message(capsys, tmp_path, tiny_base):
    import shutil

    from helpers.api import main

    assert main(["--base_model", "/nonexistent/model", "--only_cpu"]) == 2
    assert "--base_model" in capsys.readouterr().err
    assert main(["--base_model", str(tiny_base), "--template", "nope", "--only_cpu"]) == 2
    assert capsys.readouterr().err.startswith("error: template/family 'nope' is unknown")
    for f in Path(tiny_base).glob("tokenizer*"):  # a tokenizer but no model: transformers' error, with the flag named
        shutil.copy(f, tmp_path)
    assert main(["--base_model", str(tmp_path), "--only_cpu"]) == 2
    assert capsys.readouterr().err.startswith(f"error: --base_model {tmp_path}: cannot load the model")


# --------------------------------------------------------------------------- OpenAI semantics, real server
def _choices(oai, **kw) -> list[str]:
    return [c.message.content for c in sorted(oai.chat.completions.create(**kw).choices, key=lambda c: c.index)]


def _streamed_choices(oai, n: int, **kw) -> list[str]:
    texts = [""] * n
    for chunk in oai.chat.completions.create(stream=True, n=n, **kw):
        for c in chunk.choices:
            texts[c.index] += c.delta.content or ""
    return texts


def test_seed_with_n_gives_distinct_reproducible_choices(oai):
    """OpenAI: ``n`` choices are separate samples, and the same ``seed`` with the same request returns the same
    result; streamed or not, the text is the same."""
    kw = dict(model="tiny-alpaca", messages=_messages(), max_tokens=12, temperature=1.0, top_p=1.0, seed=1234)
    first = _choices(oai, n=3, **kw)
    assert len(set(first)) == 3, first  # the old server re-seeded every choice alike: three identical texts
    assert _choices(oai, n=3, **kw) == first
    assert _streamed_choices(oai, 3, **kw) == first
    assert _choices(oai, n=3, **{**kw, "seed": 4321}) != first


def test_stop_string_completed_by_the_last_allowed_token_is_a_stop(oai):
    """OpenAI's finish_reason is "stop" when a stop sequence ends the answer, even at the max_tokens-th token."""
    kw = dict(model="tiny-alpaca", messages=_messages(), temperature=0)
    texts = {k: oai.chat.completions.create(max_tokens=k, **kw).choices[0].message.content for k in range(6, 13)}
    # a max_tokens whose last token adds text that did not occur before it: that text as the stop sequence
    k, stop = next((k, texts[k][len(texts[k - 1]):].strip()[:2]) for k in range(7, 13)
                   if texts[k].startswith(texts[k - 1]) and texts[k][len(texts[k - 1]):].strip()
                   and texts[k][len(texts[k - 1]):].strip()[:2] not in texts[k - 1])
    at_limit = oai.chat.completions.create(max_tokens=k, stop=[stop], **kw).choices[0]
    assert at_limit.finish_reason == "stop" and at_limit.message.content == texts[k][:texts[k].find(stop)]
    before = oai.chat.completions.create(max_tokens=k - 1, stop=[stop], **kw).choices[0]
    assert before.finish_reason == "length" and before.message.content == texts[k - 1]


def test_generation_ends_at_the_token_that_completes_a_stop_string(oai):
    """OpenAI counts the tokens generated: a stop sequence ends generation, so usage.completion_tokens is the
    position of the token that completed it, not max_tokens (the server must not generate on and cut later)."""
    kw = dict(model="tiny-alpaca", messages=_messages(), temperature=0)
    texts = {k: oai.chat.completions.create(max_tokens=k, **kw).choices[0].message.content for k in range(6, 13)}
    k, stop = next((k, texts[k][len(texts[k - 1]):].strip()[:2]) for k in range(7, 13)
                   if texts[k].startswith(texts[k - 1]) and texts[k][len(texts[k - 1]):].strip()
                   and texts[k][len(texts[k - 1]):].strip()[:2] not in texts[k - 1])
    out = oai.chat.completions.create(max_tokens=40, stop=[stop], **kw)
    assert out.choices[0].finish_reason == "stop" and out.usage.completion_tokens == k


def test_logit_bias_bans_and_forces_tokens(oai, tiny_base):
    """OpenAI: logit_bias 100 makes a token the exclusive choice, -100 bans it."""
    from helpers.tokenizer import load_tokenizer

    tok = load_tokenizer(tiny_base)
    kw = dict(model="tiny-alpaca", messages=_messages(), temperature=0)
    forced = oai.chat.completions.create(logit_bias={"300": 100}, max_tokens=6, **kw).choices[0].message.content
    assert forced == tok.decode([300] * 6)
    first = oai.chat.completions.create(max_tokens=1, **kw).choices[0].message.content
    same_text = {str(i): -100 for i in range(len(tok)) if tok.decode([i]) == first}  # the greedy first token
    assert same_text and len(same_text) < len(tok) // 2
    banned = oai.chat.completions.create(logit_bias=same_text, max_tokens=1, **kw).choices[0].message.content
    assert banned != first


def test_disconnect_cancels_a_non_streaming_request(server, tiny_base):
    """A client that gives up on a long non-streaming answer stops its generation at once: the server counts it
    as cancelled, with a fraction of its max_tokens generated, and answers the next client promptly."""
    import httpx

    from helpers.tokenizer import load_tokenizer

    eos = load_tokenizer(tiny_base).eos_token_id
    body = {"messages": _messages(), "max_tokens": 900, "logit_bias": {str(eos): -100}}  # never ends early
    t0 = time.time()
    assert httpx.post(f"{server}/v1/chat/completions", json=body, timeout=60).json()["usage"]["completion_tokens"] == 900
    whole = time.time() - t0  # how long this machine takes for all 900 tokens
    before = httpx.get(f"{server}/health").json()
    with pytest.raises(httpx.ReadTimeout):  # then the client closes the connection
        httpx.post(f"{server}/v1/chat/completions", json=body, timeout=whole / 3)
    while time.time() - t0 < whole + 10:
        after = httpx.get(f"{server}/health").json()
        if after["completed"] + after["cancelled"] > before["completed"] + before["cancelled"]:
            break
        time.sleep(0.02)
    assert after["cancelled"] == before["cancelled"] + 1 and after["completed"] == before["completed"], after
    assert after["last_tokens"] < 900  # stopped mid-way (the old server finished all 900)
    t0 = time.time()
    r = httpx.post(f"{server}/v1/chat/completions", json={**body, "max_tokens": 4}, timeout=30)
    assert r.status_code == 200 and time.time() - t0 < 5


def test_alpha_flag_reaches_the_model_and_the_context(tiny_base):
    """``python -m helpers.api --alpha auto``: dynamic NTK in the served model, and the server accepts 4x the
    trained context (helpers.modeling.ntk_context)."""
    from helpers.api.launcher import build_app_from_args, build_parser

    app = build_app_from_args(build_parser().parse_args(["--base_model", str(tiny_base), "--only_cpu",
                                                         "--alpha", "auto"]))
    engine = app.state.engine
    assert engine.model.config.rope_parameters == {"rope_type": "dynamic", "factor": 2.0, "rope_theta": 10000.0}
    assert engine.context_length == 4 * 1024
    plain = build_app_from_args(build_parser().parse_args(["--base_model", str(tiny_base), "--only_cpu"]))
    assert plain.state.engine.context_length == 1024
