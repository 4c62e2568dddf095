"""A DELIBERATE, SELF-CONTAINED COPY of the network of ``biglm/model.py`` (and the layouts of ``biglm/attention.py``),
written for transformers: ``biglm export-hf`` copies this file next to the weights as remote code, so that an
exported folder loads with ``trust_remote_code=True`` on a machine where biglm is not installed. It therefore
imports nothing from biglm. A change to the network in ``biglm/model.py`` must be made here too:
``tests/hf/test_hf_parity.py`` fails when the two disagree on outputs for any family, position encoding or layout.

transformers models for BiGLM: ``BiGLMModel`` (the backbone), ``BiGLMForMaskedLM``,
``BiGLMForQuestionAnswering``, ``BiGLMForCausalLM`` (causal / bidirectional-ar models whose layout
Llama cannot express: LayerNorm, partial rotary or a 2D position encoding; with a KV cache for
``generate()``) and ``BiGLMForBlankInfilling`` (GLM models: 2D positions, part A / part B attention,
``infill()``). Only torch, transformers and the sibling ``configuration_biglm`` are imported; parameter names
are transformers' Llama names, so a biglm ``model.safetensors`` loads as is.

Attention (one boolean mask shared by all layers, given to ``scaled_dot_product_attention``):

- default: bidirectional, every token attends every token;
- ``attention_mask`` (B, T) with 0 at padding: real tokens attend only real tokens and padding only
  padding (biglm's document id -1), so padded rows give the same outputs as unpadded ones;
- ``regions`` (B, T) with 0 = prefix X, 1 = suffix Y: BiGLM's prefix-blind mask, X attends X only and
  Y attends X and Y (``AttentionLayout("prefix_blind", ...)``);
- for GLM models (``config.attention_layout == "prefix_lm"``) ``regions`` mean part A (0) and part B (1): A attends A;
  a B token attends A and the B tokens up to itself (GLM's ``prefix_lm`` layout);
- a 4D ``attention_mask`` (B, 1, T, T) (bool, True = may attend, or additive float) is used as given.

GLM models take ``position_ids`` (B, T, 2): the position in part A (for B tokens, their blank's) and the
position inside the span (0 in A); (B, T) ids mean inside-span position 0.

``token_type_ids`` (returned by some tokenizers) are accepted and ignored. Positions default to
``arange(T)``: pass ``position_ids`` for left-padded batches.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from transformers import GenerationMixin, PreTrainedModel
from transformers.modeling_outputs import BaseModelOutput, CausalLMOutputWithPast, QuestionAnsweringModelOutput
from transformers.utils import ModelOutput

from .configuration_biglm import BiGLMConfig
from .decoding_biglm import ParallelDecodeOutput, generate_parallel

_TRANSFORMERS_V5 = int(__import__("transformers").__version__.split(".")[0]) >= 5


@dataclass
class BiGLMMaskedLMOutput(ModelOutput):
    """``MaskedLMOutput`` plus ``length_logits`` (B, max_target_length) of the optional length head."""

    loss: Tensor | None = None
    logits: Tensor | None = None
    length_logits: Tensor | None = None
    hidden_states: tuple[Tensor, ...] | None = None


def build_norm(config: BiGLMConfig) -> nn.Module:
    if config.norm == "layernorm":
        return nn.LayerNorm(config.hidden_size, eps=config.norm_eps)
    return nn.RMSNorm(config.hidden_size, eps=config.norm_eps)


def rotate_half(x: Tensor) -> Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat([-x2, x1], dim=-1)


def rotate_halves(x: Tensor) -> Tensor:
    """``rotate_half`` applied to each half of the last dimension separately (GLM's rope-2d), in one op."""
    x = x.unflatten(-1, (2, 2, -1))  # (..., half, quarter, d/4)
    return torch.stack([-x[..., 1, :], x[..., 0, :]], dim=-2).flatten(-3)


def apply_rotary(x: Tensor, cos: Tensor, sin: Tensor, parts: int = 1) -> Tensor:
    """RoPE on the first ``cos.shape[-1]`` dimensions of each head (Llama's rotate-half convention);
    ``parts=2`` (GLM's rope-2d): the two halves of those dimensions rotated separately."""
    rot = cos.shape[-1]
    turn = rotate_half if parts == 1 else rotate_halves  # rope-2d: each half of the rotated dims on its own
    if rot == x.shape[-1]:
        return x * cos.to(x.dtype) + turn(x) * sin.to(x.dtype)
    x_rot, x_pass = x[..., :rot], x[..., rot:]
    x_rot = x_rot * cos.to(x.dtype) + turn(x_rot) * sin.to(x.dtype)
    return torch.cat([x_rot, x_pass], dim=-1)


def rotary_cos_sin(config: BiGLMConfig, position_ids: Tensor) -> tuple[Tensor, Tensor]:
    """(B, 1, T, rotary_dim) cos and sin in float32; frequencies computed on the CPU as in biglm
    (rope-2d: each of the two ids over its half of the rotated dimensions)."""
    parts = 2 if getattr(config, "position_encoding", "rope") == "rope-2d" else 1
    dim = config.rotary_dim // parts
    inv_freq = 1.0 / (config.rope_theta ** (torch.arange(0, dim, 2, dtype=torch.float32) / dim))
    freqs = position_ids[..., None].float() * inv_freq.to(position_ids.device)
    emb = torch.cat([freqs, freqs], dim=-1)
    emb = (emb.flatten(-2) if parts == 2 else emb)[:, None]
    return emb.cos(), emb.sin()


def build_attention_mask(attention_mask: Tensor | None, regions: Tensor | None,
                         prefix_lm: bool = False) -> Tensor | None:
    """The (B, 1, T, T) mask (True = may attend) for padding and prefix-blind regions (GLM: prefix-LM
    regions), or None."""
    if attention_mask is not None and attention_mask.dim() == 4:
        return attention_mask
    if regions is None and (attention_mask is None or bool(attention_mask.all())):
        return None
    ref = attention_mask if attention_mask is not None else regions
    real = attention_mask.bool() if attention_mask is not None else torch.ones_like(ref, dtype=torch.bool)
    allowed = real[:, :, None] == real[:, None, :]
    if regions is not None:
        suffix = regions.bool()
        if prefix_lm:  # GLM: keys in part A, or earlier part B keys for a part B query
            T = suffix.shape[1]
            earlier = torch.ones(T, T, dtype=torch.bool, device=suffix.device).tril()
            allowed = allowed & (~suffix[:, None, :] | (suffix[:, :, None] & earlier))
        else:
            allowed = allowed & (~suffix[:, None, :] | suffix[:, :, None])
    return allowed[:, None]


def build_causal_mask(attention_mask: Tensor | None, batch: int, length: int, past: int,
                      device: torch.device) -> Tensor:
    """(B, 1, T, past+T) causal mask (True = may attend); ``attention_mask`` (B, past+T), 0 = padding, hides
    padded keys (a padding query keeps its causal keys so that no row is empty)."""
    q = torch.arange(past, past + length, device=device)[:, None]
    k = torch.arange(past + length, device=device)[None, :]
    allowed = (k <= q)[None].expand(batch, length, past + length)
    if attention_mask is not None and attention_mask.dim() == 2:
        real = attention_mask.bool().to(device)
        allowed = allowed & (real[:, None, -(past + length):] | ~real[:, -length:, None])
    return allowed[:, None]


class BiGLMAttention(nn.Module):
    def __init__(self, config: BiGLMConfig) -> None:
        super().__init__()
        self.num_heads, self.num_kv_heads = config.num_heads, config.num_kv_heads
        self.head_dim = config.head_dim
        self.dropout = config.dropout
        self.rope_parts = 2 if getattr(config, "position_encoding", "rope") == "rope-2d" else 1
        self.q_proj = nn.Linear(config.hidden_size, self.num_heads * self.head_dim, bias=False)
        self.k_proj = nn.Linear(config.hidden_size, self.num_kv_heads * self.head_dim, bias=False)
        self.v_proj = nn.Linear(config.hidden_size, self.num_kv_heads * self.head_dim, bias=False)
        self.o_proj = nn.Linear(self.num_heads * self.head_dim, config.hidden_size, bias=False)

    def forward(self, x: Tensor, cos: Tensor, sin: Tensor, mask: Tensor | None, cache: Any = None,
                layer_idx: int = 0) -> Tensor:
        B, T, _ = x.shape
        q = self.q_proj(x).view(B, T, self.num_heads, self.head_dim).transpose(1, 2)
        k = self.k_proj(x).view(B, T, self.num_kv_heads, self.head_dim).transpose(1, 2)
        v = self.v_proj(x).view(B, T, self.num_kv_heads, self.head_dim).transpose(1, 2)
        if cos is not None:  # None: learned absolute positions (GLM's learned-2d)
            q, k = apply_rotary(q, cos, sin, self.rope_parts), apply_rotary(k, cos, sin, self.rope_parts)
        if cache is not None:  # a transformers Cache: keys/values after RoPE, as biglm's KVCache
            k, v = cache.update(k, v, layer_idx)
        y = F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, dropout_p=self.dropout if self.training else 0.0,
            enable_gqa=self.num_kv_heads != self.num_heads,
        )
        return self.o_proj(y.transpose(1, 2).reshape(B, T, self.num_heads * self.head_dim))


