"""A small instruction set from the bundled Wikipedia summaries, for instruction-tuning the demo model.

    python -m biglm.data.builders.make_instructions data/demo/wiki.jsonl --run runs/demo --out runs/demo/instruct

Each document is ``Title\\nSummary``. From the summary's first sentence (4 to 40 words) four instructions
are asked, each in one of several phrasings, the answer always read off the real text:

- the article's name (only where the title occurs verbatim in the sentence: a span to find);
- the sentence's first N words (N = 2 to 5, written as a word in the instruction);
- its last word (without the final punctuation);
- the sentence again, its first N words dropped.

Records are FLAN-style (instruction / input / output) or, for a third of the documents, a ``messages``
conversation asking two of the instructions about the same sentence (the second turn sees the first: BatGPT
multi-turn). Training examples come from the documents the pre-training run trained on; validation and
test from those it held out (its ``data.val_fraction`` / ``val_seed``, read by ``--run``). Writes
``train.jsonl``, ``valid.jsonl`` and ``test.jsonl``.
"""

from __future__ import annotations

import argparse
import random
import sys
from pathlib import Path

from biglm.data.builders.make_titles import write_split
from biglm.data.held_out import run_held_out, sentences, split_documents
from biglm.errors import BiglmError

NUMBERS = {2: "two", 3: "three", 4: "four", 5: "five"}
WORDS = {**NUMBERS, 6: "six"}
PHRASINGS = {
    "title": ["Which article does this sentence open?", "Name the article this sentence is from.",
              "What is the title of the article?"],
    "first": ["Give the first {n} words.", "Write the first {n} words of the sentence.", "Copy the first {n} words."],
    "last": ["What is the last word?", "Give the last word of the sentence.", "Which word ends the sentence?"],
    "drop": ["Repeat the sentence without its first {n} words.", "Drop the first {n} words.",
             "Write the sentence from word {m} on."],
}


def ask(kind: str, title: str, sentence: str, r: random.Random) -> tuple[str, str] | None:
    """(instruction, answer) of ``kind`` about ``sentence`` (None when it does not apply)."""
    words = sentence.split()
    n = r.choice(list(NUMBERS))
    phrasing = r.choice(PHRASINGS[kind])
    if kind == "title":
        return (phrasing, title) if title and title in sentence else None
    if kind == "first":
        return phrasing.format(n=NUMBERS[n]), " ".join(words[:n])
    if kind == "last":
        last = words[-1].rstrip(".!?;:,")
        return (phrasing, last) if last else None
    rest = " ".join(words[n:])
    return (phrasing.format(n=NUMBERS[n], m=WORDS[n + 1]), rest) if len(words) - n >= 2 else None


def records(docs: list[str], prefix: str, seed: int) -> list[dict]:
    """Instruction records (FLAN or two-turn ``messages``) about the first sentence of each document."""
    r = random.Random(seed)
    out = []
    for i, doc in enumerate(docs):
        title, _, body = doc.partition("\n")
        first = sentences(body)[:1]
        if not first or not 4 <= len(first[0].split()) <= 40:
            continue
        sentence = first[0]
        kinds = list(PHRASINGS)
        r.shuffle(kinds)
        asked = [qa for qa in (ask(k, title.strip(), sentence, r) for k in kinds) if qa][:2]
        if not asked:
            continue
        if len(asked) == 2 and r.random() < 1 / 3:
            (q1, a1), (q2, a2) = asked
            out.append({"id": f"{prefix}{i}", "messages": [
                {"role": "user", "content": f"{q1}\n\n{sentence}"}, {"role": "assistant", "content": a1},
                {"role": "user", "content": q2}, {"role": "assistant", "content": a2}]})
        else:
            q, a = asked[0]
            out.append({"id": f"{prefix}{i}", "instruction": q, "input": sentence, "output": a})
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m biglm.data.builders.make_instructions",
                                description=__doc__.split("\n")[0])
    p.add_argument("source", help="the bundled Wikipedia summaries (data/demo/wiki.jsonl)")
    p.add_argument("--run", required=True, metavar="DIR", help="the pre-training run whose held-out split to use")
    p.add_argument("--out", required=True, help="folder for train/valid/test.jsonl")
    p.add_argument("--valid", type=int, default=100, help="held-out records for validation (the rest: test)")
    p.add_argument("--max-test", type=int, default=300, help="at most this many test records")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    try:
        fraction, seed = run_held_out(args.run)
        trained, held = split_documents([args.source], fraction, seed)
        train, held_records = records(trained, "t", args.seed), records(held, "h", args.seed + 1)
        if len(held_records) <= args.valid:
            raise BiglmError(f"{args.source}: only {len(held_records)} held-out records; need more than --valid "
                             f"{args.valid}")
    except BiglmError as e:
        print(f"make_instructions: error: {e}", file=sys.stderr)
        return 2
    valid, test = held_records[:args.valid], held_records[args.valid:args.valid + args.max_test]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for name, rows in (("train", train), ("valid", valid), ("test", test)):
        write_split(out / f"{name}.jsonl", rows)
    chats = sum("messages" in r for r in train)
    print(f"{out}: {len(train)} train ({chats} two-turn conversations), {len(valid)} valid, {len(test)} test records")
    return 0


if __name__ == "__main__":
    sys.exit(main())
