"""helpers.api's request schema against the server: what /openapi.json refuses is what the server refuses, and
whatever the schema accepts is answered (200 or 4xx, never 5xx) -- property-based, with hypothesis. In process
(FastAPI's TestClient) with the tiny model; OpenAI's presence/frequency penalties against hand-worked numbers."""
import json
import math

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st


@pytest.fixture(scope="module")
def client():
    from fastapi.testclient import TestClient

    from helpers import tiny
    from helpers.api import create_app
    from helpers.modeling import load_model

    model, tok = load_model(tiny.hf_model(), device="cpu")
    with TestClient(create_app(model, tok, model_name="tiny"), raise_server_exceptions=False) as c:
        yield c


@pytest.fixture(scope="module")
def validators(client):
    """``{path: jsonschema validator}`` for the request body of every POST route of the published /openapi.json."""
    from jsonschema import Draft202012Validator

    class Schemas(dict):  # a short repr in hypothesis' falsifying examples
        def __repr__(self):
            return "<request body schemas of /openapi.json>"

    spec = client.get("/openapi.json").json()
    assert spec["openapi"].startswith("3.1")  # OpenAPI 3.1 schemas are JSON Schema 2020-12
    out = Schemas()
    for path, item in spec["paths"].items():
        if "post" in item:
            body = item["post"]["requestBody"]["content"]["application/json"]["schema"]
            out[path] = Draft202012Validator({**body, "components": spec["components"]})
    assert set(out) == {"/v1/chat/completions", "/v1/completions", "/v1/embeddings"}
    return out


USER = [{"role": "user", "content": "你好"}]


def _post(client, path, body):
    """POST ``body`` as JSON with non-ASCII escaped (\\uXXXX), as JSON encoders may send it."""
    return client.post(path, content=json.dumps(body), headers={"Content-Type": "application/json"})


PARTS = [{"type": "text", "text": "你"}, {"type": "text", "text": "好"}]
CHAT, TEXT, EMB = "/v1/chat/completions", "/v1/completions", "/v1/embeddings"
# Requests a server following OpenAI's API must refuse, field by field (the OpenAI spec's ranges and types).
INVALID = [
    (CHAT, {}), (CHAT, {"messages": []}), (CHAT, {"messages": "hi"}),
    (CHAT, {"messages": [{"role": "robot", "content": "x"}]}),
    (CHAT, {"messages": [{"content": "x"}]}),
    (CHAT, {"messages": [{"role": "user", "content": 5}]}),
    (CHAT, {"messages": [{"role": "user"}]}),
    (CHAT, {"messages": [{"role": "user", "content": None}]}),
    (CHAT, {"messages": [{"role": "user", "message": None}]}),
    (CHAT, {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]}),
    (CHAT, {"messages": [{"role": "user", "content": [{"type": "text"}]}]}),
    (CHAT, {"messages": USER, "max_tokens": "5"}), (CHAT, {"messages": USER, "max_tokens": 0}),
    (CHAT, {"messages": USER, "max_tokens": 1.5}), (CHAT, {"messages": USER, "max_completion_tokens": 0}),
    (CHAT, {"messages": USER, "temperature": -0.1}), (CHAT, {"messages": USER, "temperature": 2.01}),
    (CHAT, {"messages": USER, "top_p": 0}), (CHAT, {"messages": USER, "top_p": 1.01}),
    (CHAT, {"messages": USER, "top_k": -1}),
    (CHAT, {"messages": USER, "repetition_penalty": 0}), (CHAT, {"messages": USER, "repetition_penalty": 5e-324}),
    (CHAT, {"messages": USER, "repetition_penalty": 11}),
    (CHAT, {"messages": USER, "presence_penalty": 2.5}), (CHAT, {"messages": USER, "frequency_penalty": -2.5}),
    (CHAT, {"messages": USER, "n": 0}), (CHAT, {"messages": USER, "n": 9}),
    (CHAT, {"messages": USER, "stop": ["a", "b", "c", "d", "e"]}), (CHAT, {"messages": USER, "stop": [1]}),
    (CHAT, {"messages": USER, "stream": "yes"}), (CHAT, {"messages": USER, "stream_options": {"include_usage": 1}}),
    (CHAT, {"messages": USER, "seed": 2**63 + 1}), (CHAT, {"messages": USER, "seed": -2**63 - 1}),
    (CHAT, {"messages": USER, "seed": 1.5}), (CHAT, {"messages": USER, "temperature": True}),
    (CHAT, {"messages": USER, "logit_bias": {"x": 1}}), (CHAT, {"messages": USER, "logit_bias": {"5": 101}}),
    (CHAT, {"messages": USER, "logit_bias": {"5": "1"}}), (CHAT, {"messages": USER, "logit_bias": [5]}),
    (TEXT, {}), (TEXT, {"prompt": []}), (TEXT, {"prompt": 5}), (TEXT, {"prompt": "x", "n": 100}),
    (EMB, {}), (EMB, {"input": []}), (EMB, {"input": [[]]}), (EMB, {"input": [-1]}), (EMB, {"input": [1, "a"]}),
    (EMB, {"input": {"a": 1}}), (EMB, {"input": "x", "encoding_format": "hex"}),
    (EMB, {"input": ["x"] * 2049}),
]
# ... and requests it must answer, at the edges of the same ranges.
VALID = [
    (CHAT, {"messages": [{"role": "user", "message": "seed 002 的写法"}], "max_tokens": 2}),
    (CHAT, {"messages": [{"role": "user", "content": PARTS}], "max_tokens": 2}),
    (CHAT, {"messages": [{"role": "developer", "content": "简短"}, {"role": "user", "content": "x", "name": "a"}],
            "max_tokens": 2.0, "n": None, "stream": None, "stop": None, "user": "extra fields are ignored"}),
    (CHAT, {"messages": USER, "max_tokens": 2, "temperature": 2, "top_p": 5e-324, "top_k": 0, "n": 8,
            "seed": 2**63, "presence_penalty": -2, "frequency_penalty": 2, "repetition_penalty": 0.01}),
    (CHAT, {"messages": USER, "max_tokens": 2, "temperature": 5e-324, "seed": -2**63, "repetition_penalty": 10,
            "stop": ["a", "b", "c", "d"], "logit_bias": {"5": -100, "6": 100.0}}),
    (TEXT, {"prompt": ["a", "b"], "max_tokens": 1, "stop": "", "top_k": 10**30}),
    (EMB, {"input": [[1, 2], [3]], "encoding_format": "base64"}), (EMB, {"input": ""}),
    # JSON can escape a lone UTF-16 surrogate; no tokenizer encodes one (the old server answered 500)
    (CHAT, {"messages": [{"role": "user", "content": "a\ud800b"}], "max_tokens": 2, "stop": "\udfff"}),
    (TEXT, {"prompt": ["\ud800"], "max_tokens": 1}), (EMB, {"input": ["\udfff"]}),
]


