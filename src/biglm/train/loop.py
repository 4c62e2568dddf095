"""The training loop: ``Trainer.fit`` runs optimizer steps and calls out to the schedule, the batcher,
the criterion, the validator, the metrics logger, the checkpointer (``biglm.train.checkpointer``) and its
step hooks (``StepHook``, e.g. ``train.growth``). It never sees the parallelism (only the collectives of
``biglm.train.parallel``), the checkpoint format, the objective or task, or the logger backend.

Loss normalisation: a criterion returns named loss *sums* (e.g. ``mlm``: the masked-token
cross-entropy; a fine-tuning task may add ``length``); each is divided by its count over the GLOBAL
batch (every micro-batch on every rank, counted on the host and all-reduced once per step before the
backward pass) and weighted. DDP and FSDP average gradients over ranks, so each rank back-propagates
``Σ_k w_k · sum_k · world_size / global_count_k``: accumulation and data parallelism give the same
update as one large batch.
Batching (row-seeded, world-size invariant, optionally prefetched) lives in ``biglm.train.batches``.

Validation runs every ``train.eval_every`` steps and at the end: the criterion's loss on fixed held-out
batches (``val_loss``) and, when a ``validator`` is given (a fine-tuning task's metric), its metrics
as ``val_<name>``. With ``train.best_metric`` the best-scoring weights are kept in ``RUN_DIR/best``
and ``train.patience`` evaluations without improvement stop the run early.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import nn

from biglm.attention import AttentionLayout
from biglm.config import ModelConfig
from biglm.objectives import IGNORE_INDEX, Batch, Criterion
from biglm.objectives.heldout import add_sums, heldout_sums, mean_loss, term_means
from biglm.train import checkpointing as ckpt
from biglm.train.batches import VAL_SALT, Batcher, BatchProducer, RowSeeds, StepBatches
from biglm.train.checkpointer import Checkpointer
from biglm.train.config import TrainConfig
from biglm.train.guard import NonFiniteGuard
from biglm.train.metrics import MetricsLogger, Progress, flops_per_token, mfu, peak_flops
from biglm.train.optim import set_learning_rate
from biglm.train.parallel import (
    DistEnv,
    all_gather_object,
    all_reduce_max,
    all_reduce_sum,
    autocast,
    autocast_dtype,
    gradient_sync,
)
from biglm.train.schedule import decay_start, learning_rate
from biglm.train.streams import DataBundle


class TrainerConfig(Protocol):
    """What the trainer reads of a run's config (``RunConfig`` for pre-training, a fine-tuning config...)."""

    model: ModelConfig
    train: TrainConfig

    @property
    def seq_len(self) -> int: ...

    def to_dict(self) -> dict[str, Any]: ...


Validator = Callable[[nn.Module], dict[str, float]]
"""Task metrics of the model on held-out data (called on every rank; returns the same dict on each)."""


class StepHook(Protocol):
    """Something the trainer runs after every optimizer step (e.g. ``biglm.train.growth.GrowthHook``)."""

    def on_step(self, trainer: Trainer, step: int) -> None:
        """Called on every rank right after step ``step`` (``trainer.step == step``), before its metrics and
        checkpoint; a hook may replace ``trainer.model`` / ``train_model`` / ``optimizer`` / ``cfg``."""
        ...


