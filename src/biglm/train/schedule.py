"""Learning-rate schedules as pure functions of the step (nothing to checkpoint but the step).

Step ``s`` is the 0-based index of the optimizer step about to be taken; a run has ``steps`` of them.

* warm-up (all schedules): ``lr · (s + 1) / warmup_steps`` for ``s < warmup_steps``.
* ``wsd`` (warmup-stable-decay, paper §3.2): constant ``lr`` until ``decay_start = steps - round(decay_fraction ·
  steps)``, then linear from ``lr`` at ``decay_start`` to ``min_lr`` at the last step ``steps - 1``.
* ``cosine``: from ``lr`` at the end of warm-up to ``min_lr`` at the last step along a half cosine.
* ``linear``: from ``lr`` at the end of warm-up straight down to ``min_lr`` at the last step (fine-tuning).
* ``constant``: ``lr`` after warm-up.
"""

from __future__ import annotations

import math

from biglm.train.config import TrainConfig


def decay_start(cfg: TrainConfig) -> int:
    """First step of the WSD decay (the annealing stage); ``steps`` when there is none."""
    if cfg.schedule != "wsd":
        return cfg.steps
    return max(cfg.warmup_steps, cfg.steps - round(cfg.decay_fraction * cfg.steps))


def learning_rate(step: int, cfg: TrainConfig) -> float:
    """The learning rate of optimizer step ``step`` (0-based) under ``cfg``'s schedule."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    last = cfg.steps - 1
    if cfg.schedule == "constant":
        return cfg.lr
    if cfg.schedule == "wsd":
        start = decay_start(cfg)
        if step < start:
            return cfg.lr
        progress = 1.0 if last <= start else min(1.0, (step - start) / (last - start))
        return cfg.lr + (cfg.min_lr - cfg.lr) * progress
    span = last - cfg.warmup_steps
    progress = 1.0 if span <= 0 else min(1.0, (step - cfg.warmup_steps) / span)
    if cfg.schedule == "linear":
        return cfg.lr + (cfg.min_lr - cfg.lr) * progress
    return cfg.min_lr + 0.5 * (cfg.lr - cfg.min_lr) * (1.0 + math.cos(math.pi * progress))
