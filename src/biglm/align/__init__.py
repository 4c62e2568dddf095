"""Policy optimisation from a reward (BatGPT §3.3's J_RL): PPO with a KL penalty to the reference policy and the
λ_PT pretraining term, GRPO (autoregressive and Mask-Predict policies), and DPO, on the shared trainer.

Typical use::

    from biglm.align import load_align_config, setup_align

    cfg = load_align_config("configs/align/ppo.yaml", ["--init", "runs/chat", "--reward", "runs/rm",
                                                         "--data.prompts", "prompts.jsonl"])
    trainer = setup_align(cfg, "runs/ppo")
    trainer.fit()
    trainer.close()
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "AlignConfig": "config", "load_align_config": "config",
    "setup_align": "setup",
    "AlignCriterion": "losses",
    "RolloutStream": "rollout", "RolloutBatcher": "rollout", "gae": "rollout", "group_advantages": "rollout",
    "build_reward": "rewards", "RuleReward": "rewards", "ModelReward": "rewards",
    "ARPolicy": "policy", "MaskedPolicy": "policy",
    "held_out_metrics": "setup", "build_parts": "setup",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name == "synthetic":
        return importlib.import_module("biglm.align.synthetic")
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"biglm.align.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module 'biglm.align' has no attribute {name!r}")


def __dir__() -> list[str]:
    return __all__
