"""FlexAttention backend: the layout rule of ``biglm.attention`` as a ``BlockMask``, with no (T, T) tensor.

The reference backend (SDPA) gets a dense (B, 1, Tq, Tk) mask, 16 MiB per row in fp32 at T = 2048,
which also keeps SDPA off its flash kernels and computes every masked-out block. Here the same rule
(``mask_rule``) is the ``mask_mod`` of FlexAttention, and the ``BlockMask`` is built from per-block
summaries of the metadata (min/max document id, region and position of each block of ``block_size``
tokens), O(B · Tq/bs · Tk/bs) work and memory:

- a block pair whose document ranges do not overlap, or where the rule fails for every pair
  (e.g. a prefix-blind query block entirely in X against a key block entirely in Y), is skipped;
- a pair where both blocks are one and the same document and the rule holds for every pair is *full*
  (computed without evaluating the mask);
- every other pair is *partial*: the kernel evaluates ``mask_rule`` per element, so the result is exact
  whatever the classification, which only has to be conservative.

Decoding passes with a single query token (autoregressive steps) use SDPA with the (B, 1, 1, Tk) mask
row: there is nothing to skip, and every new cache length would otherwise be a new compiled shape.

On CPU, torch (2.13) has a compiled FlexAttention kernel for the forward pass only; when gradients are
needed there, the same op runs through torch's unfused reference implementation (it materialises the
scores: correct, for tests, but neither fast nor lean). On CUDA forward and backward are compiled.
"""

from __future__ import annotations

import math
from functools import cache

import torch
from torch import Tensor
from torch.nn.attention.flex_attention import BlockMask, flex_attention

from biglm.attention import PREFIX, SUFFIX, AttentionLayout, mask_rule

DEFAULT_BLOCK_SIZE = 128


def _pad_to(x: Tensor, length: int) -> Tensor:
    """Right-pad (B, T) by repeating the last column (leaves every block's min and max unchanged)."""
    if x.shape[1] == length:
        return x
    return torch.cat([x, x[:, -1:].expand(x.shape[0], length - x.shape[1])], dim=1)


def _block_stats(x: Tensor, block: int) -> tuple[Tensor, Tensor]:
    """Per-block min and max of (B, T_padded): two (B, T_padded // block) tensors."""
    b = x.view(x.shape[0], -1, block)
    return b.amin(-1), b.amax(-1)


def classify_blocks(kind: str, q_docs: Tensor, q_regs: Tensor, k_docs: Tensor, k_regs: Tensor,
                    past_len: int, q_len: int, block: int) -> tuple[Tensor, Tensor]:
    """(full, partial) boolean (B, nq, nk) block maps for queries at positions ``past_len + [0, q_len)``
    and keys at ``[0, k_len)``; the rest is skipped. Inputs are already padded to whole blocks."""
    qd_lo, qd_hi = (t[:, :, None] for t in _block_stats(q_docs.int(), block))
    kd_lo, kd_hi = (t[:, None, :] for t in _block_stats(k_docs.int(), block))
    qr_lo, qr_hi = (t[:, :, None] for t in _block_stats(q_regs.int(), block))
    kr_lo, kr_hi = (t[:, None, :] for t in _block_stats(k_regs.int(), block))
    nq, nk = q_docs.shape[1] // block, k_docs.shape[1] // block
    dev = q_docs.device
    q_first = past_len + torch.arange(nq, device=dev)[None, :, None] * block
    q_last = torch.clamp(q_first + block - 1, max=past_len + q_len - 1)
    k_first = torch.arange(nk, device=dev)[None, None, :] * block
    k_last = torch.clamp(k_first + block - 1, max=k_docs.shape[1] - 1)

    one_doc = (qd_lo == qd_hi) & (kd_lo == kd_hi) & (qd_lo == kd_lo)
    apart = (qd_hi < kd_lo) | (kd_hi < qd_lo)
    k_all_x, k_all_y = kr_hi == PREFIX, kr_lo == SUFFIX
    q_all_x, q_all_y = qr_hi == PREFIX, qr_lo == SUFFIX
    before, after = k_last <= q_first, k_first > q_last  # every key at/before every query; every key after
    true = torch.ones_like(one_doc)
    if kind == "prefix_blind":
        rule_all, rule_none = k_all_x | q_all_y, k_all_y & q_all_x
    elif kind == "prefix_lm":
        rule_all, rule_none = k_all_x | (q_all_y & before), k_all_y & (q_all_x | after)
    elif kind == "causal":
        rule_all, rule_none = before, after
    elif kind == "bidirectional":
        rule_all, rule_none = true, ~true
    else:  # a kind without block rules: never full, never skipped by its rule (exact, only slower)
        rule_all, rule_none = ~true, ~true
    full = one_doc & rule_all
    partial = ~full & ~(apart | rule_none)
    return full, partial


def _ordered(blocks: Tensor) -> tuple[Tensor, Tensor]:
    """(B, nq, nk) bool -> BlockMask's (num (B, 1, nq), indices (B, 1, nq, nk)): selected blocks first."""
    num = blocks.sum(-1, dtype=torch.int32)
    idx = torch.argsort(blocks.to(torch.int8), dim=-1, descending=True, stable=True).to(torch.int32)
    return num[:, None], idx[:, None]