class BiGLMMLP(nn.Module):
    """SwiGLU feed-forward."""

    def __init__(self, config: BiGLMConfig) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.up_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.down_proj = nn.Linear(config.intermediate_size, config.hidden_size, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class BiGLMBlock(nn.Module):
    def __init__(self, config: BiGLMConfig) -> None:
        super().__init__()
        self.input_layernorm = build_norm(config)
        self.self_attn = BiGLMAttention(config)
        self.post_attention_layernorm = build_norm(config)
        self.mlp = BiGLMMLP(config)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: Tensor, cos: Tensor, sin: Tensor, mask: Tensor | None, cache: Any = None,
                layer_idx: int = 0) -> Tensor:
        x = x + self.dropout(self.self_attn(self.input_layernorm(x), cos, sin, mask, cache, layer_idx))
        return x + self.dropout(self.mlp(self.post_attention_layernorm(x)))


class BiGLMPreTrainedModel(PreTrainedModel):
    """Weight init as ``biglm.model.BiGLM.init_weights``: Normal(0, init_std) for every matrix, residual
    output projections (``o_proj``, ``down_proj``) scaled by 1/sqrt(2L) when ``scaled_residual_init``."""

    config_class = BiGLMConfig
    base_model_prefix = "model"
    supports_gradient_checkpointing = True
    _no_split_modules = ["BiGLMBlock"]  # noqa: RUF012 (transformers class attribute)
    _supports_sdpa = True

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        std = self.config.init_std
        out_std = std / math.sqrt(2 * self.config.num_layers) if self.config.scaled_residual_init else std
        if isinstance(module, nn.Linear | nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=std)
            if getattr(module, "bias", None) is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.RMSNorm | nn.LayerNorm):
            nn.init.ones_(module.weight)
            if getattr(module, "bias", None) is not None:
                nn.init.zeros_(module.bias)
        # Modules are visited children first: re-draw the residual output projections with out_std.
        if isinstance(module, BiGLMAttention):
            nn.init.normal_(module.o_proj.weight, mean=0.0, std=out_std)
        elif isinstance(module, BiGLMMLP):
            nn.init.normal_(module.down_proj.weight, mean=0.0, std=out_std)


