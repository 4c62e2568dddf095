"""The on-disk checkpoint format shared by training, generation, evaluation and export.

A checkpoint is a folder::

    model.safetensors      weights (tied weights stored once, under model.embed_tokens.weight)
    model_config.yaml      the ModelConfig
    tokenizer/             a Hugging Face tokenizer folder (with [MASK])
    meta.json              {"format_version", "step", "files": [...], "integrity": {...}}; written last
    (training state: optimizer.pt, trainer_state.pt, config.yaml — see biglm.train)

A run folder holds ``checkpoints/step_XXXXXXXX``. Folders are written under a temporary name and
renamed into place; ``meta.json`` records the size and xxHash3-128 checksum of every file it covers
(``integrity``), and weights holding NaN or Inf are never written. ``verify_checkpoint`` checks a folder
against its record, and that the model its config describes fits the weights it holds (read from the
safetensors header, before anything is built); ``resolve_checkpoint`` and ``load_model`` given a run folder
take its newest intact checkpoint and say which newer ones they skipped and why.

Format versions: 2 (``FORMAT_VERSION``) always carries the integrity record, so a format-2 ``meta.json``
without one was replaced or edited and is refused. Format 1 was written before the record existed: such a
checkpoint gets structural checks instead (each file's structure, the weights' finiteness) and a note that
its contents are unverified. A ``meta.json`` without a format version was never written by biglm: refused.
"""

from __future__ import annotations

import json
import sys
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from biglm.config import ModelConfig
from biglm.configurable import save_yaml
from biglm.devices import resolve_device
from biglm.errors import BiglmError
from biglm.files import HASH_NAME, atomic_file, bytes_digest, file_digest, install_folder, new_temp_folder
from biglm.loaders import load_tokenizer_folder
from biglm.model import BiGLM
from biglm.sizes import check_memory, check_parameters, safetensors_size, weights_size
from biglm.textio import parse_json

FORMAT_VERSION = 2
"""2: ``meta.json`` carries the integrity record (required). 1: written before it (structural checks)."""
MODEL_FORMAT_VERSION = 1
"""The layout of the weights and the model config (what exports record as ``biglm_format_version``): format 2
changed ``meta.json`` alone, so an exported folder reads the same in a biglm of either."""
CHECKPOINTS = "checkpoints"
WEIGHTS = "model.safetensors"
MODEL_FILES = (WEIGHTS, "model_config.yaml", "tokenizer")
"""What ``load_model`` reads: only these are verified before loading a model for inference."""
Note = Callable[[str], None]


class CheckpointError(BiglmError):
    """A checkpoint folder that is incomplete (its save never finished) or damaged; names the file."""

    def __init__(self, folder: Path, problem: str, incomplete: bool = False) -> None:
        self.folder, self.problem, self.incomplete = Path(folder), problem, incomplete
        super().__init__(f"{folder}: {problem}")


def stderr_note(text: str) -> None:
    """The default ``note``: one line on stderr."""
    print(text, file=sys.stderr, flush=True)


def all_finite(tensor: torch.Tensor) -> bool:
    """No NaN or Inf in ``tensor``. Any such value makes the sum non-finite, so a finite sum settles it at
    memory speed (20x faster than ``isfinite().all()`` on a CPU core); only an overflowing sum of finite
    values takes the exact test."""
    if not tensor.is_floating_point() or tensor.numel() == 0:
        return True
    return bool(torch.isfinite(tensor.sum())) or bool(torch.isfinite(tensor).all())


def check_finite(tensors: Any, where: Path | str) -> None:
    """Raise ``BiglmError`` naming the first floating-point tensor (in nested dicts/lists) holding NaN or Inf."""
    stack: list[tuple[str, Any]] = [("", tensors)]
    while stack:
        name, value = stack.pop()
        if isinstance(value, dict):
            stack.extend((f"{name}.{k}" if name else str(k), v) for k, v in value.items())
        elif isinstance(value, list | tuple):
            stack.extend((f"{name}[{i}]", v) for i, v in enumerate(value))
        elif isinstance(value, torch.Tensor) and not all_finite(value):
            raise BiglmError(f"{where}: tensor '{name}' holds NaN or Inf values; refusing to write it "
                             "(the model has diverged)")


