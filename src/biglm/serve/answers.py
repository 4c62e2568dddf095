"""OpenAI's answers to a submitted request: the whole reply, or server-sent events as it forms; a client
that goes away (streamed or not) cancels its request, which leaves the batch at the next step.

Streaming follows the model: an autoregressive model's chunks carry its tokens as ``delta.content``; a masked
model's reply is not written left to right, so each Mask-Predict pass is a chunk with an empty delta and a
``biglm`` field (``{kind: pass, index, text, segments: [[text, is_masked], ...]}``), and the final chunk
carries the whole reply. Either way the concatenated ``delta.content`` equals the non-streamed reply (same
seed, same settings). With ``stream_options.include_usage`` a last chunk with no choices carries ``usage``.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator, Awaitable
from typing import Any, TypeVar

from starlette.requests import Request

from biglm.chat.session import Reply, ReplyUpdate
from biglm.errors import BiglmError
from biglm.serve.scheduler import ReplyHandle
from biglm.serve.validation import ApiRequest, HTTPError, cut_at_stop, stopped

T = TypeVar("T")


class ClientGone(Exception):
    """The client closed its connection before the answer: its request was cancelled."""


async def _disconnected(request: Request) -> None:
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def until_disconnect(request: Request, work: Awaitable[T], handle: ReplyHandle) -> T:
    """``work``'s result, unless the client leaves first: then ``handle`` is cancelled and ``ClientGone``."""
    task = asyncio.ensure_future(work)
    gone = asyncio.ensure_future(_disconnected(request))
    try:
        await asyncio.wait({task, gone}, return_when=asyncio.FIRST_COMPLETED)
    except asyncio.CancelledError:
        handle.cancel()
        task.cancel()
        raise
    finally:
        gone.cancel()
    if task.done():
        return task.result()
    handle.cancel()
    task.cancel()
    raise ClientGone


def worker_error(e: BiglmError) -> HTTPError:
    """A request the worker failed: the request's fault (400) unless it was an internal error (500)."""
    if isinstance(e, HTTPError):
        return e
    internal = str(e).startswith("internal error")
    return HTTPError(500 if internal else 400, str(e), "server_error" if internal else "invalid_request_error")


async def first_event(request: Request, handle: ReplyHandle) -> tuple[ReplyUpdate | Reply, AsyncIterator[Any]]:
    """The request's first event (its reply, when not streamed) and the rest; ``HTTPError`` if it failed."""
    events = handle.aevents()

    async def first() -> ReplyUpdate | Reply:
        return await events.__anext__()

    try:
        return await until_disconnect(request, first(), handle), events
    except BiglmError as e:
        raise worker_error(e) from None


def finish(reply: Reply) -> str:
    return "stop" if reply.finished else "length"


def usage(reply: Reply) -> dict[str, int]:
    n = len(reply.token_ids)
    return {"prompt_tokens": reply.prompt_tokens, "completion_tokens": n, "total_tokens": reply.prompt_tokens + n}


def new_id(chat: bool) -> str:
    return f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex[:24]}"


def response(req: ApiRequest, reply: Reply, model: str) -> dict[str, Any]:
    """OpenAI's non-streamed response body for ``reply`` (cut at the request's stop strings)."""
    reply = stopped(reply, req.stop)
    created = int(time.time())
    if req.chat:
        return {"id": new_id(True), "object": "chat.completion", "created": created, "model": model,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": reply.text},
                             "finish_reason": finish(reply)}],
                "usage": usage(reply), "biglm": {"forward_passes": reply.forward_passes,
                                                 "dropped_turns": reply.dropped_turns}}
    return {"id": new_id(False), "object": "text_completion", "created": created, "model": model,
            "choices": [{"index": 0, "text": reply.text, "finish_reason": finish(reply), "logprobs": None}],
            "usage": usage(reply)}


def chunk(ident: str, created: int, model: str, delta: dict[str, Any], finish_reason: str | None,
          chat: bool = True, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """One streamed chunk (``chat.completion.chunk``, or ``text_completion`` for ``/v1/completions``)."""
    if chat:
        choice: dict[str, Any] = {"index": 0, "delta": delta, "finish_reason": finish_reason}
        out: dict[str, Any] = {"id": ident, "object": "chat.completion.chunk", "created": created, "model": model,
                               "choices": [choice]}
    else:
        choice = {"index": 0, "text": delta.get("content", ""), "finish_reason": finish_reason, "logprobs": None}
        out = {"id": ident, "object": "text_completion", "created": created, "model": model, "choices": [choice]}
    if extra is not None:
        out["biglm"] = extra
    return out


def sse(obj: Any) -> bytes:
    return b"data: " + json.dumps(obj).encode() + b"\n\n"


async def stream(req: ApiRequest, handle: ReplyHandle, first: ReplyUpdate | Reply, events: AsyncIterator[Any],
                 model: str) -> AsyncIterator[bytes]:
    """The server-sent events of a streamed request, ending in ``data: [DONE]``; leaving early (the client
    went away: Starlette cancels this generator) cancels the request."""
    ident, created, sent = new_id(req.chat), int(time.time()), ""
    try:
        if req.chat:
            yield sse(chunk(ident, created, model, {"role": "assistant"}, None))
        item = first
        while isinstance(item, ReplyUpdate):
            delta = ""
            text = cut_at_stop(item.text, req.stop)[0]
            if item.kind == "token" and text.startswith(sent):
                delta, sent = text[len(sent):], text
            yield sse(chunk(ident, created, model, {"content": delta} if delta else {}, None, req.chat,
                            extra=None if item.kind == "token" else item.to_dict()))
            item = await events.__anext__()
        reply = stopped(item, req.stop)
        rest = reply.text[len(sent):] if reply.text.startswith(sent) else reply.text
        yield sse(chunk(ident, created, model, {"content": rest}, finish(reply), req.chat))
        if req.include_usage:
            yield sse({"id": ident, "object": "chat.completion.chunk" if req.chat else "text_completion",
                       "created": created, "model": model, "choices": [], "usage": usage(reply)})
    except BiglmError as e:  # failed in the worker after the stream began: said in the stream
        err = worker_error(e)
        yield sse(err.body())
    finally:
        handle.cancel()  # a no-op once it finished; else it leaves the batch at the next step
    yield b"data: [DONE]\n\n"


__all__ = ["ClientGone", "first_event", "response", "stream", "until_disconnect", "worker_error"]
