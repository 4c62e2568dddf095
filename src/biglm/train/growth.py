"""The growth schedule ``train.growth``: a run that grows its model at given steps (BatGPT Algorithm 1 as
one command), e.g. ``train.growth: [{step: 1000, layers: 2x}]`` trains the configured model for 1000
steps, stacks its layers (``biglm.grow``) and trains the deeper model to ``train.steps``.

``GrowthHook`` is the step hook (``biglm.train.loop.StepHook``) that ``biglm.train.setup`` registers for a
run with a schedule; it calls ``maybe_grow(trainer)`` between optimizer steps (``Trainer.fit`` calls its hooks
right after each step, so the checkpoint and the metrics of step N already belong to the model grown at N).
It gathers the full weights (and, with ``optimizer: carry``, AdamW's moments), expands them with one set of
index maps, builds and parallelises the grown model as ``setup`` does (``biglm.train.build``), and continues
with the same learning-rate schedule, data stream and step count. ``optimizer: reset`` starts AdamW afresh
for the grown model.

The run's ``config.yaml`` keeps the model as configured plus the schedule; ``config_at(cfg, step)`` gives
the model at any step, which is how ``--resume`` rebuilds a grown model from its checkpoint. A
checkpoint's own ``config.yaml`` holds the grown model and the events still to come.
"""

from __future__ import annotations

import dataclasses

import torch

from biglm.config import ModelConfig
from biglm.grow import ExpandSpec, expand_optimizer_state, expand_state, make_plan
from biglm.train import checkpointing as ckpt
from biglm.train.build import build_model
from biglm.train.config import GrowthEvent, RunConfig
from biglm.train.loop import Trainer
from biglm.train.optim import build_optimizer
from biglm.train.parallel import is_sharded


def _size(value: str | None, current: int) -> int | None:
    if value is None:
        return None
    text = str(value).strip().lower()
    return round(float(text[:-1]) * current) if text.endswith(("x", "×")) else int(text)


def spec_for(event: GrowthEvent, model: ModelConfig) -> ExpandSpec:
    """The expansion ``event`` asks of a model shaped ``model``."""
    return ExpandSpec(hidden_size=_size(event.hidden_size, model.hidden_size),
                      num_layers=_size(event.layers, model.num_layers),
                      intermediate_size=_size(event.intermediate_size, model.intermediate_size),
                      mapping=event.mapping, depth_order=event.depth_order, depth_init=event.depth_init,
                      noise=event.noise, seed=event.step)


def config_at(cfg: RunConfig, step: int) -> RunConfig:
    """``cfg`` as it stands after ``step`` steps: every event up to ``step`` applied to the model, only the
    later events left in ``train.growth``."""
    model = cfg.model
    for event in cfg.train.growth:
        if event.step <= step:
            model = make_plan(model, spec_for(event, model)).target
    train = dataclasses.replace(cfg.train, growth=[e for e in cfg.train.growth if e.step > step])
    return dataclasses.replace(cfg, model=model, train=train)


def maybe_grow(trainer: Trainer) -> bool:
    """Grow ``trainer``'s model if an event is due at its current step; True when it grew."""
    due = [e for e in trainer.tcfg.growth if e.step == trainer.step]
    if not due:
        return False
    event, cfg, env = due[0], trainer.cfg, trainer.env
    plan = make_plan(cfg.model, spec_for(event, cfg.model))
    full = ckpt.gather_model_state(trainer.model)
    carry = event.optimizer == "carry"
    optim_full = ckpt.gather_optimizer_state(trainer.model, trainer.optimizer) if carry else None
    sharded = is_sharded(cfg.train, env)
    state, optim_state = {}, {}
    if env.is_main or not sharded:
        weights = {k: v for k, v in full.items() if not (cfg.model.tie_embeddings and k == "lm_head.weight")}
        state = expand_state(weights, plan)
        if cfg.model.tie_embeddings:
            state["lm_head.weight"] = state["model.embed_tokens.weight"]
        optim_state = expand_optimizer_state(optim_full, plan) if carry else {}
    new_cfg = config_at(cfg, trainer.step)
    model, train_model = build_model(new_cfg, env, None, state=state)
    optimizer = build_optimizer(model, new_cfg.train)
    if carry:
        ckpt.load_optimizer_state(model, optimizer, optim_state, sharded=sharded)
    before = _shape(cfg.model)
    trainer.model, trainer.train_model, trainer.optimizer = model, train_model, optimizer
    trainer.cfg, trainer.tcfg = new_cfg, new_cfg.train
    if env.is_main:
        exact = "function preserving" if plan.exact else "not function preserving"
        trainer.progress.write(f"step {trainer.step}: grew {before} -> {_shape(new_cfg.model)} ({exact}; "
                               f"optimizer state {'carried' if carry else 'reset'})")
    if env.device.type == "cuda":
        torch.cuda.empty_cache()
    return True


class GrowthHook:
    """``train.growth`` as a step hook: grows the trainer's model when an event is due at ``step``."""

    def on_step(self, trainer: Trainer, step: int) -> None:
        maybe_grow(trainer)


def _shape(m: ModelConfig) -> str:
    return f"{m.num_layers}×{m.hidden_size} ({m.num_parameters() / 1e6:.2f}M)"


__all__ = ["GrowthHook", "config_at", "maybe_grow", "spec_for"]
