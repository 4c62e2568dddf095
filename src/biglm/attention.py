"""Attention layouts: which query may attend which key, described by per-token metadata.

A layout is a rule over (query, key) token pairs, evaluated from three small per-token tensors instead
of a stored dense mask: ``document_ids`` (packed documents never see each other; -1 marks padding),
``regions`` (0 = prefix X / GLM part A, 1 = suffix Y / part B) and the token's index in the sequence.
The same rule drives the dense boolean mask given to SDPA on CPU and could drive a FlexAttention
``mask_mod``; the mask is built once per forward pass and shared by every layer and head.

Kinds:
- ``bidirectional``: every token attends every token of its document (BERT).
- ``prefix_blind``: BiGLM: X attends X only; Y attends X and Y.
- ``prefix_lm``: GLM: part A bidirectional over A; part B attends A and the earlier B tokens.
- ``causal``: each token attends earlier tokens of its document (autoregressive).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

LayoutKind = Literal["bidirectional", "prefix_blind", "prefix_lm", "causal"]
LAYOUT_KINDS: tuple[str, ...] = ("bidirectional", "prefix_blind", "prefix_lm", "causal")

PREFIX, SUFFIX = 0, 1


@dataclass
class AttentionLayout:
    """Per-token metadata from which the attention mask is derived.

    Shapes: ``document_ids`` and ``regions`` are (B, T). Either may be None: no document ids means one
    document per row; no regions means every token is in the prefix region.
    """

    kind: LayoutKind = "bidirectional"
    document_ids: Tensor | None = None
    regions: Tensor | None = None

    def __post_init__(self) -> None:
        if self.kind not in LAYOUT_KINDS:
            raise ValueError(f"attention layout kind {self.kind!r}: expected one of {', '.join(LAYOUT_KINDS)}")

    def to(self, device: torch.device | str) -> AttentionLayout:
        move = lambda t: None if t is None else t.to(device, non_blocking=True)
        return AttentionLayout(self.kind, move(self.document_ids), move(self.regions))

    @property
    def is_trivial(self) -> bool:
        """True when every token may attend every other (no mask needed)."""
        return self.kind == "bidirectional" and self.document_ids is None


def _meta(layout: AttentionLayout, batch: int, length: int, device: torch.device) -> tuple[Tensor, Tensor]:
    docs = layout.document_ids
    regions = layout.regions
    if docs is None:
        docs = torch.zeros(batch, length, dtype=torch.int32, device=device)
    if regions is None:
        regions = torch.zeros(batch, length, dtype=torch.int8, device=device)
    return docs, regions


def attention_mask(
    layout: AttentionLayout,
    batch: int,
    q_len: int,
    past: AttentionLayout | None = None,
    past_len: int = 0,
    device: torch.device | str = "cpu",
) -> Tensor | None:
    """Boolean mask (B, 1, Tq, Tk), True = may attend, or None when nothing is masked.

    With a cache, keys are the ``past_len`` cached tokens followed by the ``q_len`` current ones;
    ``past`` gives the cached tokens' metadata (the layout kind is the current one's).
    """
    device = torch.device(device)
    if layout.is_trivial and (past is None or past.document_ids is None):
        return None
    q_docs, q_regions = _meta(layout, batch, q_len, device)
    k_docs, k_regions = q_docs, q_regions
    if past_len:
        p_docs, p_regions = _meta(past or AttentionLayout(), batch, past_len, device)
        k_docs = torch.cat([p_docs.to(q_docs.dtype), q_docs], dim=1)
        k_regions = torch.cat([p_regions.to(q_regions.dtype), q_regions], dim=1)
    q_idx = torch.arange(past_len, past_len + q_len, device=device)
    k_idx = torch.arange(past_len + q_len, device=device)
    return mask_rule(
        layout.kind,
        q_docs[:, :, None], q_regions[:, :, None], q_idx[None, :, None],
        k_docs[:, None, :], k_regions[:, None, :], k_idx[None, None, :],
    )[:, None]


def mask_rule(kind: str, q_doc: Tensor, q_reg: Tensor, q_idx: Tensor,
              k_doc: Tensor, k_reg: Tensor, k_idx: Tensor) -> Tensor:
    """The layout rule on broadcastable query/key metadata; usable as a FlexAttention mask_mod body."""
    allowed = q_doc == k_doc
    if kind == "prefix_blind":
        allowed = allowed & ((k_reg == PREFIX) | (q_reg == SUFFIX))
    elif kind == "prefix_lm":
        allowed = allowed & ((k_reg == PREFIX) | ((q_reg == SUFFIX) & (k_idx <= q_idx)))
    elif kind == "causal":
        allowed = allowed & (k_idx <= q_idx)
    return allowed
