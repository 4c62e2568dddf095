"""The BiGLM network: a Llama-style block stack (RoPE, RMSNorm, SwiGLU, grouped-query attention)
with attention governed by an ``AttentionLayout`` instead of a causal mask.

Parameter names follow transformers' ``modeling_llama.py`` so weights map one to one.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from biglm.attention import AttentionLayout, attention_mask
from biglm.attention_flex import BlockMask, flex_attend, layout_block_mask
from biglm.config import ModelConfig


@dataclass
class KVCache:
    """Keys and values (after RoPE) of tokens already encoded, one (B, H_kv, T, D) pair per layer.

    With the prefix-blind layout the prefix never attends the suffix, so its keys and values do not
    depend on the suffix: a cache of the prefix is exact for every later pass over the suffix.
    """

    keys: list[Tensor] = field(default_factory=list)
    values: list[Tensor] = field(default_factory=list)
    layout: AttentionLayout = field(default_factory=AttentionLayout)
    """Metadata (document ids, regions) of the cached tokens, for the masks of later passes."""

    @property
    def length(self) -> int:
        return self.keys[0].shape[2] if self.keys else 0

    def index_select(self, index: Tensor) -> KVCache:
        """The cache of batch rows ``index`` (e.g. repeated once per length candidate)."""
        pick = lambda t: None if t is None else t.index_select(0, index.to(t.device))
        layout = AttentionLayout(self.layout.kind, pick(self.layout.document_ids), pick(self.layout.regions))
        return KVCache([pick(k) for k in self.keys], [pick(v) for v in self.values], layout)

    def select_positions(self, index: Tensor) -> KVCache:
        """The cache of the cached tokens at ``index`` (K,) only (keys carry their rotary positions, so any
        subset, in any order, is a valid cache for a layout whose rule ignores token order)."""
        index = index.to(self.keys[0].device)
        pick = lambda t, dim: None if t is None else t.index_select(dim, index)
        layout = AttentionLayout(self.layout.kind, pick(self.layout.document_ids, 1), pick(self.layout.regions, 1))
        return KVCache([pick(k, 2) for k in self.keys], [pick(v, 2) for v in self.values], layout)


ALIGNED_START = 1
"""Position of a prompt's first token after BOS: where an ``aligned`` suffix starts."""


def suffix_position_ids(mode: str, prefix_lengths: Tensor, width: int) -> Tensor:
    """(B, width) position ids of a suffix Y of ``width`` tokens after prefixes X of ``prefix_lengths`` (B,)
    real tokens each (BOS included), by ``ModelConfig.suffix_positions`` ``mode``: ``continue`` counts on from
    |X|, ``aligned`` starts at ``ALIGNED_START`` (Y's token j at the position of X's token j after BOS)."""
    start = prefix_lengths if mode == "continue" else torch.full_like(prefix_lengths, ALIGNED_START)
    return start[:, None] + torch.arange(width, device=prefix_lengths.device)


@dataclass
class BiGLMOutput:
    logits: Tensor | None = None
    """(B, T, V), or (N, V) for the N positions selected by ``logits_mask``."""
    length_logits: Tensor | None = None
    """(B, max_target_length) when the length head is on and ``length_mask`` was given."""
    hidden_states: Tensor | None = None
    """(B, T, hidden) after the final norm."""
    cache: KVCache | None = None
    span_logits: Tensor | None = None
    """(B, T, 2) start and end logits of every token when the span head is on."""
    reward_logits: Tensor | None = None
    """(B, T) the reward head's scalar at every token when the reward head is on."""


def build_norm(config: ModelConfig) -> nn.Module:
    if config.norm == "layernorm":
        return nn.LayerNorm(config.hidden_size, eps=config.norm_eps)
    return nn.RMSNorm(config.hidden_size, eps=config.norm_eps)


