"""``biglm evaluate``, wired here because it drives two packages: lm-eval tasks (``biglm.evaluate.cli``, its
options and the ``--tasks`` half) and, with ``--generation``, the generation scores of a fine-tuned checkpoint
(``biglm.finetune.genset``). Fine-tuning sits above evaluation, so the verb lives at this layer and
``biglm.evaluate`` never imports ``biglm.finetune``.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from biglm.evaluate.cli import add_parser, run_tasks


def register(subparsers: Any) -> None:
    """Add ``evaluate`` to the ``biglm`` command line."""
    add_parser(subparsers).set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from biglm.outputs import RESULTS, check_output

    out = check_output(args.out or Path(args.ckpt) / "eval", RESULTS, [args.ckpt, args.generation, *args.include_path])
    if not args.generation:
        return run_tasks(args, out)
    from biglm.finetune.genset import evaluate_generation  # generation uses the fine-tuned task's decoding

    limit = int(args.limit) if args.limit else 0
    evaluate_generation(args.ckpt, args.generation, out, device=args.device or "cpu", limit=limit)
    print((out / "genset_scores.md").read_text())
    print(f"wrote {out / 'genset_predictions.jsonl'} and {out / 'genset_scores.json'}")
    return 0
