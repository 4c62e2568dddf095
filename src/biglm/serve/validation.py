"""A request body -> a checked ``ApiRequest`` for the scheduler, or an ``HTTPError`` with one line to answer.

Every request is validated whole here, before it is queued: the body as JSON (``biglm.textio`` rules: UTF-8,
no NaN, no unpaired surrogates, bounded nesting and integers), its fields against the pydantic models
(``biglm.serve.schemas``, strict types), the settings by ``ChatSettings.check`` and against the model
(``ChatModel.check_settings``), and the conversation by ``check_messages`` (roles, non-empty content, a user
turn last). Only tokenisation is left to the worker, per request, so a request can still fail there alone.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel, ValidationError
from starlette.types import Send

from biglm.chat.session import ChatModel, ChatSettings, Reply
from biglm.errors import BiglmError
from biglm.generate.options import ParallelOptions
from biglm.serve.scheduler import ReplyRequest
from biglm.serve.schemas import ChatCompletionRequest, CompletionRequest, GenerationFields
from biglm.textio import parse_json

CHAT_PATH, COMPLETIONS_PATH = "/v1/chat/completions", "/v1/completions"
MODELS = {CHAT_PATH: ChatCompletionRequest, COMPLETIONS_PATH: CompletionRequest}


class HTTPError(BiglmError):
    """A request refused with ``status`` and a one-line ``message`` (OpenAI's error body), and extra headers."""

    def __init__(self, status: int, message: str, kind: str = "invalid_request_error",
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.kind, self.headers = status, message, kind, dict(headers or {})

    def body(self) -> dict[str, Any]:
        return error_body(self.status, self.message, self.kind)


def error_body(status: int, message: str, kind: str = "invalid_request_error") -> dict[str, Any]:
    """OpenAI's error body."""
    return {"error": {"message": message, "type": kind, "code": status}}


async def send_json(send: Send, status: int, body: object, headers: dict[str, str] | None = None) -> None:
    """A whole JSON response through ASGI ``send`` (refusals made before any route)."""
    data = json.dumps(body).encode()
    raw = [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode())]
    raw += [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": data})


@dataclass
class ApiRequest(ReplyRequest):
    """A validated API request: what the scheduler decodes, and what the answer needs besides."""

    chat: bool = True
    """``/v1/chat/completions`` (else ``/v1/completions``)."""
    stop: list[str] = field(default_factory=list)
    """OpenAI's ``stop``: the reply ends before the first of these strings."""
    include_usage: bool = False


def one_line(error: ValidationError) -> str:
    """The first problem of a pydantic ``ValidationError`` as one line naming the field and the value."""
    problems = error.errors(include_url=False)
    first = problems[0]
    where = "".join(f"[{p}]" if isinstance(p, int) else (f".{p}" if i else str(p))
                    for i, p in enumerate(first["loc"]))
    message = str(first["msg"]).removeprefix("Value error, ")
    if first["type"] == "bool_type":
        message = "must be true or false"
    elif first["type"] == "extra_forbidden":
        message = "is not a field of this request (unknown or not supported)"
    elif message.startswith("Input should be"):
        message = "must be" + message.removeprefix("Input should be")
    elif message.startswith("Field required"):
        message = "is required"
    elif first["type"] in ("too_short", "too_long"):
        message = "must " + message.removeprefix("List should ").removeprefix("Value should ")
    shown = "" if first["type"] in ("missing", "value_error") or not where else \
        f" (got {_short(first.get('input'))})"
    more = f" (and {len(problems) - 1} more problem{'s' if len(problems) > 2 else ''})" if len(problems) > 1 else ""
    return (f"'{where}' {message}{shown}" if where else message) + more


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def request_body(raw: bytes) -> dict[str, Any]:
    """A request body as a JSON object (``biglm.textio`` rules); ``HTTPError`` 400 otherwise."""
    try:
        body = parse_json(raw or b"null", "the request body")
    except BiglmError as e:
        raise HTTPError(400, str(e)) from None
    if not isinstance(body, dict):
        raise HTTPError(400, "the request body must be a JSON object")
    return body


def validated(model: type[BaseModel], body: dict[str, Any]) -> Any:
    """``body`` as ``model`` (strict); ``HTTPError`` 400 with its first problem otherwise."""
    try:
        return model.model_validate(body, strict=True)
    except ValidationError as e:
        raise HTTPError(400, one_line(e)) from None


def settings_from(req: GenerationFields, base: ChatSettings) -> ChatSettings:
    """The request's generation settings over the server's defaults, checked (``ChatSettings.check``)."""
    changes = {name: getattr(req, key) for key, name in (
        ("max_tokens", "max_new_tokens"), ("temperature", "temperature"), ("top_p", "top_p"), ("top_k", "top_k"),
        ("seed", "seed"), ("steps", "steps"), ("strategy", "strategy"), ("length", "length"),
        *((name, name) for name in ParallelOptions.field_names())) if getattr(req, key) is not None}
    if getattr(req, "max_completion_tokens", None) is not None:
        changes["max_new_tokens"] = req.max_completion_tokens  # type: ignore[attr-defined]
    try:
        return base.updated(**changes)
    except BiglmError as e:
        raise HTTPError(400, str(e)) from None


def parse_request(chat: ChatModel, path: str, raw: bytes, model_name: str | None = None,
                  request_id: str = "") -> ApiRequest:
    """The validation of a request: its raw body to ``path`` -> an ``ApiRequest`` for the scheduler, or
    ``HTTPError`` (400; 404 for another model's name) with the line to answer."""
    req = validated(MODELS[path], request_body(raw))
    if model_name is not None and req.model is not None and req.model != model_name:
        raise HTTPError(404, f"model {_short(req.model)} is not served here (this server has {model_name!r})",
                        "model_not_found")
    settings = settings_from(req, chat.settings)
    common = {"stream": req.stream, "request_id": request_id, "stop": list(req.stop or []),
              "include_usage": bool(req.stream_options and req.stream_options.include_usage)}
    try:
        if isinstance(req, ChatCompletionRequest):
            messages = [{"role": "system" if m.role == "developer" else m.role, "content": m.content}
                        for m in req.messages]
            # roles in order, non-empty content, a user turn last; the settings against the model (no tokenizer)
            return ApiRequest(settings, messages=chat.check_request(messages, settings), chat=True, **common)
        chat.check_settings(settings)
        return ApiRequest(settings, prompt=req.prompt, chat=False, **common)
    except BiglmError as e:
        raise HTTPError(400, str(e)) from None


def cut_at_stop(text: str, stops: list[str]) -> tuple[str, bool]:
    """``text`` up to the first stop string, and whether one was found."""
    cuts = [text.index(s) for s in stops if s in text]
    return (text[:min(cuts)], True) if cuts else (text, False)


def stopped(reply: Reply, stops: list[str]) -> Reply:
    """``reply`` cut at its first stop string (then it counts as finished)."""
    text, hit = cut_at_stop(reply.text, stops)
    return dataclasses.replace(reply, text=text, finished=reply.finished or hit) if hit else reply


__all__ = ["ApiRequest", "HTTPError", "cut_at_stop", "error_body", "one_line", "parse_request", "request_body",
           "send_json", "settings_from", "stopped", "validated"]
