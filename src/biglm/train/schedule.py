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
from collections.abc import Callable
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:  # the config takes its schedule names from here
    from biglm.train.config import TrainConfig


def decay_start(cfg: TrainConfig) -> int:
    """First step of the WSD decay (the annealing stage); ``steps`` when there is none."""
    if cfg.schedule != "wsd":
        return cfg.steps
    return max(cfg.warmup_steps, cfg.steps - round(cfg.decay_fraction * cfg.steps))


def _progress(step: int, cfg: TrainConfig) -> float:
    """How far ``step`` is from the end of warm-up (0) to the last step (1)."""
    span = cfg.steps - 1 - cfg.warmup_steps
    return 1.0 if span <= 0 else min(1.0, (step - cfg.warmup_steps) / span)


def _wsd(step: int, cfg: TrainConfig) -> float:
    start, last = decay_start(cfg), cfg.steps - 1
    if step < start:
        return cfg.lr
    progress = 1.0 if last <= start else min(1.0, (step - start) / (last - start))
    return cfg.lr + (cfg.min_lr - cfg.lr) * progress


def _cosine(step: int, cfg: TrainConfig) -> float:
    return cfg.min_lr + 0.5 * (cfg.lr - cfg.min_lr) * (1.0 + math.cos(math.pi * _progress(step, cfg)))


def _linear(step: int, cfg: TrainConfig) -> float:
    return cfg.lr + (cfg.min_lr - cfg.lr) * _progress(step, cfg)


def _constant(step: int, cfg: TrainConfig) -> float:
    return cfg.lr


SCHEDULES: dict[str, Callable[[int, TrainConfig], float]] = {
    "wsd": _wsd, "cosine": _cosine, "linear": _linear, "constant": _constant}
"""The schedules by name: the learning rate of a step after warm-up. ``train.schedule`` takes its names from
here (``Schedule``)."""
Schedule = Literal[tuple(SCHEDULES)]  # type: ignore[valid-type]
"""The type of ``train.schedule``: one of the names of ``SCHEDULES``."""


def learning_rate(step: int, cfg: TrainConfig) -> float:
    """The learning rate of optimizer step ``step`` (0-based) under ``cfg``'s schedule."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    return SCHEDULES[cfg.schedule](step, cfg)