def _records(folder: Path) -> dict[str, dict[str, Any]]:
    """Size and checksum of every file under ``folder`` (paths relative to it), meta.json excepted."""
    out = {}
    for f in sorted(p for p in folder.rglob("*") if p.is_file() and p.name != "meta.json"):
        out[f.relative_to(folder).as_posix()] = {"size": f.stat().st_size, HASH_NAME: file_digest(f)}
    return out


# Folders verified in this process, keyed by path and every file's size and mtime: pruning re-checks the
# kept checkpoints at every save, and hashing them all again each time would cost as much as writing them.
_VERIFIED: set[tuple] = set()


def _cache_key(folder: Path, files: list[str]) -> tuple:
    stats = [(folder / f).stat() for f in ("meta.json", *files)]
    return (str(folder.resolve()), *((st.st_size, st.st_mtime_ns, st.st_ino) for st in stats))


def _meta_digest(meta: dict[str, Any]) -> str:
    """Checksum of meta.json's own content (all but this field), so that damage to it is caught too."""
    body = {k: v for k, v in meta.items() if k != "meta_" + HASH_NAME}
    return bytes_digest(json.dumps(body, sort_keys=True).encode())


def verify_checkpoint(folder: str | Path, only: tuple[str, ...] | None = None) -> dict[str, Any]:
    """Check that a checkpoint folder is whole and undamaged; return its ``meta.json``.

    Raises ``CheckpointError`` naming the file and what is wrong (no ``meta.json``, one not written by biglm,
    a listed file missing or unrecorded, a size or checksum that differs from the record, a model config
    describing more parameters than the weights hold), and ``BiglmError`` for a format newer than this
    biglm. Format-1 checkpoints (written before the ``integrity`` record) get structural checks instead:
    the safetensors header and data, the zip structure (with CRCs) of ``.pt`` files, the YAML files, and
    finite weights. ``only`` restricts the check to these files and folders (``MODEL_FILES``: what
    loading the model reads), so that damaged training state does not hide intact weights.
    """
    folder = Path(folder)
    meta = read_meta(folder)
    wanted = (lambda rel: True) if only is None else (lambda rel: rel in only or rel.startswith(
        tuple(o.rstrip("/") + "/" for o in only)))
    files = [f for f in meta["files"] if wanted(f)]
    missing = [f for f in files if not (folder / f).exists()]
    if missing:
        raise CheckpointError(folder, f"incomplete, missing {', '.join(missing)}", incomplete=True)
    unlisted = [f for f in MODEL_FILES if wanted(f) and f not in meta["files"] and (folder / f).exists()]
    if unlisted:
        raise CheckpointError(folder, f"{unlisted[0]} is not among the files meta.json lists: added after the save, "
                                      "or meta.json was edited")
    if "integrity" not in meta:  # format 1
        _check_structure(folder, files)
        _check_model_size(folder, wanted)
        return meta
    record = {rel: rec for rel, rec in meta["integrity"]["files"].items() if wanted(rel)}
    if meta.get("meta_" + HASH_NAME) != _meta_digest(meta):
        raise CheckpointError(folder, "meta.json does not match its checksum: damaged")
    unrecorded = [f for f in files if f not in record and not any(r.startswith(f + "/") for r in record)]
    if unrecorded:
        raise CheckpointError(folder, f"{unrecorded[0]} has no size and checksum in meta.json's record: damaged")
    try:
        key = _cache_key(folder, list(record))
    except OSError:
        key = None  # a file is missing: reported below
    if key in _VERIFIED:
        return meta
    for rel, rec in record.items():
        path = folder / rel
        if not path.is_file():
            raise CheckpointError(folder, f"{rel} is missing")
        size = path.stat().st_size
        if size != rec["size"]:
            raise CheckpointError(folder, f"{rel} has {size:,} bytes where {rec['size']:,} were written: "
                                          "truncated or damaged")
        if file_digest(path) != rec[HASH_NAME]:
            raise CheckpointError(folder, f"{rel} does not match its checksum: damaged")
    _check_model_size(folder, wanted)
    _VERIFIED.add(_cache_key(folder, list(record)))
    return meta


