"""Does growing a trained model pay? Trains the runs of configs/growth/ (from scratch, grown from half depth by
progressive stacking, grown from half width by function-preserving initialisation; equal data) and compares
their validation loss against the training FLOPs spent, the small model's included.

    python scripts/growth_payoff.py --out runs/growth --jobs 2      # ~1-2 CPU hours; finished runs are reused

FLOPs of a step: tokens × ``biglm.train.metrics.flops_per_token`` of the model trained at that step
(``biglm.train.growth.config_at``), with the run's measured fraction of positions that carry logits. The
saving of a grown run is FLOPs(scratch run, whole) / FLOPs(grown run, first reaching the scratch run's
final validation loss), interpolated linearly between evaluations. Writes RUN_DIR/growth_payoff.json and
.png and prints a table.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "growth"
RUNS = ("scratch", "stack-depth", "fpi-width")


def curve(run_dir: Path, cfg) -> dict:
    """Validation loss against cumulative training FLOPs (and steps) of one run."""
    from biglm.train.growth import config_at
    from biglm.train.metrics import flops_per_token

    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines() if x.strip()]
    fractions = [r["masked_fraction"] for r in rows if "masked_fraction" in r]
    frac = sum(fractions) / len(fractions)
    tokens = cfg.train.global_batch_size * cfg.data.seq_len
    per_step = [tokens * flops_per_token(config_at(cfg, k).model, cfg.data.seq_len, frac)
                for k in range(cfg.train.steps)]
    cum = [0.0]
    for f in per_step:
        cum.append(cum[-1] + f)
    val = [(r["step"], r["val_loss"]) for r in rows if "val_loss" in r]
    return {"steps": [s for s, _ in val], "flops": [cum[s] for s, _ in val], "val_loss": [v for _, v in val],
            "total_flops": cum[-1], "target_fraction": frac,
            "params_start": config_at(cfg, 0).model.num_parameters(),
            "params_end": config_at(cfg, cfg.train.steps).model.num_parameters()}


def flops_to_reach(c: dict, target: float) -> float | None:
    """FLOPs at which the curve first reaches ``target`` (linear interpolation), or None."""
    pts = list(zip(c["flops"], c["val_loss"]))
    for (f0, v0), (f1, v1) in zip([(0.0, float("inf")), *pts], pts):
        if v1 <= target:
            return f1 if v0 == float("inf") else f0 + (f1 - f0) * (v0 - target) / (v0 - v1)
    return None


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("runs/growth"))
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1)
    args, overrides = ap.parse_known_args()  # the rest: --section.field value overrides for every run
    from biglm.compare.core import CompareOptions, load_recipes, train_all

    recipes = load_recipes([str(CONFIGS / f"{r}.yaml") for r in RUNS], overrides)
    train_all(recipes, CompareOptions(out=args.out, jobs=args.jobs, threads=args.threads))
    curves = {r.name: curve(args.out / r.name, r.cfg) for r in recipes}
    scratch = curves["scratch"]
    target = scratch["val_loss"][-1]
    summary = {}
    for name, c in curves.items():
        reach = flops_to_reach(c, target)
        summary[name] = {"final_val_loss": c["val_loss"][-1], "total_flops": c["total_flops"],
                         "flops_to_reach_scratch_final": reach,
                         "saving_ratio": scratch["total_flops"] / reach if reach else None,
                         "params_start": c["params_start"], "params_end": c["params_end"]}
    report = {"target_val_loss": target, "summary": summary, "curves": curves}
    (args.out / "growth_payoff.json").write_text(json.dumps(report, indent=1))
    plot(curves, target, args.out / "growth_payoff.png")
    print(f"scratch final validation loss {target:.4f} (the target)")
    print(f"{'run':<13}{'params':>16}{'final val':>11}{'total PFLOP':>13}{'PFLOP to target':>17}{'saving':>8}")
    for name, s in summary.items():
        f = s["flops_to_reach_scratch_final"]
        reach = f"{f / 1e15:.3f}" if f else "not reached"
        ratio = f"{s['saving_ratio']:.2f}×" if s["saving_ratio"] else "–"
        params = f"{s['params_start'] / 1e6:.2f}→{s['params_end'] / 1e6:.2f}M"
        print(f"{name:<13}{params:>16}{s['final_val_loss']:>11.4f}{s['total_flops'] / 1e15:>13.3f}{reach:>17}"
              f"{ratio:>8}")
    print(f"wrote {args.out / 'growth_payoff.json'} and .png")
    return 0


def plot(curves: dict, target: float, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name, c in curves.items():
        ax.plot([f / 1e15 for f in c["flops"]], c["val_loss"], marker="o", ms=3, label=name)
    ax.axhline(target, color="grey", ls="--", lw=1, label="scratch final")
    ax.set_xlabel("training FLOPs (PFLOP, small model's included)")
    ax.set_ylabel("validation loss (bidirectional-ar, nats/token)")
    ax.set_title("growth payoff: 8×128 model, equal data (1,500 steps × 2,048 tokens)", fontsize=9)
    ax.legend(fontsize=8)
    lo = min(min(c["val_loss"]) for c in curves.values())
    ax.set_ylim(lo - 0.05, lo + 1.5)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())
