"""The pairs to judge: read from a file, or sampled from one checkpoint twice or from two checkpoints.

Pairs file: JSONL in biglm's preference format without a choice (``prompt``, ``response_a``, ``response_b``,
optional ``model_a`` / ``model_b``). Prompts file: ``.txt`` (one prompt per line) or JSONL with ``prompt``,
``instruction`` (plus optional ``input``) or ``messages`` (a conversation ending with a user turn) per line.

Sampled pairs are cached in a side file (``JsonlLog``: each pair appended whole as it is made), so a restart
shows the same pairs and samples only the ones still missing; its first line records the checkpoints and
settings, and a cache made with others is refused rather than mixed in. With ``shuffle`` a pair's two
responses are put in A/B order by a seeded coin per prompt, so neither model sits always on the same side.
"""

from __future__ import annotations

import json
import random
import sys
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from biglm.data.chat import check_messages
from biglm.data.records import Record, read_records
from biglm.errors import BiglmError

from .store import JsonlLog, pair_key


@dataclass
class Pair:
    """A prompt (text or chat messages) and two responses to judge."""

    prompt: str | list[dict[str, str]]
    response_a: str
    response_b: str
    model_a: str = ""
    model_b: str = ""

    @property
    def key(self) -> str:
        return pair_key(self.prompt, self.response_a, self.response_b)

    def to_dict(self) -> dict[str, Any]:
        return {"prompt": self.prompt, "response_a": self.response_a, "response_b": self.response_b,
                "model_a": self.model_a, "model_b": self.model_b}


def _prompt_of(record: Record) -> str | list[dict[str, str]]:
    f = record.fields
    if "messages" in f:
        messages = check_messages(f["messages"], record.where, need_reply=False)
        if messages[-1]["role"] != "user":
            raise BiglmError(f"{record.where}: the last message is {messages[-1]['role']!r}; expected a user turn")
        return messages
    for name in ("prompt", "instruction"):
        if name in f:
            value = f[name]
            if not isinstance(value, str) or not value.strip():
                raise BiglmError(f"{record.where}: field '{name}' must be a non-empty string")
            extra = f.get("input") if name == "instruction" else None
            return f"{value.strip()}\n\n{extra.strip()}" if isinstance(extra, str) and extra.strip() else value
    keys = ", ".join(sorted(f)) or "none"
    raise BiglmError(f"{record.where}: expected a 'prompt', 'instruction' or 'messages' field (fields: {keys})")


