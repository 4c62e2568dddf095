"""``AlignConfig``: everything ``biglm align`` needs, from YAML (``configs/align/``) + ``--section.field`` overrides.

Sections::

    method:  ppo | grpo | dpo (top level; ``biglm.align.methods``),
             init: the policy to start from (also the frozen reference π_ref),
             reward: a reward-model checkpoint or ``py:module:function``
    data:    prompts (train / valid), the pretraining corpus of the λ_PT term, preference pairs for dpo
    rollout: how responses are sampled (tokens, temperature, prompts per rollout buffer)
    ppo:     PPO (autoregressive policies): KL penalty, clipping, value head, GAE, epochs per buffer
    grpo:    GRPO: group size, KL β, clipping, the sequence score of masked policies
    dpo:     DPO (the fine-tuning task kind ``dpo``'s section: it runs that task on the same trainer)
    ptx:     the pretraining-likelihood term λ_PT·E[log π(x)] of BatGPT's J_RL
    train:   TrainConfig with alignment defaults (no prefetch: rollouts are on-policy)
    model:   overrides of the policy's model config
"""

from __future__ import annotations

import dataclasses
import difflib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal

from biglm.align.methods import get_method
from biglm.config import ModelConfig
from biglm.config_cli import sections_of
from biglm.configurable import from_dict, load_config, to_dict
from biglm.errors import ConfigError, check
from biglm.finetune.config import DPOConfig
from biglm.train.config import TrainConfig
from biglm.train.schedule import Schedule

SECTIONS = ("method", "init", "reward", "data", "rollout", "ppo", "grpo", "dpo", "ptx", "train", "model")


@dataclass
class AlignDataConfig:
    """Where the prompts, the pretraining text and (for dpo) the preference pairs are."""

    prompts: str = ""
    """Training prompts: a .jsonl/.json/.csv/.tsv/.parquet file or hf:NAME, one prompt per record."""
    valid_prompts: str = ""
    """Held-out prompts: their responses' mean reward and KL to the reference are measured at every evaluation."""
    prompt_field: str = "prompt"
    """Field holding the prompt: a string, or chat messages ([{role, content}], rendered with the chat template)."""
    pretrain: str = ""
    """Pretraining text of the λ_PT term (a file of records with ``text_field``); needed when ptx.coef > 0."""
    pretrain_valid: str = ""
    """Held-out pretraining text: its loss under the policy's pretraining objective is measured at every
    evaluation (``val_pretrain_loss``), to see the drift that λ_PT prevents."""
    text_field: str = "text"
    preferences: str = ""
    """method dpo: judged pairs (``biglm.data.preferences`` format, or chosen/rejected)."""
    valid_preferences: str = ""
    """method dpo: held-out pairs."""
    max_examples: int = 0
    """Read at most this many records per file (0: all)."""

    def __post_init__(self) -> None:
        check(self.max_examples >= 0, f"data.max_examples={self.max_examples}: must be >= 0")


@dataclass
class RolloutConfig:
    """How the policy samples responses to a buffer of prompts (the shared generation engine)."""

    prompts_per_rollout: int = 16
    """Prompts per rollout buffer (PPO: one response each; GRPO: grpo.group_size each)."""
    max_new_tokens: int = 16
    """Longest response (autoregressive) / the response length (Mask-Predict without a length head)."""
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    steps: int = 0
    """Mask-Predict passes of a masked policy (0: one per token, max_new_tokens)."""
    eval_temperature: float = 1.0
    """Sampling temperature of the held-out responses (same seed at every evaluation)."""
    eval_batch_size: int = 64
    """Prompts sampled and scored together."""

    def __post_init__(self) -> None:
        w = "rollout"
        check(self.prompts_per_rollout > 0, f"{w}.prompts_per_rollout={self.prompts_per_rollout}: must be > 0")
        check(self.max_new_tokens > 0, f"{w}.max_new_tokens={self.max_new_tokens}: must be > 0")
        check(self.temperature > 0 and self.eval_temperature >= 0,
              f"{w}.temperature={self.temperature}, eval_temperature={self.eval_temperature}: need > 0 and >= 0")
        check(self.top_k >= 0 and 0 < self.top_p <= 1, f"{w}.top_k={self.top_k}, top_p={self.top_p}: need top_k >= 0 "
              "and top_p in (0, 1]")
        check(0 <= self.steps <= self.max_new_tokens, f"{w}.steps={self.steps}: must be in 0..max_new_tokens")
        check(self.eval_batch_size > 0, f"{w}.eval_batch_size={self.eval_batch_size}: must be > 0")


