"""Objective configs (typed dataclasses) and the named ablation presets of the BiGLM paper."""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Literal

from biglm.errors import ConfigError, check
from biglm.families import objective_families


@dataclass
class BiGLMObjectiveConfig:
    """BiGLM's pre-training task (paper §2.1); defaults are the paper's and its public code's."""

    alpha: float = 0.2
    """Each document is split at a point uniform in [alpha·len, (1-alpha)·len]."""
    beta_y_range: tuple[float, float] = (0.0, 1.0)
    """beta_Y ~ U(lo, hi): the suffix masking ratio."""
    beta_x_mode: Literal["adaptive", "fixed", "none"] = "adaptive"
    """adaptive: beta_X = lambda1 - lambda2·beta_Y; fixed: beta_X = beta_x_fixed; none: X unmasked."""
    lambda1: float = 0.3
    """adaptive beta_X: the intercept lambda1 of beta_X = lambda1 - lambda2·beta_Y."""
    lambda2: float = 0.2
    """adaptive beta_X: the slope lambda2 of beta_X = lambda1 - lambda2·beta_Y."""
    beta_x_fixed: float = 0.15
    """fixed beta_X: the prefix masking ratio."""
    masking_unit: Literal["span", "token"] = "span"
    """Mask n-gram spans or single tokens."""
    max_span: int = 3
    """Spans are n-grams with n ≤ max_span, P(n) ∝ 1/n."""
    attention_masking: bool = True
    """Prefix-blind attention (X never attends Y). False is the paper's 'w/o attn' ablation."""
    min_loss_tokens: int = 12
    """Document pieces shorter than this stay in the row but carry no loss."""
    reset_position_ids: bool = False
    """Restart positions at each packed document (the public code did not)."""

    def __post_init__(self) -> None:
        check(0.0 < self.alpha < 0.5, f"objective.biglm.alpha={self.alpha}: must be in (0, 0.5)")
        lo, hi = self.beta_y_range
        check(0.0 <= lo <= hi <= 1.0,
              f"objective.biglm.beta_y_range={list(self.beta_y_range)}: need 0 <= lo <= hi <= 1")
        if self.beta_x_mode == "adaptive":
            bx = sorted((self.lambda1 - self.lambda2 * lo, self.lambda1 - self.lambda2 * hi))
            check(bx[0] >= 0.0 and bx[1] <= 1.0,
                  f"objective.biglm.lambda1={self.lambda1}, lambda2={self.lambda2}: give beta_X in "
                  f"[{bx[0]:.3g}, {bx[1]:.3g}] for beta_Y in [{lo}, {hi}]; beta_X must stay in [0, 1]")
        check(0.0 <= self.beta_x_fixed <= 1.0,
              f"objective.biglm.beta_x_fixed={self.beta_x_fixed}: must be in [0, 1]")
        check(self.beta_x_mode in ("adaptive", "fixed", "none"),
              f"objective.biglm.beta_x_mode={self.beta_x_mode!r}: expected adaptive, fixed or none")
        check(self.masking_unit in ("span", "token"),
              f"objective.biglm.masking_unit={self.masking_unit!r}: expected span or token")
        check(self.max_span >= 1, f"objective.biglm.max_span={self.max_span}: must be >= 1")
        check(self.min_loss_tokens >= 2, f"objective.biglm.min_loss_tokens={self.min_loss_tokens}: must be >= 2")

    @property
    def beta_x_range(self) -> tuple[float, float]:
        lo, hi = self.beta_y_range
        if self.beta_x_mode == "adaptive":
            return (self.lambda1 - self.lambda2 * hi, self.lambda1 - self.lambda2 * lo)
        if self.beta_x_mode == "fixed":
            return (self.beta_x_fixed, self.beta_x_fixed)
        return (0.0, 0.0)


@dataclass
class MLMObjectiveConfig:
    """Classic masked language modelling: a fixed ratio over whole documents, bidirectional attention."""

    mask_ratio: float = 0.15
    """Fraction of each document's tokens chosen for the loss."""
    masking_unit: Literal["span", "token"] = "token"
    """Mask n-gram spans or single tokens."""
    max_span: int = 3
    """Spans are n-grams with n ≤ max_span, P(n) ∝ 1/n."""
    random_token_prob: float = 0.0
    """BERT's 80/10/10 rule is random_token_prob=0.1, keep_prob=0.1; 0/0 masks every chosen token."""
    keep_prob: float = 0.0
    """Fraction of the chosen tokens left unchanged (BERT: 0.1)."""
    min_loss_tokens: int = 12
    """Documents shorter than this stay in the row but carry no loss."""
    reset_position_ids: bool = False
    """Restart positions at each packed document."""

    def __post_init__(self) -> None:
        check(0.0 < self.mask_ratio <= 1.0, f"objective.mlm.mask_ratio={self.mask_ratio}: must be in (0, 1]")
        check(self.random_token_prob >= 0 and self.keep_prob >= 0
              and self.random_token_prob + self.keep_prob <= 1.0,
              "objective.mlm.random_token_prob + keep_prob: must be in [0, 1]")
        check(self.masking_unit in ("span", "token"),
              f"objective.mlm.masking_unit={self.masking_unit!r}: expected span or token")
        check(self.max_span >= 1, f"objective.mlm.max_span={self.max_span}: must be >= 1")


