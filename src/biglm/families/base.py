"""What a model family is: the one place where masked, causal, bidirectional-ar and GLM models differ.

A ``Family`` is a small declarative record. Everything that differs between families is written here (or
in the family's own module), and each shared piece asks the family instead of testing its name: the trainer
takes the objectives and position encodings it allows, the generator picks the ``decoder``, lm-eval the
``scoring``, fine-tuning the row builders of the ``layout`` and the ``refused_tasks``, reward models the
``reward_pooling``, export the ``export`` writer. The mechanisms themselves (decoders, scorers, row
builders, exporters) live in their packages' registries, keyed by the names a family picks here.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from biglm.attention import LayoutKind
from biglm.errors import BiglmError

Decoder = Literal["mask-predict", "autoregressive", "blank-infilling"]
Scoring = Literal["masked", "chain-rule", "blank-infilling"]
Export = Literal["masked-lm", "causal-lm", "blank-infilling"]


@dataclass(frozen=True)
class Family:
    """One model family: how it is trained, prompted, decoded, scored, fine-tuned and exported."""

    name: str
    summary: str
    """One line for ``--help`` and the docs."""
    objectives: tuple[str, ...]
    """Pre-training objectives that train it; the first is what a run of this family gets by default."""
    layout: LayoutKind
    """Attention layout of training and generation (``prefix_blind``, ``causal``, ``prefix_lm``); fine-tuning
    rows and the growth check are built for it."""
    decoder: Decoder
    """Which decoder writes text: the Mask-Predict engine, the autoregressive loop, or GLM's part B."""
    scoring: Scoring
    """How a continuation's log-likelihood is computed (lm-eval, DPO's sequence scores)."""
    directions: tuple[str, ...] = ()
    """Reading directions it generates and scores in (``l2r``, ``r2l``); empty: not autoregressive."""
    reward_pooling: Literal["mean", "last"] = "last"
    """How a reward model of this family pools its per-token scores (``task.reward.pooling: auto``)."""
    positions_2d: bool = False
    """Takes two position ids per token (GLM's; a ``rope-2d`` or ``learned-2d`` encoding, ``rope-2d`` for a run
    that sets none)."""
    special_tokens: Mapping[str, str] = field(default_factory=dict)
    """Special tokens beyond BOS/EOS/PAD/MASK that its runs add to the tokenizer, by name (GLM's blanks and
    span marks)."""
    prompt_overhead: int = 0
    """Tokens a reply needs beside ``BOS prompt`` and the reply itself (GLM: ``[gMASK]`` and ``[sop]``)."""
    length_head: bool = False
    """Seq2seq fine-tuning trains a length head (the decoder fixes the target's length before writing)."""
    refused_tasks: Mapping[str, str] = field(default_factory=dict)
    """Fine-tuning kinds it cannot take, each with the reason (said in the one-line refusal)."""
    export: Export = "masked-lm"
    """Which ``transformers`` folder ``biglm export-hf`` writes (``biglm.hf.convert.EXPORTERS``)."""
    eval_variants: tuple[tuple[str, Mapping[str, Any]], ...] = ()
    """What ``biglm compare`` scores a recipe of this family with: (label, ``BiGLMEvalModel`` arguments);
    empty means one variant per masked scoring method asked for."""

    @property
    def autoregressive(self) -> bool:
        """True when text is written token by token (the AR loop or GLM's part B), so the KV cache applies."""
        return self.decoder != "mask-predict"

    @property
    def scoring_directions(self) -> tuple[str, ...]:
        """Directions lm-eval may ask for: the reading directions, plus ``mean`` when there are two."""
        return (*self.directions, "mean") if len(self.directions) > 1 else self.directions

    def check_task(self, kind: str) -> None:
        """One-line refusal of a fine-tuning kind this family cannot take."""
        if kind in self.refused_tasks:
            raise BiglmError(f"task.kind={kind}: {self.refused_tasks[kind]} (this checkpoint is {self.name})")

    def encode_prompt(self, tokenizer: Any, text: str) -> list[int]:
        """Token ids of a prompt (no BOS): plain text for most families; GLM reads its blank tokens."""
        return list(tokenizer(text, add_special_tokens=False)["input_ids"])

    def eval_settings(self, scoring: str) -> list[tuple[str, dict[str, Any]]]:
        """(label, ``BiGLMEvalModel`` arguments) of each way ``compare`` scores this family."""
        if not self.eval_variants:
            return [(scoring, {"scoring": scoring})]
        return [(label, dict(kwargs)) for label, kwargs in self.eval_variants]
