"""Text metrics from the field's libraries: ``rouge-score``, ``sacrebleu``, ``nltk`` (METEOR), and the
official SQuAD v1.1 exact match / F1.

Conventions (say them next to any number you publish; published XSUM figures use three pipelines):

- ROUGE: ``rouge_score.RougeScorer`` with ``use_stemmer=True`` (Porter stemming, as files2rouge does)
  and its default tokenisation (lower-case, runs of ``[a-z0-9]``); F-measure × 100. ``rougeLsum`` splits
  summaries into sentences at newlines only.
- BLEU: ``sacrebleu.corpus_bleu`` (BLEU-4, ``13a`` tokenisation, exponential smoothing, case-sensitive);
  the signature is returned as ``bleu_signature``.
- METEOR: ``nltk.translate.meteor_score`` on whitespace tokens of lower-cased text, averaged over
  sentences × 100. It needs nltk's WordNet data (``python -m nltk.downloader wordnet``); without it the
  metric is not computed and ``meteor_note`` says so (never a made-up value). nltk's METEOR differs from
  the Java METEOR 1.5 of coco-caption.
- SQuAD: lower-case, strip punctuation and the articles a/an/the, fold whitespace; the maximum over
  the gold answers; × 100.
"""

from __future__ import annotations

import collections
import re
import string
from collections.abc import Sequence
from typing import Any

from biglm.errors import BiglmError


def rouge(predictions: Sequence[str], references: Sequence[str]) -> dict[str, float]:
    """Mean ROUGE-1/2/L/Lsum F-measure × 100 (stemmed)."""
    from rouge_score import rouge_scorer

    keys = ("rouge1", "rouge2", "rougeL", "rougeLsum")
    scorer = rouge_scorer.RougeScorer(list(keys), use_stemmer=True)
    total = dict.fromkeys(keys, 0.0)
    for pred, ref in zip(predictions, references, strict=True):
        scores = scorer.score(ref, pred)
        for k in keys:
            total[k] += scores[k].fmeasure
    n = max(len(predictions), 1)
    return {k: 100.0 * v / n for k, v in total.items()}


def bleu(predictions: Sequence[str], references: Sequence[str]) -> dict[str, Any]:
    """Corpus BLEU-4 (sacrebleu, one reference per prediction) and its signature."""
    import sacrebleu

    metric = sacrebleu.metrics.BLEU()
    result = metric.corpus_score(list(predictions), [list(references)])
    return {"bleu": float(result.score), "bleu_signature": str(metric.get_signature())}


def bleu2(predictions: Sequence[str], references: Sequence[str]) -> dict[str, Any]:
    """Corpus BLEU-2 (sacrebleu, n-grams up to 2, ``13a`` tokenisation), as the paper's Genset reports BLEU."""
    import sacrebleu

    metric = sacrebleu.metrics.BLEU(max_ngram_order=2)
    result = metric.corpus_score(list(predictions), [list(references)])
    return {"bleu2": float(result.score), "bleu2_signature": str(metric.get_signature())}


def distinct(predictions: Sequence[str], references: Sequence[str] | None = None) -> dict[str, float]:
    """Distinct-1/2 (Li et al., 2016) × 100: distinct n-grams over all n-grams of the predictions, at corpus
    level, on lower-cased whitespace tokens (a diversity measure; the references are not used)."""
    out = {}
    for n in (1, 2):
        grams = [tuple(t[i:i + n]) for t in (p.lower().split() for p in predictions) for i in range(len(t) - n + 1)]
        out[f"distinct{n}"] = 100.0 * len(set(grams)) / len(grams) if grams else 0.0
    return out


def wordnet_available() -> bool:
    """Whether nltk can find its WordNet data (METEOR needs it)."""
    try:
        import nltk
    except ImportError:
        return False
    for name in ("corpora/wordnet", "corpora/wordnet.zip"):
        try:
            nltk.data.find(name)
            return True
        except LookupError:
            pass
    return False


def meteor(predictions: Sequence[str], references: Sequence[str]) -> dict[str, Any]:
    """Mean sentence METEOR × 100 (nltk), or ``meteor: None`` with ``meteor_note`` when WordNet is missing."""
    if not wordnet_available():
        return {"meteor": None, "meteor_note": "not computed: nltk's WordNet data is not installed "
                                               "(python -m nltk.downloader wordnet)"}
    from nltk.translate.meteor_score import meteor_score

    total = sum(meteor_score([ref.lower().split()], pred.lower().split())
                for pred, ref in zip(predictions, references, strict=True))
    return {"meteor": 100.0 * total / max(len(predictions), 1)}


def exact_match(predictions: Sequence[str], references: Sequence[str]) -> dict[str, float]:
    """Share (× 100) of predictions equal to their reference after stripping surrounding whitespace."""
    hits = sum(p.strip() == r.strip() for p, r in zip(predictions, references, strict=True))
    return {"exact_match": 100.0 * hits / max(len(predictions), 1)}


GENERATION_METRICS = {"rouge": rouge, "bleu": bleu, "bleu2": bleu2, "distinct": distinct, "meteor": meteor,
                      "exact_match": exact_match}


def generation_metrics(names: Sequence[str], predictions: Sequence[str], references: Sequence[str]) -> dict[str, Any]:
    """The named generation metrics of ``predictions`` against ``references``."""
    out: dict[str, Any] = {}
    for name in names:
        if name not in GENERATION_METRICS:
            raise BiglmError(f"unknown metric {name!r}; expected one of {', '.join(GENERATION_METRICS)}")
        out.update(GENERATION_METRICS[name](predictions, references))
    return out


# --- SQuAD v1.1 ---------------------------------------------------------------------------------------------

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCTUATION = set(string.punctuation)


def squad_normalize(text: str) -> str:
    """The official SQuAD v1.1 answer normalisation."""
    text = "".join(ch for ch in text.lower() if ch not in _PUNCTUATION)
    return " ".join(_ARTICLES.sub(" ", text).split())


def squad_f1(prediction: str, gold: str) -> float:
    pred, ref = squad_normalize(prediction).split(), squad_normalize(gold).split()
    common = sum((collections.Counter(pred) & collections.Counter(ref)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(pred), common / len(ref)
    return 2 * precision * recall / (precision + recall)


def squad_scores(predictions: Sequence[str], answers: Sequence[Sequence[str]]) -> dict[str, float]:
    """Exact match and F1 × 100, each the maximum over an example's gold answers."""
    em = f1 = 0.0
    for pred, golds in zip(predictions, answers, strict=True):
        em += max(float(squad_normalize(pred) == squad_normalize(g)) for g in golds)
        f1 += max(squad_f1(pred, g) for g in golds)
    n = max(len(predictions), 1)
    return {"exact_match": 100.0 * em / n, "f1": 100.0 * f1 / n}


def accuracy(predicted: Sequence[Any], gold: Sequence[Any]) -> dict[str, float]:
    """Share of correct predictions × 100, and the majority-class baseline on the same examples."""
    n = max(len(gold), 1)
    hits = sum(p == g for p, g in zip(predicted, gold, strict=True))
    majority = max(collections.Counter(gold).values()) if gold else 0
    return {"accuracy": 100.0 * hits / n, "majority_baseline": 100.0 * majority / n}
