"""The on-disk checkpoint format shared by training, generation, evaluation and export.

A checkpoint is a folder::

    model.safetensors      weights (tied weights stored once, under model.embed_tokens.weight)
    model_config.yaml      the ModelConfig
    tokenizer/             a Hugging Face tokenizer folder (with [MASK])
    meta.json              {"format_version", "step", "files": [...]}; written last
    (training state: optimizer.pt, trainer_state.pt, config.yaml — see biglm.train)

A run folder holds ``checkpoints/step_XXXXXXXX``. Folders are written under a temporary name and
renamed into place, so a folder with a complete ``meta.json`` listing files that all exist is whole.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from biglm.config import ModelConfig
from biglm.configurable import save_yaml
from biglm.errors import BiglmError
from biglm.model import BiGLM

FORMAT_VERSION = 1
CHECKPOINTS = "checkpoints"


def is_complete(folder: Path) -> bool:
    """True when ``meta.json`` exists and every file it lists is present."""
    meta = folder / "meta.json"
    if not meta.is_file():
        return False
    try:
        files = json.loads(meta.read_text()).get("files", [])
    except json.JSONDecodeError:
        return False
    return all((folder / f).exists() for f in files)


def list_checkpoints(run_dir: Path) -> list[Path]:
    """Complete checkpoints of a run folder, oldest first."""
    root = run_dir / CHECKPOINTS
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if p.name.startswith("step_") and is_complete(p))


def resolve_checkpoint(path: str | Path) -> Path:
    """A checkpoint folder from a run folder (its newest complete checkpoint) or a checkpoint folder."""
    path = Path(path)
    if not path.exists():
        raise BiglmError(f"{path}: no such checkpoint or run folder")
    if (path / CHECKPOINTS).is_dir():
        found = list_checkpoints(path)
        if not found:
            raise BiglmError(f"{path}: run folder has no complete checkpoint under {CHECKPOINTS}/")
        return found[-1]
    if not (path / "meta.json").is_file():
        raise BiglmError(f"{path}: not a checkpoint (no meta.json) and not a run folder (no {CHECKPOINTS}/)")
    if not is_complete(path):
        missing = [f for f in json.loads((path / "meta.json").read_text()).get("files", [])
                   if not (path / f).exists()]
        raise BiglmError(f"{path}: incomplete checkpoint, missing {', '.join(missing)}")
    return path


def read_meta(folder: Path) -> dict[str, Any]:
    meta = json.loads((folder / "meta.json").read_text())
    version = meta.get("format_version", 0)
    if version > FORMAT_VERSION:
        raise BiglmError(f"{folder}: checkpoint format version {version} is newer than this biglm "
                         f"understands ({FORMAT_VERSION}); upgrade biglm")
    return meta


def model_state_dict(model: BiGLM) -> dict[str, torch.Tensor]:
    """Weights to save: tied head dropped (it is the embedding), tensors contiguous on CPU."""
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    if model.config.tie_embeddings:
        state.pop("lm_head.weight", None)
    return state


def write_checkpoint(folder: Path, model_state: dict[str, torch.Tensor], config: ModelConfig,
                     tokenizer: Any = None, step: int = 0,
                     extra: dict[str, Callable[[Path], None]] | None = None,
                     meta: dict[str, Any] | None = None) -> Path:
    """Write a checkpoint atomically: into ``.tmp-<name>``, then rename to ``folder``.

    ``extra`` maps file names to writers (called with the full path) for training state.
    """
    folder = Path(folder)
    tmp = folder.parent / f".tmp-{folder.name}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    save_file(model_state, str(tmp / "model.safetensors"), metadata={"format": "pt"})
    save_yaml(config, tmp / "model_config.yaml")
    files = ["model.safetensors", "model_config.yaml"]
    if tokenizer is not None:
        tokenizer.save_pretrained(str(tmp / "tokenizer"))
        files.append("tokenizer")
    for name, writer in (extra or {}).items():
        writer(tmp / name)
        files.append(name)
    info = {"format_version": FORMAT_VERSION, "step": step, "files": files, **(meta or {})}
    with open(tmp / "meta.json", "w") as f:
        json.dump(info, f, indent=2)
        f.flush()
        os.fsync(f.fileno())
    if folder.exists():  # re-saving the same step: replace the old folder only once the new one is whole
        old = folder.parent / f".old-{folder.name}"
        folder.rename(old)
        tmp.rename(folder)
        shutil.rmtree(old)
    else:
        tmp.rename(folder)
    return folder


@dataclass
class LoadedModel:
    model: BiGLM
    config: ModelConfig
    tokenizer: Any
    path: Path
    meta: dict[str, Any]


def load_model(path: str | Path, device: str | torch.device = "cpu",
               dtype: torch.dtype | None = None) -> LoadedModel:
    """Load the model (and tokenizer, if saved) from a checkpoint or run folder, in eval mode."""
    folder = resolve_checkpoint(path)
    meta = read_meta(folder)
    config = ModelConfig.from_file(folder / "model_config.yaml")
    with torch.device("meta"):
        model = BiGLM(config)
    state = load_file(str(folder / "model.safetensors"))
    check_state_dict(state, model, folder / "model.safetensors")
    model.load_state_dict(state, strict=False, assign=True)
    model.tie_weights()
    model.model.rotary.inv_freq = model.model.rotary._inv_freq()
    model = model.to(device=device, dtype=dtype)
    tokenizer = None
    if (folder / "tokenizer").is_dir():
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(str(folder / "tokenizer"))
    return LoadedModel(model.eval(), config, tokenizer, folder, meta)


def check_state_dict(state: dict[str, torch.Tensor], model: BiGLM, where: Path | str) -> None:
    """One-line errors for missing, unexpected or mis-shaped tensors."""
    expected = {k: v.shape for k, v in model.state_dict().items()}
    if model.config.tie_embeddings:
        expected.pop("lm_head.weight", None)
    for name, shape in expected.items():
        if name not in state:
            raise BiglmError(f"{where}: missing tensor '{name}' (expected shape {tuple(shape)})")
        if tuple(state[name].shape) != tuple(shape):
            raise BiglmError(f"{where}: tensor '{name}' has shape {tuple(state[name].shape)}, "
                             f"the model config expects {tuple(shape)}")
    unexpected = sorted(set(state) - set(expected) - {"lm_head.weight"})
    if unexpected:
        raise BiglmError(f"{where}: unexpected tensor '{unexpected[0]}' (and {len(unexpected) - 1} more)")