def _check_model_size(folder: Path, wanted: Callable[[str], bool]) -> None:
    """The model ``model_config.yaml`` describes must fit the weights beside it (their safetensors header, or a
    sharded state's bytes): checked before any caller builds it, so a config that would allocate without end
    (``num_layers: 1000000000000``) is one line."""
    config_path = folder / "model_config.yaml"
    if not wanted(config_path.name) or not config_path.is_file():
        return
    try:
        config = ModelConfig.from_file(config_path)
    except BiglmError as e:
        raise CheckpointError(folder, f"model_config.yaml: {str(e).removeprefix(f'{config_path}: ')}") from None
    if wanted(WEIGHTS) and (folder / WEIGHTS).is_file():
        source = WEIGHTS
    elif wanted("state") and (folder / "state").is_dir():
        source = "state"
    else:
        return
    try:
        check_parameters(config, weights_size(folder / source), "model_config.yaml", source)
    except BiglmError as e:
        raise CheckpointError(folder, str(e).replace(f"{folder / source}: ", f"{source}: ")) from None


def verify_model(folder: str | Path) -> dict[str, Any]:
    """``verify_checkpoint`` of the files a model is loaded from (``MODEL_FILES``)."""
    return verify_checkpoint(folder, only=MODEL_FILES)


def _check_structure(folder: Path, files: list[str]) -> None:
    """The checks for a checkpoint without an integrity record (format 1, written by an earlier biglm)."""
    import yaml

    names = [n for n in files if (folder / n).is_file()]
    for name in names:
        path = folder / name
        try:
            if name.endswith(".safetensors"):
                safetensors_size(path)  # its header describes what the file holds, before it is read
                state = load_file(str(path))
                for tensor, value in state.items():
                    if not all_finite(value):
                        raise CheckpointError(folder, f"{name}: tensor '{tensor}' holds NaN or Inf values: "
                                                      "the run had diverged")
            elif name.endswith(".pt"):
                with zipfile.ZipFile(path) as z:
                    bad = z.testzip()
                if bad is not None:
                    raise CheckpointError(folder, f"{name} is damaged: member {bad} fails its CRC")
            elif name.endswith(".yaml") and not isinstance(yaml.safe_load(path.read_text()), dict):
                raise CheckpointError(folder, f"{name} is empty or not a mapping: damaged")
        except CheckpointError:
            raise
        except (BiglmError, SafetensorError, zipfile.BadZipFile, yaml.YAMLError, UnicodeDecodeError, OSError,
                EOFError, ValueError, RecursionError) as e:
            msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise CheckpointError(folder, f"{name} cannot be read, damaged: {msg}") from None


def checkpoint_folders(run_dir: Path) -> list[Path]:
    """The ``checkpoints/step_*`` folders of a run, oldest first, whatever their state."""
    root = Path(run_dir) / CHECKPOINTS
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if p.is_dir() and p.name.startswith("step_"))


def newest_intact(run_dir: Path, check: Callable[[Path], Any] = verify_checkpoint
                  ) -> tuple[Path | None, list[CheckpointError]]:
    """The newest checkpoint of ``run_dir`` that passes ``check``, and the problems of the newer ones."""
    skipped: list[CheckpointError] = []
    for folder in reversed(checkpoint_folders(run_dir)):
        try:
            check(folder)
        except CheckpointError as e:
            skipped.append(e)
            continue
        return folder, skipped
    return None, skipped


def is_intact(folder: Path) -> bool:
    """True when ``verify_checkpoint`` passes."""
    try:
        verify_checkpoint(folder)
    except CheckpointError:
        return False
    return True


