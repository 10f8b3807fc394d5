"""The OpenAI wire format of the course server: request models, response types and errors.

Every per-field rule the server enforces (types, ranges, enums, lengths) is written IN the request models, so
``/openapi.json`` states it and a client generated from that schema sends nothing the server refuses. What no
JSON schema can state is checked by the server and documented in the field descriptions: the order of the
chat messages, and that the prompt plus ``max_tokens`` must fit the model's context (400,
``context_length_exceeded``). Responses are the ``openai`` package's own types.
"""
from __future__ import annotations

from typing import Annotated, Literal

# the response types, imported from here by the rest of the package (one place for the OpenAI shapes)
from openai.types import (Completion, CompletionChoice, CompletionUsage, CreateEmbeddingResponse,  # noqa: F401
                          Embedding, Model)
from openai.types.chat import ChatCompletion, ChatCompletionChunk  # noqa: F401
from openai.types.shared import ErrorObject
from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, StringConstraints

MAX_N = 8  # choices per prompt
MAX_STOP = 4  # OpenAI: "up to 4 sequences"
MAX_EMBEDDING_INPUTS = 2048  # OpenAI's limit on the inputs of one embeddings request
# OpenAI's spec: seed is a signed 64-bit integer. The top is 2**63, not 2**63 - 1: /openapi.json writes bounds as
# floats, and 2**63 - 1 is no float (it would be published as 2**63, one more than the server took)
SEED_RANGE = (-2**63, 2**63)
GREEDY_BELOW = 1e-5  # a temperature below this samples greedily (as vLLM does): 1/t would overflow the logits
Role = Literal["system", "developer", "user", "assistant"]


def _whole_number(value):
    # JSON Schema counts 5.0 as an integer; strict pydantic would refuse it, so take it as 5
    return int(value) if isinstance(value, float) and value.is_integer() else value


def _int(**bounds) -> type:
    # the bounds go inside, before the validator: a Field(ge=...) around it would reach the schema as "ge", which
    # JSON Schema does not know (so the published schema would not bound the field)
    return Annotated[int, Field(**bounds), BeforeValidator(_whole_number)]


def _well_formed(text: str) -> str:
    # JSON may escape a lone UTF-16 surrogate ("\ud800"), which no tokenizer can encode: it becomes U+FFFD
    return text.encode("utf-8", "surrogatepass").decode("utf-8", "replace")


Text = Annotated[str, AfterValidator(_well_formed)]
PositiveInt = _int(ge=1)
NonNegativeInt = _int(ge=0)
ChoiceCount = _int(ge=1, le=MAX_N)
Seed = _int(ge=SEED_RANGE[0], le=SEED_RANGE[1])
TokenKey = Annotated[str, StringConstraints(pattern=r"^[0-9]+$")]
# OpenAI's logit_bias: {"<token id>": bias in -100..100}; additionalProperties false, or the schema would let any key by
LogitBias = Annotated[dict[TokenKey, Annotated[float, Field(ge=-100, le=100)]],
                      Field(json_schema_extra={"additionalProperties": False})]


# --------------------------------------------------------------------------- requests
class _Request(BaseModel):
    # strict: "max_tokens": "5" is a wrong type (400), never converted; unknown fields (user, logit_bias, ...) ignored
    model_config = ConfigDict(strict=True, extra="allow", allow_inf_nan=False)


class TextPart(_Request):
    """A text part of a message's ``content`` (the only part type this server reads)."""

    type: Literal["text"]
    text: Text


class ChatMessage(_Request):
    """One chat message: ``content`` (a string or text parts), or the seed's ``message`` field instead."""

    model_config = ConfigDict(json_schema_extra={"anyOf": [
        {"required": ["content"], "properties": {"content": {"type": ["string", "array"]}}},
        {"required": ["message"], "properties": {"message": {"type": "string"}}}]})

    role: Role = Field(description="'developer' counts as 'system'")
    content: Text | list[TextPart] | None = None
    message: Text | None = Field(None, description="the seed's curl example sends 'message' instead of 'content'")


class StreamOptions(_Request):
    include_usage: bool | None = Field(None, description="send a last chunk with the usage and no choices")


