"""Predicting and scoring with a fine-tuned checkpoint (``biglm predict``, ``biglm finetune --eval-only``).

A fine-tuned checkpoint holds its run config (``config.yaml``: task, templates, verbalizer, field
mapping, decoding settings), so prediction needs only the checkpoint and the input. A fine-tuning run
folder resolves to its ``best/`` checkpoint when it has one (the best epoch), else its newest.
"""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from biglm.checkpoint import CheckpointError, LoadedModel, load_model, resolve_checkpoint, stderr_note, verify_model
from biglm.configurable import load_yaml
from biglm.data.records import read_records
from biglm.errors import BiglmError
from biglm.files import atomic_write_text
from biglm.finetune.config import FinetuneConfig, saved_finetune_config
from biglm.finetune.setup import prepare, read_split
from biglm.finetune.tasks import FinetuneTask, build_task
from biglm.generate.options import ParallelOptions
from biglm.outputs import FILE, check_output
from biglm.train.checkpointing import BEST, CONFIG


def resolve_finetuned(path: str | Path) -> Path:
    """``RUN/best`` when ``path`` is a run folder with an intact best checkpoint, else ``resolve_checkpoint(path)``
    (a damaged ``best/`` is skipped with a note)."""
    path = Path(path)
    if (path / BEST).is_dir():
        try:
            verify_model(path / BEST)
            return path / BEST
        except CheckpointError as e:
            stderr_note(f"note: skipping {path / BEST} ({e.problem}); using the newest checkpoint")
    return resolve_checkpoint(path, check=verify_model)


def finetune_config_of(folder: Path) -> FinetuneConfig | None:
    """The fine-tuning config saved in a checkpoint, or None (a pre-training checkpoint)."""
    if not (folder / CONFIG).is_file():
        return None
    data = load_yaml(folder / CONFIG)
    return saved_finetune_config(data, str(folder / CONFIG)) if "task" in data else None


@dataclass
class Predictor:
    """A loaded model with its task, ready to encode records, predict and score."""

    loaded: LoadedModel
    cfg: FinetuneConfig
    task: FinetuneTask


FINETUNE_FIRST = "fine-tune it first (biglm finetune --task KIND --init CKPT ...)"


def load_predictor(ckpt: str | Path, cfg: FinetuneConfig | None = None, device: str = "cpu",
                   hint: str = FINETUNE_FIRST) -> Predictor:
    """The model of ``ckpt`` with the task of its saved config (or of ``cfg``, e.g. to score a pretrained
    model zero-shot with a cloze template). ``hint`` ends the error for a checkpoint that is not a fine-tune:
    what the calling verb's user can do (each verb names only options it has)."""
    folder = resolve_finetuned(ckpt)
    saved = finetune_config_of(folder)
    cfg = cfg or saved
    if cfg is None:
        raise BiglmError(f"{folder}: not a fine-tuned checkpoint (no task in its config.yaml); {hint}")
    loaded = load_model(folder, device=device)
    if loaded.tokenizer is None:
        raise BiglmError(f"{folder}: the checkpoint has no tokenizer")
    task = build_task(cfg, loaded.tokenizer, loaded.config.max_seq_len, loaded.config.family)
    needed = task.model_config(loaded.config)
    if needed != loaded.config:
        diff = ", ".join(f"model.{k}={getattr(needed, k)!r} (the checkpoint has {getattr(loaded.config, k)!r})"
                         for k in needed.to_dict() if getattr(needed, k) != getattr(loaded.config, k))
        raise BiglmError(f"{folder}: task {cfg.task.kind} as configured needs {diff}; fine-tune for it, or keep the "
                         "task settings the checkpoint was fine-tuned with")
    return Predictor(loaded, cfg, task)


