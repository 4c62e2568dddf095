"""Training metrics: ``metrics.jsonl``, TensorBoard, a progress bar (null objects on other ranks), and
the FLOPs / peak-FLOP/s arithmetic behind MFU."""

from __future__ import annotations

import json
import math
import os
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import torch

from biglm.config import ModelConfig
from biglm.files import atomic_write_text


class MetricsLogger(Protocol):
    def log(self, step: int, metrics: dict[str, float]) -> None: ...
    def close(self) -> None: ...


class NullLogger:
    """Logs nothing (ranks other than 0, or a disabled backend)."""

    def log(self, step: int, metrics: dict[str, float]) -> None:
        pass

    def close(self) -> None:
        pass


def json_line(row: dict[str, Any]) -> str:
    """One metrics row as strict JSON: NaN and ±Inf (absent or non-finite values) become ``null``."""
    clean = {k: None if isinstance(v, float) and not math.isfinite(v) else v for k, v in row.items()}
    return json.dumps(clean, allow_nan=False)


class JsonlLogger:
    """Appends one JSON object per call to ``path`` (``{"step": ..., **metrics}``), flushed at once."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.file = open(path, "a")  # noqa: SIM115 - closed in close()

    def log(self, step: int, metrics: dict[str, float]) -> None:
        self.file.write(json_line({"step": step, **metrics}) + "\n")
        self.file.flush()

    def close(self) -> None:
        self.file.close()


class TensorBoardLogger:
    """Scalars under ``train/`` (and ``val/`` for keys starting with ``val_``)."""

    def __init__(self, log_dir: Path) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(str(log_dir))

    def log(self, step: int, metrics: dict[str, float]) -> None:
        for key, value in metrics.items():
            tag = f"val/{key[4:]}" if key.startswith("val_") else f"train/{key}"
            self.writer.add_scalar(tag, value, step)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


class MultiLogger:
    """Fans every call out to several loggers."""

    def __init__(self, *loggers: MetricsLogger) -> None:
        self.loggers = loggers

    def log(self, step: int, metrics: dict[str, float]) -> None:
        for logger in self.loggers:
            logger.log(step, metrics)

    def close(self) -> None:
        for logger in self.loggers:
            logger.close()


def read_metrics_file(path: Path) -> tuple[list[dict[str, Any]], list[int]]:
    """The rows of a ``metrics.jsonl`` and the numbers of its damaged lines (not a JSON object with an
    integer ``step``: a line cut by a crash mid-write, or an edit)."""
    rows, bad = [], []
    for n, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            row = None
        if isinstance(row, dict) and isinstance(row.get("step"), int):
            rows.append(row)
        else:
            bad.append(n)
    return rows, bad


def truncate_metrics(path: Path, last_step: int, note: Callable[[str], None] | None = None) -> None:
    """Drop rows after ``last_step`` (written by a run that died after its last checkpoint) and damaged
    lines (with a note through ``note``, default stderr); the file is rewritten atomically as strict JSON."""
    if not path.is_file():
        return
    rows, bad = read_metrics_file(path)
    if bad:
        (note or _stderr)(f"note: {path}: dropped {len(bad)} damaged line(s) (first: line {bad[0]}), as left by a "
                          "crash mid-write or an edit")
    atomic_write_text(path, "".join(json_line(r) + "\n" for r in rows if r["step"] <= last_step))


def _stderr(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


class Progress:
    """A tqdm bar over optimizer steps showing loss, tokens/s and (tqdm's) ETA; ``enabled=False`` is silent."""

    def __init__(self, total: int, initial: int, enabled: bool, desc: str = "pretrain") -> None:
        self.bar = None
        if enabled:
            from tqdm import tqdm

            self.bar = tqdm(total=total, initial=initial, unit="step", dynamic_ncols=True, desc=desc)

    def update(self, metrics: dict[str, float] | None = None) -> None:
        if self.bar is None:
            return
        self.bar.update(1)
        if metrics:
            self.bar.set_postfix(loss=f"{metrics['loss']:.4f}", tok_s=f"{metrics['tokens_per_s']:.0f}",
                                 refresh=False)

    def write(self, text: str) -> None:
        if self.bar is not None:
            self.bar.write(text)
        else:
            print(text, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def flops_per_token(config: ModelConfig, seq_len: int, logits_fraction: float = 1.0) -> float:
    """Training FLOPs (forward + backward) per token of a packed row of ``seq_len`` tokens.

    ``6·N + 12·L·H·T + 6·V·H·f`` where ``N`` is the non-embedding parameter count (each weight costs 2
    FLOPs per token forward and 4 backward), ``12·L·H·T`` the attention scores and weighted sum (``QKᵀ``
    and ``AV``: 2·2·T·H FLOPs per token and layer forward, ×3 with the backward) over a full-attention row
    of length ``T`` with hidden size ``H`` (grouped-query attention shares K/V but not these products),
    and ``6·V·H·f`` the LM head over the vocabulary ``V`` evaluated at a fraction ``f`` of the positions:
    BiGLM computes logits only at masked tokens (``logits_mask``), so ``f`` is the masked fraction
    (about 0.35 for the paper's objective) instead of 1. Norms, RoPE, softmax and the loss are ignored
    (the usual convention, as in the PaLM MFU definition).
    """
    h, layers, vocab = config.hidden_size, config.num_layers, config.vocab_size
    embedding = vocab * h * (1 if config.tie_embeddings else 2)
    non_embedding = config.num_parameters() - embedding
    return 6.0 * non_embedding + 12.0 * layers * h * seq_len + 6.0 * vocab * h * logits_fraction


# Dense bf16 tensor-core peaks (no sparsity) in FLOP/s.
GPU_PEAK_BF16 = {"H200": 989e12, "H100 SXM": 989e12, "H100 NVL": 835e12, "H100 PCIe": 756e12, "H100": 989e12,
                 "A100": 312e12, "L40S": 362e12, "A10G": 125e12, "L4": 121e12}

_CACHE = Path(os.environ.get("BIGLM_CACHE", Path.home() / ".cache" / "biglm")) / "peak_flops.json"


def peak_flops(device: torch.device, dtype: torch.dtype, configured: float | None = None) -> float:
    """Peak FLOP/s of one device: ``configured`` if given; the table for CUDA bf16; else a measured
    matmul peak. The probe runs 1.5 s the first time on a machine (per device name, threads and dtype)
    and 0.5 s on later runs; the best value ever seen is kept in ``~/.cache/biglm/peak_flops.json``, so a
    probe taken while other jobs load the machine does not lower the peak (and inflate MFU) for good."""
    if configured:
        return configured
    if device.type == "cuda" and dtype == torch.bfloat16:
        name = torch.cuda.get_device_name(device)
        for key, value in GPU_PEAK_BF16.items():
            if key in name:
                return value
    key = f"{_device_name(device)}|threads={torch.get_num_threads()}|{dtype}|torch={torch.__version__}"
    cache: dict[str, float] = {}
    if _CACHE.is_file():
        try:
            cache = json.loads(_CACHE.read_text())
        except (OSError, json.JSONDecodeError):
            cache = {}
    measured = measure_matmul_peak(device, dtype, seconds=0.5 if key in cache else 1.5)
    if measured > cache.get(key, 0.0):
        cache[key] = measured
        try:
            _CACHE.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_text(_CACHE, json.dumps(cache, indent=1))
        except OSError:
            pass
    return cache[key]


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "cpu"


def measure_matmul_peak(device: torch.device, dtype: torch.dtype = torch.float32, seconds: float = 1.5,
                        size: int | None = None) -> float:
    """FLOP/s of the best of a few timed square matmuls (2048² on CPU, 8192² on GPU) over ~``seconds``."""
    n = size or (8192 if device.type == "cuda" else 2048)
    g = torch.Generator(device=device).manual_seed(0)  # leaves the global RNG (dropout) untouched
    a = torch.randn(n, n, device=device, dtype=dtype, generator=g)
    b = torch.randn(n, n, device=device, dtype=dtype, generator=g)
    out = torch.empty(n, n, device=device, dtype=dtype)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    torch.mm(a, b, out=out)
    sync()
    best, deadline = 0.0, time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        start = time.perf_counter()
        reps = 0
        while reps == 0 or time.perf_counter() - start < seconds / 6:
            torch.mm(a, b, out=out)
            reps += 1
            if device.type == "cuda" and reps % 10 == 0:
                sync()
        sync()
        best = max(best, 2.0 * n**3 * reps / (time.perf_counter() - start))
    return best


def mfu(tokens_per_s: float, flops_token: float, peak: float, world_size: int = 1) -> float:
    """Model FLOPs utilisation: achieved model FLOP/s over the peak of all devices."""
    if peak <= 0 or not math.isfinite(tokens_per_s):
        return 0.0
    return tokens_per_s * flops_token / (peak * world_size)

