"""Fine-tuning: task kinds (cloze classification, extractive QA, seq2seq with Mask-Predict) as data + loss +
metric on the shared trainer, with prediction through the generation engine and the evaluation scorers.

Typical use::

    from biglm.finetune import load_finetune_config, setup_finetune

    cfg = load_finetune_config("configs/finetune/demo-titles.yaml", ["--init", "runs/demo"])
    trainer = setup_finetune(cfg, "runs/titles")
    trainer.fit()

    from biglm.finetune import load_predictor, evaluate_split
    scores, examples, predictions = evaluate_split(load_predictor("runs/titles"), "test")
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "FinetuneConfig": "config", "TaskConfig": "config", "load_finetune_config": "config",
    "setup_finetune": "setup", "prepare": "setup",
    "load_predictor": "predict", "evaluate_split": "predict", "predict_file": "predict", "zero_shot": "predict",
    "TASKS": "tasks", "build_task": "tasks",
    "ExampleStream": "data",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"biglm.finetune.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module 'biglm.finetune' has no attribute {name!r}")


def __dir__() -> list[str]:
    return __all__
