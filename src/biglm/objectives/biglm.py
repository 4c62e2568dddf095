"""BiGLM's pre-training task (paper §2.1): split each document into prefix X and suffix Y, mask X
lightly (understanding) and Y with a uniform ratio (generation), and hide Y from X's queries."""

from __future__ import annotations

import torch
from torch import Tensor

from biglm.attention import PREFIX, SUFFIX, AttentionLayout
from biglm.objectives.base import Batch, Documents, apply_mask, count_to_mask, position_ids_for
from biglm.objectives.config import BiGLMObjectiveConfig
from biglm.objectives.masking import span_mask


class BiGLMObjective:
    """Turns packed token rows into BiGLM training batches. Deterministic for a given generator."""

    def __init__(self, config: BiGLMObjectiveConfig, mask_token_id: int, vocab_size: int,
                 specials: object = None) -> None:
        self.config = config
        self.mask_token_id = mask_token_id
        self.vocab_size = vocab_size

    def sample_split(self, lengths: Tensor, generator: torch.Generator) -> Tensor:
        """Prefix length per document, uniform in [ceil(alpha·n), floor((1-alpha)·n)], kept in [1, n-1]."""
        a = self.config.alpha
        n = lengths.double()
        lo = torch.ceil(a * n).long().clamp(min=1)
        hi = torch.floor((1 - a) * n).long().minimum(lengths - 1).maximum(lo)
        u = torch.rand(lengths.numel(), generator=generator, dtype=torch.float64)
        return lo + torch.floor(u * (hi - lo + 1).double()).long().minimum(hi - lo)

    def sample_ratios(self, num_docs: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        """beta_X and beta_Y per document."""
        c = self.config
        lo, hi = c.beta_y_range
        beta_y = lo + (hi - lo) * torch.rand(num_docs, generator=generator, dtype=torch.float64)
        if c.beta_x_mode == "adaptive":
            beta_x = c.lambda1 - c.lambda2 * beta_y
        elif c.beta_x_mode == "fixed":
            beta_x = torch.full_like(beta_y, c.beta_x_fixed)
        else:
            beta_x = torch.zeros_like(beta_y)
        return beta_x, beta_y

    def __call__(self, input_ids: Tensor, document_ids: Tensor, generator: torch.Generator) -> Batch:
        """``input_ids`` and ``document_ids`` are (B, T) packed rows (document id -1 = padding)."""
        c = self.config
        B, T = input_ids.shape
        docs = Documents.from_ids(document_ids)
        trained = docs.lengths >= c.min_loss_tokens
        split = torch.where(trained, self.sample_split(docs.lengths, generator), docs.lengths)
        beta_x, beta_y = self.sample_ratios(docs.lengths.numel(), generator)
        # Two maskable segments per document: X = [start, start+split), Y = [start+split, start+len).
        x_len, y_len = split, docs.lengths - split
        count_x = torch.where(trained & (beta_x > 0), count_to_mask(x_len, beta_x), 0)
        count_y = torch.where(trained, count_to_mask(y_len, beta_y), 0)
        starts = torch.stack([docs.starts, docs.starts + split], 1).flatten()
        lengths = torch.stack([x_len, y_len], 1).flatten()
        counts = torch.stack([count_x, count_y], 1).flatten()
        max_span = c.max_span if c.masking_unit == "span" else 1
        masked = span_mask(starts, lengths, counts, B * T, max_span, generator).view(B, T)

        flat, doc = docs.token_offsets()
        regions = torch.full((B * T,), PREFIX, dtype=torch.int8)
        is_suffix = (flat - docs.starts[doc]) >= split[doc]
        regions[flat[is_suffix]] = SUFFIX
        inputs, labels = apply_mask(input_ids, masked, self.mask_token_id)
        kind = "prefix_blind" if c.attention_masking else "bidirectional"
        layout = AttentionLayout(kind, document_ids.to(torch.int32), regions.view(B, T))
        return Batch(inputs, labels, position_ids_for(document_ids, c.reset_position_ids), layout)
