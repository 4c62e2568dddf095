"""``setup``: from a resolved ``RunConfig`` and a run folder to a ready ``Trainer`` (fresh or resumed).

Order: distributed init → data (tokenizer, cached shards, row streams) → ``model.vocab_size: auto``
resolved from the tokenizer → objective → ``assemble``: model built (on the meta device for FSDP) →
parallelised → weights initialised or loaded → AdamW (state loaded on resume) → trainer state (step,
data position, RNG, best metric). Fine-tuning (``biglm.finetune``) builds its own data, batcher,
criterion and validator and calls the same ``assemble``.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import yaml

from biglm.checkpoint import resolve_checkpoint, verify_model
from biglm.config import ModelConfig
from biglm.configurable import changed_fields, describe_changes, load_yaml, save_yaml
from biglm.data import build_rows, load_tokenizer, prepare_data
from biglm.data.tokenizer import ensure_glm_tokens, glm_token_ids, padded_vocab_size, sentence_end_ids
from biglm.errors import BiglmError, ConfigError
from biglm.families import get_family
from biglm.files import HeldLock, hold_lock
from biglm.objectives import Criterion, build_criterion, build_objective
from biglm.outputs import RUN, check_output
from biglm.train import checkpointing as ckpt
from biglm.train.batches import Batcher, ObjectiveBatcher
from biglm.train.build import build_model
from biglm.train.checkpointer import Checkpointer
from biglm.train.config import BOOKKEEPING_FIELDS, RunConfig
from biglm.train.growth import GrowthHook, config_at
from biglm.train.loop import Trainer, TrainerConfig, Validator
from biglm.train.metrics import JsonlLogger, MultiLogger, NullLogger, Progress, TensorBoardLogger, truncate_metrics
from biglm.train.optim import build_optimizer
from biglm.train.parallel import (
    DistEnv,
    autocast_dtype,
    barrier,
    close_distributed,
    init_distributed,
)
from biglm.train.streams import DataBundle, DataFactory

RUN_MARKERS = ("config.yaml", "metrics.jsonl", "checkpoints")
LOCK = ".lock"


def load_data(cfg: RunConfig, env: DistEnv, micro_batch: int) -> DataBundle:
    """Tokenizer, tokenised cache (rank 0 prepares it, the others then reuse it) and this rank's streams."""
    tokenizer = load_tokenizer(cfg.data.tokenizer)
    if env.is_main:
        prepared = prepare_data(cfg.data, tokenizer, progress=cfg.train.progress)
    barrier(env)
    if not env.is_main:
        prepared = prepare_data(cfg.data, tokenizer, progress=False)
    rows = dict(batch_size=micro_batch, rank=env.rank, world_size=env.world_size)
    train = build_rows(prepared, "train", **rows)
    val = None
    if cfg.data.val_fraction > 0:
        try:
            val = build_rows(prepared, "val", **rows)
        except BiglmError as e:
            if env.is_main:
                print(f"note: no validation loss ({e})", file=sys.stderr)
    info = prepared.tokenizer
    specials = {"bos": info.bos_token_id, "eos": info.eos_token_id, "pad": info.pad_token_id,
                "mask": info.mask_token_id}
    vocab_size, n_tokens = info.vocab_size, info.n_tokens
    if get_family(cfg.model).special_tokens:
        # Added after the data is tokenised (the cache stays shared with other recipes): new ids only.
        ensure_glm_tokens(tokenizer)
        specials.update(glm_token_ids(tokenizer), sentence_ends=sentence_end_ids(tokenizer))
        vocab_size, n_tokens = padded_vocab_size(tokenizer), len(tokenizer)
    return DataBundle(train, val, mask_token_id=info.mask_token_id, vocab_size=vocab_size,
                      n_tokens=n_tokens, tokenizer=tokenizer, anneal=bool(prepared.anneal_sources),
                      special_ids=specials)


def check_run_dir(run_dir: Path, resume: bool) -> None:
    """Refuse to start a fresh run in a folder that already holds one."""
    if not resume and any((run_dir / m).exists() for m in RUN_MARKERS):
        raise BiglmError(f"{run_dir}: already holds a run; pass --resume to continue it or choose another --out")