class BiGLMModel(BiGLMPreTrainedModel):
    """The bare model (transformers' ``AutoModel``; biglm's ``BiGLMStack``): token embeddings → blocks → final
    norm; ``last_hidden_state`` is after the norm."""

    def __init__(self, config: BiGLMConfig) -> None:
        super().__init__(config)
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        if getattr(config, "position_encoding", "rope") == "learned-2d":
            self.position_embeddings = nn.Embedding(config.max_seq_len, config.hidden_size)
            self.block_position_embeddings = nn.Embedding(config.max_seq_len, config.hidden_size)
        self.layers = nn.ModuleList(BiGLMBlock(config) for _ in range(config.num_layers))
        self.norm = build_norm(config)
        self.dropout = nn.Dropout(config.dropout)
        self.gradient_checkpointing = False
        self.post_init()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.embed_tokens

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.embed_tokens = value

    def forward(
        self,
        input_ids: Tensor | None = None,
        attention_mask: Tensor | None = None,
        regions: Tensor | None = None,
        position_ids: Tensor | None = None,
        inputs_embeds: Tensor | None = None,
        token_type_ids: Tensor | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        cache: Any = None,
        causal: bool = False,
        **kwargs: Any,
    ) -> BaseModelOutput | tuple[Tensor, ...]:
        """Encode ``input_ids`` (B, T) (or ``inputs_embeds``); see the module docstring for the masks.
        ``causal``: each token attends the earlier ones (and the ``cache`` of earlier calls, which is
        extended in place)."""
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("BiGLMModel: pass exactly one of input_ids and inputs_embeds")
        x = self.embed_tokens(input_ids) if inputs_embeds is None else inputs_embeds
        B, T = x.shape[:2]
        past = int(cache.get_seq_length()) if cache is not None else 0
        if position_ids is None:
            position_ids = torch.arange(past, past + T, device=x.device).expand(B, T)
        encoding = getattr(self.config, "position_encoding", "rope")
        if encoding != "rope" and position_ids.dim() == 2:
            position_ids = torch.stack([position_ids, torch.zeros_like(position_ids)], dim=-1)
        if encoding == "learned-2d":
            cos = sin = None
            x = x + self.position_embeddings(position_ids[..., 0])
            x = x + self.block_position_embeddings(position_ids[..., 1])
        else:
            cos, sin = rotary_cos_sin(self.config, position_ids)
        if causal:
            mask = build_causal_mask(attention_mask, B, T, past, x.device)
        else:
            mask = build_attention_mask(attention_mask, regions, prefix_lm=self.config.attention_layout == "prefix_lm")
        if mask is not None and mask.dtype != torch.bool:
            mask = mask.to(x.dtype)
        output_hidden_states = output_hidden_states if output_hidden_states is not None \
            else self.config.output_hidden_states
        x = self.dropout(x)
        states: list[Tensor] = []
        for i, layer in enumerate(self.layers):
            if output_hidden_states:
                states.append(x)
            if self.gradient_checkpointing and self.training:
                x = self._gradient_checkpointing_func(layer.__call__, x, cos, sin, mask)
            else:
                x = layer(x, cos, sin, mask, cache, i)
        x = self.norm(x)
        hidden = (*states, x) if output_hidden_states else None
        if not (return_dict if return_dict is not None else self.config.return_dict):
            return (x, hidden) if hidden is not None else (x,)
        return BaseModelOutput(last_hidden_state=x, hidden_states=hidden)


