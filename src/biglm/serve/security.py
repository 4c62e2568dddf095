"""Who may talk to the server: the bind address, the API key, the Host and Origin checks, JSON-only writes.

``Security`` is the policy, ``Guard`` the ASGI middleware that applies it to every request before any route:

- **Host** (DNS rebinding: a hostile page whose name resolves to 127.0.0.1 talks to the server as same-origin):
  the ``Host`` header must name this server: an IP address (a rebinding needs a name), ``localhost``, the bound
  name, this machine's hostname, or an ``--allow-host`` entry; else 400.
- **Origin** (a browser page of another site): a request that carries ``Origin`` must come from the server's
  own origin (``http://`` + its ``Host``) or an ``--allow-origin`` entry; else 403. Allowed extra origins get
  CORS answers (preflight included) from Starlette's ``CORSMiddleware``.
- **Content type**: a ``POST`` must be ``application/json`` (a form or ``text/plain`` post, which browsers send
  cross-site without asking, is 415).
- **API key** (``--api-key`` or ``BIGLM_API_KEY``): when set, ``/v1/...`` and ``/metrics`` need
  ``Authorization: Bearer KEY`` (compared in constant time); else 401.

``exposure_warning`` is the loud line for a non-loopback bind without a key.
"""

from __future__ import annotations

import hmac
import ipaddress
import os
import socket
from collections.abc import Sequence
from dataclasses import dataclass, field

from starlette.datastructures import Headers
from starlette.types import ASGIApp, Receive, Scope, Send

from biglm.serve.validation import error_body, send_json

API_KEY_ENV = "BIGLM_API_KEY"
LOCAL_NAMES = ("localhost", "localhost.localdomain", "ip6-localhost")
WRITES = ("POST", "PUT", "PATCH", "DELETE")


def is_loopback(host: str) -> bool:
    """Whether ``host`` (an address or a name) is only reachable from this machine."""
    if host.lower() in LOCAL_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def exposure_warning(host: str, api_key: str | None, what: str = "the model") -> str | None:
    """The loud line for binding ``host`` (not loopback) without an API key; None when there is nothing to say."""
    if is_loopback(host) or api_key:
        return None
    return (f"WARNING: listening on {host}, not loopback, without an API key: anyone who can reach this machine "
            f"can use {what}. Set --api-key KEY (or {API_KEY_ENV}), or bind 127.0.0.1 (see docs/how-to/serve.md: "
            "exposing the server to colleagues)")


def host_name(host_header: str) -> str:
    """The name part of a ``Host`` header (``[::1]:8000`` -> ``::1``, ``example:80`` -> ``example``)."""
    h = host_header.strip().lower()
    if h.startswith("["):
        return h[1:h.find("]")] if "]" in h else h
    return h.rsplit(":", 1)[0] if h.count(":") == 1 else h


def _is_ip(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
        return True
    except ValueError:
        return False


@dataclass
class Security:
    """The access policy of one server (see the module docstring)."""

    bound_host: str = "127.0.0.1"
    api_key: str | None = None
    allow_origins: Sequence[str] = ()
    """Origins (``scheme://host[:port]``) besides the server's own whose pages may call it; ``*`` for any."""
    allow_hosts: Sequence[str] = ()
    """``Host`` names besides this machine's (``*`` for any: only behind a proxy that checks them)."""
    protected: Sequence[str] = ("/v1/", "/metrics")
    """Path prefixes that need the API key when one is set."""
    _names: set[str] = field(default_factory=set, init=False, repr=False)

    def __post_init__(self) -> None:
        self.allow_origins = tuple(o.rstrip("/").lower() for o in self.allow_origins)
        names = {*LOCAL_NAMES, self.bound_host.lower().strip("[]"), *(h.lower() for h in self.allow_hosts)}
        if not is_loopback(self.bound_host):  # reached by colleagues under this machine's names
            names |= {socket.gethostname().lower(), socket.getfqdn().lower()}
        self._names = names

    def host_allowed(self, host_header: str | None) -> bool:
        if host_header is None:  # HTTP/1.0 without Host: no browser sends that
            return True
        name = host_name(host_header)
        return _is_ip(name) or name in self._names or "*" in self._names

    def origin_allowed(self, origin: str, scheme: str, host_header: str | None) -> bool:
        origin = origin.rstrip("/").lower()
        own = host_header is not None and origin == f"{scheme}://{host_header.strip().lower()}"
        return own or origin in self.allow_origins or "*" in self.allow_origins

    def key_ok(self, authorization: str | None) -> bool:
        if not self.api_key:
            return True
        scheme, _, token = (authorization or "").partition(" ")
        return scheme.lower() == "bearer" and hmac.compare_digest(token.strip().encode(), self.api_key.encode())

    def needs_key(self, path: str) -> bool:
        return bool(self.api_key) and any(path == p.rstrip("/") or path.startswith(p) for p in self.protected)

    def refusal(self, scope: Scope) -> tuple[int, str, str, dict[str, str]] | None:
        """Why this request is refused (status, message, error type, headers), or None when it may go on."""
        headers = Headers(scope=scope)
        host, origin, method = headers.get("host"), headers.get("origin"), scope["method"]
        if not self.host_allowed(host):
            return (400, f"Host {host!r} is not this server (a page under another name, e.g. DNS rebinding); "
                    "start the server with --allow-host NAME to allow it", "invalid_host", {})
        if origin is not None and not self.origin_allowed(origin, scope.get("scheme", "http"), host):
            return (403, f"requests from the page of {origin[:80]!r} are not allowed; start the server with "
                    "--allow-origin ORIGIN to allow that site", "forbidden_origin", {})
        if method == "OPTIONS":  # a CORS preflight of an allowed origin: CORSMiddleware answers it
            return None
        if method in WRITES:
            kind = headers.get("content-type", "").split(";")[0].strip().lower()
            if kind != "application/json":
                return (415, f"Content-Type {kind or 'missing'!r}: this API takes application/json",
                        "invalid_request_error", {})
        if self.needs_key(scope["path"]) and not self.key_ok(headers.get("authorization")):
            return (401, "missing or wrong API key: send Authorization: Bearer KEY", "invalid_api_key",
                    {"WWW-Authenticate": "Bearer"})
        return None


class Guard:
    """ASGI middleware applying ``Security`` before any route (OpenAI's error body on refusal)."""

    def __init__(self, app: ASGIApp, security: Security) -> None:
        self.app, self.security = app, security

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        refused = self.security.refusal(scope)
        if refused is None:
            await self.app(scope, receive, send)
            return
        status, message, kind, extra = refused
        await send_json(send, status, error_body(status, message, kind), {**extra, "Connection": "close"})


def api_key_from(value: str | None) -> str | None:
    """``--api-key`` or else ``BIGLM_API_KEY`` (empty: none)."""
    return value or os.environ.get(API_KEY_ENV) or None


__all__ = ["API_KEY_ENV", "Guard", "Security", "api_key_from", "exposure_warning", "host_name", "is_loopback"]