def resolve_vocab(cfg: RunConfig, data: DataBundle) -> RunConfig:
    """Pin ``model.vocab_size`` to the tokenizer's padded size when it is ``auto``; check a pinned one."""
    if cfg.vocab_size_auto:
        return cfg.with_vocab_size(data.vocab_size)
    if cfg.model.vocab_size < data.n_tokens or data.mask_token_id >= cfg.model.vocab_size:
        raise ConfigError(f"model.vocab_size={cfg.model.vocab_size}: smaller than the tokenizer's {data.n_tokens} "
                          f"tokens; use 'auto' ({data.vocab_size})")
    return cfg


def check_nothing_unrun(run_cfg: Any, run_dir: Path, start_step: int) -> None:
    """A resumed run with no step left to take must not record a changed config it would never run: refuse,
    naming the changed fields (bookkeeping fields aside) and how to train longer."""
    path = run_dir / "config.yaml"
    if start_step < run_cfg.train.steps or not path.is_file():
        return
    new = yaml.safe_load(yaml.safe_dump(run_cfg.to_dict(), sort_keys=False))  # as config.yaml would hold it
    changes = changed_fields(load_yaml(path), new, BOOKKEEPING_FIELDS)
    if changes:
        raise ConfigError(f"{run_dir}: the run has no step left (step {start_step} of {run_cfg.train.steps}), so "
                          f"{describe_changes(changes)} would never be used; to train on, raise train.steps "
                          "(fine-tuning: --epochs)")


SHAPE_FIELDS = ("vocab_size", "hidden_size", "num_layers", "num_heads", "num_kv_heads", "intermediate_size",
                "norm", "tie_embeddings")


def check_init_shapes(cfg: TrainerConfig, folder: Path) -> None:
    """``train.init_from`` needs the run's backbone to have the checkpoint's shapes; say which overrides fit."""
    theirs = ModelConfig.from_file(folder / "model_config.yaml")
    diff = [f for f in SHAPE_FIELDS if getattr(theirs, f) != getattr(cfg.model, f)]
    if diff:
        fix = " ".join(f"--model.{f} {getattr(theirs, f)}" for f in diff)
        raise ConfigError(f"train.init_from={cfg.train.init_from}: the checkpoint's model differs in "
                          f"{', '.join(diff)}; pass {fix} (or set them in the model section)")


def claim_run_dir(run_dir: str | Path, inputs: list[str]) -> HeldLock | None:
    """Check ``run_dir`` with the output guard (not an input, not another kind of folder) and lock it for this
    run: the main rank holds ``RUN_DIR/.lock`` (with its PID) until the run ends, so a second run into the same
    folder stops with one line naming the first one's PID. Other ranks (under torchrun) hold nothing."""
    check_output(run_dir, RUN, inputs)
    if int(os.environ.get("RANK", "0")) != 0:
        return None
    return hold_lock(Path(run_dir) / LOCK, str(run_dir))


def fit_to_end(build: Callable[[], Trainer], start: Callable[[Trainer], Any] | None = None, *,
               run_dir: str | Path, inputs: list[str]) -> tuple[Trainer, dict[str, float]]:
    """What every training verb runs: claim ``run_dir`` (``claim_run_dir``; ``inputs`` are what the run reads),
    build a trainer, run ``start`` on it (e.g. the step-0 evaluation), fit and close it. The lock and the
    process group (under torchrun) are let go on every exit path; a run refused before it wrote anything leaves
    no folder behind. Returns the trainer and its last metrics."""
    new_folder = not Path(run_dir).exists()
    lock = claim_run_dir(run_dir, inputs)
    try:
        trainer = build()
        if start is not None:
            start(trainer)
        metrics = trainer.fit()
        trainer.close()
    finally:
        close_distributed()
        if lock is not None:
            lock.release()
            if new_folder and [p.name for p in Path(run_dir).iterdir()] == [LOCK]:
                (Path(run_dir) / LOCK).unlink(missing_ok=True)
                Path(run_dir).rmdir()
    return trainer, metrics