def read_prompts(path: str | Path) -> list[str | list[dict[str, str]]]:
    """The prompts of a ``.txt`` file (one per non-empty line) or of any record file the fine-tuning readers take
    (JSONL, JSON, CSV/TSV, Parquet, ``hf:NAME``; one-line errors naming file:line)."""
    path = Path(path)
    if path.suffix == ".txt":
        if not path.is_file():
            raise BiglmError(f"{path}: no such file")
        prompts: list[str | list[dict[str, str]]] = [
            line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    else:
        prompts = [_prompt_of(r) for r in read_records(str(path))]
    if not prompts:
        raise BiglmError(f"{path}: no prompts")
    return prompts


def _response(record: Record, name: str) -> str:
    value = record.fields.get(name)
    if not isinstance(value, str) or not value.strip():
        keys = ", ".join(sorted(record.fields)) or "none"
        what = "missing" if value is None else "must be a non-empty string"
        raise BiglmError(f"{record.where}: field '{name}' {what} (a pair needs prompt, response_a and response_b; "
                         f"fields: {keys})")
    return value


def read_pairs(path: str | Path) -> list[Pair]:
    """The pairs of a pairs file in any record format (or of a sampled-pairs cache); a pair repeated word for word
    is shown once."""
    pairs, seen = [], set()
    for r in read_records(str(path)):
        if set(r.fields) == {"signature"}:  # the header of a sampled-pairs cache: its pairs follow
            continue
        if "prompt" not in r.fields:
            raise BiglmError(f"{r.where}: missing field 'prompt'")
        pair = Pair(_prompt_of(r), _response(r, "response_a"), _response(r, "response_b"),
                    str(r.fields.get("model_a") or ""), str(r.fields.get("model_b") or ""))
        if pair.key not in seen:
            seen.add(pair.key)
            pairs.append(pair)
    if not pairs:
        raise BiglmError(f"{path}: no pairs")
    return pairs


Sampler = Callable[[Sequence[str | list[dict[str, str]]]], list[tuple[str, str]]]
"""Two responses (the first sampler's, the second's) to each of a batch of prompts."""


class PairPool:
    """The pairs in the order they are shown, growing while a background thread samples them.

    ``total`` is how many there will be, ``pairs`` those ready now; ``error`` is set when sampling failed."""

    def __init__(self, pairs: Sequence[Pair] = (), total: int | None = None) -> None:
        self.pairs: list[Pair] = list(pairs)
        self.total = len(self.pairs) if total is None else total
        self.error: str | None = None
        self._by_key = {p.key: p for p in self.pairs}
        self._lock = threading.Lock()
        self.finished = threading.Event()
        if total is None:
            self.finished.set()

    @property
    def sampling(self) -> bool:
        return not self.finished.is_set()

    def add(self, pair: Pair) -> None:
        with self._lock:
            if pair.key not in self._by_key:
                self._by_key[pair.key] = pair
                self.pairs.append(pair)

    def get(self, key: str) -> Pair | None:
        return self._by_key.get(key)

    def snapshot(self) -> list[Pair]:
        with self._lock:
            return list(self.pairs)


def sampled_pool(prompts: Sequence[str | list[dict[str, str]]], sample: Sampler, names: tuple[str, str],
                 cache: str | Path, signature: dict[str, Any], batch: int = 8, shuffle: bool = True,
                 seed: int = 0, background: bool = True) -> PairPool:
    """A pool of pairs for ``prompts`` sampled by ``sample`` (model names ``names``), cached in ``cache``.

    Pairs already in the cache are ready at once; the rest are sampled ``batch`` prompts at a time, in the
    background (``background``) or before returning. Progress goes to stderr."""
    log = JsonlLog(cache, "sampled pairs")
    head = {"signature": signature}
    if not log.records:
        log.append(head)
    elif log.records[0] != head:
        log.close()
        raise BiglmError(f"{cache}: these pairs were sampled with other checkpoints or settings "
                         f"({json.dumps(log.records[0].get('signature'))}); remove the file or pass another "
                         "--pairs-cache")
    pool = PairPool(total=len(prompts))
    ready: dict[int, Pair] = {}
    for i, r in enumerate(log.records[1:], 2):
        index = r.get("index")
        if not isinstance(index, int) or index >= len(prompts) or r.get("prompt") != prompts[index]:
            log.close()
            raise BiglmError(f"{cache}:{i}: this cached pair's prompt is not prompt {index} of the prompts file; "
                             "remove the cache file (the prompts changed)")
        ready[index] = Pair(r["prompt"], r["response_a"], r["response_b"], r.get("model_a", ""), r.get("model_b", ""))
    for i in sorted(ready):
        pool.add(ready[i])
    todo = [i for i in range(len(prompts)) if i not in ready]

    def run() -> None:
        try:
            for start in range(0, len(todo), batch):
                chunk = todo[start:start + batch]
                for i, (first, second) in zip(chunk, sample([prompts[i] for i in chunk])):
                    swap = shuffle and random.Random(seed * 1_000_003 + i).random() < 0.5
                    (ra, ma), (rb, mb) = ((second, names[1]), (first, names[0])) if swap else \
                        ((first, names[0]), (second, names[1]))
                    pair = Pair(prompts[i], ra, rb, ma, mb)
                    log.append({"index": i, **pair.to_dict()})
                    pool.add(pair)
                print(f"annotate: sampled {len(pool.pairs)} of {pool.total} pairs", file=sys.stderr, flush=True)
        except Exception as e:  # shown on the page and printed; the pairs sampled so far stay usable
            pool.error = f"{type(e).__name__}: {e}" if not isinstance(e, BiglmError) else str(e)
            print(f"annotate: sampling failed: {pool.error}", file=sys.stderr, flush=True)
        finally:
            log.close()
            if pool.error is None:  # a word-for-word repeated pair is shown once
                pool.total = len(pool.pairs)
            pool.finished.set()

    if not todo:
        log.close()
        pool.total = len(pool.pairs)
        pool.finished.set()
    elif background:
        threading.Thread(target=run, name="biglm-sampler", daemon=True).start()
    else:
        run()
        if pool.error:
            raise BiglmError(f"sampling pairs failed: {pool.error}")
    return pool


def chat_sampler(models: Sequence[Any], settings: Sequence[Any]) -> Sampler:
    """A sampler over ``biglm.chat.ChatModel`` objects: response A from ``models[0]`` with ``settings[0]``,
    B from ``models[-1]`` with ``settings[1]`` (one checkpoint sampled twice, or two checkpoints)."""

    def sample(prompts: Sequence[str | list[dict[str, str]]]) -> list[tuple[str, str]]:
        conversations = [[{"role": "user", "content": p}] if isinstance(p, str) else p for p in prompts]
        first = models[0].replies(conversations, settings[0])
        second = models[-1].replies(conversations, settings[1])
        return [(a.text or "(empty)", b.text or "(empty)") for a, b in zip(first, second)]

    return sample


__all__ = ["Pair", "PairPool", "chat_sampler", "read_pairs", "read_prompts", "sampled_pool"]
