"""Pre-training: configs, schedules, optimizer, parallelism, checkpointing, metrics and the loop.

Typical use::

    from biglm.train import load_run_config, setup

    cfg = load_run_config("configs/demo.yaml", ["--train.steps", "100"])
    metrics = setup(cfg, "runs/demo").fit()

Heavy modules (the loop, the data pipeline) are imported lazily.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "RunConfig": "config", "TrainConfig": "config", "load_run_config": "config",
    "learning_rate": "schedule", "decay_start": "schedule",
    "build_optimizer": "optim",
    "Trainer": "loop",
    "setup": "setup", "load_data": "setup",
    "SyntheticRows": "streams", "RowStream": "streams", "DataBundle": "streams", "synthetic_data": "streams",
    "plot_run": "plot",
    "flops_per_token": "metrics", "peak_flops": "metrics", "measure_matmul_peak": "metrics",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"biglm.train.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module 'biglm.train' has no attribute {name!r}")


def __dir__() -> list[str]:
    return __all__
