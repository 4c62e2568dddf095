"""From an ``AlignConfig`` to a ready ``Trainer`` (the shared one): policy, reference, reward, rollouts, losses.

Order: the method's inputs checked (``biglm.align.methods``); a method without a rollout (DPO) is handed to
its fine-tuning task kind → the policy checkpoint (``init``): its tokenizer and model config (a method with a
value head, PPO, adds ``reward_head``) → family checks (the method's, and a sampler for the family's decoder:
``POLICIES``) → prompts (and pretraining rows for λ_PT) read → the reward source → ``assemble`` (model from
``init``, optimizer, loggers; or the run's newest checkpoint with ``--resume``) → the frozen reference policy
(a second copy of ``init``) → the rollout stream's ``collect``, which samples with the trainer's own model
object and asks the method for the advantages.
"""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from biglm.align.config import AlignConfig
from biglm.align.losses import AlignCriterion
from biglm.align.methods import get_method
from biglm.align.policy import ARPolicy, MaskedPolicy
from biglm.align.pretrain import PretrainObjective, read_rows
from biglm.align.rewards import RewardSource, build_reward
from biglm.align.rollout import RolloutBatcher, RolloutStream, Sample
from biglm.checkpoint import load_model, resolve_checkpoint, verify_model
from biglm.config import ModelConfig
from biglm.configurable import load_yaml
from biglm.data.records import read_records
from biglm.data.tokenizer import load_tokenizer
from biglm.errors import BiglmError, ConfigError
from biglm.families import get_family
from biglm.finetune.setup import setup_finetune
from biglm.finetune.tasks.base import TokenIds, chunks
from biglm.finetune.tasks.reward import prompt_text
from biglm.generate.api import banned_ids
from biglm.generate.engine import cut_at_eos
from biglm.train.batches import VAL_SALT, row_seed
from biglm.train.checkpointing import find_resume_checkpoint
from biglm.train.loop import Trainer
from biglm.train.parallel import init_distributed
from biglm.train.setup import assemble, check_run_dir
from biglm.train.streams import DataBundle


@dataclass
class Prompt:
    value: Any
    """As the record gave it (text or chat messages): what the reward reads."""
    ids: list[int]


def read_prompts(spec: str, cfg: AlignConfig, tokenizer: Any, policy: Any) -> list[Prompt]:
    """The prompts of ``spec`` (chat messages rendered with the chat template), truncated to fit a response."""

    field = cfg.data.prompt_field
    values = []
    for r in read_records(spec, limit=cfg.data.max_examples):
        value = r.fields.get(field)
        if not isinstance(value, str | list) or not value:
            raise BiglmError(f"{r.where}: no prompt field {field!r} (data.prompt_field); expected text or chat "
                             "messages")
        values.append(value)
    if not values:
        raise BiglmError(f"{spec}: no prompts")
    ids = tokenizer([prompt_text(tokenizer, v) for v in values], add_special_tokens=False)["input_ids"]
    return [Prompt(v, policy.truncate(list(i))) for v, i in zip(values, ids)]


def make_collect(cfg: AlignConfig, model: nn.Module, reference: nn.Module, policy: Any, reward: RewardSource,
                 tokenizer: Any) -> Callable[[list[Prompt], int, int], list[Sample]]:
    """The rollout: sample the method's group of responses to each of ``prompts`` with the policy, score them,
    record log π, log π_ref (and V, for a method with a value head) and the method's advantages."""
    method = get_method(cfg.method)
    group = method.group_size(cfg)

    def collect(prompts: list[Prompt], seed: int, micro: int) -> list[Sample]:
        was_training = model.training
        model.eval()
        try:
            samples = sample_and_score(model, reference, policy, reward, tokenizer, prompts, group, seed, micro,
                                       cfg.rollout.temperature, values=method.value_head)
        finally:
            model.train(was_training)
        method.advantages(cfg, samples)
        return samples

    return collect


