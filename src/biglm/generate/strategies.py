"""Non-autoregressive decoding strategies: how the suffix Y goes from all-[MASK] to text.

A strategy is a ``StepRule``: ``plan()`` re-masks and names the positions the next pass predicts, ``commit``
takes that pass's ``Predictions`` (tokens and their log-probabilities, the *confidence*); ``run_strategy``
drives it to the end with a ``Predictor`` (one forward pass per call), and a server's stepper drives many rules,
each at its own pass, through shared forward passes. Strategies work on a batch of rows whose
target lengths may differ (``state.active``), and never touch positions outside a row's length.

- ``mask-predict`` (Ghazvininejad et al., 2019): iteration 0 predicts all of Y; iteration t = 1..T-1
  re-masks the n = ⌊l·(T−t)/T⌋ lowest-confidence tokens of a row of length l and predicts them again
  (a re-predicted token's confidence is replaced). T forward passes at most.
- ``threshold`` (confidence-aware parallel decoding): each pass predicts every still-masked position and
  commits those its commit rule keeps (``commit``: ``threshold`` by default, ``factor`` or ``margin``;
  ``biglm.generate.commit``), at least ⌈remaining / passes left⌉ of the most confident per row (at least one),
  so decoding always ends within T passes. Committed tokens are never revised.
- ``blocks`` (semi-autoregressive): Y is cut into blocks of ``block_size`` tokens, decoded left to right,
  each by Mask-Predict (``commit='mask-predict'``, the default) or by a commit rule, with the earlier blocks
  fixed and the later ones still [MASK]. The T passes are shared out among the blocks (⌊T/blocks⌋ each, the
  remainder to the first ones, at least one each). Its blocks are what the approximate suffix caches
  (``biglm.generate.suffix_cache``) cache.

``eos_exit`` (``threshold``, ``blocks``): a row stops once it has a final EOS with only final tokens before it
(committed tokens are final; with Mask-Predict inside blocks, a block's tokens are final when the block ends):
the text, cut at its first EOS, can no longer change, so the rest is filled with EOS (log-probability 0)
without passes. For models that pad their targets with EOS.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol

import torch
from torch import Tensor

from biglm.errors import BiglmError
from biglm.generate.commit import Predictions, commit_options, get_commit_rule, rank_in_row, select_commits

__all__ = ["STRATEGIES", "ConfidenceThreshold", "DecodeState", "MaskPredict", "Predictions", "Predictor",
           "SemiAutoregressive", "StepRule", "get_strategy", "rank_in_row", "run_strategy", "start_strategy"]


class Predictor(Protocol):
    def __call__(self, tokens: Tensor, where: Tensor, span: tuple[int, int] | None = None,
                 margins: bool = False) -> Predictions:
        """One forward pass over ``tokens`` (N, L); returns the predictions, valid where ``where`` (N, L) bool is
        True. ``span``: the columns of the block being decoded (what an approximate suffix cache recomputes);
        ``margins``: also give the top-1 minus top-2 probabilities."""
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
    eos_token_id: int | None = None

    @classmethod
    def all_masked(cls, active: Tensor, mask_token_id: int, eos_token_id: int | None = None) -> DecodeState:
        tokens = torch.full(active.shape, mask_token_id, dtype=torch.long, device=active.device)
        scores = torch.zeros(active.shape, dtype=torch.float32, device=active.device)
        return cls(tokens, scores, active, mask_token_id, eos_token_id)

    @property
    def masked(self) -> Tensor:
        return self.active & (self.tokens == self.mask_token_id)

    def remask(self, where: Tensor) -> None:
        self.tokens = self.tokens.masked_fill(where, self.mask_token_id)
        self.scores = self.scores.masked_fill(where, 0.0)

    def fill(self, where: Tensor, ids: Tensor, logprobs: Tensor) -> None:
        self.tokens = torch.where(where, ids, self.tokens)
        self.scores = torch.where(where, logprobs, self.scores)

    def settle_at_eos(self) -> None:
        """Fill with EOS (log-probability 0) every undecided position of the rows whose decided tokens hold an EOS
        with no undecided position before it (call only when decided tokens are final)."""
        if self.eos_token_id is None:
            raise BiglmError("eos_exit needs the tokenizer's EOS token")
        masked = self.masked
        is_eos = self.active & ~masked & (self.tokens == self.eos_token_id)
        first = torch.where(is_eos.any(dim=1), is_eos.to(torch.int8).argmax(dim=1), self.tokens.shape[1])
        columns = torch.arange(self.tokens.shape[1], device=self.tokens.device)[None, :]
        open_before = (masked & (columns < first[:, None])).any(dim=1)
        settled = is_eos.any(dim=1) & ~open_before
        if bool(settled.any()):
            self.fill(masked & settled[:, None], torch.full_like(self.tokens, self.eos_token_id),
                      torch.zeros_like(self.scores))


class StepRule(Protocol):
    """A strategy's refinement one pass at a time (so rows at different passes can share a model call)."""

    span: tuple[int, int] | None
    """The columns of the block the next pass decodes (None: the whole suffix)."""
    needs_margins: bool

    def plan(self) -> Tensor | None:
        """Re-mask what the next pass re-predicts and return the positions it predicts (N, L) bool; None
        when decoding is over (no pass is run then)."""
        ...

    def commit(self, where: Tensor, predictions: Predictions) -> None:
        """Take the pass's predictions, valid at ``where`` (``plan``'s answer)."""
        ...


