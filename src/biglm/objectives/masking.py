"""Vectorised masking over many segments at once (no Python loop per token or per document).

A *segment* is a contiguous run of tokens of the flattened (B·T) batch that is masked with its own
count (a document's prefix X or suffix Y, or a whole document for MLM). Each segment is cut into
n-gram chunks (n ≤ max_span, P(n) ∝ 1/n); chunks are taken in random order until the segment's count
is reached, the last one truncated so the count is exact.
"""

from __future__ import annotations

import torch
from torch import Tensor


def span_length_probs(max_span: int) -> Tensor:
    """P(n) ∝ 1/n for n = 1 .. max_span."""
    w = 1.0 / torch.arange(1, max_span + 1, dtype=torch.float64)
    return w / w.sum()


def chunk_segments(lengths: Tensor, max_span: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """Random n-gram chunks tiling every segment: (C,) chunk lengths and (C,) segment index, in order."""
    total = int(lengths.sum())
    if max_span == 1:
        return torch.ones(total, dtype=torch.long), torch.repeat_interleave(torch.arange(lengths.numel()), lengths)
    # One candidate length per token slot; a segment of m tokens never needs more than m chunks.
    draws = torch.multinomial(span_length_probs(max_span), total, replacement=True, generator=generator) + 1
    seg_of_slot = torch.repeat_interleave(torch.arange(lengths.numel()), lengths)
    first_slot = torch.cumsum(lengths, 0) - lengths
    excl = torch.cumsum(draws, 0) - draws  # exclusive cumsum over all slots
    start_in_seg = excl - excl[first_slot][seg_of_slot]
    is_start = start_in_seg < lengths[seg_of_slot]
    chunk_starts = start_in_seg[is_start]
    chunk_seg = seg_of_slot[is_start]
    # A chunk ends where the next chunk of its segment starts, or at the segment's end.
    next_start = torch.cat([chunk_starts[1:], chunk_starts.new_zeros(1)])
    last = torch.cat([chunk_seg[1:] != chunk_seg[:-1], torch.ones(1, dtype=torch.bool)])
    next_start = torch.where(last, lengths[chunk_seg], next_start)
    return next_start - chunk_starts, chunk_seg


def span_mask(starts: Tensor, lengths: Tensor, counts: Tensor, total: int, max_span: int,
              generator: torch.Generator) -> Tensor:
    """Boolean mask over ``total`` flat tokens with exactly ``counts[s]`` masked in segment s.

    Segments are (start, length) runs; masking is in n-gram spans of at most ``max_span`` tokens.
    """
    mask = torch.zeros(total, dtype=torch.bool)
    keep = lengths > 0
    starts, lengths = starts[keep], lengths[keep]
    counts = counts[keep].minimum(lengths)
    if lengths.numel() == 0:
        return mask
    chunk_len, chunk_seg = chunk_segments(lengths, max_span, generator)
    chunk_start = starts[chunk_seg] + _exclusive_segment_cumsum(chunk_len, chunk_seg)
    # Random order of chunks inside each segment: sort by segment + a uniform key in [0, 1).
    key = chunk_seg.double() + torch.rand(chunk_len.numel(), generator=generator, dtype=torch.float64)
    order = torch.argsort(key)
    budget = counts[chunk_seg[order]] - _exclusive_segment_cumsum(chunk_len[order], chunk_seg[order])
    take = budget.clamp(min=0).minimum(chunk_len[order])
    # Mark the first `take` tokens of every chosen chunk.
    tok_chunk = torch.repeat_interleave(torch.arange(order.numel()), take)
    first = torch.cumsum(take, 0) - take
    offset = torch.arange(tok_chunk.numel()) - first[tok_chunk]
    mask[chunk_start[order][tok_chunk] + offset] = True
    return mask


def _exclusive_segment_cumsum(values: Tensor, seg: Tensor) -> Tensor:
    """Exclusive cumulative sum of ``values`` restarting at each change of ``seg`` (sorted runs)."""
    excl = torch.cumsum(values, 0) - values
    new = torch.ones_like(seg, dtype=torch.bool)
    new[1:] = seg[1:] != seg[:-1]
    run_id = torch.cumsum(new.long(), 0) - 1
    return excl - excl[new][run_id]
