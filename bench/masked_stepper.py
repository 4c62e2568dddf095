"""Continuous Mask-Predict batching (``biglm.serve.steppers.masked``) against the whole-batch fallback.

(a) the scheduler (no HTTP) with 16 non-streamed requests submitted at staggered times (one every ``gap``: a
    quarter of one request's latency alone), prompts of 8..60 words: requests/s (first submit to last reply)
    and p50 / p95 latency, for ``MaskedStepper`` (rows join the running batch at the next pass; exact prefix
    cache per row, joined left-padded), the same re-encoding the prompts every pass (``prefix_cache=False``),
    and ``WholeStepper`` (rows with equal settings decode together; others wait for the batch to finish).
    Two workloads: greedy, 32 tokens, 10 passes (``length=fixed``); seeded sampling with a seed per request
    and the length head's 3 candidates (``length=predict``, up to 32 tokens).
(b) one forward pass of ``run_pass`` over 8 and 16 rows at once: prefix cache against re-encoding.

The model has the ``demo`` preset's shape with random weights and the demo tokenizer (``data/demo/tokenizer``;
a small BPE trained on a paragraph when it is missing).

    python bench/masked_stepper.py [--quick] [--threads N]

Prints tables and writes ``bench/results/masked_stepper.json``.
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
from biglm.generate import DecodeJob, PassBatch
from biglm.serve.scheduler import STEPPERS, ReplyRequest, Scheduler, WholeStepper
from biglm.serve.steppers.masked import MaskedStepper
from common import machine_info

ROOT = Path(__file__).resolve().parents[1]
TEXT = ("The Pacific Ocean is the largest and deepest of the oceans. It extends from the Arctic Ocean in the north "
        "to the Southern Ocean in the south. Photosynthesis is the process used by plants to convert light energy "
        "into chemical energy. The French Revolution was a period of political and societal change in France. "
        "Its causes are generally agreed upon to be a combination of social, political and economic factors.")


class ReencodingStepper(MaskedStepper):
    """``MaskedStepper`` without the prefix cache (the prompt re-encoded with the suffix every pass)."""

    def __init__(self, chat: ChatModel) -> None:
        super().__init__(chat, prefix_cache=False)


STEPPER_KINDS = {"continuous (prefix cache)": MaskedStepper, "continuous (re-encoded)": ReencodingStepper,
                 "whole batch (WholeStepper)": WholeStepper}

WORKLOADS = {
    "greedy, fixed 32 tokens, T=10": lambda i: ChatSettings(max_new_tokens=32, steps=10, length="fixed"),
    "sampled (own seed), 3 length candidates, T=10": lambda i: ChatSettings(
        max_new_tokens=32, steps=10, length="predict", temperature=0.8, seed=i),
}


def chat_model(tokenizer: str) -> ChatModel:
    if Path(tokenizer).is_dir():
        tok = load_tokenizer(tokenizer)
    else:  # a fresh clone without the demo data: a small BPE trained here
        tmp = Path(tempfile.mkdtemp())
        (tmp / "text.txt").write_text("\n".join([TEXT] * 50))
        tok = train_tokenizer([tmp / "text.txt"], 512, tmp / "tok")
    set_chat_template(tok)
    torch.manual_seed(0)
    cfg = ModelConfig.from_preset("demo", vocab_size=-(-len(tok) // 64) * 64, max_seq_len=256, length_head=True,
                                  max_target_length=65)
    return ChatModel(BiGLM(cfg).eval(), tok)


def messages(i: int) -> list[dict[str, str]]:
    words = TEXT.split()
    return [{"role": "user", "content": " ".join(words[:8 + (i * 13) % 53])}]


def run_load(chat: ChatModel, stepper: Any, settings_of: Any, n: int, gap: float) -> dict[str, Any]:
    """``n`` requests, one every ``gap`` seconds, through a scheduler decoding with ``stepper``."""
    saved = STEPPERS.get("mask-predict")
    if stepper is WholeStepper:
        STEPPERS.pop("mask-predict", None)
    else:
        STEPPERS["mask-predict"] = stepper
    sched = Scheduler(chat, max_batch=16, queue_size=64).start()
    try:
        start = time.perf_counter()
        handles = []
        for i in range(n):
            time.sleep(max(0.0, start + i * gap - time.perf_counter()))
            handles.append(sched.submit(ReplyRequest(settings_of(i), messages=messages(i))))
        replies = [h.result(timeout=600) for h in handles]
        wall = max(h.finished_at for h in handles) - min(h.submitted for h in handles)
    finally:
        sched.stop()
        if saved is not None:
            STEPPERS["mask-predict"] = saved
    lat = sorted(h.finished_at - h.submitted for h in handles)
    return {"requests": n, "requests_per_s": n / wall, "p50_s": statistics.median(lat),
            "p95_s": lat[min(n - 1, round(0.95 * (n - 1)))], "steps": sched.stats.steps,
            "tokens": sum(len(r.token_ids) for r in replies)}


def pass_times(chat: ChatModel, rows: int, repeats: int) -> dict[str, float]:
    """Seconds per pass of ``rows`` rows (greedy, 32 tokens, 10 passes) decoding together, with and without the
    prefix cache (the prompts' encoding at admission not counted); best of ``repeats``."""
    settings = ChatSettings(max_new_tokens=32, steps=10, length="fixed")
    best = {"prefix cache": float("inf"), "re-encoded": float("inf")}
    for _ in range(repeats + 1):  # the first round warms up
        for name in best:
            batch = PassBatch(chat.model)
            for i in range(rows):
                ids, _ = chat.prompt_of(messages(i), settings)
                batch.add(i, DecodeJob(chat.model, ids, prefix_cache=name == "prefix cache",
                                       **chat.masked_decoding(settings)))
            start, passes = time.perf_counter(), 0
            while any(not j.done for j in batch.jobs.values()):
                batch.step()
                passes += 1
            best[name] = min(best[name], (time.perf_counter() - start) / passes)
    return best


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--threads", type=int, default=int(os.environ.get("BENCH_THREADS", "2")))
    p.add_argument("--repeats", type=int, default=None, help="runs of each case (best kept; default 3, quick 1)")
    p.add_argument("--tokenizer", default=str(ROOT / "data" / "demo" / "tokenizer"),
                   help="tokenizer folder (default: the demo's; a small BPE trained here when it is missing)")
    p.add_argument("--out", default=str(ROOT / "bench" / "results" / "masked_stepper.json"))
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    repeats = args.repeats or (1 if args.quick else 3)
    chat = chat_model(args.tokenizer)
    results: dict[str, Any] = {"machine": machine_info(), "load": {}, "pass_seconds": {}}
    for workload, settings_of in WORKLOADS.items():
        alone = min(run_load(chat, MaskedStepper, settings_of, 1, 0.0)["p50_s"] for _ in range(2))
        gap = alone / 4
        print(f"\n{workload}: one request alone {alone * 1000:.0f} ms; 16 requests, one every {gap * 1000:.0f} ms")
        print(f"{'stepper':30} {'req/s':>7} {'p50 s':>7} {'p95 s':>7} {'steps':>7}")
        runs: dict[str, list[dict[str, Any]]] = {name: [] for name in STEPPER_KINDS}
        for _ in range(repeats):  # interleaved: load on the machine spreads over all of them
            for name, stepper in STEPPER_KINDS.items():
                runs[name].append(run_load(chat, stepper, settings_of, 16, gap))
        results["load"][workload] = {"alone_s": alone, "gap_s": gap, "runs": runs}
        for name, rs in runs.items():
            best = max(rs, key=lambda r: r["requests_per_s"])
            print(f"{name:30} {best['requests_per_s']:7.2f} {best['p50_s']:7.3f} {best['p95_s']:7.3f} "
                  f"{best['steps']:7d}")
    print("\none pass over N rows (greedy, 32 tokens, prompts of 8..60 words), ms per pass")
    for rows in (8, 16):
        results["pass_seconds"][rows] = t = pass_times(chat, rows, repeats)
        print(f"N={rows:2d}: " + ", ".join(f"{k} {v * 1000:.1f}" for k, v in t.items()))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
