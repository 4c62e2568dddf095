"""Benchmark non-autoregressive generation (random weights; speed only, not quality).

(a) the exact prefix cache: Mask-Predict (T=10) with and without it, prompts of 128 and 512 tokens,
    L = 32, 64, 128, on the demo model's shape (``tiny``);
(b) Mask-Predict (T=10, L=64, prompt 128) against transformers' ``generate()`` with a KV cache on a
    same-shape ``LlamaForCausalLM`` (sdpa, greedy, exactly 64 new tokens), same prompts, at several
    batch sizes, for the ``tiny`` and ``biglm-136m`` shapes: generated tokens/s, forward passes per
    generated token (counted with a forward hook) and the batch size from which autoregressive
    decoding is at least as fast.

    python bench/generate.py            # full run (several minutes on 2 CPU cores)
    python bench/generate.py --quick    # tiny run, under a minute

Prints tables and writes ``bench/results/generate.json``.
"""

from __future__ import annotations

import os

# On a shared machine, spinning OpenMP workers waiting at barriers for a descheduled sibling make timings
# swing tenfold; passive waiting keeps them steady (set OMP_WAIT_POLICY yourself to override).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse
import json
import platform
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from biglm import BiGLM, ModelConfig
from biglm.devices import model_device
from biglm.generate import encode_prefix, generate_ids, suffix_logits
from common import PassCounter, best_of, llama_like

BOS, EOS, MASK, PAD = 1, 2, 3, 0
STEPS = 10


def biglm_model(shape: str, device: str) -> BiGLM:
    torch.manual_seed(0)
    return BiGLM(ModelConfig.from_preset(shape, max_seq_len=2048)).eval().to(device)


def prompts_for(batch: int, length: int, vocab: int) -> list[list[int]]:
    g = torch.Generator().manual_seed(1234)
    return torch.randint(8, vocab - 64, (batch, length), generator=g).tolist()


def nar(model: BiGLM, prompts: list[list[int]], new_tokens: int, cache: bool) -> Callable[[], Any]:
    return lambda: generate_ids(model, prompts, bos_token_id=BOS, eos_token_id=EOS, mask_token_id=MASK,
                                max_new_tokens=new_tokens, steps=STEPS, prefix_cache=cache)


def max_logit_diff(model: BiGLM, prompts: list[list[int]], new_tokens: int) -> float:
    """Largest |cached - uncached| logit over one pass on a half-masked suffix."""
    g = torch.Generator().manual_seed(0)
    tokens = torch.randint(8, model.config.vocab_size - 64, (len(prompts), new_tokens), generator=g)
    tokens[:, ::2] = MASK
    tokens = tokens.to(model_device(model))
    active = torch.ones_like(tokens, dtype=torch.bool)
    prefixes = [[BOS, *p] for p in prompts]
    with torch.inference_mode():
        cached = suffix_logits(model, encode_prefix(model, prefixes, use_cache=True), tokens, active)
        full = suffix_logits(model, encode_prefix(model, prefixes, use_cache=False), tokens, active)
    return float((cached.float() - full.float()).abs().max())


def bench_cache(args: argparse.Namespace) -> list[dict[str, Any]]:
    model = biglm_model("tiny", args.device)
    rows = []
    for batch in args.cache_batches:
        for prompt_len in args.prompt_lengths:
            for new in args.lengths:
                prompts = prompts_for(batch, prompt_len, model.config.vocab_size)
                timing = best_of({"cached": nar(model, prompts, new, True),
                                  "uncached": nar(model, prompts, new, False)}, args.repeats)
                (t_cached, out), (t_full, out_full) = timing["cached"], timing["uncached"]
                rows.append(dict(shape="tiny", batch=batch, prompt=prompt_len, L=new, T=STEPS,
                                 cached_s=t_cached, uncached_s=t_full, speedup=t_full / t_cached,
                                 passes_cached=out.forward_passes, passes_uncached=out_full.forward_passes,
                                 max_logit_diff=max_logit_diff(model, prompts, new),
                                 same_tokens=out.full_token_ids == out_full.full_token_ids))
                print(f"  batch {batch:3d}  prompt {prompt_len:4d}  L {new:4d}  cached {t_cached:7.3f}s  "
                      f"uncached {t_full:7.3f}s  x{t_full / t_cached:5.2f}", flush=True)
    return rows


def peer(config: ModelConfig, device: str) -> torch.nn.Module:
    torch.manual_seed(0)
    return llama_like(config, bos_token_id=BOS, eos_token_id=EOS, pad_token_id=PAD).eval().to(device)


