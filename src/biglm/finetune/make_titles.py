"""A small real-text seq2seq task from the bundled Wikipedia summaries: name the article from its first
sentence (source: the summary's first sentence, target: the article's title).

    python -m biglm.finetune.make_titles data/demo/wiki.jsonl --run runs/demo --out runs/demo/titles

Each document of the bundled corpus is ``Title\\nSummary``. Training examples come from the documents a
pre-training run trained on; validation and test examples from the documents it held out (its own
``data.val_fraction`` / ``data.val_seed``, read by ``--run``), so the fine-tuned model is scored on
articles it never saw. Examples whose first sentence is shorter than 4 words are skipped. Writes
``train.jsonl``, ``valid.jsonl``, ``test.jsonl`` (``id``, ``source``, ``target``) and ``baseline.json``:
the lead-k baseline (the first k words of the sentence, k the most common title length in words among
the training examples) scored on the test split with the task's metrics.
"""

from __future__ import annotations

import argparse
import collections
import json
import sys
from pathlib import Path

from biglm.errors import BiglmError
from biglm.evaluate.make_tasks import run_held_out, sentences, split_documents
from biglm.finetune.metrics import exact_match, rouge


def title_examples(docs: list[str], prefix: str, max_words: int = 40) -> list[dict]:
    """``{"id", "source", "target"}`` per document: the first sentence (at most ``max_words``) -> the title."""
    out = []
    for i, doc in enumerate(docs):
        title, _, body = doc.partition("\n")
        first = sentences(body)[:1]
        if not title.strip() or not first or len(first[0].split()) < 4:
            continue
        out.append({"id": f"{prefix}{i}", "source": " ".join(first[0].split()[:max_words]), "target": title.strip()})
    return out


def lead_baseline(train: list[dict], test: list[dict]) -> dict:
    """The first k words of each source, k the most common title length (in words) of the training set."""
    k = collections.Counter(len(ex["target"].split()) for ex in train).most_common(1)[0][0]
    preds = [" ".join(ex["source"].split()[:k]) for ex in test]
    refs = [ex["target"] for ex in test]
    return {"baseline": f"lead-{k} (the first {k} words)", "k": k, **rouge(preds, refs), **exact_match(preds, refs)}


def write_split(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m biglm.finetune.make_titles", description=__doc__.split("\n")[0])
    p.add_argument("source", help="the bundled Wikipedia summaries (data/demo/wiki.jsonl)")
    p.add_argument("--run", required=True, metavar="DIR", help="the pre-training run whose held-out split to use")
    p.add_argument("--out", required=True, help="folder for train/valid/test.jsonl and baseline.json")
    p.add_argument("--valid", type=int, default=200, help="held-out examples for validation (the rest: test)")
    p.add_argument("--max-test", type=int, default=400, help="at most this many test examples")
    args = p.parse_args(argv)
    try:
        fraction, seed = run_held_out(args.run)
        trained, held = split_documents([args.source], fraction, seed)
        train, held_examples = title_examples(trained, "t"), title_examples(held, "h")
        if len(held_examples) <= args.valid:
            raise BiglmError(f"{args.source}: only {len(held_examples)} held-out examples; need more than "
                             f"--valid {args.valid}")
        valid, test = held_examples[:args.valid], held_examples[args.valid:args.valid + args.max_test]
    except BiglmError as e:
        print(f"make_titles: error: {e}", file=sys.stderr)
        return 2
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for name, rows in (("train", train), ("valid", valid), ("test", test)):
        write_split(out / f"{name}.jsonl", rows)
    baseline = lead_baseline(train, test)
    (out / "baseline.json").write_text(json.dumps(baseline, indent=2))
    print(f"{out}: {len(train)} train, {len(valid)} valid, {len(test)} test examples; test baseline "
          f"{baseline['baseline']}: rougeL {baseline['rougeL']:.1f}, exact match {baseline['exact_match']:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
