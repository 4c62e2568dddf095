"""From a ``FinetuneConfig`` to a ready ``Trainer``: the pretrained checkpoint's tokenizer and model config,
the task, the encoded examples as an epoch stream, and the task's batcher, criterion and validator on
the shared trainer (``biglm.train.setup.assemble``).

Order: the starting checkpoint (``init``) → its tokenizer → the task (heads added to the model config)
→ examples read and encoded (one-line errors naming the bad line) → ``epochs`` turned into steps, an
evaluation and a checkpoint after every epoch, the best epoch kept by the task's main metric →
``assemble`` (model from ``init`` with fresh task heads, optimizer, loggers; or the run's newest
checkpoint with ``--resume``).
"""

from __future__ import annotations

import dataclasses
import json
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from biglm.checkpoint import load_model, resolve_checkpoint, verify_model
from biglm.config import ModelConfig
from biglm.configurable import load_yaml
from biglm.data.records import read_records
from biglm.data.tokenizer import load_tokenizer
from biglm.errors import BiglmError, ConfigError
from biglm.finetune.config import FinetuneConfig
from biglm.finetune.data import ExampleStream, steps_per_epoch
from biglm.finetune.tasks import FinetuneTask, build_task
from biglm.train.batches import RowSeeds
from biglm.train.checkpointing import find_resume_checkpoint
from biglm.train.loop import Trainer
from biglm.train.parallel import init_distributed
from biglm.train.schedule import learning_rate
from biglm.train.setup import assemble, check_run_dir
from biglm.train.streams import DataBundle


@dataclass
class Prepared:
    """A config resolved against its starting checkpoint: tokenizer, task and the full model config."""

    cfg: FinetuneConfig
    init: Path
    tokenizer: Any
    task: FinetuneTask


def prepare(cfg: FinetuneConfig, source: Path | None = None) -> Prepared:
    """Resolve ``cfg.init``, load its tokenizer, build the task and the model config (heads added).
    ``source`` reads the tokenizer and model config from another checkpoint (a resumed run's own)."""

    if not cfg.init and source is None:
        raise ConfigError("init: give the pretrained checkpoint or run folder to start from (--init CKPT)")
    init = source or resolve_checkpoint(cfg.init, check=verify_model)
    if not (init / "tokenizer").is_dir():
        raise BiglmError(f"{init}: the checkpoint has no tokenizer/ folder; fine-tuning needs the model's tokenizer")
    tokenizer = load_tokenizer(init / "tokenizer")
    base = load_yaml(init / "model_config.yaml")
    model = ModelConfig.from_dict({**base, **cfg.model_overrides})
    task = build_task(cfg, tokenizer, model.max_seq_len, model.family)
    cfg = dataclasses.replace(cfg, model=task.model_config(model))
    return Prepared(cfg, init, tokenizer, task)


def read_split(cfg: FinetuneConfig, split: str, task: FinetuneTask, labelled: bool = True,
               required: bool = False) -> list[Any]:
    """Encoded examples of ``split`` (train / valid / test), or [] when the config names none."""
    spec, hf_split = cfg.data.spec(split)
    if not spec and split == "train" and getattr(task, "mixture", None):
        return task.read_mixture(cfg.data.max_examples)  # several sets mixed by weight (instruction tuning)
    if not spec:
        if required:
            raise ConfigError(f"data.{split}: no {split} examples given (--{split} FILE)")
        return []
    records = read_records(spec, split=hf_split, hf_config=cfg.data.hf_config, limit=cfg.data.max_examples)
    return task.encode(records, labelled=labelled)


def numeric(scores: dict[str, Any]) -> dict[str, float]:
    """The numbers of a task's scores (what metrics.jsonl can hold)."""
    return {k: float(v) for k, v in scores.items() if isinstance(v, int | float) and not isinstance(v, bool)}


def make_validator(task: FinetuneTask, examples: list[Any]) -> Callable[[Any], dict[str, float]]:
    """The task metrics of the model on ``examples`` (predicted with the engine or the scorers)."""
    return lambda model: numeric(task.score(examples, task.predict(model, examples)))


def set_reference(task: Any, cfg: FinetuneConfig, examples: list[Any]) -> None:
    """Score ``examples`` with a frozen copy of ``cfg.init`` (the reference policy), then free it."""

    if not cfg.init:
        raise ConfigError("init: DPO needs the reference policy (--init CKPT), also when resuming")
    reference = load_model(cfg.init).model.requires_grad_(False)
    task.set_reference(reference, examples)
    del reference


