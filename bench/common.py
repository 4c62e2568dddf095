"""Pieces the benchmark scripts share: the same-shape transformers peer, one training step, interleaved
best-of timing, a forward-pass counter and the machine description written into every results JSON.

The scripts run as ``python bench/NAME.py``, which puts this folder on ``sys.path``: they ``import common``.
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from biglm.config import ModelConfig
from biglm.train.config import TrainConfig
from biglm.train.optim import build_optimizer


def llama_like(cfg: ModelConfig, *, bos_token_id: int | None = None, eos_token_id: int | None = None,
               pad_token_id: int | None = None) -> torch.nn.Module:
    """transformers' ``LlamaForCausalLM`` of ``cfg``'s shape (layers, hidden size, heads, KV heads, SwiGLU
    inner size, vocabulary, tied embeddings, RoPE base, norm epsilon, init std) with SDPA attention."""
    from transformers import LlamaConfig, LlamaForCausalLM

    lc = LlamaConfig(vocab_size=cfg.vocab_size, hidden_size=cfg.hidden_size, intermediate_size=cfg.intermediate_size,
                     num_hidden_layers=cfg.num_layers, num_attention_heads=cfg.num_heads,
                     num_key_value_heads=cfg.num_kv_heads, max_position_embeddings=cfg.max_seq_len,
                     rms_norm_eps=cfg.norm_eps, rope_theta=cfg.rope_theta, tie_word_embeddings=True,
                     attention_dropout=0.0, initializer_range=cfg.init_std, bos_token_id=bos_token_id,
                     eos_token_id=eos_token_id, pad_token_id=pad_token_id)
    lc._attn_implementation = "sdpa"
    return LlamaForCausalLM(lc)


def make_step(model: torch.nn.Module, loss_fn: Callable[[], torch.Tensor], device: torch.device,
              dtype: torch.dtype = torch.float32) -> Callable[[], float]:
    """One optimizer step as the trainer takes it: ``loss_fn()`` forward (autocast unless fp32), backward,
    gradient clipping at 1.0 and AdamW with the trainer's parameter groups. Returns the loss."""
    opt = build_optimizer(model, TrainConfig())
    ctx = (lambda: torch.autocast(device.type, dtype=dtype)) if dtype != torch.float32 else None

    def step() -> float:
        if ctx is None:
            loss = loss_fn()
        else:
            with ctx():
                loss = loss_fn()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize()
        return float(loss.detach())

    return step


def best_of(fns: dict[str, Callable[[], Any]], repeats: int, warmup: bool = True) -> dict[str, tuple[float, Any]]:
    """Best (minimum) wall time of each function over ``repeats`` interleaved runs after one warm-up
    each (``warmup=False``: none, for runs of minutes), and its last result. Interleaving and the minimum
    keep the comparison fair on a shared machine: other load only ever adds time."""
    results = {name: fn() for name, fn in fns.items()} if warmup else {}
    best = dict.fromkeys(fns, float("inf"))
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            results[name] = fn()
            best[name] = min(best[name], time.perf_counter() - start)
    return {name: (best[name], results[name]) for name in fns}


class PassCounter:
    """Counts forward calls of a module."""

    def __init__(self, module: torch.nn.Module) -> None:
        self.count = 0
        module.register_forward_hook(lambda *_: setattr(self, "count", self.count + 1))


def tokens_per_second(row: dict[str, Any], timing: dict[str, tuple[float, Any]], tokens: int, ours: str,
                      peer: str = "transformers") -> dict[str, Any]:
    """``row`` with each timed entry's seconds and tokens/s (``tokens`` generated per call) and the
    speed-up ``ours`` / ``peer``."""
    for key, (sec, _) in timing.items():
        row[f"{key}_s"] = sec
        row[f"{key}_tok_s"] = tokens / sec
    row["speedup"] = row[f"{ours}_tok_s"] / row[f"{peer}_tok_s"]
    return row


def machine_info(device: str = "cpu") -> dict[str, Any]:
    """What a reader needs to judge a timing: processor, cores, threads, versions, load, OpenMP policy."""
    import transformers

    name = torch.cuda.get_device_name() if device.startswith("cuda") else platform.processor() or platform.machine()
    return dict(device=device, machine=name, cpu_count=os.cpu_count(), threads=torch.get_num_threads(),
                torch=torch.__version__, transformers=transformers.__version__, python=platform.python_version(),
                omp_wait_policy=os.environ.get("OMP_WAIT_POLICY"),
                load_average=[round(x, 2) for x in os.getloadavg()])


def generation_args(description: str, results: Path) -> argparse.Namespace:
    """The decoding benchmarks' flags (``--quick``, ``--threads``, ``--prompt``, ``--new``, ``--out``), parsed,
    with torch's thread count set."""
    ap = argparse.ArgumentParser(description=description)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--prompt", type=int, default=128)
    ap.add_argument("--new", type=int, default=64)
    ap.add_argument("--out", type=Path, default=results)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    return args
