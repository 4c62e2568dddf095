"""What an alignment method is: the one place where PPO, GRPO and DPO differ.

A ``Method`` is a small record (one module per method, registered in ``biglm.align.methods.METHODS``) that
owns what differs between methods: the inputs it cannot run without (each with its one-line refusal), the
config section it reads, the policy families it can train, whether it samples rollouts (and then how big a
group each prompt gets, how many passes a buffer gets, how the advantages are computed and which terms the
loss adds) or runs as a fine-tuning task kind instead. ``biglm.align.setup`` and ``biglm.align.losses`` ask
the method; the mechanisms (sampling, scoring, the shared criterion) are the same for every method.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from biglm.align.rewards import NO_REWARD
from biglm.errors import ConfigError

if TYPE_CHECKING:  # types only: the config imports this registry to check its method name
    from biglm.align.config import AlignConfig
    from biglm.align.rollout import Sample
    from biglm.families import Family


@dataclass(frozen=True)
class Need:
    """An input a method cannot run without: a config key (dotted) and what to give when it is empty."""

    key: str
    refusal: str

    def check(self, cfg: AlignConfig) -> None:
        """One-line refusal (``key: refusal``) when ``cfg`` leaves the key empty."""
        value: Any = cfg
        for part in self.key.split("."):
            value = getattr(value, part)
        if not value:
            raise ConfigError(f"{self.key}: {self.refusal}")


PROMPTS = Need("data.prompts", "give the training prompts (--prompts FILE)")
REWARD = Need("reward", NO_REWARD)
"""What a method on rollouts reads: the prompts it samples responses to, and what scores them."""


@dataclass(frozen=True)
class Method:
    """One alignment method. The defaults are a policy-gradient method on rollouts with one response per
    prompt; a subclass overrides what its method does differently."""

    name: str
    summary: str
    """One line for the docs."""
    section: str
    """The config section of its settings (``AlignConfig.<section>``)."""
    needs: tuple[Need, ...] = ()
    """Inputs it cannot run without, checked before anything is loaded."""
    rollout: bool = True
    """Samples responses from the policy and learns from their rewards; False: runs as the fine-tuning task
    kind of ``finetune_config`` on the shared trainer (no rollout, no reward)."""
    value_head: bool = False
    """Needs V: the policy gets the value head (``ModelConfig.reward_head``) and the loss a value term."""
    kl_in_loss: bool = False
    """Adds β·KL(π || π_ref) to the loss (β: ``loss_options``' ``beta``) rather than to the rewards."""

    def settings(self, cfg: AlignConfig) -> Any:
        """Its section of ``cfg``."""
        return getattr(cfg, self.section)

    def check_inputs(self, cfg: AlignConfig) -> None:
        """One-line refusal of the first input in ``needs`` that ``cfg`` lacks."""
        for need in self.needs:
            need.check(cfg)

    def check_family(self, family: Family, init: str) -> None:
        """One-line refusal of a policy family this method cannot train (any that has a policy by default)."""

    def group_size(self, cfg: AlignConfig) -> int:
        """Responses sampled per prompt."""
        return 1

    def epochs(self, cfg: AlignConfig) -> int:
        """Passes over each rollout buffer."""
        return int(self.settings(cfg).epochs)

    def advantages(self, cfg: AlignConfig, samples: Sequence[Sample]) -> None:
        """Set each sample's ``advantages`` (and ``returns``) from its reward, log π_old, log π_ref (and V)."""
        raise NotImplementedError(f"method {self.name} has no rollout")

    def loss_options(self, cfg: AlignConfig) -> dict[str, float]:
        """Its settings of ``AlignCriterion`` (``clip``; ``value_clip``, ``vf_coef`` or ``beta`` where it has
        those terms)."""
        raise NotImplementedError(f"method {self.name} has no rollout")

    def finetune_config(self, cfg: AlignConfig) -> Any:
        """The ``FinetuneConfig`` a method without a rollout runs as."""
        raise NotImplementedError(f"method {self.name} runs on rollouts")
