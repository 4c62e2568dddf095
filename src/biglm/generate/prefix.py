"""The prompt side of the engine: prompts encoded once (the exact prefix cache) and one pass over a suffix after them.

Under the prefix-blind layout X = ``BOS prompt`` never attends Y, so X's keys and values are the same in every
pass: ``encode_prefix`` runs X once with ``use_cache=True`` and each pass runs Y alone with ``past=cache`` (see
``biglm.generate.engine``). Prompts of different lengths are left-padded; pad tokens get document id -1.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from biglm.attention import PREFIX, SUFFIX, AttentionLayout
from biglm.devices import model_device
from biglm.errors import BiglmError
from biglm.model import BiGLMOutput, KVCache, suffix_position_ids

PAD_DOCUMENT = -1


@dataclass
class EncodedPrefix:
    """A left-padded batch of prefixes X (B, P) and, with the cache on, their keys and values."""

    input_ids: Tensor
    document_ids: Tensor
    """0 on real tokens, -1 on left padding."""
    position_ids: Tensor
    lengths: Tensor
    """(B,) real tokens per row (BOS included): each row's Y starts at this position."""
    cache: KVCache | None = None
    length_logits: Tensor | None = None

    @property
    def width(self) -> int:
        return self.input_ids.shape[1]

    def index_select(self, index: Tensor) -> EncodedPrefix:
        """Rows ``index`` (e.g. each prompt repeated once per length candidate)."""
        pick = lambda t: None if t is None else t.index_select(0, index.to(t.device))
        cache = self.cache.index_select(index) if self.cache is not None else None
        return EncodedPrefix(pick(self.input_ids), pick(self.document_ids), pick(self.position_ids),
                             pick(self.lengths), cache, pick(self.length_logits))


@torch.inference_mode()
def encode_prefix(model: nn.Module, prefixes: Sequence[Sequence[int]], *, pad_token_id: int = 0,
                  use_cache: bool = True, length_logits: bool = False) -> EncodedPrefix:
    """Left-pad ``prefixes`` (token ids, BOS included) into one batch; with ``use_cache`` encode them
    once and keep the cache; with ``length_logits`` also read the length head over the real tokens."""
    if not prefixes or any(len(p) == 0 for p in prefixes):
        raise BiglmError("encode_prefix: every prefix needs at least one token")
    device = model_device(model)
    lengths = torch.tensor([len(p) for p in prefixes], dtype=torch.long)
    width = int(lengths.max())
    ids = torch.full((len(prefixes), width), pad_token_id, dtype=torch.long)
    for i, p in enumerate(prefixes):
        ids[i, width - len(p):] = torch.as_tensor(list(p), dtype=torch.long)
    pad = torch.arange(width)[None, :] < (width - lengths)[:, None]
    docs = torch.where(pad, PAD_DOCUMENT, 0).to(torch.int32)
    positions = (torch.arange(width)[None, :] - (width - lengths)[:, None]).clamp_min(0)
    prefix = EncodedPrefix(ids.to(device), docs.to(device), positions.to(device), lengths.to(device))
    if use_cache or length_logits:
        layout = AttentionLayout("prefix_blind", prefix.document_ids,
                                 torch.full_like(prefix.document_ids, PREFIX, dtype=torch.int8))
        out = model(prefix.input_ids, layout, prefix.position_ids, logits_mask=torch.zeros_like(pad, device=device),
                    length_mask=(~pad).to(device) if length_logits else None, use_cache=use_cache)
        prefix.cache = out.cache if use_cache else None
        if length_logits:
            if out.length_logits is None:
                raise BiglmError("length='predict' needs a model with a length head (config.length_head)")
            prefix.length_logits = out.length_logits.float()
    return prefix


def suffix_forward(model: nn.Module, prefix: EncodedPrefix, tokens: Tensor, active: Tensor,
                   logits_mask: Tensor | None = None, *, use_cache: bool = False) -> BiGLMOutput:
    """One pass over the suffix ``tokens`` (B, L) after ``prefix``; ``active`` (B, L) marks each row's real
    suffix positions. Uses the prefix cache when ``prefix.cache`` is set (then ``use_cache`` returns the cache
    of prefix and suffix), else the full sequence (then logits come back for the suffix only)."""
    y_docs = torch.where(active, 0, PAD_DOCUMENT).to(torch.int32)
    y_regions = torch.full_like(y_docs, SUFFIX, dtype=torch.int8)
    y_positions = suffix_position_ids(model.config.suffix_positions, prefix.lengths, tokens.shape[1])
    if prefix.cache is not None:
        layout = AttentionLayout("prefix_blind", y_docs, y_regions)
        return model(tokens, layout, y_positions, logits_mask=logits_mask, past=prefix.cache, use_cache=use_cache)
    if use_cache:
        raise BiglmError("a suffix cache needs the prefix cache (prefix_cache=True)")
    layout = AttentionLayout(
        "prefix_blind", torch.cat([prefix.document_ids, y_docs], dim=1),
        torch.cat([torch.full_like(prefix.document_ids, PREFIX, dtype=torch.int8), y_regions], dim=1))
    full_mask = None
    if logits_mask is not None:
        full_mask = torch.cat([torch.zeros_like(prefix.input_ids, dtype=torch.bool), logits_mask], dim=1)
    out = model(torch.cat([prefix.input_ids, tokens], dim=1), layout,
                torch.cat([prefix.position_ids, y_positions], dim=1), logits_mask=full_mask)
    if logits_mask is None:
        out.logits = out.logits[:, prefix.width:]
    return out


def suffix_logits(model: nn.Module, prefix: EncodedPrefix, tokens: Tensor, active: Tensor,
                  logits_mask: Tensor | None = None) -> Tensor:
    """``suffix_forward``'s logits: (B, L, V), or (N, V) at ``logits_mask``."""
    return suffix_forward(model, prefix, tokens, active, logits_mask).logits
