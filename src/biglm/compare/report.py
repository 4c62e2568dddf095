"""The comparison's table (Markdown + JSON) and plot."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from biglm.files import atomic_file, atomic_write_text

COLUMNS = [  # (header, task, metric)
    ("continuation acc", "compare_continuation", "acc"),
    ("continuation acc_mutual_info", "compare_continuation", "acc_mutual_info"),
    ("next-sentence acc", "compare_next_sentence", "acc"),
    ("next-sentence acc_mutual_info", "compare_next_sentence", "acc_mutual_info"),
]


def metric(row: dict[str, Any], task: str, name: str) -> tuple[float, float | None]:
    """(value, standard error) of ``task``'s ``name`` in a result row (NaN when absent)."""
    res = row["results"].get(task, {})
    value = res.get(f"{name},none", float("nan"))
    err = res.get(f"{name}_stderr,none")
    return float(value), (float(err) if isinstance(err, int | float) else None)


def _cell(value: float, err: float | None) -> str:
    if not math.isfinite(value):
        return "–"
    return f"{value:.3f} ± {err:.3f}" if err is not None else f"{value:.3f}"


def markdown(rows: list[dict[str, Any]]) -> str:
    head = ["recipe", "family", "steps", "train TFLOP", "scored by", *[c[0] for c in COLUMNS],
            "held-out bits/byte", "masked val loss (β grid)"]
    lines = ["| " + " | ".join(head) + " |", "|---|---|---:|---:|---|" + "---:|" * (len(head) - 5)]
    for r in rows:
        flops = r["train"].get("flops", float("nan"))
        cells = [r["recipe"], r["family"], str(r["train"]["steps"]), f"{flops / 1e12:.1f}", r["scoring"]]
        cells += [_cell(*metric(r, task, name)) for _, task, name in COLUMNS]
        cells.append(_cell(metric(r, "compare_perplexity", "bits_per_byte")[0], None))
        cells.append(_cell(r.get("masked_val_loss", float("nan")), None))
        lines.append("| " + " | ".join(cells) + " |")
    notes = []
    for r in rows:
        for kind, a in (r.get("agreement") or {}).items():
            if a:
                notes.append(f"- {r['recipe']}, L2R vs R2L on `{kind}` ({int(a['n'])} requests): "
                             f"{a['l2r_nats_per_token']:.3f} vs {a['r2l_nats_per_token']:.3f} nats/token, "
                             f"mean |Δ| {a['mean_abs_diff']:.3f} nats ({a['mean_abs_diff_per_token']:.3f} per token), "
                             f"Pearson r {a['pearson_r']:.4f}")
    return "\n".join(lines) + ("\n\n" + "\n".join(notes) if notes else "") + "\n"


def plot(rows: list[dict[str, Any]], recipes: list[Any], out: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(13, 4.8))
    for r in recipes:
        metrics = out / r.name / "metrics.jsonl"
        pts = [json.loads(x) for x in metrics.read_text().splitlines() if x.strip()] if metrics.is_file() else []
        val = [(p["step"], p["val_loss"]) for p in pts if "val_loss" in p]
        if val:
            ax1.plot(*zip(*val), marker="o", ms=3, label=f"{r.name} ({r.cfg.objective.name})")
    ax1.set_xlabel("step")
    ax1.set_ylabel("validation loss (each recipe's own objective)")
    ax1.set_title("training: validation loss per objective (not comparable across families)", fontsize=9)
    ax1.legend(fontsize=8)
    labels = [f"{r['recipe']}\n{r['scoring']}" for r in rows]
    width = 0.38
    for k, (_, task, name) in enumerate(COLUMNS[1::2]):
        values = [metric(r, task, name) for r in rows]
        xs = [i + (k - 0.5) * width for i in range(len(rows))]
        ax2.bar(xs, [v for v, _ in values], width, yerr=[e or 0 for _, e in values], capsize=3,
                label=task.removeprefix("compare_"))
    ax2.axhline(0.25, color="grey", ls="--", lw=1, label="chance")
    ax2.set_xticks(range(len(rows)), labels, fontsize=7, rotation=30, ha="right")
    ax2.set_ylabel("acc_mutual_info (± 1 s.e.)")
    ax2.set_title("held-out zero-shot tasks (4-way)", fontsize=9)
    ax2.legend(fontsize=8)
    fig.tight_layout()
    path = out / "compare.png"
    with atomic_file(path, "wb") as f:
        fig.savefig(f, dpi=120, format="png")
    plt.close(fig)
    return path


def write_report(rows: list[dict[str, Any]], recipes: list[Any], out: Path) -> dict[str, Any]:
    """``compare.md``, ``compare.json`` and ``compare.png`` in ``out``; returns the JSON content."""
    table = markdown(rows)
    atomic_write_text(out / "compare.md", table)
    data = {"rows": rows, "recipes": {r.name: str(r.config_path) for r in recipes}}
    atomic_write_text(out / "compare.json", json.dumps(data, indent=1, default=float))
    plot(rows, recipes, out)
    print(table)
    return data
