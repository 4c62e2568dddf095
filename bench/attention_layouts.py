"""Throughput of BiGLM's prefix-blind layout against plain bidirectional attention, for both attention
backends (``sdpa`` with the dense mask, ``flex`` with a block mask), and the share of attention blocks the
flex backend skips at the paper's row shape.

Same model, same batch shape, same masked positions: only the layout and backend differ. Prints tables
and writes ``bench/results/attention_layouts.json``. Goal: prefix-blind costs ≤ 5% over bidirectional.
On CPU the flex forward is torch's compiled CPU kernel; a flex *training* step on CPU runs torch's unfused
reference (torch 2.13 has no CPU backward kernel), reported for completeness, not as the backend's speed.

    python bench/attention_layouts.py [--preset tiny] [--batch 8] [--seq 512] [--steps 10] [--corpus data/demo]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

import torch

from biglm import BiGLM, ModelConfig, ObjectiveConfig, build_objective
from biglm.attention import AttentionLayout, attention_mask
from biglm.attention_flex import layout_block_mask, skipped_share
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


def forward_time(model: BiGLM, batch, layout: AttentionLayout, steps: int, warmup: int = 2) -> float:
    """Median forward pass without gradients (inference, e.g. a prefix or Mask-Predict pass)."""
    times = []
    with torch.no_grad():
        for i in range(warmup + steps):
            t0 = time.perf_counter()
            model(batch.input_ids, layout, batch.position_ids, logits_mask=batch.loss_mask)
            if i >= warmup:
                times.append(time.perf_counter() - t0)
    times.sort()
    return times[len(times) // 2]


def document_lengths(corpus: str | None, n: int, seed: int = 0) -> tuple[str, list[int]]:
    """Token lengths of the demo corpus's documents (sampled, 80% Wikipedia / 20% Shakespeare as in
    configs/demo.yaml), or a fixed stand-in when the corpus is not there."""
    if corpus and (Path(corpus) / "wiki.jsonl").is_file():
        from biglm.data import load_tokenizer

        tok = load_tokenizer(Path(corpus) / "tokenizer")
        lens = {}
        for name in ("wiki", "shakespeare"):
            with open(Path(corpus) / f"{name}.jsonl") as f:
                lens[name] = [len(tok.encode(json.loads(line)["text"])) + 1 for _, line in zip(range(3000), f)]
        g = torch.Generator().manual_seed(seed)
        pick = lambda xs: xs[int(torch.randint(len(xs), (1,), generator=g))]
        return f"demo corpus ({corpus})", [pick(lens["wiki"] if float(torch.rand(1, generator=g)) < 0.8
                                               else lens["shakespeare"]) for _ in range(n)]
    return "fixed 133-token documents (demo corpus not found)", [133] * n


def pack(lengths: list[int], rows: int, seq: int) -> torch.Tensor:
    """Document ids (rows, seq) of documents packed back to back (the last one cut at the row end)."""
    docs = torch.empty(rows, seq, dtype=torch.long)
    it = iter(lengths)
    for r in range(rows):
        pos, d = 0, 0
        while pos < seq:
            n = min(next(it), seq - pos)
            docs[r, pos:pos + n] = d
            pos, d = pos + n, d + 1
    return docs


def block_skip_table(args: argparse.Namespace, vocab: int) -> list[dict]:
    """Share of 128×128 blocks skipped at the paper's row shape (2048 tokens, BiGLM split)."""
    objective = build_objective(ObjectiveConfig(), 1, vocab)
    source, lengths = document_lengths(args.corpus, 64 * args.skip_rows)
    cases = {f"packed documents: {source}": pack(lengths, args.skip_rows, 2048),
             "one 2048-token document per row": torch.zeros(args.skip_rows, 2048, dtype=torch.long),
             "512-token documents": torch.arange(4).repeat_interleave(512).expand(args.skip_rows, 2048)}
    rows = []
    for name, docs in cases.items():
        ids = torch.randint(10, vocab, docs.shape)
        batch = objective(ids, docs, torch.Generator().manual_seed(0))
        row = {"documents": name, "mean_doc_tokens": docs.numel() / sum(int(r.max()) + 1 for r in docs)}
        for kind in ("bidirectional", "prefix_blind"):
            layout = AttentionLayout(kind, batch.layout.document_ids, batch.layout.regions)
            bm = layout_block_mask(layout, docs.shape[0], 2048, block_size=128)
            row[f"skipped_{kind}"] = skipped_share(bm)
            row[f"allowed_pairs_{kind}"] = float(attention_mask(layout, docs.shape[0], 2048).float().mean())
        rows.append(row)
    print("\nBlock skipping at the paper's row shape (2048 tokens, BiGLM split, 128×128 blocks, "
          f"{args.skip_rows} rows)")
    print(f"{'documents':<58}{'mean len':>9}{'skipped: per-doc':>18}{'prefix-blind':>14}{'pairs kept':>12}")
    for r in rows:
        print(f"{r['documents']:<58}{r['mean_doc_tokens']:>9.0f}{100 * r['skipped_bidirectional']:>17.1f}%"
              f"{100 * r['skipped_prefix_blind']:>13.1f}%{100 * r['allowed_pairs_prefix_blind']:>11.1f}%")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq", type=int, default=512)
    parser.add_argument("--docs-per-row", type=int, default=2)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--backends", default="sdpa,flex", help="comma-separated: sdpa, flex")
    parser.add_argument("--block-size", type=int, default=128, help="flex block size")
    parser.add_argument("--corpus", default="data/demo", help="demo corpus folder for document lengths")
    parser.add_argument("--skip-rows", type=int, default=16, help="rows for the block-skip share")
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
    for backend in args.backends.split(","):
        m = BiGLM(dataclasses.replace(config, attn_backend=backend, attn_block_size=args.block_size))
        m.load_state_dict(model.state_dict())
        for name, layout in layouts.items():
            fwd = forward_time(m, batch, layout, args.steps)
            seconds = step_time(m, batch, layout, args.steps)
            rows.append({"backend": backend, "layout": name, "step_s": seconds, "tokens_per_s": B * T / seconds,
                         "forward_s": fwd, "forward_tokens_per_s": B * T / fwd})
    load = _load_average()
    print(f"\n{args.preset} ({config.num_parameters() / 1e6:.1f}M params), batch {B} x {T}, "
          f"{args.threads} threads, median of {args.steps} steps, load average {load}")
    print(f"{'backend':<8}{'layout':<30}{'train step (s)':>15}{'tokens/s':>10}{'overhead':>10}"
          f"{'forward tokens/s':>18}")
    for r in rows:
        base = next(x for x in rows if x["backend"] == r["backend"])
        r["overhead_vs_bidirectional"] = base["tokens_per_s"] / r["tokens_per_s"] - 1
        note = "  (CPU: unfused reference)" if r["backend"] == "flex" else ""
        print(f"{r['backend']:<8}{r['layout']:<30}{r['step_s']:>15.3f}{r['tokens_per_s']:>10.0f}"
              f"{100 * r['overhead_vs_bidirectional']:>9.1f}%{r['forward_tokens_per_s']:>18.0f}{note}")
    skips = block_skip_table(args, config.vocab_size)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"config": vars(args), "load_average": load, "results": rows,
                                          "block_skipping": skips}, indent=2))


def _load_average() -> str:
    try:
        import os

        return " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "n/a"


if __name__ == "__main__":
    main()