class SamplingRequest(_Request):
    """The fields that chat and text completions share."""

    model: str | None = Field(None, description="ignored: the server has one model")
    max_tokens: PositiveInt | None = Field(None, description="default 128; prompt + max_tokens must fit the model's "
                                                          "context (else 400 context_length_exceeded)")
    max_completion_tokens: PositiveInt | None = Field(None, description="used when max_tokens is not given")
    temperature: float | None = Field(None, ge=0, le=2, description=f"0 (or below {GREEDY_BELOW}) = greedy")
    top_p: float | None = Field(None, gt=0, le=1)
    top_k: NonNegativeInt | None = Field(None, description="not an OpenAI field; 0 = off")
    repetition_penalty: float | None = Field(None, ge=0.01, le=10,
                                             description="not an OpenAI field (transformers'); 1 = off")
    presence_penalty: float | None = Field(None, ge=-2, le=2)
    frequency_penalty: float | None = Field(None, ge=-2, le=2)
    logit_bias: LogitBias | None = Field(None, description="added to the logits of those token ids (of this "
                                                           "model's tokenizer): -100 bans a token, 100 forces it")
    n: ChoiceCount | None = Field(1, description="choices per prompt")
    stop: Text | Annotated[list[Text], Field(max_length=MAX_STOP)] | None = None
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    seed: Seed | None = Field(None, description="same seed and request -> same choices; the n choices differ")


class ChatCompletionRequest(SamplingRequest):
    messages: list[ChatMessage] = Field(min_length=1, description=(
        "an optional first system message, then user/assistant turns alternating, ending with a user message"))


class CompletionRequest(SamplingRequest):
    prompt: Text | Annotated[list[Text], Field(min_length=1)]


class EmbeddingRequest(_Request):
    model: str | None = None
    input: (Text | Annotated[list[Text], Field(min_length=1, max_length=MAX_EMBEDDING_INPUTS)]
            | Annotated[list[NonNegativeInt], Field(min_length=1)]
            | Annotated[list[Annotated[list[NonNegativeInt], Field(min_length=1)]],
                        Field(min_length=1, max_length=MAX_EMBEDDING_INPUTS)]) = Field(
        description="text(s) or token id list(s); each must fit the model's context and ids its vocabulary")
    encoding_format: Literal["float", "base64"] = "float"


FIELD_NAMES = frozenset().union(*(m.model_fields for m in (ChatCompletionRequest, CompletionRequest,
                                                           EmbeddingRequest, ChatMessage, StreamOptions, TextPart)))


# --------------------------------------------------------------------------- responses (the openai package's types)
class ModelList(BaseModel):
    """``GET /v1/models`` (the openai package pages this list but ships no type for it)."""

    object: Literal["list"] = "list"
    data: list[Model]


class CompletionChunkChoice(CompletionChoice):
    """A choice of a streamed text completion: no finish_reason until its last chunk."""

    finish_reason: Literal["stop", "length", "content_filter"] | None = None


class CompletionChunk(Completion):
    """A streamed text completion: ``Completion`` objects whose choices have no finish_reason until their end."""

    choices: list[CompletionChunkChoice]


class EmbeddingData(Embedding):
    embedding: list[float] | str = Field(description="floats, or base64 of little-endian float32 when asked for")


class EmbeddingResponse(CreateEmbeddingResponse):
    data: list[EmbeddingData]


class Health(BaseModel):
    """``GET /health``: counters of generation requests, finished and cancelled choices, errors."""

    status: Literal["ok"] = "ok"
    model: str
    context_length: int
    requests: int
    completed: int
    cancelled: int
    errors: int
    last_tokens: int = Field(description="tokens generated by the last finished or cancelled choice")


class ErrorResponse(BaseModel):
    error: ErrorObject


class APIError(Exception):
    """An OpenAI-style error: HTTP status and the body ``{"error": {"message", "type", "param", "code"}}``."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None,
                 type: str = "invalid_request_error"):
        super().__init__(message)
        self.status = status
        self.error = ErrorObject(message=message, type=type, param=param, code=code)

    def body(self) -> dict:
        """Returns the JSON body."""
        return ErrorResponse(error=self.error).model_dump(mode="json", exclude_unset=True)

