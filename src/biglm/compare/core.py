"""``biglm compare``: several recipes (run configs) trained on the same data with the same budget, scored on
the same held-out zero-shot tasks, in one table (Markdown + JSON) and one plot.

A recipe is just a run config; its name is the file's stem. The recipes must agree on the data (``data``
section, ``train.global_batch_size``); their objectives (and so their model families) differ, and so may
their steps (e.g. a row trained for fewer steps to match another's training FLOPs: the table shows every
row's steps, tokens and training FLOPs). Steps:

1. **Train** each recipe into ``OUT/<name>`` (``biglm pretrain`` in a subprocess; ``jobs`` at a time,
   each on ``threads`` CPU threads; a finished run is reused, an unfinished one resumed). A run is reused or
   resumed only when its saved ``config.yaml`` is the recipe's resolved config (bookkeeping fields such
   as ``train.progress`` aside); otherwise compare refuses, naming the differing fields, before training
   anything: nothing is deleted, and a changed recipe never reports the old run's numbers.
2. **Tasks**: ``biglm.evaluate.make_tasks`` builds ``compare_continuation``, ``compare_next_sentence``
   and ``compare_perplexity`` from the documents the runs held out (their ``data.val_fraction`` /
   ``val_seed``) of the ``tasks_from`` files.
3. **Score** every recipe through lm-evaluation-harness with its family's scorers (``Family.eval_settings``:
   masked models with a masked scoring method, causal ones by the chain rule left to right,
   bidirectional-ar ones left to right, right to left and by the mean of both, which also measures how
   far the two directions agree). Held-out likelihood: ``compare_perplexity``'s bits per byte; for the
   autoregressive rows it is the exact document likelihood, for masked rows the left-to-right masked
   chain rule (a proper likelihood, but not what their objective trains). Masked rows also get the
   masked validation loss on a fixed β grid (``biglm.evaluate.validation_loss``), comparable among them.
4. **Report**: ``OUT/compare.md``, ``OUT/compare.json`` and ``OUT/compare.png``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from biglm.checkpoint import load_model
from biglm.compare.report import write_report
from biglm.configurable import changed_fields, describe_changes, load_yaml
from biglm.data import build_rows, load_tokenizer, prepare_data
from biglm.data.held_out import held_out_documents
from biglm.errors import BiglmError
from biglm.evaluate import validation_loss
from biglm.evaluate.cli import task_manager
from biglm.evaluate.lm_eval_model import BiGLMEvalModel
from biglm.evaluate.make_tasks import write_tasks
from biglm.families import get_family
from biglm.files import atomic_write_text
from biglm.outputs import COMPARE, check_output
from biglm.train.config import BOOKKEEPING_FIELDS, load_run_config
from biglm.train.growth import config_at
from biglm.train.metrics import flops_per_token
from biglm.train.setup import fit_to_end, setup

TASKS = ("compare_continuation", "compare_next_sentence", "compare_perplexity")


@dataclass
class Recipe:
    name: str
    config_path: Path
    overrides: list[str]
    cfg: Any = None

    def run_dir(self, out: Path) -> Path:
        return out / self.name


@dataclass
class CompareOptions:
    out: Path
    overrides: list[str] = field(default_factory=list)
    tasks_from: list[str] = field(default_factory=list)
    max_items: int = 400
    scoring: str = "greedy-order"
    jobs: int = 1
    """Recipes trained at once, each in a subprocess; 0: one after the other in this process."""
    threads: int = 1
    batch_size: int = 32
    limit: int | None = None
    train_only: bool = False


def load_recipes(paths: list[str], overrides: list[str]) -> list[Recipe]:
    """Resolve each config (with the shared overrides) and check that they share data and budget."""

    if len(paths) < 1:
        raise BiglmError("compare: give at least one recipe config")
    recipes = []
    for p in paths:
        path = Path(p)
        if not path.is_file():
            raise BiglmError(f"compare: {path}: no such config file")
        recipes.append(Recipe(path.stem, path, list(overrides), load_run_config(path, overrides)))
    names = [r.name for r in recipes]
    if len(set(names)) != len(names):
        raise BiglmError(f"compare: recipe names (config file stems) must differ: {names}")
    first = recipes[0].cfg
    for r in recipes[1:]:
        for what, a, b in (("data", first.data.to_dict(), r.cfg.data.to_dict()),
                           ("train.global_batch_size", first.train.global_batch_size, r.cfg.train.global_batch_size)):
            if a != b:
                raise BiglmError(f"compare: {r.name} differs from {recipes[0].name} in {what}; recipes must share "
                                 "the data and the batch")
    return recipes


def _finished(run_dir: Path, steps: int) -> bool:
    return (run_dir / "checkpoints" / f"step_{steps:08d}" / "meta.json").is_file()


def check_same_recipe(recipe: Recipe, run_dir: Path) -> None:
    """Refuse (one line naming the fields) a run folder whose saved config is not the recipe's: reusing or
    resuming it would report, or continue, another recipe's run."""
    import yaml


    path = run_dir / "config.yaml"
    if not path.is_file():
        if (run_dir / "checkpoints").is_dir():
            raise BiglmError(f"compare: {run_dir} has checkpoints but no config.yaml; cannot tell which recipe it "
                             f"ran (give another --out, or remove that folder to retrain {recipe.name})")
        return
    saved = load_yaml(path)
    ignore = [*BOOKKEEPING_FIELDS, *(["model.vocab_size"] if recipe.cfg.vocab_size_auto else [])]
    resolved = yaml.safe_load(yaml.safe_dump(recipe.cfg.to_dict(), sort_keys=False))  # as config.yaml holds it
    changes = changed_fields(saved, resolved, ignore)
    if changes:
        raise BiglmError(f"compare: {run_dir} was trained with another config than {recipe.config_path} "
                         f"({describe_changes(changes)}); give another --out, or remove that folder to retrain "
                         f"{recipe.name}")


