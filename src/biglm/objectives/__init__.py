"""Pre-training objectives: pure transforms from packed token rows to model batches.

Each objective is built from its config section, the [MASK] id and the vocabulary size, and is
called as ``objective(input_ids, document_ids, generator) -> Batch``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

import torch
from torch import Tensor

from biglm.errors import ConfigError
from biglm.objectives.base import IGNORE_INDEX, Batch
from biglm.objectives.biglm import BiGLMObjective
from biglm.objectives.config import (
    OBJECTIVE_NAMES,
    OBJECTIVE_PRESETS,
    BiGLMObjectiveConfig,
    MLMObjectiveConfig,
    ObjectiveConfig,
)
from biglm.objectives.loss import Criterion, LossParts, MaskedLMCriterion, masked_lm_loss
from biglm.objectives.mlm import MLMObjective


class Objective(Protocol):
    def __call__(self, input_ids: Tensor, document_ids: Tensor, generator: torch.Generator) -> Batch: ...


OBJECTIVES: dict[str, Callable[..., Objective]] = {
    "biglm": BiGLMObjective,
    "mlm": MLMObjective,
}
assert set(OBJECTIVES) == set(OBJECTIVE_NAMES), "every objective needs a config section and a registry entry"


def build_objective(config: ObjectiveConfig, mask_token_id: int, vocab_size: int) -> Objective:
    """The objective named by ``config.name``, configured by its section of ``config``."""
    if config.name not in OBJECTIVES:
        raise ConfigError(f"objective.name={config.name!r}: expected one of {', '.join(OBJECTIVES)}")
    return OBJECTIVES[config.name](getattr(config, config.name), mask_token_id, vocab_size)


__all__ = [
    "IGNORE_INDEX",
    "OBJECTIVES",
    "OBJECTIVE_PRESETS",
    "Batch",
    "BiGLMObjective",
    "BiGLMObjectiveConfig",
    "Criterion",
    "LossParts",
    "MLMObjective",
    "MLMObjectiveConfig",
    "MaskedLMCriterion",
    "Objective",
    "ObjectiveConfig",
    "build_objective",
    "masked_lm_loss",
]
