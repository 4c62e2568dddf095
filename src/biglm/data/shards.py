"""Tokenise a source into on-disk shards, in parallel and resumably, with a held-out validation split.

A source becomes one folder::

    OUT/train/tokens.bin   all tokens of the training documents, back to back (uint16 or uint32)
    OUT/train/docs.npy     int64 offsets of document starts into tokens.bin, length n_docs + 1
    OUT/train/meta.json    tokenizer name and hash, dtype, n_docs, n_tokens, source spec, "done": true
    OUT/val/...            the same for the held-out documents

Documents are read in a fixed order and cut into chunks; worker processes tokenise chunks into
``OUT/parts/NNNNNN.npz``. After an interruption the chunks already on disk are skipped. The final
files are written to temporary names and renamed, ``meta.json`` last, so a shard with ``"done": true``
is always complete; a rerun on a complete shard does nothing. A document goes to ``val`` when a hash
of its index and ``val_seed`` falls below ``val_fraction``.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import multiprocessing as mp
import os
import shutil
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from biglm.data.config import SourceConfig
from biglm.data.sources import as_source, iter_documents, source_signature
from biglm.data.tokenizer import tokenizer_fingerprint
from biglm.errors import BiglmError
from biglm.files import atomic_file, atomic_write_bytes, hold_lock

FORMAT = 1


def token_dtype(n_tokens: int) -> np.dtype:
    """uint16 when every id fits (vocabulary < 65536), else uint32."""
    return np.dtype(np.uint16 if n_tokens < 2**16 else np.uint32)


class Shard:
    """A finished shard folder, opened read-only: tokens are memory-mapped, offsets are in memory."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        if not Shard.is_complete(self.path):
            raise BiglmError(f"{self.path}: not a complete shard (missing files or meta.json without done)")
        self.meta: dict[str, Any] = json.loads((self.path / "meta.json").read_text())
        self.dtype = np.dtype(self.meta["dtype"])
        self.offsets: np.ndarray = np.load(self.path / "docs.npy")
        n = int(self.offsets[-1])
        # np.memmap cannot map an empty file.
        self.tokens = (np.memmap(self.path / "tokens.bin", dtype=self.dtype, mode="r", shape=(n,))
                       if n else np.zeros(0, self.dtype))

    @staticmethod
    def is_complete(path: str | os.PathLike) -> bool:
        """True when ``meta.json`` says done and the data files exist."""
        p = Path(path)
        try:
            meta = json.loads((p / "meta.json").read_text())
        except (OSError, ValueError):
            return False
        return bool(meta.get("done")) and (p / "tokens.bin").is_file() and (p / "docs.npy").is_file()

    @property
    def n_docs(self) -> int:
        return len(self.offsets) - 1

    @property
    def n_tokens(self) -> int:
        return int(self.offsets[-1])

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    def doc(self, i: int) -> np.ndarray:
        """Token ids of document ``i`` (a view into the memory map)."""
        return self.tokens[self.offsets[i]:self.offsets[i + 1]]

    def __repr__(self) -> str:
        return f"Shard({str(self.path)!r}, n_docs={self.n_docs}, n_tokens={self.n_tokens})"


def write_shard(path: str | os.PathLike, docs: list[np.ndarray] | list[list[int]], dtype: Any = np.uint16,
                meta: dict[str, Any] | None = None) -> Shard:
    """Write documents (lists of token ids) as a shard folder, atomically; handy for tests and tools."""
    p = Path(path)
    p.mkdir(parents=True, exist_ok=True)
    dtype = np.dtype(dtype)
    lengths = np.array([len(d) for d in docs], dtype=np.int64)
    tokens = np.concatenate([np.asarray(d, dtype=dtype) for d in docs]) if docs else np.zeros(0, dtype)
    _finish_shard(p, [(tokens, lengths)], dtype, dict(meta or {}))
    return Shard(p)


def _finish_shard(path: Path, parts: Iterator[tuple[np.ndarray, np.ndarray]] | list, dtype: np.dtype,
                  meta: dict[str, Any]) -> None:
    """Stream (tokens, lengths) parts into tokens.bin / docs.npy, then write meta.json (the done flag)."""
    path.mkdir(parents=True, exist_ok=True)
    (path / "meta.json").unlink(missing_ok=True)
    all_lengths = []
    with atomic_file(path / "tokens.bin", "wb") as f:
        for tokens, lengths in parts:
            f.write(np.ascontiguousarray(tokens, dtype=dtype).tobytes())
            all_lengths.append(np.asarray(lengths, dtype=np.int64))
    lengths = np.concatenate(all_lengths) if all_lengths else np.zeros(0, np.int64)
    offsets = np.zeros(len(lengths) + 1, np.int64)
    np.cumsum(lengths, out=offsets[1:])
    with atomic_file(path / "docs.npy", "wb") as f:
        np.save(f, offsets)
    meta = {"format": FORMAT, **meta, "dtype": dtype.name, "n_docs": len(lengths), "n_tokens": int(offsets[-1]),
            "done": True}
    atomic_write_bytes(path / "meta.json", json.dumps(meta, indent=1).encode())