def train_all(recipes: list[Recipe], opts: CompareOptions, log: Callable[[str], None] = print) -> None:
    """Train the recipes not yet finished, ``opts.jobs`` at a time (subprocesses, ``opts.threads`` each;
    ``jobs=0``: one after the other in this process). Every existing run folder is checked against its
    recipe first (``check_same_recipe``)."""
    for r in recipes:
        check_same_recipe(r, r.run_dir(opts.out))
    todo = [r for r in recipes if not _finished(r.run_dir(opts.out), r.cfg.train.steps)]
    for r in recipes:
        if r not in todo:
            log(f"compare: {r.name}: finished run found in {r.run_dir(opts.out)}")
    if opts.jobs == 0:

        for r in todo:
            run_dir = r.run_dir(opts.out)
            log(f"compare: training {r.name} -> {run_dir}")
            resume = (run_dir / "checkpoints").is_dir()
            fit_to_end(lambda r=r, run_dir=run_dir, resume=resume: setup(r.cfg, run_dir, resume=resume),
                       run_dir=run_dir, inputs=r.cfg.inputs())
        return
    env = {**os.environ, "OMP_NUM_THREADS": str(opts.threads), "MKL_NUM_THREADS": str(opts.threads)}
    running: list[tuple[Recipe, subprocess.Popen, float]] = []
    failed = []
    while todo or running:
        while todo and len(running) < max(1, opts.jobs):
            r = todo.pop(0)
            run_dir = r.run_dir(opts.out)
            resume = ["--resume"] if (run_dir / "checkpoints").is_dir() else []
            run_dir.mkdir(parents=True, exist_ok=True)
            cmd = [sys.executable, "-m", "biglm.cli", "pretrain", "--config", str(r.config_path), "--out",
                   str(run_dir), *resume, *r.overrides, "--train.progress", "false"]
            logf = open(run_dir / "train.log", "a")  # noqa: SIM115 - closed when the process ends
            running.append((r, subprocess.Popen(cmd, stdout=logf, stderr=subprocess.STDOUT, env=env), time.time()))
            log(f"compare: training {r.name} ({' '.join(resume) or 'new run'}) -> {run_dir}/train.log")
        time.sleep(5)
        for item in list(running):
            r, proc, start = item
            if proc.poll() is None:
                continue
            running.remove(item)
            minutes = (time.time() - start) / 60
            if proc.returncode != 0:
                failed.append(r.name)
                log(f"compare: {r.name} failed (exit {proc.returncode}); see {r.run_dir(opts.out)}/train.log")
            else:
                log(f"compare: {r.name} trained in {minutes:.1f} min")
    if failed:
        raise BiglmError(f"compare: training failed for {', '.join(failed)}")


def score_settings(recipes: list[Recipe], opts: CompareOptions) -> dict[str, Any]:
    """What the tasks and the scores depend on besides the run: tasks and scores made under other settings
    are made again, never reused."""
    data = recipes[0].cfg.data
    return {"tasks_from": list(opts.tasks_from or [s.path for s in data.sources]), "max_items": opts.max_items,
            "val_fraction": data.val_fraction, "val_seed": data.val_seed, "limit": opts.limit}


def build_tasks(recipes: list[Recipe], opts: CompareOptions) -> Path:
    """The held-out tasks (see the module docstring), written into ``OUT/tasks`` (again when the settings
    they were written with, ``tasks/settings.json``, differ)."""

    folder = opts.out / "tasks"
    settings = {k: v for k, v in score_settings(recipes, opts).items() if k != "limit"}
    stamp = folder / "settings.json"
    if all((folder / f"{t}.yaml").is_file() for t in TASKS) and stamp.is_file() and \
            json.loads(stamp.read_text()) == settings:
        return folder
    sources, frac, seed = settings["tasks_from"], settings["val_fraction"], settings["val_seed"]
    docs = held_out_documents(sources, frac, seed)
    write_tasks(folder, docs, prefix="compare", max_items=opts.max_items,
                source=f"{', '.join(sources)}; held out: val_mask(index, seed={seed}) < {frac}")
    stamp.write_text(json.dumps(settings))
    return folder


