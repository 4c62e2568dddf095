"""Benchmark ``biglm serve`` and chat reply latency (speed only, not quality).

(a) load test: an in-process ``biglm serve`` on loopback, 1, 4 and 16 concurrent clients each sending
    ``--requests`` non-streamed ``/v1/chat/completions`` requests (32-token replies, 10 Mask-Predict passes,
    greedy) back to back; requests/s and p50 / p95 latency, with the server batching waiting requests
    (``--batch 8``) and without (``batch 1``). It stops by itself after the last request.
(b) one chat reply of L tokens after a 64-token conversation: BiGLM's Mask-Predict (T = 10 passes, prefix
    cache, ``biglm.chat``) against transformers' ``generate()`` (KV cache, greedy, exactly L new tokens) on a
    same-shape ``LlamaForCausalLM``, and biglm's own KV-cached greedy decoder (exactly L tokens) on a
    ``causal`` model of that shape.

Models have the ``demo`` preset's shape with random weights (or ``--ckpt``: a trained checkpoint for (a)), the
demo tokenizer when ``data/demo/tokenizer`` exists, else a byte-level BPE trained here on a few lines.

    python bench/serve.py            # full run (a few minutes on 2 CPU cores)
    python bench/serve.py --quick    # under a minute

Prints tables and writes ``bench/results/serve.json``.
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
from pathlib import Path
from typing import Any

import requests
import torch

from biglm import BiGLM, ModelConfig
from biglm.chat import ChatModel, ChatSettings
from biglm.data.chat import set_chat_template
from biglm.generate import AROptions, generate_ar_ids
from biglm.serve.app import create_app
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


def load_test(chat: ChatModel, clients: int, per_client: int, batch: int, max_tokens: int) -> dict[str, Any]:
    server = Server(create_app(chat, queue_size=64, max_batch=batch)).start()
    latencies: list[float] = []
    lock = threading.Lock()
    errors = []
    body = {"messages": conversation(chat.tokenizer, 32), "max_tokens": max_tokens, "steps": 10, "length": "fixed"}

    def client() -> None:
        with requests.Session() as s:
            for _ in range(per_client):
                start = time.perf_counter()
                r = s.post(f"{server.url}/v1/chat/completions", json=body, timeout=600)
                took = time.perf_counter() - start
                with lock:
                    (latencies if r.status_code == 200 else errors).append(took if r.status_code == 200 else r.text)

    threads = [threading.Thread(target=client) for _ in range(clients)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    server.stop()
    lat = sorted(latencies)
    q = lambda p: lat[min(len(lat) - 1, round(p * (len(lat) - 1)))]
    return {"clients": clients, "batch": batch, "requests": len(lat), "errors": len(errors),
            "requests_per_s": len(lat) / wall, "p50_s": statistics.median(lat), "p95_s": q(0.95)}


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
    p.add_argument("--ckpt", default=None, help="a trained checkpoint for the load test (default: random demo shape)")
    p.add_argument("--requests", type=int, default=None, help="requests per client (default 6, quick 2)")
    args = p.parse_args()
    torch.set_num_threads(int(os.environ.get("BENCH_THREADS", "2")))
    tok = tokenizer()
    chat = ChatModel.load(args.ckpt) if args.ckpt else chat_model(tok)
    per_client = args.requests or (2 if args.quick else 6)
    rows = []
    print("| clients | server batch | requests | req/s | p50 latency (s) | p95 latency (s) |")
    print("|---:|---:|---:|---:|---:|---:|")
    for clients in (1, 4, 16):
        for batch in (8, 1):
            if clients == 1 and batch == 1:
                continue
            row = load_test(chat, clients, per_client, batch, 32)
            rows.append(row)
            print(f"| {clients} | {batch} | {row['requests']} | {row['requests_per_s']:.2f} | {row['p50_s']:.3f} | "
                  f"{row['p95_s']:.3f} |", flush=True)
    latency = [reply_latency(tok, n, 2 if args.quick else 5) for n in ((32,) if args.quick else (32, 64))]
    print("\n| reply | " + " | ".join(latency[0]["seconds"]) + " |\n|---|" + "---:|" * len(latency[0]["seconds"]))
    for row in latency:
        print(f"| {row['reply_tokens']} tokens after {row['prompt_tokens']} | " +
              " | ".join(f"{t * 1000:.1f} ms" for t in row["seconds"].values()) + " |")
    out = ROOT / "bench" / "results" / ("serve_quick.json" if args.quick else "serve.json")
    out.write_text(json.dumps({"machine": machine_info(), "model": "demo shape (random weights)" if not args.ckpt
                               else args.ckpt, "load_test": rows, "reply_latency": latency}, indent=2))
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