class RotaryEmbedding(nn.Module):
    """RoPE on the first ``rotary_dim`` dimensions of each head (Llama's rotate-half convention).

    ``rope-2d`` (GLM's two position ids): the rotated dimensions are split in two halves, the first
    rotated by the position in part A, the second by the position inside the span, each half with its
    own frequencies over ``rotary_dim / 2`` dimensions (as later GLM releases did).
    """

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.parts = 2 if config.position_encoding == "rope-2d" else 1
        self.dim, self.theta = config.rotary_dim // self.parts, config.rope_theta
        self.register_buffer("inv_freq", self._inv_freq(), persistent=False)

    def _inv_freq(self) -> Tensor:
        return 1.0 / (self.theta ** (torch.arange(0, self.dim, 2, dtype=torch.float32) / self.dim))

    def reset_parameters(self) -> None:
        self.inv_freq = self._inv_freq().to(self.inv_freq.device)

    def forward(self, position_ids: Tensor) -> tuple[Tensor, Tensor]:
        if self.parts == 2:  # (B, T, 2): each id rotates its own half; cos/sin (B, 1, T, 2·dim)
            freqs = position_ids[..., None].float() * self.inv_freq  # (B, T, 2, dim/2)
            emb = torch.cat([freqs, freqs], dim=-1).flatten(-2)[:, None]
            return emb.cos(), emb.sin()
        freqs = position_ids[..., None].float() * self.inv_freq  # (B, T, dim/2)
        emb = torch.cat([freqs, freqs], dim=-1)[:, None]  # (B, 1, T, dim)
        return emb.cos(), emb.sin()


def rotate_half(x: Tensor) -> Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat([-x2, x1], dim=-1)


def rotate_halves(x: Tensor) -> Tensor:
    """``rotate_half`` applied to each half of the last dimension separately (GLM's rope-2d), in one op."""
    x = x.unflatten(-1, (2, 2, -1))  # (..., half, quarter, d/4)
    return torch.stack([-x[..., 1, :], x[..., 0, :]], dim=-2).flatten(-3)


def apply_rotary(x: Tensor, cos: Tensor, sin: Tensor, parts: int = 1) -> Tensor:
    rot = cos.shape[-1]
    turn = rotate_half if parts == 1 else rotate_halves  # rope-2d: each half of the rotated dims on its own
    if rot == x.shape[-1]:
        return x * cos.to(x.dtype) + turn(x) * sin.to(x.dtype)
    x_rot, x_pass = x[..., :rot], x[..., rot:]
    x_rot = x_rot * cos.to(x.dtype) + turn(x_rot) * sin.to(x.dtype)
    return torch.cat([x_rot, x_pass], dim=-1)


