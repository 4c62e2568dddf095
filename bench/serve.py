"""Benchmark ``biglm serve`` under load and chat reply latency (speed only, not quality).

(a) load test: an in-process ``biglm serve`` (FastAPI on uvicorn, loopback only) for a masked and a causal model;
    1, 4, 16 and 64 concurrent clients each send ``--requests`` ``/v1/chat/completions`` requests back to back
    (32-token replies, 10 Mask-Predict passes or 32 tokens, greedy), non-streamed and streamed (the stream read to
    its end). Requests/s, p50 / p95 latency, and what every request got: 200, 503 (with ``Retry-After``), another
    status, or a connection error. Each setting runs with the continuous steppers (the server's default) and with
    ``WholeStepper`` (requests batched only between whole replies, as the earlier server did) in the same run;
    the earlier ``http.server`` server's recorded figures (``EARLIER``) are printed beside them.
(b) one chat reply of L tokens after a 64-token conversation: BiGLM's Mask-Predict (T = 10 passes, prefix
    cache, ``biglm.chat``) against transformers' ``generate()`` (KV cache, greedy, exactly L new tokens) on a
    same-shape ``LlamaForCausalLM``, and biglm's own KV-cached greedy decoder (exactly L tokens) on a
    ``causal`` model of that shape.

Models have the ``demo`` preset's shape with random weights, the demo tokenizer when ``data/demo/tokenizer``
exists, else a byte-level BPE trained here on a few lines. Bounded: every request has a 120 s timeout.

    python bench/serve.py            # full run (a few minutes on 2 CPU cores)
    python bench/serve.py --quick    # masked model, 1/16/64 clients, about a minute

Prints tables and writes ``bench/results/serve.json`` (``serve_quick.json``).
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse
import json
import statistics
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import requests
import torch

from biglm import BiGLM, ModelConfig
from biglm.chat import ChatModel, ChatSettings
from biglm.data.chat import set_chat_template
from biglm.generate import AROptions, generate_ar_ids
from biglm.serve.app import create_app
from biglm.serve.scheduler import STEPPERS
from biglm.serve.server import Server
from common import best_of, llama_like, machine_info

ROOT = Path(__file__).resolve().parents[1]
TEXT = ("The Pacific Ocean is the largest and deepest of the oceans. It extends from the Arctic Ocean in the north "
        "to the Southern Ocean in the south. Photosynthesis is the process used by plants to convert light energy "
        "into chemical energy. The French Revolution was a period of political and societal change in France.")


def tokenizer() -> Any:
    from biglm.data.tokenizer import load_tokenizer, train_tokenizer

    folder = ROOT / "data" / "demo" / "tokenizer"
    if folder.is_dir():
        return load_tokenizer(folder)
    tmp = Path(tempfile.mkdtemp())
    (tmp / "text.txt").write_text("\n".join([TEXT] * 50))
    return train_tokenizer([tmp / "text.txt"], 512, tmp / "tok")


def chat_model(tok: Any, family: str = "masked") -> ChatModel:
    torch.manual_seed(0)
    cfg = ModelConfig.from_preset("demo", vocab_size=-(-len(tok) // 64) * 64, max_seq_len=256, family=family,
                                  length_head=family == "masked", max_target_length=65)
    set_chat_template(tok)
    return ChatModel(BiGLM(cfg).eval(), tok, ChatSettings(max_new_tokens=32, steps=10, length="fixed"))


def conversation(tok: Any, tokens: int = 64) -> list[dict[str, str]]:
    """A user turn of about ``tokens`` prompt tokens."""
    words = TEXT.split()
    n = 8
    while len(tok(" ".join(words[:n]))["input_ids"]) < tokens - 6 and n < len(words):
        n += 1
    return [{"role": "user", "content": " ".join(words[:n])}]


EARLIER = {1: (7.96, 0.213), 4: (13.25, 0.407), 16: (12.95, 1.544)}
"""The earlier ``http.server`` server (batch 8, masked demo shape, non-streamed): clients -> (req/s, p95 s),
from ``bench/results/serve.json`` as committed before this stack (same machine kind, same request)."""


def load_test(chat: ChatModel, clients: int, per_client: int, stream: bool, continuous: bool,
              max_tokens: int = 32) -> dict[str, Any]:
    """One load setting; ``continuous=False`` serves with ``WholeStepper`` (no joining mid-reply)."""
    saved = dict(STEPPERS)
    if not continuous:
        STEPPERS.clear()
    try:
        server = Server(create_app(chat, queue_size=64, max_batch=16)).start()
    finally:
        STEPPERS.clear()
        STEPPERS.update(saved)
    latencies: list[float] = []
    outcomes: Counter[str] = Counter()
    lock = threading.Lock()
    body = {"messages": conversation(chat.tokenizer, 32), "max_tokens": max_tokens, "steps": 10, "length": "fixed",
            "stream": stream}

    def one(s: requests.Session) -> None:
        start = time.perf_counter()
        try:
            with s.post(f"{server.url}/v1/chat/completions", json=body, timeout=120, stream=stream) as r:
                if r.status_code == 200 and stream:
                    for _ in r.iter_lines():
                        pass
                elif r.status_code == 200:
                    r.json()
                took = time.perf_counter() - start
                kind = "200" if r.status_code == 200 else (
                    "503" if r.status_code == 503 and r.headers.get("Retry-After") else str(r.status_code))
        except requests.RequestException as e:
            took, kind = time.perf_counter() - start, f"connection error: {type(e).__name__}"
        with lock:
            outcomes[kind] += 1
            if kind == "200":
                latencies.append(took)

    def client() -> None:
        with requests.Session() as s:
            for _ in range(per_client):
                one(s)

    threads = [threading.Thread(target=client) for _ in range(clients)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    server.stop()
    lat = sorted(latencies) or [float("nan")]
    q = lambda p: lat[min(len(lat) - 1, round(p * (len(lat) - 1)))]
    return {"clients": clients, "stream": stream, "continuous": continuous, "requests": clients * per_client,
            "outcomes": dict(outcomes), "requests_per_s": len(latencies) / wall, "p50_s": statistics.median(lat),
            "p95_s": q(0.95)}


def reply_latency(tok: Any, length: int, repeats: int) -> dict[str, Any]:
    masked, causal = chat_model(tok), chat_model(tok, "causal")
    msgs = conversation(tok, 64)
    settings = ChatSettings(max_new_tokens=length, steps=10, length="fixed")
    prompt, _ = masked.prompt_of(msgs, settings)
    ids = torch.tensor([[tok.bos_token_id, *prompt]])
    llama = llama_like(causal.model.config, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                       pad_token_id=tok.pad_token_id).eval()

    def hf() -> int:
        with torch.inference_mode():
            out = llama.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=length,
                                 min_new_tokens=length, do_sample=False)
        return out.shape[1] - ids.shape[1]

    times = best_of({"biglm masked (Mask-Predict, T=10)": lambda: masked.reply(msgs, settings),
                     "biglm causal (KV cache, greedy)": lambda: generate_ar_ids(
                         causal.model, [prompt], bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                         options=AROptions(max_new_tokens=length, min_new_tokens=length)),
                     "transformers generate() (KV cache, greedy)": hf}, repeats)
    return {"prompt_tokens": ids.shape[1], "reply_tokens": length,
            "seconds": {name: t for name, (t, _) in times.items()}}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--requests", type=int, default=None, help="requests per client (default 4, quick 2)")
    args = p.parse_args()
    torch.set_num_threads(int(os.environ.get("BENCH_THREADS", "2")))
    tok = tokenizer()
    per_client = args.requests or (2 if args.quick else 4)
    families = ("masked",) if args.quick else ("masked", "causal")
    client_counts = (1, 16, 64) if args.quick else (1, 4, 16, 64)
    rows = []
    print("| model | clients | stream | scheduler | requests | req/s | p50 (s) | p95 (s) | outcomes | earlier server |")
    print("|---|---:|---|---|---:|---:|---:|---:|---|---|")
    for family in families:
        chat = chat_model(tok, family)
        for clients in client_counts:
            for stream in (False, True):
                for continuous in (True, False):
                    row = load_test(chat, clients, per_client, stream, continuous)
                    row["model"] = family
                    rows.append(row)
                    earlier = EARLIER.get(clients) if family == "masked" and not stream else None
                    then = f"{earlier[0]:.1f} req/s, p95 {earlier[1]:.2f} s" if earlier else ""
                    print(f"| {family} | {clients} | {'yes' if stream else 'no'} | "
                          f"{'continuous' if continuous else 'whole'} | {row['requests']} | "
                          f"{row['requests_per_s']:.1f} | {row['p50_s']:.3f} | {row['p95_s']:.3f} | "
                          f"{', '.join(f'{k}: {v}' for k, v in sorted(row['outcomes'].items()))} | {then} |",
                          flush=True)
    latency = [reply_latency(tok, n, 2 if args.quick else 5) for n in ((32,) if args.quick else (32, 64))]
    print("\n| reply | " + " | ".join(latency[0]["seconds"]) + " |\n|---|" + "---:|" * len(latency[0]["seconds"]))
    for row in latency:
        print(f"| {row['reply_tokens']} tokens after {row['prompt_tokens']} | " +
              " | ".join(f"{t * 1000:.1f} ms" for t in row["seconds"].values()) + " |")
    out = ROOT / "bench" / "results" / ("serve_quick.json" if args.quick else "serve.json")
    out.write_text(json.dumps({"machine": machine_info(), "model": "demo shape (random weights)",
                               "earlier_server": {str(k): {"requests_per_s": v[0], "p95_s": v[1]}
                                                  for k, v in EARLIER.items()},
                               "load_test": rows, "reply_latency": latency}, indent=2))
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