class BiGLMWithLMHead(BiGLMPreTrainedModel):
    """The backbone and the (tied) LM head that the masked, causal and blank-infilling models share; a
    subclass adds its own heads and calls ``post_init()``."""

    _tied_weights_keys = ({"lm_head.weight": "model.embed_tokens.weight"}
                          if _TRANSFORMERS_V5 else ["lm_head.weight"])

    def __init__(self, config: BiGLMConfig) -> None:
        super().__init__(config)
        self.model = BiGLMModel(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)

    def get_input_embeddings(self) -> nn.Embedding:
        return self.model.embed_tokens

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.model.embed_tokens = value

    def get_output_embeddings(self) -> nn.Linear:
        return self.lm_head

    def set_output_embeddings(self, value: nn.Linear) -> None:
        self.lm_head = value


class BiGLMForMaskedLM(BiGLMWithLMHead):
    """BiGLM with the (tied) LM head and the optional length head; loss = mean cross-entropy over
    ``labels != -100``. ``generate_parallel`` decodes as ``biglm generate`` (``decoding_biglm.py``)."""

    def __init__(self, config: BiGLMConfig) -> None:
        super().__init__(config)
        self.length_head = (nn.Linear(config.hidden_size, config.max_target_length)
                            if config.length_head else None)
        self.post_init()

    def forward(
        self,
        input_ids: Tensor | None = None,
        attention_mask: Tensor | None = None,
        regions: Tensor | None = None,
        position_ids: Tensor | None = None,
        inputs_embeds: Tensor | None = None,
        labels: Tensor | None = None,
        length_mask: Tensor | None = None,
        token_type_ids: Tensor | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        num_items_in_batch: int | Tensor | None = None,
        **kwargs: Any,
    ) -> BiGLMMaskedLMOutput | tuple[Tensor, ...]:
        """Logits (B, T, V). ``labels`` (B, T) give the loss (-100 = no loss; divided by
        ``num_items_in_batch`` when given, else by the number of targets). ``length_mask`` (B, T) bool
        selects the tokens mean-pooled by the length head (the prefix)."""
        out = self.model(input_ids, attention_mask, regions, position_ids, inputs_embeds,
                         output_hidden_states=output_hidden_states, return_dict=True)
        hidden = out.last_hidden_state
        logits = self.lm_head(hidden)
        loss = None
        if labels is not None:
            flat_logits, flat_labels = logits.view(-1, logits.shape[-1]).float(), labels.reshape(-1)
            if num_items_in_batch is not None:
                loss = F.cross_entropy(flat_logits, flat_labels, ignore_index=-100, reduction="sum")
                loss = loss / num_items_in_batch
            else:
                loss = F.cross_entropy(flat_logits, flat_labels, ignore_index=-100)
        length_logits = None
        if self.length_head is not None and length_mask is not None:
            weights = length_mask.to(hidden.dtype)[..., None]
            pooled = (hidden * weights).sum(1) / weights.sum(1).clamp_min(1.0)
            length_logits = self.length_head(pooled)
        if not (return_dict if return_dict is not None else self.config.return_dict):
            items = (loss, logits, length_logits, out.hidden_states)
            return tuple(t for t in items if t is not None)
        return BiGLMMaskedLMOutput(loss, logits, length_logits, out.hidden_states)

    def generate_parallel(self, input_ids: Any = None, attention_mask: Any = None,
                          **options: Any) -> ParallelDecodeOutput:
        """Greedy parallel decoding of ``max_new_tokens`` after each prompt, with biglm's strategies
        (``mask-predict``, ``threshold``, ``blocks``) and commit rules (``threshold``, ``factor``, ``margin``):
        the tokens ``biglm generate`` gives with the same options. Every pass recomputes the whole sequence
        (no prefix or suffix caches). See ``decoding_biglm.generate_parallel`` for the options."""
        return generate_parallel(self, input_ids, attention_mask, **options)


