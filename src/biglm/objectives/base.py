"""What every objective produces: a ``Batch`` the model takes, and the segment bookkeeping they share."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from biglm.attention import AttentionLayout

IGNORE_INDEX = -100


@dataclass
class Batch:
    """Model inputs and targets for one micro-batch of packed rows.

    ``labels`` hold the original token where a loss is taken and ``IGNORE_INDEX`` elsewhere;
    ``layout.regions`` tells prefix (0) from suffix (1) tokens for the X / Y metrics. ``extras`` holds
    further per-row inputs or targets of a task (e.g. ``length_targets`` (B,), ``length_mask`` (B, T)),
    moved and concatenated with the rest.
    """

    input_ids: Tensor  # (B, T)
    labels: Tensor  # (B, T)
    position_ids: Tensor  # (B, T)
    layout: AttentionLayout
    extras: dict[str, Tensor] = field(default_factory=dict)

    @property
    def loss_mask(self) -> Tensor:
        return self.labels != IGNORE_INDEX

    @property
    def num_targets(self) -> int:
        return int(self.loss_mask.sum())

    @property
    def num_tokens(self) -> int:
        """Real (non-padding) tokens: document id >= 0, or every position without document ids."""
        docs = self.layout.document_ids
        return self.input_ids.numel() if docs is None else int((docs >= 0).sum())

    def to(self, device: torch.device | str) -> Batch:
        move = lambda t: t.to(device, non_blocking=True)
        return Batch(move(self.input_ids), move(self.labels), move(self.position_ids), self.layout.to(device),
                     {k: move(v) for k, v in self.extras.items()})


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
