"""What the scheduler and its steppers exchange: an admitted row, what a step did to it, the stepper protocol."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from biglm.chat.session import ChatSettings, Reply, ReplyUpdate
from biglm.errors import BiglmError


@dataclass
class Row:
    """An admitted request inside a stepper: its prompt ids (no BOS), turns dropped, and settings."""

    key: int
    prompt: list[int]
    dropped: int
    settings: ChatSettings
    stream: bool


@dataclass
class RowEvent:
    """What one step did to one row: a live update (streamed rows) and/or its finished reply."""

    key: int
    update: ReplyUpdate | None = None
    reply: Reply | None = None
    error: str | None = None


class Stepper(Protocol):
    """The continuous form of a decoder: rows join (``admit``) and leave (``drop``) between steps."""

    def admit(self, rows: Sequence[Row]) -> None: ...

    def step(self) -> list[RowEvent]:
        """One pass (or token) for every row; a row whose event carries a ``reply`` (or ``error``) is done."""
        ...

    def drop(self, key: int) -> None: ...

    def keys(self) -> list[int]:
        """The rows it holds."""
        ...

    @property
    def active(self) -> int: ...


def as_error(e: Exception) -> BiglmError:
    """``e`` as the one-line error a request fails with (its own text, or only its type when internal)."""
    return e if isinstance(e, BiglmError) else BiglmError(f"internal error: {type(e).__name__}")



__all__ = ["Row", "RowEvent", "Stepper", "as_error"]
