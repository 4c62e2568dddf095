"""Training-step throughput of BiGLM's prefix-blind layout against plain bidirectional attention.

Same model, same batch shape, same masked positions: only the attention layout differs. Prints a table
and writes ``bench/results/attention_layouts.json``. Goal: prefix-blind costs ≤ 5% over bidirectional.

    python bench/attention_layouts.py [--preset tiny] [--batch 8] [--seq 512] [--steps 10]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from biglm import BiGLM, ModelConfig, ObjectiveConfig, build_objective
from biglm.attention import AttentionLayout
from biglm.objectives import masked_lm_loss


def step_time(model: BiGLM, batch, layout: AttentionLayout, steps: int, warmup: int = 2) -> float:
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    times = []
    for i in range(warmup + steps):
        t0 = time.perf_counter()
        out = model(batch.input_ids, layout, batch.position_ids, logits_mask=batch.loss_mask)
        parts = masked_lm_loss(out.logits, batch.labels[batch.loss_mask], None)
        opt.zero_grad(set_to_none=True)
        (parts.terms["mlm"] / batch.num_targets).backward()
        opt.step()
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    times.sort()
    return times[len(times) // 2]  # median


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq", type=int, default=512)
    parser.add_argument("--docs-per-row", type=int, default=2)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default="bench/results/attention_layouts.json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    config = ModelConfig.from_preset(args.preset, max_seq_len=max(args.seq, 512))
    model = BiGLM(config)
    B, T = args.batch, args.seq
    ids = torch.randint(10, config.vocab_size, (B, T))
    docs = torch.arange(args.docs_per_row).repeat_interleave(T // args.docs_per_row + 1)[:T].expand(B, T)
    batch = build_objective(ObjectiveConfig(), 1, config.vocab_size)(ids, docs, torch.Generator().manual_seed(0))
    layouts = {
        "bidirectional (no mask)": AttentionLayout("bidirectional"),
        "bidirectional, per-document": AttentionLayout("bidirectional", batch.layout.document_ids),
        "prefix-blind (BiGLM)": batch.layout,
    }
    rows = []
    for name, layout in layouts.items():
        seconds = step_time(model, batch, layout, args.steps)
        rows.append({"layout": name, "step_s": seconds, "tokens_per_s": B * T / seconds})
    base = rows[0]["tokens_per_s"]
    print(f"\n{args.preset} ({config.num_parameters() / 1e6:.1f}M params), batch {B} x {T}, "
          f"{args.threads} threads, median of {args.steps} steps")
    print(f"{'layout':<30}{'step (s)':>10}{'tokens/s':>12}{'overhead':>10}")
    for r in rows:
        r["overhead_vs_bidirectional"] = base / r["tokens_per_s"] - 1
        print(f"{r['layout']:<30}{r['step_s']:>10.3f}{r['tokens_per_s']:>12.0f}"
              f"{100 * r['overhead_vs_bidirectional']:>9.1f}%")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"config": vars(args), "results": rows}, indent=2))


if __name__ == "__main__":
    main()
