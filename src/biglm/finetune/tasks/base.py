"""What every fine-tuning task kind provides, and the pieces they share.

A task kind is data + loss + metric on the shared trainer (no loop of its own):

- ``model_config(base)``: the pretrained model's config with the heads the task needs;
- ``encode(records, labelled)``: records -> encoded examples (one-line errors naming the bad line);
- ``batcher`` / ``criterion``: training rows and their loss (``biglm.train`` runs them);
- ``predict(model, examples)``: one prediction (a dict) per example, through the generation engine or
  the evaluation scorers;
- ``score(examples, predictions)``: the task's metrics; ``main_metric`` / ``mode`` pick the best epoch;
- ``output(example, prediction)``: the JSON object ``biglm predict`` writes for an input line;
- ``show(example, prediction)``: one line for a person (input, prediction, reference).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

import torch
from torch import nn

from biglm.attention import AttentionLayout
from biglm.config import ModelConfig
from biglm.data.records import Record
from biglm.data.tokenizer import TokenIds
from biglm.finetune.config import FinetuneConfig
from biglm.objectives import IGNORE_INDEX, Batch, Criterion
from biglm.train.batches import Batcher


class FinetuneTask(Protocol):
    kind: str
    main_metric: str
    mode: str

    def model_config(self, base: ModelConfig) -> ModelConfig: ...
    def encode(self, records: Sequence[Record], labelled: bool = True) -> list[Any]: ...
    def train_items(self, examples: Sequence[Any]) -> list[Any]: ...
    def batcher(self) -> Batcher: ...
    def criterion(self) -> Criterion: ...
    def predict(self, model: nn.Module, examples: Sequence[Any]) -> list[dict[str, Any]]: ...
    def score(self, examples: Sequence[Any], predictions: Sequence[dict[str, Any]]) -> dict[str, float]: ...
    def output(self, example: Any, prediction: dict[str, Any]) -> dict[str, Any]: ...
    def show(self, example: Any, prediction: dict[str, Any]) -> str: ...


class TaskBase:
    """Shared state of the task kinds: the run config, tokenizer, special ids and the model's length limit."""

    kind = ""
    main_metric = ""
    mode = "max"

    def __init__(self, cfg: FinetuneConfig, tokenizer: Any, max_seq_len: int) -> None:
        self.cfg, self.tokenizer, self.max_seq_len = cfg, tokenizer, max_seq_len
        self.options = cfg.task.options
        self.fields = cfg.data
        self.ids = TokenIds.of(tokenizer)
        self.batch_size = cfg.task.eval_batch_size

    def tokenize(self, texts: Sequence[str]) -> list[list[int]]:
        """Token ids of each text (no special tokens), in one batched call of the Rust tokenizer."""
        if not texts:
            return []
        return self.tokenizer(list(texts), add_special_tokens=False)["input_ids"]

    def train_items(self, examples: Sequence[Any]) -> list[Any]:
        """The training rows of ``examples`` (one per example; extractive QA has one per window)."""
        return list(examples)

    def text(self, ids: Sequence[int]) -> str:
        """Decoded ids without special tokens (for showing examples)."""
        return self.tokenizer.decode(list(ids), skip_special_tokens=True).strip()

    def example_id(self, record: Record, index: int) -> str:
        value = record.fields.get(self.fields.id_field)
        return str(value) if value is not None else str(index)


def one_row(input_ids: Sequence[int], labels: Sequence[int], regions: Sequence[int], kind: str = "prefix_blind",
            extras: dict[str, torch.Tensor] | None = None, position_ids: Sequence[int] | None = None) -> Batch:
    """A one-row ``Batch`` of one example (document 0, positions 0..T-1 unless ``position_ids`` are given)."""
    T = len(input_ids)
    layout = AttentionLayout(kind, torch.zeros(1, T, dtype=torch.int32), torch.tensor([regions], dtype=torch.int8))
    positions = torch.arange(T)[None] if position_ids is None else torch.tensor([list(position_ids)])
    return Batch(torch.tensor([list(input_ids)]), torch.tensor([list(labels)]), positions, layout, extras or {})


def no_labels(n: int) -> list[int]:
    return [IGNORE_INDEX] * n


def chunks(items: Sequence[Any], size: int) -> list[Sequence[Any]]:
    """``items`` in consecutive slices of ``size`` (the last may be shorter): the batches of a prediction or
    scoring pass."""
    return [items[i:i + size] for i in range(0, len(items), size)]
