"""Training step of biglm's autoregressive objectives against transformers' ``LlamaForCausalLM`` of the same
shape, in the same run.

One optimizer step = forward, backward, clipping and AdamW on one micro-batch, fp32. biglm runs a batch
made by its objective from packed rows (``causal``: next-token prediction; ``bidirectional-ar``: half of
the pieces reversed and read from EOS), per-document causal attention, logits at the target positions;
Llama runs its causal-LM loss over the same token rows (``attn_implementation="sdpa"``; identical layers,
sizes, heads, vocabulary and tied embeddings). Both do the same work per token, so ``causal`` should be
at least level. ``bidirectional-ar`` costs the same per token as ``causal`` plus its data transform
(measured separately, per step, as it runs in the trainer's prefetch thread). Steps alternate between
the models so machine load hits all alike; tokens/s use each model's fastest step (medians in the JSON).

    python bench/ar_train_throughput.py            # tiny (4 × 512) and 136M (2 × 512) shapes
    python bench/ar_train_throughput.py --quick
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch

from biglm.config import ModelConfig
from biglm.model import BiGLM
from biglm.objectives import ObjectiveConfig, build_criterion, build_objective
from biglm.train.batches import ObjectiveBatcher, RowSeeds
from biglm.train.config import TrainConfig
from biglm.train.metrics import flops_per_token, measure_matmul_peak
from biglm.train.optim import build_optimizer
from biglm.train.streams import SyntheticRows

RESULTS = Path(__file__).parent / "results" / "ar_train_throughput.json"
PAD, BOS, EOS = 0, 2, 3


def llama_like(cfg: ModelConfig) -> torch.nn.Module:
    from transformers import LlamaConfig, LlamaForCausalLM

    lc = LlamaConfig(vocab_size=cfg.vocab_size, hidden_size=cfg.hidden_size, intermediate_size=cfg.intermediate_size,
                     num_hidden_layers=cfg.num_layers, num_attention_heads=cfg.num_heads,
                     num_key_value_heads=cfg.num_kv_heads, max_position_embeddings=cfg.max_seq_len,
                     rms_norm_eps=cfg.norm_eps, rope_theta=cfg.rope_theta, tie_word_embeddings=True,
                     attention_dropout=0.0, initializer_range=cfg.init_std)
    lc._attn_implementation = "sdpa"
    return LlamaForCausalLM(lc)


def make_step(model: torch.nn.Module, loss_fn):
    opt = build_optimizer(model, TrainConfig())

    def step() -> float:
        loss = loss_fn()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return float(loss.detach())

    return step


def rows_for(cfg: ModelConfig, batch: int, seq_len: int) -> dict[str, torch.Tensor]:
    """Packed rows of ``BOS doc EOS`` documents (a few per row, some cut at the row ends)."""
    rows = SyntheticRows(seq_len, cfg.vocab_size - 1, doc_len=(seq_len // 4, seq_len), motif_len=(64, 256))
    raw = next(rows.batches(batch))
    ids, docs = raw["input_ids"].clone(), raw["document_ids"]
    start = torch.ones_like(docs, dtype=torch.bool)
    start[:, 1:] = docs[:, 1:] != docs[:, :-1]
    end = torch.ones_like(docs, dtype=torch.bool)
    end[:, :-1] = docs[:, 1:] != docs[:, :-1]
    ids[start] = BOS
    ids[end] = EOS
    ids[:, 0] = 100  # the first piece continues a document from the previous row
    return {"input_ids": ids, "document_ids": docs}


def bench_shape(name: str, batch: int, seq_len: int, steps: int) -> dict:
    cfg = ModelConfig.from_preset(name, family="bidirectional-ar")
    torch.manual_seed(0)
    raw = rows_for(cfg, batch, seq_len)
    specials = {"pad": PAD, "bos": BOS, "eos": EOS, "mask": 1}
    batches, transform_s = {}, {}
    for objective in ("causal", "bidirectional-ar"):
        obj = build_objective(ObjectiveConfig.from_preset(objective), 1, cfg.vocab_size, specials)
        t = time.perf_counter()
        for _ in range(5):
            batches[objective] = ObjectiveBatcher(obj)(raw, RowSeeds(0, 0))
        transform_s[objective] = (time.perf_counter() - t) / 5

    models, steps_fn = {}, {}
    for objective in ("causal", "bidirectional-ar"):
        models[objective] = BiGLM(cfg)
        b = batches[objective]

        criterion = build_criterion(ObjectiveConfig.from_preset(objective))

        def loss(m=models[objective], b=b, criterion=criterion) -> torch.Tensor:
            return criterion(m, b).terms["next_token"] / max(b.num_targets, 1)

        steps_fn[objective] = make_step(models[objective], loss)
    ids = raw["input_ids"]
    llama = llama_like(cfg)
    steps_fn["llama"] = make_step(llama, lambda: llama(input_ids=ids, labels=ids).loss)
    times: dict[str, list[float]] = {k: [] for k in steps_fn}
    for i in range(steps + 1):  # the first round warms up and is not timed
        for key, fn in steps_fn.items():
            t = time.perf_counter()
            fn()
            if i:
                times[key].append(time.perf_counter() - t)
    tokens = batch * seq_len
    out = {"model": name, "batch": batch, "seq_len": seq_len, "params": cfg.num_parameters()}
    for key, ts in times.items():
        frac = batches[key].num_targets / tokens if key in batches else 1.0
        out[key] = {"step_s": min(ts), "tokens_per_s": tokens / min(ts),
                    "median_tokens_per_s": tokens / statistics.median(ts), "target_fraction": frac,
                    "flops_per_token": flops_per_token(cfg, seq_len, frac),
                    "data_transform_s": transform_s.get(key, 0.0), "step_times": ts}
    for key in ("causal", "bidirectional-ar"):
        out[key]["speedup_vs_llama"] = out[key]["tokens_per_s"] / out["llama"]["tokens_per_s"]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer timed steps")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    peak = measure_matmul_peak(torch.device("cpu"), torch.float32, seconds=2.0)
    shapes = [("tiny", 4, 512, 3 if args.quick else 8), ("biglm-136m", 2, 512, 1 if args.quick else 5)]
    results = [bench_shape(*s) for s in shapes]
    for r in results:
        for key in ("causal", "bidirectional-ar", "llama"):
            r[key]["mfu"] = r[key]["tokens_per_s"] * r[key]["flops_per_token"] / peak
    print(f"matmul peak {peak / 1e9:.1f} GFLOP/s fp32, {args.threads} threads, load {os.getloadavg()[0]:.1f}")
    print(f"{'shape':<12}{'B×T':>9}{'causal tok/s':>14}{'bi-AR tok/s':>13}{'Llama tok/s':>13}{'causal/Llama':>14}"
          f"{'bi-AR/Llama':>13}{'bi-AR transform':>17}")
    for r in results:
        c, b, llama = r["causal"], r["bidirectional-ar"], r["llama"]
        print(f"{r['model']:<12}{r['batch']:>4}×{r['seq_len']:<4}{c['tokens_per_s']:>14.0f}{b['tokens_per_s']:>13.0f}"
              f"{llama['tokens_per_s']:>13.0f}{c['speedup_vs_llama']:>13.2f}×{b['speedup_vs_llama']:>12.2f}×"
              f"{b['data_transform_s'] * 1e3:>14.1f} ms")
    report = {"device": platform.processor() or "cpu", "threads": args.threads, "torch": torch.__version__,
              "matmul_peak_fp32_flops": peak, "load_avg_1min": os.getloadavg()[0], "shapes": results}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
