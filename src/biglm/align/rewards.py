"""Reward sources r(x, y) for the policy-gradient methods: a biglm reward model or a Python rule.

- A reward-model checkpoint (fine-tuned with ``biglm finetune --task reward``): its rows and pooling are the
  ``reward`` task's own (``biglm.finetune.tasks.reward``), so the policy is scored exactly as the reward
  model was trained and as ``biglm reward`` scores.
- ``py:module:function``: ``function(prompts, responses) -> rewards`` over lists of strings (the prompt as
  given in the prompts file, the response decoded without special tokens), returning one float each. For
  tests, programmatic rewards (unit tests passing, an exact answer) and quick experiments.
"""

from __future__ import annotations

import importlib
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

import torch

from biglm.errors import BiglmError, ConfigError
from biglm.finetune.predict import finetune_config_of, load_predictor, resolve_finetuned
from biglm.finetune.tasks.reward import RewardExample


class RewardSource(Protocol):
    """Scores (prompt, response) pairs; ``prompts`` are the records' prompt values (text or chat messages)."""

    def __call__(self, prompts: Sequence[Any], responses: Sequence[str]) -> list[float]: ...


class RuleReward:
    """A Python function ``f(prompts, responses) -> list[float]`` named as ``py:module:function``."""

    def __init__(self, spec: str) -> None:
        target = spec[3:]
        module_name, sep, name = target.rpartition(":")
        if not sep or not module_name or not name:
            raise ConfigError(f"reward={spec!r}: expected py:module:function")
        try:
            module = importlib.import_module(module_name)
        except ImportError as e:
            raise ConfigError(f"reward={spec!r}: cannot import {module_name!r} ({e})") from None
        fn = getattr(module, name, None)
        if not callable(fn):
            raise ConfigError(f"reward={spec!r}: {module_name} has no function {name!r}")
        self.spec, self.fn = spec, fn

    def __call__(self, prompts: Sequence[Any], responses: Sequence[str]) -> list[float]:
        out = list(self.fn(list(prompts), list(responses)))
        if len(out) != len(responses):
            raise BiglmError(f"reward {self.spec}: returned {len(out)} rewards for {len(responses)} responses")
        values = [float(v) for v in out]
        bad = next((v for v in values if not math.isfinite(v)), None)
        if bad is not None:
            raise BiglmError(f"reward {self.spec}: returned a non-finite reward ({bad})")
        return values


class ModelReward:
    """A biglm reward model: ``BOS prompt EOS response EOS`` rows, its head pooled as its task pools it."""

    def __init__(self, path: str, device: torch.device | str = "cpu", batch_size: int = 64) -> None:

        if not Path(path).exists():
            raise ConfigError(f"reward={path}: no such checkpoint or run folder")
        folder = resolve_finetuned(path)
        saved = finetune_config_of(folder)
        what = f"a {saved.task.kind} checkpoint" if saved is not None else "a pre-training checkpoint"
        problem = ConfigError(f"reward={path}: {what} without a reward head; give a reward model (biglm finetune "
                              "--task reward) or py:module:function")
        if saved is None or saved.task.kind != "reward":
            raise problem
        predictor = load_predictor(folder, device=str(device))
        if not predictor.loaded.config.reward_head:
            raise problem
        self.task, self.model = predictor.task, predictor.loaded.model.requires_grad_(False).eval()
        self.task.batch_size = batch_size

    @torch.no_grad()
    def __call__(self, prompts: Sequence[Any], responses: Sequence[str]) -> list[float]:

        task = self.task
        p_ids = task.tokenize([task._prompt_text(p) for p in prompts])
        r_ids = task.tokenize(list(responses))  # as the reward task encodes its pairs
        examples = [RewardExample(str(i), task.row_ids(p, r), None, None, "") for i, (p, r) in
                    enumerate(zip(p_ids, r_ids))]
        return [p["reward"] for p in task.predict(self.model, examples)]


NO_REWARD = "give a reward-model checkpoint or py:module:function (--reward)"
"""What to give where a reward is needed and none is."""


def build_reward(spec: str, device: torch.device | str = "cpu") -> RewardSource:
    """The reward source named by ``spec`` (``py:module:function`` or a reward-model checkpoint)."""
    if not spec:
        raise ConfigError(f"reward: {NO_REWARD}")
    if spec.startswith("py:"):
        return RuleReward(spec)
    return ModelReward(spec, device)

