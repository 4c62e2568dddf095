"""Peak memory of one training step (and of one forward pass) at T = 2048, with and without the dense
attention mask, on CPU.

Each case runs in a fresh process with ``MALLOC_MMAP_THRESHOLD_`` lowered, so freed tensors leave the
resident set; after one warm-up step (and flex's compilation), a thread samples the resident set size
every 0.2 ms during the measured step; the figure is the peak minus the size just before the step (model,
optimizer state and batch excluded). Cases:

- ``sdpa, prefix-blind``: the reference backend with its dense (B, 1, T, T) mask (BiGLM split);
- ``sdpa, no mask``: the same step with one unmasked document per row (what the step costs without a mask);
- ``flex, prefix-blind``: the block-mask backend. Its forward is torch's compiled CPU kernel; its training
  step on CPU is torch's unfused reference (no CPU backward kernel in torch 2.13), which materialises the
  scores: it is measured and printed, but it says nothing of the CUDA kernel.

    python bench/attention_memory.py [--preset tiny] [--batch 2] [--seq 2048]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

CASES = {"sdpa, prefix-blind (dense mask)": ("sdpa", "prefix_blind"),
         "sdpa, no mask": ("sdpa", "none"),
         "flex, prefix-blind (block mask)": ("flex", "prefix_blind")}


def measure(preset: str, batch: int, seq: int, backend: str, layout_kind: str, train: bool) -> dict:
    """One case in this process: peak resident growth (bytes) during one step after a warm-up step."""
    import torch

    from biglm import BiGLM, ModelConfig, ObjectiveConfig, build_objective
    from biglm.attention import AttentionLayout
    from biglm.objectives import masked_lm_loss

    torch.set_num_threads(1)
    torch.manual_seed(0)
    config = ModelConfig.from_preset(preset, max_seq_len=seq, attn_backend=backend)
    model = BiGLM(config)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    docs = torch.arange(4).repeat_interleave(seq // 4 + 1)[:seq].expand(batch, seq)
    ids = torch.randint(10, config.vocab_size, (batch, seq))
    b = build_objective(ObjectiveConfig(), 1, config.vocab_size)(ids, docs, torch.Generator().manual_seed(0))
    layout = b.layout if layout_kind != "none" else AttentionLayout("bidirectional")

    def step() -> None:
        if not train:
            with torch.no_grad():
                model(b.input_ids, layout, b.position_ids, logits_mask=b.loss_mask)
            return
        out = model(b.input_ids, layout, b.position_ids, logits_mask=b.loss_mask)
        (masked_lm_loss(out.logits, b.labels[b.loss_mask], None).terms["mlm"] / b.num_targets).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    step()  # warm-up: AdamW state allocated, kernels compiled
    page = os.sysconf("SC_PAGE_SIZE")

    def rss() -> int:  # Linux: resident pages of this process
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * page

    base = rss()
    peak, done = [base], threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], rss())
            time.sleep(0.0002)

    t = threading.Thread(target=sample)
    t.start()
    t0 = time.perf_counter()
    step()
    seconds = time.perf_counter() - t0
    done.set()
    t.join()
    return {"peak_bytes": peak[0] - base, "seconds": seconds,
            "dense_mask_bytes": batch * seq * seq * 4 if (backend == "sdpa" and layout_kind != "none") else 0}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--seq", type=int, default=2048)
    parser.add_argument("--out", default="bench/results/attention_memory.json")
    parser.add_argument("--case", help=argparse.SUPPRESS)  # internal: run one case, print its JSON
    args = parser.parse_args()
    if args.case:
        backend, kind, mode = args.case.split(":")
        print(json.dumps(measure(args.preset, args.batch, args.seq, backend, kind, mode == "train")))
        return
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "131072", "OMP_NUM_THREADS": "1"}
    rows = []
    for name, (backend, kind) in CASES.items():
        row = {"case": name}
        for mode in ("train", "forward"):
            cmd = [sys.executable, __file__, "--preset", args.preset, "--batch", str(args.batch), "--seq",
                   str(args.seq), "--case", f"{backend}:{kind}:{mode}"]
            res = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True)
            row[mode] = json.loads(res.stdout.strip().splitlines()[-1])
        rows.append(row)
    mib = 2**20
    print(f"\n{args.preset}, batch {args.batch} x {args.seq}, fp32, 1 thread; peak resident growth during one step "
          f"(load average {' '.join(f'{x:.2f}' for x in os.getloadavg())})")
    print(f"{'case':<34}{'train step (MiB)':>18}{'forward (MiB)':>15}{'dense mask (MiB)':>18}")
    for r in rows:
        print(f"{r['case']:<34}{r['train']['peak_bytes'] / mib:>18.0f}{r['forward']['peak_bytes'] / mib:>15.0f}"
              f"{r['train']['dense_mask_bytes'] / mib:>18.0f}")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"config": vars(args), "results": rows}, indent=2))


if __name__ == "__main__":
    main()
