"""Masked-token cross-entropy with the prefix (X) and suffix (Y) parts reported apart."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from biglm.attention import SUFFIX


@dataclass
class LossParts:
    """Summed losses and target counts; divide by a normaliser to get means.

    The parts are detached 0-d tensors on the logits' device, so the training loop can accumulate them
    without a host-device synchronisation per micro-batch (``stats()`` converts them in one go).
    """

    loss_sum: Tensor  # differentiable
    x_sum: Tensor
    x_count: Tensor
    y_sum: Tensor
    y_count: Tensor

    def stats(self) -> Tensor:
        """(x_sum, x_count, y_sum, y_count) as one float tensor."""
        return torch.stack([self.x_sum, self.x_count, self.y_sum, self.y_count]).double()


def masked_lm_loss(logits: Tensor, targets: Tensor, regions: Tensor | None) -> LossParts:
    """Summed cross-entropy of ``logits`` (N, V) against ``targets`` (N,), split by ``regions`` (N,).

    The caller divides ``loss_sum`` by the number of masked tokens of the whole (global) batch, so
    gradient accumulation and data parallelism give the same update as one large batch.
    """
    per_token = F.cross_entropy(logits.float(), targets, reduction="none")
    is_y = regions == SUFFIX if regions is not None else torch.zeros_like(targets, dtype=torch.bool)
    detached = per_token.detach()
    y_sum = detached[is_y].sum()
    y_count = is_y.sum()
    return LossParts(per_token.sum(), detached.sum() - y_sum, is_y.numel() - y_count, y_sum, y_count)
