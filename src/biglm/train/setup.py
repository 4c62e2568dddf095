"""``setup``: from a resolved ``RunConfig`` and a run folder to a ready ``Trainer`` (fresh or resumed).

Order: distributed init → data (tokenizer, cached shards, row streams) → ``model.vocab_size: auto``
resolved from the tokenizer → model built (on the meta device for FSDP) → parallelised → weights
initialised or loaded → AdamW (state loaded on resume) → trainer state (step, data position, RNG).
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
import torch.distributed as dist

from biglm.checkpoint import check_state_dict, resolve_checkpoint, verify_model
from biglm.configurable import save_yaml
from biglm.errors import BiglmError, ConfigError
from biglm.model import BiGLM
from biglm.objectives import build_objective
from biglm.train import checkpointing as ckpt
from biglm.train.config import RunConfig
from biglm.train.loop import Trainer
from biglm.train.metrics import JsonlLogger, MultiLogger, NullLogger, Progress, TensorBoardLogger, truncate_metrics
from biglm.train.optim import build_optimizer
from biglm.train.parallel import DistEnv, autocast_dtype, init_distributed, is_sharded, parallelize
from biglm.train.streams import DataBundle, DataFactory

RUN_MARKERS = ("config.yaml", "metrics.jsonl", "checkpoints")


def load_data(cfg: RunConfig, env: DistEnv, micro_batch: int) -> DataBundle:
    """Tokenizer, tokenised cache (rank 0 prepares it, the others then reuse it) and this rank's streams."""
    from biglm.data import build_rows, load_tokenizer, prepare_data

    tokenizer = load_tokenizer(cfg.data.tokenizer)
    if env.is_main:
        prepared = prepare_data(cfg.data, tokenizer, progress=cfg.train.progress)
    if env.distributed:
        dist.barrier()
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
    return DataBundle(train, val, mask_token_id=info.mask_token_id, vocab_size=info.vocab_size,
                      n_tokens=info.n_tokens, tokenizer=tokenizer, anneal=bool(prepared.anneal_sources))


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


def build_model(cfg: RunConfig, env: DistEnv, resume_from: Path | None) -> tuple[BiGLM, torch.nn.Module]:
    """The model, parallelised, with initial or checkpointed weights. Returns (model, module to train)."""
    sharded = is_sharded(cfg.train, env)
    torch.manual_seed(cfg.train.seed)
    if not sharded:
        model = BiGLM(cfg.model)
        if resume_from is not None:
            state = ckpt.read_model_state(resume_from, cfg.model)
            check_state_dict(state, model, resume_from / "model.safetensors")
            model.load_state_dict(state)
        return model, parallelize(model, cfg.train, env)
    # FSDP2: every rank shards a meta model; rank 0 holds the full initial (or saved) weights on CPU
    # and broadcasts them shard by shard, so the start equals a single-device run with the same seed.
    full: dict[str, torch.Tensor] = {}
    if env.is_main:
        full = ckpt.read_model_state(resume_from, cfg.model) if resume_from else BiGLM(cfg.model).state_dict()
    with torch.device("meta"):
        model = BiGLM(cfg.model)
    train_model = parallelize(model, cfg.train, env)
    model.model.rotary.reset_parameters()  # non-persistent buffer: recompute after to_empty
    ckpt.load_model_state(model, full, sharded=True)
    return model, train_model


def setup(cfg: RunConfig, run_dir: str | Path, resume: bool = False, data: DataFactory | None = None) -> Trainer:
    """Build a ``Trainer`` for ``cfg`` writing to ``run_dir``; with ``resume``, continue its newest checkpoint.

    ``data`` builds the row streams (default: ``load_data``, the real data pipeline); tests pass a
    factory of ``biglm.train.streams.synthetic_data``.
    """
    run_dir = Path(run_dir)
    check_run_dir(run_dir, resume)
    env = init_distributed(cfg.train.device)
    if env.device.type == "cuda":
        torch.set_float32_matmul_precision("high")
    micro = cfg.train.micro_batch(env.world_size)
    cfg.train.grad_accum(env.world_size)  # validates the batch sizes before any data work
    bundle = (data or load_data)(cfg, env, micro)
    cfg = resolve_vocab(cfg, bundle)
    resume_from = ckpt.find_resume_checkpoint(run_dir, note=None if env.is_main else (lambda _: None)) \
        if resume else None
    weights_from = resume_from
    if weights_from is None and cfg.train.init_from:
        weights_from = resolve_checkpoint(cfg.train.init_from, check=verify_model)
    model, train_model = build_model(cfg, env, weights_from)
    optimizer = build_optimizer(model, cfg.train)
    sharded = is_sharded(cfg.train, env)
    if resume_from is not None:
        state = ckpt.read_optimizer_state(resume_from) if (env.is_main or not sharded) else {}
        ckpt.load_optimizer_state(model, optimizer, state, sharded=sharded)
    objective = build_objective(cfg.objective, bundle.mask_token_id, cfg.model.vocab_size)
    logger, progress = NullLogger(), Progress(cfg.train.steps, 0, enabled=False)
    start_step = 0
    trainer_state = ckpt.read_trainer_state(resume_from) if resume_from is not None else None
    if trainer_state is not None:
        start_step = int(trainer_state["step"])
    if env.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        save_yaml(cfg.to_dict(), run_dir / "config.yaml")
        truncate_metrics(run_dir / "metrics.jsonl", start_step)
        loggers = [JsonlLogger(run_dir / "metrics.jsonl")]
        if cfg.train.tensorboard:
            loggers.append(TensorBoardLogger(run_dir / "tensorboard"))
        logger = MultiLogger(*loggers)
        progress = Progress(cfg.train.steps, start_step, enabled=cfg.train.progress)
    trainer = Trainer(cfg, env, model, train_model, optimizer, objective, bundle, run_dir, logger, progress)
    if trainer_state is not None:
        trainer.load_state_dict(trainer_state)
    if env.is_main:
        progress.write(describe(trainer, resume_from))
    return trainer


def describe(trainer: Trainer, resume_from: Path | None) -> str:
    """One line on what is about to run."""
    cfg, env = trainer.cfg, trainer.env
    n = sum(p.numel() for p in trainer.model.parameters())
    start = f"resuming from {resume_from} at step {trainer.step}" if resume_from else "starting at step 0"
    prec = "bf16" if autocast_dtype(cfg.train, env.device) == torch.bfloat16 else "fp32"
    return (f"biglm pretrain: {cfg.model.name} ({n / 1e6:.1f}M params, vocab {cfg.model.vocab_size}), "
            f"{env.world_size} rank(s) on {env.device.type} [{cfg.train.parallel if env.distributed else 'single'}, "
            f"{prec}], {trainer.micro} rows × {trainer.grad_accum} accum × {env.world_size} = "
            f"{cfg.train.global_batch_size} rows × {cfg.data.seq_len} tokens per step, {cfg.train.steps} steps; "
            f"{start}")
