"""Continuous batching of autoregressive replies: the scheduler with ``ARStepper`` against ``WholeStepper``.

16 requests (a ~64-token user turn each, 32-token replies) are submitted to ``biglm.serve.scheduler.Scheduler`` (no
HTTP) at staggered times, one every ``--gap`` seconds, on a ``demo``-size causal model with random weights. With
``WholeStepper`` a request waits for the batch in flight to finish and only requests of equal settings (not
streamed) decode together; with ``ARStepper`` each request joins the running batch at the next token. Three
workloads: all greedy with the same settings (``WholeStepper``'s best case), sampled with one seed per request,
and greedy streamed. Reports requests/s (16 over first submit to last reply), reply tokens/s, p50 / p95 latency
(submit to reply), decoding steps, and whether both gave the same replies.

    python bench/serve_ar_stepper.py [--tokenizer data/demo/tokenizer] [--gap 0.01] [--repeats 3]

Prints a table and writes ``bench/results/serve_ar_stepper.json``.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from biglm import BiGLM, ModelConfig
from biglm.chat import ChatModel, ChatSettings
from biglm.data.chat import set_chat_template
from biglm.data.tokenizer import load_tokenizer, train_tokenizer
from biglm.serve.scheduler import STEPPERS, ReplyRequest, Scheduler
from common import machine_info

ROOT = Path(__file__).resolve().parents[1]
TEXT = ("The Pacific Ocean is the largest and deepest of the oceans. It extends from the Arctic Ocean in the north "
        "to the Southern Ocean in the south. Photosynthesis is the process used by plants to convert light energy "
        "into chemical energy. The French Revolution was a period of political and societal change in France.")
WORKLOADS = {
    "greedy, same settings": (lambda i: ChatSettings(max_new_tokens=32), False),
    "sampled, own seed": (lambda i: ChatSettings(max_new_tokens=32, temperature=0.8, seed=i), False),
    "greedy, streamed": (lambda i: ChatSettings(max_new_tokens=32), True),
}


def demo_chat(tokenizer: str | None) -> ChatModel:
    folder = Path(tokenizer) if tokenizer else ROOT / "data" / "demo" / "tokenizer"
    if folder.is_dir():
        tok = load_tokenizer(folder)
    else:  # a small byte-level BPE trained here
        tmp = Path(tempfile.mkdtemp())
        (tmp / "text.txt").write_text("\n".join([TEXT] * 50))
        tok = train_tokenizer([tmp / "text.txt"], 512, tmp / "tok")
    set_chat_template(tok)
    torch.manual_seed(0)
    cfg = ModelConfig.from_preset("demo", vocab_size=-(-len(tok) // 64) * 64, max_seq_len=256, family="causal")
    return ChatModel(BiGLM(cfg).eval(), tok)


def messages(i: int) -> list[dict[str, str]]:
    words = TEXT.split()
    return [{"role": "user", "content": " ".join(words[i % 7:][:40])}]  # ~60 prompt tokens, not all the same


def run(chat: ChatModel, continuous: bool, workload: str, n: int, gap: float) -> dict[str, Any]:
    settings_of, stream = WORKLOADS[workload]
    saved = dict(STEPPERS)
    if not continuous:
        STEPPERS.pop("autoregressive", None)  # the scheduler falls back to WholeStepper
    try:
        scheduler = Scheduler(chat, max_batch=16, queue_size=64).start()
    finally:
        STEPPERS.clear()
        STEPPERS.update(saved)
    try:
        handles = []
        start = time.perf_counter()
        for i in range(n):
            time.sleep(max(0.0, start + i * gap - time.perf_counter()))
            handles.append(scheduler.submit(ReplyRequest(settings_of(i), messages=messages(i), stream=stream)))
        replies = [h.result(timeout=900) for h in handles]
    finally:
        scheduler.stop()
    wall = max(h.finished_at for h in handles) - min(h.submitted for h in handles)
    lat = sorted(h.finished_at - h.submitted for h in handles)
    tokens = sum(len(r.token_ids) for r in replies)
    return {"stepper": "ARStepper" if continuous else "WholeStepper", "workload": workload, "requests": n,
            "requests_per_s": n / wall, "tokens_per_s": tokens / wall, "p50_s": statistics.median(lat),
            "p95_s": lat[min(n - 1, round(0.95 * (n - 1)))], "steps": scheduler.stats.steps,
            "replies": [r.token_ids for r in replies]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tokenizer", default=None, help="tokenizer folder (default: data/demo/tokenizer)")
    parser.add_argument("--requests", type=int, default=16)
    parser.add_argument("--gap", type=float, default=0.01, help="seconds between two submissions")
    parser.add_argument("--repeats", type=int, default=3, help="runs of each; the median run is reported")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    chat = demo_chat(args.tokenizer)
    run(chat, True, "greedy, same settings", 2, 0.0)  # warm up
    rows = []
    for workload in WORKLOADS:
        runs: dict[bool, list[dict[str, Any]]] = {True: [], False: []}
        for _ in range(args.repeats):  # interleaved, so both see the same machine load
            for continuous in (False, True):
                runs[continuous].append(run(chat, continuous, workload, args.requests, args.gap))
        picked = {c: sorted(r, key=lambda x: x["requests_per_s"])[len(r) // 2] for c, r in runs.items()}
        same = picked[True]["replies"] == picked[False]["replies"]
        for c in (False, True):
            row = {k: v for k, v in picked[c].items() if k != "replies"} | {"same_replies": same}
            rows.append(row)
            print(f"{workload:24s} {row['stepper']:13s} {row['requests_per_s']:6.2f} req/s "
                  f"{row['tokens_per_s']:7.1f} tok/s  p50 {row['p50_s']:.2f} s  p95 {row['p95_s']:.2f} s  "
                  f"steps {row['steps']:4d}  same replies: {same}", flush=True)
    out = ROOT / "bench" / "results" / "serve_ar_stepper.json"
    out.write_text(json.dumps({"machine": machine_info(), "gap_s": args.gap, "results": rows}, indent=1) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
