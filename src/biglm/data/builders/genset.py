"""The paper's generation set ("Genset", §4.3): held-out generation tasks, sampled from the hub.

``build_genset(out, per_task=100)`` samples the paper's three sets (WikiAuto simplification, QQP paraphrase,
PersonaChat dialogue) into one FLAN-style JSONL (fields task / instruction / input / output);
``GENSET_SOURCES`` says which datasets and how each record is turned into an instruction. A fine-tuned model
is scored on it by ``biglm evaluate --generation FILE`` (``biglm.finetune.genset.evaluate_generation``).
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

from biglm.data.records import read_records
from biglm.files import atomic_write_text


def _wiki_auto(r: dict[str, Any]) -> dict[str, str] | None:
    return {"instruction": "Simplify this sentence.", "input": r["source"], "output": r["target"]}


def _qqp(r: dict[str, Any]) -> dict[str, str] | None:
    if int(r.get("label", 0)) != 1:  # only duplicates are paraphrases
        return None
    return {"instruction": "Paraphrase this question.", "input": r["question1"], "output": r["question2"]}


def _personachat(r: dict[str, Any]) -> dict[str, str] | None:
    persona = " ".join(r.get("personality") or [])
    history = "\n".join(r.get("history") or [])
    if not history or not r.get("candidates"):
        return None
    return {"instruction": f"Continue the dialogue as this person: {persona}", "input": history,
            "output": r["candidates"][-1]}  # the last candidate is the true reply


GENSET_SOURCES: dict[str, tuple[str, str | None, str, Callable[[dict[str, Any]], dict[str, str] | None]]] = {
    "wiki_auto": ("GEM/wiki_auto_asset_turk", None, "validation", _wiki_auto),
    "qqp": ("nyu-mll/glue", "qqp", "validation", _qqp),
    "personachat": ("bavard/personachat_truecased", None, "validation", _personachat),
}
"""Group -> (hub dataset, config, split, record -> FLAN record or None to skip)."""


def build_genset(out: str | Path, per_task: int = 100, seed: int = 0) -> int:
    """Sample ``per_task`` records of each ``GENSET_SOURCES`` set (hub access needed) into ``out`` (JSONL)."""
    rng = random.Random(seed)
    rows = []
    for group, (name, config, split, convert) in GENSET_SOURCES.items():
        records = read_records(f"hf:{name}", split=split, hf_config=config)
        kept = [c for c in (convert(r.fields) for r in records) if c]
        for i, row in enumerate(rng.sample(kept, min(per_task, len(kept)))):
            rows.append({"id": f"{group}-{i}", "task": group, **row})
    atomic_write_text(Path(out), "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    return len(rows)


__all__ = ["GENSET_SOURCES", "build_genset"]