def resolve_checkpoint(path: str | Path, note: Note | None = None,
                       check: Callable[[Path], Any] = verify_checkpoint) -> Path:
    """A verified checkpoint folder from a run folder (its newest intact checkpoint) or a checkpoint folder.

    Newer checkpoints of a run folder that fail ``check`` are skipped with a one-line note each through
    ``note`` (default: stderr); a checkpoint folder that fails it, or a run folder with no intact
    checkpoint, is a one-line ``BiglmError`` naming the file.
    """
    path = Path(path)
    note = note or stderr_note
    if not path.exists():
        raise BiglmError(f"{path}: no such checkpoint or run folder")
    if (path / CHECKPOINTS).is_dir():
        found, skipped = newest_intact(path, check)
        if found is None:
            if not skipped:
                raise BiglmError(f"{path}: run folder has no checkpoint under {CHECKPOINTS}/")
            raise BiglmError(f"{path}: no intact checkpoint; the newest, {skipped[0]}")
        for e in skipped:
            note(f"note: skipping checkpoint {e.folder.name} ({e.problem}); using {found.name}")
        return found
    if not (path / "meta.json").is_file() and not (path / WEIGHTS).is_file():
        raise BiglmError(f"{path}: not a checkpoint (no meta.json) and not a run folder (no {CHECKPOINTS}/)")
    check(path)
    _note_unverified(path, note)
    return path


_NOTED: set[Path] = set()


def _note_unverified(folder: Path, note: Note) -> None:
    """Say once per folder that a format-1 checkpoint (no integrity record) was only checked for structure."""
    if folder.resolve() in _NOTED or "integrity" in read_meta(folder):
        return
    _NOTED.add(folder.resolve())
    note(f"note: {folder}: checkpoint format 1, written before biglm recorded checksums: its files' structure "
         "was checked, their contents are unverified")


def _inside(rel: Any) -> bool:
    """A relative path that stays inside the checkpoint folder."""
    return isinstance(rel, str) and bool(rel) and not rel.startswith("/") and ".." not in rel.split("/")


def read_meta(folder: Path) -> dict[str, Any]:
    """A checkpoint's ``meta.json``, its form checked (the version, the file list, the integrity record: see
    the module docstring): ``CheckpointError`` naming what is wrong, ``BiglmError`` for a newer format."""
    folder = Path(folder)
    meta_path = folder / "meta.json"
    if not meta_path.is_file():
        raise CheckpointError(folder, "no meta.json: its save did not finish", incomplete=True)
    try:
        meta = parse_json(meta_path.read_bytes(), "meta.json")
    except BiglmError as e:
        raise CheckpointError(folder, f"{e}: damaged") from None
    if not isinstance(meta, dict):
        raise CheckpointError(folder, "meta.json is not a JSON object: damaged")
    version = meta.get("format_version")
    if version is None:
        raise CheckpointError(folder, "meta.json has no format_version: not written by biglm, or replaced")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise CheckpointError(folder, f"meta.json: format_version {repr(version)[:20]} is not one biglm writes: "
                                      "damaged")
    if version > FORMAT_VERSION:
        raise BiglmError(f"{folder}: checkpoint format version {version} is newer than this biglm "
                         f"understands ({FORMAT_VERSION}); upgrade biglm")
    step = meta.get("step", 0)
    if not isinstance(step, int) or isinstance(step, bool) or step < 0:
        raise CheckpointError(folder, f"meta.json: step {repr(step)[:20]} is not a step number: damaged")
    files = meta.get("files")
    if not isinstance(files, list) or not all(_inside(f) for f in files):
        raise CheckpointError(folder, "meta.json: 'files' is not a list of the checkpoint's file names: damaged")
    if "integrity" in meta or version >= 2:
        record = meta.get("integrity")
        if record is None:
            raise CheckpointError(folder, "meta.json has no integrity record (sizes and checksums), which every "
                                          f"format-{version} checkpoint carries: it was replaced or edited")
        entries = record.get("files") if isinstance(record, dict) else None
        if not isinstance(entries, dict) or not all(
                _inside(rel) and isinstance(rec, dict) and isinstance(rec.get("size"), int)
                and isinstance(rec.get(HASH_NAME), str) for rel, rec in entries.items()):
            raise CheckpointError(folder, "meta.json: its integrity record is malformed: damaged")
    return meta


def model_state_dict(model: BiGLM) -> dict[str, torch.Tensor]:
    """Weights to save: tied head dropped (it is the embedding), tensors contiguous on CPU."""
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    if model.config.tie_embeddings:
        state.pop("lm_head.weight", None)
    return state


