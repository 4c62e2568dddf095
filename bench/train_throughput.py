"""Training-step throughput of biglm against transformers' ``LlamaForCausalLM`` of the same shape.

One optimizer step = forward, backward, gradient clipping and AdamW (the trainer's parameter groups) on
one micro-batch, fp32 (``--dtype bf16`` autocasts on CUDA). biglm runs a BiGLM-objective batch with
prefix-blind attention over packed documents and logits only at the masked positions, as the trainer
does; Llama runs the causal-LM loss over every position with ``attn_implementation="sdpa"`` (layers,
hidden size, heads, KV heads, SwiGLU inner size, vocabulary and tied embeddings identical). The two
models' steps alternate, so a change in machine load hits both alike. On a shared machine the fastest
step of each model is the least disturbed one: tokens/s and MFU use the best step (medians are in the
JSON too), and the peak is the best of two matmul probes (before and after).

MFU = tokens/s × FLOPs per token / peak, with FLOPs per token from ``biglm.train.metrics.flops_per_token``
(6N + 12·L·H·T + 6·V·H·f, f = the fraction of positions with logits: the masked fraction for biglm, 1 for
Llama) and the peak a square fp32 matmul measured in the same run (or the bf16 table on CUDA).

    python bench/train_throughput.py            # 136M (4 × 512) and tiny (4 × 512) shapes
    python bench/train_throughput.py --quick    # fewer timed steps
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch

from biglm.config import ModelConfig
from biglm.model import BiGLM
from biglm.objectives import MaskedLMCriterion, ObjectiveConfig, build_objective
from biglm.train.batches import ObjectiveBatcher, RowSeeds
from biglm.train.metrics import flops_per_token, measure_matmul_peak, peak_flops
from biglm.train.streams import SyntheticRows
from common import llama_like, make_step

RESULTS = Path(__file__).parent / "results" / "train_throughput.json"


def bench_shape(name: str, batch: int, seq_len: int, steps: int, device: torch.device, dtype: torch.dtype) -> dict:
    cfg = ModelConfig.from_preset(name)
    torch.manual_seed(0)
    rows = SyntheticRows(seq_len, cfg.vocab_size - 1, doc_len=(seq_len // 4, 2 * seq_len), motif_len=(64, 256))
    raw = next(rows.batches(batch))
    objective = build_objective(ObjectiveConfig(), cfg.vocab_size - 1, cfg.vocab_size)
    b = ObjectiveBatcher(objective)(raw, RowSeeds(0, 0)).to(device)
    criterion = MaskedLMCriterion()
    masked = b.num_targets / b.input_ids.numel()

    ours = BiGLM(cfg).to(device)
    def ours_loss() -> torch.Tensor:
        return criterion(ours, b).terms["mlm"] / max(b.num_targets, 1)

    ours_step = make_step(ours, ours_loss, device, dtype)
    ids = raw["input_ids"].to(device)
    theirs = llama_like(cfg).to(device)
    theirs_step = make_step(theirs, lambda: theirs(input_ids=ids, labels=ids).loss, device, dtype)

    times: dict[str, list[float]] = {"biglm": [], "llama": []}
    for i in range(steps + 1):  # the first round warms up (allocator, kernels) and is not timed
        for key, fn in (("biglm", ours_step), ("llama", theirs_step)):
            t = time.perf_counter()
            fn()
            if i:
                times[key].append(time.perf_counter() - t)
    tokens = batch * seq_len
    out = {"model": name, "batch": batch, "seq_len": seq_len, "params": cfg.num_parameters(),
           "masked_fraction": masked}
    for key, frac in (("biglm", masked), ("llama", 1.0)):
        sec, med = min(times[key]), statistics.median(times[key])
        fpt = flops_per_token(cfg, seq_len, frac)
        out[key] = {"step_s": sec, "tokens_per_s": tokens / sec, "flops_per_token": fpt, "mfu": 0.0,
                    "median_tokens_per_s": tokens / med, "step_times": times[key]}
    out["speedup"] = out["biglm"]["tokens_per_s"] / out["llama"]["tokens_per_s"]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="1 timed step per model instead of 2 (136M) / 6 (tiny)")
    ap.add_argument("--dtype", choices=["fp32", "bf16"], default="fp32")
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = torch.bfloat16 if args.dtype == "bf16" else torch.float32
    probe = measure_matmul_peak(device, torch.float32, seconds=2.0)
    shapes = [("biglm-136m", 4, 512, 1 if args.quick else 2), ("tiny", 4, 512, 3 if args.quick else 6)]
    results = [bench_shape(n, b, t, s, device, dtype) for n, b, t, s in shapes]
    probe_after = measure_matmul_peak(device, torch.float32, seconds=2.0)
    peak = max(probe, probe_after) if dtype == torch.float32 else peak_flops(device, dtype)
    for r in results:
        for key in ("biglm", "llama"):
            r[key]["mfu"] = r[key]["tokens_per_s"] * r[key]["flops_per_token"] / peak
    report = {"device": torch.cuda.get_device_name() if device.type == "cuda" else platform.processor() or "cpu",
              "threads": torch.get_num_threads(), "torch": torch.__version__, "dtype": args.dtype,
              "matmul_peak_fp32_flops": probe, "matmul_peak_fp32_flops_after": probe_after, "peak_flops": peak,
              "shapes": results}
    print(f"matmul peak (square fp32, before/after): {probe / 1e9:.1f} / {probe_after / 1e9:.1f} GFLOP/s; "
          f"{report['threads']} threads, torch {torch.__version__}")
    print(f"{'shape':<12}{'B×T':>9}{'masked':>8}{'biglm tok/s':>13}{'MFU':>7}{'llama tok/s':>13}{'MFU':>7}"
          f"{'speedup':>9}")
    for r in results:
        print(f"{r['model']:<12}{r['batch']:>4}×{r['seq_len']:<4}{r['masked_fraction']:>8.2f}"
              f"{r['biglm']['tokens_per_s']:>13.0f}{r['biglm']['mfu']:>7.1%}{r['llama']['tokens_per_s']:>13.0f}"
              f"{r['llama']['mfu']:>7.1%}{r['speedup']:>8.2f}×")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