def resumed_steps(cfg: FinetuneConfig, run_dir: Path, spe: int, own: Path | None) -> tuple[int, str]:
    """The length of a resumed run and a note ('' when unchanged): when ``train.epochs`` changed and the
    run's steps came from its epochs (and ``train.steps`` was not changed too), ``epochs × steps per epoch``
    again, so ``--resume --epochs 5`` extends (or shortens) the run as trl / transformers do. The
    learning-rate schedule, a function of the step and the total, then spans the new total: a finished
    linear decay rises again, which the note says."""

    t = cfg.train
    saved = (load_yaml(run_dir / "config.yaml").get("train") or {}) if (run_dir / "config.yaml").is_file() else {}
    old_epochs, old_steps = saved.get("epochs", t.epochs), saved.get("steps", t.steps)
    if t.epochs == old_epochs or t.steps != old_steps:
        return t.steps, ""
    if old_steps != old_epochs * spe:
        raise ConfigError(f"train.epochs {old_epochs} -> {t.epochs}: this run's length is train.steps={old_steps}, "
                          "not its epochs; resume with --train.steps N to change it")
    steps = t.epochs * spe
    step = int(json.loads((own / "meta.json").read_text()).get("step", 0)) if own is not None else 0
    if steps <= step:  # nothing left: ``assemble`` refuses, naming the change
        return steps, ""
    before, after = learning_rate(step, t), learning_rate(step, dataclasses.replace(t, steps=steps))
    return steps, (f"note: train.epochs {old_epochs} -> {t.epochs}: the run goes on to step {steps} (was "
                   f"{old_steps}); the {t.schedule} schedule now spans {steps} steps (lr at step {step}: "
                   f"{before:.3g} -> {after:.3g})")


def setup_finetune(cfg: FinetuneConfig, run_dir: str | Path, resume: bool = False) -> Trainer:
    """A ``Trainer`` that fine-tunes ``cfg.init`` on ``cfg.task`` into ``run_dir`` (``resume``: continue it)."""
    run_dir = Path(run_dir)
    check_run_dir(run_dir, resume)
    env = init_distributed(cfg.train.device)
    # A resumed run reads its tokenizer and model from its own checkpoints (the init may be gone by now).
    own = find_resume_checkpoint(run_dir, note=lambda _: None) if resume else None
    prepared = prepare(cfg, own)
    cfg, task = prepared.cfg, prepared.task
    train = task.train_items(read_split(cfg, "train", task, required=True))
    valid = read_split(cfg, "valid", task)
    if hasattr(task, "set_reference"):  # DPO: the reference policy's log-probs, once, from the starting checkpoint
        set_reference(task, cfg, train + valid)
    t = cfg.train
    spe = steps_per_epoch(len(train), t.global_batch_size)
    t.grad_accum(env.world_size)  # validates the batch sizes
    updates: dict[str, Any] = {"init_from": cfg.train.init_from or str(prepared.init)}
    if not t.steps:
        updates["steps"] = t.epochs * spe
    elif resume:
        updates["steps"], note = resumed_steps(cfg, run_dir, spe, own)
        if note and env.is_main:
            print(note, file=sys.stderr)
    if not t.eval_every:
        updates["eval_every"] = spe
    if not t.save_every:
        updates["save_every"] = spe
    if not t.best_metric and valid:
        updates.update(best_metric=f"val_{task.main_metric}", best_mode=task.mode)
    sample = train[:256]
    mean_tokens = round(task.batcher()(sample, RowSeeds(0, 0)).num_tokens / len(sample))
    cfg = dataclasses.replace(cfg, train=dataclasses.replace(t, **updates), mean_row_tokens=mean_tokens)
    if env.is_main:
        print(f"biglm finetune: {task.kind}, {len(train)} training rows ({spe} steps of {t.global_batch_size} per "
              f"epoch, {cfg.train.steps} steps), {len(valid)} validation examples", file=sys.stderr)
    rows = cfg.train.global_batch_size * spe
    train_stream = ExampleStream(train, rows, cfg.train.seed, env.rank, env.world_size)
    val_items = task.train_items(valid)
    val_stream = ExampleStream(val_items, None, 0, env.rank, env.world_size, shuffle=False,
                               num_rows=len(val_items)) if val_items else None
    tok = prepared.tokenizer
    bundle = DataBundle(train_stream, val_stream, mask_token_id=int(tok.mask_token_id),
                        vocab_size=cfg.model.vocab_size, n_tokens=len(tok), tokenizer=tok)
    validator = make_validator(task, valid) if valid else None
    return assemble(cfg, env, run_dir, resume, bundle, task.batcher(), task.criterion(), validator,
                    steps_per_epoch=spe, verb="finetune")
