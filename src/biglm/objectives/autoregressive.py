"""Autoregressive objectives: ``causal`` (left to right) and ``bidirectional-ar`` (BatGPT §3.1, eq. 1).

Both are next-token prediction under the ``causal`` attention layout, per packed document piece. How
the model knows the direction: **the first token of every sequence says which way it reads.** The
data pipeline wraps a document as ``BOS x1 … xn EOS``; its mirror image ``EOS xn … x1 BOS`` is the
same document read right to left. So a left-to-right (L2R) piece starts with BOS, a right-to-left
(R2L) piece is the reversed piece starting with EOS, and the model is a plain causal decoder over
either: its R2L prediction of ``x_t`` sees only ``EOS`` and the tokens after ``t``. Nothing is added
to the vocabulary or the network, the checkpoint exports as a standard causal LM, and R2L use at
inference is "reverse the text, put EOS in front, decode, stop at BOS".

A piece cut at a row boundary lacks its natural marker (an L2R piece that starts mid-document has no
BOS; an R2L piece whose document goes on in the next row has no EOS in front): the marker is inserted
in front of it, the row's tail loses one token per insertion (rows keep ``seq_len`` tokens), and the
prediction right after an inserted marker is left out of the loss, so ``p(x | BOS)`` and
``p(x | EOS)`` are only ever trained on true document starts and ends.

``bidirectional-ar`` picks the direction of each piece with probability ``r2l_fraction`` of R2L by
systematic sampling inside each row (one uniform per row; the k-th piece is R2L when
``⌊u + (k+1)·p⌋ > ⌊u + k·p⌋``): every piece is R2L with probability p, and a row of n pieces holds
⌊n·p⌋ or ⌈n·p⌉ of them, so the share per batch stays close to p. With p = 0.5 the expected loss is
half of eq. 1's sum of the L2R and R2L log-likelihoods, at the cost per token of a causal LM.
``causal`` is the same transform with p = 0. R2L tokens carry region 1 (L2R region 0), so the
trainer's two loss parts are the L2R and R2L losses.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor

from biglm.attention import AttentionLayout
from biglm.errors import ConfigError
from biglm.objectives.base import IGNORE_INDEX, Batch, Documents, position_ids_for
from biglm.objectives.config import BidirectionalARObjectiveConfig, CausalObjectiveConfig

L2R, R2L = 0, 1
"""Region ids of the two directions in an autoregressive batch."""


def _specials(specials: Mapping[str, int] | None) -> tuple[int, int, int]:
    specials = dict(specials or {})
    missing = [k for k in ("bos", "eos") if specials.get(k) is None]
    if missing:
        raise ConfigError(f"the autoregressive objectives need the tokenizer's {' and '.join(missing).upper()} "
                          "ids (they mark the reading direction)")
    return int(specials["bos"]), int(specials["eos"]), int(specials.get("pad", 0) or 0)


def _row_exclusive_cumsum(values: Tensor, row: Tensor) -> Tensor:
    """Exclusive cumulative sum of ``values`` restarting at each new ``row`` (rows sorted)."""
    total = torch.cumsum(values, 0)
    new = torch.ones_like(row, dtype=torch.bool)
    new[1:] = row[1:] != row[:-1]
    run_start = torch.where(new, torch.arange(row.numel()), 0).cummax(0).values
    return total - values - (total[run_start] - values[run_start])


class AutoregressiveObjective:
    """Packed rows → next-token batches, each piece read L2R or R2L (see the module docstring)."""

    def __init__(self, config: CausalObjectiveConfig | BidirectionalARObjectiveConfig, mask_token_id: int,
                 vocab_size: int, specials: Mapping[str, int] | None = None) -> None:
        self.config = config
        self.r2l_fraction = float(getattr(config, "r2l_fraction", 0.0))
        self.bos, self.eos, self.pad = _specials(specials)
        self.vocab_size = vocab_size

    def directions(self, row: Tensor, batch: int, generator: torch.Generator) -> Tensor:
        """R2L flag (bool) of each piece; ``row`` (N,) is the row of each piece, sorted."""
        p = self.r2l_fraction
        if p <= 0.0:
            return torch.zeros(row.numel(), dtype=torch.bool)
        if p >= 1.0:
            return torch.ones(row.numel(), dtype=torch.bool)
        k = _row_exclusive_cumsum(torch.ones_like(row), row).double()
        u = torch.rand(batch, generator=generator, dtype=torch.float64)[row]
        return torch.floor(u + (k + 1) * p) > torch.floor(u + k * p)

    def __call__(self, input_ids: Tensor, document_ids: Tensor, generator: torch.Generator) -> Batch:
        """``input_ids`` and ``document_ids`` are (B, T) packed rows (document id -1 = padding)."""
        B, T = input_ids.shape
        docs = Documents.from_ids(document_ids)
        r2l = self.directions(docs.row, B, generator)
        flat, piece = docs.token_offsets()
        offset = flat - docs.starts[piece]
        last = docs.lengths[piece] - 1
        source = docs.starts[piece] + torch.where(r2l[piece], last - offset, offset)  # reversal
        tokens = input_ids.reshape(-1)[source]
        first = input_ids.reshape(-1)[docs.starts + torch.where(r2l, docs.lengths - 1, 0)]
        marker = torch.where(r2l, self.eos, self.bos)
        inserted = (first != marker).long()
        shift = _row_exclusive_cumsum(inserted, docs.row)
        row_start = docs.row * T
        piece_start = docs.starts - row_start + shift  # in-row index of the piece's first slot
        new_pos = piece_start[piece] + inserted[piece] + offset
        ids = torch.full((B * T,), self.pad, dtype=input_ids.dtype)
        doc_out = torch.full((B * T,), -1, dtype=torch.int32)
        regions = torch.zeros(B * T, dtype=torch.int8)
        keep = new_pos < T
        dest = (row_start[piece] + new_pos)[keep]
        ids[dest] = tokens[keep]
        piece_doc = document_ids.reshape(-1)[docs.starts].to(torch.int32)
        doc_out[dest] = piece_doc[piece][keep]
        regions[dest] = r2l[piece][keep].to(torch.int8)
        has_marker = (inserted > 0) & (piece_start < T)
        marker_at = (row_start + piece_start)[has_marker]
        ids[marker_at] = marker[has_marker].to(ids.dtype)
        doc_out[marker_at] = piece_doc[has_marker]
        regions[marker_at] = r2l[has_marker].to(torch.int8)

        ids, doc_out, regions = ids.view(B, T), doc_out.view(B, T), regions.view(B, T)
        labels = torch.full((B, T), IGNORE_INDEX, dtype=input_ids.dtype)
        same = (doc_out[:, 1:] == doc_out[:, :-1]) & (doc_out[:, :-1] >= 0)
        labels[:, :-1] = torch.where(same, ids[:, 1:], IGNORE_INDEX)
        labels.view(-1)[marker_at] = IGNORE_INDEX  # the token after an inserted marker: no loss
        layout = AttentionLayout("causal", doc_out, regions)
        return Batch(ids, labels, position_ids_for(doc_out, self.config.reset_position_ids), layout)


__all__ = ["L2R", "R2L", "AutoregressiveObjective"]