class Trainer:
    """Runs ``cfg.train.steps`` optimizer steps; built by ``biglm.train.setup.assemble``."""

    def __init__(self, cfg: TrainerConfig, env: DistEnv, model: nn.Module, train_model: nn.Module,
                 optimizer: torch.optim.Optimizer, batcher: Batcher, criterion: Criterion, data: DataBundle,
                 run_dir: Path, logger: MetricsLogger, progress: Progress, validator: Validator | None = None,
                 steps_per_epoch: int | None = None, hooks: Sequence[StepHook] = ()) -> None:
        self.cfg, self.tcfg, self.env = cfg, cfg.train, env
        self.model, self.train_model, self.optimizer = model, train_model, optimizer
        self.batcher, self.criterion, self.validator = batcher, criterion, validator
        self.data, self.run_dir, self.logger, self.progress = data, run_dir, logger, progress
        self.steps_per_epoch, self.hooks = steps_per_epoch, tuple(hooks)
        self.grad_accum = self.tcfg.grad_accum(env.world_size)
        self.micro = self.tcfg.micro_batch(env.world_size)
        self.seq_len = cfg.seq_len
        self.step, self.tokens_seen, self.annealing = 0, 0, False
        self.best = _Best(self.tcfg.best_mode)
        self.stopped_early = False
        self.data_state = data.train.state_dict()
        self.peak = peak_flops(env.device, autocast_dtype(self.tcfg, env.device), self.tcfg.peak_flops) \
            if env.is_main else 0.0
        self.val_batches = self._prepare_val()
        self.last_metrics: dict[str, float] = {}
        self.checkpointer = Checkpointer(run_dir, self.tcfg, env)
        self.guard = NonFiniteGuard(self.tcfg.nonfinite, self.tcfg.nonfinite_patience, env.distributed,
                                    progress.write if env.is_main else None, self.checkpointer.exists)

    # --- batches ------------------------------------------------------------------------------------------
    def _prepare_val(self) -> list[Batch]:
        """The fixed validation micro-batches of this rank (masked once, reused by every evaluation)."""
        batches: list[Batch] = []
        if self.data.val is not None:
            for i, raw in zip(range(self.tcfg.eval_batches), self.data.val.batches(self.micro)):
                first = i * self.micro * self.env.world_size + self.env.rank
                batches.append(self.batcher(raw, RowSeeds(self.tcfg.seed ^ VAL_SALT, first, self.env.world_size)))
        return batches

    def producer(self) -> BatchProducer:
        """Micro-batches from the current step on (the stream is first put back at that position)."""
        t = self.tcfg
        self.data.train.load_state_dict(self.data_state)
        return BatchProducer(
            self.data.train, self.batcher, seed=t.seed, micro_batch=self.micro, grad_accum=self.grad_accum,
            global_batch=t.global_batch_size, rank=self.env.rank, world_size=self.env.world_size,
            start_step=self.step, steps=t.steps, anneal_at=decay_start(t) if (t.anneal_data and self.data.anneal)
            else None, annealing=self.annealing, prefetch=t.prefetch, pin_memory=self.env.device.type == "cuda")

    # --- one optimizer step -------------------------------------------------------------------------------
    def _term_scales(self, batches: list[Batch]) -> tuple[dict[str, float], dict[str, float]]:
        """Per term: ``world · weight / global count`` (one all-reduce), and this rank's counts."""
        counts: dict[str, float] = {}
        for b in batches:
            add_sums(counts, self.criterion.counts(b))
        names = sorted(counts)
        totals = all_reduce_sum([counts[k] for k in names], self.env)
        world, weights = self.env.world_size, self.criterion.weights
        return {k: world * weights.get(k, 1.0) / max(c, 1.0) for k, c in zip(names, totals)}, counts

    def train_step(self, item: StepBatches) -> dict[str, Any]:
        """Forward/backward over the step's micro-batches, clip, AdamW step. Returns this rank's sums."""
        lr = learning_rate(item.step, self.tcfg)
        set_learning_rate(self.optimizer, lr)
        scales, counts = self._term_scales(item.batches)  # counted on the host: no device sync
        tokens = sum(b.num_tokens for b in item.batches)
        targets = sum(b.num_targets for b in item.batches)
        report: dict[str, torch.Tensor] = {}
        batches = [b.to(self.env.device) for b in item.batches]
        for a, batch in enumerate(batches):
            with gradient_sync(self.train_model, a == len(batches) - 1):
                with autocast(self.tcfg, self.env.device):
                    parts = self.criterion(self.train_model, batch)
                sum(parts.terms[k] * scales[k] for k in parts.terms).backward()
            add_sums(report, parts.report())  # stays on the device: no synchronisation per micro-batch
        max_norm = self.tcfg.grad_clip if self.tcfg.grad_clip > 0 else float("inf")
        norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), max_norm)
        norm = norm.full_tensor() if hasattr(norm, "full_tensor") else norm
        keys = sorted(report)
        values = torch.stack([report[k].double().reshape(()) for k in keys])
        values, norm, apply = self.guard.check(item.step, values, norm, lr)  # the step's one host transfer
        if apply:
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        sums = {**dict(zip(keys, values)), "tokens": float(tokens), "targets": float(targets)}
        if apply:  # a skipped step stays out of the logged averages
            sums.update({f"count:{k}": v for k, v in counts.items()})
        return {"sums": sums, "lr": lr, "grad_norm": norm, "skipped": float(not apply)}

    # --- evaluation ---------------------------------------------------------------------------------------
    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        """``val_loss`` (the criterion's weighted loss over the fixed validation batches of every rank) and
        the validator's metrics as ``val_<name>``; empty without validation data or validator."""
        out: dict[str, float] = {}
        count = int(all_reduce_max(len(self.val_batches), self.env))
        self.model.eval()
        try:
            if count:
                # FSDP forwards are collectives: every rank runs the same number, padding with a no-target batch.
                batches = (self.val_batches[i] if i < len(self.val_batches) else self._empty_batch()
                           for i in range(count))
                sums = heldout_sums(self.model, self.criterion, batches, self.env.device,
                                    lambda: autocast(self.tcfg, self.env.device))
                out["val_loss"] = self._reduce(sums)["loss"]
            if self.validator is not None:
                out.update({f"val_{k}": float(v) for k, v in self.validator(self.model).items()})
        finally:
            self.model.train()
        return out

    def _empty_batch(self) -> Batch:
        ids = torch.zeros(1, self.seq_len, dtype=torch.long)
        return Batch(ids, torch.full_like(ids, IGNORE_INDEX), torch.arange(self.seq_len)[None], AttentionLayout())

    def _reduce(self, sums: dict[str, Any]) -> dict[str, float]:
        """Sums over ranks -> ``loss`` (weighted mean of the terms), ``loss_<term>`` (when several) and
        ``loss_<part>`` (``train_<part>`` for the criterion's ``metric_parts``: rewards, clip fractions...); a
        part with no items is NaN."""
        keys = sorted(sums)
        values = dict(zip(keys, all_reduce_sum([float(sums[k]) for k in keys], self.env)))
        means = term_means(values)
        out = {"loss": mean_loss(values, self.criterion.weights)}
        if len(means) > 1:
            out.update({f"loss_{t}": m for t, m in means.items()})
        plain = set(getattr(self.criterion, "metric_parts", ()))  # parts that are no loss: train_<name>
        for k in keys:
            if k.endswith(":sum"):
                name, n = k[:-4], values[f"{k[:-4]}:count"]
                out[f"{'train' if name in plain else 'loss'}_{name}"] = values[k] / n if n else float("nan")
        out.update({k: values[k] for k in ("tokens", "targets") if k in values})
        return out

    # --- state --------------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Everything but weights and optimizer needed to continue exactly (every rank's RNG included)."""
        rngs = all_gather_object(ckpt.rng_state(), self.env)
        return {"step": self.step, "tokens_seen": self.tokens_seen, "annealing": self.annealing,
                "world_size": self.env.world_size, "global_batch_size": self.tcfg.global_batch_size,
                "data": self.data_state, "rng": rngs, "best": self.best.state_dict(),
                "guard": self.guard.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.step, self.tokens_seen = int(state["step"]), int(state["tokens_seen"])
        self.annealing = bool(state["annealing"])
        self.guard.load_state_dict(state.get("guard", {}))
        if self.annealing:
            self.data.train.set_phase("anneal")
        self.data.train.load_state_dict(state["data"])
        self.data_state = state["data"]
        self.best.load_state_dict(state.get("best", {}))
        if state["world_size"] == self.env.world_size:
            ckpt.set_rng_state(state["rng"][self.env.rank])
        elif self.env.is_main:
            self.progress.write(f"note: resuming on {self.env.world_size} ranks (saved on {state['world_size']}): "
                                "data position kept, dropout RNG streams not restored")

    def save(self) -> None:
        """Save ``checkpoints/step_<step>`` through the checkpointer (collective; in ``train.checkpoint_format``)."""
        self.checkpointer.save(self.step, self.model, self.optimizer, self.cfg.model, self.data.tokenizer,
                               self.state_dict, self.cfg.to_dict())

    def finish_saves(self) -> None:
        """Complete an asynchronous checkpoint still being written (collective; a no-op when none is)."""
        self.checkpointer.finish()

    def _track_best(self, row: dict[str, float]) -> None:
        """Keep ``RUN_DIR/best`` at the best ``train.best_metric`` so far; count evaluations without gain."""
        name = self.tcfg.best_metric
        if not name:
            return
        if name not in row:
            if self.env.is_main:
                self.progress.write(f"note: train.best_metric={name!r} is not among the evaluation's metrics "
                                    f"({', '.join(k for k in row if k.startswith('val_'))}); no best checkpoint")
            return
        if not self.best.update(row[name], self.step):
            return
        self.checkpointer.save_best(self.step, self.model, self.cfg.model, self.data.tokenizer, self.cfg.to_dict(),
                                    {"metric": name, "value": row[name]})

    # --- the loop -----------------------------------------------------------------------------------------
    def fit(self, until: int | None = None) -> dict[str, float]:
        """Train until ``train.steps`` (or stop after step ``until``, saving a checkpoint there); log,
        evaluate and save on schedule; stop early after ``train.patience`` evaluations without a better
        ``train.best_metric``. Returns the last metrics row. Call ``close`` when done."""
        t = self.tcfg
        until = t.steps if until is None else min(until, t.steps)
        if t.patience and self.best.bad_evals >= t.patience:
            self.stopped_early = True
            if self.env.is_main:
                self.progress.write(f"note: this run stopped early at step {self.step} ({t.best_metric} did not "
                                    f"improve in {self.best.bad_evals} evaluations); raise train.patience to go on")
            return self.last_metrics
        acc = _Interval()
        tic = time.perf_counter()
        producer = self.producer()
        try:
            for item in producer:
                if item.annealing and not self.annealing and self.env.is_main:
                    self.progress.write(f"step {item.step}: LR decay starts; data switched to the anneal mixture")
                stats = self.train_step(item)
                self.step, self.data_state, self.annealing = item.step + 1, item.data_state, item.annealing
                for hook in self.hooks:  # e.g. train.growth: the model may grow between steps
                    hook.on_step(self, self.step)
                self.tokens_seen += int(stats["sums"]["tokens"]) * self.env.world_size
                acc.add(stats)
                done = self.step == t.steps
                evaluate = done or (t.eval_every > 0 and self.step % t.eval_every == 0)
                if evaluate or self.step % t.log_every == 0:
                    if self.env.device.type == "cuda":
                        torch.cuda.synchronize(self.env.device)
                    row = self._metrics(acc, time.perf_counter() - tic)
                    if evaluate:
                        row.update(self.evaluate())
                        self._track_best(row)
                        if t.patience and self.best.bad_evals >= t.patience:
                            self.stopped_early = True
                    self.logger.log(self.step, row)
                    self.last_metrics, acc = row, _Interval()
                    tic = time.perf_counter()
                self.progress.update(self.last_metrics)
                stop = self.step >= until or self.stopped_early
                if done or stop or (t.save_every > 0 and self.step % t.save_every == 0):
                    self.save()
                    tic = time.perf_counter()  # saving is not training time
                if self.stopped_early and self.env.is_main:
                    self.progress.write(f"step {self.step}: stopping early, {t.best_metric} has not improved in "
                                        f"{self.best.bad_evals} evaluations (best {self.best.value:.4g} at step "
                                        f"{self.best.step})")
                if stop:
                    break
        finally:
            producer.close()
        self.finish_saves()  # not on an exception: an unfinished save stays a .tmp- folder, never used
        return self.last_metrics

    def close(self) -> None:
        """Close the progress bar and the metrics logger."""
        self.progress.close()
        self.logger.close()

    def _metrics(self, acc: _Interval, seconds: float) -> dict[str, float]:
        row = self._reduce(acc.sums)
        tokens, targets = row.pop("tokens"), row.pop("targets")
        tokens_per_s = tokens / max(seconds, 1e-9)
        fpt = flops_per_token(self.cfg.model, self.seq_len, targets / max(tokens, 1.0))
        row.update({"lr": acc.lr, "grad_norm": acc.grad_norm, "tokens_per_s": tokens_per_s,
                    "mfu": mfu(tokens_per_s, fpt, self.peak, self.env.world_size),
                    "masked_fraction": targets / max(tokens, 1.0), "tokens_seen": float(self.tokens_seen),
                    "skipped_steps": int(acc.skipped)})
        if self.steps_per_epoch:
            row["epoch"] = self.step / self.steps_per_epoch
        return row


@dataclass
class _Interval:
    """Sums over the steps since the last metrics row (local to this rank)."""

    sums: dict[str, float] = field(default_factory=dict)
    lr: float = 0.0
    grad_norm: float = 0.0
    skipped: float = 0.0

    def add(self, stats: dict[str, Any]) -> None:
        add_sums(self.sums, stats["sums"])
        self.lr, self.grad_norm = stats["lr"], stats["grad_norm"]
        self.skipped += stats["skipped"]


@dataclass
class _Best:
    """The best value of ``train.best_metric`` so far, its step, and evaluations since it last improved."""

    mode: str = "min"
    value: float = math.nan
    step: int = -1
    bad_evals: int = 0

    def update(self, value: float, step: int) -> bool:
        """Record an evaluation; True when ``value`` is the new best (NaN never is)."""
        better = math.isfinite(value) and (math.isnan(self.value) or
                                           (value < self.value if self.mode == "min" else value > self.value))
        if better:
            self.value, self.step, self.bad_evals = value, step, 0
        else:
            self.bad_evals += 1
        return better

    def state_dict(self) -> dict[str, Any]:
        return {"value": self.value, "step": self.step, "bad_evals": self.bad_evals}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.value = float(state.get("value", math.nan))
        self.step, self.bad_evals = int(state.get("step", -1)), int(state.get("bad_evals", 0))

