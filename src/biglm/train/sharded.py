"""Sharded training checkpoints (``train.checkpoint_format: sharded``) with ``torch.distributed.checkpoint``.

Each rank writes its own shards of the weights and AdamW state (DTensors under FSDP2; whole tensors
without sharding) into ``state/`` of the checkpoint folder, so no rank ever holds the full state: a full
checkpoint gathers it on rank 0 (about 42 GB of CPU memory for 3.5B). DCP records every tensor's global
shape and each shard's place, so a run resumes on any number of ranks (also one, unsharded).

The folder is otherwise a normal checkpoint (``biglm.checkpoint``), with the same guarantees: written
under ``.tmp-step_*`` (rank 0 makes it, every rank writes its shards, then rank 0 adds the trainer state,
config and tokenizer, records every file's size and checksum in ``meta.json`` and renames it into place),
so an interrupted or damaged save is never used or counted. ``train.async_checkpoint`` writes the shards in
a background thread (``dcp.async_save``, coordinated over a separate gloo group) while training goes on;
the folder is completed at the next save or at the end of ``fit``. It carries no ``model.safetensors``:
``consolidate_checkpoint`` (``biglm consolidate``) writes one from the shards, on one process, for export,
``generate`` and ``evaluate``; ``read_sharded_model_state`` gives the same weights in memory.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from biglm.checkpoint import all_finite, read_meta, resolve_checkpoint, verify_checkpoint, write_checkpoint
from biglm.config import ModelConfig
from biglm.configurable import save_yaml
from biglm.errors import BiglmError
from biglm.files import new_temp_folder, temp_folder
from biglm.loaders import load_tokenizer_folder
from biglm.outputs import CHECKPOINT, check_output
from biglm.train.checkpointing import CONFIG, TRAINER_STATE, checkpoint_dir, prune_checkpoints, weights_to_save

STATE = "state"
"""The DCP folder inside a sharded checkpoint (``.metadata`` and one ``__<rank>_0.distcp`` per rank)."""
MODEL_PREFIX = "model."


def is_sharded_checkpoint(folder: Path) -> bool:
    return (Path(folder) / STATE / ".metadata").is_file()


def _state_dicts(model: nn.Module, optimizer: torch.optim.Optimizer) -> tuple[dict[str, Any], dict[str, Any]]:
    from torch.distributed.checkpoint.state_dict import get_state_dict

    return get_state_dict(model, optimizer)


def _local_finite(state: Any) -> bool:
    """True when this rank's tensors (its shards) hold no NaN/Inf."""
    if isinstance(state, dict):
        return all(_local_finite(v) for v in state.values())
    if isinstance(state, list | tuple):
        return all(_local_finite(v) for v in state)
    if isinstance(state, torch.Tensor):
        local = state.to_local() if hasattr(state, "to_local") else state
        return all_finite(local)
    return True


@dataclass
class PendingSave:
    """An asynchronous save: shards being written in the background; ``finish`` (collective) waits for them
    and lets rank 0 complete the folder. Until then the checkpoint is a ``.tmp-`` folder, never used."""

    future: Any
    finalize: Callable[[], None]

    def finish(self) -> None:
        self.future.result()
        self.finalize()


_ASYNC_GROUP: list[Any] = []


def _async_group() -> Any:
    """A gloo group of all ranks for the background writes' coordination, apart from training's collectives."""
    if not (dist.is_available() and dist.is_initialized()):
        return None
    if not _ASYNC_GROUP:
        _ASYNC_GROUP.append(dist.new_group(backend="gloo"))
    return _ASYNC_GROUP[0]


def write_shards(folder: Path, model: nn.Module, optimizer: torch.optim.Optimizer, *, is_main: bool,
                 write_rest: Any, asynchronous: bool = False) -> PendingSave | None:
    """Collective: every rank writes its shards into ``.tmp-<folder>/state``; then rank 0 calls
    ``write_rest(prepared=("state",))`` to finish the folder (``biglm.checkpoint.write_checkpoint``).

    Non-finite weights or optimizer state on any rank stop the save on every rank (``BiglmError``) before
    anything is written. ``asynchronous``: the state is copied to CPU memory now and written by a background
    thread; the returned ``PendingSave`` must be finished (on every rank) before the next save or the end.
    """
    import torch.distributed.checkpoint as dcp

    distributed = dist.is_available() and dist.is_initialized()
    tmp = temp_folder(folder)
    model_sd, optim_sd = _state_dicts(model, optimizer)
    finite = torch.tensor([float(_local_finite(model_sd) and _local_finite(optim_sd))])
    if distributed:
        dist.all_reduce(finite, op=dist.ReduceOp.MIN)
    if not finite.item():
        raise BiglmError(f"{folder}: weights or optimizer state hold NaN or Inf values; not saved (the run has "
                         "diverged)")
    if is_main:
        new_temp_folder(folder)
    if distributed:
        dist.barrier()
    state = {"model": model_sd, "optimizer": optim_sd}

    def finalize(group: Any = None) -> None:
        if distributed:
            dist.barrier(group=group)  # every rank's shards are on disk before rank 0 checksums them
        if is_main:
            write_rest(prepared=(STATE,))
        if distributed:
            dist.barrier(group=group)

    if asynchronous:
        group = _async_group()
        future = dcp.async_save(state, checkpoint_id=str(tmp / STATE), process_group=group, no_dist=not distributed)
        return PendingSave(future, lambda: finalize(group))
    dcp.save(state, checkpoint_id=str(tmp / STATE), no_dist=not distributed)
    finalize()
    return None


