"""What one client may cost the server, enforced by the server stack (uvicorn, h11, Starlette).

- request body: at most ``max_body`` bytes (``BodyGuard``): a larger ``Content-Length`` is refused before the
  body is read, a chunked body as soon as it passes the limit; 413, and the connection is closed. A malformed
  ``Content-Length`` (``-1``, two values) is refused by h11 before the app sees the request (400).
- request head: at most ``max_head`` bytes (h11), and sent within ``head_timeout`` seconds of the connection
  opening, or of the first byte of a later request on it (``DeadlineH11Protocol``): a silent or slow-loris
  connection is closed instead of being held.
- request body pace: each piece within ``body_timeout`` seconds (``BodyGuard``; 408).
- idle keep-alive connections: closed after ``keep_alive`` seconds (uvicorn).
- connections at once: ``max_connections`` (uvicorn's ``limit_concurrency``): more are answered 503, not reset.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

import h11
import uvicorn
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from uvicorn.protocols.http.h11_impl import H11Protocol

from biglm.serve.validation import error_body, send_json


@dataclass(frozen=True)
class Limits:
    """The limits of one server (see the module docstring)."""

    max_body: int = 1 << 20
    max_head: int = 16 * 1024
    head_timeout: float = 10.0
    body_timeout: float = 10.0
    keep_alive: float = 5.0
    max_connections: int = 256


class DeadlineH11Protocol(H11Protocol):
    """uvicorn's h11 protocol with a deadline for each request's head (``head_timeout``, set by ``protocol``)."""

    head_timeout = 10.0

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._deadline: asyncio.TimerHandle | None = self.loop.call_later(self.head_timeout, self._late)

    def data_received(self, data: bytes) -> None:
        if self._deadline is None and self.conn.their_state is h11.IDLE:  # a later request's head begins
            self._deadline = self.loop.call_later(self.head_timeout, self._late)
        super().data_received(data)
        if self._deadline is not None and self.conn.their_state is not h11.IDLE:  # the whole head arrived
            self._deadline.cancel()
            self._deadline = None

    def connection_lost(self, exc: Exception | None) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None
        super().connection_lost(exc)

    def _late(self) -> None:
        self._deadline = None
        if self.conn.their_state is h11.IDLE and not self.transport.is_closing():
            self.transport.close()


def protocol(limits: Limits) -> type[H11Protocol]:
    """The h11 protocol class uvicorn runs with ``limits``' head deadline."""
    return type("BiglmH11Protocol", (DeadlineH11Protocol,), {"head_timeout": limits.head_timeout})


class BodyTimeout(HTTPException):
    def __init__(self, seconds: float) -> None:
        super().__init__(408, f"the request body stalled: no data for {seconds:g} s")


class BodyTooLarge(HTTPException):
    def __init__(self, limit: int) -> None:
        super().__init__(413, f"the request body is larger than {limit} bytes")


class BodyGuard:
    """ASGI middleware: a body over ``max_body`` bytes is refused (413): unread when its ``Content-Length`` says
    so, as soon as it passes the limit when chunked; each piece of a body must arrive within ``timeout`` seconds
    (else 408). The route reading the body gets the refusal as an ``HTTPException``."""

    def __init__(self, app: ASGIApp, limits: Limits) -> None:
        self.app, self.max_body, self.timeout = app, limits.max_body, limits.body_timeout

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = Headers(scope=scope).get("content-length", "0")
        if declared.isdigit() and int(declared) > self.max_body:
            message = f"the request body is larger than {self.max_body} bytes ({declared} declared)"
            await send_json(send, 413, error_body(413, message, "request_too_large"), {"Connection": "close"})
            return
        body_done, size = False, 0

        async def guarded() -> Message:
            nonlocal body_done, size
            if body_done:  # after the body: waiting for a disconnect is not timed
                return await receive()
            try:
                message = await asyncio.wait_for(receive(), self.timeout)
            except TimeoutError:
                raise BodyTimeout(self.timeout) from None
            size += len(message.get("body", b""))
            if size > self.max_body:
                raise BodyTooLarge(self.max_body)
            body_done = message["type"] != "http.request" or not message.get("more_body", False)
            return message

        await self.app(scope, guarded, send)


def uvicorn_config(app: Any, limits: Limits, **extra: Any) -> Any:
    """A ``uvicorn.Config`` for ``app`` under ``limits``: h11 with the head deadline, no logging config of its
    own (biglm's request log replaces uvicorn's access log), no trust in proxy headers."""
    return uvicorn.Config(app, http=protocol(limits), lifespan="on", access_log=False, log_config=None,
                          timeout_keep_alive=limits.keep_alive, limit_concurrency=limits.max_connections,  # type: ignore[arg-type]
                          h11_max_incomplete_event_size=limits.max_head, proxy_headers=False, server_header=False,
                          timeout_graceful_shutdown=5, **extra)


__all__ = ["BodyGuard", "BodyTimeout", "BodyTooLarge", "DeadlineH11Protocol", "Limits", "protocol", "uvicorn_config"]
