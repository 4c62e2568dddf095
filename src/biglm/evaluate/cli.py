"""``biglm evaluate``: zero-shot evaluation of a checkpoint through lm-evaluation-harness.

    biglm evaluate --ckpt runs/demo --tasks biglm_tasks
    biglm evaluate --ckpt runs/demo --tasks arc_easy,piqa --scoring left-to-right --limit 200
    biglm evaluate --ckpt runs/instruct --generation genset.jsonl     # BLEU-2 / Distinct of generations

Tasks are looked up in the shipped offline task folder (``biglm_continuation``, ``biglm_next_sentence``,
``biglm_cloze``, ``biglm_perplexity``, tag ``biglm_tasks``), then in ``--include-path`` folders, then
(only if still missing, since indexing takes a while) among lm-eval's built-in tasks (hub tasks need
the network).
Causal and bidirectional-ar checkpoints are scored by the exact chain rule (``--direction``).
Writes ``OUT/results_<scoring or direction>.json`` (lm-eval's results and config) and ``OUT/results_<scoring>.md``
(a Markdown table, also printed); ``OUT`` defaults to ``CKPT/eval``.

This module holds the verb's options and its lm-eval half; the verb is wired in ``biglm.finetune.evaluate_cli``,
above both packages it drives (``--generation`` scores a fine-tuned checkpoint: ``biglm.finetune.genset``).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from biglm.errors import BiglmError
from biglm.evaluate import TASKS_DIR
from biglm.evaluate.ar_scoring import AR_DIRECTIONS
from biglm.files import atomic_write_text


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """The ``evaluate`` sub-parser with all its options (the caller sets its handler)."""
    from biglm.evaluate.scoring import METHODS

    p = subparsers.add_parser("evaluate", help="zero-shot evaluation through lm-evaluation-harness",
                              description=__doc__.split("\n\n")[0],
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ckpt", required=True, help="run folder (newest checkpoint) or checkpoint folder")
    p.add_argument("--tasks", default=None, help="comma-separated lm-eval task, group or tag names")
    p.add_argument("--generation", default=None, metavar="FILE",
                   help="instead of --tasks: generate for each record of FILE with an instruction-tuned checkpoint "
                        "and score BLEU-2 / Distinct-1/2 per 'task' group (the paper's Genset), writing predictions")
    p.add_argument("--include-path", action="append", default=[], metavar="DIR",
                   help="extra task folder (repeatable), e.g. one written by biglm.evaluate.make_tasks")
    p.add_argument("--scoring", default=None, choices=METHODS,
                   help="masked models: log-likelihood method (default greedy-order)")
    p.add_argument("--direction", default=None, choices=AR_DIRECTIONS,
                   help="causal / bidirectional-ar models: chain rule left to right (default), right to left, "
                        "or the mean of both (which also reports how far the two agree)")
    p.add_argument("--glm-blank", default="gmask", choices=("gmask", "mask"),
                   help="glm models: the blank after the context, [gMASK] (default) or [MASK] (models pretrained "
                        "on short blanks only)")
    p.add_argument("--beam", type=int, default=1, help="greedy-order: orders kept (default 1)")
    p.add_argument("--samples", type=int, default=16, help="mc-elbo: samples per request (default 16)")
    p.add_argument("--seed", type=int, default=0, help="mc-elbo sampling seed")
    p.add_argument("--limit", type=float, default=None, help="examples per task (<1: a fraction)")
    p.add_argument("--batch-size", type=int, default=32, help="requests scored together (default 32)")
    p.add_argument("--num-fewshot", type=int, default=None)
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 (default: cuda if available)")
    p.add_argument("--dtype", default=None, choices=["float32", "bfloat16", "float16"])
    p.add_argument("--out", default=None, help="output folder (default CKPT/eval)")
    return p


def task_manager(tasks: list[str], include_paths: list[str]) -> Any:
    """A TaskManager over the shipped and given task folders, adding lm-eval's own only if needed."""
    from lm_eval.tasks import TaskManager

    for d in include_paths:
        if not Path(d).is_dir():
            raise BiglmError(f"--include-path {d}: no such folder")
    paths = [str(TASKS_DIR), *include_paths]
    tm = TaskManager(include_path=paths, include_defaults=False)
    if all(t in tm.all_tasks for t in tasks):
        return tm
    tm = TaskManager(include_path=paths)
    missing = [t for t in tasks if t not in tm.all_tasks]
    if missing:
        raise BiglmError(f"unknown task '{missing[0]}': not a built-in lm-eval task nor in {', '.join(paths)}")
    return tm


