"""Distributed set-up, the collectives the trainer needs (barrier, sums, max, gather of objects) and the
wrapping of a plain ``BiGLM`` for training: activation checkpointing, ``torch.compile``, DDP or FSDP2.
The model code never sees any of it, and the training loop reaches ``torch.distributed`` only through here.

Launch (one node, N processes; the same command without torchrun trains on one device)::

    torchrun --nproc_per_node 8 -m biglm.cli pretrain --config configs/biglm-136m.yaml --out runs/136m

Several nodes (run on every node; ``--node_rank`` 0..NNODES-1, the rendezvous host is node 0)::

    torchrun --nnodes 8 --nproc_per_node 8 --node_rank $NODE_RANK \\
        --rdzv_backend c10d --rdzv_endpoint $MASTER_HOST:29500 --rdzv_id biglm-1.3b \\
        -m biglm.cli pretrain --config configs/biglm-1.3b.yaml --out /shared/runs/1.3b [--resume]

The run folder must be on a filesystem every node sees: rank 0 writes checkpoints and logs, and on
``--resume`` every rank reads the training state (with FSDP only rank 0 reads the weights and
optimizer state and broadcasts them; with ``train.checkpoint_format: sharded`` every rank writes and
reads its own shards). The backend is NCCL on CUDA and gloo on CPU.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.checkpoint import checkpoint

from biglm.devices import resolve_device
from biglm.errors import ConfigError
from biglm.model import BiGLM
from biglm.train.config import TrainConfig


@dataclass
class DistEnv:
    """Where this process sits: rank, world size, and its device."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def init_distributed(device: str = "auto") -> DistEnv:
    """Read torchrun's environment, pick the device and start the process group when WORLD_SIZE > 1."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if device == "auto":
        device = f"cuda:{local}" if torch.cuda.is_available() else "cpu"
    dev = resolve_device(device, "train.device")
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"train.device={device!r}: CUDA is not available on this machine")
        if dev.index is None:
            dev = torch.device("cuda", local)
        torch.cuda.set_device(dev)
    if world > 1 and not dist.is_initialized():
        backend = "nccl" if dev.type == "cuda" else "gloo"
        dist.init_process_group(backend, device_id=dev if dev.type == "cuda" else None)
    return DistEnv(rank, world, local, dev)


def is_sharded(cfg: TrainConfig, env: DistEnv) -> bool:
    """FSDP2 is used when configured and there is more than one rank (one rank trains unsharded)."""
    return cfg.parallel == "fsdp" and env.distributed


def close_distributed() -> None:
    """Let go of the process group (under torchrun); a no-op on one process."""
    if dist.is_initialized():
        dist.destroy_process_group()


def barrier(env: DistEnv) -> None:
    """Wait until every rank gets here (a no-op on one rank)."""
    if env.distributed:
        dist.barrier()


def _reduce_device(env: DistEnv) -> torch.device:
    """Where the backend wants the tensors of a collective (NCCL: the GPU; gloo: the CPU)."""
    return env.device if dist.get_backend() == "nccl" else torch.device("cpu")


def all_reduce_sum(values: list[float], env: DistEnv) -> list[float]:
    """Sum a few numbers over all ranks (float64 on the CPU/GPU the backend wants)."""
    if not env.distributed:
        return list(values)
    t = torch.tensor(values, dtype=torch.float64, device=_reduce_device(env))
    dist.all_reduce(t)
    return t.tolist()


def all_reduce_max(value: float, env: DistEnv) -> float:
    """The largest of one number over all ranks."""
    if not env.distributed:
        return value
    t = torch.tensor([value], dtype=torch.float64, device=_reduce_device(env))
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return float(t)


def all_gather_object(obj: Any, env: DistEnv) -> list[Any]:
    """Every rank's ``obj`` (picklable), in rank order."""
    if not env.distributed:
        return [obj]
    out: list[Any] = [None] * env.world_size
    dist.all_gather_object(out, obj)
    return out


def checkpoint_blocks(model: BiGLM) -> None:
    """Recompute every block's activations in the backward pass (non-reentrant ``torch.utils.checkpoint``).

    Only each block's ``forward`` attribute is replaced, so parameter names and the model's code stay as they are.
    """
    for block in model.model.layers:
        inner = block.forward

        def forward(x, rope, mask, past=None, _inner=inner):  # type: ignore[no-untyped-def]
            return checkpoint(_inner, x, rope, mask, past, use_reentrant=False)

        block.forward = forward


def parallelize(model: BiGLM, cfg: TrainConfig, env: DistEnv, shard: bool | None = None) -> nn.Module:
    """Apply activation checkpointing, per-block ``torch.compile`` and DDP/FSDP2 as configured.

    For FSDP the model may be on the meta device: it is sharded, then materialised (uninitialised) on
    ``env.device``; load weights with ``biglm.train.checkpointing.load_model_state``. ``shard=True``
    applies FSDP2 even on one rank (an initialised process group is needed; e.g. the GPU check).
    Returns the module to call for training (the DDP wrapper, or the model itself).
    """
    if cfg.compile and model.config.attn_backend == "flex" and env.device.type == "cpu":
        raise ConfigError("train.compile=true with model.attn_backend=flex on CPU: torch has no compiled "
                          "FlexAttention backward for CPU; set train.compile false or model.attn_backend sdpa")
    if cfg.activation_checkpointing:
        checkpoint_blocks(model)
    if cfg.compile:
        for block in model.model.layers:
            block.compile()
    if shard if shard is not None else is_sharded(cfg, env):
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

        mesh = init_device_mesh(env.device.type, (env.world_size,))
        mp = MixedPrecisionPolicy(param_dtype=autocast_dtype(cfg, env.device), reduce_dtype=torch.float32)
        for block in model.model.layers:
            fully_shard(block, mesh=mesh, mp_policy=mp)
        fully_shard(model, mesh=mesh, mp_policy=mp)
        model.to_empty(device=env.device)
        return model
    model.to(env.device)
    if env.distributed:
        from torch.nn.parallel import DistributedDataParallel

        ids = [env.device.index] if env.device.type == "cuda" else None
        return DistributedDataParallel(model, device_ids=ids, forward_sync_buffers=False)
    return model


@contextlib.contextmanager
def gradient_sync(model: nn.Module, enabled: bool) -> Iterator[None]:
    """Skip the gradient all-reduce/reduce-scatter of a micro-step that is not the last of a step."""
    if enabled:
        yield
    elif hasattr(model, "no_sync"):  # DDP
        with model.no_sync():
            yield
    elif hasattr(model, "set_requires_gradient_sync"):  # FSDP2
        model.set_requires_gradient_sync(False)
        try:
            yield
        finally:
            model.set_requires_gradient_sync(True)
    else:
        yield


def autocast_dtype(cfg: TrainConfig, device: torch.device) -> torch.dtype:
    """The compute dtype: ``precision: auto`` is bf16 on CUDA and fp32 elsewhere (CPUs lack fast bf16)."""
    if cfg.precision == "bf16" or (cfg.precision == "auto" and device.type == "cuda"):
        return torch.bfloat16
    return torch.float32


def autocast(cfg: TrainConfig, device: torch.device) -> contextlib.AbstractContextManager:
    """``torch.autocast`` to bf16 when configured, otherwise a no-op context."""
    dtype = autocast_dtype(cfg, device)
    if dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)
