"""Training checkpoints: the model checkpoint of ``biglm.checkpoint`` plus the state to resume exactly.

``RUN_DIR/checkpoints/step_XXXXXXXX/`` holds, besides the model files, ``optimizer.pt`` (AdamW state keyed
by parameter name, gathered to full tensors, so a run may resume under another parallelism),
``trainer_state.pt`` (step, tokens seen, data-stream position, RNG states of every rank) and
``config.yaml`` (the resolved run config); with ``train.checkpoint_format: sharded`` the weights and
optimizer state are instead ``state/`` shards written by every rank (``biglm.train.sharded``, built on this
module; ``biglm.train.checkpointer`` saves and resumes in either format). Folders are
written atomically (temporary name, then rename, ``meta.json`` last, with every file's size and checksum);
weights or optimizer state holding NaN/Inf are never written. On resume the newest checkpoint that
verifies is used, newer unfinished or damaged ones are skipped with a note, and a run whose checkpoints
are all damaged is an error (never a silent restart from step 0). Pruning to ``keep_last`` counts verified
checkpoints only, so a damaged one never takes the place of a good one; it runs only after the new
checkpoint is complete.
"""

from __future__ import annotations

import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from biglm.checkpoint import (
    CHECKPOINTS,
    Note,
    check_finite,
    checkpoint_folders,
    is_intact,
    newest_intact,
    stderr_note,
    write_checkpoint,
)
from biglm.config import ModelConfig
from biglm.configurable import save_yaml
from biglm.errors import BiglmError
from biglm.loaders import load_pickle

OPTIMIZER, TRAINER_STATE, CONFIG = "optimizer.pt", "trainer_state.pt", "config.yaml"
BEST = "best"


def checkpoint_dir(run_dir: Path, step: int) -> Path:
    return run_dir / CHECKPOINTS / f"step_{step:08d}"


def find_resume_checkpoint(run_dir: Path, note: Note | None = None) -> Path | None:
    """The newest intact checkpoint of ``run_dir`` (None if the run never finished a save).

    Newer unfinished saves (``.tmp-`` folders of a killed save) and checkpoints that fail
    ``verify_checkpoint`` are skipped with a one-line note each through ``note`` (default: stderr). When
    checkpoints exist but none is intact, raises ``BiglmError`` naming the newest one's problem.
    """
    note = note or stderr_note
    root = run_dir / CHECKPOINTS
    if not root.is_dir():
        return None
    newest, skipped = newest_intact(run_dir)
    if newest is None and skipped:
        raise BiglmError(f"{run_dir}: no intact checkpoint to resume from; the newest, {skipped[0]} (move the "
                         "damaged folders away to start again from step 0)")
    using = f"resuming from {newest.name}" if newest else "no complete checkpoint, starting from step 0"
    for e in skipped:
        kind = "incomplete" if e.incomplete else "damaged"
        note(f"note: skipping {kind} checkpoint {e.folder.name} ({e.problem}); {using}")
    for p in sorted(root.iterdir()):
        if p.is_dir() and p.name.startswith(".tmp-step_") and (newest is None or p.name[5:] > newest.name):
            note(f"note: skipping incomplete checkpoint {p.name}; {using}")
    return newest


def prune_checkpoints(run_dir: Path, keep_last: int) -> None:
    """Delete all but the newest ``keep_last`` intact checkpoints, and anything else (unfinished saves,
    damaged checkpoints) older than the newest intact one. Damaged or unfinished folders never count."""
    root = run_dir / CHECKPOINTS
    intact = [p for p in checkpoint_folders(run_dir) if is_intact(p)]
    if not intact:
        return
    for p in intact[:-keep_last]:
        shutil.rmtree(p, ignore_errors=True)
    newest = intact[-1].name
    for p in root.iterdir():
        name = p.name.removeprefix(".tmp-").removeprefix(".old-")
        if p not in intact and p.is_dir() and name < newest:
            shutil.rmtree(p, ignore_errors=True)


def weights_to_save(model_state: dict[str, torch.Tensor], config: ModelConfig) -> dict[str, torch.Tensor]:
    """A gathered state dict as stored: tied LM head dropped, tensors contiguous on the CPU."""
    drop = "lm_head.weight" if config.tie_embeddings else None
    return {k: v.detach().cpu().contiguous() for k, v in model_state.items() if k != drop}