class Attention(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.num_heads, self.num_kv_heads, self.head_dim = config.num_heads, config.num_kv_heads, config.head_dim
        self.dropout = config.dropout
        self.rope_parts = 2 if config.position_encoding == "rope-2d" else 1
        self.q_proj = nn.Linear(config.hidden_size, self.num_heads * self.head_dim, bias=False)
        self.k_proj = nn.Linear(config.hidden_size, self.num_kv_heads * self.head_dim, bias=False)
        self.v_proj = nn.Linear(config.hidden_size, self.num_kv_heads * self.head_dim, bias=False)
        self.o_proj = nn.Linear(self.num_heads * self.head_dim, config.hidden_size, bias=False)

    def forward(self, x: Tensor, rope: tuple[Tensor, Tensor] | None, mask: Tensor | BlockMask | None,
                past: tuple[Tensor, Tensor] | None = None) -> tuple[Tensor, tuple[Tensor, Tensor]]:
        B, T, _ = x.shape
        q = self.q_proj(x).view(B, T, self.num_heads, self.head_dim).transpose(1, 2)  # (B, H, T, D)
        k = self.k_proj(x).view(B, T, self.num_kv_heads, self.head_dim).transpose(1, 2)  # (B, Hkv, T, D)
        v = self.v_proj(x).view(B, T, self.num_kv_heads, self.head_dim).transpose(1, 2)
        if rope is not None:  # None: learned absolute positions (learned-2d)
            q, k = apply_rotary(q, *rope, self.rope_parts), apply_rotary(k, *rope, self.rope_parts)
        if past is not None:
            k, v = torch.cat([past[0], k], dim=2), torch.cat([past[1], v], dim=2)
        if isinstance(mask, BlockMask):  # the flex backend
            y = flex_attend(q, k, v, mask)
        else:
            y = F.scaled_dot_product_attention(
                q, k, v, attn_mask=mask, dropout_p=self.dropout if self.training else 0.0,
                enable_gqa=self.num_kv_heads != self.num_heads,
            )
        y = y.transpose(1, 2).reshape(B, T, self.num_heads * self.head_dim)
        return self.o_proj(y), (k, v)


class MLP(nn.Module):
    """SwiGLU feed-forward."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.up_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.down_proj = nn.Linear(config.intermediate_size, config.hidden_size, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class Block(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.input_layernorm = build_norm(config)
        self.self_attn = Attention(config)
        self.post_attention_layernorm = build_norm(config)
        self.mlp = MLP(config)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: Tensor, rope: tuple[Tensor, Tensor] | None, mask: Tensor | BlockMask | None,
                past: tuple[Tensor, Tensor] | None = None) -> tuple[Tensor, tuple[Tensor, Tensor]]:
        h, kv = self.self_attn(self.input_layernorm(x), rope, mask, past)
        x = x + self.dropout(h)
        x = x + self.dropout(self.mlp(self.post_attention_layernorm(x)))
        return x, kv


class BiGLMStack(nn.Module):
    """The stack every model is built on (``BiGLM.model``): token embeddings → blocks → final norm, under the
    attention layout of each call (as transformers' ``T5Stack``; the exported transformers class of the same
    network is ``biglm.hf.modeling_biglm.BiGLMModel``)."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.rotary = RotaryEmbedding(config)
        if config.position_encoding == "learned-2d":  # GLM's two learned position tables (names as GLM's)
            self.position_embeddings = nn.Embedding(config.max_seq_len, config.hidden_size)
            self.block_position_embeddings = nn.Embedding(config.max_seq_len, config.hidden_size)
        self.layers = nn.ModuleList(Block(config) for _ in range(config.num_layers))
        self.norm = build_norm(config)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, input_ids: Tensor, layout: AttentionLayout | None = None,
                position_ids: Tensor | None = None, past: KVCache | None = None,
                use_cache: bool = False) -> tuple[Tensor, KVCache | None]:
        B, T = input_ids.shape
        layout = layout or AttentionLayout()
        past_len = past.length if past is not None else 0
        if position_ids is None:
            position_ids = torch.arange(past_len, past_len + T, device=input_ids.device).expand(B, T)
        if self.config.positions_2d and position_ids.dim() == 2:  # one id given: inside-span position 0
            position_ids = torch.stack([position_ids, torch.zeros_like(position_ids)], dim=-1)
        past_layout = past.layout if past else None
        if self.config.attn_backend == "flex" and T > 1:  # one-token decoding steps keep SDPA's mask row
            mask = layout_block_mask(layout, B, T, past_layout, past_len, input_ids.device,
                                     self.config.attn_block_size)
        else:
            mask = attention_mask(layout, B, T, past_layout, past_len, input_ids.device)
        if isinstance(mask, Tensor):
            # An additive mask built once is cheaper for SDPA than a boolean one converted in every layer.
            dtype = self.embed_tokens.weight.dtype
            if torch.is_autocast_enabled(input_ids.device.type):
                dtype = torch.get_autocast_dtype(input_ids.device.type)
            mask = torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill_(~mask, float("-inf"))
        x = self.embed_tokens(input_ids)
        if self.config.position_encoding == "learned-2d":
            rope = None
            x = x + self.position_embeddings(position_ids[..., 0])
            x = x + self.block_position_embeddings(position_ids[..., 1])
        else:
            rope = self.rotary(position_ids)
        x = self.dropout(x)
        keys, values = [], []
        for i, layer in enumerate(self.layers):
            layer_past = (past.keys[i], past.values[i]) if past is not None else None
            x, (k, v) = layer(x, rope, mask, layer_past)
            if use_cache:
                keys.append(k)
                values.append(v)
        cache = None
        if use_cache:
            cache = KVCache(keys, values, _concat_layouts(past.layout if past else None, layout, B, past_len, T))
        return self.norm(x), cache


