"""Build offline lm-eval tasks (YAML + JSONL) from held-out text.

    python -m biglm.evaluate.make_tasks data/demo/wiki.jsonl --out tasks/wiki --prefix biglm_wiki
    python -m biglm.evaluate.make_tasks --synthetic 3000 --val-fraction 0.1 --max-items 200 \
        --out src/biglm/evaluate/tasks   # the shipped tasks

Held-out documents (``biglm.data.held_out``): document ``i`` of the sources (numbered as
``biglm.data.iter_documents`` yields them, across the given files in order) is held out when
``biglm.data.shards.val_mask(i, val_seed, val_fraction)`` holds: the same seeded hash the data pipeline uses
for its validation split, so with the training run's ``data.val_fraction`` / ``data.val_seed`` (defaults
0.005 / 0) and one source per call, these are exactly the documents the run never trained on. ``--all``
uses every document (a file that is held out as a whole).

Tasks written into ``--out`` (names ``{prefix}_…``, tag ``{prefix}_tasks``):

* ``{prefix}_continuation`` (multiple_choice): a passage cut inside a sentence (at least 2 words in;
  at most ``context_words`` words of context); choices: the true rest of that sentence and the
  sentence ends of 3 other held-out passages of about the same length (3 drawn from the 12 closest in
  word count, seeded), the answer at a seeded position. Chance is 0.25. Both how the words just before
  the cut go on and the passage's topic tell the answer, in the style of HellaSwag endings.
* ``{prefix}_next_sentence`` (same format): a passage cut at a sentence boundary; choices: its true
  next sentence and the next sentences of 3 others. Only the passage's topic and entities tell it.

  Both report ``acc``, ``acc_norm`` and lm-eval's ``acc_mutual_info``: the choice with the largest
  log p(choice | context) − log p(choice | nothing) (one extra request per choice, with an empty
  context). The distractors are real sentences, so raw log-likelihood mostly ranks how common each
  choice's words are; a small model that has learned the topic shows it in ``acc_mutual_info`` long
  before ``acc`` leaves chance. ``--no-mutual-info`` leaves it out.
* ``{prefix}_cloze`` (loglikelihood, LAMBADA-style): a passage ending just before the last word of a
  sentence; target `` word``; acc = is_greedy (the word is the model's greedy decode), and perplexity.
* ``{prefix}_perplexity`` (loglikelihood_rolling): whole held-out passages; word/byte perplexity.

Each JSONL is named in the YAML as ``dataset_path: json`` / ``dataset_kwargs.data_files`` relative
to the folder; ``custom_dataset: !function biglm_task_data.load`` (a 10-line loader written next to
it) resolves that name against the folder, so the folder works from any working directory and can
be moved.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from collections.abc import Iterable
from pathlib import Path

from biglm.data.held_out import held_out_documents, run_held_out, sentences
from biglm.errors import BiglmError

LOADER = '''"""Loads this folder's JSONL files for lm-eval (data_files are relative to this folder)."""
from pathlib import Path

import datasets


def load(data_files=None, **_):
    here = Path(__file__).resolve().parent
    files = {split: str(here / name) for split, name in (data_files or {}).items()}
    return datasets.load_dataset("json", data_files=files)