def masked_validation(recipe: Recipe, model: Any, mask_token_id: int, max_batches: int = 16) -> float:
    """The β-grid masked validation loss of a masked model on the run's held-out rows."""

    data = recipe.cfg.data
    prepared = prepare_data(data, load_tokenizer(data.tokenizer), progress=False)
    rows = build_rows(prepared, "val", batch_size=8)
    batches = [b for _, b in zip(range(max_batches), rows.batches(8))]
    return validation_loss(model, batches, mask_token_id).loss


def score_recipe(recipe: Recipe, opts: CompareOptions, tasks: Path, log: Callable[[str], None] = print) -> list[dict]:
    """Every scorer of the recipe's family on the tasks: one result row each (cached in the run folder)."""
    import torch
    from lm_eval import simple_evaluate


    run_dir = recipe.run_dir(opts.out)
    loaded = load_model(run_dir)
    family = get_family(loaded.config)
    rows = []
    torch.set_num_threads(max(1, opts.threads * max(1, opts.jobs)))
    for label, kwargs in family.eval_settings(opts.scoring):
        cache = run_dir / f"compare_{label}.json"
        settings = score_settings([recipe], opts)
        if cache.is_file() and json.loads(cache.read_text()).get("settings") == settings:
            row = json.loads(cache.read_text())
            row["train"] = _train_summary(run_dir, recipe.cfg)  # cheap: always from the run as it is now
            rows.append(row)
            continue
        start = time.time()
        lm = BiGLMEvalModel(model=loaded.model, tokenizer=loaded.tokenizer, batch_size=opts.batch_size, **kwargs)
        res = simple_evaluate(model=lm, tasks=list(TASKS), task_manager=task_manager(list(TASKS), [str(tasks)]),
                              limit=opts.limit, log_samples=False)
        row = {"recipe": recipe.name, "family": family.name, "scoring": label, "objective": recipe.cfg.objective.name,
               "params": loaded.model.num_parameters(), "results": res["results"],
               "agreement": getattr(lm, "direction_agreement", {}), "eval_seconds": round(time.time() - start, 1),
               "settings": settings}
        if family.scoring == "masked":  # the β-grid masked loss, comparable among masked rows
            row["masked_val_loss"] = masked_validation(recipe, loaded.model, loaded.tokenizer.mask_token_id)
        row["train"] = _train_summary(run_dir, recipe.cfg)
        atomic_write_text(cache, json.dumps(row, indent=1, default=float))
        log(f"compare: scored {recipe.name} ({label}) in {row['eval_seconds']:.0f} s")
        rows.append(row)
    return rows


def _train_summary(run_dir: Path, cfg: Any) -> dict[str, float]:
    """Steps, tokens, training FLOPs (``flops_per_token`` of the model at each step, with the run's measured
    fraction of positions with logits), last losses and the median training speed of a run."""

    lines = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines() if x.strip()]
    last_val = [r["val_loss"] for r in lines if "val_loss" in r]
    speed = [r["tokens_per_s"] for r in lines if r.get("tokens_per_s")]
    fractions = [r["masked_fraction"] for r in lines if "masked_fraction" in r] or [1.0]
    frac = sum(fractions) / len(fractions)
    steps = int(lines[-1]["step"])
    tokens_per_step = cfg.train.global_batch_size * cfg.data.seq_len
    flops = sum(tokens_per_step * flops_per_token(config_at(cfg, k).model, cfg.data.seq_len, frac)
                for k in range(steps))
    return {"steps": steps, "tokens": lines[-1].get("tokens_seen", 0.0), "loss": lines[-1]["loss"],
            "val_loss": last_val[-1] if last_val else float("nan"), "target_fraction": frac, "flops": flops,
            "median_tokens_per_s": sorted(speed)[len(speed) // 2] if speed else float("nan")}


def compare(paths: list[str], opts: CompareOptions, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Train, score and report the recipes at ``paths`` (see the module docstring)."""

    recipes = load_recipes(paths, opts.overrides)
    check_output(opts.out, COMPARE, [*paths, *opts.tasks_from, *(i for r in recipes for i in r.cfg.inputs())])
    opts.out.mkdir(parents=True, exist_ok=True)
    train_all(recipes, opts, log)
    if opts.train_only:
        return {}
    tasks = build_tasks(recipes, opts)
    rows = [row for r in recipes for row in score_recipe(r, opts, tasks, log)]
    return write_report(rows, recipes, opts.out)