class BiGLMForQuestionAnswering(BiGLMPreTrainedModel):
    """BiGLM with the span head of extractive question answering (``biglm finetune --task extractive-qa``):
    start and end logits per token over ``BOS question EOS context EOS`` windows."""

    def __init__(self, config: BiGLMConfig) -> None:
        super().__init__(config)
        self.model = BiGLMModel(config)
        self.span_head = nn.Linear(config.hidden_size, 2)
        self.post_init()

    def forward(
        self,
        input_ids: Tensor | None = None,
        attention_mask: Tensor | None = None,
        position_ids: Tensor | None = None,
        inputs_embeds: Tensor | None = None,
        start_positions: Tensor | None = None,
        end_positions: Tensor | None = None,
        return_dict: bool | None = None,
        **kwargs: Any,
    ) -> QuestionAnsweringModelOutput | tuple[Tensor, ...]:
        """``start_logits`` / ``end_logits`` (B, T); with ``start_positions`` / ``end_positions`` the loss is
        the mean of their cross-entropies."""
        hidden = self.model(input_ids, attention_mask, None, position_ids, inputs_embeds,
                            return_dict=True).last_hidden_state
        start_logits, end_logits = self.span_head(hidden).float().unbind(-1)
        loss = None
        if start_positions is not None and end_positions is not None:
            loss = (F.cross_entropy(start_logits, start_positions) + F.cross_entropy(end_logits, end_positions)) / 2
        if not (return_dict if return_dict is not None else self.config.return_dict):
            return tuple(t for t in (loss, start_logits, end_logits) if t is not None)
        return QuestionAnsweringModelOutput(loss=loss, start_logits=start_logits, end_logits=end_logits)


class BiGLMForCausalLM(BiGLMWithLMHead, GenerationMixin):
    """A causal (or bidirectional-ar) biglm model as a transformers causal LM: logits (B, T, V), the
    shifted next-token loss, and a KV cache so ``generate()`` works. Right to left: feed ``EOS`` and the
    reversed ids, stop at BOS."""

    def __init__(self, config: BiGLMConfig) -> None:
        super().__init__(config)
        self.post_init()

    def forward(
        self,
        input_ids: Tensor | None = None,
        attention_mask: Tensor | None = None,
        position_ids: Tensor | None = None,
        cache: Any = None,
        past_key_values: Any = None,
        inputs_embeds: Tensor | None = None,
        labels: Tensor | None = None,
        use_cache: bool | None = None,
        logits_to_keep: int = 0,
        return_dict: bool | None = None,
        **kwargs: Any,
    ) -> Any:
        """Causal LM over ``input_ids`` (B, T); ``cache`` (``past_key_values`` in transformers 4) holds
        earlier tokens. ``labels`` (B, T): loss = mean cross-entropy of token t+1 from position t."""
        cache = cache if cache is not None else past_key_values
        if use_cache and cache is None:
            from transformers.cache_utils import DynamicCache

            cache = DynamicCache(config=self.config) if _TRANSFORMERS_V5 else DynamicCache()
        out = self.model(input_ids, attention_mask, None, position_ids, inputs_embeds, return_dict=True,
                         cache=cache if use_cache or cache is not None else None, causal=True)
        hidden = out.last_hidden_state
        if logits_to_keep:
            hidden = hidden[:, -logits_to_keep:]
        logits = self.lm_head(hidden)
        loss = None
        if labels is not None:
            loss = F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]).float(), labels[:, 1:].reshape(-1),
                                   ignore_index=-100)
        field = "cache" if "cache" in CausalLMOutputWithPast.__dataclass_fields__ else "past_key_values"
        return CausalLMOutputWithPast(loss=loss, logits=logits, **{field: cache})


