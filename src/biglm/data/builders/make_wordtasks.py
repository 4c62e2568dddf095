"""Sequence tasks over real English words from the bundled corpus: copy and reverse 3-6 words (``--words``), and a
surface-feature cloze task ("does this sentence contain a number?") on real sentences.

    python -m biglm.data.builders.make_wordtasks data/demo/wiki.jsonl --out runs/wordtasks

The vocabulary is the corpus's ``--vocab`` most frequent lower-case alphabetic words (2+ letters): real
words that a byte-level BPE tokenizer cuts into one to four pieces each, so that a model must move
multi-token words, not single-token symbols. Copy and reversal examples are word sequences drawn at random
(3-6 words, or ``--words MIN MAX``); the validation and test sequences never occur in training. The cloze task
takes whole sentences of the summaries; a sentence is positive when it holds a digit. Writes
``copy_{train,valid,test}.jsonl``, ``reverse_{train,valid,test}.jsonl`` (``id``, ``source``, ``target``) and
``number_{train,valid,test}.jsonl`` (``id``, ``text``, ``label`` yes / no, balanced).
"""

from __future__ import annotations

import argparse
import collections
import json
import random
import re
import sys
from collections.abc import Iterable
from pathlib import Path

from biglm.data.held_out import sentences
from biglm.data.records import read_records
from biglm.errors import BiglmError
from biglm.files import atomic_write_text
from biglm.outputs import RESULTS, check_output

_WORD = re.compile(r"\b[a-z]{2,}\b")


def corpus_texts(path: str | Path) -> list[str]:
    """The ``text`` field of every line of a JSONL corpus."""
    return [str(r.get("text")) for r in read_records(str(path))]


def vocabulary(texts: Iterable[str], size: int) -> list[str]:
    """The ``size`` most frequent lower-case alphabetic words of ``texts`` (ties broken alphabetically)."""
    counts = collections.Counter(w for t in texts for w in _WORD.findall(t))
    return [w for w, _ in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:size]]


def word_sequences(words: list[str], n: int, rng: random.Random, min_words: int = 3, max_words: int = 6,
                   exclude: set[str] | None = None) -> list[str]:
    """``n`` distinct random sequences of ``min_words``..``max_words`` words, none of them in ``exclude``."""
    seen = set(exclude or ())
    out: list[str] = []
    while len(out) < n:
        seq = " ".join(rng.choice(words) for _ in range(rng.randint(min_words, max_words)))
        if seq not in seen:
            seen.add(seq)
            out.append(seq)
    return out


def sequence_tasks(words: list[str], sizes: tuple[int, int, int], seed: int = 0,
                   lengths: tuple[int, int] = (3, 6)) -> dict[str, list[dict]]:
    """``copy_*`` and ``reverse_*`` splits (train, valid, test) over the same held-out word sequences of
    ``lengths`` (min, max) words."""
    lo, hi = lengths
    if not 1 <= lo <= hi:
        raise BiglmError(f"--words {lo} {hi}: expected 1 <= MIN <= MAX")
    rng = random.Random(seed)
    held = word_sequences(words, sizes[1] + sizes[2], rng, lo, hi)
    train = word_sequences(words, sizes[0], rng, lo, hi, exclude=set(held))
    splits = {"train": train, "valid": held[:sizes[1]], "test": held[sizes[1]:]}
    out: dict[str, list[dict]] = {}
    for task, target in (("copy", lambda s: s), ("reverse", lambda s: " ".join(reversed(s.split())))):
        for split, seqs in splits.items():
            out[f"{task}_{split}"] = [{"id": f"{split}{i}", "source": s, "target": target(s)}
                                      for i, s in enumerate(seqs)]
    return out


def number_task(texts: Iterable[str], sizes: tuple[int, int, int], seed: int = 0, min_words: int = 6,
                max_words: int = 30) -> dict[str, list[dict]]:
    """Balanced ``number_*`` splits: real sentences labelled ``yes`` when they contain a digit, else ``no``."""
    pool: dict[bool, list[str]] = {True: [], False: []}
    seen: set[str] = set()
    for text in texts:
        for s in sentences(text.partition("\n")[2]):
            if min_words <= len(s.split()) <= max_words and s not in seen:
                seen.add(s)
                pool[any(c.isdigit() for c in s)].append(s)
    rng = random.Random(seed)
    need = sum(sizes)
    for label in pool:
        if len(pool[label]) < (need + 1) // 2:
            raise BiglmError(f"only {len(pool[label])} sentences {'with' if label else 'without'} a number; "
                             f"need {(need + 1) // 2}")
        rng.shuffle(pool[label])
    out: dict[str, list[dict]] = {}
    start = 0
    for split, n in zip(("train", "valid", "test"), sizes):
        half = n // 2
        rows = [(s, "yes") for s in pool[True][start:start + n - half]]
        rows += [(s, "no") for s in pool[False][start:start + half]]
        rng.shuffle(rows)
        out[f"number_{split}"] = [{"id": f"{split}{i}", "text": s, "label": y} for i, (s, y) in enumerate(rows)]
        start += n
    return out


def write_jsonl(path: Path, rows: list[dict]) -> None:
    atomic_write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m biglm.data.builders.make_wordtasks",
                                description=__doc__.split("\n")[0])
    p.add_argument("source", help="the bundled Wikipedia summaries (data/demo/wiki.jsonl)")
    p.add_argument("--out", required=True, help="folder for the task files")
    p.add_argument("--vocab", type=int, default=2000, help="most frequent words to draw from")
    p.add_argument("--sizes", type=int, nargs=3, default=(3000, 200, 200), metavar=("TRAIN", "VALID", "TEST"),
                   help="copy / reversal examples per split")
    p.add_argument("--words", type=int, nargs=2, default=(3, 6), metavar=("MIN", "MAX"),
                   help="words per copy / reversal sequence (default 3 6)")
    p.add_argument("--number-sizes", type=int, nargs=3, default=(500, 200, 400), metavar=("TRAIN", "VALID", "TEST"),
                   help="'contains a number' cloze examples per split")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    try:
        out = check_output(args.out, RESULTS, [args.source])  # never over the corpus it reads
        texts = corpus_texts(args.source)
        words = vocabulary(texts, args.vocab)
        splits = sequence_tasks(words, tuple(args.sizes), args.seed, tuple(args.words))
        splits |= number_task(texts, tuple(args.number_sizes), args.seed)
    except BiglmError as e:
        print(f"make_wordtasks: error: {e}", file=sys.stderr)
        return 2
    out.mkdir(parents=True, exist_ok=True)
    for name, rows in splits.items():
        write_jsonl(out / f"{name}.jsonl", rows)
    print(f"{out}: copy / reverse {args.sizes[0]} / {args.sizes[1]} / {args.sizes[2]} examples over {len(words)} "
          f"words; number {args.number_sizes[0]} / {args.number_sizes[1]} / {args.number_sizes[2]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
