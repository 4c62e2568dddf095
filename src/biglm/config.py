"""``ModelConfig``: the one serialisable description of a BiGLM network, with the paper's presets.

Sizes follow the BiGLM paper (Table 7, §2.2, §3.1). The paper gives no SwiGLU inner size for the 1.3B
and 3.5B models; we chose 5376 and 11264 (multiples of 256) so the totals come to 1.30B and 3.51B with
the 49152-token vocabulary plus special tokens.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from biglm.configurable import from_dict, load_yaml, to_dict
from biglm.errors import ConfigError, check
from biglm.families import FAMILIES, Family

# SmolLM's 49152-token vocabulary plus [MASK], rounded up to a multiple of 64 (the added token counts).
PAPER_VOCAB = 49216

MODEL_FAMILIES: dict[str, Family] = FAMILIES  # the registry (``biglm.families``), by name
"""How a model is meant to be used; generation, evaluation, export and fine-tuning dispatch on it.

- ``masked``: BiGLM / MLM, predicts [MASK]ed tokens (Mask-Predict decoding, masked scoring);
- ``causal``: a left-to-right decoder (next-token prediction);
- ``bidirectional-ar``: BatGPT's decoder trained left to right *and* right to left; a right-to-left
  sequence is the reversed text read from an EOS marker (see ``biglm.objectives.autoregressive``);
