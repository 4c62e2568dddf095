"""Zero-shot scoring speed (requests/s) and accuracy of each scoring method on the shipped
``biglm_next_sentence`` task, against the reference code's way (greedy-order, batch size 1, no cache).

The model is a ``micro`` (or ``--preset``) BiGLM pretrained by biglm's trainer for ``--train-steps``
on the synthetic stories the shipped task was held out from (same generator, seed and held-out rule;
0 steps = random weights), with a 768-token BPE trained on the training stories. Every method scores the same token
ids; time excludes tokenisation. Prints a table and writes ``bench/results/evaluate.json``.
Goal: ≥ 5× the reference's requests/s.

    python bench/evaluate.py [--train-steps 600] [--items 100] [--batch-size 16] [--threads 1]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from biglm.data.shards import val_mask
from biglm.data.tokenizer import train_tokenizer
from biglm.evaluate import TASKS_DIR, ScoringConfig, reference_greedy_order, score_requests
from biglm.evaluate.make_tasks import synthetic_documents, write_jsonl
from biglm.train.config import RunConfig
from biglm.train.setup import setup

VAL_FRACTION = 0.1  # the shipped tasks' held-out fraction

# (label, ScoringConfig overrides); batch_size is filled in from --batch-size
METHODS = [
    ("greedy-order", {"method": "greedy-order"}),
    ("greedy-order beam=4", {"method": "greedy-order", "beam": 4}),
    ("greedy-order no cache", {"method": "greedy-order", "use_cache": False}),
    ("left-to-right", {"method": "left-to-right"}),
    ("single-pass", {"method": "single-pass"}),
    ("pll", {"method": "pll"}),
    ("mc-elbo n=16", {"method": "mc-elbo", "samples": 16}),
]


def train(corpus: Path, tokenizer_dir: Path, preset: str, steps: int, run_dir: Path) -> torch.nn.Module:
    """The ``preset`` model pretrained by biglm's trainer on ``corpus`` (BiGLM objective, rows of 128
    tokens, batch 8, constant LR 5e-3; the held-out 10% left out, as the shipped task was built)."""
    cfg = RunConfig.from_dict({
        "model": {"preset": preset, "vocab_size": "auto"},
        "data": {"tokenizer": str(tokenizer_dir), "sources": [{"path": str(corpus)}], "seq_len": 128,
                 "min_doc_tokens": 1, "val_fraction": VAL_FRACTION, "val_seed": 0,
                 "cache_dir": str(run_dir.parent / "cache")},
        "train": {"steps": max(steps, 1), "global_batch_size": 8, "lr": 5e-3, "schedule": "constant",
                  "warmup_steps": 0, "eval_batches": 1, "save_every": 0, "log_every": 100, "prefetch": 0,
                  "progress": False, "tensorboard": False, "peak_flops": 1e11}})
    trainer = setup(cfg, run_dir)
    if steps:  # 0 steps: the freshly initialised model
        trainer.fit()
    trainer.close()
    return trainer.model.eval()


def choose(scores: list[float], items: list[dict]) -> tuple[list[int], list[int]]:
    """Chosen answer per item by summed log-prob (acc) and by log-prob per character (acc_norm)."""
    raw, norm = [], []
    for i, it in enumerate(items):
        s = np.array(scores[4 * i:4 * i + 4])
        raw.append(int(s.argmax()))
        norm.append(int((s / np.array([len(" " + c) for c in it["choices"]])).argmax()))
    return raw, norm


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--preset", default="micro")
    p.add_argument("--train-steps", type=int, default=600)
    p.add_argument("--items", type=int, default=100)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--threads", type=int, default=1, help="torch threads (1: robust on shared CPUs)")
    p.add_argument("--out", default="bench/results/evaluate.json")
    args = p.parse_args()
    torch.set_num_threads(args.threads)

    docs = synthetic_documents(3000, seed=0)  # the shipped tasks' corpus (make_tasks --synthetic 3000)
    held = val_mask(np.arange(len(docs)), 0, VAL_FRACTION)
    train_docs = [d for d, h in zip(docs, held) if not h]
    with tempfile.TemporaryDirectory() as tmp:
        tok = train_tokenizer([write_jsonl(Path(tmp) / "train.jsonl", train_docs)], 768, Path(tmp) / "tok")
        t0 = time.perf_counter()
        model = train(write_jsonl(Path(tmp) / "stories.jsonl", docs), Path(tmp) / "tok", args.preset,
                      args.train_steps, Path(tmp) / "run")
        train_s = time.perf_counter() - t0

    lines = (TASKS_DIR / "biglm_next_sentence.jsonl").read_text().splitlines()[:args.items]
    items = [json.loads(x) for x in lines]
    pairs = []
    for it in items:
        context = tok.encode(it["context"], add_special_tokens=False)
        for c in it["choices"]:
            whole = tok.encode(it["context"] + " " + c, add_special_tokens=False)
            pairs.append(([tok.bos_token_id, *context], whole[len(context):]))
    mask = tok.mask_token_id

    t0 = time.perf_counter()
    ref = [reference_greedy_order(model, x, y, mask).logprob for x, y in pairs]
    ref_s = time.perf_counter() - t0
    ref_raw, ref_norm = choose(ref, items)
    labels = [it["label"] for it in items]
    acc = lambda chosen: float(np.mean([a == b for a, b in zip(chosen, labels)]))
    rows = [{"method": "reference greedy-order (bs=1, no cache)", "requests_per_s": len(pairs) / ref_s,
             "speedup": 1.0, "acc": acc(ref_raw), "acc_norm": acc(ref_norm), "agree_greedy_order": 1.0}]
    for label, overrides in METHODS:
        cfg = ScoringConfig(batch_size=args.batch_size, **overrides)
        t0 = time.perf_counter()
        scores = score_requests(model, pairs, mask_token_id=mask, pad_token_id=tok.pad_token_id, config=cfg)
        secs = time.perf_counter() - t0
        raw, norm = choose([s.logprob for s in scores], items)
        rows.append({"method": label, "requests_per_s": len(pairs) / secs, "speedup": ref_s / secs,
                     "acc": acc(raw), "acc_norm": acc(norm),
                     "agree_greedy_order": float(np.mean([a == b for a, b in zip(raw, ref_raw)]))})

    mean_y = float(np.mean([len(y) for _, y in pairs]))
    mean_x = float(np.mean([len(x) for x, _ in pairs]))
    print(f"{args.preset} trained {args.train_steps} steps ({train_s:.0f}s); {len(items)} items = {len(pairs)} "
          f"requests, mean |X| {mean_x:.1f}, |Y| {mean_y:.1f} tokens; batch {args.batch_size}; "
          f"{args.threads} thread(s)")
    print(f"{'method':<42}{'req/s':>9}{'speedup':>9}{'acc':>7}{'acc_norm':>10}{'agree':>7}")
    for r in rows:
        print(f"{r['method']:<42}{r['requests_per_s']:>9.1f}{r['speedup']:>8.1f}x{r['acc']:>7.3f}"
              f"{r['acc_norm']:>10.3f}{r['agree_greedy_order']:>7.2f}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"config": vars(args), "train_seconds": train_s, "requests": len(pairs),
                               "mean_prefix_tokens": mean_x, "mean_continuation_tokens": mean_y,
                               "results": rows}, indent=2))


if __name__ == "__main__":
    main()
