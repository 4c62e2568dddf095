"""Evaluation: scoring continuations, the lm-eval model ``biglm``, offline tasks, validation loss.

* ``score_requests(model, [(prefix_ids, suffix_ids), ...], mask_token_id=..., config=ScoringConfig(...))``
  — batched, prefix-cached log-likelihoods (``greedy-order``, ``left-to-right``, ``single-pass``,
  ``mc-elbo``, ``pll``); see ``biglm.evaluate.scoring``.
* ``masked_sequence_logps(model, prompts, responses, ids, method="chain"|"elbo"|"one-step")`` — differentiable
  sequence scores of Mask-Predict policies (for DPO / policy gradients); see ``biglm.evaluate.sequence_score``.
* ``BiGLMEvalModel`` — the lm-eval ``LM`` registered as ``biglm`` (imported lazily: needs lm-eval).
* ``validation_loss(model, batches, mask_token_id)`` — held-out masked loss on a fixed β_Y grid.
* ``biglm.evaluate.make_tasks`` — offline lm-eval tasks from held-out text; ``TASKS_DIR`` the shipped ones.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from biglm.evaluate.scoring import METHODS, Score, ScoringConfig, reference_greedy_order, score_requests
from biglm.evaluate.validation import BETA_GRID, ValidationResult, validation_loss

TASKS_DIR = Path(__file__).resolve().parent / "tasks"


def __getattr__(name: str) -> Any:
    if name == "BiGLMEvalModel":
        from biglm.evaluate.lm_eval_model import BiGLMEvalModel

        return BiGLMEvalModel
    raise AttributeError(f"module 'biglm.evaluate' has no attribute {name!r}")


__all__ = ["BETA_GRID", "METHODS", "TASKS_DIR", "BiGLMEvalModel", "Score", "ScoringConfig", "ValidationResult",
           "reference_greedy_order", "score_requests", "validation_loss"]