def val_mask(doc_index: np.ndarray, seed: int, fraction: float) -> np.ndarray:
    """Deterministic held-out choice: splitmix64(index, seed) / 2**64 < fraction."""
    if fraction <= 0:
        return np.zeros(len(doc_index), bool)
    with np.errstate(over="ignore"):
        z = doc_index.astype(np.uint64) + np.uint64((seed * 0x9E3779B97F4A7C15 + 0x632BE59BD9B4E019) % 2**64)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z = z ^ (z >> np.uint64(31))
    return (z >> np.uint64(11)).astype(np.float64) * 2.0**-53 < fraction


# ---- worker side -------------------------------------------------------------------------------
_TOKENIZER: Any = None


def _init_worker(tokenizer_json: str, limit_threads: bool) -> None:
    """Build a private Rust tokenizer from its JSON (cheap to ship to a process, unlike transformers)."""
    global _TOKENIZER
    if limit_threads:  # one process per core already; avoid cores x cores threads
        os.environ["TOKENIZERS_PARALLELISM"] = "false"
    from tokenizers import Tokenizer

    tok = Tokenizer.from_str(tokenizer_json)
    tok.no_padding()
    tok.no_truncation()
    # A literal "[MASK]" or "<|endoftext|>" inside a document is text, not a control token.
    tok.encode_special_tokens = True
    _TOKENIZER = tok


def _encode_chunk(job: tuple[int, int, list[str], str, float, int, str]) -> tuple[int, int, int, int]:
    """Tokenise one chunk into parts/NNNNNN.npz; returns (index, n_docs, n_tokens, n_bytes)."""
    index, first_doc, docs, parts_dir, val_fraction, val_seed, dtype_name = job
    dtype = np.dtype(dtype_name)
    encs = _TOKENIZER.encode_batch_fast(docs, add_special_tokens=False)
    lengths = np.fromiter((len(e.ids) for e in encs), np.int64, count=len(encs))
    flat = np.fromiter((t for e in encs for t in e.ids), np.int64, count=int(lengths.sum()))
    if flat.size and flat.max() > np.iinfo(dtype).max:
        raise BiglmError(f"token id {int(flat.max())} does not fit {dtype.name}")
    is_val = val_mask(np.arange(first_doc, first_doc + len(docs)), val_seed, val_fraction)
    tok_val = np.repeat(is_val, lengths)
    out = Path(parts_dir) / f"{index:06d}.npz"
    with atomic_file(out, "wb") as f:
        np.savez(f, train_tokens=flat[~tok_val].astype(dtype), train_lengths=lengths[~is_val],
                 val_tokens=flat[tok_val].astype(dtype), val_lengths=lengths[is_val])
    return index, len(docs), int(lengths.sum()), sum(len(d.encode("utf-8", "replace")) for d in docs)


# ---- driver ------------------------------------------------------------------------------------
@dataclass
class ShardResult:
    """What ``tokenize_source`` produced (or found already done)."""

    train: Path
    val: Path
    reused: bool
    """True when the shard was already complete and nothing ran."""
    chunks: int = 0
    chunks_resumed: int = 0
    """Chunks found on disk from an interrupted run and not tokenised again."""
    n_bytes: int = 0
    """UTF-8 bytes of text tokenised in this call."""


def _chunks(docs: Iterator[str], chunk_docs: int, chunk_chars: int) -> Iterator[tuple[int, int, list[str]]]:
    index, first, buf, chars = 0, 0, [], 0
    for d in docs:
        buf.append(d)
        chars += len(d)
        if len(buf) >= chunk_docs or chars >= chunk_chars:
            yield index, first, buf
            index, first, buf, chars = index + 1, first + len(buf), [], 0
    if buf:
        yield index, first, buf