class MaskPredict:
    """Mask-Predict over ``region`` (default: all active positions), ``steps`` iterations."""

    blockwise: ClassVar[bool] = False
    span: tuple[int, int] | None = None
    needs_margins = False

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

    def commit(self, where: Tensor, predictions: Predictions) -> None:
        self.state.fill(where, predictions.ids, predictions.logprobs)
        self.t += 1


class ConfidenceThreshold:
    """Commit what the commit rule keeps of every masked position's prediction (see the module docstring)."""

    blockwise: ClassVar[bool] = False
    span: tuple[int, int] | None = None

    def __init__(self, state: DecodeState, steps: int, threshold: float | None = None, commit: str = "threshold",
                 factor: float | None = None, margin: float | None = None, eos_exit: bool = False,
                 region: Tensor | None = None) -> None:
        self.state, self.steps, self.t = state, steps, 0
        self.rule = commit
        self.value = commit_options(commit, {"threshold": threshold, "factor": factor, "margin": margin})
        self.needs_margins = get_commit_rule(commit).needs_margins
        self.eos_exit = _check_flag("eos_exit", eos_exit)
        # inside blocks, only the still-undecided positions (an EOS exit may have filled later ones)
        self.region = state.masked if region is None else region & state.masked
        self.remaining: Tensor | None = None

    def plan(self) -> Tensor | None:
        if self.t >= self.steps:
            return None
        masked = self.state.masked & self.region
        self.remaining = masked.sum(dim=1)
        return masked if bool(self.remaining.any()) else None

    def commit(self, where: Tensor, predictions: Predictions) -> None:
        assert self.remaining is not None
        keep = select_commits(self.rule, self.value, predictions, where, self.remaining, self.steps - self.t)
        self.state.fill(keep, predictions.ids, predictions.logprobs)
        self.t += 1
        if self.eos_exit:
            self.state.settle_at_eos()


