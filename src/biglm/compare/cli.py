"""``biglm compare CONFIG... --out DIR``: train recipes on the same data and budget, score them on the same
held-out tasks, write a table and a plot.

    biglm compare configs/compare/*.yaml --out runs/compare --jobs 2
    biglm compare configs/compare/biglm.yaml configs/compare/causal.yaml --out runs/c --train.steps 300
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any


def register(subparsers: Any) -> None:
    from biglm.evaluate.scoring import METHODS

    p = subparsers.add_parser("compare", help="train and score several recipes side by side",
                              description=__doc__.split("\n\n")[0],
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("configs", nargs="+", help="run configs, one per recipe (the file stem names the row)")
    p.add_argument("--out", type=Path, required=True,
                   help="folder for the runs, tasks, table and plot; a run already in OUT/<recipe> is reused "
                        "(finished) or resumed only if its config.yaml is the recipe's, else compare stops "
                        "naming the differing fields (use another --out, or remove that run to retrain)")
    p.add_argument("--tasks-from", action="append", default=[], metavar="FILE",
                   help="text to build the held-out tasks from (default: the configs' data sources); the runs' "
                        "held-out documents of it are used")
    p.add_argument("--max-items", type=int, default=400, help="items per multiple-choice task (default 400)")
    p.add_argument("--scoring", default="greedy-order", choices=METHODS, help="scoring method of masked recipes")
    p.add_argument("--jobs", type=int, default=1,
                   help="recipes trained at the same time, each in a subprocess (default 1; 0: in this process)")
    p.add_argument("--threads", type=int, default=0,
                   help="CPU threads per training job (default: the cores shared out among --jobs)")
    p.add_argument("--batch-size", type=int, default=32, help="requests scored together")
    p.add_argument("--limit", type=int, default=None, help="score only this many items per task (quick look)")
    p.add_argument("--train-only", action="store_true", help="train the recipes, do not score them")
    p.set_defaults(func=run, accepts_overrides=True)


def run(args: argparse.Namespace) -> int:
    import os

    from biglm.compare import CompareOptions, compare

    threads = args.threads or max(1, (os.cpu_count() or 1) // max(1, args.jobs))
    opts = CompareOptions(out=args.out, overrides=list(getattr(args, "overrides", [])), tasks_from=args.tasks_from,
                          max_items=args.max_items, scoring=args.scoring, jobs=args.jobs, threads=threads,
                          batch_size=args.batch_size, limit=args.limit, train_only=args.train_only)
    compare(args.configs, opts)
    if not args.train_only:
        print(f"wrote {args.out / 'compare.md'}, compare.json and compare.png")
    return 0
