"""PPO: one response per prompt, a per-token KL penalty folded into the rewards, a value head on the policy's
trunk, GAE, and clipped policy and value losses (settings: the ``ppo`` section)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch

from biglm.align.methods.base import PROMPTS, REWARD, Method
from biglm.align.rollout import Sample, gae, whiten
from biglm.errors import ConfigError
from biglm.families import FAMILIES, Family

if TYPE_CHECKING:
    from biglm.align.config import AlignConfig


class PPOMethod(Method):
    """Needs per-token log π and V at every response token: an autoregressive policy."""

    def check_family(self, family: Family, init: str) -> None:
        if family.decoder != "autoregressive":
            able = " or ".join(f.name for f in FAMILIES.values() if f.decoder == "autoregressive")
            raise ConfigError(f"method={self.name}: needs an autoregressive policy (family {able}), {init} is "
                              f"{family.name}; use --method grpo or --method dpo for it")

    def advantages(self, cfg: AlignConfig, samples: Sequence[Sample]) -> None:
        """GAE over per-token rewards -λ_KL·(log π_old - log π_ref), the reward added at the last token;
        whitened over the buffer when ``ppo.whiten_advantages``."""
        p = cfg.ppo
        for s in samples:
            rewards = [-p.kl_coef * (o - r) for o, r in zip(s.old, s.ref)]
            rewards[-1] += s.score
            s.advantages, s.returns = gae(rewards, s.values, p.gamma, p.lam)
        if p.whiten_advantages:
            flat = whiten(torch.tensor([a for s in samples for a in s.advantages]))
            k = 0
            for s in samples:
                s.advantages = flat[k:k + len(s.advantages)].tolist()
                k += len(s.advantages)

    def loss_options(self, cfg: AlignConfig) -> dict[str, float]:
        p = cfg.ppo
        return {"clip": p.clip, "value_clip": p.value_clip, "vf_coef": p.vf_coef}


PPO = PPOMethod(
    name="ppo",
    summary="PPO with a KL penalty to the reference, a value head and GAE (autoregressive policies)",
    section="ppo",
    needs=(PROMPTS, REWARD),
    value_head=True,
)