'''

# ---- synthetic templated text (for the shipped tasks and the tests) -----------------------------------
TOPICS: dict[str, tuple[list[str], list[str], list[str], list[str]]] = {
    # topic: (things, places, verbs, adjectives)
    "farm": (["cow", "horse", "goat", "hen", "pig", "sheep"], ["barn", "field", "meadow"],
             ["feeds", "brushes", "counts", "watches"], ["brown", "old", "noisy"]),
    "sea": (["boat", "fish", "net", "rope", "sail", "crab"], ["harbor", "beach", "dock"],
            ["ties", "cleans", "paints", "checks"], ["wet", "blue", "heavy"]),
    "kitchen": (["bread", "soup", "pan", "cake", "knife", "bowl"], ["kitchen", "bakery", "market"],
                ["bakes", "cuts", "stirs", "washes"], ["warm", "sweet", "fresh"]),
    "school": (["book", "pencil", "map", "desk", "lesson", "chalk"], ["classroom", "library", "hall"],
               ["reads", "draws", "carries", "opens"], ["new", "thick", "small"]),
    "forest": (["tree", "fox", "owl", "mushroom", "deer", "branch"], ["forest", "valley", "hill"],
               ["follows", "climbs", "finds", "hears"], ["tall", "quiet", "dark"]),
    "city": (["bus", "bridge", "tower", "car", "street", "train"], ["city", "station", "square"],
             ["drives", "crosses", "visits", "rides"], ["busy", "long", "bright"]),
    "space": (["rocket", "star", "planet", "moon", "comet", "satellite"], ["observatory", "launchpad", "sky"],
              ["launches", "studies", "tracks", "photographs"], ["distant", "shiny", "huge"]),
    "music": (["piano", "drum", "violin", "song", "flute", "guitar"], ["concert", "studio", "theater"],
              ["plays", "tunes", "practices", "sings"], ["loud", "soft", "lovely"]),
}
NAMES = ["Anna", "Ben", "Clara", "David", "Emma", "Felix", "Grace", "Henry", "Iris", "Jack", "Kate", "Leo",
         "Mia", "Noah", "Olga", "Paul", "Rosa", "Sam", "Tina", "Victor"]
TEMPLATES = [
    "{N} {v} the {a} {o} in the {p} .",
    "The {o} is {a} .",
    "{N} and {M} go to the {p} .",
    "In the {p} , {M} {v} the {o} .",
    "Later {N} sees a {a} {o} near the {p} .",
    "{M} says that the {o} is very {a} .",
]


def synthetic_documents(n: int, seed: int = 0) -> list[str]:
    """``n`` templated stories: each has one topic and two people, so later sentences are predictable
    from earlier ones (names, places and things recur; other stories use other ones)."""
    rng = random.Random(seed)
    docs = []
    for _ in range(n):
        things, places, verbs, adjs = TOPICS[rng.choice(sorted(TOPICS))]
        who, other = rng.sample(NAMES, 2)
        sentences = [f"{who} and {other} go to the {rng.choice(places)} ."]
        for _ in range(rng.randint(7, 11)):
            sentences.append(rng.choice(TEMPLATES).format(N=who, M=other, v=rng.choice(verbs), a=rng.choice(adjs),
                                                          o=rng.choice(things), p=rng.choice(places)))
        docs.append(" ".join(sentences))
    return docs


# ---- items ----------------------------------------------------------------------------------------
def _tail_words(sentences: list[str], max_words: int) -> str:
    """The last whole sentences that fit in ``max_words`` words (the last words if one does not fit)."""
    kept: list[str] = []
    for s in reversed(sentences):
        if len(" ".join([s, *kept]).split()) > max_words:
            break
        kept.insert(0, s)
    return " ".join(kept) if kept else " ".join(" ".join(sentences).split()[-max_words:])


def _cuts(sents: list[str], cut: str, min_context_words: int, cont_words: tuple[int, int]) -> list[tuple[int, int]]:
    """Candidate cut points (sentence b, word k): the context is ``sents[:b]`` plus sentence b's first k
    words, the answer the rest of sentence b (``cut="word"``, k ≥ 2) or all of it (``cut="sentence"``, k = 0)."""
    out = []
    for b, s in enumerate(sents):
        n = len(s.split())
        before = len(" ".join(sents[:b]).split())
        for k in (range(2, n) if cut == "word" else [0] if b else []):
            if before + k >= min_context_words and cont_words[0] <= n - k <= cont_words[1]:
                out.append((b, k))
    return out


def continuation_items(docs: list[str], seed: int = 0, context_words: int = 40, min_context_words: int = 8,
                       cont_words: tuple[int, int] = (4, 24), max_items: int | None = None,
                       cut: str = "word") -> list[dict]:
    """4-way choice of how a passage goes on: the rest of a sentence cut inside (``cut="word"``) or the
    next sentence (``cut="sentence"``); see the module doc."""
    if cut not in ("word", "sentence"):
        raise BiglmError(f"cut={cut!r}: expected 'word' or 'sentence'")
    rng = random.Random(seed)
    pairs = []
    for doc in docs:
        sents = sentences(doc)
        cuts = _cuts(sents, cut, min_context_words, cont_words)
        if cuts:
            b, k = rng.choice(cuts)
            words = sents[b].split()
            context = [*sents[:b], " ".join(words[:k])] if k else sents[:b]
            pairs.append((_tail_words(context, context_words), " ".join(words[k:])))
    if len(pairs) < 4:
        raise BiglmError(f"only {len(pairs)} held-out passages have a usable continuation; need at least 4")
    items = []
    lengths = [len(a.split()) for _, a in pairs]
    for i, (context, answer) in enumerate(pairs[:max_items] if max_items else pairs):
        # distractors of about the answer's length (the 12 closest in word count), so length tells nothing
        pool = [j for j in range(len(pairs)) if j != i and pairs[j][1] != answer]
        pool.sort(key=lambda j: (abs(lengths[j] - lengths[i]), rng.random()))
        others = rng.sample(pool[:12], 3)
        choices = [pairs[j][1] for j in others]
        label = rng.randrange(4)
        choices.insert(label, answer)
        items.append({"context": context, "choices": choices, "label": label})
    return items


def cloze_items(docs: list[str], seed: int = 0, context_words: int = 40, min_context_words: int = 8,
                max_items: int | None = None) -> list[dict]:
    """LAMBADA-style last-word items: context up to a sentence's last word, target `` word``."""
    rng = random.Random(seed)
    items = []
    for doc in docs:
        sents = sentences(doc)
        options = []
        for b, s in enumerate(sents):
            words = s.split()
            if words and not any(c.isalnum() for c in words[-1]):
                words = words[:-1]  # a detached final punctuation mark (" .")
            if len(words) < 2:
                continue
            last = words[-1].rstrip(".,;:!?\"')")
            if len(last) >= 3 and last.isalpha():
                context = _tail_words([*sents[:b], " ".join(words[:-1])], context_words)
                if len(context.split()) >= min_context_words:
                    options.append({"context": context, "target": " " + last})
        if options:
            items.append(rng.choice(options))
        if max_items and len(items) >= max_items:
            break
    return items


def perplexity_items(docs: list[str], max_items: int | None = None, max_words: int = 200) -> list[dict]:
    """Whole passages (first ``max_words`` words) for rolling log-likelihood."""
    return [{"text": " ".join(d.split()[:max_words])} for d in docs[:max_items]]


# ---- writing ---------------------------------------------------------------------------------------
_METRICS = {
    "multiple_choice": ["acc", "acc_norm"],
    "loglikelihood": ["perplexity", "acc"],
    "loglikelihood_rolling": ["word_perplexity", "byte_perplexity", "bits_per_byte"],
}


def _yaml(task: str, tag: str, output_type: str, fields: dict[str, str], source: str, metrics: list[str]) -> str:
    lines = [f"# Generated by biglm.evaluate.make_tasks from {source}", "tag:", f"  - {tag}", f"task: {task}",
             "dataset_path: json", "dataset_kwargs:", "  data_files:", f"    test: {task}.jsonl",
             "custom_dataset: !function biglm_task_data.load", "test_split: test", f"output_type: {output_type}"]
    lines += [f"{k}: {json.dumps(v)}" for k, v in fields.items()]
    lines.append("metric_list:")
    for m in metrics:
        agg = {"perplexity": "perplexity"}.get(m, "mean")
        lines.append(f"  - metric: {m}")
        if output_type != "loglikelihood_rolling":
            lines += [f"    aggregation: {agg}", f"    higher_is_better: {'false' if m == 'perplexity' else 'true'}"]
    lines += ["metadata:", "  version: 1.0"]
    return "\n".join(lines) + "\n"


def write_tasks(out: str | Path, docs: list[str], prefix: str = "biglm", seed: int = 0,
                max_items: int | None = 500, source: str = "held-out text", mutual_info: bool = True) -> dict[str, int]:
    """Write the four tasks for ``docs`` into ``out``; returns the item count per task. ``mutual_info``:
    the multiple-choice tasks also report ``acc_mutual_info`` (see the module doc)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    tag = f"{prefix}_tasks"
    choice_fields = {"doc_to_text": "{{context}}", "doc_to_choice": "choices", "doc_to_target": "label",
                     "target_delimiter": " "}
    tasks = {
        f"{prefix}_continuation": ("multiple_choice", continuation_items(docs, seed, max_items=max_items),
                                   choice_fields),
        f"{prefix}_next_sentence": ("multiple_choice",
                                    continuation_items(docs, seed, max_items=max_items, cut="sentence"),
                                    choice_fields),
        f"{prefix}_cloze": ("loglikelihood", cloze_items(docs, seed, max_items=max_items),
                            {"doc_to_text": "{{context}}", "doc_to_target": "{{target}}"}),
        f"{prefix}_perplexity": ("loglikelihood_rolling", perplexity_items(docs, max_items and max_items // 5),
                                 {"doc_to_text": "", "doc_to_target": "{{text}}"}),
    }
    counts = {}
    for name, (output_type, items, fields) in tasks.items():
        if not items:
            raise BiglmError(f"{name}: no usable held-out passage (have {len(docs)} documents)")
        with open(out / f"{name}.jsonl", "w") as f:
            f.writelines(json.dumps(it, ensure_ascii=False) + "\n" for it in items)
        metrics = _METRICS[output_type]
        if mutual_info and output_type == "multiple_choice":
            metrics = [*metrics, "acc_mutual_info"]
        (out / f"{name}.yaml").write_text(_yaml(name, tag, output_type, fields, source, metrics))
        counts[name] = len(items)
    (out / "biglm_task_data.py").write_text(LOADER)
    return counts


def write_jsonl(path: str | Path, docs: Iterable[str]) -> Path:
    """Documents as ``{"text": ...}`` lines (e.g. a synthetic corpus to train on)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        f.writelines(json.dumps({"text": d}) + "\n" for d in docs)
    return path


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m biglm.evaluate.make_tasks", description=__doc__.split("\n")[0])
    p.add_argument("sources", nargs="*", help="text files/globs (.jsonl/.json/.txt/.parquet) with the held-out text")
    p.add_argument("--out", required=True, help="task folder to write (use with lm_eval --include_path)")
    p.add_argument("--prefix", default="biglm", help="task name prefix (default biglm)")
    p.add_argument("--val-fraction", type=float, default=0.005, help="held-out fraction (the data pipeline's)")
    p.add_argument("--val-seed", type=int, default=0, help="held-out seed (the data pipeline's data.val_seed)")
    p.add_argument("--run", default=None, metavar="DIR",
                   help="take --val-fraction / --val-seed from the training run DIR's config.yaml (data.*)")
    p.add_argument("--all", action="store_true", help="use every document (the sources are held out whole)")
    p.add_argument("--text-field", default="text")
    p.add_argument("--seed", type=int, default=0, help="seed of cut points, distractors and answer order")
    p.add_argument("--max-items", type=int, default=500)
    p.add_argument("--no-mutual-info", action="store_true",
                   help="multiple-choice tasks without acc_mutual_info (which doubles their requests)")
    p.add_argument("--synthetic", type=int, default=0, metavar="N",
                   help="instead of sources: N synthetic templated stories (seed --synthetic-seed), held out as above")
    p.add_argument("--synthetic-seed", type=int, default=0)
    args = p.parse_args(argv)
    try:
        if args.run:
            args.val_fraction, args.val_seed = run_held_out(args.run)
        if args.synthetic:
            corpus = write_jsonl(Path(args.out) / ".synthetic.jsonl", synthetic_documents(args.synthetic,
                                                                                         args.synthetic_seed))
            sources, what = [str(corpus)], f"{args.synthetic} synthetic stories (seed {args.synthetic_seed})"
        elif args.sources:
            sources, what = args.sources, ", ".join(args.sources)
        else:
            raise BiglmError("give source files or --synthetic N")
        docs = held_out_documents(sources, args.val_fraction, args.val_seed, args.all, args.text_field)
        if args.synthetic:
            Path(sources[0]).unlink()
        rule = "all documents" if args.all else f"val_mask(index, seed={args.val_seed}) < {args.val_fraction}"
        counts = write_tasks(args.out, docs, args.prefix, args.seed, args.max_items, f"{what}; held out: {rule}",
                             mutual_info=not args.no_mutual_info)
    except BiglmError as e:
        print(f"make_tasks: error: {e}", file=sys.stderr)
        return 2
    for name, n in counts.items():
        print(f"{args.out}/{name}.yaml: {n} items")
    return 0


if __name__ == "__main__":
    sys.exit(main())