@pytest.mark.parametrize("path,body", INVALID)
def test_schema_refuses_what_the_server_refuses(client, validators, path, body):
    r = _post(client, path, body)
    assert r.status_code == 400, r.text
    assert r.json()["error"]["type"] == "invalid_request_error"
    assert not validators[path].is_valid(body), f"/openapi.json accepts {body}, which the server refuses"


@pytest.mark.parametrize("path,body", VALID)
def test_schema_accepts_what_the_server_answers(client, validators, path, body):
    assert validators[path].is_valid(body), list(validators[path].iter_errors(body))
    r = _post(client, path, body)
    assert r.status_code == 200, r.text


# --------------------------------------------------------------------------- property: never a 5xx
def _field_schemas() -> dict:
    """The sampling fields of the chat request as its JSON schema states them (the non-null branch)."""
    from helpers.api import ChatCompletionRequest

    props = ChatCompletionRequest.model_json_schema()["properties"]
    return {k: next(b for b in v["anyOf"] if b.get("type") in ("number", "integer"))
            for k, v in props.items() if any(b.get("type") in ("number", "integer") for b in v.get("anyOf", []))}


def _from_schema(s: dict):
    """A strategy for every value of a numeric JSON schema, boundaries included."""
    lo, hi = s.get("minimum", s.get("exclusiveMinimum")), s.get("maximum", s.get("exclusiveMaximum"))
    if s["type"] == "integer":
        return st.integers(min_value=lo, max_value=hi)
    return st.floats(min_value=lo, max_value=hi, exclude_min="exclusiveMinimum" in s,
                     exclude_max="exclusiveMaximum" in s, allow_nan=False, allow_infinity=False)


FIELDS = _field_schemas()
LIMITS = ("max_tokens", "max_completion_tokens")
SAMPLING = {k: st.none() | _from_schema(s) for k, s in FIELDS.items() if k not in LIMITS}
# max_tokens: the schema's range up to 3 (long answers test nothing more; the context limit has its own tests)
SAMPLING["max_tokens"] = st.integers(min_value=FIELDS["max_tokens"].get("minimum"), max_value=3)
SAMPLING["stream"] = st.booleans()
SAMPLING["logit_bias"] = st.none() | st.dictionaries(st.integers(min_value=0).map(str),
                                                     st.floats(min_value=-100, max_value=100), max_size=3)