def write_checkpoint(folder: Path, model_state: dict[str, torch.Tensor] | None, config: ModelConfig,
                     tokenizer: Any = None, step: int = 0,
                     extra: dict[str, Callable[[Path], None]] | None = None,
                     meta: dict[str, Any] | None = None, prepared: tuple[str, ...] = ()) -> Path:
    """Write a checkpoint atomically: into ``.tmp-<name>``, then rename to ``folder``.

    ``extra`` maps file names to writers (called with the full path) for training state. Weights holding
    NaN or Inf are refused (``BiglmError``) before anything is written. ``prepared`` names files or folders
    already written into ``temp_folder(folder)`` (a sharded state, written by every rank): they are kept and
    recorded like the rest. ``model_state`` None writes no weights file (a sharded checkpoint).
    """
    folder = Path(folder)
    if model_state is not None:
        check_finite(model_state, folder / WEIGHTS)
    tmp = new_temp_folder(folder, keep=bool(prepared))
    files = list(prepared)
    if model_state is not None:
        save_file(model_state, str(tmp / WEIGHTS), metadata={"format": "pt"})
        files.append(WEIGHTS)
    save_yaml(config, tmp / "model_config.yaml")
    files.append("model_config.yaml")
    if tokenizer is not None:
        tokenizer.save_pretrained(str(tmp / "tokenizer"))
        files.append("tokenizer")
    for name, writer in (extra or {}).items():
        writer(tmp / name)
        files.append(name)
    records = _records(tmp)
    info = {"format_version": FORMAT_VERSION, "step": step, "files": files, **(meta or {}),
            "integrity": {"hash": HASH_NAME, "files": records}}
    info["meta_" + HASH_NAME] = _meta_digest(info)
    with atomic_file(tmp / "meta.json") as f:
        json.dump(info, f, indent=2)
    install_folder(folder)  # re-saving the same step: the old folder goes only once the new one is whole
    _VERIFIED.add(_cache_key(folder, list(records)))  # its records were just computed from the files on disk
    return folder


@dataclass
class LoadedModel:
    model: BiGLM
    config: ModelConfig
    tokenizer: Any
    path: Path
    meta: dict[str, Any]


def load_model(path: str | Path, device: str | torch.device = "cpu",
               dtype: torch.dtype | None = None, note: Note | None = None) -> LoadedModel:
    """Load the model (and tokenizer, if saved) from a checkpoint or run folder, in eval mode.

    The files it reads (``MODEL_FILES``) are verified first (``verify_checkpoint``); from a run folder,
    newer checkpoints where they are damaged or unfinished are skipped with a note (see
    ``resolve_checkpoint``). Damage to the training state alone (``optimizer.pt``, ...) does not stop
    inference from the newest weights; it does stop ``--resume`` from using that checkpoint.
    """

    device = resolve_device(device, "device")
    folder = resolve_checkpoint(path, note, check=verify_model)
    meta = read_meta(folder)
    try:
        config = ModelConfig.from_file(folder / "model_config.yaml")
    except BiglmError as e:
        raise BiglmError(f"{folder / 'model_config.yaml'}: {e}") from None
    if not (folder / WEIGHTS).is_file() and (folder / "state").is_dir():
        raise BiglmError(f"{folder}: a sharded training checkpoint without {WEIGHTS}; write it with "
                         f"`biglm consolidate {folder}`")
    if not (folder / WEIGHTS).is_file():
        raise BiglmError(f"{folder}: no {WEIGHTS}")
    # verify_model has checked that the config fits these weights; now that they fit in memory.
    check_memory(safetensors_size(folder / WEIGHTS).nbytes, f"loading {folder / WEIGHTS}")
    with torch.device("meta"):
        model = BiGLM(config)
    try:
        state = load_file(str(folder / WEIGHTS))
    except (SafetensorError, OSError) as e:
        raise BiglmError(f"{folder / WEIGHTS}: cannot be read, truncated or damaged ({str(e)[:160]})") from None
    check_state_dict(state, model, folder / WEIGHTS)
    model.load_state_dict(state, strict=False, assign=True)
    model.tie_weights()
    model.model.rotary.inv_freq = model.model.rotary._inv_freq()
    model = model.to(device=device, dtype=dtype)
    tokenizer = load_tokenizer_folder(folder / "tokenizer") if (folder / "tokenizer").is_dir() else None
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