def save_checkpoint(run_dir: Path, step: int, model_state: dict[str, torch.Tensor], model_config: ModelConfig,
                    tokenizer: Any, optimizer_state: dict[str, Any], trainer_state: dict[str, Any],
                    run_config: dict[str, Any], keep_last: int) -> Path:
    """Write ``checkpoints/step_<step>`` atomically (rank 0 only), then prune to ``keep_last``."""
    model_state = weights_to_save(model_state, model_config)
    check_finite(optimizer_state, checkpoint_dir(run_dir, step) / OPTIMIZER)
    extra = {
        OPTIMIZER: lambda p: torch.save(optimizer_state, p),
        TRAINER_STATE: lambda p: torch.save(trainer_state, p),
        CONFIG: lambda p: save_yaml(run_config, p),
    }
    folder = write_checkpoint(checkpoint_dir(run_dir, step), model_state, model_config, tokenizer, step,
                              extra=extra, meta={"tokens_seen": trainer_state.get("tokens_seen", 0)})
    prune_checkpoints(run_dir, keep_last)
    return folder


def save_best(run_dir: Path, step: int, model_state: dict[str, torch.Tensor], model_config: ModelConfig,
              tokenizer: Any, run_config: dict[str, Any], best: dict[str, Any]) -> Path:
    """Write ``RUN_DIR/best`` (weights, tokenizer, run config; no optimizer) atomically, replacing the old one.

    ``best`` (``{"metric": name, "value": v}``) goes into ``meta.json`` with the step.
    """
    model_state = weights_to_save(model_state, model_config)
    return write_checkpoint(run_dir / BEST, model_state, model_config, tokenizer, step,
                            extra={CONFIG: lambda p: save_yaml(run_config, p)}, meta={"best": best})


def read_optimizer_state(folder: Path) -> dict[str, Any]:
    return load_pickle(folder / OPTIMIZER)


def read_trainer_state(folder: Path) -> dict[str, Any]:
    return load_pickle(folder / TRAINER_STATE)


# --- full (gathered) state dicts, uniform over single-device, DDP and FSDP2 ---------------------------------

def _options(**kw: bool) -> Any:
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    return StateDictOptions(full_state_dict=True, **kw)


def gather_model_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """Full CPU state dict of the model (a collective under FSDP: call on every rank; only rank 0 gets it)."""
    from torch.distributed.checkpoint.state_dict import get_model_state_dict

    return get_model_state_dict(model, options=_options(cpu_offload=True))


def gather_optimizer_state(model: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """Full CPU optimizer state keyed by parameter name (collective under FSDP, like ``gather_model_state``)."""
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

    return get_optimizer_state_dict(model, optimizer, options=_options(cpu_offload=True))


def load_model_state(model: nn.Module, state: dict[str, torch.Tensor], sharded: bool) -> None:
    """Load a full state dict; when ``sharded`` (FSDP2) only rank 0 needs ``state`` and broadcasts it."""
    from torch.distributed.checkpoint.state_dict import set_model_state_dict

    set_model_state_dict(model, state, options=_options(broadcast_from_rank0=sharded))


def load_optimizer_state(model: nn.Module, optimizer: torch.optim.Optimizer, state: dict[str, Any],
                         sharded: bool) -> None:
    """Load a full optimizer state (as saved by ``gather_optimizer_state``)."""
    from torch.distributed.checkpoint.state_dict import set_optimizer_state_dict

    set_optimizer_state_dict(model, optimizer, state, options=_options(broadcast_from_rank0=sharded))


# --- RNG states ---------------------------------------------------------------------------------------------

def rng_state() -> dict[str, Any]:
    """Python, NumPy, torch CPU (and CUDA) generator states of this process."""
    np_state = np.random.get_state(legacy=False)
    state = {"python": random.getstate(),
             "numpy": {"bit_generator": np_state["bit_generator"], "key": np_state["state"]["key"].tolist(),
                       "pos": int(np_state["state"]["pos"]), "has_gauss": int(np_state["has_gauss"]),
                       "gauss": float(np_state["gauss"])},
             "torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what ``rng_state`` returned."""
    random.setstate(_as_tuple(state["python"]))
    n = state["numpy"]
    np.random.set_state({"bit_generator": n["bit_generator"],
                         "state": {"key": np.array(n["key"], dtype=np.uint32), "pos": n["pos"]},
                         "has_gauss": n["has_gauss"], "gauss": n["gauss"]})
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def _as_tuple(x: Any) -> Any:
    return tuple(_as_tuple(v) for v in x) if isinstance(x, list | tuple) else x