@dataclass
class PPOConfig:
    """PPO with a per-token KL penalty folded into the rewards (the λ_KL of J_RL), a value head on the policy's
    trunk, GAE and clipped policy and value losses (defaults: trl's)."""

    kl_coef: float = 0.05
    """λ_KL: per-token reward -kl_coef·(log π - log π_ref) of each sampled token."""
    clip: float = 0.2
    """ε of the clipped surrogate min(ρA, clip(ρ, 1-ε, 1+ε)A)."""
    value_clip: float = 0.2
    """The value prediction moves at most this far from the rollout's value (clipped value loss)."""
    vf_coef: float = 0.1
    """Weight of the value loss beside the policy loss."""
    gamma: float = 1.0
    """Discount γ of GAE."""
    lam: float = 0.95
    """λ of GAE."""
    epochs: int = 4
    """Passes over each rollout buffer."""
    whiten_advantages: bool = True
    """Normalise the advantages of a buffer to mean 0, variance 1."""

    def __post_init__(self) -> None:
        w = "ppo"
        check(self.kl_coef >= 0 and self.vf_coef >= 0, f"{w}.kl_coef, vf_coef: must be >= 0")
        check(self.clip > 0 and self.value_clip > 0, f"{w}.clip={self.clip}, value_clip={self.value_clip}: must be > 0")
        check(0 <= self.gamma <= 1 and 0 <= self.lam <= 1, f"{w}.gamma={self.gamma}, lam={self.lam}: must be in [0, 1]")
        check(self.epochs > 0, f"{w}.epochs={self.epochs}: must be > 0")


MASKED_SCORE_DEFAULT = "elbo"


@dataclass
class GRPOConfig:
    """GRPO: ``group_size`` responses per prompt, advantages normalised within each group, a clipped ratio and a
    KL term to the reference (β; trl's default is 0)."""

    group_size: int = 8
    """Responses sampled per prompt (trl: 8)."""
    beta: float = 0.0
    """Weight of the KL estimate exp(r) - r - 1, r = log π_ref - log π, in the loss."""
    clip: float = 0.2
    epochs: int = 1
    """Passes over each rollout buffer (trl's num_iterations)."""
    scale_rewards: bool = True
    """Divide a group's centred rewards by their standard deviation (false: only centre them)."""
    score: str = MASKED_SCORE_DEFAULT
    """Masked policies: the sequence score standing in for log π(y|x) (``biglm.evaluate.sequence_score``)."""
    score_samples: int = 4
    """Masked policies: Monte-Carlo samples of a stochastic score (the same masks for π, π_old and π_ref)."""

    def __post_init__(self) -> None:
        w = "grpo"
        check(self.group_size >= 2, f"{w}.group_size={self.group_size}: must be >= 2 (advantages are within groups)")
        check(self.beta >= 0 and self.clip > 0, f"{w}.beta={self.beta}, clip={self.clip}: need beta >= 0, clip > 0")
        check(self.epochs > 0 and self.score_samples > 0, f"{w}.epochs, score_samples: must be > 0")


@dataclass
class PTXConfig:
    """BatGPT's pretraining term λ_PT·E_pretrain[log π(x)]: the policy's pretraining loss on pretraining rows,
    one micro-batch beside each rollout micro-batch."""

    coef: float = 0.0
    """λ_PT (0: off)."""
    rows: int = 4
    """Pretraining rows per micro-batch."""
    seq_len: int = 0
    """Tokens per pretraining row (0: the model's max_seq_len)."""
    objective: str = "auto"
    """The pretraining objective (auto: causal for causal policies, bidirectional-ar for bidirectional-ar,
    biglm for masked ones)."""

    def __post_init__(self) -> None:
        check(self.coef >= 0, f"ptx.coef={self.coef}: must be >= 0")
        check(self.rows > 0 and self.seq_len >= 0, f"ptx.rows={self.rows}, seq_len={self.seq_len}: need > 0, >= 0")


