"""``biglm plot``: loss (train, X, Y, validation) and learning-rate curves of a run, as one PNG, with a
panel of the validation task metrics (``val_rougeL``, ``val_accuracy``, ... of fine-tuning runs) and the
training-batch metrics (``train_clip_frac``, ... of alignment runs) when the run logged any; an alignment run's
reward and KL to the reference (training batches and held-out prompts) get a panel of their own."""

from __future__ import annotations

import math
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from biglm.errors import BiglmError
from biglm.files import atomic_file


def read_metrics(run_dir: Path, note: Callable[[str], None] | None = None) -> list[dict[str, float]]:
    """Rows of ``run_dir/metrics.jsonl`` (a one-line error if there are none); damaged lines are skipped
    with a note through ``note`` (default stderr)."""
    from biglm.train.metrics import read_metrics_file

    note = note or (lambda text: print(text, file=sys.stderr, flush=True))
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        raise BiglmError(f"{run_dir}: no metrics.jsonl (not a run folder, or no step logged yet)")
    rows, bad = read_metrics_file(path)
    if bad:
        note(f"note: {path}: skipped {len(bad)} damaged line(s) (first: line {bad[0]})")
    if not rows:
        raise BiglmError(f"{path}: no metrics rows")
    skipped = sum(int(r.get("skipped_steps") or 0) for r in rows)
    if skipped:
        note(f"note: {run_dir.name}: {skipped} optimizer step(s) were skipped for a non-finite loss or gradient "
             "(skipped_steps in metrics.jsonl); their losses are not drawn")
    return rows


def _objective(run_dir: Path) -> str:
    """The run's objective name from its ``config.yaml`` ('' when unknown)."""
    import yaml

    try:
        return str((yaml.safe_load((run_dir / "config.yaml").read_text()) or {}).get("objective", {}).get("name", ""))
    except (OSError, yaml.YAMLError, AttributeError):
        return ""


def _series(rows: list[dict[str, float]], key: str) -> tuple[list[float], list[float]]:
    pts = [(r["step"], r[key]) for r in rows if key in r and r[key] is not None and math.isfinite(r[key])]
    return [p[0] for p in pts], [p[1] for p in pts]


def plot_run(run_dir: str | Path, out: str | Path | None = None, note: Callable[[str], None] | None = None) -> Path:
    """Write the loss and LR curves of ``run_dir`` to ``out`` (default ``run_dir/metrics.png``)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    run_dir = Path(run_dir)
    rows = read_metrics(run_dir, note)
    out = Path(out) if out else run_dir / "metrics.png"
    metrics = sorted({k for r in rows for k in r if k.startswith(("val_", "train_")) and k != "val_loss"})
    # alignment runs: reward and KL to the reference get a panel of their own (reward left, KL right axis)
    aligned = [k for k in metrics if k.split("_", 1)[1] in ("reward", "kl")]
    task_metrics = [k for k in metrics if k not in aligned and k != "val_pretrain_loss"]
    panels = 2 + bool(aligned) + bool(task_metrics)
    ratios = (3, *([2] * (panels - 2)), 1)
    fig, axes = plt.subplots(panels, 1, figsize=(9, 3 + 2 * panels), sharex=True, height_ratios=ratios)
    ax_loss, ax_lr, middle = axes[0], axes[-1], list(axes[1:-1])
    if aligned:
        _reward_panel(middle.pop(0), rows, aligned)
    if task_metrics:
        ax_task = middle.pop(0)
        for key in task_metrics:
            steps, values = _series(rows, key)
            held_out = key.startswith("val_")  # train_<name>: metrics of the training batches (e.g. clip fraction)
            ax_task.plot(steps, values, "o-" if held_out else "-", label=key[4:] if held_out else key, markersize=3)
        ax_task.set_ylabel("metrics")
        ax_task.grid(alpha=0.3)
        ax_task.legend(fontsize=8, ncol=2)
    autoregressive = _objective(run_dir) in ("causal", "bidirectional-ar")
    parts = ("left to right", "right to left") if autoregressive else ("prefix X", "suffix Y")
    styles = {"loss": ("train", "-"), "loss_x": (parts[0], ":"), "loss_y": (parts[1], "--"),
              "loss_l2r": ("left to right", ":"), "loss_r2l": ("right to left", "--"),
              "val_loss": ("validation", "o-"), "val_pretrain_loss": ("held-out pretraining", "s-")}
    for key in sorted({k for r in rows for k in r if k.startswith("loss_")} - set(styles)):
        styles[key] = (key[5:], "-.")  # further loss terms and parts, e.g. a length head's loss
    for key, (label, style) in styles.items():
        steps, values = _series(rows, key)
        if steps:
            ax_loss.plot(steps, values, style, label=label, markersize=3)
    ax_loss.set_ylabel("next-token loss (nats)" if autoregressive else "loss (nats)")
    ax_loss.set_title(f"biglm run {run_dir.name}")
    ax_loss.grid(alpha=0.3)
    ax_loss.legend()
    steps, values = _series(rows, "lr")
    ax_lr.plot(steps, values, color="tab:purple")
    ax_lr.set_ylabel("learning rate")
    ax_lr.set_xlabel("step")
    ax_lr.grid(alpha=0.3)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_file(out, "wb") as f:
        fig.savefig(f, dpi=110, format=out.suffix.lstrip(".").lower() or "png")
    plt.close(fig)
    return out


def _reward_panel(ax: Any, rows: list[dict[str, float]], keys: list[str]) -> None:
    """Rewards on the left axis, KL to the reference on the right (held-out: markers; training batches: lines)."""
    ax_kl = ax.twinx()
    for key in keys:
        steps, values = _series(rows, key)
        held_out = key.startswith("val_")
        target, color = (ax_kl, "tab:red") if key.endswith("_kl") else (ax, "tab:blue")
        target.plot(steps, values, "o-" if held_out else "-", color=color, alpha=1.0 if held_out else 0.45,
                    label=("held-out " if held_out else "training ") + key.split("_", 1)[1], markersize=3)
    ax.set_ylabel("reward", color="tab:blue")
    ax_kl.set_ylabel("KL to reference (nats)", color="tab:red")
    ax.grid(alpha=0.3)
    handles = [h for a in (ax, ax_kl) for h in a.get_legend_handles_labels()[0]]
    ax.legend(handles=handles, fontsize=8, loc="upper left")
