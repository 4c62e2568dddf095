"""Building the model a run trains: fresh, from ``train.init_from`` or from given full weights (a model grown
by ``train.growth``), parallelised as configured (``biglm.train.parallel``). Used by the set-up
(``biglm.train.setup``) and by the growth hook (``biglm.train.growth``), which rebuilds the model mid-run.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

from biglm.checkpoint import check_state_dict
from biglm.model import BiGLM
from biglm.sizes import check_memory
from biglm.train import checkpointing as ckpt
from biglm.train.checkpointer import read_model_state
from biglm.train.loop import TrainerConfig
from biglm.train.parallel import DistEnv, is_sharded, parallelize


def initial_weights(cfg: TrainerConfig, path: Path, quiet: bool = False) -> dict[str, torch.Tensor]:
    """The full state dict to start from (``train.init_from``): task heads the checkpoint lacks (e.g. a length
    head added for fine-tuning) start freshly initialised and heads this model does not have are dropped,
    each with a note. (Resuming a run's own checkpoint is the checkpointer's, strict.)"""
    state = read_model_state(path, cfg.model)
    with torch.device("meta"):
        expected = BiGLM(cfg.model).state_dict()
    is_head = lambda k: not k.startswith(("model.", "lm_head."))
    missing = sorted({k.split(".")[0] for k in set(expected) - set(state) if is_head(k)})
    extra = sorted({k.split(".")[0] for k in set(state) - set(expected) if is_head(k)})
    if missing or extra:
        fresh = BiGLM(cfg.model).state_dict()
        state = {k: v for k, v in state.items() if k in expected}
        state.update({k: v for k, v in fresh.items() if k not in state and is_head(k)})
        what = [f"{', '.join(missing)} initialised fresh"] if missing else []
        what += [f"{', '.join(extra)} dropped"] if extra else []
        if not quiet:
            print(f"note: starting from {path}: {'; '.join(what)}", file=sys.stderr)
    with torch.device("meta"):
        check_state_dict(state, BiGLM(cfg.model), path / "model.safetensors")
    return state


def build_model(cfg: TrainerConfig, env: DistEnv, weights_from: Path | None,
                state: dict[str, torch.Tensor] | None = None,
                initialise: bool = True) -> tuple[BiGLM, torch.nn.Module]:
    """The model, parallelised, with initial weights or those of ``weights_from`` (``train.init_from``), or the
    full ``state`` given (on rank 0 when sharded: a model grown during training). ``initialise=False`` leaves a
    sharded model's weights unset, for a caller that loads them (the checkpointer, on resume). Returns
    (model, module to train)."""
    sharded = is_sharded(cfg.train, env)
    params = cfg.model.num_parameters()
    check_memory(params * 4, f"building the model ({params:,} parameters in float32)")
    torch.manual_seed(cfg.train.seed)
    if not sharded:
        model = BiGLM(cfg.model)
        if weights_from is not None:
            state = initial_weights(cfg, weights_from, quiet=not env.is_main)
        if state is not None:
            model.load_state_dict(state)
        return model, parallelize(model, cfg.train, env)
    # FSDP2: every rank shards a meta model; rank 0 holds the full initial (or saved) weights on CPU
    # and broadcasts them shard by shard, so the start equals a single-device run with the same seed.
    load = initialise or weights_from is not None or state is not None
    full: dict[str, torch.Tensor] = {}
    if env.is_main and load:
        full = state if state is not None else (
            initial_weights(cfg, weights_from) if weights_from else BiGLM(cfg.model).state_dict())
    with torch.device("meta"):
        model = BiGLM(cfg.model)
    train_model = parallelize(model, cfg.train, env)
    model.model.rotary.reset_parameters()  # non-persistent buffer: recompute after to_empty
    if load:
        ckpt.load_model_state(model, full, sharded=True)
    return model, train_model
