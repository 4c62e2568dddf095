"""Data-pipeline throughput on the demo corpus: tokenisation (MB/s, per core) and packing (tokens/s).

    PYTHONPATH=src python bench/data_throughput.py [--corpus data/demo] [--vocab 8192]

Fetches the demo corpus if needed (pip, see ``biglm.data.corpus``), trains (once) a byte-level BPE
demo tokenizer, tokenises both sources with 1 and with all worker processes, then packs rows. "Per
core" divides text bytes by the CPU seconds of every process involved (user + system), so it stays
meaningful on a shared machine; wall-clock rates are reported too. Writes
``bench/results/data_throughput.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

from biglm.data import PackedRows, Shard, fetch_demo_corpus, load_tokenizer, tokenize_source, train_tokenizer
from biglm.data.corpus import corpus_stats
from biglm.data.shards import cpu_count


def cpu_seconds() -> float:
    """User + system CPU time of this process and its finished children."""
    s, c = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return s.ru_utime + s.ru_stime + c.ru_utime + c.ru_stime


def timed(fn):
    w0, c0 = time.perf_counter(), cpu_seconds()
    out = fn()
    return out, time.perf_counter() - w0, cpu_seconds() - c0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--corpus", default="data/demo")
    ap.add_argument("--vocab", type=int, default=8192)
    ap.add_argument("--workers", default=f"1,{cpu_count()}", help="comma-separated worker counts")
    ap.add_argument("--seq-len", type=int, nargs="+", default=[512, 2048])
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--pack-tokens", type=float, default=4e6, help="tokens to pack per setting")
    ap.add_argument("--out", default="bench/results/data_throughput.json")
    args = ap.parse_args()

    files = fetch_demo_corpus(args.corpus)
    stats = {k: corpus_stats(p) for k, p in files.items()}  # (documents, UTF-8 bytes of text)
    tok_dir = Path(args.corpus) / f"tokenizer-{args.vocab // 1024}k"
    train_s = None
    if not (tok_dir / "tokenizer.json").is_file():
        _, train_s, _ = timed(lambda: train_tokenizer([str(p) for p in files.values()], args.vocab, tok_dir))
    tok = load_tokenizer(tok_dir)
    results = {"machine": {"cpus": cpu_count(), "load_avg_1m": os.getloadavg()[0], "python": sys.version.split()[0],
                           "platform": platform.platform()},
               "corpus": {k: {"documents": d, "text_MB": round(b / 1e6, 3)} for k, (d, b) in stats.items()},
               "tokenizer": {"path": str(tok_dir), "len": len(tok), "train_seconds": train_s},
               "tokenise": [], "pack": []}

    work = Path(tempfile.mkdtemp(prefix="biglm-bench-"))
    try:
        shard_dirs = {}
        for w in sorted({int(x) for x in args.workers.split(",")}):
            for name, path in files.items():
                out = work / f"{name}-w{w}"
                res, wall, cpu = timed(lambda p=path, o=out, w=w: tokenize_source(
                    str(p), tok, o, val_fraction=0.005, num_workers=w, progress=False))
                mb = res.n_bytes / 1e6
                shard_dirs[name] = res.train
                n_tok = Shard(res.train).n_tokens + Shard(res.val).n_tokens
                results["tokenise"].append({"source": name, "workers": w, "MB": round(mb, 3), "tokens": n_tok,
                                            "wall_s": round(wall, 3),
                                            "MB_per_s": round(mb / wall, 3), "cpu_s": round(cpu, 3),
                                            "MB_per_cpu_s": round(mb / cpu, 3)})
        weights = {shard_dirs["wiki"]: 0.5, shard_dirs["shakespeare"]: 0.5}
        for seq_len in args.seq_len:
            rows = PackedRows(weights, seq_len, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                              pad_token_id=tok.pad_token_id, seed=0)
            n_batches = max(1, int(args.pack_tokens // (seq_len * args.batch_size)))

            def run(rows=rows, n_batches=n_batches):
                it, n = rows.batches(args.batch_size), 0
                for _ in range(n_batches):
                    n += next(it)["input_ids"].numel()
                return n

            n, wall, cpu = timed(run)
            results["pack"].append({"seq_len": seq_len, "batch_size": args.batch_size, "tokens": n,
                                    "wall_s": round(wall, 3), "Mtok_per_s": round(n / wall / 1e6, 3),
                                    "Mtok_per_cpu_s": round(n / cpu / 1e6, 3)})
    finally:
        shutil.rmtree(work, ignore_errors=True)

    print(f"demo corpus: {', '.join(f'{k} {d:,} docs {b / 1e6:.2f} MB' for k, (d, b) in stats.items())}; "
          f"tokenizer {len(tok)} tokens; {cpu_count()} cpus, load {results['machine']['load_avg_1m']:.1f}")
    print(f"\n{'tokenise':<14}{'workers':>8}{'MB':>8}{'tokens':>11}{'wall s':>9}{'MB/s':>8}{'MB/cpu-s':>10}")
    for r in results["tokenise"]:
        print(f"{r['source']:<14}{r['workers']:>8}{r['MB']:>8.2f}{r['tokens']:>11,}{r['wall_s']:>9.2f}{r['MB_per_s']:>8.2f}"
              f"{r['MB_per_cpu_s']:>10.2f}")
    print(f"\n{'pack seq_len':<14}{'batch':>8}{'tokens':>11}{'Mtok/s':>9}{'Mtok/cpu-s':>12}")
    for r in results["pack"]:
        print(f"{r['seq_len']:<14}{r['batch_size']:>8}{r['tokens']:>11,}{r['Mtok_per_s']:>9.2f}"
              f"{r['Mtok_per_cpu_s']:>12.2f}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=1) + "\n")
    print(f"\nwrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
