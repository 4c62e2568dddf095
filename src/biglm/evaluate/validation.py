"""A held-out masked loss that compares runs trained with different objectives.

Every document of every batch is split at its midpoint into prefix X (``len // 2`` tokens, unmasked)
and suffix Y (the rest); for each ratio β on a fixed grid, ``max(1, round(β·|Y|))`` Y tokens are
replaced by [MASK] and the model predicts them under the prefix-blind layout. The masked positions
are nested across the grid: each Y token gets one seeded random priority and the β·|Y| lowest are
masked, so the β = 0.3 mask contains the β = 0.15 one. Masking is per token (not spans), the same
for every objective, and depends only on the data and ``seed``, never on the model.

``loss`` is the mean over the grid of the per-β mean cross-entropy (each β weighted equally, so the
number is comparable between runs whatever their masking ratios in training); ``per_beta`` holds each
β's value. Documents shorter than 2 tokens have no X/Y split and are skipped. Positions are the
rows' own (as packed), which RoPE makes irrelevant since documents never attend each other.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor

from biglm.attention import AttentionLayout
from biglm.errors import BiglmError
from biglm.model import BiGLM
from biglm.objectives import IGNORE_INDEX, Batch, MaskedLMCriterion
from biglm.objectives.base import Documents
from biglm.objectives.heldout import heldout_sums

BETA_GRID: tuple[float, ...] = (0.15, 0.3, 0.5, 0.7, 0.9)


@dataclass
class ValidationResult:
    loss: float
    """Mean over the β grid of the per-β mean masked-token cross-entropy (nats)."""
    per_beta: dict[float, float] = field(default_factory=dict)
    tokens: dict[float, int] = field(default_factory=dict)
    """Masked tokens scored at each β."""
    documents: int = 0


def _documents(doc_ids: Tensor) -> list[tuple[int, int, int]]:
    """(row, start, length) of each document (run of one non-negative id) of packed rows."""
    docs = Documents.from_ids(doc_ids)
    T = doc_ids.shape[1]
    return [(r, s - r * T, n) for r, s, n in zip(docs.row.tolist(), docs.starts.tolist(), docs.lengths.tolist())]


@torch.no_grad()
def validation_loss(model: BiGLM, batches: Iterable[Mapping[str, Tensor]], mask_token_id: int,
                    beta_grid: Sequence[float] = BETA_GRID, seed: int = 0) -> ValidationResult:
    """Held-out masked loss on ``batches`` of ``{"input_ids", "document_ids"}`` (B, T) rows (module doc)."""
    grid = tuple(float(b) for b in beta_grid)
    if not grid or any(not 0.0 < b <= 1.0 for b in grid):
        raise BiglmError(f"validation beta_grid={list(beta_grid)}: needs ratios in (0, 1]")
    device = model.lm_head.weight.device
    criterion = MaskedLMCriterion()
    gen = torch.Generator().manual_seed(seed)
    sums = dict.fromkeys(grid, 0.0)
    counts = dict.fromkeys(grid, 0)
    n_docs = 0
    was_training = model.training
    model.eval()
    try:
        for batch in batches:
            ids, docs = batch["input_ids"].long().cpu(), batch["document_ids"].cpu()
            if ids.shape != docs.shape or ids.dim() != 2:
                raise BiglmError(f"validation batch: input_ids {tuple(ids.shape)} and document_ids "
                                 f"{tuple(docs.shape)} must both be (B, T)")
            regions = torch.zeros(ids.shape, dtype=torch.int8)
            priority = torch.full(ids.shape, float("inf"))
            y_spans = []
            for r, start, length in _documents(docs):
                if length < 2:
                    continue
                split = start + length // 2
                regions[r, split:start + length] = 1
                priority[r, split:start + length] = torch.rand(start + length - split, generator=gen)
                y_spans.append((r, split, start + length - split))
                n_docs += 1
            if not y_spans:
                continue
            rank = _rank_within_spans(priority, y_spans)
            layout = AttentionLayout("prefix_blind", docs.to(torch.int32), regions)
            positions = torch.arange(ids.shape[1]).expand(ids.shape)
            for beta in grid:
                masked = torch.zeros(ids.shape, dtype=torch.bool)
                for r, split, n in y_spans:
                    k = max(1, round(beta * n))
                    masked[r, split:split + n] = rank[r, split:split + n] < k
                batch = Batch(torch.where(masked, mask_token_id, ids), torch.where(masked, ids, IGNORE_INDEX),
                              positions, layout)
                part = heldout_sums(model, criterion, [batch], device)
                sums[beta] += float(part[f"term:{criterion.term}"])
                counts[beta] += int(part[f"count:{criterion.term}"])
    finally:
        model.train(was_training)
    if not n_docs:
        raise BiglmError("validation: no document of 2 or more tokens in the batches")
    per_beta = {b: sums[b] / counts[b] for b in grid}
    return ValidationResult(sum(per_beta.values()) / len(grid), per_beta, counts, n_docs)


def _rank_within_spans(priority: Tensor, spans: list[tuple[int, int, int]]) -> Tensor:
    """Each suffix token's rank (0 = masked first) among its own suffix's priorities."""
    rank = torch.zeros(priority.shape, dtype=torch.long)
    for r, split, n in spans:
        rank[r, split:split + n] = priority[r, split:split + n].argsort().argsort()
    return rank
