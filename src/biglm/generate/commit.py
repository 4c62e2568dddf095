"""Commit rules: which of a pass's predictions a parallel strategy keeps for good.

A rule sees the predicted positions' confidences and returns the ones to commit; every rule also commits,
per row, at least ⌈remaining / passes left⌉ of the most confident predictions (at least one; by the rule's own
confidence: the probability, or the margin for ``margin``), so decoding always ends within its passes. Each
rule has one parameter, named as the rule:

- ``threshold`` (confidence-threshold parallel decoding): probability p ≥ ``threshold``.
- ``factor`` (Fast-dLLM's factor rule): with the row's probabilities sorted, p_1 ≥ p_2 ≥ …, the leading n
  such that p_i ≥ 1 − ``factor`` / (i + 1) for every i ≤ n, i.e. (i + 1)(1 − p_i) ≤ ``factor``: more tokens
  at once only while they are all nearly certain.
- ``margin``: top-1 minus top-2 probability ≥ ``margin`` (how far the choice is from its runner-up, rather
  than how probable it is: a flat but clear-cut distribution commits).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from biglm.errors import BiglmError


@dataclass(frozen=True)
class Predictions:
    """One pass's predictions over the suffix (N, L): ``ids`` chosen, their ``logprobs`` and, when a rule asks for
    them, ``margins`` (top-1 minus top-2 probability); valid where the pass predicted."""

    ids: Tensor
    logprobs: Tensor
    margins: Tensor | None = None


def rank_in_row(values: Tensor, eligible: Tensor, descending: bool) -> Tensor:
    """Rank (0 = first) of each eligible entry within its row; ineligible entries rank last. Ties go
    to the lower position."""
    fill = float("-inf") if descending else float("inf")
    keyed = values.masked_fill(~eligible, fill)
    order = keyed.argsort(dim=1, descending=descending, stable=True)
    ranks = torch.empty_like(order)
    ranks.scatter_(1, order, torch.arange(order.shape[1], device=order.device).expand_as(order))
    return ranks


def _threshold(p: Predictions, where: Tensor, ranks: Tensor, value: float) -> Tensor:
    return p.logprobs >= math.log(value)


def _factor(p: Predictions, where: Tensor, ranks: Tensor, value: float) -> Tensor:
    # p_i ≥ 1 − f/(i+1) for the i-th most confident (1-based): passing ranks must form an unbroken run from the top
    passes = p.logprobs.exp() >= 1.0 - value / (ranks + 2).to(torch.float32)
    ordered = torch.zeros_like(passes).scatter_(1, ranks.clamp_max(passes.shape[1] - 1), passes & where)
    run = ordered.to(torch.int8).cumprod(dim=1).sum(dim=1)  # leading passing ranks per row
    return ranks < run[:, None]


def _margin(p: Predictions, where: Tensor, ranks: Tensor, value: float) -> Tensor:
    assert p.margins is not None, "the margin rule needs the pass's margins"
    return p.margins >= value


@dataclass(frozen=True)
class CommitRule:
    """A rule's test (``(predictions, where, ranks by its confidence, value) -> bool (N, L)``), its parameter's
    default and valid range, and whether its confidence is the margin (else the probability)."""

    test: Callable[[Predictions, Tensor, Tensor, float], Tensor]
    default: float
    low: float
    high: float
    low_open: bool = True
    needs_margins: bool = False

    def check(self, name: str, value: float) -> float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
        ok = ok and (value > self.low if self.low_open else value >= self.low) and value <= self.high
        if not ok:
            low = "(" if self.low_open else "["
            raise BiglmError(f"{name}={str(value)[:40]}: must be in {low}{self.low:g}, {self.high:g}]")
        return float(value)


COMMIT_RULES: dict[str, CommitRule] = {
    "threshold": CommitRule(_threshold, default=0.9, low=0.0, high=1.0),
    "factor": CommitRule(_factor, default=1.0, low=0.0, high=float("inf")),
    "margin": CommitRule(_margin, default=0.5, low=0.0, high=1.0, low_open=False, needs_margins=True),
}
"""Commit rule name -> its rule; the rule's parameter has the rule's name (``threshold=0.9``, ``factor=1.0``,
``margin=0.5``)."""


def get_commit_rule(name: str) -> CommitRule:
    if name not in COMMIT_RULES:
        raise BiglmError(f"unknown commit rule {str(name)[:40]!r}: expected one of {', '.join(COMMIT_RULES)}")
    return COMMIT_RULES[name]


def commit_options(rule: str, values: dict[str, float | None]) -> float:
    """The chosen rule's parameter (its default when unset), refusing another rule's parameter in one line."""
    get_commit_rule(rule)
    for name, value in values.items():
        if value is not None and name != rule:
            raise BiglmError(f"option '{name}' is the parameter of commit rule '{name}' (this decoding commits by "
                             f"'{rule}')")
    value = values.get(rule)
    return COMMIT_RULES[rule].check(rule, COMMIT_RULES[rule].default if value is None else value)


def select_commits(rule: str, value: float, p: Predictions, where: Tensor, remaining: Tensor,
                   passes_left: int) -> Tensor:
    """The positions of ``where`` (N, L) to commit by ``rule`` at ``value``, with at least
    ⌈``remaining`` / ``passes_left``⌉ (≥ 1) of each row's most confident (``remaining``: (N,) masked positions)."""
    confidence = p.margins if COMMIT_RULES[rule].needs_margins else p.logprobs
    ranks = rank_in_row(confidence, where, descending=True)
    at_least = (remaining + passes_left - 1) // passes_left
    return where & (COMMIT_RULES[rule].test(p, where, ranks, value) | (ranks < at_least[:, None]))
