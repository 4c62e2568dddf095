"""Classic masked language modelling (BERT-style; the paper's 'w/o both' ablation)."""

from __future__ import annotations

import torch
from torch import Tensor

from biglm.attention import AttentionLayout
from biglm.objectives.base import Batch, Documents, apply_mask, count_to_mask, position_ids_for
from biglm.objectives.config import MLMObjectiveConfig
from biglm.objectives.masking import span_mask


class MLMObjective:
    """Masks a fixed ratio of every document, with bidirectional attention inside each document."""

    def __init__(self, config: MLMObjectiveConfig, mask_token_id: int, vocab_size: int,
                 specials: object = None) -> None:
        self.config = config
        self.mask_token_id = mask_token_id
        self.vocab_size = vocab_size

    def __call__(self, input_ids: Tensor, document_ids: Tensor, generator: torch.Generator) -> Batch:
        c = self.config
        B, T = input_ids.shape
        docs = Documents.from_ids(document_ids)
        ratio = torch.full((docs.lengths.numel(),), c.mask_ratio, dtype=torch.float64)
        counts = torch.where(docs.lengths >= c.min_loss_tokens, count_to_mask(docs.lengths, ratio), 0)
        max_span = c.max_span if c.masking_unit == "span" else 1
        masked = span_mask(docs.starts, docs.lengths, counts, B * T, max_span, generator).view(B, T)
        inputs, labels = apply_mask(input_ids, masked, self.mask_token_id)
        if c.random_token_prob or c.keep_prob:
            # BERT's rule: of the chosen tokens, some become a random token and some stay unchanged.
            u = torch.rand(B, T, generator=generator)
            randomise = masked & (u < c.random_token_prob)
            keep = masked & (u >= c.random_token_prob) & (u < c.random_token_prob + c.keep_prob)
            random_ids = torch.randint(0, self.vocab_size, (B, T), generator=generator)
            inputs = torch.where(randomise, random_ids, torch.where(keep, input_ids, inputs))
        layout = AttentionLayout("bidirectional", document_ids.to(torch.int32), None)
        return Batch(inputs, labels, position_ids_for(document_ids, c.reset_position_ids), layout)