def with_decoding(cfg: FinetuneConfig, strategy: str | None = None, steps: int | None = None,
                  parallel: ParallelOptions | None = None) -> FinetuneConfig:
    """``cfg`` with the decoding settings of its seq2seq / instruction section changed (``biglm predict``'s
    flags over the fine-tune's): the ``strategy``, passes ``steps`` and ``parallel`` options given (None: kept;
    a new strategy starts from its own defaults, not the options saved for the old one), checked as the
    config's own fields are (one-line ``ConfigError``)."""
    given = parallel.as_strategy_options() if parallel is not None else {}
    changes: dict[str, Any] = {k: v for k, v in (("strategy", strategy), ("steps", steps)) if v is not None}
    if not changes and not given:
        return cfg
    section = cfg.task.options
    if not isinstance(getattr(section, "parallel", None), ParallelOptions):
        name = next(iter(given), "strategy" if strategy is not None else "steps")
        raise BiglmError(f"--{name.replace('_', '-')}: a decoding setting of seq2seq and instruction fine-tunes; "
                         f"this checkpoint is a {cfg.task.kind} one")
    kept = section.parallel if strategy in (None, section.strategy) else ParallelOptions()
    changes["parallel"] = dataclasses.replace(kept, **given)
    task = dataclasses.replace(cfg.task, **{cfg.task.kind.replace("-", "_"): dataclasses.replace(section, **changes)})
    return dataclasses.replace(cfg, task=task)


def evaluate_split(predictor: Predictor, split: str = "valid") -> tuple[dict[str, Any], list[Any], list[dict]]:
    """Predict and score the ``split`` of the predictor's data config: (scores, examples, predictions)."""
    examples = read_split(predictor.cfg, split, predictor.task, required=True)
    start = time.perf_counter()
    predictions = predictor.task.predict(predictor.loaded.model, examples)
    scores = predictor.task.score(examples, predictions)
    scores["examples"] = len(examples)
    scores["seconds"] = round(time.perf_counter() - start, 2)
    return scores, examples, predictions


def predict_file(predictor: Predictor, input_path: str, out_path: str | Path) -> int:
    """Predict every record of ``input_path`` (targets/labels not needed) and write ``out_path``: JSONL, one
    object per input line; for extractive QA a ``.json`` out gets the SQuAD ``{id: answer}`` mapping. An
    ``out_path`` that would overwrite the input or the checkpoint is refused (``biglm.outputs``)."""
    check_output(out_path, FILE, [input_path, predictor.loaded.path])
    records = read_records(input_path)
    examples = predictor.task.encode(records, labelled=False)
    predictions = predictor.task.predict(predictor.loaded.model, examples)
    write_predictions(predictor.task, examples, predictions, Path(out_path))
    return len(examples)


def write_predictions(task: FinetuneTask, examples: list[Any], predictions: list[dict], out: Path) -> None:
    """JSONL of ``task.output`` per example (or SQuAD's ``{id: answer}`` for a ``.json`` path), atomically."""
    out.parent.mkdir(parents=True, exist_ok=True)
    rows = [task.output(ex, p) for ex, p in zip(examples, predictions)]
    if out.suffix == ".json" and task.kind == "extractive-qa":
        atomic_write_text(out, json.dumps({r["id"]: r["answer"] for r in rows}, indent=1, ensure_ascii=False))
    else:
        atomic_write_text(out, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))


def zero_shot(init: str, cfg: FinetuneConfig, device: str = "cpu") -> Predictor:
    """A pretrained checkpoint with the task of ``cfg`` and no fine-tuning: a cloze template scored
    zero-shot. The other kinds need a trained head (length or span) and refuse."""
    if cfg.task.kind != "cloze-classification":
        raise BiglmError(f"task {cfg.task.kind} needs fine-tuning first; only cloze-classification runs zero-shot")
    cfg.init = init
    prepared = prepare(cfg)
    return Predictor(load_model(prepared.init, device=device), prepared.cfg, prepared.task)


def report(scores: dict[str, Any], title: str) -> str:
    """Scores as a Markdown table."""
    lines = [f"### {title}", "", "| Metric | Value |", "| --- | ---: |"]
    for key, value in scores.items():
        shown = f"{value:.2f}" if isinstance(value, float) else str(value)
        lines.append(f"| {key} | {shown} |")
    return "\n".join(lines) + "\n"