ANY_TEXT = st.text(st.characters(exclude_categories=()), max_size=30)  # lone surrogates too (JSON can escape them)
SAMPLING["stop"] = st.none() | ANY_TEXT | st.lists(ANY_TEXT, max_size=4)
REQUESTS = st.tuples(st.sampled_from([CHAT, TEXT]), ANY_TEXT, st.fixed_dictionaries({}, optional=SAMPLING))


def _edges(s: dict) -> list:
    """The smallest and largest values a numeric JSON schema accepts (an exclusive bound's next float)."""
    out = [s.get("minimum"), s.get("maximum")]
    if "exclusiveMinimum" in s:
        out.append(math.nextafter(s["exclusiveMinimum"], math.inf))
    if "exclusiveMaximum" in s:
        out.append(math.nextafter(s["exclusiveMaximum"], -math.inf))
    return [x for x in out if x is not None]


# always tried: every field at each edge of its published range, and the combinations that crashed the old server
EXTREMES = [{k: x} for k, s in FIELDS.items() if k not in LIMITS for x in _edges(s)]
EXTREMES += [{"temperature": 5e-324}, {"top_p": 5e-324, "temperature": 2}, {"top_k": 10**30},
             {"temperature": 1e-5, "repetition_penalty": FIELDS["repetition_penalty"].get("minimum", 5e-324),
              "presence_penalty": -2, "frequency_penalty": -2}]


def _given_with_extremes(test):
    for extra in EXTREMES:
        test = example(req=(CHAT, "你好", {"max_tokens": 2, "temperature": 1.0, **extra}))(test)
    return test


@settings(max_examples=25, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(req=REQUESTS)
@_given_with_extremes
def test_any_request_the_schema_accepts_is_answered(client, validators, req):
    path, text, sampling = req
    body = {**sampling, **({"messages": [{"role": "user", "content": text}]} if path == CHAT else {"prompt": text})}
    assert validators[path].is_valid(body)  # the strategies stay inside the published schema
    r = _post(client, path, body)
    assert r.status_code < 500, r.text
    if r.status_code == 200 and body.get("stream"):
        events = [x[len("data: "):] for x in r.text.splitlines() if x.startswith("data: ")]
        assert events[-1] == "[DONE]" and not any('"error"' in e[:12] for e in events), r.text[-500:]
    elif r.status_code == 200:
        n = body.get("n") or 1
        assert len(r.json()["choices"]) == n


# --------------------------------------------------------------------------- OpenAI's penalties
def test_presence_and_frequency_penalties_follow_openai_formula():
    """OpenAI's docs: mu[j] - c[j] * frequency_penalty - (c[j] > 0) * presence_penalty, with c[j] counting the
    tokens sampled so far (the prompt does not count). Hand-worked: prompt [0, 1], generated [2, 2, 3]."""
    import torch

    from helpers.api.engine import Penalties

    scores = torch.tensor([[1.0, 1.0, 1.0, 1.0, 1.0]])
    out = Penalties(prompt_len=2, presence=0.5, frequency=0.25)(torch.tensor([[0, 1, 2, 2, 3]]), scores.clone())
    assert out.tolist() == [[1.0, 1.0, 1.0 - 2 * 0.25 - 0.5, 1.0 - 0.25 - 0.5, 1.0]]
    negative = Penalties(prompt_len=2, presence=-2.0, frequency=0.0)(torch.tensor([[0, 1, 4]]), scores.clone())
    assert negative.tolist() == [[1.0, 1.0, 1.0, 1.0, 3.0]]


def test_penalties_reach_generation(client):
    """OpenAI's purpose for the penalties: positive values make repeating tokens less likely, negative ones more.
    Greedy answers of the tiny model, repeats counted on the re-encoded text."""
    tok = client.app.state.engine.tokenizer

    def repeats(**penalties) -> int:
        body = {"prompt": "你好", "max_tokens": 24, "temperature": 0, "repetition_penalty": 1.0, **penalties}
        ids = tok(client.post(TEXT, json=body).json()["choices"][0]["text"], add_special_tokens=False)["input_ids"]
        return len(ids) - len(set(ids))

    assert repeats(frequency_penalty=2.0, presence_penalty=2.0) < repeats() < repeats(frequency_penalty=-2.0,
                                                                                       presence_penalty=-2.0)