def save_sharded_checkpoint(run_dir: Path, step: int, model: nn.Module, optimizer: torch.optim.Optimizer,
                            model_config: ModelConfig, tokenizer: Any, trainer_state: dict[str, Any],
                            run_config: dict[str, Any], keep_last: int, is_main: bool,
                            asynchronous: bool = False) -> PendingSave | None:
    """Collective: ``checkpoints/step_<step>`` with weights and optimizer state sharded by rank
    (``write_shards``), finished atomically by rank 0, then pruned to ``keep_last``. Returns the
    ``PendingSave`` of an ``asynchronous`` save (None otherwise)."""
    folder = checkpoint_dir(run_dir, step)
    extra = {TRAINER_STATE: lambda p: torch.save(trainer_state, p), CONFIG: lambda p: save_yaml(run_config, p)}
    meta = {"tokens_seen": trainer_state.get("tokens_seen", 0), "sharded": True}

    def write_rest(prepared: tuple[str, ...]) -> None:
        write_checkpoint(folder, None, model_config, tokenizer, step, extra=extra, meta=meta, prepared=prepared)
        prune_checkpoints(run_dir, keep_last)

    return write_shards(folder, model, optimizer, is_main=is_main, write_rest=write_rest, asynchronous=asynchronous)


def load_sharded_checkpoint(folder: Path, model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
    """Collective: load weights and AdamW state from ``folder/state`` into this rank's (re)sharding."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import set_state_dict

    model_sd, optim_sd = _state_dicts(model, optimizer)
    state = {"model": model_sd, "optimizer": optim_sd}
    distributed = dist.is_available() and dist.is_initialized()
    dcp.load(state, checkpoint_id=str(Path(folder) / STATE), no_dist=not distributed)
    set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optimizer"])


def read_sharded_model_state(folder: Path, config: ModelConfig) -> dict[str, torch.Tensor]:
    """The full weights of a sharded checkpoint, read on one process (no process group needed)."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint import FileSystemReader
    from torch.distributed.checkpoint.metadata import TensorStorageMetadata

    reader = FileSystemReader(str(Path(folder) / STATE))
    metadata = reader.read_metadata()
    state = {k: torch.empty(m.size, dtype=m.properties.dtype) for k, m in metadata.state_dict_metadata.items()
             if k.startswith(MODEL_PREFIX) and isinstance(m, TensorStorageMetadata)}
    if not state:
        raise BiglmError(f"{folder / STATE}: holds no model weights")
    dcp.load(state, storage_reader=reader, no_dist=True)
    weights = {k[len(MODEL_PREFIX):]: v for k, v in state.items()}
    if config.tie_embeddings:
        weights["lm_head.weight"] = weights["model.embed_tokens.weight"]
    return weights


def consolidate_checkpoint(folder: str | Path, out: str | Path | None = None, force: bool = False) -> Path:
    """Write the single-file model checkpoint (``model.safetensors``, config, tokenizer) of a sharded
    training checkpoint (or a run folder's newest): into ``out`` (a new checkpoint folder; an existing
    checkpoint is replaced only with ``force``, see ``biglm.outputs``), or, without ``out``, into the checkpoint
    itself, which then loads everywhere a full checkpoint does (its shards stay, for ``--resume``)."""
    given = Path(folder)
    folder = resolve_checkpoint(given)
    if out is not None:
        check_output(out, CHECKPOINT, [given, folder], force=force)
    if not is_sharded_checkpoint(folder):
        raise BiglmError(f"{folder}: not a sharded checkpoint (no {STATE}/.metadata)")
    verify_checkpoint(folder)
    meta = read_meta(folder)
    config = ModelConfig.from_file(folder / "model_config.yaml")
    weights = weights_to_save(read_sharded_model_state(folder, config), config)
    tokenizer = load_tokenizer_folder(folder / "tokenizer") if (folder / "tokenizer").is_dir() else None
    keep = {k: v for k, v in meta.items() if k not in ("format_version", "step", "files", "integrity")
            and not k.startswith("meta_")}
    if out is not None:
        extra = {CONFIG: _copier(folder / CONFIG)} if (folder / CONFIG).is_file() else {}
        return write_checkpoint(Path(out), weights, config, tokenizer, meta.get("step", 0), extra=extra, meta=keep)
    # In place: the same folder plus the weights file, rewritten atomically like any checkpoint.
    shutil.copytree(folder / STATE, new_temp_folder(folder) / STATE)
    extra = {name: _copier(folder / name) for name in (TRAINER_STATE, CONFIG) if (folder / name).exists()}
    return write_checkpoint(folder, weights, config, tokenizer, meta.get("step", 0), extra=extra, meta=keep,
                            prepared=(STATE,))


def _copier(src: Path) -> Any:
    return lambda dst: shutil.copyfile(src, dst)
