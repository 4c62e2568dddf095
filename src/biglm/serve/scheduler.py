"""One worker thread owns the model and decodes every request: a bounded queue, continuous batching, cancellation.

``Scheduler.submit(ReplyRequest)`` returns a ``ReplyHandle`` at once (or raises ``Overloaded`` when the queue is
full: the server answers 503 with ``Retry-After``). The worker loop, each tick:

1. drops the rows whose handles were cancelled (a client that left, streamed or not);
2. admits waiting requests while fewer than ``max_batch`` rows decode: each is tokenised here, alone, so a
   request that fails (on any error) fails by itself; it joins the stepper of its ``batch_key``;
3. runs one ``step()`` of each stepper that has rows: one Mask-Predict pass, or one token, for all its rows.

A stepper (``Stepper``) is the continuous form of a decoder, chosen by the model family's decoder
(``STEPPERS[Family.decoder]``); a family whose decoder has no stepper is served by ``WholeStepper``, which
decodes the rows it admitted in one call of ``ChatModel.complete_ids`` (requests join between batches, not
within one).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import queue
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable, Hashable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from biglm.chat.session import ChatModel, ChatSettings, Reply, ReplyUpdate
from biglm.errors import BiglmError
from biglm.families import get_family
from biglm.serve.rows import Row, RowEvent, Stepper, as_error
from biglm.serve.steppers.autoregressive import ARStepper, GLMStepper
from biglm.serve.steppers.masked import MaskedStepper


class Overloaded(BiglmError):
    """The queue is full: the request was not taken (answer 503 with ``Retry-After: retry_after``)."""

    def __init__(self, message: str, retry_after: int = 1) -> None:
        super().__init__(message)
        self.retry_after = retry_after


@dataclass
class ReplyRequest:
    """One validated request: a conversation (``messages``) or a plain continuation (``prompt``)."""

    settings: ChatSettings
    messages: list[dict[str, Any]] | None = None
    prompt: str | None = None
    stream: bool = False
    request_id: str = ""


def whole_batch_key(row_settings: ChatSettings, stream: bool, key: int) -> Hashable:
    """Rows ``WholeStepper`` decodes together: same settings, not streamed (a streamed row decodes alone)."""
    return (dataclasses.astuple(row_settings), key if stream else None)


class WholeStepper:
    """Decodes the rows it admitted in one ``ChatModel.complete_ids`` call (the first row's updates stream)."""

    batch_key = staticmethod(whole_batch_key)

    def __init__(self, chat: ChatModel) -> None:
        self.chat = chat
        self.rows: list[Row] = []

    @property
    def active(self) -> int:
        return len(self.rows)

    def admit(self, rows: Sequence[Row]) -> None:
        self.rows.extend(rows)

    def drop(self, key: int) -> None:
        self.rows = [r for r in self.rows if r.key != key]

    def keys(self) -> list[int]:
        return [r.key for r in self.rows]

    def step(self) -> list[RowEvent]:
        rows, self.rows = self.rows, []
        if not rows:
            return []
        updates: list[RowEvent] = []
        first = rows[0]
        on_update = (lambda u: updates.append(RowEvent(first.key, update=u))) if first.stream else None
        replies = self.chat.complete_ids([(r.prompt, r.dropped) for r in rows], first.settings, on_update)
        return updates + [RowEvent(r.key, reply=reply) for r, reply in zip(rows, replies)]


STEPPERS: dict[str, Callable[[ChatModel], Any]] = {
    "mask-predict": MaskedStepper,
    "autoregressive": ARStepper,
    "blank-infilling": GLMStepper,
}
"""``Family.decoder`` -> the stepper class that decodes it continuously (``WholeStepper`` otherwise)."""


class ReplyHandle:
    """A submitted request: its events (``ReplyUpdate`` while it forms, then the ``Reply``), cancellation."""

    def __init__(self, request: ReplyRequest, key: int, loop: asyncio.AbstractEventLoop | None) -> None:
        self.request, self.key = request, key
        self.submitted = time.monotonic()
        self.finished_at: float | None = None
        self._events: queue.Queue[Any] = queue.Queue()
        self._loop = loop
        self._aevents: asyncio.Queue[Any] | None = asyncio.Queue() if loop is not None else None
        self._cancelled = threading.Event()

    def cancel(self) -> None:
        """Leave the batch at the next step (the client went away)."""
        self._cancelled.set()

    @property
    def cancelled(self) -> bool:
        return self._cancelled.is_set()

    def _put(self, item: Any) -> None:
        self._events.put(item)
        if self._loop is not None and self._aevents is not None:
            with contextlib.suppress(RuntimeError):  # the event loop closed: nobody is listening
                self._loop.call_soon_threadsafe(self._aevents.put_nowait, item)

    def events(self, timeout: float | None = None) -> Iterator[ReplyUpdate | Reply]:
        """Updates as they come, then the reply; ``BiglmError`` if the request failed."""
        while True:
            item = self._events.get(timeout=timeout)
            yield from self._unpack(item)
            if not isinstance(item, ReplyUpdate):
                return

    async def aevents(self) -> AsyncIterator[ReplyUpdate | Reply]:
        """``events`` for the event loop the handle was submitted from."""
        assert self._aevents is not None, "submit(..., loop=) to read events asynchronously"
        while True:
            item = await self._aevents.get()
            for out in self._unpack(item):
                yield out
            if not isinstance(item, ReplyUpdate):
                return

    def result(self, timeout: float | None = None) -> Reply:
        """The finished reply (blocking)."""
        for item in self.events(timeout):
            if isinstance(item, Reply):
                return item
        raise BiglmError("the request ended without a reply")

    @staticmethod
    def _unpack(item: Any) -> Iterator[ReplyUpdate | Reply]:
        if isinstance(item, BiglmError):
            raise item
        yield item


@dataclass
class SchedulerStats:
    """Counters for ``/metrics`` (read without a lock: plain ints, written by the worker only)."""

    submitted: int = 0
    rejected: int = 0
    finished: int = 0
    failed: int = 0
    cancelled: int = 0
    tokens: int = 0
    steps: int = 0
    latencies: list[float] = field(default_factory=list)
    """Seconds from submit to reply of requests finished since the last ``take_latencies``."""

    def take_latencies(self) -> list[float]:
        out, self.latencies = self.latencies, []
        return out


class Scheduler:
    """The model's worker: see the module docstring. ``start()`` / ``stop()``."""

    def __init__(self, chat: ChatModel, max_batch: int = 16, queue_size: int = 64) -> None:
        self.chat, self.max_batch = chat, max(1, max_batch)
        self.waiting: queue.Queue[ReplyHandle] = queue.Queue(maxsize=max(1, queue_size))
        self.stats = SchedulerStats()
        make = STEPPERS.get(get_family(chat.model).decoder, WholeStepper)
        self._make_stepper = lambda: make(chat)
        self._batch_key = getattr(make, "batch_key", whole_batch_key)
        self.steppers: dict[Hashable, Any] = {}
        self.handles: dict[int, ReplyHandle] = {}
        self._next_key = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._wake = threading.Event()
        self.thread = threading.Thread(target=self._loop, name="biglm-scheduler", daemon=True)

    # ---- the client side ----------------------------------------------------------------------------------
    def start(self) -> Scheduler:
        self.thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self.thread.is_alive():
            self.thread.join(timeout=10)

    @property
    def queue_depth(self) -> int:
        return self.waiting.qsize()

    @property
    def active(self) -> int:
        return len(self.handles)

    def submit(self, request: ReplyRequest, loop: asyncio.AbstractEventLoop | None = None) -> ReplyHandle:
        """Queue a validated request; ``Overloaded`` when the queue is full (nothing was taken)."""
        with self._lock:
            key, self._next_key = self._next_key, self._next_key + 1
        handle = ReplyHandle(request, key, loop)
        try:
            self.waiting.put_nowait(handle)
        except queue.Full:
            self.stats.rejected += 1
            raise Overloaded(f"server busy: {self.waiting.maxsize} requests already waiting; retry later") from None
        self.stats.submitted += 1
        self._wake.set()
        return handle

    # ---- the worker ---------------------------------------------------------------------------------------
    def _loop(self) -> None:
        while not self._stop.is_set():
            self._drop_cancelled()
            self._admit()
            busy = [s for s in self.steppers.values() if s.active]
            if not busy:
                self._wake.wait(timeout=0.1)
                self._wake.clear()
                continue
            for stepper in busy:
                self._step(stepper)

    def _drop_cancelled(self) -> None:
        for key, handle in list(self.handles.items()):
            if handle.cancelled:
                for stepper in self.steppers.values():
                    stepper.drop(key)
                self._finish(handle, BiglmError("cancelled"), outcome="cancelled")

    def _admit(self) -> None:
        joining: dict[Hashable, list[Row]] = {}
        while len(self.handles) + sum(len(v) for v in joining.values()) < self.max_batch:
            try:
                handle = self.waiting.get_nowait()
            except queue.Empty:
                break
            if handle.cancelled:
                self._finish(handle, BiglmError("cancelled"), outcome="cancelled")
                continue
            try:
                row = self._row(handle)
            except Exception as e:  # this request fails alone, whatever the error
                self._finish(handle, as_error(e), outcome="failed")
                continue
            self.handles[handle.key] = handle
            joining.setdefault(self._batch_key(row.settings, row.stream, row.key), []).append(row)
        for bkey, rows in joining.items():
            if bkey not in self.steppers:
                self.steppers[bkey] = self._make_stepper()
            self.steppers[bkey].admit(rows)
        for bkey in [k for k, s in self.steppers.items() if not s.active and k not in joining]:
            del self.steppers[bkey]

    def _row(self, handle: ReplyHandle) -> Row:
        r = handle.request
        if r.messages is not None:
            ids, dropped = self.chat.prompt_of(r.messages, r.settings)
        else:
            ids, dropped = self.chat.text_prompt(r.prompt or "", r.settings)
        return Row(handle.key, list(ids), dropped, r.settings, r.stream)

    def _step(self, stepper: Any) -> None:
        held = list(stepper.keys())
        try:
            events = stepper.step()
        except Exception as e:  # never let a step take the worker down: fail its rows only
            print(f"biglm serve: error in a decoding step: {type(e).__name__}: {e}", file=sys.stderr)
            for key in held:
                stepper.drop(key)
                if key in self.handles:
                    self._finish(self.handles[key], as_error(e), outcome="failed")
            return
        self.stats.steps += 1
        for ev in events:
            handle = self.handles.get(ev.key)
            if handle is None:
                continue
            if ev.update is not None and handle.request.stream:
                handle._put(ev.update)
            if ev.error is not None:
                self._finish(handle, BiglmError(ev.error), outcome="failed")
            elif ev.reply is not None:
                self.stats.tokens += len(ev.reply.token_ids)
                self._finish(handle, ev.reply, outcome="finished")

    def _finish(self, handle: ReplyHandle, item: Reply | BiglmError, outcome: str) -> None:
        self.handles.pop(handle.key, None)
        handle.finished_at = time.monotonic()
        setattr(self.stats, outcome, getattr(self.stats, outcome) + 1)
        if outcome == "finished":
            self.stats.latencies.append(handle.finished_at - handle.submitted)
        handle._put(item)


__all__ = ["STEPPERS", "Overloaded", "ReplyHandle", "ReplyRequest", "Row", "RowEvent", "Scheduler", "SchedulerStats",
           "Stepper", "WholeStepper"]
