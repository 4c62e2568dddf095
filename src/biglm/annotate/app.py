"""The annotation page's routes, mounted on ``biglm.chat.server.ChatServer``.

``GET /`` the page; ``GET /api/state?annotator=NAME`` progress and the next pair to judge;
``POST /api/answer`` ``{annotator, pair, choice, acceptable_a, acceptable_b}`` saves one answer and returns
the new state; ``POST /api/undo`` ``{annotator}`` removes that annotator's last answer. The state is computed
from the answers file each time, so a page reloaded after a restart picks up exactly where the file is. The
page never sees which model wrote which response.
"""

from __future__ import annotations

import re
from importlib import resources
from typing import Any

from biglm.chat.server import HTTPError, Route
from biglm.errors import BiglmError

from .pairs import PairPool
from .store import Answer, AnswerStore, Conflict

NAME = re.compile(r"^[\w.@-]{1,64}$")


def annotator_of(name: Any) -> str:
    """``human:<name>`` for a page's annotator name (letters, digits, ``_.@-``; up to 64)."""
    if not isinstance(name, str) or not NAME.match(name):
        raise HTTPError(400, "annotator: give a name of 1-64 letters, digits or _ . @ - (it is saved with "
                             "every answer)")
    return f"human:{name}"


class Annotation:
    """The answers file and the pairs behind the page."""

    def __init__(self, store: AnswerStore, pool: PairPool, instructions: str = "") -> None:
        self.store, self.pool, self.instructions = store, pool, instructions

    def state(self, name: Any, undone: dict[str, Any] | None = None) -> dict[str, Any]:
        annotator = annotator_of(name)
        pairs = self.pool.snapshot()
        todo = [p for p in pairs if not self.store.answered(annotator, p.key)]
        nxt = todo[0] if todo else None
        out: dict[str, Any] = {
            "annotator": annotator, "total": self.pool.total, "sampled": len(pairs),
            "done": len(pairs) - len(todo), "sampling": self.pool.sampling, "error": self.pool.error,
            "can_undo": self.store.count(annotator) > 0, "file": str(self.store.path),
            "instructions": self.instructions,
            "pair": None if nxt is None else {"id": nxt.key, "prompt": nxt.prompt, "response_a": nxt.response_a,
                                              "response_b": nxt.response_b}}
        if undone is not None:  # the labels of the answer taken back, so the page can show them again
            out["undone"] = {k: undone.get(k) for k in ("choice", "acceptable_a", "acceptable_b")}
        return out

    def routes(self) -> dict[tuple[str, str], Route]:
        def page(body: Any, query: dict[str, str]) -> tuple[int, Any, str]:
            html = resources.files("biglm.annotate").joinpath("page.html").read_bytes()
            return 200, html, "text/html; charset=utf-8"

        def state(body: Any, query: dict[str, str]) -> tuple[int, Any, str]:
            return 200, self.state(query.get("annotator")), "application/json"

        def answer(body: dict[str, Any], query: dict[str, str]) -> tuple[int, Any, str]:
            annotator = annotator_of(body.get("annotator"))
            pair = self.pool.get(str(body.get("pair")))
            if pair is None:
                raise HTTPError(404, f"no pair {body.get('pair')!r} here (reload the page)", "not_found")
            try:
                self.store.add(annotator, pair, Answer(body.get("choice"), body.get("acceptable_a"),
                                                       body.get("acceptable_b")))
            except Conflict as e:
                raise HTTPError(409, str(e), "conflict") from None
            except BiglmError as e:
                raise HTTPError(400, str(e)) from None
            return 200, self.state(body.get("annotator")), "application/json"

        def undo(body: dict[str, Any], query: dict[str, str]) -> tuple[int, Any, str]:
            annotator = annotator_of(body.get("annotator"))
            try:
                removed = self.store.undo(annotator)
            except Conflict as e:
                raise HTTPError(409, str(e), "conflict") from None
            return 200, self.state(body.get("annotator"), undone=removed), "application/json"

        return {("GET", "/"): page, ("GET", "/index.html"): page, ("GET", "/api/state"): state,
                ("POST", "/api/answer"): answer, ("POST", "/api/undo"): undo}


__all__ = ["Annotation", "annotator_of"]