class SemiAutoregressive:
    """Blocks of ``block_size`` tokens left to right, each by Mask-Predict or a commit rule (see the module
    docstring)."""

    blockwise: ClassVar[bool] = True

    def __init__(self, state: DecodeState, steps: int, block_size: int = 32, commit: str = "mask-predict",
                 threshold: float | None = None, factor: float | None = None, margin: float | None = None,
                 eos_exit: bool = False) -> None:
        if not isinstance(block_size, int) or isinstance(block_size, bool) or block_size <= 0:
            raise BiglmError(f"block_size={str(block_size)[:40]}: must be an integer > 0")
        self.state, self.steps, self.block_size = state, steps, block_size
        self.eos_exit = _check_flag("eos_exit", eos_exit)
        self.rule_options: dict[str, Any] | None = None
        if commit != "mask-predict":
            self.rule_options = dict(threshold=threshold, factor=factor, margin=margin, commit=commit,
                                     eos_exit=eos_exit)
            self.needs_margins = get_commit_rule(commit).needs_margins
            commit_options(commit, {"threshold": threshold, "factor": factor, "margin": margin})
        else:
            unused = [k for k, v in (("threshold", threshold), ("factor", factor), ("margin", margin)) if v is not None]
            if unused:
                raise BiglmError(f"option '{unused[0]}' needs a commit rule (commit='{unused[0]}'); blocks "
                                 "decode by Mask-Predict without one")
            self.needs_margins = False
        self.num_blocks = max(1, -(-state.tokens.shape[1] // block_size))
        self.block = 0
        self.span: tuple[int, int] | None = None
        self.current: MaskPredict | ConfidenceThreshold | None = None

    def plan(self) -> Tensor | None:
        while True:
            if self.current is None:
                if self.block >= self.num_blocks:
                    return None
                if self.eos_exit and self.block > 0:  # the finished blocks are final now
                    self.state.settle_at_eos()
                b, size = self.block, self.block_size
                block_steps = max(1, self.steps // self.num_blocks + (b < self.steps % self.num_blocks))
                columns = torch.arange(self.state.tokens.shape[1], device=self.state.tokens.device)
                region = ((columns >= b * size) & (columns < (b + 1) * size))[None, :] & self.state.masked
                self.span = (b * size, min((b + 1) * size, self.state.tokens.shape[1]))
                if self.rule_options is None:
                    self.current = MaskPredict(self.state, block_steps, region)
                else:
                    self.current = ConfidenceThreshold(self.state, block_steps, region=region, **self.rule_options)
                self.block = b + 1
            where = self.current.plan()
            if where is not None:
                return where
            self.current = None

    def commit(self, where: Tensor, predictions: Predictions) -> None:
        assert self.current is not None
        self.current.commit(where, predictions)


def _check_flag(name: str, value: object) -> bool:
    if not isinstance(value, bool):
        raise BiglmError(f"{name}={str(value)[:40]}: must be true or false")
    return value


STRATEGIES: dict[str, type[StepRule]] = {
    "mask-predict": MaskPredict,
    "threshold": ConfidenceThreshold,
    "blocks": SemiAutoregressive,
}
"""Strategy name -> its ``StepRule``, built as ``cls(state, steps, **options)``; options: ``commit`` (a commit rule)
and its parameter (``threshold``, ``factor`` or ``margin``) and ``eos_exit`` for ``threshold`` and ``blocks``,
``block_size`` for ``blocks``."""


def get_strategy(name: str) -> type[StepRule]:
    if name not in STRATEGIES:
        raise BiglmError(f"unknown strategy {str(name)[:40]!r}: expected one of {', '.join(STRATEGIES)}")
    return STRATEGIES[name]


def strategy_option_names(name: str) -> set[str]:
    """The options strategy ``name`` takes."""
    return set(list(inspect.signature(get_strategy(name)).parameters)[2:]) - {"region"}


def start_strategy(name: str, state: DecodeState, steps: int, **options: Any) -> StepRule:
    """Strategy ``name``'s rule on ``state`` (refine it with ``plan`` / ``commit``), rejecting options it does not
    take with one line."""
    cls = get_strategy(name)
    allowed = strategy_option_names(name)
    unknown = sorted(set(options) - allowed)
    if unknown:
        accepted = ", ".join(sorted(allowed)) or "none"
        raise BiglmError(f"strategy '{name}' has no option '{unknown[0]}' (options: {accepted})")
    return cls(state, steps, **options)


def run_strategy(rule: StepRule, state: DecodeState, predict: Predictor) -> None:
    """Run ``rule`` (``start_strategy``) on ``state`` to the end, one ``predict`` call per pass."""
    while (where := rule.plan()) is not None:
        rule.commit(where, predict(state.tokens, where, rule.span, rule.needs_margins))
