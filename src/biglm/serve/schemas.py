"""The API's request and response bodies as pydantic models, mirroring OpenAI's chat completions and completions.

Types are strict (``"stream": "no"`` and ``"max_tokens": "4"`` are refused, not converted) and unknown fields
are refused, as OpenAI does. A message's ``content`` is a string or OpenAI's list of content parts (text parts
are joined; other part types are refused). The values of the generation settings (temperature, top_p, top_k,
seed, max_tokens, steps, the parallel strategies' block_size, commit, cache ...) are checked by
``ChatSettings.check`` and ``ChatModel.check_settings``, the same checks ``biglm chat`` and ``biglm generate``
apply (the engine's own, for the strategies' options); the schema states the same bounds for clients
(``TEMPERATURE_RANGE``, ``SEED_RANGE``). Strings reach these models through ``biglm.textio.parse_json``, which
refuses unpaired surrogates, NaN, over-deep nesting and oversized integers first.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, WithJsonSchema, create_model, model_validator

from biglm.generate.options import field_help, field_types
from biglm.generate.sampling import SEED_RANGE, TEMPERATURE_RANGE

STRICT = ConfigDict(strict=True, extra="forbid", allow_inf_nan=False)
MAX_STOPS = 4


def _content(value: Any) -> Any:
    """A message's content: a string, or the text of a list of text parts (joined by newlines)."""
    if isinstance(value, str):
        return value
    if not isinstance(value, list):
        raise ValueError("must be a string or a list of content parts ({type: text, text})")
    texts = []
    for i, part in enumerate(value):
        kind = part.get("type") if isinstance(part, dict) else None
        if kind != "text":
            raise ValueError(f"content part {i} has type {str(kind)[:40]!r}; this model reads text parts only "
                             "({type: text, text})")
        if not isinstance(part.get("text"), str) or set(part) - {"type", "text"}:
            raise ValueError(f"content part {i} must be {{type: text, text: a string}}")
        texts.append(part["text"])
    return "\n".join(texts)


def _stops(value: Any) -> Any:
    """OpenAI's ``stop``: a string or a list of up to 4 non-empty strings, as a list."""
    stops = [value] if isinstance(value, str) else value
    if not isinstance(stops, list) or len(stops) > MAX_STOPS or not all(isinstance(s, str) and s for s in stops):
        raise ValueError(f"must be a non-empty string or a list of up to {MAX_STOPS} of them")
    return stops


def _prompt(value: Any) -> Any:
    """A completion's ``prompt``: a non-empty string, or a list of one."""
    if isinstance(value, list) and len(value) == 1:
        value = value[0]
    if not isinstance(value, str) or not value.strip():
        raise ValueError("must be a non-empty string (or a list of one)")
    return value


TEXT_PART = {"type": "object", "properties": {"type": {"const": "text"}, "text": {"type": "string"}},
             "required": ["type", "text"], "additionalProperties": False}
Content = Annotated[str, BeforeValidator(_content), WithJsonSchema(
    {"anyOf": [{"type": "string"}, {"type": "array", "items": TEXT_PART}], "title": "Content"})]
Stops = Annotated[list[str], BeforeValidator(_stops), WithJsonSchema(
    {"anyOf": [{"type": "string", "minLength": 1},
               {"type": "array", "items": {"type": "string", "minLength": 1}, "maxItems": MAX_STOPS}],
     "title": "Stop"})]
Prompt = Annotated[str, BeforeValidator(_prompt), WithJsonSchema(
    {"anyOf": [{"type": "string", "pattern": r"\S"},
               {"type": "array", "items": {"type": "string", "pattern": r"\S"}, "minItems": 1, "maxItems": 1}],
     "title": "Prompt"})]

# The bounds biglm's own checks enforce (``ChatSettings.check``), stated for clients.
Temperature = Annotated[float, WithJsonSchema(
    {"anyOf": [{"const": 0}, {"type": "number", "minimum": TEMPERATURE_RANGE[0], "maximum": TEMPERATURE_RANGE[1]}],
     "title": "Temperature", "description": "0 = greedy"})]
TopP = Annotated[float, WithJsonSchema({"type": "number", "exclusiveMinimum": 0, "maximum": 1, "title": "Top P"})]
TopK = Annotated[int, WithJsonSchema({"type": "integer", "minimum": 0, "title": "Top K", "description": "0 = all"})]
Seed = Annotated[int, WithJsonSchema({"type": "integer", "minimum": SEED_RANGE[0], "maximum": SEED_RANGE[1],
                                      "title": "Seed"})]
Positive = Annotated[int, WithJsonSchema({"type": "integer", "minimum": 1})]
Zero = Annotated[float, WithJsonSchema({"const": 0})]  # accepted as OpenAI's defaults, nothing else


