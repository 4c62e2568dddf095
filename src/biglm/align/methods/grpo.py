"""GRPO: ``grpo.group_size`` responses per prompt, advantages normalised within each group, a clipped ratio
and (β > 0) a KL term to the reference in the loss; autoregressive and Mask-Predict policies (settings: the
``grpo`` section)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch

from biglm.align.methods.base import PROMPTS, REWARD, Method
from biglm.align.rollout import Sample, group_advantages

if TYPE_CHECKING:
    from biglm.align.config import AlignConfig


class GRPOMethod(Method):
    """Group-relative advantages, one per response (every token of it gets it)."""

    def group_size(self, cfg: AlignConfig) -> int:
        return int(cfg.grpo.group_size)

    def advantages(self, cfg: AlignConfig, samples: Sequence[Sample]) -> None:
        scores = torch.tensor([s.score for s in samples]).view(-1, self.group_size(cfg))
        for s, a in zip(samples, group_advantages(scores, cfg.grpo.scale_rewards).flatten().tolist()):
            s.advantages = [a] * len(s.old)

    def loss_options(self, cfg: AlignConfig) -> dict[str, float]:
        return {"clip": cfg.grpo.clip, "beta": cfg.grpo.beta}


GRPO = GRPOMethod(
    name="grpo",
    summary="GRPO: group-normalised rewards, a clipped ratio, β·KL to the reference (any policy with a sampler)",
    section="grpo",
    needs=(PROMPTS, REWARD),
    kl_in_loss=True,
)
