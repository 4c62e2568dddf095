"""The frontier's report: the ``best`` list, the goal check, Markdown tables and the plot."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any

PEERS = ("transformers generate()", "biglm causal (greedy)")
GOALS = {"batch": 1, "trained": 5.0, "larger": 2.0}
"""The issue's goal at batch 1: ≥ 5× transformers' generate() at the trained (demo) shape, ≥ 2× at 136M."""


def best_settings(timing: list[dict[str, Any]], task: str) -> list[dict[str, Any]]:
    """Per shape and batch, the fastest timed setting within the quality tolerance of ``task`` (``continuation``:
    exact match, generative perplexity and repetition, timed on the continuations; ``copy``: exact match, timed
    on the copy task)."""
    groups: dict[tuple[str, int], list[dict[str, Any]]] = defaultdict(list)
    for r in timing:
        if r.get("within_tolerance"):
            groups[(r["shape"], r["batch"])].append(r)
    out = []
    for (shape, batch), rows in groups.items():
        r = max(rows, key=lambda x: x["tok_s"])
        item = {"task": task, "shape": shape, "batch": batch, "setting": r["readable"], "name": r["setting"],
                "speedup_vs_generate": round(r["speedup_vs_generate"], 3), "quality_delta": r["quality_delta"],
                "tok_s": round(r["tok_s"], 1), "latency_s": round(r["latency_s"], 4), "kwargs": r["kwargs"]}
        for key in ("speedup_vs_causal", "passes_per_token", "passes_per_example"):
            if key in r:
                item[key] = round(r[key], 4)
        out.append(item)
    return out


def goal(best: list[dict[str, Any]], shapes: list[str], judged: bool) -> dict[str, Any]:
    """The issue's goal on this run (batch 1), per task; not ``judged`` (``met`` None) when the models learned too
    little for the quality tolerance to mean anything (the copy model's reference exact match below 80%)."""
    out: dict[str, Any] = {}
    for task in sorted({b["task"] for b in best}):
        out[task] = {}
        for shape in shapes:
            need = GOALS["trained"] if shape == shapes[0] else GOALS["larger"]
            hit = [b for b in best if b["task"] == task and b["shape"] == shape and b["batch"] == GOALS["batch"]]
            got = hit[0]["speedup_vs_generate"] if hit else None
            out[task][shape] = {"goal_speedup_vs_generate": need, "best": got,
                                "met": (got is not None and got >= need) if judged else None}
    return out


def _f(x: Any, spec: str) -> str:
    return "–" if x is None else format(x, spec)


def print_report(r: dict[str, Any]) -> None:
    env = r["env"]
    print(f"\nmachine: {env['machine']}, {env['cpu_count']} cores, {env['threads']} threads, torch {env['torch']}, "
          f"transformers {env['transformers']}; load average at start {env['load_average']}, at end "
          f"{env['load_average_end']}; seconds {env['seconds']}")
    print("\n| model | run | steps | val loss | trained now (s) |\n|---|---|---:|---:|---:|")
    for name in ("masked", "causal", "seq2seq"):
        m = r["models"][name]
        print(f"| {name} | {m['run']} | {m['steps']} | {_f(m.get('val_loss'), '.3f')} | "
              f"{_f(m.get('train_s'), '.0f')} |")
    trained = r["timing"][0]["shape"] if r["timing"] else "demo"
    timing = {(t["shape"], t["batch"], t["setting"]): t for t in r["timing"]}
    print(f"\nQuality against {r['reference']!r} ({r['prompts']} held-out prompts × {r['new_tokens']} tokens; copy: "
          f"{r['copy_examples']} test examples, L = {r['copy_target_tokens']}); cost at {trained}, batch 1\n")
    print("| setting | passes/token | ms | tok/s | × generate() | copy EM | Δ EM | copy passes/example | gen-ppl | "
          "Δ ppl | distinct-2 | rep-4 | within |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|")
    for q in r["quality"]:
        if "unsupported" in q:
            print(f"| {q['name']} | unsupported: {q['unsupported'][:60]} |")
            continue
        t = timing.get((trained, 1, q["name"]), {})
        c, s, d = q["continuation"], q["copy"], q["quality_delta"]
        print(f"| {q['name']} | {_f(t.get('passes_per_token'), '.3f')} | {_f(t.get('latency_s', 0) * 1000, '.0f')} | "
              f"{_f(t.get('tok_s'), '.0f')} | {_f(t.get('speedup_vs_generate'), '.2f')} | {s['exact_match']:.1f} | "
              f"{d['exact_match_points']:+.1f} | {s['passes_per_example_b1']:.1f} | {c['gen_ppl']:.1f} | "
              f"{100 * d['gen_ppl_relative']:+.1f}% | {c['distinct_2']:.3f} | {c['repetition_4']:.3f} | "
              f"{'yes' if q['within_tolerance'] else 'no'} |")
    for name, c in r["ar_quality"].items():
        t = timing.get((trained, 1, "biglm causal (greedy)"), {})
        ms = _f(t.get("latency_s", 0) * 1000, ".0f") if "greedy" in name else "–"
        print(f"| {name} | 1.000 | {ms} | | | – | | | {c['gen_ppl']:.1f} | | {c['distinct_2']:.3f} | "
              f"{c['repetition_4']:.3f} | |")
    print("\nTimings (best of interleaved repeats; larger shapes: random weights, the trained model's pass counts)\n")
    print("| shape | batch | setting | passes/token | latency s | tok/s | × generate() | × biglm causal |")
    print("|---|---:|---|---:|---:|---:|---:|---:|")
    for t in r["timing"]:
        if t["shape"] != trained or t["setting"] in PEERS or t["batch"] != 1:
            print(f"| {t['shape']} | {t['batch']} | {t['setting']} | {t['passes_per_token']:.3f} | "
                  f"{t['latency_s']:.3f} | {t['tok_s']:.0f} | {t['speedup_vs_generate']:.2f} | "
                  f"{t['speedup_vs_causal']:.2f} |")
    print("\nCopy task timings (the answer known; transformers writes exactly each batch's longest answer + EOS)\n")
    print("| shape | batch | setting | passes/example | ms per batch | answer tok/s | × generate() |")
    print("|---|---:|---|---:|---:|---:|---:|")
    for t in r.get("copy_timing", []):
        print(f"| {t['shape']} | {t['batch']} | {t['setting']} | {t['passes_per_example']:.1f} | "
              f"{1000 * t['latency_s']:.1f} | {t['tok_s']:.0f} | {t['speedup_vs_generate']:.2f} |")
    if r["limit_analysis"]:
        print_limit(r["limit_analysis"])
    print("\nBest within tolerance (EM ≥ reference − 1 point, gen-ppl ≤ reference + 5%, repetition ≤ reference "
          "+ 0.05)\n")
    print("| task | shape | batch | setting | × generate() | Δ EM | Δ gen-ppl |")
    print("|---|---|---:|---|---:|---:|---:|")
    for b in r["best"]:
        d = b["quality_delta"]
        ppl = f"{100 * d['gen_ppl_relative']:+.1f}%" if "gen_ppl_relative" in d else "–"
        print(f"| {b['task']} | {b['shape']} | {b['batch']} | {b['setting']} | {b['speedup_vs_generate']:.2f} | "
              f"{d['exact_match_points']:+.1f} | {ppl} |")
    for task, shapes in r["goal"].items():
        for shape, g in shapes.items():
            verdict = "not judged: the models learned too little" if g["met"] is None else \
                "met" if g["met"] else "NOT met"
            print(f"goal ({task}) at {shape}, batch 1: ≥ {g['goal_speedup_vs_generate']}× generate(): best "
                  f"{_f(g['best'], '.2f')}× ({verdict})")


def print_limit(lim: dict[str, Any]) -> None:
    ar = lim["ar_step"]
    print(f"\nLimit analysis at {lim['shape']} (batch {lim['rows']}, prompt {lim['prompt_tokens']}, "
          f"{lim['new_tokens']} new tokens): one autoregressive step = {ar['flops'] / 1e9:.2f} GFLOP, "
          f"{ar['bytes'] / 1e6:.0f} MB read; measured "
          + ", ".join(f"{k} {1000 * v:.1f} ms" for k, v in ar["seconds"].items()) + "\n")
    peers = list(ar["seconds"])
    print("| tokens/pass | GFLOP | MB read | FLOP/byte | ms | " + " | ".join(f"× {p} step" for p in peers) + " | "
          + " | ".join(f"max passes/{lim['new_tokens']} tokens for 2× {p}" for p in peers) + " |")
    print("|---:|---:|---:|---:|---:|" + "---:|" * (2 * len(peers)))
    for p in lim["passes"]:
        print(f"| {p['tokens_per_pass']} | {p['flops'] / 1e9:.2f} | {p['bytes'] / 1e6:.0f} | "
              f"{p['flops_per_byte']:.1f} | {1000 * p['seconds']:.1f} | "
              + " | ".join(f"{p[f'x_{k}_step']:.2f}" for k in peers) + " | "
              + " | ".join(f"{p[f'max_passes_for_2x_{k}']:.1f}" for k in peers) + " |")


def _short(name: str) -> str:
    """A point's label on the plot: T for Mask-Predict, the block size (and T) for blocks, the value for a rule."""
    if name.startswith("blocks"):
        size, _, rule = name.split(" · ")
        return f"{size.split()[1]}" + (f" {rule.split()[-1]}" if "T=" in rule else "")
    return name.split()[-1]


def plot(r: dict[str, Any], path: Path) -> None:
    """Quality against batch-1 latency at the trained shape, one series per strategy × commit rule × cache mode
    (points labelled with T, τ or the block size): generative perplexity of the continuations against their
    latency, with the autoregressive peers; copy exact match against the copy model's latency per example.
    Lines join a series' points in order of latency."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    trained = r["timing"][0]["shape"]
    lat = {t["setting"]: 1000 * t["latency_s"] for t in r["timing"] if t["shape"] == trained and t["batch"] == 1}
    series: dict[str, list[tuple[float, float, float, float, str]]] = defaultdict(list)
    for q in r["quality"]:
        if "unsupported" not in q and q["name"] in lat:
            series[q["group"]].append((lat[q["name"]], q["continuation"]["gen_ppl"], q["copy"]["ms_per_example_b1"],
                                       q["copy"]["exact_match"], _short(q["name"])))
    ref = next(q for q in r["quality"] if q["name"] == r["reference"])
    fig, axes = plt.subplots(1, 2, figsize=(15, 6.5))
    markers = {"prefix": "o", "blocks": "s", "dual": "^"}
    for group, pts in sorted(series.items()):
        cache = next((c for c in markers if f"· {c} ·" in group), "prefix")
        for ax, (x, y) in zip(axes, ((0, 1), (2, 3))):
            pts.sort(key=lambda p: p[x])
            line, = ax.plot([p[x] for p in pts], [p[y] for p in pts], marker=markers[cache], linestyle="-",
                            alpha=0.8, label=group, markersize=5)
            if ax is axes[0]:  # (the copy panel's points all sit at one exact match here: no room for labels)
                for p in pts:
                    ax.annotate(p[4], (p[x], p[y]), fontsize=6, color=line.get_color(), xytext=(3, 3),
                                textcoords="offset points")
    ppl, em = ref["continuation"]["gen_ppl"], ref["copy"]["exact_match"]
    axes[0].axhspan(ppl / 3, ppl * (1 + r["tolerance"]["gen_ppl_relative"]), color="grey", alpha=0.2,
                    label="within tolerance: ≤ reference + 5%")
    axes[1].axhspan(em - r["tolerance"]["exact_match_points"], 102, color="grey", alpha=0.2,
                    label="within tolerance: ≥ reference − 1")
    for peer, style in zip(PEERS, ("--", ":")):
        if peer in lat:
            axes[0].axvline(lat[peer], color="black", linestyle=style, label=f"{peer} latency")
    copy_peer = [t for t in r.get("copy_timing", []) if t["shape"] == trained and t["batch"] == 1
                 and t["setting"] == "transformers generate()"]
    if copy_peer:  # its latency per example, writing exactly the answer and EOS
        axes[1].axvline(1000 * copy_peer[0]["latency_s"], color="black", linestyle="--",
                        label="transformers generate() latency")
    causal = lat.get("biglm causal (greedy)")
    if causal:
        for (name, c), color in zip(r["ar_quality"].items(), ("black", "dimgrey")):
            axes[0].scatter([causal], [c["gen_ppl"]], marker="*", s=160, zorder=5, color=color,
                            label=f"{name} (its own judge)")
    for ax in axes:
        ax.set_xscale("log")
        ax.grid(alpha=0.3)
    axes[0].set_xlabel(f"latency, batch 1, {r['new_tokens']} new tokens, {trained} shape (ms, log)")
    axes[0].set_ylabel("generative perplexity under the causal model (log)")
    axes[0].set_yscale("log")
    axes[0].set_title("open continuation of held-out Wikipedia prompts (masked demo model)")
    handles, labels = axes[0].get_legend_handles_labels()
    keep = [i for i, label in enumerate(labels) if label not in series]  # the series are in the other legend
    axes[0].legend([handles[i] for i in keep], [labels[i] for i in keep], fontsize=7, loc="lower left")
    axes[1].set_xlabel(f"latency per example, batch 1, L = {r['copy_target_tokens']}, EOS early exit (ms, log)")
    axes[1].set_ylabel(f"copy exact match, % ({r['copy_examples']} held-out examples)")
    axes[1].set_ylim(0, 102)
    axes[1].set_title("seq2seq copy of 8-16 real words (EOS padding)")
    axes[1].legend(fontsize=7, loc="lower left", ncol=2)
    fig.suptitle("Parallel decoding: quality against latency, models trained by the project (demo size)")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