def layout_block_mask(layout: AttentionLayout, batch: int, q_len: int, past: AttentionLayout | None = None,
                      past_len: int = 0, device: torch.device | str = "cpu",
                      block_size: int = DEFAULT_BLOCK_SIZE) -> BlockMask:
    """The ``BlockMask`` of ``layout`` for ``q_len`` queries after ``past_len`` cached keys (whose metadata
    is ``past``), shared by every layer and head; same arguments and meaning as ``attention_mask``."""
    device = torch.device(device)
    zeros = lambda n, dt: torch.zeros(batch, n, dtype=dt, device=device)
    q_docs = layout.document_ids if layout.document_ids is not None else zeros(q_len, torch.int32)
    q_regs = layout.regions if layout.regions is not None else zeros(q_len, torch.int8)
    q_docs, q_regs = q_docs.to(device, torch.int32), q_regs.to(device, torch.int8)
    k_docs, k_regs = q_docs, q_regs
    if past_len:
        past = past or AttentionLayout()
        p_docs = past.document_ids if past.document_ids is not None else zeros(past_len, torch.int32)
        p_regs = past.regions if past.regions is not None else zeros(past_len, torch.int8)
        k_docs = torch.cat([p_docs.to(device, torch.int32), q_docs], dim=1)
        k_regs = torch.cat([p_regs.to(device, torch.int8), q_regs], dim=1)
    k_len = past_len + q_len
    q_pad, k_pad = math.ceil(q_len / block_size) * block_size, math.ceil(k_len / block_size) * block_size
    # Padded to whole blocks: the kernel may evaluate mask_mod on the tail block's out-of-range indices.
    q_docs, q_regs = _pad_to(q_docs, q_pad), _pad_to(q_regs, q_pad)
    k_docs, k_regs = _pad_to(k_docs, k_pad), _pad_to(k_regs, k_pad)
    full, partial = classify_blocks(layout.kind, q_docs, q_regs, k_docs, k_regs, past_len, q_len, block_size)
    kind = layout.kind

    def mask_mod(b: Tensor, h: Tensor, q_idx: Tensor, kv_idx: Tensor) -> Tensor:
        return mask_rule(kind, q_docs[b, q_idx], q_regs[b, q_idx], q_idx + past_len,
                         k_docs[b, kv_idx], k_regs[b, kv_idx], kv_idx)

    num, idx = _ordered(partial)
    full_num, full_idx = _ordered(full)
    return BlockMask.from_kv_blocks(num, idx, full_num, full_idx, BLOCK_SIZE=block_size, mask_mod=mask_mod,
                                    seq_lengths=(q_len, k_len))


def skipped_share(block_mask: BlockMask) -> float:
    """Share of the (query block, key block) pairs the kernel skips (0 = dense, → 1 = nothing computed)."""
    computed = block_mask.kv_num_blocks.sum() + (block_mask.full_kv_num_blocks.sum()
                                                 if block_mask.full_kv_num_blocks is not None else 0)
    q_len, k_len = block_mask.seq_lengths
    bq, bk = block_mask.BLOCK_SIZE
    total = block_mask.kv_num_blocks.shape[0] * math.ceil(q_len / bq) * math.ceil(k_len / bk)
    return 1.0 - float(computed) / total


@cache
def _compiled_flex():  # type: ignore[no-untyped-def]
    # Static shapes: inductor's CPU FlexAttention template fails to build with dynamic sizes (torch 2.13).
    return torch.compile(flex_attention, dynamic=False)


def flex_attend(q: Tensor, k: Tensor, v: Tensor, block_mask: BlockMask) -> Tensor:
    """Attention of q (B, H, Tq, D) over k, v (B, H_kv, Tk, D) under ``block_mask`` (grouped-query aware)."""
    gqa = q.shape[1] != k.shape[1]
    needs_grad = torch.is_grad_enabled() and (q.requires_grad or k.requires_grad or v.requires_grad)
    if q.device.type == "cpu" and needs_grad:
        return _reference_flex(q, k, v, block_mask)
    return _compiled_flex()(q, k, v, block_mask=block_mask, enable_gqa=gqa)


def _reference_flex(q: Tensor, k: Tensor, v: Tensor, block_mask: BlockMask) -> Tensor:
    """torch's unfused FlexAttention (same op, same BlockMask and mask_mod) with autograd, for CPU training."""
    from torch._higher_order_ops.flex_attention import flex_attention as flex_op
    from torch.nn.attention.flex_attention import _apply_kernel_options, _identity

    if q.shape[1] != k.shape[1]:  # grouped-query attention: query head h reads key/value head h // group
        group = q.shape[1] // k.shape[1]
        k, v = k.repeat_interleave(group, dim=1), v.repeat_interleave(group, dim=1)
    options = _apply_kernel_options(q, k, v, False, None, None)
    out, _, _ = flex_op(q, k, v, _identity, block_mask.as_tuple(), 1.0 / math.sqrt(q.shape[-1]), options)
    return out