class StreamOptions(BaseModel):
    model_config = STRICT
    include_usage: bool = False
    """Send a last chunk with ``usage`` (and no choices) before ``[DONE]``."""


class ChatMessage(BaseModel):
    """One turn. OpenAI's ``developer`` role is a system message."""

    model_config = STRICT
    role: Literal["system", "developer", "user", "assistant"]
    content: Content
    name: str | None = None
    # Keys the openai client writes when a reply message is sent back as history: accepted when empty.
    refusal: None = None
    tool_calls: Annotated[list[Any], Field(max_length=0)] | None = None
    function_call: None = None
    audio: None = None
    annotations: list[Any] | None = None


ParallelFields: Any = create_model(
    "ParallelFields", __config__=STRICT, __doc__="The parallel strategies' options (masked models), one field per "
    "field of ``biglm.generate.options.ParallelOptions``; null: the strategy's default.",
    **{name: (kind | None, Field(None, description=field_help(name))) for name, kind in field_types().items()})
"""One request field per ``ParallelOptions`` field, built from it (types and descriptions); the values are the
engine's to check (``ChatModel.check_settings``)."""


class GenerationFields(ParallelFields):
    """The fields both endpoints share: OpenAI's sampling options and biglm's own (steps, strategy, length, and the
    parallel strategies' options of ``ParallelFields``)."""

    model_config = STRICT
    model: str | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    max_tokens: Positive | None = None
    temperature: Temperature | None = None
    top_p: TopP | None = None
    top_k: TopK | None = None
    seed: Seed | None = None
    stop: Stops | None = None
    n: Literal[1] | None = None
    user: str | None = None
    frequency_penalty: Zero | None = None
    presence_penalty: Zero | None = None
    steps: Positive | None = Field(None, description="Mask-Predict passes (masked models)")
    strategy: str | None = Field(None, description="decoding strategy (biglm.generate.strategies)")
    length: Literal["predict", "fixed"] | None = Field(
        None, description="masked models: the length head's candidates (predict) or max_tokens cut at EOS (fixed)")

    @model_validator(mode="after")
    def _supported(self) -> GenerationFields:
        if self.stream_options is not None and not self.stream:
            raise ValueError("'stream_options' goes with stream: true")
        for name in ("frequency_penalty", "presence_penalty"):
            if getattr(self, name):
                raise ValueError(f"'{name}' is not supported (only 0)")
        return self


class ChatCompletionRequest(GenerationFields):
    messages: Annotated[list[ChatMessage], Field(min_length=1)]
    max_completion_tokens: Positive | None = None
    logprobs: bool | None = None
    top_logprobs: Annotated[int, WithJsonSchema({"const": 0})] | None = None

    @model_validator(mode="after")
    def _chat_supported(self) -> ChatCompletionRequest:
        if self.logprobs or self.top_logprobs:
            raise ValueError("'logprobs' is not supported (score with `biglm evaluate` instead)")
        if None not in (self.max_tokens, self.max_completion_tokens) and self.max_tokens != self.max_completion_tokens:
            raise ValueError("'max_tokens' and 'max_completion_tokens' differ; give one")
        return self


class CompletionRequest(GenerationFields):
    prompt: Prompt
    logprobs: Annotated[int, WithJsonSchema({"const": 0})] | None = None
    echo: bool | None = None
    best_of: Literal[1] | None = None
    suffix: None = None

    @model_validator(mode="after")
    def _completion_supported(self) -> CompletionRequest:
        if self.logprobs or self.echo:
            raise ValueError("'logprobs' and 'echo' are not supported (score with `biglm evaluate` instead)")
        return self


# ---- responses --------------------------------------------------------------------------------------------

class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class ReplyMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str


class ChatChoice(BaseModel):
    index: int = 0
    message: ReplyMessage
    finish_reason: Literal["stop", "length"]


class BiglmReplyInfo(BaseModel):
    forward_passes: int
    dropped_turns: int


class ChatCompletion(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[ChatChoice]
    usage: Usage
    biglm: BiglmReplyInfo


class CompletionChoice(BaseModel):
    index: int = 0
    text: str
    finish_reason: Literal["stop", "length"]
    logprobs: None = None


class Completion(BaseModel):
    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: Usage


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int = 0
    owned_by: str = "biglm"
    family: str


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class ErrorDetail(BaseModel):
    message: str
    type: str
    code: int | str | None = None


class ErrorBody(BaseModel):
    """OpenAI's error body: every refusal (4xx, 503) has this shape."""

    error: ErrorDetail


class Health(BaseModel):
    status: Literal["ok"] = "ok"
    waiting: int = Field(0, description="requests in the queue")
    active: int = Field(0, description="requests being decoded")


__all__ = ["ChatCompletion", "ChatCompletionRequest", "ChatMessage", "Completion", "CompletionRequest",
           "ErrorBody", "GenerationFields", "Health", "ModelList", "StreamOptions", "Usage"]
