"""From stream rows to model batches, optionally in a background thread.

A ``Batcher`` turns what the row stream yields for one micro-batch into a ``Batch``: for pre-training
the objective applied to each packed row (``ObjectiveBatcher``), for fine-tuning a task's collator over
examples. Masking randomness: a ``torch.Generator`` is re-seeded for every row from ``(train.seed,
global row index)`` (``RowSeeds``). Rows of the global stream are dealt round-robin to ranks, so in optimizer step
``s`` the ``j``-th row of micro-batch ``a`` on rank ``r`` is global row
``s · global_batch + (a · micro_batch + j) · world_size + r``. A row is thus masked identically whatever
the world size or gradient accumulation, and a resumed run needs no generator state beyond the step.

``BatchProducer`` yields the micro-batches of one optimizer step at a time together with the data
stream's state after them (what a checkpoint must store), switches the stream to the anneal mixture at
the first step of the WSD decay, and can run ``prefetch`` steps ahead in a thread so that masking
overlaps the accelerator's work.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Protocol

import torch

from biglm.attention import AttentionLayout
from biglm.objectives import IGNORE_INDEX, Batch, Objective
from biglm.train.streams import RowStream

VAL_SALT = 0x5EED_0FA1
"""Mixed into ``train.seed`` for the masking of the validation rows."""


def row_seed(seed: int, index: int) -> int:
    """A well-mixed 63-bit seed for row ``index`` (splitmix64 of the pair)."""
    z = (seed * 0x9E3779B97F4A7C15 + index + 1) & 0xFFFFFFFFFFFFFFFF
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & 0xFFFFFFFFFFFFFFFF
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & 0xFFFFFFFFFFFFFFFF
    return (z ^ (z >> 31)) >> 1


@dataclass(frozen=True)
class RowSeeds:
    """The seeds of a micro-batch's rows: row ``j`` is global row ``first + j·stride``."""

    seed: int
    first: int
    stride: int = 1

    def __getitem__(self, j: int) -> int:
        return row_seed(self.seed, self.first + j * self.stride)


class Batcher(Protocol):
    """Turns what a row stream yields for one micro-batch into a ``Batch`` (masking row ``j`` with a
    generator seeded by ``seeds[j]``)."""

    def __call__(self, raw: Any, seeds: RowSeeds) -> Batch: ...


class ObjectiveBatcher:
    """The pre-training batcher: an objective applied to each packed row of ``{"input_ids", "document_ids"}``."""

    def __init__(self, objective: Objective) -> None:
        self.objective = objective

    def __call__(self, raw: dict[str, torch.Tensor], seeds: RowSeeds) -> Batch:
        ids, docs = raw["input_ids"], raw["document_ids"]
        generator, rows = torch.Generator(), []
        for j in range(ids.shape[0]):
            generator.manual_seed(seeds[j])
            rows.append(self.objective(ids[j:j + 1], docs[j:j + 1], generator))
        return concat_batches(rows)


def concat_batches(parts: list[Batch]) -> Batch:
    """Stack batches along the batch dimension, right-padding shorter rows (document id -1, no loss).

    ``extras`` of shape (B, T) are padded with zeros; other extras are concatenated as they are.
    """
    width = max(p.input_ids.shape[1] for p in parts)
    if any(p.input_ids.shape[1] != width for p in parts):
        parts = [pad_batch(p, width) for p in parts]
    cat = lambda xs: None if xs[0] is None else torch.cat(xs)
    layout = AttentionLayout(parts[0].layout.kind, cat([p.layout.document_ids for p in parts]),
                             cat([p.layout.regions for p in parts]))
    extras = {k: torch.cat([p.extras[k] for p in parts]) for k in parts[0].extras}
    return Batch(cat([p.input_ids for p in parts]), cat([p.labels for p in parts]),
                 cat([p.position_ids for p in parts]), layout, extras)