def setup(cfg: RunConfig, run_dir: str | Path, resume: bool = False, data: DataFactory | None = None) -> Trainer:
    """Build a pre-training ``Trainer`` for ``cfg`` writing to ``run_dir``; with ``resume``, continue its
    newest checkpoint.

    ``data`` builds the row streams (default: ``load_data``, the real data pipeline); tests pass a
    factory of ``biglm.train.streams.synthetic_data``.
    """
    run_dir = Path(run_dir)
    check_run_dir(run_dir, resume)
    env = init_distributed(cfg.train.device)
    micro = cfg.train.micro_batch(env.world_size)
    cfg.train.grad_accum(env.world_size)  # validates the batch sizes before any data work
    bundle = (data or load_data)(cfg, env, micro)
    cfg = resolve_vocab(cfg, bundle)
    objective = build_objective(cfg.objective, bundle.mask_token_id, cfg.model.vocab_size, bundle.special_ids)
    return assemble(cfg, env, run_dir, resume, bundle, ObjectiveBatcher(objective), build_criterion(cfg.objective))


def assemble(cfg: TrainerConfig, env: DistEnv, run_dir: Path, resume: bool, bundle: DataBundle, batcher: Batcher,
             criterion: Criterion, validator: Validator | None = None, steps_per_epoch: int | None = None,
             verb: str = "pretrain") -> Trainer:
    """The shared second half of every training set-up: model (fresh, ``train.init_from`` or resumed),
    optimizer, loggers, progress bar and trainer state. The caller has checked ``run_dir`` and built the
    data and the task's batcher / criterion / validator."""
    if env.device.type == "cuda":
        torch.set_float32_matmul_precision("high")
    resume_from = ckpt.find_resume_checkpoint(run_dir, note=None if env.is_main else (lambda _: None)) \
        if resume else None
    trainer_state = ckpt.read_trainer_state(resume_from) if resume_from is not None else None
    start_step = int(trainer_state["step"]) if trainer_state is not None else 0
    if resume_from is not None and env.is_main:
        check_nothing_unrun(cfg, run_dir, start_step)
    run_cfg, cfg = cfg, config_at(cfg, start_step)  # the model as grown by train.growth up to the resumed step
    if resume_from is not None:
        model, train_model = build_model(cfg, env, None, initialise=False)  # weights: the checkpointer's, below
    else:
        init = resolve_checkpoint(cfg.train.init_from, check=verify_model) if cfg.train.init_from else None
        if init is not None:
            check_init_shapes(cfg, init)
        model, train_model = build_model(cfg, env, init)
    optimizer = build_optimizer(model, cfg.train)
    if resume_from is not None:
        Checkpointer(run_dir, cfg.train, env).load(resume_from, model, optimizer)
    logger, progress = NullLogger(), Progress(cfg.train.steps, 0, enabled=False)
    if env.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        save_yaml(run_cfg.to_dict(), run_dir / "config.yaml")
        truncate_metrics(run_dir / "metrics.jsonl", start_step)
        loggers = [JsonlLogger(run_dir / "metrics.jsonl")]
        if cfg.train.tensorboard:
            loggers.append(TensorBoardLogger(run_dir / "tensorboard"))
        logger = MultiLogger(*loggers)
        progress = Progress(cfg.train.steps, start_step, enabled=cfg.train.progress, desc=verb)
    hooks = [GrowthHook()] if cfg.train.growth else []  # events still to come after the resumed step
    trainer = Trainer(cfg, env, model, train_model, optimizer, batcher, criterion, bundle, run_dir, logger,
                      progress, validator, steps_per_epoch, hooks)
    if trainer_state is not None:
        trainer.load_state_dict(trainer_state)
    if env.is_main:
        progress.write(describe(trainer, resume_from, verb))
    return trainer


def describe(trainer: Trainer, resume_from: Path | None, verb: str = "pretrain") -> str:
    """One line on what is about to run."""
    cfg, env = trainer.cfg, trainer.env
    n = sum(p.numel() for p in trainer.model.parameters())
    start = f"resuming from {resume_from} at step {trainer.step}" if resume_from else "starting at step 0"
    prec = "bf16" if autocast_dtype(cfg.train, env.device) == torch.bfloat16 else "fp32"
    return (f"biglm {verb}: {cfg.model.name} ({n / 1e6:.1f}M params, vocab {cfg.model.vocab_size}), "
            f"{env.world_size} rank(s) on {env.device.type} [{cfg.train.parallel if env.distributed else 'single'}, "
            f"{prec}], {trainer.micro} rows × {trainer.grad_accum} accum × {env.world_size} = "
            f"{cfg.train.global_batch_size} rows × {cfg.seq_len} tokens per step, {cfg.train.steps} steps; "
            f"{start}")
