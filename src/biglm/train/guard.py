"""Non-finite steps: detect a NaN/Inf loss or gradient norm on every optimizer step and skip or stop.

The check costs no host synchronisation of its own: the step's loss sums and gradient norm stay on the
device until ``NonFiniteGuard.read`` brings them to the host in the one transfer the step makes anyway
(its statistics), just before the optimizer step, so that the decision can keep the update from
happening. Under data parallelism every rank sees the same all-reduced gradient norm; a rank whose own
loss is non-finite tells the others through a one-element all-reduce queued on the device, so all
ranks skip together.

A *skipped* step applies no update: the gradients are zeroed, AdamW's moments and step count are
untouched, while the trainer's step counter, the learning-rate schedule and the data position advance
(the rows of a skipped step are not retried). Its loss is left out of the logged averages and counted
in ``skipped_steps``. ``train.nonfinite: stop`` stops at the first such step; ``skip`` (the default)
stops after ``train.nonfinite_patience`` consecutive ones. Stopping raises ``NonFiniteLoss`` (one
line, no checkpoint written: the newest checkpoint holds the last finite weights, or, when the run has
none yet, the line says there is nothing to resume).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.distributed as dist

from biglm.errors import BiglmError


class NonFiniteLoss(BiglmError):
    """Training stopped on non-finite losses or gradients."""


class NonFiniteGuard:
    """Per-step finiteness check with the ``train.nonfinite`` policy; its counters resume with the run."""

    def __init__(self, policy: str, patience: int, distributed: bool = False,
                 note: Callable[[str], None] | None = None, has_checkpoint: Callable[[], bool] = lambda: True) -> None:
        self.policy, self.patience, self.distributed = policy, patience, distributed
        self.note = note or (lambda _text: None)
        self.has_checkpoint = has_checkpoint
        """Whether the run has a checkpoint to resume from (what the stop message advises)."""
        self.consecutive = 0
        self.total = 0

    def check(self, step: int, sums: torch.Tensor, grad_norm: torch.Tensor,
              lr: float) -> tuple[list[float], float, bool]:
        """Bring optimizer step ``step``'s (0-based) statistics ``sums`` and ``grad_norm`` to the host in one
        transfer and apply the policy. Returns (sums as floats, grad norm, whether to apply the update); a
        skipped step's sums come back as zeros so that they stay out of the logged averages. Raises
        ``NonFiniteLoss`` when the policy says stop."""
        loss_bad = ~torch.isfinite(sums).all()
        flags = torch.stack([loss_bad, ~torch.isfinite(grad_norm).reshape(())]).to(torch.float64)
        if self.distributed:  # queued on the device like the gradient all-reduce: no extra host sync
            dist.all_reduce(flags, op=dist.ReduceOp.MAX)
        packed = torch.cat([sums.double().reshape(-1), grad_norm.double().reshape(1), flags])
        *values, norm, loss_flag, norm_flag = packed.tolist()
        if not (loss_flag or norm_flag):
            self.consecutive = 0
            return values, norm, True
        self.consecutive += 1
        self.total += 1
        what = "loss and gradient norm" if loss_flag and norm_flag else "loss" if loss_flag else "gradient norm"
        text = f"step {step + 1}: non-finite {what} (grad norm {norm:.4g}, lr {lr:.3g})"
        if self.policy == "stop" or self.consecutive >= self.patience:
            why = "train.nonfinite=stop" if self.policy == "stop" else (
                f"{self.consecutive} in a row, train.nonfinite_patience={self.patience}")
            if self.has_checkpoint():
                advice = ("the newest one holds the last finite weights: lower train.lr or check the data, then "
                          "--resume")
            else:
                advice = ("and the run has none, so there is nothing to resume: lower train.lr or check the data and "
                          "start again (another --out, or --resume to restart this run from step 0)")
            raise NonFiniteLoss(f"{text}; stopped ({why}) without writing a checkpoint, {advice}")
        self.note(f"{text}: optimizer step skipped ({self.consecutive} in a row, {self.total} in all)")
        return [0.0] * len(values), norm, False

    def state_dict(self) -> dict[str, Any]:
        return {"consecutive": self.consecutive, "total": self.total}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.consecutive, self.total = int(state.get("consecutive", 0)), int(state.get("total", 0))
