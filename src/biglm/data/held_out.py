"""The documents a training run held out, for the builders of held-out tasks (``biglm.evaluate.make_tasks``,
``biglm.data.builders``).

Document ``i`` of a source (numbered as ``biglm.data.iter_documents`` yields them) is held out when
``biglm.data.shards.val_mask(i, val_seed, val_fraction)`` holds: the same seeded hash the data pipeline uses
for its validation split, so with the run's ``data.val_fraction`` / ``data.val_seed`` (``run_held_out``)
these are exactly the documents the run never trained on. ``sentences`` is how those builders cut a
document into sentences.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from biglm.configurable import load_yaml
from biglm.data.config import DataConfig, SourceConfig
from biglm.data.shards import val_mask
from biglm.data.sources import iter_documents
from biglm.errors import BiglmError

_SENTENCE = re.compile(r"(?<=[.!?])\s+")


def held_out_documents(sources: Iterable[str], val_fraction: float, val_seed: int, all_docs: bool = False,
                       text_field: str = "text") -> list[str]:
    """The documents of ``sources`` that the data pipeline holds out (every document with ``all_docs``)."""
    if all_docs:
        return [d for s in sources for d in iter_documents(SourceConfig(path=str(s), text_field=text_field))]
    return split_documents(sources, val_fraction, val_seed, text_field)[1]


def split_documents(sources: Iterable[str], val_fraction: float, val_seed: int,
                    text_field: str = "text") -> tuple[list[str], list[str]]:
    """(trained on, held out): the documents of ``sources`` split by the data pipeline's held-out rule."""
    if not 0.0 < val_fraction < 1.0:
        raise BiglmError(f"val_fraction={val_fraction}: must be in (0, 1) (or use --all)")
    # The data pipeline numbers each source's documents from 0, so the held-out rule applies per source.
    trained, held = [], []
    for source in sources:
        docs = list(iter_documents(SourceConfig(path=str(source), text_field=text_field)))
        keep = val_mask(np.arange(len(docs)), val_seed, val_fraction)
        for doc, k in zip(docs, keep):
            (held if k else trained).append(doc)
    return trained, held


def run_held_out(run: str) -> tuple[float, int]:
    """``data.val_fraction`` / ``data.val_seed`` of a training run, so its held-out rule is used exactly."""
    path = Path(run) / "config.yaml"
    if not path.is_file():
        raise BiglmError(f"--run {run}: no config.yaml there (expected a folder written by biglm pretrain)")
    data = load_yaml(path).get("data") or {}
    return (float(data.get("val_fraction", DataConfig.val_fraction)), int(data.get("val_seed", DataConfig.val_seed)))


def sentences(text: str) -> list[str]:
    """The sentences of ``text`` (split after . ! ? and whitespace; whitespace folded)."""
    return [s for s in _SENTENCE.split(" ".join(text.split())) if s]


__all__ = ["held_out_documents", "run_held_out", "sentences", "split_documents"]