def cpu_count() -> int:
    """Cores this process may use."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def shard_key(spec: SourceConfig, tokenizer_hash: str, val_fraction: float, val_seed: int,
              chunk_docs: int) -> str:
    """Hash of everything that changes the tokenised output (source content, tokenizer, split)."""
    blob = json.dumps([FORMAT, spec.fingerprint_fields(), source_signature(spec), tokenizer_hash,
                       val_fraction, val_seed, chunk_docs], sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()


def tokenize_source(spec: SourceConfig | str, tokenizer: Any, out_dir: str | os.PathLike, *,
                    val_fraction: float = 0.0, val_seed: int = 0, num_workers: int = 0,
                    chunk_docs: int = 1024, chunk_chars: int = 8 << 20, progress: bool = True) -> ShardResult:
    """Tokenise every document of ``spec`` into ``out_dir/train`` and ``out_dir/val`` (see module doc).

    ``tokenizer`` is a Hugging Face fast tokenizer (from ``load_tokenizer``); documents are encoded
    without special tokens (packing adds BOS/EOS). ``num_workers`` processes (0 = one per core; 1 =
    in this process) tokenise chunks of ``chunk_docs`` documents. Safe to rerun after an interruption,
    and to call from several processes of one machine at once (a lock file serialises them; the later
    ones find the shard done).
    """
    spec = as_source(spec)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    with hold_lock(out / ".lock", str(out), wait=True):  # several ranks of one machine may call this at once
        return _tokenize_locked(spec, tokenizer, out, val_fraction, val_seed, num_workers, chunk_docs,
                                chunk_chars, progress)


def _tokenize_locked(spec: SourceConfig, tokenizer: Any, out: Path, val_fraction: float, val_seed: int,
                     num_workers: int, chunk_docs: int, chunk_chars: int, progress: bool) -> ShardResult:
    from tqdm.auto import tqdm

    train_dir, val_dir = out / "train", out / "val"
    tok_hash = tokenizer_fingerprint(tokenizer)
    key = shard_key(spec, tok_hash, val_fraction, val_seed, chunk_docs)
    job = {"key": key, "source": spec.fingerprint_fields(), "tokenizer": str(tokenizer.name_or_path),
           "tokenizer_hash": tok_hash, "val_fraction": val_fraction, "val_seed": val_seed}
    if all(Shard.is_complete(d) and Shard(d).meta.get("key") == key for d in (train_dir, val_dir)):
        return ShardResult(train_dir, val_dir, reused=True)

    parts = out / "parts"
    job_file = out / "job.json"
    if job_file.is_file() and json.loads(job_file.read_text()).get("key") != key:
        shutil.rmtree(parts, ignore_errors=True)  # parts of another tokenizer/source: useless
    parts.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(job_file, json.dumps(job, indent=1).encode())
    done = {int(p.name[:6]) for p in parts.glob("[0-9]" * 6 + ".npz")}
    dtype = token_dtype(len(tokenizer))
    workers = num_workers or cpu_count()
    tok_json = tokenizer.backend_tokenizer.to_str()

    chunks = _chunks(iter_documents(spec), chunk_docs, chunk_chars)
    n_chunks, resumed, n_bytes = 0, 0, 0
    bar = tqdm(desc=f"tokenise {spec.display_name}", unit="doc", disable=not progress, dynamic_ncols=True,
               mininterval=2.0)

    def jobs() -> Iterator[tuple]:
        nonlocal n_chunks, resumed
        for index, first, docs in chunks:
            n_chunks += 1
            if index in done:
                resumed += 1
                bar.update(len(docs))
                continue
            yield index, first, docs, str(parts), val_fraction, val_seed, dtype.name

    def finished(r: tuple[int, int, int, int]) -> None:
        nonlocal n_bytes
        n_bytes += r[3]
        bar.update(r[1])

    pending = jobs()
    try:
        first_jobs = [j for _, j in zip(range(2), pending)]
        if workers == 1 or len(first_jobs) < 2:
            _init_worker(tok_json, limit_threads=False)
            for j in itertools.chain(first_jobs, pending):
                finished(_encode_chunk(j))
        else:
            # fork: workers need nothing from the parent but the tokenizer JSON, and unlike spawn or
            # forkserver it does not re-run the caller's script (which may lack a __main__ guard).
            ctx = mp.get_context("fork" if "fork" in mp.get_all_start_methods() else "spawn")
            with ctx.Pool(workers, initializer=_init_worker, initargs=(tok_json, True)) as pool:
                inflight: deque = deque()
                for j in itertools.chain(first_jobs, pending):  # lazily: the corpus may not fit in memory
                    inflight.append(pool.apply_async(_encode_chunk, (j,)))
                    while len(inflight) >= 2 * workers:  # bounded: never read the corpus far ahead
                        finished(inflight.popleft().get())
                while inflight:
                    finished(inflight.popleft().get())
    finally:
        bar.close()

    meta = {"name": spec.display_name, "key": key, "source": spec.fingerprint_fields(), "tokenizer": job["tokenizer"],
            "tokenizer_hash": tok_hash, "val_fraction": val_fraction, "val_seed": val_seed}
    files = [parts / f"{i:06d}.npz" for i in range(n_chunks)]
    for split, d in (("train", train_dir), ("val", val_dir)):
        def read(split: str = split) -> Iterator[tuple[np.ndarray, np.ndarray]]:
            for f in files:
                with np.load(f) as z:
                    yield z[f"{split}_tokens"], z[f"{split}_lengths"]
        _finish_shard(d, read(), dtype, {**meta, "split": split})
    shutil.rmtree(parts, ignore_errors=True)
    return ShardResult(train_dir, val_dir, reused=False, chunks=n_chunks, chunks_resumed=resumed, n_bytes=n_bytes)
