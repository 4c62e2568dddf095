"""Max |Δlogits| of every expansion case of ``biglm expand`` on trained checkpoints and real text.

    python scripts/expand_report.py runs/compare/biglm runs/compare/causal runs/compare/bidirectional-ar \
        --check-text data/demo/wiki.jsonl

For each checkpoint (any model family) and each case below, expands the model in memory and measures the
largest change of a logit (and of a next-token probability) on ``--rows`` rows of ``--length`` tokens of
the text, under the family's own attention layout. Prints a Markdown table and writes JSON next to the
first checkpoint's run folder (``expand_report.json``).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

CASES = {  # label -> ExpandSpec fields (sizes as multiples of the source's)
    "width 2× (balanced)": {"hidden": 2.0},
    "width 2× + noise 0.01": {"hidden": 2.0, "noise": 0.01},
    "width 2×, GQA kept, SwiGLU 3×": {"hidden": 2.0, "inter": 3.0},
    "width 1.5× (RMS statistics change)": {"hidden": 1.5},
    "width 2×, random mapping (paper)": {"hidden": 2.0, "mapping": "random"},
    "depth 2×, zero-init new layers": {"layers": 2.0, "depth_init": "zero"},
    "depth 2×, stacked copies (Algorithm 1)": {"layers": 2.0},
    "depth 2×, interleaved copies": {"layers": 2.0, "depth_order": "interleave"},
    "width 2× + depth 2× zero-init": {"hidden": 2.0, "layers": 2.0, "depth_init": "zero"},
}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("ckpts", nargs="+")
    ap.add_argument("--check-text", default=None)
    ap.add_argument("--rows", type=int, default=8)
    ap.add_argument("--length", type=int, default=128)
    args = ap.parse_args()
    import torch

    from biglm.checkpoint import load_model
    from biglm.grow import ExpandSpec, expand_model, max_logit_change
    from biglm.grow.api import check_rows

    torch.set_num_threads(1)
    results: dict[str, dict[str, dict]] = {}
    names = []
    for path in args.ckpts:
        loaded = load_model(path)
        c = loaded.config
        name = f"{Path(path).name} ({c.family})"
        names.append(name)
        rows = check_rows(loaded.tokenizer, c.vocab_size, args.check_text, args.rows, args.length)
        for label, case in CASES.items():
            spec = ExpandSpec(hidden_size=round(case.get("hidden", 1.0) * c.hidden_size / c.head_dim) * c.head_dim,
                              num_layers=round(case.get("layers", 1.0) * c.num_layers),
                              intermediate_size=round(case.get("inter", case.get("hidden", 1.0)) * c.intermediate_size),
                              mapping=case.get("mapping", "balanced"), depth_order=case.get("depth_order", "stack"),
                              depth_init=case.get("depth_init", "copy"), noise=case.get("noise", 0.0))
            grown, plan = expand_model(loaded.model, spec)
            change = max_logit_change(loaded.model, grown, rows)
            results.setdefault(label, {})[name] = {**change, "exact_claimed": plan.exact,
                                                   "target": [plan.target.num_layers, plan.target.hidden_size]}
    print("| case | exact? | " + " | ".join(names) + " |")
    print("|---|---|" + "---:|" * len(names))
    for label, per in results.items():
        exact = "exact" if next(iter(per.values()))["exact_claimed"] else "reported"
        cells = [f"{per[n]['max_abs_dlogits']:.2g} (Δp {per[n]['max_abs_dprob']:.2g})" for n in names]
        print(f"| {label} | {exact} | " + " | ".join(cells) + " |")
    out = Path(args.ckpts[0]).parent / "expand_report.json"
    out.write_text(json.dumps({"check_text": args.check_text, "rows": args.rows, "length": args.length,
                               "results": results}, indent=1))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
