"""Non-autoregressive decoding strategies: how the suffix Y goes from all-[MASK] to text.

A strategy is a ``StepRule``: ``plan()`` re-masks and names the positions the next pass predicts, ``commit``
takes that pass's tokens and their log-probabilities (the *confidence*); ``run_strategy`` drives it to the end
with a ``Predictor`` (one forward pass per call), and a server's stepper drives many rules, each at its own
pass, through shared forward passes. Strategies work on a batch of rows whose
target lengths may differ (``state.active``), and never touch positions outside a row's length.

- ``mask-predict`` (Ghazvininejad et al., 2019): iteration 0 predicts all of Y; iteration t = 1..T-1
  re-masks the n = ⌊l·(T−t)/T⌋ lowest-confidence tokens of a row of length l and predicts them again
  (a re-predicted token's confidence is replaced). T forward passes at most.
- ``threshold`` (confidence-threshold parallel decoding): each pass predicts every still-masked
  position and commits those whose probability is ≥ ``threshold``, at least one per row, and at least
  ⌈remaining / passes left⌉ (the most confident) so decoding always ends within T passes. Committed
  tokens are never revised.
- ``blocks`` (semi-autoregressive): Y is cut into blocks of ``block_size`` tokens, decoded left to right,
  each by Mask-Predict with the earlier blocks fixed and the later ones still [MASK]. The T passes are
  shared out among the blocks (⌊T/blocks⌋ each, the remainder to the first ones, at least one each).
"""

from __future__ import annotations

import inspect
import math
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from torch import Tensor

from biglm.errors import BiglmError


class Predictor(Protocol):
    def __call__(self, tokens: Tensor, where: Tensor) -> tuple[Tensor, Tensor]:
        """One forward pass over ``tokens`` (N, L); returns ``(ids, logprobs)`` (N, L), valid where
        ``where`` (N, L) bool is True."""
        ...


@dataclass
class DecodeState:
    """The suffix being refined: ``tokens`` (N, L) with [MASK] where undecided, ``scores`` (N, L) the
    log-probability each filled token had when it was last predicted, ``active`` (N, L) the positions
    inside each row's target length."""

    tokens: Tensor
    scores: Tensor
    active: Tensor
    mask_token_id: int

    @classmethod
    def all_masked(cls, active: Tensor, mask_token_id: int) -> DecodeState:
        tokens = torch.full(active.shape, mask_token_id, dtype=torch.long, device=active.device)
        scores = torch.zeros(active.shape, dtype=torch.float32, device=active.device)
        return cls(tokens, scores, active, mask_token_id)

    @property
    def masked(self) -> Tensor:
        return self.active & (self.tokens == self.mask_token_id)

    def remask(self, where: Tensor) -> None:
        self.tokens = self.tokens.masked_fill(where, self.mask_token_id)
        self.scores = self.scores.masked_fill(where, 0.0)

    def fill(self, where: Tensor, ids: Tensor, logprobs: Tensor) -> None:
        self.tokens = torch.where(where, ids, self.tokens)
        self.scores = torch.where(where, logprobs, self.scores)


def rank_in_row(values: Tensor, eligible: Tensor, descending: bool) -> Tensor:
    """Rank (0 = first) of each eligible entry within its row; ineligible entries rank last. Ties go
    to the lower position."""
    fill = float("-inf") if descending else float("inf")
    keyed = values.masked_fill(~eligible, fill)
    order = keyed.argsort(dim=1, descending=descending, stable=True)
    ranks = torch.empty_like(order)
    ranks.scatter_(1, order, torch.arange(order.shape[1], device=order.device).expand_as(order))
    return ranks


class StepRule(Protocol):
    """A strategy's refinement one pass at a time (so rows at different passes can share a model call)."""

    def plan(self) -> Tensor | None:
        """Re-mask what the next pass re-predicts and return the positions it predicts (N, L) bool; None
        when decoding is over (no pass is run then)."""
        ...

    def commit(self, where: Tensor, ids: Tensor, logprobs: Tensor) -> None:
        """Take the pass's predictions ``ids`` / ``logprobs`` (N, L), valid at ``where`` (``plan``'s answer)."""
        ...


class MaskPredict:
    """Mask-Predict over ``region`` (default: all active positions), ``steps`` iterations."""

    def __init__(self, state: DecodeState, steps: int, region: Tensor | None = None) -> None:
        self.state, self.steps, self.t = state, steps, 0
        self.region = state.active if region is None else region & state.active
        self.lengths = self.region.sum(dim=1)
        self.empty = not bool(self.lengths.any())

    def plan(self) -> Tensor | None:
        if self.empty or self.t >= self.steps:
            return None
        if self.t == 0:
            where = self.region
        else:
            n = self.lengths * (self.steps - self.t) // self.steps
            if not bool(n.any()):
                return None  # n only shrinks with t
            where = self.region & (rank_in_row(self.state.scores, self.region, descending=False) < n[:, None])
        self.state.remask(where)
        return where

    def commit(self, where: Tensor, ids: Tensor, logprobs: Tensor) -> None:
        self.state.fill(where, ids, logprobs)
        self.t += 1


