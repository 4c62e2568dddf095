"""Held-out loss: one loop for every caller (the trainer's ``val_loss``, alignment's pretraining loss, the
β-grid validation loss of ``biglm.evaluate``).

``heldout_sums`` runs a criterion over batches without gradients and adds up what it reports (per term
``term:<name>`` and its host-side ``count:<name>``; per part ``<name>:sum`` / ``<name>:count``), leaving the
sums on the device (no synchronisation per batch). ``mean_loss`` turns such sums (added over ranks by a caller
that has several) into the weighted mean loss over the terms that have items.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import torch
from torch import nn

from biglm.objectives.base import Batch
from biglm.objectives.loss import Criterion


def add_sums(total: dict[str, Any], new: Mapping[str, Any]) -> dict[str, Any]:
    """``total`` with ``new`` added key by key (missing keys start at ``new``'s value)."""
    for key, value in new.items():
        total[key] = total[key] + value if key in total else value
    return total


@torch.no_grad()
def heldout_sums(model: nn.Module, criterion: Criterion, batches: Iterable[Batch],
                 device: torch.device | None = None,
                 context: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext) -> dict[str, Any]:
    """The criterion's sums over ``batches`` (host batches, moved to ``device``, default the model's): counts
    per term as floats, terms and parts as 0-d tensors. Each forward runs inside ``context()`` (e.g.
    autocast). The model's train/eval mode is the caller's."""
    device = device if device is not None else next(model.parameters()).device
    sums: dict[str, Any] = {}
    for batch in batches:
        add_sums(sums, {f"count:{k}": v for k, v in criterion.counts(batch).items()})
        with context():
            parts = criterion(model, batch.to(device))
        add_sums(sums, parts.report())
    return sums


def term_means(sums: Mapping[str, Any]) -> dict[str, float]:
    """Each term's mean loss (``term:<t>`` / ``count:<t>``; NaN for a term with no items)."""
    terms = sorted(k[5:] for k in sums if k.startswith("term:"))
    counts = {t: float(sums.get(f"count:{t}", 0.0)) for t in terms}
    return {t: float(sums[f"term:{t}"]) / counts[t] if counts[t] else math.nan for t in terms}


def mean_loss(sums: Mapping[str, Any], weights: Mapping[str, float]) -> float:
    """The weighted sum of the term means over the terms with items (NaN when none has any)."""
    means = term_means(sums)
    counted = [weights.get(t, 1.0) * m for t, m in means.items() if sums.get(f"count:{t}", 0.0)]
    return sum(counted) if counted else math.nan
