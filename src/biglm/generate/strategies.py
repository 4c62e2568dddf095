"""Non-autoregressive decoding strategies: how the suffix Y goes from all-[MASK] to text.

A strategy owns the refinement loop and talks to the model only through a ``Predictor``: given the
current suffix tokens and the positions to predict, it returns a token and its log-probability (the
*confidence*) at each of them, one forward pass per call. Strategies work on a batch of rows whose
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
from collections.abc import Callable
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


def mask_predict(state: DecodeState, predict: Predictor, steps: int, region: Tensor | None = None) -> None:
    """Mask-Predict over ``region`` (default: all active positions), ``steps`` iterations."""
    region = state.active if region is None else region & state.active
    lengths = region.sum(dim=1)
    if not bool(lengths.any()):
        return
    for t in range(steps):
        if t == 0:
            where = region
        else:
            n = lengths * (steps - t) // steps
            if not bool(n.any()):
                break  # n only shrinks with t
            where = region & (rank_in_row(state.scores, region, descending=False) < n[:, None])
        state.remask(where)
        ids, logprobs = predict(state.tokens, where)
        state.fill(where, ids, logprobs)


def confidence_threshold(state: DecodeState, predict: Predictor, steps: int, threshold: float = 0.9,
                         region: Tensor | None = None) -> None:
    """Commit every masked position whose probability is ≥ ``threshold`` (see the module docstring)."""
    if not 0.0 < threshold <= 1.0:
        raise BiglmError(f"threshold={threshold}: must be in (0, 1]")
    region = state.active if region is None else region & state.active
    state.remask(region)
    log_threshold = math.log(threshold)
    for t in range(steps):
        masked = state.masked & region
        remaining = masked.sum(dim=1)
        if not bool(remaining.any()):
            break
        ids, logprobs = predict(state.tokens, masked)
        at_least = (remaining + (steps - t) - 1) // (steps - t)  # ceil(remaining / passes left) ≥ 1
        top = rank_in_row(logprobs, masked, descending=True) < at_least[:, None]
        commit = masked & ((logprobs >= log_threshold) | top)
        state.fill(commit, ids, logprobs)


def semi_autoregressive(state: DecodeState, predict: Predictor, steps: int, block_size: int = 32) -> None:
    """Blocks of ``block_size`` tokens left to right, each by Mask-Predict (see the module docstring)."""
    if block_size <= 0:
        raise BiglmError(f"block_size={block_size}: must be > 0")
    length = state.tokens.shape[1]
    num_blocks = max(1, -(-length // block_size))
    state.remask(state.active)
    columns = torch.arange(length, device=state.tokens.device)
    for b in range(num_blocks):
        block_steps = max(1, steps // num_blocks + (b < steps % num_blocks))
        region = ((columns >= b * block_size) & (columns < (b + 1) * block_size))[None, :] & state.active
        mask_predict(state, predict, block_steps, region)


Strategy = Callable[..., None]

STRATEGIES: dict[str, Strategy] = {
    "mask-predict": mask_predict,
    "threshold": confidence_threshold,
    "blocks": semi_autoregressive,
}
"""Strategy name -> ``fn(state, predict, steps, **options)``; options: ``threshold`` for ``threshold``,
``block_size`` for ``blocks``."""


def get_strategy(name: str) -> Strategy:
    if name not in STRATEGIES:
        raise BiglmError(f"unknown strategy {str(name)[:40]!r}: expected one of {', '.join(STRATEGIES)}")
    return STRATEGIES[name]


def run_strategy(name: str, state: DecodeState, predict: Predictor, steps: int, **options: Any) -> None:
    """Run strategy ``name`` on ``state``, rejecting options it does not take with one line."""
    fn = get_strategy(name)
    allowed = set(list(inspect.signature(fn).parameters)[3:]) - {"region"}
    unknown = sorted(set(options) - allowed)
    if unknown:
        accepted = ", ".join(sorted(allowed)) or "none"
        raise BiglmError(f"strategy '{name}' has no option '{unknown[0]}' (options: {accepted})")
    fn(state, predict, steps, **options)
