"""The annotation page and its API, a FastAPI router served by ``biglm.serve`` (``annotation_app``).

``GET /`` the page; ``GET /api/session`` a write token for this page (``session``) and a fresh annotator token
(``annotator_token``, kept by the page in the browser's storage unless it has one); ``GET /api/state?annotator=NAME``
progress and the next pair to judge; ``POST /api/answer`` ``{annotator, pair, choice, acceptable_a,
acceptable_b}`` saves one answer and returns the new state; ``POST /api/undo`` ``{annotator}`` removes the
caller's last answer. The page never sees which model wrote which response.

Who may write: besides ``biglm.serve.security`` (Host, Origin, JSON content type), a write needs the page's
session token in ``X-Biglm-Session`` (an HMAC of this server's secret: a page of another site cannot read it,
so cannot forge a write; after a restart the page asks for a new one) and the annotator's token in
``X-Biglm-Annotator``. The annotator is that token (its digest is saved as ``annotator_id``, the typed name as
``annotator: human:<name>``): progress and undo are per token, so undo removes only one's own answers, and
typing someone's name does not act as them. The state is computed from the answers file each time, so a page
reloaded after a restart picks up exactly where the file is.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import sys
from importlib import resources
from typing import Any

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import HTMLResponse
from pydantic import BaseModel, ConfigDict
from starlette.concurrency import run_in_threadpool

from biglm.errors import BiglmError
from biglm.serve.app import create_app, json_body
from biglm.serve.limits import Limits
from biglm.serve.security import Security
from biglm.serve.validation import HTTPError, request_body, validated

from .pairs import PairPool
from .store import Answer, AnswerStore, Conflict

NAME = re.compile(r"^[\w.@-]{1,64}$")
TOKEN = re.compile(r"^[A-Za-z0-9_-]{22,128}$")
SESSION_HEADER, ANNOTATOR_HEADER = "X-Biglm-Session", "X-Biglm-Annotator"


def annotator_of(name: Any) -> str:
    """``human:<name>`` for a page's annotator name (letters, digits, ``_.@-``; up to 64)."""
    if not isinstance(name, str) or not NAME.match(name):
        raise HTTPError(400, "annotator: give a name of 1-64 letters, digits or _ . @ - (it is saved with "
                             "every answer)")
    return f"human:{name}"


def owner_of_token(token: str | None) -> str:
    """The ``annotator_id`` of an annotator token (a digest: the file shared for training does not hold it)."""
    if token is None or not TOKEN.match(token):
        raise HTTPError(400, f"{ANNOTATOR_HEADER}: missing or not an annotator token (the page sends the one "
                        "/api/session gave it)")
    return "token:" + hashlib.sha256(token.encode()).hexdigest()[:32]


class SessionTokens:
    """Write tokens of this server process: a random nonce and its HMAC under a secret made at start."""

    def __init__(self) -> None:
        self._secret = secrets.token_bytes(32)

    def _mac(self, nonce: str) -> str:
        return hmac.new(self._secret, nonce.encode(), hashlib.sha256).hexdigest()[:32]

    def issue(self) -> str:
        nonce = secrets.token_urlsafe(16)
        return f"{nonce}.{self._mac(nonce)}"

    def valid(self, token: str | None) -> bool:
        nonce, _, mac = (token or "").partition(".")
        return bool(nonce) and hmac.compare_digest(mac.encode(), self._mac(nonce).encode())