def pad_batch(batch: Batch, width: int) -> Batch:
    """``batch`` right-padded to ``width`` positions: padding is document -1 (never attended), no loss."""
    B, T = batch.input_ids.shape
    n = width - T
    if n == 0:
        return batch
    pad = lambda t, value: torch.cat([t, t.new_full((B, n, *t.shape[2:]), value)], dim=1)  # (B, T[, 2])
    docs = batch.layout.document_ids
    docs = torch.zeros(B, T, dtype=torch.int32) if docs is None else docs
    regions = batch.layout.regions
    layout = AttentionLayout(batch.layout.kind, pad(docs, -1), None if regions is None else pad(regions, 0))
    extras = {k: pad(v, 0) if v.dim() == 2 and v.shape[1] == T else v for k, v in batch.extras.items()}
    return Batch(pad(batch.input_ids, 0), pad(batch.labels, IGNORE_INDEX), pad(batch.position_ids, 0), layout,
                 extras)


def pin(batch: Batch) -> Batch:
    """The batch in page-locked memory (for asynchronous host-to-GPU copies)."""
    p = lambda t: None if t is None else t.pin_memory()
    return Batch(p(batch.input_ids), p(batch.labels), p(batch.position_ids),
                 AttentionLayout(batch.layout.kind, p(batch.layout.document_ids), p(batch.layout.regions)),
                 {k: p(v) for k, v in batch.extras.items()})


@dataclass
class StepBatches:
    """The micro-batches of one optimizer step on this rank."""

    step: int
    batches: list[Batch]
    data_state: dict[str, Any]
    """The row stream's state right after these rows (what a checkpoint taken after the step stores)."""
    annealing: bool


class BatchProducer:
    """Micro-batches for steps ``start_step .. steps-1`` (see the module docstring)."""

    def __init__(self, stream: RowStream, batcher: Batcher, *, seed: int, micro_batch: int, grad_accum: int,
                 global_batch: int, rank: int, world_size: int, start_step: int, steps: int,
                 anneal_at: int | None, annealing: bool, prefetch: int = 0, pin_memory: bool = False) -> None:
        self.stream, self.batcher, self.seed = stream, batcher, seed
        self.micro, self.accum, self.global_batch = micro_batch, grad_accum, global_batch
        self.rank, self.world = rank, world_size
        self.start, self.steps, self.anneal_at, self.annealing = start_step, steps, anneal_at, annealing
        self.prefetch, self.pin_memory = prefetch, pin_memory
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _produce(self) -> Iterator[StepBatches]:
        rows = self.stream.batches(self.micro)
        for step in range(self.start, self.steps):
            if self.anneal_at is not None and step >= self.anneal_at and not self.annealing:
                self.stream.set_phase("anneal")
                self.annealing = True
            batches = []
            for a in range(self.accum):
                first = step * self.global_batch + a * self.micro * self.world + self.rank
                batch = self.batcher(next(rows), RowSeeds(self.seed, first, self.world))
                batches.append(pin(batch) if self.pin_memory else batch)
            yield StepBatches(step, batches, self.stream.state_dict(), self.annealing)

    def __iter__(self) -> Iterator[StepBatches]:
        if self.prefetch <= 0:
            yield from self._produce()
            return
        q: queue.Queue = queue.Queue(maxsize=self.prefetch)

        def work() -> None:
            try:
                for item in self._produce():
                    while not self._stop.is_set():
                        try:
                            q.put(item, timeout=0.1)
                            break
                        except queue.Full:
                            continue
                    if self._stop.is_set():
                        return
                q.put(None)
            except BaseException as e:  # handed to the consumer, raised there
                q.put(e)

        self._thread = threading.Thread(target=work, name="biglm-batches", daemon=True)
        self._thread.start()
        try:
            while (item := q.get()) is not None:
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            self.close()

    def close(self) -> None:
        """Stop the background thread (if any)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