def _concat_layouts(past: AttentionLayout | None, new: AttentionLayout, batch: int,
                    past_len: int, length: int) -> AttentionLayout:
    if past is None:
        return AttentionLayout(new.kind, new.document_ids, new.regions)

    def cat(a: Tensor | None, b: Tensor | None, dtype: torch.dtype) -> Tensor | None:
        if a is None and b is None:
            return None
        device = (a if a is not None else b).device
        a = a if a is not None else torch.zeros(batch, past_len, dtype=dtype, device=device)
        b = b if b is not None else torch.zeros(batch, length, dtype=dtype, device=device)
        return torch.cat([a.to(dtype), b.to(dtype)], dim=1)

    return AttentionLayout(new.kind, cat(past.document_ids, new.document_ids, torch.int32),
                           cat(past.regions, new.regions, torch.int8))


class BiGLM(nn.Module):
    """The language model of every family (masked, causal, bidirectional-ar, glm: ``config.family``; the layout
    given to ``forward`` says how tokens attend): the stack (``BiGLMStack``), the tied LM head and the optional
    length-prediction, span (extractive question answering) and reward heads."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.model = BiGLMStack(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.length_head = nn.Linear(config.hidden_size, config.max_target_length) if config.length_head else None
        self.span_head = nn.Linear(config.hidden_size, 2) if config.span_head else None
        self.reward_head = nn.Linear(config.hidden_size, 1) if config.reward_head else None
        self.tie_weights()
        if self.lm_head.weight.device.type != "meta":
            self.init_weights()

    def tie_weights(self) -> None:
        """Share the LM head with the input embedding (again after ``to_empty``, which unties them)."""
        if self.config.tie_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight

    @torch.no_grad()
    def init_weights(self) -> None:
        """Normal(0, init_std) for every matrix; residual output projections scaled by 1/sqrt(2L).

        Also re-ties the head, so a model built on the meta device and moved with ``to_empty`` is whole.
        """
        self.tie_weights()
        std = self.config.init_std
        out_std = std / math.sqrt(2 * self.config.num_layers) if self.config.scaled_residual_init else std
        for name, module in self.named_modules():
            if isinstance(module, nn.Linear | nn.Embedding):
                is_out = name.endswith(("o_proj", "down_proj"))
                nn.init.normal_(module.weight, mean=0.0, std=out_std if is_out else std)
                if getattr(module, "bias", None) is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.RMSNorm | nn.LayerNorm | RotaryEmbedding):
                module.reset_parameters()

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def forward(
        self,
        input_ids: Tensor,
        layout: AttentionLayout | None = None,
        position_ids: Tensor | None = None,
        *,
        logits_mask: Tensor | None = None,
        length_mask: Tensor | None = None,
        past: KVCache | None = None,
        use_cache: bool = False,
    ) -> BiGLMOutput:
        """Encode ``input_ids`` (B, T) under ``layout``.

        ``logits_mask`` (B, T) bool computes logits only at the selected positions (the masked ones in
        training), returned flat as (N, V). ``length_mask`` (B, T) bool selects the tokens mean-pooled
        by the length head (the prefix). ``past`` is a cache of earlier tokens of the same rows;
        ``use_cache`` returns the cache extended by this call's tokens. ``position_ids`` are (B, T), or
        (B, T, 2) for a model with 2D positions (``config.positions_2d``: GLM's position in part A and
        position inside the span; (B, T) ids then mean inside-span position 0).
        """
        hidden, cache = self.model(input_ids, layout, position_ids, past, use_cache)
        selected = hidden[logits_mask] if logits_mask is not None else hidden
        logits = self.lm_head(selected)
        length_logits = None
        if self.length_head is not None and length_mask is not None:
            weights = length_mask.to(hidden.dtype)[..., None]
            pooled = (hidden * weights).sum(1) / weights.sum(1).clamp_min(1.0)
            length_logits = self.length_head(pooled)
        span_logits = self.span_head(hidden) if self.span_head is not None else None
        reward_logits = self.reward_head(hidden).squeeze(-1) if self.reward_head is not None else None
        return BiGLMOutput(logits, length_logits, hidden, cache, span_logits, reward_logits)