class BiGLMForBlankInfilling(BiGLMForMaskedLM):
    """A GLM model (``family: glm``): logits (B, T, V) under the part A / part B layout given by
    ``regions`` and 2D ``position_ids``, and ``infill()``, which fills the blanks of a text greedily.

    A training or scoring row is ``part A | part B``: part A the text with each blank as one ``[MASK]``,
    ``[sMASK]`` or ``[gMASK]`` token (``BOS`` first), part B ``[sop] span`` per blank, at the 2D
    position (the blank's position in A, 1, 2, ...)."""

    @torch.no_grad()
    def infill(self, tokenizer: Any, text: str, max_new_tokens: int = 32) -> str:
        """``text`` with every ``[MASK]`` / ``[sMASK]`` / ``[gMASK]`` filled left to right (greedy, one full
        forward pass per token; ``biglm generate`` does the same with the KV cache and beam search). A
        text without a blank is continued (``[gMASK]`` appended) and, as with ``biglm generate``, only the
        continuation is returned."""
        ids = self.config.glm_token_ids
        bos, eos = self.config.bos_token_id, self.config.eos_token_id
        blanks = {self.config.mask_token_id, ids["smask"], ids["gmask"]}
        # blanks as single tokens; the whitespace before a blank belongs to its span (as in training)
        pieces, rest = [], text  # text, blank, text, blank, ..., text
        while True:
            hits = [(rest.find(b), b) for b in ("[MASK]", "[sMASK]", "[gMASK]") if b in rest]
            if not hits:
                pieces.append(rest)
                break
            at, blank_text = min(hits)
            pieces += [rest[:at], blank_text]
            rest = rest[at + len(blank_text):]
        prompt: list[int] = []
        for i, piece in enumerate(pieces):
            if i % 2:
                prompt.append(int(tokenizer.convert_tokens_to_ids(piece)))
            elif (piece.rstrip() if i + 1 < len(pieces) else piece):
                prompt += tokenizer(piece.rstrip() if i + 1 < len(pieces) else piece,
                                    add_special_tokens=False)["input_ids"]
        a = [bos, *prompt] + ([] if any(t in blanks for t in prompt) else [ids["gmask"]])
        if a[-1] != ids["gmask"]:
            a.append(eos)
        device = self.lm_head.weight.device
        seq, pos, reg = list(a), [(i, 0) for i in range(len(a))], [0] * len(a)
        banned = [*blanks, ids["sop"], bos, self.config.pad_token_id]
        banned = [t for t in banned if t is not None and t != eos] + list(range(len(tokenizer), self.config.vocab_size))
        fills = []
        for blank in [i for i, t in enumerate(a) if t in blanks]:
            seq.append(ids["sop"])
            pos.append((blank, 1))
            reg.append(1)
            fill: list[int] = []
            for _ in range(max_new_tokens):
                logits = self(torch.tensor([seq], device=device), regions=torch.tensor([reg], device=device),
                              position_ids=torch.tensor([pos], device=device)).logits[0, -1]
                logits[banned] = float("-inf")
                token = int(logits.argmax())
                if token in (ids["eop"], eos):
                    break
                fill.append(token)
                seq.append(token)
                pos.append((blank, len(fill) + 1))
                reg.append(1)
            fills.append(fill)
        if not any(t in blanks for t in prompt):
            return tokenizer.decode(fills[0], skip_special_tokens=True)
        out, it = [], iter(fills)
        for t in a[1:]:
            if t in blanks:
                out += next(it)
            elif t != eos:
                out.append(t)
        return tokenizer.decode(out, skip_special_tokens=True)
