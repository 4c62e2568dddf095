"""The GPU check: one CUDA GPU, under 8 minutes. Training throughput, MFU and peak memory of the paper's
presets at its row length, for both attention backends, and equality of the flex and reference backends.

Per preset (default ``biglm-136m`` and ``biglm-1.3b``) and backend (``sdpa``: dense mask, ``flex``: block
mask), a training step as the trainer runs it: FSDP2 (on one rank), bf16 autocast with fp32 weights and
AdamW state, per-block ``torch.compile``, activation checkpointing for 1.3B, BiGLM objective on packed
rows of documents of random lengths. It prints tokens/s, MFU (the project's FLOP count over the GPU's dense
bf16 peak from ``biglm.train.metrics.GPU_PEAK_BF16``), peak memory; then the flex backend against the
reference (fp32, TF32 off) for every layout: training forward and gradients, the Mask-Predict cached
passes and autoregressive decoding. Then the decoding frontier's cost side (``bench/decode_frontier.py``) at the
first preset's shape on random weights: every setting of ``bench/results/decode_frontier.json``'s ``best`` list and
Mask-Predict T = 10, at the pass counts the trained demo model needed, against transformers' ``generate()`` of the
same-shape Llama, at batch 1 and 8. Writes ``bench/results/gpu_check.json``; exit status 1 if a check fails.

    python bench/gpu_check.py                      # on a machine with one CUDA GPU
    python bench/gpu_check.py --dry-run            # the same code path on CPU, tiny shapes, fp32, no compile
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import tempfile
import time
import traceback
from pathlib import Path

import torch
import torch.distributed as dist

from biglm import AttentionLayout, BiGLM, ModelConfig, ObjectiveConfig, build_objective
from biglm.attention import LAYOUT_KINDS
from biglm.attention_flex import layout_block_mask, skipped_share
from biglm.objectives import build_criterion
from biglm.train.config import TrainConfig
from biglm.train.metrics import flops_per_token, mfu, peak_flops
from biglm.train.optim import build_optimizer
from biglm.train.parallel import DistEnv, autocast, parallelize

MICRO = {"biglm-136m": 8, "biglm-360m": 8, "biglm-1.3b": 4, "biglm-3.5b": 2}
"""Rows per step on one 80 GB GPU (activation checkpointing from 1.3B on)."""


def packed_batch(config: ModelConfig, rows: int, seq: int, seed: int = 0):  # -> biglm.objectives.Batch
    """BiGLM-objective rows of documents with random lengths (64 .. seq) packed back to back."""
    g = torch.Generator().manual_seed(seed)
    docs = torch.empty(rows, seq, dtype=torch.long)
    for r in range(rows):
        pos, d = 0, 0
        while pos < seq:
            n = int(torch.randint(64, seq + 1, (1,), generator=g))
            docs[r, pos:pos + n] = d
            pos, d = pos + n, d + 1
    ids = torch.randint(10, config.vocab_size, (rows, seq), generator=g)
    return build_objective(ObjectiveConfig(), 1, config.vocab_size)(ids, docs, g)


def throughput(preset: str, backend: str, args: argparse.Namespace, device: torch.device) -> dict:
    """Median step time of ``args.steps`` training steps (after 2 warm-up steps that compile)."""
    config = ModelConfig.from_preset(preset, max_seq_len=args.seq, attn_backend=backend,
                                     attn_block_size=args.block_size)
    rows = args.rows or MICRO.get(preset, 2)
    tcfg = TrainConfig(precision=args.precision, compile=args.compile, parallel="fsdp",
                       activation_checkpointing=config.num_parameters() > 1e9)
    with torch.device("meta"):
        model = BiGLM(config)
    train_model = parallelize(model, tcfg, DistEnv(device=device), shard=True)
    torch.manual_seed(0)  # the same initial weights for both backends
    with torch.no_grad():
        model.init_weights()
    model.model.rotary.reset_parameters()
    optimizer = build_optimizer(model, tcfg)
    criterion = build_criterion(ObjectiveConfig())
    batch = packed_batch(config, rows, args.seq).to(device)
    skip = skipped_share(layout_block_mask(batch.layout, rows, args.seq, device=device,
                                           block_size=args.block_size))
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    times, losses = [], []
    for i in range(2 + args.steps):
        sync()
        t0 = time.perf_counter()
        with autocast(tcfg, device):
            parts = criterion(train_model, batch)
        loss = sum(parts.terms.values()) / batch.num_targets
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.detach().item())
        sync()
        if i >= 2:
            times.append(time.perf_counter() - t0)
    step = sorted(times)[len(times) // 2]
    tokens_per_s = rows * args.seq / step
    fraction = float(batch.loss_mask.float().mean())
    flops = flops_per_token(config, args.seq, logits_fraction=fraction)
    peak = peak_flops(device, torch.bfloat16 if tcfg.precision != "fp32" else torch.float32)
    return {"preset": preset, "backend": backend, "rows": rows, "seq": args.seq, "step_s": step,
            "tokens_per_s": tokens_per_s, "mfu": mfu(tokens_per_s, flops, peak), "flops_per_token": flops,
            "peak_flops": peak, "skipped_blocks": skip, "first_loss": losses[0], "last_loss": losses[-1],
            "peak_memory_gib": torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else None}


def rel_err(got: torch.Tensor, want: torch.Tensor) -> float:
    return float((got.float() - want.float()).abs().max() / want.float().abs().max().clamp_min(1e-12))


def equality(args: argparse.Namespace, device: torch.device) -> list[dict]:
    """flex vs sdpa in fp32 on a 2-layer model of the first preset's width, every layout kind."""
    from biglm.generate.autoregressive import AROptions, generate_ar_ids
    from biglm.generate.engine import encode_prefix, suffix_logits

    base = ModelConfig.from_preset(args.presets.split(",")[0], num_layers=2, max_seq_len=args.seq)
    torch.manual_seed(0)
    ref = BiGLM(base).to(device)
    flex = BiGLM(dataclasses.replace(base, attn_backend="flex", attn_block_size=args.block_size)).to(device)
    flex.load_state_dict(ref.state_dict())
    batch = packed_batch(base, 2, args.seq, seed=1).to(device)
    out = []
    for kind in LAYOUT_KINDS:
        layout = AttentionLayout(kind, batch.layout.document_ids, batch.layout.regions)
        res = []
        for model in (ref, flex):
            model.zero_grad(set_to_none=True)
            logits = model(batch.input_ids, layout, batch.position_ids, logits_mask=batch.loss_mask).logits
            torch.nn.functional.cross_entropy(logits, batch.input_ids[batch.loss_mask]).backward()
            res.append((logits.detach(), [p.grad.detach().clone() for p in model.parameters()]))
        grad = max(rel_err(g, w) for g, w in zip(res[1][1], res[0][1]))
        out.append({"check": f"train {kind}", "logits_rel_err": rel_err(res[1][0], res[0][0]), "grad_rel_err": grad})
    prompts = [list(range(10, 10 + args.seq // 4)), list(range(20, 30))]  # ragged: left padding
    tokens = torch.randint(10, base.vocab_size, (2, args.seq // 8), device=device)
    active = torch.ones_like(tokens, dtype=torch.bool)
    active[1, -3:] = False
    with torch.no_grad():
        got = [suffix_logits(m, encode_prefix(m, [[1, *p] for p in prompts]), tokens, active) for m in (ref, flex)]
    out.append({"check": "mask-predict cached pass", "logits_rel_err": rel_err(got[1], got[0])})
    gens = []
    for model in (ref, flex):
        causal = BiGLM(dataclasses.replace(model.config, family="causal")).to(device).eval()
        causal.load_state_dict(ref.state_dict())
        gens.append(generate_ar_ids(causal, prompts, bos_token_id=1, eos_token_id=2,
                                    options=AROptions(max_new_tokens=8)).token_ids)
    out.append({"check": "autoregressive greedy, KV cache", "same_tokens": gens[0] == gens[1]})
    for r in out:
        r["ok"] = r.get("same_tokens", True) and r.get("logits_rel_err", 0) <= args.tolerance \
            and r.get("grad_rel_err", 0) <= args.tolerance
    return out


def frontier(args: argparse.Namespace, device: torch.device) -> list[dict]:
    """Tokens/s of the frontier's best settings against transformers' generate() at the first preset's shape."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import frontier_cost as cost
    from common import best_of, llama_like

    shape = args.presets.split(",")[0]
    best = Path(__file__).resolve().parent / "results" / "decode_frontier.json"
    settings: dict[str, dict] = {"mask-predict T=10": {"strategy": "mask-predict", "steps": 10}}
    if best.exists():
        for b in json.loads(best.read_text()).get("best", []):
            if b.get("kwargs") and b["shape"] == "biglm-136m":  # already at the trained model's pass count
                settings.setdefault(f"{b['task']}: {b['name']}", b["kwargs"])
    torch.manual_seed(0)
    config = ModelConfig.from_preset(shape, max_seq_len=2048)
    model = BiGLM(config).to(device).eval()
    llama = llama_like(config, bos_token_id=1, eos_token_id=2, pad_token_id=0).to(device).eval()
    ids = {"bos": 1, "eos": 2, "mask": 3, "pad": 0}
    rows = []
    for batch in (1, 8):
        prompts = torch.randint(8, config.vocab_size - 64, (batch, 24), generator=torch.Generator().manual_seed(batch))
        prompts = prompts.tolist()
        x = torch.tensor([[1, *p] for p in prompts], device=device)

        def generate(x: torch.Tensor = x) -> int:
            with torch.inference_mode():
                llama.generate(x, attention_mask=torch.ones_like(x), max_new_tokens=args.new_tokens,
                               min_new_tokens=args.new_tokens, do_sample=False, use_cache=True, pad_token_id=0)
            return args.new_tokens

        fns = {"transformers generate()": generate}
        fns.update({name: cost.masked_fn(model, prompts, ids, [3], args.new_tokens, kw)
                    for name, kw in settings.items()})
        timing = best_of(fns, repeats=3)
        peer = timing["transformers generate()"][0]
        for name, (sec, passes) in timing.items():
            rows.append({"shape": shape, "batch": batch, "setting": name, "latency_s": sec,
                         "tok_s": batch * args.new_tokens / sec, "passes": passes, "speedup_vs_generate": peer / sec})
    return rows


def init_one_rank(device: torch.device) -> None:
    """A process group of one (FSDP2 needs one): NCCL on CUDA, gloo on CPU."""
    if dist.is_initialized():
        return
    store = dist.FileStore(os.path.join(tempfile.mkdtemp(prefix="biglm-gpu-check-"), "store"), 1)
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo", store=store, rank=0, world_size=1)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--presets", default="biglm-136m,biglm-1.3b")
    parser.add_argument("--backends", default="sdpa,flex")
    parser.add_argument("--seq", type=int, default=2048, help="row length (the paper's: 2048)")
    parser.add_argument("--rows", type=int, default=0, help="rows per step (default: per preset, see MICRO)")
    parser.add_argument("--steps", type=int, default=5, help="timed steps after 2 warm-up steps")
    parser.add_argument("--block-size", type=int, default=128)
    parser.add_argument("--tolerance", type=float, default=2e-3, help="largest relative error of flex vs sdpa")
    parser.add_argument("--dry-run", action="store_true",
                        help="CPU, micro preset, 64-token rows, fp32, no compile: tests the code path")
    parser.add_argument("--new-tokens", type=int, default=64, help="tokens generated by the decoding frontier")
    parser.add_argument("--out", default="bench/results/gpu_check.json")
    args = parser.parse_args(argv)
    if args.dry_run:
        device = torch.device("cpu")
        args.presets, args.seq, args.rows, args.steps, args.block_size = "micro", 64, 2, 1, 16
        args.precision, args.compile = "fp32", False
        torch.set_num_threads(1)
    else:
        if not torch.cuda.is_available():
            print("gpu_check: no CUDA device (use --dry-run to test the code path on CPU)", file=sys.stderr)
            return 2
        device = torch.device("cuda", 0)
        torch.cuda.set_device(device)
        args.precision, args.compile = "bf16", True
    init_one_rank(device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(f"gpu_check on {name}, torch {torch.__version__}")
    rows, failures = [], 0
    for preset in args.presets.split(","):
        for backend in args.backends.split(","):
            t0 = time.perf_counter()
            try:
                r = throughput(preset, backend, args, device)
            except Exception as e:  # one failing case must not hide the others' figures
                traceback.print_exc()
                r, failures = {"preset": preset, "backend": backend, "error": f"{type(e).__name__}: {e}"}, failures + 1
            r["wall_s"] = time.perf_counter() - t0
            rows.append(r)
            if device.type == "cuda":
                torch.cuda.empty_cache()
            mem = f"{r['peak_memory_gib']:.1f} GiB" if r.get("peak_memory_gib") is not None else "n/a"
            print(f"{preset:<12}{backend:<6}" + (f"{r['tokens_per_s']:>10.0f} tokens/s  MFU {100 * r['mfu']:5.1f}%  "
                                                 f"peak {mem}  skipped blocks {100 * r['skipped_blocks']:.0f}%  "
                                                 f"loss {r['first_loss']:.3f} -> {r['last_loss']:.3f}  "
                                                 f"({r['wall_s']:.0f} s with compile)"
                                                 if "error" not in r else f"  FAILED: {r['error']}"), flush=True)
    for preset in args.presets.split(","):
        by = {r["backend"]: r for r in rows if r["preset"] == preset and "error" not in r}
        if "sdpa" in by and "flex" in by:
            print(f"{preset}: flex / sdpa tokens/s = {by['flex']['tokens_per_s'] / by['sdpa']['tokens_per_s']:.2f}x")
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
    try:
        checks = equality(args, device)
    except Exception as e:
        traceback.print_exc()
        checks = [{"check": "equality", "ok": False, "error": f"{type(e).__name__}: {e}"}]
    for c in checks:
        failures += not c["ok"]
        detail = ", ".join(f"{k} {v:.2e}" if isinstance(v, float) else f"{k} {v}" for k, v in c.items()
                           if k not in ("check", "ok"))
        print(f"flex == sdpa  {c['check']:<34}{'ok' if c['ok'] else 'FAILED'}  ({detail})")
    try:
        decoding = frontier(args, device)
    except Exception as e:
        traceback.print_exc()
        decoding, failures = [{"error": f"{type(e).__name__}: {e}"}], failures + 1
    for r in decoding:
        if "error" not in r:
            print(f"decoding {r['shape']} batch {r['batch']:<3}{r['setting']:<44}{r['tok_s']:>9.0f} tokens/s  "
                  f"x{r['speedup_vs_generate']:.2f} generate()  ({r['passes']} passes)")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"device": name, "torch": torch.__version__, "args": vars(args),
                                          "throughput": rows, "equality": checks, "decoding": decoding}, indent=2))
    dist.destroy_process_group()
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