@dataclass
class AlignTrainConfig(TrainConfig):
    """``TrainConfig`` with alignment defaults: ``steps`` optimizer steps of ``global_batch_size`` sampled
    responses; prefetch off (every buffer is sampled by the current policy)."""

    steps: int = 100
    global_batch_size: int = 16
    lr: float = 1e-5
    min_lr: float = 0.0
    schedule: Schedule = "constant"
    warmup_steps: int = 0
    log_every: int = 1
    eval_every: int = 10
    save_every: int = 100
    keep_last: int = 1
    eval_batches: int = 4
    """Validation batches of the loss (method dpo; PPO and GRPO measure the held-out prompts instead)."""
    best_metric: str = ""
    best_mode: Literal["min", "max"] = "max"
    prefetch: int = 0

    def __post_init__(self) -> None:
        super().__post_init__()
        check(self.prefetch == 0, f"train.prefetch={self.prefetch}: must be 0 for alignment (rollouts are on-policy)")


@dataclass
class AlignConfig:
    """The resolved configuration of one alignment run."""

    method: str = "ppo"
    """A method of ``biglm.align.methods.METHODS``: ppo, grpo or dpo."""
    init: str = ""
    """The policy to start from (an instruction-tuned checkpoint); also the frozen reference policy π_ref."""
    reward: str = ""
    """A reward-model checkpoint (``biglm finetune --task reward``) or ``py:module:function`` (a rule:
    ``function(prompts, responses) -> rewards``, lists of strings to a list of floats)."""
    data: AlignDataConfig = field(default_factory=AlignDataConfig)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    ppo: PPOConfig = field(default_factory=PPOConfig)
    grpo: GRPOConfig = field(default_factory=GRPOConfig)
    dpo: DPOConfig = field(default_factory=DPOConfig)
    """method dpo: the fine-tuning task kind ``dpo``'s settings (β, the sequence score of masked policies...)."""
    ptx: PTXConfig = field(default_factory=PTXConfig)
    train: AlignTrainConfig = field(default_factory=AlignTrainConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    """Resolved from ``init`` (+ the value head for ppo) + ``model`` overrides when the run starts."""
    model_overrides: dict[str, Any] = field(default_factory=dict, repr=False)

    sections: ClassVar[tuple[str, ...]] = ("data", "rollout", "ppo", "grpo", "dpo", "ptx", "train")

    def __post_init__(self) -> None:
        get_method(self.method)  # one-line refusal of an unknown method

    @property
    def seq_len(self) -> int:
        return self.model.max_seq_len

    def inputs(self) -> list[str]:
        """What the run reads (policy, reward model, prompt / corpus / preference files): the output guard's
        inputs."""
        d = self.data
        return [self.init, self.reward, d.prompts, d.valid_prompts, d.pretrain, d.pretrain_valid, d.preferences,
                d.valid_preferences, self.train.init_from or ""]

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"method": self.method, "init": self.init, "reward": self.reward}
        out.update({s: to_dict(getattr(self, s)) for s in self.sections})
        out["model"] = self.model.to_dict()
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any], where: str = "config") -> AlignConfig:
        for key in data:
            if key not in SECTIONS:
                match = difflib.get_close_matches(key, SECTIONS, n=1, cutoff=0.0)
                raise ConfigError(f"{where}: unknown config key '{key}'; did you mean '{match[0]}'?")
        kwargs: dict[str, Any] = {}
        for s, section in sections_of(cls, cls.sections).items():
            check(isinstance(data.get(s) or {}, dict), f"{where}: '{s}' must be a mapping of fields")
            kwargs[s] = from_dict(section, dict(data.get(s) or {}), s)
        model = dict(data.get("model") or {})
        for key in model:
            if key not in {f.name for f in dataclasses.fields(ModelConfig)}:
                raise ConfigError(f"unknown config key 'model.{key}'")
        return cls(method=str(data.get("method") or "ppo"), init=str(data.get("init") or ""),
                   reward=str(data.get("reward") or ""), model_overrides=model, **kwargs)


def load_align_config(path: str | Path | None, overrides: list[str] | None = None) -> AlignConfig:
    """Resolve an alignment config: defaults < YAML file (with its bases) < ``--section.field value`` overrides."""
    return load_config(AlignConfig, path, overrides or [])