@dataclass
class CausalObjectiveConfig:
    """Next-token prediction, left to right (see ``biglm.objectives.autoregressive``)."""

    reset_position_ids: bool = True
    """Positions restart at 0 on each piece's first token (its BOS), as at inference."""


@dataclass
class BidirectionalARObjectiveConfig:
    """BatGPT's bidirectional autoregressive objective: each piece read left to right or right to left."""

    r2l_fraction: float = 0.5
    """Share of pieces read right to left (systematic sampling inside each row; 0.5 = eq. 1 up to a factor 2)."""
    reset_position_ids: bool = True
    """Positions restart at 0 on each piece's first token (its BOS or EOS marker), as at inference."""

    def __post_init__(self) -> None:
        check(0.0 <= self.r2l_fraction <= 1.0,
              f"objective.bidirectional_ar.r2l_fraction={self.r2l_fraction}: must be in [0, 1]")


@dataclass
class GLMObjectiveConfig:
    """GLM's autoregressive blank infilling (see ``biglm.objectives.glm``); each packed row draws one task
    with the probabilities ``blank_prob`` / ``sentence_prob`` / ``gen_prob`` (they must sum to 1)."""

    blank_prob: float = 1.0
    """Share of rows with short spans (Poisson lengths, ``[MASK]``): the paper's BERT-style objective."""
    sentence_prob: float = 0.0
    """Share of rows with whole-sentence spans (``[sMASK]``)."""
    gen_prob: float = 0.0
    """Share of rows with one long span at the document's end (``[gMASK]``)."""
    mask_ratio: float = 0.15
    """Blank task: spans are drawn until at least this share of each document is covered."""
    poisson_lambda: float = 3.0
    """Blank task: span lengths ~ Poisson(lambda) truncated to 1..max_span."""
    max_span: int = 39
    """Blank task: the longest span (the authors truncate at 39)."""
    sentence_ratio: float = 0.15
    """Sentence task: whole sentences are drawn until at least this share of each document is covered."""
    gen_min_ratio: float = 0.5
    """Generation task: the span covers a share of the document uniform in [gen_min_ratio, gen_max_ratio]
    (paper: 0.5–1.0; the authors' 10B model: 0.25–1.0)."""
    gen_max_ratio: float = 1.0
    """Generation task: the largest share of the document the span covers."""
    shuffle_spans: bool = True
    """Put the spans into part B in a random order (eq. 3's permutation); False keeps text order."""
    min_loss_tokens: int = 12
    """Documents (pieces) with fewer tokens stay in the row, in part A, without blanks or loss."""
    reset_position_ids: bool = True
    """Part A positions restart at 0 at every packed document (each is its own GLM sample)."""

    def __post_init__(self) -> None:
        probs = (self.blank_prob, self.sentence_prob, self.gen_prob)
        check(all(p >= 0 for p in probs) and abs(sum(probs) - 1.0) < 1e-6,
              f"objective.glm.blank_prob/sentence_prob/gen_prob={list(probs)}: must be >= 0 and sum to 1")
        for f in ("mask_ratio", "sentence_ratio"):
            v = getattr(self, f)
            check(0.0 < v < 1.0, f"objective.glm.{f}={v}: must be in (0, 1)")
        check(self.poisson_lambda > 0, f"objective.glm.poisson_lambda={self.poisson_lambda}: must be > 0")
        check(self.max_span >= 1, f"objective.glm.max_span={self.max_span}: must be >= 1")
        check(0.0 < self.gen_min_ratio <= self.gen_max_ratio <= 1.0,
              f"objective.glm.gen_min_ratio={self.gen_min_ratio}, gen_max_ratio={self.gen_max_ratio}: "
              "need 0 < min <= max <= 1")
        check(self.min_loss_tokens >= 2, f"objective.glm.min_loss_tokens={self.min_loss_tokens}: must be >= 2")


# Every objective has a section named after it (``-`` as ``_``) below and an entry in
# ``biglm.objectives.OBJECTIVES``; each model family lists the objectives that train it (``biglm.families``).
OBJECTIVE_NAMES: tuple[str, ...] = ("biglm", "mlm", "causal", "bidirectional-ar", "glm")


