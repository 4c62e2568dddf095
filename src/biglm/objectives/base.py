"""What every objective produces: a ``Batch`` the model takes, and the segment bookkeeping they share."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from biglm.attention import AttentionLayout

IGNORE_INDEX = -100


@dataclass
class Batch:
    """Model inputs and targets for one micro-batch of packed rows.

    ``labels`` hold the original token where a loss is taken and ``IGNORE_INDEX`` elsewhere;
    ``layout.regions`` tells prefix (0) from suffix (1) tokens for the X / Y metrics.
    """

    input_ids: Tensor  # (B, T)
    labels: Tensor  # (B, T)
    position_ids: Tensor  # (B, T)
    layout: AttentionLayout

    @property
    def loss_mask(self) -> Tensor:
        return self.labels != IGNORE_INDEX

    @property
    def num_targets(self) -> int:
        return int(self.loss_mask.sum())

    def to(self, device: torch.device | str) -> Batch:
        return Batch(self.input_ids.to(device, non_blocking=True), self.labels.to(device, non_blocking=True),
                     self.position_ids.to(device, non_blocking=True), self.layout.to(device))


@dataclass
class Documents:
    """The documents (segments) of a batch of packed rows, flattened over rows.

    ``starts``/``lengths`` index the flat (B·T) token array; ``row`` is each document's row.
    Padding (document id -1) belongs to no document.
    """

    starts: Tensor
    lengths: Tensor
    row: Tensor

    @classmethod
    def from_ids(cls, document_ids: Tensor) -> Documents:
        B, T = document_ids.shape
        key = document_ids.long() + torch.arange(B)[:, None] * (T + 1)  # unique per (row, doc)
        key = torch.where(document_ids >= 0, key, -1).flatten()
        values, counts = torch.unique_consecutive(key, return_counts=True)
        starts = torch.cumsum(counts, 0) - counts
        valid = values >= 0
        return cls(starts[valid], counts[valid], starts[valid] // T)

    def token_offsets(self) -> tuple[Tensor, Tensor]:
        """Flat index of every document token and its document number."""
        doc = torch.repeat_interleave(torch.arange(self.lengths.numel()), self.lengths)
        first = torch.cumsum(self.lengths, 0) - self.lengths
        pos = torch.arange(doc.numel()) - first[doc]
        return self.starts[doc] + pos, doc


def position_ids_for(document_ids: Tensor, reset_per_document: bool) -> Tensor:
    """Row positions 0..T-1, or positions restarting at every document when ``reset_per_document``."""
    B, T = document_ids.shape
    pos = torch.arange(T).expand(B, T)
    if not reset_per_document:
        return pos.clone()
    new_doc = torch.ones(B, T, dtype=torch.bool)
    new_doc[:, 1:] = document_ids[:, 1:] != document_ids[:, :-1]
    start = torch.where(new_doc, pos, 0).cummax(dim=1).values
    return pos - start


def count_to_mask(lengths: Tensor, ratio: Tensor) -> Tensor:
    """Tokens to mask in a segment: max(1, round(len·ratio)), 0 for empty segments, ≤ len."""
    return torch.round(lengths.double() * ratio).long().clamp(min=1).minimum(lengths)


def apply_mask(input_ids: Tensor, masked: Tensor, mask_token_id: int) -> tuple[Tensor, Tensor]:
    """Replace masked tokens with [MASK]; labels keep the originals there and IGNORE_INDEX elsewhere."""
    labels = torch.where(masked, input_ids, IGNORE_INDEX)
    return torch.where(masked, mask_token_id, input_ids), labels
