"""Small real-text tasks from the bundled Wikipedia summaries: name the article from its first sentence,
as seq2seq (source: the summary's first sentence, target: the article's title) and as extractive QA (the
title's span in that sentence, for the articles whose title occurs in it verbatim).

    python -m biglm.data.builders.make_titles data/demo/wiki.jsonl --run runs/demo --out runs/demo/titles

Each document of the bundled corpus is ``Title\\nSummary``. Training examples come from the documents a
pre-training run trained on; validation and test examples from the documents it held out (its own
``data.val_fraction`` / ``data.val_seed``, read by ``--run``), so the fine-tuned model is scored on
articles it never saw. Examples whose first sentence is shorter than 4 words are skipped. Writes
``train.jsonl``, ``valid.jsonl``, ``test.jsonl`` (seq2seq: ``id``, ``source``, ``target``), ``qa_train.jsonl``,
``qa_valid.jsonl``, ``qa_test.jsonl`` (SQuAD layout: ``id``, ``question``, ``context``, ``answers``) and
``baseline.json``: the lead-k baseline (the first k words of the sentence, k the most common title length
in words among the training examples) on each test split, with each task's metrics.
"""

from __future__ import annotations

import argparse
import collections
import json
import sys
from pathlib import Path

from biglm.data.held_out import run_held_out, sentences, split_documents
from biglm.errors import BiglmError
from biglm.metrics import exact_match, rouge, squad_scores

QUESTION = "Which article does this sentence open?"


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


def qa_examples(examples: list[dict]) -> list[dict]:
    """The examples whose title occurs verbatim in the sentence, as SQuAD-layout records (first occurrence)."""
    out = []
    for ex in examples:
        start = ex["source"].find(ex["target"])
        if start >= 0:
            out.append({"id": ex["id"], "question": QUESTION, "context": ex["source"],
                        "answers": {"text": [ex["target"]], "answer_start": [start]}})
    return out


def lead_baseline(train: list[dict], test: list[dict], qa_test: list[dict]) -> dict:
    """The first k words of each sentence, k the most common title length (in words) of the training set,
    scored as seq2seq (ROUGE, exact match) and as extractive QA (SQuAD EM/F1)."""
    k = collections.Counter(len(ex["target"].split()) for ex in train).most_common(1)[0][0]
    lead = lambda text: " ".join(text.split()[:k])
    preds, refs = [lead(ex["source"]) for ex in test], [ex["target"] for ex in test]
    qa = squad_scores([lead(ex["context"]) for ex in qa_test], [ex["answers"]["text"] for ex in qa_test])
    return {"baseline": f"lead-{k} (the first {k} words)", "k": k, **rouge(preds, refs), **exact_match(preds, refs),
            "qa": qa}


def write_split(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m biglm.data.builders.make_titles",
                                description=__doc__.split("\n")[0])
    p.add_argument("source", help="the bundled Wikipedia summaries (data/demo/wiki.jsonl)")
    p.add_argument("--run", required=True, metavar="DIR", help="the pre-training run whose held-out split to use")
    p.add_argument("--out", required=True, help="folder for train/valid/test.jsonl and baseline.json")
    p.add_argument("--valid", type=int, default=120, help="held-out examples for validation (the rest: test)")
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
        write_split(out / f"qa_{name}.jsonl", qa_examples(rows))
    baseline = lead_baseline(train, test, qa_examples(test))
    (out / "baseline.json").write_text(json.dumps(baseline, indent=2))
    qa_n = [len(qa_examples(rows)) for rows in (train, valid, test)]
    print(f"{out}: seq2seq {len(train)} train, {len(valid)} valid, {len(test)} test examples (QA: {qa_n[0]}, "
          f"{qa_n[1]}, {qa_n[2]}); test baseline {baseline['baseline']}: rougeL {baseline['rougeL']:.1f}, "
          f"exact match {baseline['exact_match']:.1f}; QA exact match {baseline['qa']['exact_match']:.1f}, "
          f"F1 {baseline['qa']['f1']:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
