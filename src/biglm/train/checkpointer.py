"""The trainer's checkpointer: saves a run's checkpoints in ``train.checkpoint_format`` and resumes from
either format, so the training loop and the set-up never ask which one a folder holds.

``full`` (``biglm.train.checkpointing``): weights and optimizer state gathered to rank 0, which writes
``model.safetensors`` + ``optimizer.pt``; ``sharded`` (``biglm.train.sharded``): every rank writes its
shards, optionally in the background (``train.async_checkpoint``; ``finish`` completes such a save).
Resuming reads what the folder holds, whatever the run is configured to write now.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file
from torch import nn

from biglm.checkpoint import check_state_dict, checkpoint_folders
from biglm.config import ModelConfig
from biglm.model import BiGLM
from biglm.train import checkpointing as ckpt
from biglm.train.config import TrainConfig
from biglm.train.parallel import DistEnv, barrier, is_sharded
from biglm.train.sharded import (
    PendingSave,
    is_sharded_checkpoint,
    load_sharded_checkpoint,
    read_sharded_model_state,
    save_sharded_checkpoint,
)


def read_model_state(folder: Path, config: ModelConfig) -> dict[str, torch.Tensor]:
    """Weights of a checkpoint of either format as a full state dict (tied LM head re-added); a sharded
    checkpoint's shards are read and joined (one process)."""
    if not (folder / "model.safetensors").is_file() and is_sharded_checkpoint(folder):
        return read_sharded_model_state(folder, config)
    state = load_file(str(folder / "model.safetensors"))
    if config.tie_embeddings:
        state["lm_head.weight"] = state["model.embed_tokens.weight"]
    return state


class Checkpointer:
    """Writes ``RUN_DIR/checkpoints/step_*`` and ``RUN_DIR/best`` for one run; every method is a collective
    (call it on every rank)."""

    def __init__(self, run_dir: Path, cfg: TrainConfig, env: DistEnv) -> None:
        self.run_dir, self.env = Path(run_dir), env
        self.sharded_format = cfg.checkpoint_format == "sharded"
        self.keep_last, self.asynchronous = cfg.keep_last, cfg.async_checkpoint
        self.sharded_model = is_sharded(cfg, env)
        self.pending: PendingSave | None = None

    def exists(self) -> bool:
        """True once the run has a checkpoint folder (intact or not)."""
        return bool(checkpoint_folders(self.run_dir))

    def save(self, step: int, model: nn.Module, optimizer: torch.optim.Optimizer, model_config: ModelConfig,
             tokenizer: Any, trainer_state: Callable[[], dict[str, Any]], run_config: dict[str, Any]) -> None:
        """Write ``checkpoints/step_<step>`` (``trainer_state`` is called once, collectively, for the resume
        state); a sharded save may still be under way on return (``finish``)."""
        if self.sharded_format:
            self.finish()
            self.pending = save_sharded_checkpoint(
                self.run_dir, step, model, optimizer, model_config, tokenizer, trainer_state(), run_config,
                self.keep_last, self.env.is_main, asynchronous=self.asynchronous)
            return
        model_state = ckpt.gather_model_state(model)
        optimizer_state = ckpt.gather_optimizer_state(model, optimizer)
        state = trainer_state()
        if self.env.is_main:
            ckpt.save_checkpoint(self.run_dir, step, model_state, model_config, tokenizer, optimizer_state, state,
                                 run_config, self.keep_last)
        barrier(self.env)

    def finish(self) -> None:
        """Complete an asynchronous save still being written (a no-op when none is)."""
        pending, self.pending = self.pending, None
        if pending is not None:
            pending.finish()

    def save_best(self, step: int, model: nn.Module, model_config: ModelConfig, tokenizer: Any,
                  run_config: dict[str, Any], best: dict[str, Any]) -> None:
        """Replace ``RUN_DIR/best`` with the model's weights (``best``: ``{"metric": name, "value": v}``)."""
        model_state = ckpt.gather_model_state(model)  # a collective under FSDP
        if self.env.is_main:
            ckpt.save_best(self.run_dir, step, model_state, model_config, tokenizer, run_config, best)
        barrier(self.env)

    def load(self, folder: Path, model: BiGLM, optimizer: torch.optim.Optimizer) -> None:
        """Resume: the weights and optimizer state of ``folder`` (either format) into a built, parallelised
        ``model`` and its ``optimizer`` (single-file weights are checked against the model first, one-line
        errors naming the tensor; with FSDP only rank 0 reads them and broadcasts)."""
        if is_sharded_checkpoint(folder):
            load_sharded_checkpoint(folder, model, optimizer)
            return
        reads = self.env.is_main or not self.sharded_model
        state: dict[str, torch.Tensor] = {}
        if reads:
            state = read_model_state(folder, model.config)
            with torch.device("meta"):
                check_state_dict(state, BiGLM(model.config), folder / "model.safetensors")
        ckpt.load_model_state(model, state, sharded=self.sharded_model)
        optimizer_state = ckpt.read_optimizer_state(folder) if reads else {}
        ckpt.load_optimizer_state(model, optimizer, optimizer_state, sharded=self.sharded_model)
