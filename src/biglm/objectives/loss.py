"""Masked-token cross-entropy with the prefix (X) and suffix (Y) parts reported apart."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from biglm.attention import SUFFIX


@dataclass
class LossParts:
    """Summed losses and target counts; divide by a normaliser to get means."""

    loss_sum: Tensor  # differentiable
    x_sum: float
    x_count: int
    y_sum: float
    y_count: int


def masked_lm_loss(logits: Tensor, targets: Tensor, regions: Tensor | None) -> LossParts:
    """Summed cross-entropy of ``logits`` (N, V) against ``targets`` (N,), split by ``regions`` (N,).

    The caller divides ``loss_sum`` by the number of masked tokens of the whole (global) batch, so
    gradient accumulation and data parallelism give the same update as one large batch.
    """
    per_token = F.cross_entropy(logits.float(), targets, reduction="none")
    is_y = regions == SUFFIX if regions is not None else torch.zeros_like(targets, dtype=torch.bool)
    detached = per_token.detach()
    y_sum = float(detached[is_y].sum())
    return LossParts(per_token.sum(), float(detached.sum()) - y_sum, int((~is_y).sum()), y_sum, int(is_y.sum()))