def sample_and_score(model: nn.Module, reference: nn.Module, policy: Any, reward: RewardSource, tokenizer: Any,
                     prompts: Sequence[Prompt], group: int, seed: int, micro: int, temperature: float,
                     values: bool = False) -> list[Sample]:
    """``group`` responses per prompt sampled by ``model`` with their reward, log π and log π_ref (per token, or
    the sequence score), and V when ``values``."""
    ids = [p.ids for p in prompts for _ in range(group)]
    responses = policy.sample(model, ids, seed, temperature)
    eos = tokenizer.eos_token_id
    samples = []
    for i, r in enumerate(responses):
        p = prompts[i // group]
        text = tokenizer.decode(cut_at_eos(r, eos), skip_special_tokens=True).strip()
        samples.append(Sample(p.value, p.ids, r, text, seed=row_seed(seed, i)))
    scores = reward([s.prompt for s in samples], [s.text for s in samples])
    old, vals = policy.score(model, samples, micro, values=values)
    ref, _ = policy.score(reference, samples, micro)
    for i, s in enumerate(samples):
        s.score, s.old, s.ref = scores[i], old[i], ref[i]
        s.values = vals[i] if vals else []
    return samples


def make_validator(cfg: AlignConfig, reference: nn.Module, policy: Any, reward: RewardSource, tokenizer: Any,
                   prompts: list[Prompt],
                   pretrain: tuple[PretrainObjective, list] | None) -> Callable[[nn.Module], dict]:
    """Held-out metrics: ``reward`` (mean reward of responses sampled with a fixed seed), ``kl`` (their mean
    log π(y|x) - log π_ref(y|x), a Monte-Carlo estimate of KL(π || π_ref)), ``response_len`` and
    ``pretrain_loss`` (the pretraining objective's loss on held-out text)."""
    size = cfg.rollout.eval_batch_size

    def validate(model: nn.Module) -> dict[str, float]:
        out: dict[str, float] = {}
        if prompts:
            samples: list[Sample] = []
            for i, part in enumerate(chunks(prompts, size)):
                samples += sample_and_score(model, reference, policy, reward, tokenizer, part, 1,
                                            row_seed(cfg.train.seed ^ VAL_SALT, i), size, cfg.rollout.eval_temperature)
            n = len(samples)
            out.update(reward=sum(s.score for s in samples) / n, kl=sum(s.kl for s in samples) / n,
                       response_len=sum(len(s.response) for s in samples) / n)
        if pretrain is not None:
            out["pretrain_loss"] = pretrain[0].loss(model, pretrain[1])
        return out

    return validate


POLICIES: dict[str, Callable[[AlignConfig, TokenIds, int, Sequence[int]], Any]] = {
    "autoregressive": lambda cfg, ids, n, banned: ARPolicy(ids, cfg.rollout, n, banned),
    "mask-predict": lambda cfg, ids, n, banned: MaskedPolicy(ids, cfg.rollout, n, banned, cfg.grpo.score,
                                                             cfg.grpo.score_samples),
}
"""How a policy samples and is scored, by its family's decoder (``Family.decoder``): (config, token ids,
max_seq_len, banned ids) -> policy. A family whose decoder has none here cannot be aligned."""


def resolve_policy(cfg: AlignConfig, source: Path | None) -> tuple[Path, Any, ModelConfig]:
    """(init checkpoint, tokenizer, model config with the heads the method needs), with the family checked."""

    if not cfg.init:
        raise ConfigError("init: give the policy checkpoint to start from (--init CKPT); it is also the reference")
    init = resolve_checkpoint(cfg.init, check=verify_model)
    own = source or init
    if not (own / "tokenizer").is_dir():
        raise BiglmError(f"{own}: the checkpoint has no tokenizer/ folder; alignment needs the policy's tokenizer")
    model = ModelConfig.from_dict({**load_yaml(own / "model_config.yaml"), **cfg.model_overrides})
    method, family = get_method(cfg.method), get_family(model)
    method.check_family(family, cfg.init)
    if family.decoder not in POLICIES:
        raise ConfigError(f"method={cfg.method}: {family.name} policies are not supported by biglm align "
                          f"({cfg.init}): no sampler for its {family.decoder} decoder")
    if method.value_head:
        model = dataclasses.replace(model, reward_head=True)  # the value head on the policy's trunk
    return init, load_tokenizer(own / "tokenizer"), model


@dataclass
class Parts:
    """What a policy-gradient run and its held-out evaluation share."""

    cfg: AlignConfig
    """The config with the model section resolved."""
    init: Path
    tokenizer: Any
    ids: TokenIds
    policy: Any
    reward: RewardSource
    reference: nn.Module
    objective: PretrainObjective
    valid: list[Prompt]
    held_out: list | None
    """Held-out pretraining rows (``data.pretrain_valid``)."""

    def validator(self) -> Callable[[nn.Module], dict[str, float]]:
        return make_validator(self.cfg, self.reference, self.policy, self.reward, self.tokenizer, self.valid,
                              (self.objective, self.held_out) if self.held_out else None)


def build_parts(cfg: AlignConfig, device: torch.device | str = "cpu", source: Path | None = None) -> Parts:
    """Policy family, reward, reference (a frozen copy of ``init``), held-out prompts and pretraining rows."""

    init, tokenizer, model_cfg = resolve_policy(cfg, source)
    cfg = dataclasses.replace(cfg, model=model_cfg)
    ids = TokenIds.of(tokenizer)
    banned = banned_ids(tokenizer, model_cfg.vocab_size)
    policy = POLICIES[get_family(model_cfg).decoder](cfg, ids, model_cfg.max_seq_len, banned)
    valid = read_prompts(cfg.data.valid_prompts, cfg, tokenizer, policy) if cfg.data.valid_prompts else []
    objective = PretrainObjective(cfg.ptx.objective, model_cfg.family, ids, model_cfg.vocab_size)
    seq_len = cfg.ptx.seq_len or model_cfg.max_seq_len
    held_out = read_rows(cfg.data.pretrain_valid, cfg.data.text_field, tokenizer, seq_len, ids) \
        if cfg.data.pretrain_valid else None
    reward = build_reward(cfg.reward, device)
    reference = load_model(init, device=device).model.requires_grad_(False).eval()
    return Parts(cfg, init, tokenizer, ids, policy, reward, reference, objective, valid, held_out)


def held_out_metrics(cfg: AlignConfig, model: nn.Module) -> dict[str, float]:
    """The held-out metrics of any policy ``model`` (e.g. one trained with DPO) against ``cfg.init`` as the
    reference, with ``cfg.reward`` on ``cfg.data.valid_prompts``: what ``biglm align`` logs as ``val_*``."""
    parts = build_parts(cfg, next(model.parameters()).device)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            return parts.validator()(model)
    finally:
        model.train(was_training)


def setup_align(cfg: AlignConfig, run_dir: str | Path, resume: bool = False) -> Trainer:
    """A ``Trainer`` that aligns ``cfg.init`` with ``cfg.method`` into ``run_dir`` (``resume``: continue it)."""

    method = get_method(cfg.method)
    method.check_inputs(cfg)
    if not method.rollout:  # e.g. DPO: its fine-tuning task kind on the same trainer
        return setup_finetune(method.finetune_config(cfg), run_dir, resume)
    run_dir = Path(run_dir)
    check_run_dir(run_dir, resume)
    env = init_distributed(cfg.train.device)
    own = find_resume_checkpoint(run_dir, note=lambda _: None) if resume else None
    parts = build_parts(cfg, env.device, own)
    cfg, policy, tokenizer, ids, objective = parts.cfg, parts.policy, parts.tokenizer, parts.ids, parts.objective
    model_cfg = cfg.model
    prompts = read_prompts(cfg.data.prompts, cfg, tokenizer, policy)
    pretrain_rows = None
    if cfg.ptx.coef > 0:
        if not cfg.data.pretrain:
            raise ConfigError(f"ptx.coef={cfg.ptx.coef}: needs pretraining text (--pretrain FILE, data.pretrain)")
        pretrain_rows = read_rows(cfg.data.pretrain, cfg.data.text_field, tokenizer,
                                  cfg.ptx.seq_len or model_cfg.max_seq_len, ids, cfg.data.max_examples)
    group, epochs = method.group_size(cfg), method.epochs(cfg)
    t = cfg.train
    buffer = cfg.rollout.prompts_per_rollout * group
    micro = t.micro_batch(env.world_size)
    if buffer % (micro * t.grad_accum(env.world_size)):
        per_rank = f" / {env.world_size} ranks" if env.world_size > 1 else ""
        raise ConfigError(f"rollout.prompts_per_rollout={cfg.rollout.prompts_per_rollout}: a buffer of {buffer} "
                          f"responses must split into steps of train.global_batch_size={t.global_batch_size}{per_rank}")
    stream = RolloutStream(prompts, cfg.rollout.prompts_per_rollout, group, epochs, t.seed, pretrain_rows,
                           cfg.ptx.rows, env.rank, env.world_size)
    criterion = AlignCriterion(method.name, policy, **method.loss_options(cfg), ptx_coef=cfg.ptx.coef,
                               pretrain=(objective.criterion, objective.kind))
    batcher = RolloutBatcher(ids.bos, policy.sequence_level, objective.batcher if pretrain_rows else None)
    if not t.init_from:
        cfg = dataclasses.replace(cfg, train=dataclasses.replace(t, init_from=str(parts.init)))
    if parts.valid and not t.best_metric:
        cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, best_metric="val_reward", best_mode="max"))
    bundle = DataBundle(stream, None, mask_token_id=ids.mask, vocab_size=model_cfg.vocab_size, n_tokens=len(tokenizer),
                        tokenizer=tokenizer)
    if env.is_main:
        print(f"biglm align: {cfg.method}, {model_cfg.family} policy, {len(prompts)} prompts ({buffer} responses per "
              f"rollout, {epochs} epoch(s) each), {len(parts.valid)} held-out prompts, reward {cfg.reward}, "
              f"λ_PT {cfg.ptx.coef}", file=sys.stderr)
    trainer = assemble(cfg, env, run_dir, resume, bundle, batcher, criterion, parts.validator(), verb="align")
    stream.collect = make_collect(cfg, trainer.model, parts.reference, policy, parts.reward, tokenizer)
    return trainer


def log_start(trainer: Trainer) -> dict[str, float]:
    """The held-out metrics of the starting policy, logged at step 0 of a fresh run (the curves' first point)."""
    if trainer.step != 0 or trainer.validator is None:
        return {}
    trainer.model.eval()
    try:
        with torch.no_grad():
            row = {f"val_{k}": v for k, v in trainer.validator(trainer.model).items()}
    finally:
        trainer.model.train()
    trainer.logger.log(0, row)
    return row
