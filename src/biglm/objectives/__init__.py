"""Pre-training objectives: pure transforms from packed token rows to model batches.

Each objective is built from its config section, the [MASK] id and the vocabulary size, and is
called as ``objective(input_ids, document_ids, generator) -> Batch``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Protocol

import torch
from torch import Tensor

from biglm.errors import ConfigError
from biglm.objectives.autoregressive import AutoregressiveObjective
from biglm.objectives.base import IGNORE_INDEX, Batch
from biglm.objectives.biglm import BiGLMObjective
from biglm.objectives.config import (
    OBJECTIVE_NAMES,
    OBJECTIVE_PRESETS,
    BidirectionalARObjectiveConfig,
    BiGLMObjectiveConfig,
    CausalObjectiveConfig,
    GLMObjectiveConfig,
    MLMObjectiveConfig,
    ObjectiveConfig,
)
from biglm.objectives.glm import GLMObjective
from biglm.objectives.loss import Criterion, LossParts, MaskedLMCriterion, masked_lm_loss
from biglm.objectives.mlm import MLMObjective


class Objective(Protocol):
    def __call__(self, input_ids: Tensor, document_ids: Tensor, generator: torch.Generator) -> Batch: ...


OBJECTIVES: dict[str, Callable[..., Objective]] = {
    "biglm": BiGLMObjective,
    "mlm": MLMObjective,
    "causal": AutoregressiveObjective,
    "bidirectional-ar": AutoregressiveObjective,
    "glm": GLMObjective,
}
assert set(OBJECTIVES) == set(OBJECTIVE_NAMES), "every objective needs a config section and a registry entry"


def build_criterion(config: ObjectiveConfig) -> Criterion:
    """The loss an objective trains with: masked-token cross-entropy with the X / Y parts, or for the
    autoregressive objectives the next-token cross-entropy with the L2R / R2L parts (``loss_l2r``,
    ``loss_r2l`` in the metrics); ``glm``: the cross-entropy over part B (term ``blank_infilling``)."""
    if config.name in ("causal", "bidirectional-ar"):
        return MaskedLMCriterion(term="next_token", parts=("l2r", "r2l"))
    if config.name == "glm":
        return MaskedLMCriterion(term="blank_infilling", parts=("a", "b"))
    return MaskedLMCriterion()


def build_objective(config: ObjectiveConfig, mask_token_id: int, vocab_size: int,
                    specials: Mapping[str, Any] | None = None) -> Objective:
    """The objective named by ``config.name``, configured by its section of ``config``.

    ``specials`` maps ``bos``, ``eos``, ``pad`` (and ``mask``) to token ids, for objectives that
    need more than [MASK] (the autoregressive ones mark directions with BOS/EOS; ``glm`` also needs
    ``smask``, ``gmask``, ``sop``, ``eop`` and optionally ``sentence_ends``, a collection of ids).
    """
    if config.name not in OBJECTIVES:
        raise ConfigError(f"objective.name={config.name!r}: expected one of {', '.join(OBJECTIVES)}")
    return OBJECTIVES[config.name](config.section, mask_token_id, vocab_size, specials=specials)


__all__ = [
    "IGNORE_INDEX",
    "OBJECTIVES",
    "OBJECTIVE_PRESETS",
    "AutoregressiveObjective",
    "Batch",
    "BiGLMObjective",
    "BiGLMObjectiveConfig",
    "BidirectionalARObjectiveConfig",
    "CausalObjectiveConfig",
    "Criterion",
    "GLMObjective",
    "GLMObjectiveConfig",
    "LossParts",
    "MLMObjective",
    "MLMObjectiveConfig",
    "MaskedLMCriterion",
    "Objective",
    "ObjectiveConfig",
    "build_criterion",
    "build_objective",
    "masked_lm_loss",
]
