"""The paper's generation set ("Genset", §4.3): held-out generation tasks scored with BLEU-2 and Distinct.

``evaluate_generation(ckpt, data, out)`` predicts every record of ``data`` with an instruction-tuned (or
seq2seq) checkpoint, through its task's encoding and the shared engine, and writes
``OUT/genset_predictions.jsonl`` (id, group, prompt, prediction, reference), ``OUT/genset_scores.json`` and
``OUT/genset_scores.md``: BLEU-2 (sacrebleu, ``13a``) and Distinct-1/2 per group (the record field ``task``)
and over all records. ``biglm evaluate --generation FILE --ckpt CKPT`` runs it.
The set itself is built by ``biglm.data.builders.genset.build_genset``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from biglm.data.records import read_records
from biglm.errors import BiglmError
from biglm.files import atomic_write_text
from biglm.finetune.predict import load_predictor
from biglm.metrics import bleu2, distinct


def genset_scores(predictions: list[str], references: list[str]) -> dict[str, Any]:
    """BLEU-2 and Distinct-1/2 of one group of predictions."""
    return {**bleu2(predictions, references), **distinct(predictions), "examples": len(predictions)}


def evaluate_generation(ckpt: str | Path, data: str, out: str | Path, group_field: str = "task",
                        device: str = "cpu", limit: int = 0) -> dict[str, Any]:
    """Predict and score ``data`` with ``ckpt`` (see the module docstring); returns the scores."""
    predictor = load_predictor(ckpt, device=device, hint="--generation needs an instruction or seq2seq fine-tune "
                               "(biglm finetune --task instruction ...); score a pretrained model with --tasks")
    task = predictor.task
    if task.kind not in ("instruction", "seq2seq"):
        raise BiglmError(f"{ckpt}: --generation needs an instruction-tuned or seq2seq checkpoint, not {task.kind}")
    if hasattr(task.options, "all_turns"):
        task.options.all_turns = False  # one example (the last reply) per record
    records = read_records(data, limit=limit)
    examples = task.encode(records)
    predictions = task.predict(predictor.loaded.model, examples)
    groups: dict[str, list[int]] = {}
    for i, record in enumerate(records):
        groups.setdefault(str(record.fields.get(group_field, "all")), []).append(i)
    texts = [p["prediction"] for p in predictions]
    refs = [ex.target_text or "" for ex in examples]
    scores: dict[str, Any] = {g: genset_scores([texts[i] for i in idx], [refs[i] for i in idx])
                              for g, idx in groups.items()}
    if len(groups) > 1:
        scores["all"] = genset_scores(texts, refs)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    group_of = {i: g for g, idx in groups.items() for i in idx}
    rows = [{"id": ex.id, "group": group_of[i], "prompt": task.text(ex.source), "prediction": texts[i],
             "reference": refs[i]} for i, ex in enumerate(examples)]
    atomic_write_text(out / "genset_predictions.jsonl", "".join(json.dumps(r, ensure_ascii=False) + "\n"
                                                                  for r in rows))
    atomic_write_text(out / "genset_scores.json", json.dumps(scores, indent=2))
    lines = ["| set | examples | BLEU-2 | Distinct-1 | Distinct-2 |", "| --- | ---: | ---: | ---: | ---: |"]
    lines += [f"| {g} | {s['examples']} | {s['bleu2']:.2f} | {s['distinct1']:.2f} | {s['distinct2']:.2f} |"
              for g, s in scores.items()]
    signature = next(iter(scores.values()))["bleu2_signature"]
    atomic_write_text(out / "genset_scores.md", "\n".join(lines) + f"\n\nBLEU: {signature}\n")
    return scores


__all__ = ["evaluate_generation", "genset_scores"]
