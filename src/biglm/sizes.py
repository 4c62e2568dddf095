"""What building a model will cost, known before anything is allocated: the parameters a config implies,
the parameters a weights file holds (read from its safetensors header alone) and the memory available.

A config from someone else's file (``model_config.yaml``, an imported ``config.json``) is checked against
its weights before a model is built, so ``num_layers: 1000000000000`` is one line at once rather than a
process growing until the machine gives out; the weights' bytes are checked against the memory available
before they are read.
"""

from __future__ import annotations

import math
import os
import struct
from dataclasses import dataclass
from pathlib import Path

from biglm.config import ModelConfig
from biglm.errors import BiglmError
from biglm.textio import parse_json

DTYPE_BYTES = {"BOOL": 1, "U8": 1, "I8": 1, "F8_E5M2": 1, "F8_E4M3": 1, "I16": 2, "U16": 2, "F16": 2,
               "BF16": 2, "I32": 4, "U32": 4, "F32": 4, "F64": 8, "I64": 8, "U64": 8}
"""Bytes per element of the safetensors dtypes."""
MAX_HEADER = 100 << 20
"""The largest safetensors header the format allows (100 MB)."""


@dataclass(frozen=True)
class WeightsSize:
    """What a weights file holds: ``parameters`` (elements; for a format without a readable header, an upper
    bound: its bytes) and ``nbytes`` (what reading it allocates)."""

    parameters: int
    nbytes: int


def safetensors_size(path: str | os.PathLike) -> WeightsSize:
    """The tensors' total elements and bytes from a safetensors file's header (the data is not read).

    A one-line ``BiglmError`` naming the file when the header is cut short, is not the format's JSON, or
    declares tensors whose shapes, dtypes and offsets disagree or lie beyond the file's end.
    """
    path = Path(path)
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise _damaged(path, f"{size} bytes, too short for a safetensors header")
        (length,) = struct.unpack("<Q", head)
        if length > min(MAX_HEADER, size - 8):
            raise _damaged(path, f"its header claims {length:,} bytes of a {size:,}-byte file")
        try:
            header = parse_json(f.read(length), "header")
        except BiglmError as e:
            raise _damaged(path, str(e)) from None
    if not isinstance(header, dict):
        raise _damaged(path, "its header is not a JSON object")
    data = size - 8 - length
    parameters = nbytes = 0
    spans = []
    for name, info in header.items():
        if name == "__metadata__":
            continue
        shape, offsets = (info.get("shape"), info.get("data_offsets")) if isinstance(info, dict) else (None, None)
        dtype = info.get("dtype") if isinstance(info, dict) else None
        ints = lambda v, n=None: isinstance(v, list) and (n is None or len(v) == n) and all(
            isinstance(x, int) and not isinstance(x, bool) and x >= 0 for x in v)
        if not isinstance(dtype, str) or dtype not in DTYPE_BYTES or not ints(shape) or not ints(offsets, 2):
            raise _damaged(path, f"tensor {str(name)[:60]!r} has no valid dtype, shape and data_offsets")
        numel = math.prod(shape)
        begin, end = offsets
        if not begin <= end <= data or end - begin != numel * DTYPE_BYTES[dtype]:
            raise _damaged(path, f"tensor {str(name)[:60]!r} of shape {str(tuple(shape))[:60]} does not fit its bytes "
                                 f"{begin:,}..{end:,} of {data:,}")
        parameters += numel
        nbytes += end - begin
        spans.append((begin, end))
    # As the format requires (and its reader checks): the tensors' bytes follow one another and fill the data.
    at = 0
    for begin, end in sorted(spans):
        if begin != at:
            raise _damaged(path, f"tensor data {'overlaps' if begin < at else 'leaves a gap'} at byte {begin:,}")
        at = end
    if at != data:
        raise _damaged(path, f"the tensors cover {at:,} of the {data:,} data bytes")
    return WeightsSize(parameters, nbytes)


def _damaged(path: Path, detail: str) -> BiglmError:
    return BiglmError(f"{path}: cannot be read, truncated or damaged ({detail})")


def weights_size(path: str | os.PathLike) -> WeightsSize:
    """``safetensors_size`` of a ``.safetensors`` file; for another format (a ``.bin`` pickle, a sharded
    state's folder) its bytes bound both numbers (every parameter takes at least one byte)."""
    path = Path(path)
    if path.suffix == ".safetensors":
        return safetensors_size(path)
    files = [p for p in path.rglob("*") if p.is_file()] if path.is_dir() else [path]
    total = sum(p.stat().st_size for p in files)
    return WeightsSize(total, total)


SLACK = 1 << 20
"""Parameters a config may imply beyond twice what its weights hold before ``check_parameters`` refuses it."""


def check_parameters(config: ModelConfig, held: WeightsSize, config_where: str, weights_where: str) -> None:
    """Refuse (one line) a config that implies far more parameters than its weights hold (more than twice as
    many, plus ``SLACK``): building it would only fail later, after allocating what it describes. A smaller
    difference (a tensor missing) is left to the exact per-tensor check, whose message names the tensor."""
    needed = config.num_parameters()
    if needed > 2 * held.parameters + SLACK:
        raise BiglmError(f"{config_where}: describes a model of {needed:,} parameters (num_layers={config.num_layers}, "
                         f"hidden_size={config.hidden_size}, vocab_size={config.vocab_size}), but {weights_where} "
                         f"holds {held.parameters:,}: config and weights do not belong together")


def available_memory() -> int | None:
    """Bytes of memory available to allocate now (Linux ``MemAvailable``; else free physical pages), or None
    where neither is known."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, ValueError, OSError):
        return None


def check_memory(nbytes: int, what: str) -> None:
    """Refuse (one line) to allocate ``nbytes`` for ``what`` when more than the available memory."""
    free = available_memory()
    if free is not None and nbytes > free:
        raise BiglmError(f"{what}: needs {nbytes / 2**30:,.1f} GiB of memory, {free / 2**30:,.1f} GiB is available")
