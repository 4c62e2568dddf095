"""Suffix caches: how much of the suffix Y a decoding pass recomputes.

The prompt's keys and values are cached exactly (``biglm.generate.prefix``). Y's are not: Y attends itself both
ways, so every token's keys and values change whenever a token of Y is committed. Block decoding (``blocks``)
changes one block at a time, and neighbouring passes' keys and values are nearly equal, so they can be reused
(Fast-dLLM's approximate KV cache). Modes (``cache=``):

- ``prefix`` (default, exact): every pass runs all of Y after the prompt's cache.
- ``blocks`` (approximate): a block's first pass runs all of Y and keeps the keys and values of the committed
  blocks before it; the block's later passes run only the current block and the still-masked rest, attending
  the kept ones. Fast-dLLM's "prefix cache".
- ``dual`` (approximate): the block's first pass also keeps the masked later blocks' keys and values; later
  passes run only the current block. Fast-dLLM's "DualCache".

``refresh=k`` > 0 also recomputes everything every k passes inside a block; ``refresh=1`` recomputes at every
pass, which is exactly the ``prefix`` computation (tested). Approximate modes cache blocks, so they need the
``blocks`` strategy and the prompt's cache; they change which forward passes run, never the strategy's rules.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import torch
from torch import Tensor, nn

from biglm.attention import SUFFIX, AttentionLayout
from biglm.errors import BiglmError
from biglm.generate.prefix import PAD_DOCUMENT, EncodedPrefix, suffix_forward, suffix_logits
from biglm.model import KVCache, suffix_position_ids


class SuffixRunner(Protocol):
    """Runs a decoding pass over Y, reusing what its mode allows."""

    approximate: bool

    def __call__(self, model: nn.Module, prefix: EncodedPrefix, tokens: Tensor, active: Tensor, where: Tensor,
                 span: tuple[int, int] | None) -> Tensor:
        """Logits (N, V) at the N positions of ``where`` (B, L), row-major; ``span``: the current block's columns."""
        ...


class ExactSuffix:
    """``prefix``: all of Y every pass (after the prompt's cache when there is one)."""

    approximate = False

    def __call__(self, model: nn.Module, prefix: EncodedPrefix, tokens: Tensor, active: Tensor, where: Tensor,
                 span: tuple[int, int] | None) -> Tensor:
        return suffix_logits(model, prefix, tokens, active, logits_mask=where)


@dataclass
class _Kept:
    span: tuple[int, int]
    past: KVCache
    columns: Tensor
    """The columns of Y the block's later passes run, and their layout and positions (fixed within the block)."""
    layout: AttentionLayout
    positions: Tensor
    passes: int = 1


class BlockCache:
    """``blocks`` (``keep_later=False``) and ``dual`` (``keep_later=True``), see the module docstring."""

    approximate = True

    def __init__(self, keep_later: bool, refresh: int = 0) -> None:
        self.keep_later, self.refresh = keep_later, refresh
        self.kept: _Kept | None = None
        self.full_passes = 0
        """Passes that ran all of Y (the refreshes)."""

    def __call__(self, model: nn.Module, prefix: EncodedPrefix, tokens: Tensor, active: Tensor, where: Tensor,
                 span: tuple[int, int] | None) -> Tensor:
        kept = self.kept
        if span is None:
            raise BiglmError("an approximate suffix cache needs the block being decoded (strategy 'blocks')")
        stale = kept is None or kept.span != span or (self.refresh > 0 and kept.passes % self.refresh == 0)
        if stale or bool(where[:, :span[0]].any() or where[:, span[1]:].any()):
            return self._full(model, prefix, tokens, active, where, span)
        kept.passes += 1
        cols = kept.columns
        return model(tokens[:, cols], kept.layout, kept.positions, logits_mask=where[:, cols], past=kept.past).logits

    def _full(self, model: nn.Module, prefix: EncodedPrefix, tokens: Tensor, active: Tensor, where: Tensor,
              span: tuple[int, int]) -> Tensor:
        out = suffix_forward(model, prefix, tokens, active, logits_mask=where, use_cache=True)
        self.full_passes += 1
        width, length = prefix.width, tokens.shape[1]
        device = tokens.device
        start, end = span
        cached = [torch.arange(width + start, device=device)]  # the prompt and the committed blocks
        run_to = length
        if self.keep_later:
            cached.append(torch.arange(width + end, width + length, device=device))
            run_to = end
        cols = torch.arange(start, run_to, device=device)
        y_docs = torch.where(active[:, cols], 0, PAD_DOCUMENT).to(torch.int32)
        layout = AttentionLayout("prefix_blind", y_docs, torch.full_like(y_docs, SUFFIX, dtype=torch.int8))
        positions = suffix_position_ids(model.config.suffix_positions, prefix.lengths, length)[:, cols]
        self.kept = _Kept(span, out.cache.select_positions(torch.cat(cached)), cols, layout, positions)
        return out.logits


SUFFIX_CACHES: dict[str, Callable[[int], SuffixRunner]] = {
    "prefix": lambda refresh: ExactSuffix(),
    "blocks": lambda refresh: BlockCache(keep_later=False, refresh=refresh),
    "dual": lambda refresh: BlockCache(keep_later=True, refresh=refresh),
}
"""Cache mode name -> its runner, built with the refresh interval."""

APPROXIMATE_CACHES = ("blocks", "dual")


def start_suffix_cache(mode: str, refresh: int | None, blockwise: bool, prefix_cached: bool) -> SuffixRunner:
    """The runner of cache ``mode`` for one decoding, with one-line errors for what it cannot run with."""
    if mode not in SUFFIX_CACHES:
        raise BiglmError(f"unknown cache {str(mode)[:40]!r}: expected one of {', '.join(SUFFIX_CACHES)}")
    if refresh is not None and (not isinstance(refresh, int) or isinstance(refresh, bool) or refresh < 0):
        raise BiglmError(f"refresh={str(refresh)[:40]}: must be an integer >= 0 (0: at each block's start only)")
    if mode in APPROXIMATE_CACHES:
        if not blockwise:
            raise BiglmError(f"cache='{mode}' caches blocks: it needs strategy 'blocks'")
        if not prefix_cached:
            raise BiglmError(f"cache='{mode}' needs the prompt's cache (prefix_cache=True)")
    elif refresh:
        raise BiglmError(f"refresh={refresh} is for the approximate caches ({', '.join(APPROXIMATE_CACHES)}); "
                         f"cache='{mode}' recomputes every pass")
    return SUFFIX_CACHES[mode](refresh or 0)
