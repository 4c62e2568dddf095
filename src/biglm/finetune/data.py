"""Encoded examples as the trainer's row stream: epochs, a seeded shuffle per epoch, exact resume.

``ExampleStream`` implements the trainer's ``RowStream`` over a list of encoded examples. Global row
``g`` of the stream is example ``perm_e[i mod N]`` with epoch ``e = g // R`` and ``i = g mod R``, where
``R = steps_per_epoch · global_batch ≥ N`` rows make one epoch and ``perm_e`` is a permutation seeded by
``(seed, e)``: every example is seen once per epoch, and the last step of an epoch is filled with the
first examples of the same permutation (so every step has the same number of rows on every rank).
Rows are dealt round-robin to ranks, so the stream does not depend on the world size, and its state is
one row counter.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from typing import Any

import torch

from biglm.errors import BiglmError


def steps_per_epoch(num_examples: int, global_batch: int) -> int:
    """Optimizer steps that visit every example once (the last one topped up from the same epoch)."""
    if num_examples <= 0:
        raise BiglmError("no training examples")
    return math.ceil(num_examples / global_batch)


class ExampleStream:
    """Examples ``batch_size`` at a time for this rank (see the module docstring).

    ``shuffle=False`` keeps the file order (validation); ``num_rows`` makes the stream finite.
    """

    def __init__(self, examples: Sequence[Any], rows_per_epoch: int | None = None, seed: int = 0, rank: int = 0,
                 world_size: int = 1, shuffle: bool = True, num_rows: int | None = None) -> None:
        if not examples:
            raise BiglmError("no examples")
        self.examples, self.seed, self.rank, self.world = examples, seed, rank, world_size
        self.rows_per_epoch = rows_per_epoch or len(examples)
        self.shuffle, self.num_rows = shuffle, num_rows
        self.rows = 0
        """Global rows consumed so far (the same on every rank)."""
        self._perm: tuple[int, torch.Tensor] | None = None

    def _permutation(self, epoch: int) -> torch.Tensor:
        if self._perm is None or self._perm[0] != epoch:
            n = len(self.examples)
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            self._perm = (epoch, torch.randperm(n, generator=g) if self.shuffle else torch.arange(n))
        return self._perm[1]

    def example(self, row: int) -> Any:
        """The example of global row ``row``."""
        epoch, i = divmod(row, self.rows_per_epoch)
        return self.examples[int(self._permutation(epoch)[i % len(self.examples)])]

    def batches(self, batch_size: int | None = None) -> Iterator[list[Any]]:
        b = batch_size or 1
        while True:
            rows = []
            while len(rows) < b:
                start = self.rows
                if self.num_rows is not None and start >= self.num_rows:
                    break
                self.rows = start + self.world
                if self.num_rows is None or start + self.rank < self.num_rows:
                    rows.append(self.example(start + self.rank))
            if not rows:
                return
            yield rows
            if len(rows) < b:
                return

    def state_dict(self) -> dict[str, Any]:
        return {"rows": self.rows}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.rows = int(state["rows"])

    def set_phase(self, phase: str) -> None:
        """No anneal phase for examples (the trainer calls this only for WSD data switches)."""
