"""The training loop: ``Trainer.fit`` runs optimizer steps and calls out to the schedule, the objective,
the metrics logger and the checkpointer. It never sees the parallelism or the logger backend.

Loss normalisation: the loss of a step is the sum of masked-token cross-entropies over the GLOBAL batch
(every micro-batch on every rank) divided by the global number of masked tokens, all-reduced before
the backward pass. DDP and FSDP average gradients over ranks, so each rank back-propagates
``loss_sum · world_size / global_count``: accumulation and data parallelism give the same update as
one large batch.
Masking and batching (row-seeded, world-size invariant, optionally prefetched) live in
``biglm.train.batches``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from biglm.attention import AttentionLayout
from biglm.objectives import IGNORE_INDEX, Batch, LossParts, Objective, masked_lm_loss
from biglm.train import checkpointing as ckpt
from biglm.train.batches import VAL_SALT, BatchProducer, StepBatches, mask_rows
from biglm.train.config import RunConfig
from biglm.train.guard import NonFiniteGuard
from biglm.train.metrics import MetricsLogger, Progress, flops_per_token, mfu, peak_flops
from biglm.train.optim import set_learning_rate
from biglm.train.parallel import (
    DistEnv,
    all_reduce_sum,
    autocast,
    autocast_dtype,
    gradient_sync,
)
from biglm.train.schedule import decay_start, learning_rate
from biglm.train.streams import DataBundle


def loss_parts(model: nn.Module, batch: Batch) -> LossParts:
    """Forward ``batch`` with logits only at its masked positions; summed CE split into X and Y."""
    mask = batch.loss_mask
    out = model(batch.input_ids, batch.layout, batch.position_ids, logits_mask=mask)
    regions = batch.layout.regions[mask] if batch.layout.regions is not None else None
    return masked_lm_loss(out.logits, batch.labels[mask], regions)


class Trainer:
    """Runs ``cfg.train.steps`` optimizer steps; built by ``biglm.train.setup.setup``."""

    def __init__(self, cfg: RunConfig, env: DistEnv, model: nn.Module, train_model: nn.Module,
                 optimizer: torch.optim.Optimizer, objective: Objective, data: DataBundle, run_dir: Path,
                 logger: MetricsLogger, progress: Progress) -> None:
        self.cfg, self.tcfg, self.env = cfg, cfg.train, env
        self.model, self.train_model, self.optimizer, self.objective = model, train_model, optimizer, objective
        self.data, self.run_dir, self.logger, self.progress = data, run_dir, logger, progress
        self.grad_accum = self.tcfg.grad_accum(env.world_size)
        self.micro = self.tcfg.micro_batch(env.world_size)
        self.seq_len = cfg.data.seq_len
        self.step, self.tokens_seen, self.annealing = 0, 0, False
        self.data_state = data.train.state_dict()
        self.peak = peak_flops(env.device, autocast_dtype(self.tcfg, env.device), self.tcfg.peak_flops) \
            if env.is_main else 0.0
        self.val_batches = self._prepare_val()
        self.last_metrics: dict[str, float] = {}
        self.guard = NonFiniteGuard(self.tcfg.nonfinite, self.tcfg.nonfinite_patience, env.distributed,
                                    progress.write if env.is_main else None)

    # --- batches ------------------------------------------------------------------------------------------
    def _prepare_val(self) -> list[Batch]:
        """The fixed validation micro-batches of this rank (masked once, reused by every evaluation)."""
        batches: list[Batch] = []
        if self.data.val is not None:
            for i, raw in zip(range(self.tcfg.eval_batches), self.data.val.batches(self.micro)):
                first = i * self.micro * self.env.world_size + self.env.rank
                batches.append(mask_rows(self.objective, raw, self.tcfg.seed ^ VAL_SALT, first, self.env.world_size))
        return batches

    def producer(self) -> BatchProducer:
        """Masked micro-batches from the current step on (the stream is first put back at that position)."""
        t = self.tcfg
        self.data.train.load_state_dict(self.data_state)
        return BatchProducer(
            self.data.train, self.objective, seed=t.seed, micro_batch=self.micro, grad_accum=self.grad_accum,
            global_batch=t.global_batch_size, rank=self.env.rank, world_size=self.env.world_size,
            start_step=self.step, steps=t.steps, anneal_at=decay_start(t) if (t.anneal_data and self.data.anneal)
            else None, annealing=self.annealing, prefetch=t.prefetch, pin_memory=self.env.device.type == "cuda")

    # --- one optimizer step -------------------------------------------------------------------------------
    def train_step(self, item: StepBatches) -> dict[str, float]:
        """Forward/backward over the step's micro-batches, clip, AdamW step. Returns this rank's sums."""
        lr = learning_rate(item.step, self.tcfg)
        set_learning_rate(self.optimizer, lr)
        local_targets = sum(b.num_targets for b in item.batches)  # counted on the host: no device sync
        batches = [b.to(self.env.device) for b in item.batches]
        (global_targets,) = all_reduce_sum([float(local_targets)], self.env)
        scale = self.env.world_size / max(global_targets, 1.0)
        sums = torch.zeros(4, dtype=torch.float64, device=self.env.device)
        for a, batch in enumerate(batches):
            with gradient_sync(self.train_model, a == len(batches) - 1):
                with autocast(self.tcfg, self.env.device):
                    parts = loss_parts(self.train_model, batch)
                (parts.loss_sum * scale).backward()
            sums += parts.stats()  # stays on the device: no synchronisation per micro-batch
        max_norm = self.tcfg.grad_clip if self.tcfg.grad_clip > 0 else float("inf")
        norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), max_norm)
        norm = norm.full_tensor() if hasattr(norm, "full_tensor") else norm
        sums, norm, apply = self.guard.check(item.step, sums, norm, lr)  # the step's one host transfer
        if apply:
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        tokens = sum(b.input_ids.numel() for b in batches)
        return {"x_sum": sums[0], "x_count": sums[1], "y_sum": sums[2], "y_count": sums[3],
                "tokens": tokens, "lr": lr, "grad_norm": norm, "skipped": float(not apply)}

    # --- evaluation ---------------------------------------------------------------------------------------
    @torch.no_grad()
    def evaluate(self) -> float | None:
        """Mean masked-token loss over the fixed validation batches of every rank (None without a val split)."""
        count = int(all_reduce_max(len(self.val_batches), self.env))
        if count == 0:
            return None
        self.model.eval()
        sums = torch.zeros(4, dtype=torch.float64, device=self.env.device)
        for i in range(count):
            # FSDP forwards are collectives: every rank runs the same number, padding with a no-target batch.
            batch = self.val_batches[i] if i < len(self.val_batches) else self._empty_batch()
            with autocast(self.tcfg, self.env.device):
                parts = loss_parts(self.model, batch.to(self.env.device))
            sums += parts.stats()
        self.model.train()
        x_sum, x_count, y_sum, y_count = sums.tolist()
        total, targets = x_sum + y_sum, x_count + y_count
        total, targets = all_reduce_sum([total, targets], self.env)
        return total / max(targets, 1.0)

    def _empty_batch(self) -> Batch:
        ids = torch.zeros(1, self.seq_len, dtype=torch.long)
        return Batch(ids, torch.full_like(ids, IGNORE_INDEX), torch.arange(self.seq_len)[None], AttentionLayout())

    # --- state --------------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Everything but weights and optimizer needed to continue exactly (every rank's RNG included)."""
        rngs = all_gather_object(ckpt.rng_state(), self.env)
        return {"step": self.step, "tokens_seen": self.tokens_seen, "annealing": self.annealing,
                "world_size": self.env.world_size, "global_batch_size": self.tcfg.global_batch_size,
                "data": self.data_state, "rng": rngs, "guard": self.guard.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.step, self.tokens_seen = int(state["step"]), int(state["tokens_seen"])
        self.annealing = bool(state["annealing"])
        self.guard.load_state_dict(state.get("guard", {}))
        if self.annealing:
            self.data.train.set_phase("anneal")
        self.data.train.load_state_dict(state["data"])
        self.data_state = state["data"]
        if state["world_size"] == self.env.world_size:
            ckpt.set_rng_state(state["rng"][self.env.rank])
        elif self.env.is_main:
            self.progress.write(f"note: resuming on {self.env.world_size} ranks (saved on {state['world_size']}): "
                                "data position kept, dropout RNG streams not restored")

    def save(self) -> None:
        """Gather the full state (collective) and let rank 0 write ``checkpoints/step_<step>``."""
        model_state = ckpt.gather_model_state(self.model)
        optimizer_state = ckpt.gather_optimizer_state(self.model, self.optimizer)
        state = self.state_dict()
        if self.env.is_main:
            ckpt.save_checkpoint(self.run_dir, self.step, model_state, self.cfg.model, self.data.tokenizer,
                                 optimizer_state, state, self.cfg.to_dict(), self.tcfg.keep_last)
        if self.env.distributed:
            dist.barrier()

    # --- the loop -----------------------------------------------------------------------------------------
    def fit(self, until: int | None = None) -> dict[str, float]:
        """Train until ``train.steps`` (or stop after step ``until``, saving a checkpoint there); log,
        evaluate and save on schedule. Returns the last metrics row. Call ``close`` when done."""
        t = self.tcfg
        until = t.steps if until is None else min(until, t.steps)
        acc = _Interval()
        tic = time.perf_counter()
        producer = self.producer()
        try:
            for item in producer:
                if item.annealing and not self.annealing and self.env.is_main:
                    self.progress.write(f"step {item.step}: LR decay starts; data switched to the anneal mixture")
                stats = self.train_step(item)
                self.step, self.data_state, self.annealing = item.step + 1, item.data_state, item.annealing
                self.tokens_seen += int(stats["tokens"]) * self.env.world_size
                acc.add(stats)
                done = self.step == t.steps
                stop = self.step >= until
                evaluate = done or (t.eval_every > 0 and self.step % t.eval_every == 0)
                if evaluate or self.step % t.log_every == 0:
                    if self.env.device.type == "cuda":
                        torch.cuda.synchronize(self.env.device)
                    row = self._metrics(acc, time.perf_counter() - tic)
                    if evaluate and (val := self.evaluate()) is not None:
                        row["val_loss"] = val
                    self.logger.log(self.step, row)
                    self.last_metrics, acc = row, _Interval()
                    tic = time.perf_counter()
                self.progress.update(self.last_metrics)
                if done or stop or (t.save_every > 0 and self.step % t.save_every == 0):
                    self.save()
                    tic = time.perf_counter()  # saving is not training time
                if stop:
                    break
        finally:
            producer.close()
        return self.last_metrics

    def close(self) -> None:
        """Close the progress bar and the metrics logger."""
        self.progress.close()
        self.logger.close()

    def _metrics(self, acc: _Interval, seconds: float) -> dict[str, float]:
        x_sum, x_count, y_sum, y_count, tokens = all_reduce_sum(
            [acc.x_sum, acc.x_count, acc.y_sum, acc.y_count, acc.tokens], self.env)
        targets = x_count + y_count
        tokens_per_s = tokens / max(seconds, 1e-9)
        fpt = flops_per_token(self.cfg.model, self.seq_len, targets / max(tokens, 1.0))
        return {"loss": (x_sum + y_sum) / targets if targets else float("nan"),
                "loss_x": x_sum / x_count if x_count else float("nan"),
                "loss_y": y_sum / y_count if y_count else float("nan"),
                "lr": acc.lr, "grad_norm": acc.grad_norm, "tokens_per_s": tokens_per_s,
                "mfu": mfu(tokens_per_s, fpt, self.peak, self.env.world_size),
                "masked_fraction": targets / max(tokens, 1.0), "tokens_seen": float(self.tokens_seen),
                "skipped_steps": int(acc.skipped)}


@dataclass
class _Interval:
    """Sums over the steps since the last metrics row (local to this rank)."""

    x_sum: float = 0.0
    x_count: float = 0.0
    y_sum: float = 0.0
    y_count: float = 0.0
    tokens: float = 0.0
    lr: float = 0.0
    grad_norm: float = 0.0
    skipped: float = 0.0

    def add(self, s: dict[str, float]) -> None:
        self.x_sum += s["x_sum"]
        self.x_count += s["x_count"]
        self.y_sum += s["y_sum"]
        self.y_count += s["y_count"]
        self.tokens += s["tokens"]
        self.lr, self.grad_norm = s["lr"], s["grad_norm"]
        self.skipped += s["skipped"]


def all_reduce_max(value: float, env: DistEnv) -> float:
    if not env.distributed:
        return value
    t = torch.tensor([value], dtype=torch.float64, device=env.device if dist.get_backend() == "nccl" else "cpu")
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return float(t)


def all_gather_object(obj: Any, env: DistEnv) -> list[Any]:
    if not env.distributed:
        return [obj]
    out: list[Any] = [None] * env.world_size
    dist.all_gather_object(out, obj)
    return out