def results_table(results: dict[str, Any], title: str = "") -> str:
    """A Markdown table (task, metric, value, stderr) of ``simple_evaluate``'s results."""
    lines = [f"### {title}", ""] if title else []
    lines += ["| Task | Metric | Value | ± Stderr |", "| --- | --- | ---: | ---: |"]
    for task, metrics in sorted(results.get("results", {}).items()):
        for key, value in metrics.items():
            if "," not in key or "_stderr," in key or not isinstance(value, int | float):
                continue
            metric, filt = key.split(",", 1)
            err = metrics.get(f"{metric}_stderr,{filt}")
            err_s = f"{err:.4f}" if isinstance(err, int | float) else ""
            lines.append(f"| {task} | {metric} | {value:.4f} | {err_s} |")
    return "\n".join(lines) + "\n"


def run_tasks(args: argparse.Namespace, out: Path) -> int:
    """``biglm evaluate --tasks``: score the checkpoint on lm-eval tasks and write the results into ``out``."""
    if not args.tasks:
        raise BiglmError("give --tasks NAMES (lm-eval) or --generation FILE")
    try:
        from lm_eval import simple_evaluate
    except ImportError:
        raise BiglmError("lm-eval is not installed: pip install 'biglm[eval]'") from None
    from biglm.devices import resolve_device
    from biglm.evaluate.lm_eval_model import BiGLMEvalModel

    tasks = [t.strip() for t in args.tasks.split(",") if t.strip()]
    if not tasks:
        raise BiglmError("--tasks: give at least one task name")
    if args.limit is not None and not (args.limit > 0 and (args.limit < 1 or float(args.limit).is_integer())):
        raise BiglmError(f"--limit {args.limit:g}: expected a number of examples per task (1, 2, ...) or a "
                         "fraction in (0, 1)")
    if args.device is not None:
        resolve_device(args.device, "--device")
    limit = None if args.limit is None else (args.limit if args.limit < 1 else int(args.limit))
    lm = BiGLMEvalModel(pretrained=args.ckpt, scoring=args.scoring, direction=args.direction, beam=args.beam,
                        samples=args.samples, seed=args.seed, batch_size=args.batch_size, device=args.device,
                        dtype=args.dtype, glm_blank=args.glm_blank)
    tm = task_manager(tasks, args.include_path)
    try:
        results = simple_evaluate(model=lm, tasks=tasks, task_manager=tm, limit=limit,
                                  num_fewshot=args.num_fewshot, log_samples=False)
    except ConnectionError as e:  # a hub task without network (datasets raises the built-in one)
        raise BiglmError(f"task data could not be fetched: {e} (offline? the biglm_* tasks need no network)") from None
    if results is None:
        return 0
    out.mkdir(parents=True, exist_ok=True)
    how = lm.scored_by
    name = f"results_{how}"
    keep = {k: results[k] for k in ("results", "groups", "configs", "versions", "n-shot", "config", "n-samples")
            if k in results}
    keep["biglm"] = {"ckpt": str(args.ckpt), "family": lm.model.config.family, "scoring": how, "beam": args.beam,
                     "samples": args.samples, "direction_agreement": lm.direction_agreement}
    atomic_write_text(out / f"{name}.json", json.dumps(keep, indent=2, default=str))
    table = results_table(results, f"{args.ckpt} — scoring {how}")
    for kind, stats in lm.direction_agreement.items():
        if stats:
            table += (f"\nL2R vs R2L ({kind}, {int(stats['n'])} requests): {stats['l2r_nats_per_token']:.4f} vs "
                      f"{stats['r2l_nats_per_token']:.4f} nats/token, mean |Δ| {stats['mean_abs_diff']:.4f} nats "
                      f"({stats['mean_abs_diff_per_token']:.4f} per token), r = {stats['pearson_r']:.4f}\n")
    atomic_write_text(out / f"{name}.md", table)
    print(table)
    print(f"wrote {out / name}.json and .md")
    return 0