def section_name(objective: str) -> str:
    """The config section of an objective (``bidirectional-ar`` → ``bidirectional_ar``)."""
    return objective.replace("-", "_")


@dataclass
class ObjectiveConfig:
    """Which objective to train with; only the section named by ``name`` is used (``-`` read as ``_``)."""

    name: str = "biglm"
    """The objective: ``biglm`` (the paper's), ``mlm`` (classic masked LM), ``causal`` (next-token
    prediction), ``bidirectional-ar`` (BatGPT's left-to-right and right-to-left next-token prediction) or
    ``glm`` (GLM's autoregressive blank infilling)."""
    biglm: BiGLMObjectiveConfig = field(default_factory=BiGLMObjectiveConfig)
    """Settings of the ``biglm`` objective."""
    mlm: MLMObjectiveConfig = field(default_factory=MLMObjectiveConfig)
    """Settings of the ``mlm`` objective."""
    causal: CausalObjectiveConfig = field(default_factory=CausalObjectiveConfig)
    """Settings of the ``causal`` objective."""
    bidirectional_ar: BidirectionalARObjectiveConfig = field(default_factory=BidirectionalARObjectiveConfig)
    """Settings of the ``bidirectional-ar`` objective."""
    glm: GLMObjectiveConfig = field(default_factory=GLMObjectiveConfig)
    """Settings of the ``glm`` objective."""

    def __post_init__(self) -> None:
        check(self.name in OBJECTIVE_NAMES,
              f"objective.name={self.name!r}: expected one of {', '.join(OBJECTIVE_NAMES)}")

    @classmethod
    def from_preset(cls, name: str) -> ObjectiveConfig:
        """A named objective preset, e.g. ``biglm``, ``biglm-no-attn`` or ``biglm-alpha-0.3``."""
        if name not in OBJECTIVE_PRESETS:
            raise ConfigError(f"unknown objective preset '{name}': expected one of {', '.join(OBJECTIVE_PRESETS)}")
        return copy.deepcopy(OBJECTIVE_PRESETS[name])  # sections are mutable: never share the preset's

    @property
    def section(self) -> object:
        """The config section of the chosen objective."""
        return getattr(self, section_name(self.name))

    @property
    def families(self) -> tuple[str, ...]:
        """The model families this objective trains; the first is the default of a run."""
        return objective_families(self.name)


def _biglm(**kw: object) -> ObjectiveConfig:
    return ObjectiveConfig("biglm", biglm=BiGLMObjectiveConfig(**kw))  # type: ignore[arg-type]


# The pre-training variants of the paper's Table 1 (§2.2) and Table 8 (Appendix C).
OBJECTIVE_PRESETS: dict[str, ObjectiveConfig] = {
    "biglm": _biglm(),
    "biglm-no-attn": _biglm(attention_masking=False),  # Table 1: w/o attn
    "mlm-15": ObjectiveConfig("mlm"),  # Table 1: w/o both (no decomposition, 15% masking)
    # BatGPT §3.1: the autoregressive baseline and the bidirectional autoregressive objective (eq. 1).
    "causal": ObjectiveConfig("causal"),
    "bidirectional-ar": ObjectiveConfig("bidirectional-ar"),
    # GLM (§2.3, §3.3; the authors' 10B mixture): short blanks, sentence blanks, one long generation blank.
    "glm": ObjectiveConfig("glm"),
    "glm-sent": ObjectiveConfig("glm", glm=GLMObjectiveConfig(blank_prob=0.0, sentence_prob=1.0)),
    "glm-gen": ObjectiveConfig("glm", glm=GLMObjectiveConfig(blank_prob=0.0, gen_prob=1.0)),
    "glm-multitask": ObjectiveConfig("glm", glm=GLMObjectiveConfig(blank_prob=0.5, gen_prob=0.5)),
    "glm-mixture": ObjectiveConfig("glm", glm=GLMObjectiveConfig(blank_prob=0.5, sentence_prob=0.3, gen_prob=0.2,
                                                                 gen_min_ratio=0.25)),
    "biglm-alpha-0.1": _biglm(alpha=0.1),
    "biglm-alpha-0.3": _biglm(alpha=0.3),
    "biglm-alpha-0.4": _biglm(alpha=0.4),
    "biglm-betax-0.1-0.5": _biglm(lambda1=0.5, lambda2=0.4),
    "biglm-betax-0.3-0.5": _biglm(lambda1=0.5, lambda2=0.2),
    "biglm-betax-0.2-0.4": _biglm(lambda1=0.4, lambda2=0.2),
    "biglm-betay-0.1-0.9": _biglm(beta_y_range=(0.1, 0.9)),
    "biglm-betay-0.2-0.8": _biglm(beta_y_range=(0.2, 0.8)),
    "biglm-betay-0.3-0.7": _biglm(beta_y_range=(0.3, 0.7)),
}
