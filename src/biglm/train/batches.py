"""From packed rows to model batches: the objective applied row by row, optionally in a background thread.

Masking randomness: the objective's ``torch.Generator`` is re-seeded for every row from ``(train.seed,
global row index)``. Rows of the global stream are dealt round-robin to ranks, so in optimizer step
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
from typing import Any

import torch

from biglm.attention import AttentionLayout
from biglm.objectives import Batch, Objective
from biglm.train.streams import RowStream

VAL_SALT = 0x5EED_0FA1
"""Mixed into ``train.seed`` for the masking of the validation rows."""


def row_seed(seed: int, index: int) -> int:
    """A well-mixed 63-bit seed for row ``index`` (splitmix64 of the pair)."""
    z = (seed * 0x9E3779B97F4A7C15 + index + 1) & 0xFFFFFFFFFFFFFFFF
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & 0xFFFFFFFFFFFFFFFF
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & 0xFFFFFFFFFFFFFFFF
    return (z ^ (z >> 31)) >> 1


def concat_batches(parts: list[Batch]) -> Batch:
    """Stack batches along the batch dimension."""
    cat = lambda xs: None if xs[0] is None else torch.cat(xs)
    layout = AttentionLayout(parts[0].layout.kind, cat([p.layout.document_ids for p in parts]),
                             cat([p.layout.regions for p in parts]))
    return Batch(cat([p.input_ids for p in parts]), cat([p.labels for p in parts]),
                 cat([p.position_ids for p in parts]), layout)


def mask_rows(objective: Objective, raw: dict[str, torch.Tensor], seed: int, first_row: int, stride: int,
              generator: torch.Generator | None = None) -> Batch:
    """Apply ``objective`` to each row of ``raw``; row j is seeded by ``row_seed(seed, first_row + j·stride)``."""
    generator = generator or torch.Generator()
    ids, docs = raw["input_ids"], raw["document_ids"]
    rows = []
    for j in range(ids.shape[0]):
        generator.manual_seed(row_seed(seed, first_row + j * stride))
        rows.append(objective(ids[j:j + 1], docs[j:j + 1], generator))
    return concat_batches(rows)


def pin(batch: Batch) -> Batch:
    """The batch in page-locked memory (for asynchronous host-to-GPU copies)."""
    p = lambda t: None if t is None else t.pin_memory()
    return Batch(p(batch.input_ids), p(batch.labels), p(batch.position_ids),
                 AttentionLayout(batch.layout.kind, p(batch.layout.document_ids), p(batch.layout.regions)))


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

    def __init__(self, stream: RowStream, objective: Objective, *, seed: int, micro_batch: int, grad_accum: int,
                 global_batch: int, rank: int, world_size: int, start_step: int, steps: int,
                 anneal_at: int | None, annealing: bool, prefetch: int = 0, pin_memory: bool = False) -> None:
        self.stream, self.objective, self.seed = stream, objective, seed
        self.micro, self.accum, self.global_batch = micro_batch, grad_accum, global_batch
        self.rank, self.world = rank, world_size
        self.start, self.steps, self.anneal_at, self.annealing = start_step, steps, anneal_at, annealing
        self.prefetch, self.pin_memory = prefetch, pin_memory
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _produce(self) -> Iterator[StepBatches]:
        rows = self.stream.batches(self.micro)
        generator = torch.Generator()
        for step in range(self.start, self.steps):
            if self.anneal_at is not None and step >= self.anneal_at and not self.annealing:
                self.stream.set_phase("anneal")
                self.annealing = True
            batches = []
            for a in range(self.accum):
                first = step * self.global_batch + a * self.micro * self.world + self.rank
                batch = mask_rows(self.objective, next(rows), self.seed, first, self.world, generator)
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