class ConfidenceThreshold:
    """Commit every masked position whose probability is ≥ ``threshold`` (see the module docstring)."""

    def __init__(self, state: DecodeState, steps: int, threshold: float = 0.9, region: Tensor | None = None) -> None:
        if not 0.0 < threshold <= 1.0:
            raise BiglmError(f"threshold={threshold}: must be in (0, 1]")
        self.state, self.steps, self.t = state, steps, 0
        self.region = state.active if region is None else region & state.active
        state.remask(self.region)
        self.log_threshold = math.log(threshold)
        self.remaining: Tensor | None = None

    def plan(self) -> Tensor | None:
        if self.t >= self.steps:
            return None
        masked = self.state.masked & self.region
        self.remaining = masked.sum(dim=1)
        return masked if bool(self.remaining.any()) else None

    def commit(self, where: Tensor, ids: Tensor, logprobs: Tensor) -> None:
        assert self.remaining is not None
        at_least = (self.remaining + (self.steps - self.t) - 1) // (self.steps - self.t)  # ceil(remaining/left) ≥ 1
        top = rank_in_row(logprobs, where, descending=True) < at_least[:, None]
        self.state.fill(where & ((logprobs >= self.log_threshold) | top), ids, logprobs)
        self.t += 1


class SemiAutoregressive:
    """Blocks of ``block_size`` tokens left to right, each by Mask-Predict (see the module docstring)."""

    def __init__(self, state: DecodeState, steps: int, block_size: int = 32) -> None:
        if block_size <= 0:
            raise BiglmError(f"block_size={block_size}: must be > 0")
        self.state, self.steps, self.block_size = state, steps, block_size
        self.num_blocks = max(1, -(-state.tokens.shape[1] // block_size))
        state.remask(state.active)
        self.block = 0
        self.current: MaskPredict | None = None

    def plan(self) -> Tensor | None:
        while True:
            if self.current is None:
                if self.block >= self.num_blocks:
                    return None
                b, size = self.block, self.block_size
                block_steps = max(1, self.steps // self.num_blocks + (b < self.steps % self.num_blocks))
                columns = torch.arange(self.state.tokens.shape[1], device=self.state.tokens.device)
                region = ((columns >= b * size) & (columns < (b + 1) * size))[None, :] & self.state.active
                self.current, self.block = MaskPredict(self.state, block_steps, region), b + 1
            where = self.current.plan()
            if where is not None:
                return where
            self.current = None

    def commit(self, where: Tensor, ids: Tensor, logprobs: Tensor) -> None:
        assert self.current is not None
        self.current.commit(where, ids, logprobs)


STRATEGIES: dict[str, type[StepRule]] = {
    "mask-predict": MaskPredict,
    "threshold": ConfidenceThreshold,
    "blocks": SemiAutoregressive,
}
"""Strategy name -> its ``StepRule``, built as ``cls(state, steps, **options)``; options: ``threshold`` for
``threshold``, ``block_size`` for ``blocks``."""


def get_strategy(name: str) -> type[StepRule]:
    if name not in STRATEGIES:
        raise BiglmError(f"unknown strategy {str(name)[:40]!r}: expected one of {', '.join(STRATEGIES)}")
    return STRATEGIES[name]


def start_strategy(name: str, state: DecodeState, steps: int, **options: Any) -> StepRule:
    """Strategy ``name``'s rule on ``state`` (refine it with ``plan`` / ``commit``), rejecting options it does not
    take with one line."""
    cls = get_strategy(name)
    allowed = set(list(inspect.signature(cls).parameters)[2:]) - {"region"}
    unknown = sorted(set(options) - allowed)
    if unknown:
        accepted = ", ".join(sorted(allowed)) or "none"
        raise BiglmError(f"strategy '{name}' has no option '{unknown[0]}' (options: {accepted})")
    return cls(state, steps, **options)


def run_strategy(name: str, state: DecodeState, predict: Predictor, steps: int, **options: Any) -> None:
    """Run strategy ``name`` on ``state`` to the end, one ``predict`` call per pass."""
    rule = start_strategy(name, state, steps, **options)
    while (where := rule.plan()) is not None:
        ids, logprobs = predict(state.tokens, where)
        rule.commit(where, ids, logprobs)
