"""``BiGLMConfig``: the transformers configuration of a BiGLM (bidirectional general language model).

SELF-CONTAINED: this file imports only transformers, because ``biglm export-hf`` copies it next to the
weights as remote code (``AutoConfig.from_pretrained(folder, trust_remote_code=True)``).

The architecture fields and their defaults are exactly those of ``biglm.config.ModelConfig``; the usual
transformers names (``num_hidden_layers``, ``num_attention_heads``, ``num_key_value_heads``,
``max_position_embeddings``, ``tie_word_embeddings``) are aliases of them through ``attribute_map``.
"""

from __future__ import annotations

from typing import Any

from transformers import PretrainedConfig

# The layout of biglm's weights and model config this file was written for
# (``biglm.checkpoint.MODEL_FORMAT_VERSION``).
BIGLM_FORMAT_VERSION = 1


class BiGLMConfig(PretrainedConfig):
    """Llama-shaped block stack (RoPE, RMSNorm/LayerNorm, SwiGLU, GQA) with bidirectional attention.

    Args mirror ``biglm.config.ModelConfig``: ``vocab_size`` (embedding rows, padded), ``hidden_size``,
    ``num_layers``, ``num_heads``, ``num_kv_heads`` (grouped-query attention), ``intermediate_size``
    (SwiGLU), ``max_seq_len``, ``rope_theta``, ``rotary_fraction`` (fraction of each head's dimensions
    that RoPE rotates), ``norm`` (``"rmsnorm"`` or ``"layernorm"``), ``norm_eps``, ``dropout``,
    ``tie_embeddings``, ``init_std``, ``scaled_residual_init``, ``length_head`` (Mask-Predict length
    classifier on the mean-pooled prefix), ``max_target_length`` (its number of classes), ``span_head``
    (start/end logits for extractive question answering, ``BiGLMForQuestionAnswering``) and ``family``
    (``masked``, ``causal``, ``bidirectional-ar`` or ``glm``: how the model is meant to be used);
    ``attention_layout`` (the family's layout, written by ``biglm export-hf``: ``prefix_blind`` where ``regions``
    mark prefix X and suffix Y, ``prefix_lm`` where they mark GLM's part A and part B, or ``causal``);
    ``position_encoding`` (``rope``, or GLM's 2D positions ``rope-2d`` / ``learned-2d``), ``suffix_positions``
    (where a fine-tuned seq2seq model's target Y sits after ``BOS prompt``: ``continue`` at positions |X|, |X|+1,
    ... or ``aligned`` at 1, 2, ...: pass those ``position_ids``) and, for GLM
    models, ``glm_token_ids`` (ids of ``[sMASK]``, ``[gMASK]``, ``[sop]``, ``[eop]``).
    ``attn_backend`` / ``attn_block_size`` record biglm's attention kernel choice (``sdpa`` or ``flex``) for
    round trips; the transformers model always uses SDPA with the layout's mask.
    ``biglm_format_version`` records the biglm checkpoint format the weights came from.
    """

    model_type = "biglm"
    attribute_map = {  # noqa: RUF012 (class attribute shared by design, as in transformers)
        "num_hidden_layers": "num_layers",
        "num_attention_heads": "num_heads",
        "num_key_value_heads": "num_kv_heads",
        "max_position_embeddings": "max_seq_len",
        "tie_word_embeddings": "tie_embeddings",
    }

    def __init__(
        self,
        name: str = "custom",
        vocab_size: int = 49216,
        hidden_size: int = 576,
        num_layers: int = 30,
        num_heads: int = 9,
        num_kv_heads: int = 3,
        intermediate_size: int = 1536,
        max_seq_len: int = 2048,
        rope_theta: float = 10000.0,
        rotary_fraction: float = 1.0,
        norm: str = "rmsnorm",
        norm_eps: float = 1e-5,
        dropout: float = 0.0,
        tie_embeddings: bool = True,
        init_std: float = 0.02,
        scaled_residual_init: bool = True,
        length_head: bool = False,
        max_target_length: int = 256,
        span_head: bool = False,
        reward_head: bool = False,
        family: str = "masked",
        attention_layout: str = "prefix_blind",
        attn_backend: str = "sdpa",
        attn_block_size: int = 128,
        position_encoding: str = "rope",
        suffix_positions: str = "continue",
        glm_token_ids: dict[str, int] | None = None,
        biglm_format_version: int = BIGLM_FORMAT_VERSION,
        pad_token_id: int | None = None,
        bos_token_id: int | None = None,
        eos_token_id: int | None = None,
        mask_token_id: int | None = None,
        **kwargs: Any,
    ) -> None:
        if norm not in ("rmsnorm", "layernorm"):
            raise ValueError(f"BiGLMConfig.norm={norm!r}: expected 'rmsnorm' or 'layernorm'")
        if hidden_size % num_heads or num_heads % num_kv_heads:
            raise ValueError(f"BiGLMConfig: num_heads={num_heads} must divide hidden_size={hidden_size} "
                             f"and num_kv_heads={num_kv_heads} must divide num_heads")
        if position_encoding not in ("rope", "rope-2d", "learned-2d"):
            raise ValueError(f"BiGLMConfig.position_encoding={position_encoding!r}: expected rope, rope-2d or "
                             "learned-2d")
        if attention_layout not in ("prefix_blind", "prefix_lm", "causal"):
            raise ValueError(f"BiGLMConfig.attention_layout={attention_layout!r}: expected prefix_blind, prefix_lm "
                             "or causal")
        if suffix_positions not in ("continue", "aligned"):
            raise ValueError(f"BiGLMConfig.suffix_positions={suffix_positions!r}: expected continue or aligned")
        if not 0.0 < rotary_fraction <= 1.0:
            raise ValueError(f"BiGLMConfig.rotary_fraction={rotary_fraction}: must be in (0, 1]")
        self.name = name
        self.vocab_size = vocab_size
        self.hidden_size = hidden_size
        self.num_layers = num_layers
        self.num_heads = num_heads
        self.num_kv_heads = num_kv_heads
        self.intermediate_size = intermediate_size
        self.max_seq_len = max_seq_len
        self.rope_theta = rope_theta
        self.rotary_fraction = rotary_fraction
        self.norm = norm
        self.norm_eps = norm_eps
        self.dropout = dropout
        self.init_std = init_std
        self.scaled_residual_init = scaled_residual_init
        self.length_head = length_head
        self.max_target_length = max_target_length
        self.span_head = span_head
        self.reward_head = reward_head
        self.family = family
        self.attention_layout = attention_layout
        self.attn_backend = attn_backend
        self.attn_block_size = attn_block_size
        self.position_encoding = position_encoding
        self.suffix_positions = suffix_positions
        self.glm_token_ids = dict(glm_token_ids or {})
        self.biglm_format_version = biglm_format_version
        self.pad_token_id = pad_token_id
        self.bos_token_id = bos_token_id
        self.eos_token_id = eos_token_id
        self.mask_token_id = mask_token_id
        kwargs.pop("tie_word_embeddings", None)  # an alias of tie_embeddings (attribute_map)
        # transformers 4.x sets tie_word_embeddings (default True) in its __init__: pass ours through.
        super().__init__(tie_word_embeddings=tie_embeddings, **kwargs)
        self.tie_embeddings = tie_embeddings

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    @property
    def rotary_dim(self) -> int:
        """Rotated dimensions per head (even), as ``ModelConfig.rotary_dim``."""
        return int(self.head_dim * self.rotary_fraction) // 2 * 2
