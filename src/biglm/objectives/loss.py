"""Losses as named terms, and the masked-token criterion every masked objective trains with.

A ``Criterion`` turns a model and a ``Batch`` into ``LossParts``: differentiable per-term *sums* and
detached report parts. The trainer divides each term by its count over the whole global batch
(``Criterion.counts``, computed on the host before the batch moves to the device, so no
synchronisation is needed), weights the terms and adds them. Gradient accumulation and data
parallelism therefore give the same update as one large batch, whatever the terms are.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from biglm.attention import SUFFIX
from biglm.objectives.base import Batch


@dataclass
class LossParts:
    """Summed losses of one micro-batch.

    ``terms`` (name -> differentiable 0-d sum) are what is optimised; ``parts`` (name -> (sum, count),
    detached 0-d tensors on the logits' device) are reported as ``loss_<name>`` = sum / count (e.g. the
    prefix X and suffix Y parts of the masked loss). Nothing here synchronises with the host.
    """

    terms: dict[str, Tensor]
    parts: dict[str, tuple[Tensor, Tensor]] = field(default_factory=dict)

    def report(self) -> dict[str, Tensor]:
        """Detached sums of every term (``term:NAME``) and sums/counts of every part (``NAME:sum``/``NAME:count``)."""
        out = {f"term:{k}": v.detach() for k, v in self.terms.items()}
        for k, (s, n) in self.parts.items():
            out[f"{k}:sum"], out[f"{k}:count"] = s, n
        return out


class Criterion(Protocol):
    """How a batch is scored: ``counts`` (host side, per term), ``weights`` and ``__call__``."""

    weights: dict[str, float]

    def counts(self, batch: Batch) -> dict[str, float]:
        """Items each term of ``batch`` sums over (computed from host tensors, before ``batch.to(device)``)."""
        ...

    def __call__(self, model: nn.Module, batch: Batch) -> LossParts: ...


def masked_lm_loss(logits: Tensor, targets: Tensor, regions: Tensor | None,
                   label_smoothing: float = 0.0, term: str = "mlm", parts: tuple[str, str] = ("x", "y")) -> LossParts:
    """Summed cross-entropy of ``logits`` (N, V) against ``targets`` (N,) as term ``term``, with the two
    ``parts`` split by ``regions`` (N,): region 0 and region 1 (prefix X / suffix Y for the masked
    objectives, left to right / right to left for the autoregressive ones; all region 0 without regions).

    The caller divides the term by the number of masked tokens of the whole (global) batch. With
    ``label_smoothing`` the optimised term is the smoothed loss; the parts report the plain
    cross-entropy, so logged losses stay comparable.
    """
    name = term
    per_token = F.cross_entropy(logits.float(), targets, reduction="none")
    term = per_token if label_smoothing == 0 else F.cross_entropy(
        logits.float(), targets, reduction="none", label_smoothing=label_smoothing)
    is_y = regions == SUFFIX if regions is not None else torch.zeros_like(targets, dtype=torch.bool)
    detached = per_token.detach()
    y_sum = detached[is_y].sum()
    y_count = is_y.sum()
    x_count = is_y.numel() - y_count
    return LossParts({name: term.sum()}, {parts[0]: (detached.sum() - y_sum, x_count), parts[1]: (y_sum, y_count)})


class MaskedLMCriterion:
    """Cross-entropy at the target positions (``batch.loss_mask``), logits computed only there: the masked
    tokens of the masked objectives, or every next-token target of the autoregressive ones (``term``
    ``next_token`` with parts ``l2r`` / ``r2l``)."""

    def __init__(self, label_smoothing: float = 0.0, term: str = "mlm", parts: tuple[str, str] = ("x", "y")) -> None:
        self.label_smoothing = label_smoothing
        self.term, self.parts = term, parts
        self.weights = {term: 1.0}

    def counts(self, batch: Batch) -> dict[str, float]:
        return {self.term: float(batch.num_targets)}

    def __call__(self, model: nn.Module, batch: Batch) -> LossParts:
        mask = batch.loss_mask
        out = model(batch.input_ids, batch.layout, batch.position_ids, logits_mask=mask)
        regions = batch.layout.regions[mask] if batch.layout.regions is not None else None
        return masked_lm_loss(out.logits, batch.labels[mask], regions, self.label_smoothing, self.term, self.parts)