def bench_vs_autoregressive(args: argparse.Namespace, shape: str, batches: list[int]) -> dict[str, Any]:
    model = biglm_model(shape, args.device)
    llama = peer(model.config, args.device)
    nar_passes, ar_passes = PassCounter(model), PassCounter(llama)
    new, rows = 64, []
    for batch in batches:
        prompts = prompts_for(batch, 128, model.config.vocab_size)
        ids = torch.tensor([[BOS, *p] for p in prompts], device=args.device)

        def ar(ids: torch.Tensor = ids) -> torch.Tensor:
            with torch.inference_mode():
                return llama.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=new,
                                      min_new_tokens=new, do_sample=False, use_cache=True, pad_token_id=PAD)

        nar_passes.count = ar_passes.count = 0
        timing = best_of({"nar": nar(model, prompts, new, True), "ar": ar}, args.repeats)
        (t_nar, out), (t_ar, seq) = timing["nar"], timing["ar"]
        per_run_nar = nar_passes.count / (args.repeats + 1)
        per_run_ar = ar_passes.count / (args.repeats + 1)
        assert seq.shape[1] - ids.shape[1] == new and out.lengths[0] == new
        row = dict(shape=shape, batch=batch, prompt=128, L=new, T=STEPS,
                   nar_s=t_nar, nar_tok_s=batch * new / t_nar, nar_passes_per_token=per_run_nar / new,
                   ar_s=t_ar, ar_tok_s=batch * new / t_ar, ar_passes_per_token=per_run_ar / new)
        rows.append(row)
        print(f"  {shape:10s} batch {batch:3d}  mask-predict {row['nar_tok_s']:8.1f} tok/s "
              f"({row['nar_passes_per_token']:.3f} passes/token)  autoregressive {row['ar_tok_s']:8.1f} tok/s "
              f"({row['ar_passes_per_token']:.3f})", flush=True)
    catch_up = next((r["batch"] for r in rows if r["ar_tok_s"] >= r["nar_tok_s"]), None)
    return dict(shape=shape, params=model.num_parameters(), rows=rows, ar_catches_up_at_batch=catch_up)


def print_tables(results: dict[str, Any]) -> None:
    print("\n(a) exact prefix cache, Mask-Predict T=10, tiny shape")
    print(f"{'batch':>5} {'prompt':>7} {'L':>5} {'cached s':>9} {'uncached s':>11} {'speedup':>8} {'passes':>7} "
          f"{'max |dlogit|':>12} {'same ids':>8}")
    for r in results["cache"]:
        print(f"{r['batch']:>5} {r['prompt']:>7} {r['L']:>5} {r['cached_s']:>9.3f} {r['uncached_s']:>11.3f} "
              f"{r['speedup']:>7.2f}x {r['passes_cached']:>3}/{r['passes_uncached']:<3} "
              f"{r['max_logit_diff']:>12.1e} {r['same_tokens']!s:>8}")
    print("  (random weights: greedy ids can differ where two positions' confidences tie to float rounding,\n"
          "   which reorders Mask-Predict's re-masking; the logits agree, see max |dlogit|)")
    print("\n(b) Mask-Predict (T=10, L=64, prompt 128) vs autoregressive generate() with KV cache")
    print(f"{'shape':>11} {'batch':>5} {'NAR tok/s':>10} {'AR tok/s':>9} {'NAR/AR':>7} "
          f"{'NAR pass/tok':>12} {'AR pass/tok':>11}")
    for part in results["vs_autoregressive"]:
        for r in part["rows"]:
            print(f"{r['shape']:>11} {r['batch']:>5} {r['nar_tok_s']:>10.1f} {r['ar_tok_s']:>9.1f} "
                  f"{r['nar_tok_s'] / r['ar_tok_s']:>6.2f}x {r['nar_passes_per_token']:>12.3f} "
                  f"{r['ar_passes_per_token']:>11.3f}")
        at = part["ar_catches_up_at_batch"]
        measured = max(r["batch"] for r in part["rows"])
        print(f"{'':>11} autoregressive catches up at batch: "
              f"{at if at is not None else f'not within {measured}'}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny run: fewer sizes, one timing each")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default=None,
                        help="JSON file (default bench/results/generate.json, generate_quick.json with --quick)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    args.repeats = 2 if args.quick else 3
    args.cache_batches = [4] if args.quick else [1, 8]
    args.prompt_lengths = [128] if args.quick else [128, 512]
    args.lengths = [32, 64] if args.quick else [32, 64, 128]
    shapes = {"tiny": [1, 4]} if args.quick else {"tiny": [1, 2, 4, 8, 16, 32], "biglm-136m": [1, 2, 4, 8]}
    load = os.getloadavg()
    print("(a) prefix cache", flush=True)
    results: dict[str, Any] = {"cache": bench_cache(args)}
    print("(b) vs autoregressive", flush=True)
    results["vs_autoregressive"] = [bench_vs_autoregressive(args, s, b) for s, b in shapes.items()]
    import transformers

    results["env"] = dict(device=args.device, threads=args.threads, torch=torch.__version__,
                          transformers=transformers.__version__, machine=platform.processor() or platform.machine(),
                          cpu_count=os.cpu_count(), load_average_start=load, load_average_end=os.getloadavg(),
                          omp_wait_policy=os.environ.get("OMP_WAIT_POLICY"), quick=args.quick,
                          repeats=args.repeats)
    print_tables(results)
    results_dir = Path(__file__).parent / "results"
    out = Path(args.out or results_dir / ("generate_quick.json" if args.quick else "generate.json"))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2))
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