class AnswerBody(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid")
    annotator: str
    pair: str
    choice: str
    acceptable_a: str | None = None
    acceptable_b: str | None = None


class UndoBody(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid")
    annotator: str


class Annotation:
    """The answers file and the pairs behind the page."""

    def __init__(self, store: AnswerStore, pool: PairPool, instructions: str = "") -> None:
        self.store, self.pool, self.instructions = store, pool, instructions
        self.sessions = SessionTokens()

    def state(self, name: Any, owner: str, undone: dict[str, Any] | None = None) -> dict[str, Any]:
        annotator = annotator_of(name)
        pairs = self.pool.snapshot()
        todo = [p for p in pairs if not self.store.answered(owner, p.key)]
        nxt = todo[0] if todo else None
        out: dict[str, Any] = {
            "annotator": annotator, "total": self.pool.total, "sampled": len(pairs),
            "done": len(pairs) - len(todo), "sampling": self.pool.sampling, "error": self.pool.error,
            "can_undo": self.store.count(owner) > 0, "file": str(self.store.path),
            "instructions": self.instructions,
            "pair": None if nxt is None else {"id": nxt.key, "prompt": nxt.prompt, "response_a": nxt.response_a,
                                              "response_b": nxt.response_b}}
        if undone is not None:  # the labels of the answer taken back, so the page can show them again
            out["undone"] = {k: undone.get(k) for k in ("choice", "acceptable_a", "acceptable_b")}
        return out

    async def _write(self, request: Request) -> tuple[dict[str, Any], str]:
        """The body of a write and its annotator's id, once the page's session token is checked."""
        if not self.sessions.valid(request.headers.get(SESSION_HEADER)):
            raise HTTPError(403, f"{SESSION_HEADER}: missing or not issued by this server (reload the page)",
                            "invalid_session")
        return request_body(await request.body()), owner_of_token(request.headers.get(ANNOTATOR_HEADER))

    def router(self) -> APIRouter:
        r = APIRouter()

        @r.get("/", include_in_schema=False)
        @r.get("/index.html", include_in_schema=False)
        async def page() -> HTMLResponse:
            return HTMLResponse(resources.files("biglm.annotate").joinpath("page.html").read_bytes())

        @r.get("/api/session")
        async def session() -> dict[str, str]:
            return {"session": self.sessions.issue(), "annotator_token": secrets.token_urlsafe(24)}

        @r.get("/api/state")
        async def state(request: Request, annotator: str = "") -> dict[str, Any]:
            return self.state(annotator, owner_of_token(request.headers.get(ANNOTATOR_HEADER)))

        @r.post("/api/answer", openapi_extra=json_body(AnswerBody))
        async def answer(request: Request) -> dict[str, Any]:
            raw, owner = await self._write(request)
            body = validated(AnswerBody, raw)
            annotator = annotator_of(body.annotator)
            pair = self.pool.get(body.pair)
            if pair is None:
                raise HTTPError(404, f"no pair {body.pair[:40]!r} here (reload the page)", "not_found")
            try:
                await run_in_threadpool(self.store.add, annotator, pair,  # a write and fsync: off the event loop
                                        Answer(body.choice, body.acceptable_a, body.acceptable_b), owner)
            except Conflict as e:
                raise HTTPError(409, str(e), "conflict") from None
            except BiglmError as e:
                raise HTTPError(400, str(e)) from None
            except OSError as e:  # a full disk, say: the answer was taken back; the page can retry
                print(f"biglm annotate: saving an answer failed: {e}", file=sys.stderr)
                raise HTTPError(500, f"saving the answer failed: {e}", "server_error") from None
            return self.state(body.annotator, owner)

        @r.post("/api/undo", openapi_extra=json_body(UndoBody))
        async def undo(request: Request) -> dict[str, Any]:
            raw, owner = await self._write(request)
            body = validated(UndoBody, raw)
            annotator = annotator_of(body.annotator)
            try:
                removed = await run_in_threadpool(self.store.undo, owner, annotator)
            except Conflict as e:
                raise HTTPError(409, str(e), "conflict") from None
            except OSError as e:
                raise HTTPError(500, f"undoing the answer failed: {e}", "server_error") from None
            return self.state(body.annotator, owner, undone=removed)

        return r


def annotation_app(annotation: Annotation, security: Security | None = None, limits: Limits | None = None) -> FastAPI:
    """The annotation page's app: the router on ``biglm.serve``'s stack (no model API)."""
    return create_app(None, security=security, limits=limits, routers=[annotation.router()],
                      schemas=[AnswerBody, UndoBody], title="biglm annotate")


__all__ = ["Annotation", "SessionTokens", "annotation_app", "annotator_of", "owner_of_token"]