- ``glm``: GLM's autoregressive blank infilling: part A (text with [MASK]/[sMASK]/[gMASK] blanks) read
  bidirectionally, part B (the blanks' contents) written left to right; 2D positions
  (see ``biglm.objectives.glm``).
"""

ATTN_BACKENDS: tuple[str, ...] = ("sdpa", "flex")
SUFFIX_POSITIONS: tuple[str, ...] = ("continue", "aligned")
POSITION_ENCODINGS: tuple[str, ...] = ("rope", "rope-2d", "learned-2d")
"""``rope``: RoPE on one position id. The two 2D forms take GLM's pair of ids per token (its position in
part A, its position inside its span): ``rope-2d`` rotates half of the rotary dimensions by each id
(as later GLM releases did), ``learned-2d`` adds two learned embeddings to the input and uses no RoPE
(the GLM paper's form)."""


SIZE_LIMITS: dict[str, int] = {
    "vocab_size": 1 << 24, "hidden_size": 1 << 17, "num_layers": 1 << 12, "num_heads": 1 << 12,
    "num_kv_heads": 1 << 12, "intermediate_size": 1 << 20, "max_seq_len": 1 << 24, "max_target_length": 1 << 20,
    "attn_block_size": 1 << 16}
"""Upper bounds of the size fields: orders of magnitude beyond the largest published models, so a value past
one is a typo or a hostile file (``num_layers: 1000000000000``), refused before anything is built. Whether a
config within them fits the machine is checked against its weights and the memory (``biglm.sizes``)."""


@dataclass
class ModelConfig:
    """Architecture of a BiGLM encoder (a Llama-style block stack with bidirectional attention)."""

    name: str = "custom"
    """A label saved with the checkpoint (the preset's name, or ``custom``)."""
    vocab_size: int = PAPER_VOCAB
    """Embedding rows, already padded (to a multiple of 64) and counting every added special token."""
    hidden_size: int = 576
    """Width of the residual stream."""
    num_layers: int = 30
    """Transformer blocks."""
    num_heads: int = 9
    """Query heads (must divide ``hidden_size``)."""
    num_kv_heads: int = 3
    """Grouped-query attention: key/value heads shared by ``num_heads // num_kv_heads`` query heads."""
    intermediate_size: int = 1536
    """SwiGLU inner size."""
    max_seq_len: int = 2048
    """Longest sequence (prompt and generated tokens together) the model handles."""
    rope_theta: float = 10000.0
    """RoPE base."""
    rotary_fraction: float = 1.0
    """Fraction of each head's dimensions that RoPE rotates (1.0 = all, as in Llama)."""
    norm: Literal["rmsnorm", "layernorm"] = "rmsnorm"
    """Normalisation layer: RMSNorm (Llama) or LayerNorm."""
    norm_eps: float = 1e-5
    """Epsilon of the normalisation layers."""
    dropout: float = 0.0
    """The paper drops dropout (§3.1); kept as an ablation switch."""
    tie_embeddings: bool = True
    """Share the input embedding with the LM head (stored once)."""
    init_std: float = 0.02
    """Standard deviation of the normal weight initialisation."""
    scaled_residual_init: bool = True
    """Scale the init of residual output projections by 1/sqrt(2·num_layers) (Megatron's default)."""
    length_head: bool = False
    """Add a length-prediction head (mean-pooled prefix → target length classes) for Mask-Predict."""
    max_target_length: int = 256
    """Number of length classes of the length head (lengths 0 .. max_target_length-1)."""
    span_head: bool = False
    """Add a span head (start and end logits per token) for extractive question answering."""
    reward_head: bool = False
    """Add a reward head (one scalar per token; a reward model pools it: ``biglm.finetune.tasks.reward``)."""
    family: str = "masked"
    """How the model is trained and used: a family of ``biglm.families.FAMILIES`` (``masked``, ``causal``,
    ``bidirectional-ar``, ``glm``); checkpoints without it are ``masked``.
    A run config whose model section does not set it takes it from the objective."""
    attn_backend: Literal["sdpa", "flex"] = "sdpa"
    """Attention kernel: ``sdpa`` (dense layout mask, the reference) or ``flex`` (FlexAttention with a
    block mask that skips fully masked blocks; no dense mask; compiled on first use; no dropout)."""
    attn_block_size: int = 128
    """Tokens per block of the ``flex`` backend's block mask (128 on GPU; tests use smaller ones)."""
    position_encoding: Literal["rope", "rope-2d", "learned-2d"] = "rope"
    """Positions: ``rope`` (one id), or GLM's two ids per token as ``rope-2d`` (half the rotary dimensions
    per id) or ``learned-2d`` (two learned tables, no RoPE; the GLM paper's). A ``glm`` run whose model
    section does not set it gets ``rope-2d``."""
    suffix_positions: Literal["continue", "aligned"] = "continue"
    """Where the suffix Y sits when X = ``BOS prompt`` is given: ``continue`` (positions |X|, |X|+1, ...: as in
    pre-training) or ``aligned`` (positions 1, 2, ...: Y's token j shares its position with the prompt's token
    j, so "the source token at my place" is one fixed relative offset whatever the prompt's length). Set by
    seq2seq fine-tuning (``task.seq2seq.target_positions``); decoding and scoring read it here."""

    def __post_init__(self) -> None:
        for f, most in SIZE_LIMITS.items():
            v = getattr(self, f)
            check(isinstance(v, int) and not isinstance(v, bool) and v > 0,
                  f"ModelConfig.{f}={str(v)[:40]}: must be a positive integer")
            check(v <= most, f"ModelConfig.{f}={v:,}: more than {most:,}, beyond any model biglm builds")
        check(self.hidden_size % self.num_heads == 0,
              f"ModelConfig.num_heads={self.num_heads}: must divide hidden_size={self.hidden_size} "
              f"(allowed: {_divisors(self.hidden_size)})")
        check(self.num_heads % self.num_kv_heads == 0,
              f"ModelConfig.num_kv_heads={self.num_kv_heads}: must divide num_heads={self.num_heads} "
              f"(allowed: {_divisors(self.num_heads)})")
        check(self.rope_theta > 0, f"ModelConfig.rope_theta={self.rope_theta}: must be > 0")
        check(0.0 < self.rotary_fraction <= 1.0,
              f"ModelConfig.rotary_fraction={self.rotary_fraction}: must be in (0, 1]")
        check(self.rotary_dim >= 2,
              f"ModelConfig.rotary_fraction={self.rotary_fraction}: rotates fewer than 2 of "
              f"{self.head_dim} head dimensions")
        check(0.0 <= self.dropout < 1.0, f"ModelConfig.dropout={self.dropout}: must be in [0, 1)")
        check(self.init_std > 0, f"ModelConfig.init_std={self.init_std}: must be > 0")
        check(self.norm in ("rmsnorm", "layernorm"),
              f"ModelConfig.norm={self.norm!r}: expected 'rmsnorm' or 'layernorm'")
        check(self.norm_eps > 0, f"ModelConfig.norm_eps={self.norm_eps}: must be > 0")
        check(self.attn_backend in ATTN_BACKENDS,
              f"ModelConfig.attn_backend={self.attn_backend!r}: expected one of {', '.join(ATTN_BACKENDS)}")
        check(self.attn_backend != "flex" or self.dropout == 0.0,
              f"ModelConfig.dropout={self.dropout}: attn_backend 'flex' has no attention dropout; use 'sdpa'")
        check(isinstance(self.family, str) and FAMILIES.get(self.family) is not None,
              f"ModelConfig.family={str(self.family)[:40]!r}: expected one of {', '.join(FAMILIES)}")
        check(self.position_encoding in POSITION_ENCODINGS,
              f"ModelConfig.position_encoding={self.position_encoding!r}: expected one of "
              f"{', '.join(POSITION_ENCODINGS)}")
        check(self.suffix_positions in SUFFIX_POSITIONS,
              f"ModelConfig.suffix_positions={self.suffix_positions!r}: expected one of {', '.join(SUFFIX_POSITIONS)}")
        check(not FAMILIES[self.family].positions_2d or self.positions_2d,
              f"ModelConfig.position_encoding={self.position_encoding!r}: a {self.family} model needs 2D positions "
              "('rope-2d' or 'learned-2d')")
        check(self.position_encoding != "rope-2d" or self.rotary_dim % 4 == 0,
              f"ModelConfig.position_encoding='rope-2d': needs a multiple of 4 rotated dimensions per head "
              f"(rotary_dim={self.rotary_dim})")

    @property
    def is_autoregressive(self) -> bool:
        """True for the families decoded by the autoregressive loop (``causal``, ``bidirectional-ar``)."""
        return FAMILIES[self.family].decoder == "autoregressive"

    @property
    def positions_2d(self) -> bool:
        """True when the model takes GLM's two position ids per token (``position_ids`` (B, T, 2))."""
        return self.position_encoding != "rope"

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    @property
    def rotary_dim(self) -> int:
        """Rotated dimensions per head (even)."""
        return int(self.head_dim * self.rotary_fraction) // 2 * 2

    def num_parameters(self) -> int:
        """Exact parameter count, computed from the shapes (no model is built)."""
        h, kv = self.hidden_size, self.num_kv_heads * self.head_dim
        norm = h if self.norm == "rmsnorm" else 2 * h
        per_layer = 2 * h * h + 2 * h * kv + 3 * h * self.intermediate_size + 2 * norm
        total = self.vocab_size * h + self.num_layers * per_layer + norm
        if not self.tie_embeddings:
            total += self.vocab_size * h
        if self.length_head:
            total += h * self.max_target_length + self.max_target_length
        if self.span_head:
            total += 2 * h + 2
        if self.reward_head:
            total += h + 1
        if self.position_encoding == "learned-2d":
            total += 2 * self.max_seq_len * h
        return total

    @classmethod
    def from_preset(cls, name: str, **overrides: Any) -> ModelConfig:
        """A named preset (see ``PRESETS``), optionally with some fields overridden."""
        if name not in PRESETS:
            raise ConfigError(f"unknown model preset '{name}': expected one of {', '.join(PRESETS)}")
        return dataclasses.replace(PRESETS[name], **overrides)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelConfig:
        """Build from a mapping; a ``preset`` key starts from that preset, other keys override it."""
        data = dict(data)
        preset = data.pop("preset", None)
        base = to_dict(PRESETS[preset]) if preset in PRESETS else {}
        if preset is not None and preset not in PRESETS:
            raise ConfigError(f"unknown model preset '{preset}': expected one of {', '.join(PRESETS)}")
        return from_dict(cls, {**base, **data}, "model")

    @classmethod
    def from_file(cls, path: str | Path) -> ModelConfig:
        return cls.from_dict(load_yaml(path))

    def to_dict(self) -> dict[str, Any]:
        return to_dict(self)


def _divisors(n: int) -> str:
    return ", ".join(str(d) for d in range(1, n + 1) if n % d == 0)


PRESETS: dict[str, ModelConfig] = {
    # §3.1 / Table 7: the deeper SmolLM-shaped models.
    "biglm-136m": ModelConfig("biglm-136m", PAPER_VOCAB, 576, 30, 9, 3, 1536),
    "biglm-360m": ModelConfig("biglm-360m", PAPER_VOCAB, 960, 32, 15, 5, 2560),
    # Table 7 gives no inner size for these two: 5376 and 11264 bring the totals to 1.30B and 3.51B.
    "biglm-1.3b": ModelConfig("biglm-1.3b", PAPER_VOCAB, 2048, 24, 32, 32, 5376, init_std=0.013),
    "biglm-3.5b": ModelConfig("biglm-3.5b", PAPER_VOCAB, 2560, 30, 20, 20, 11264, init_std=0.013),
    # §2.2: the 12/768/12 model of the pre-training-task ablations (multi-head attention).
    "biglm-124m": ModelConfig("biglm-124m", PAPER_VOCAB, 768, 12, 12, 12, 2048),
    # CPU sizes: `demo` is the CPU demo's model (configs/demo.yaml, 1.8M parameters), `tiny` the benchmarks'
    # small shape, `micro` is for tests (a training step in milliseconds). At width 128, init std 0.02 (set
    # for widths near 768) kept the demo model on the unigram plateau longer than 0.06 (≈ 0.7/√128) did.
    "demo": ModelConfig("demo", 8192, 128, 4, 4, 2, 352, max_seq_len=512, init_std=0.06),
    "tiny": ModelConfig("tiny", 8192, 256, 6, 4, 2, 704, max_seq_len=512),
    "micro": ModelConfig("micro", 512, 64, 2, 4, 2, 128, max_seq_len=256),
    # GLM (§3.1): BERT-base / BERT-large shapes and the two multi-task sizes, sequence 512, dropout 0.1,
    # BERT's 30k WordPiece vocabulary with GLM's special tokens (padded). SwiGLU inner sizes are ~8/3·hidden
    # (multiples of 256), which keeps BERT's feed-forward parameter count.
    "glm-base": ModelConfig("glm-base", 30592, 768, 12, 12, 12, 2048, max_seq_len=512, dropout=0.1,
                            family="glm", position_encoding="rope-2d"),
    "glm-large": ModelConfig("glm-large", 30592, 1024, 24, 16, 16, 2816, max_seq_len=512, dropout=0.1,
                             family="glm", position_encoding="rope-2d"),
    "glm-410m": ModelConfig("glm-410m", 30592, 1024, 30, 16, 16, 2816, max_seq_len=512, dropout=0.1,
                            family="glm", position_encoding="rope-2d"),
    "glm-515m": ModelConfig("glm-515m", 30592, 1152, 30, 18, 18, 3072, max_seq_len=512, dropout=0.1,
                            family="glm", position_encoding="rope-2d"),
}
