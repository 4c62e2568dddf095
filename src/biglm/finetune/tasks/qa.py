"""``extractive-qa`` (SQuAD v1.1): a start/end span head over the context tokens.

A window is ``BOS question EOS context-piece EOS`` under bidirectional attention. Contexts longer than a
window are cut into windows that share ``doc_stride`` tokens. In training, each window is one row whose
targets are the answer's first and last token when the whole answer lies in the window, and BOS
(position 0, "no answer here") otherwise; the loss is the mean of the start and end cross-entropies over
BOS and the window's context tokens. Prediction keeps each window's ``n_best`` start and end logits,
pairs them (end ≥ start, at most ``max_answer_length`` tokens), scores a pair by the sum of its logits,
and answers with the best pair over all windows of the example, mapped back to the context's characters
through the tokenizer's offsets.

Records use the Hugging Face SQuAD layout (``id``, ``question``, ``context``, ``answers: {"text": [...],
"answer_start": [...]}``; the answers may also be a list of ``{"text", "answer_start"}`` objects), or the
official nested SQuAD JSON (``data`` -> ``paragraphs`` -> ``qas``), which is flattened.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from biglm.config import ModelConfig
from biglm.data.records import Record
from biglm.errors import BiglmError, ConfigError
from biglm.finetune.tasks.base import TaskBase, chunks, no_labels, one_row
from biglm.metrics import squad_scores
from biglm.objectives import Batch, LossParts
from biglm.train.batches import RowSeeds, concat_batches


@dataclass
class QAWindow:
    """One row: token ids, where the context starts, the context tokens' character offsets, targets."""

    ids: list[int]
    context_start: int
    offsets: list[tuple[int, int]]
    start: int = 0
    end: int = 0


@dataclass
class QAExample:
    id: str
    context: str
    answers: list[str]
    windows: list[QAWindow] = field(default_factory=list)
    where: str = ""


def _answers(record: Record, name: str) -> tuple[list[str], list[int]]:
    value = record.get(name, (dict, list), "a SQuAD answers object")
    if isinstance(value, dict):
        texts, starts = value.get("text"), value.get("answer_start")
    else:
        texts = [a.get("text") if isinstance(a, dict) else None for a in value]
        starts = [a.get("answer_start") if isinstance(a, dict) else None for a in value]
    if not isinstance(texts, list) or not isinstance(starts, list) or len(texts) != len(starts) or not texts \
            or not all(isinstance(t, str) and isinstance(s, int) for t, s in zip(texts, starts)):
        raise BiglmError(f"{record.where}: field '{name}' must hold answer texts and integer answer_start values "
                         "(SQuAD layout), at least one")
    return texts, starts


def flatten_squad(records: Sequence[Record], question: str, context: str, answers: str,
                  id_field: str) -> list[Record]:
    """Records of the nested SQuAD JSON (articles with paragraphs and qas) as flat records."""
    out = []
    for r in records:
        if "paragraphs" not in r.fields:
            out.append(r)
            continue
        for p, para in enumerate(r.fields["paragraphs"]):
            for qa in para.get("qas", []):
                fields = {id_field: qa.get("id"), question: qa.get("question"), context: para.get("context"),
                          answers: qa.get("answers", [])}
                out.append(Record(fields, f"{r.where} paragraph {p} question {qa.get('id')}"))
    return out


class QATask(TaskBase):
    kind = "extractive-qa"
    main_metric = "f1"
    mode = "max"

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        o = self.options
        if o.max_length > self.max_seq_len:
            raise ConfigError(f"task.extractive_qa.max_length={o.max_length}: exceeds the model's max_seq_len="
                              f"{self.max_seq_len}")

    def model_config(self, base: ModelConfig) -> ModelConfig:
        return dataclasses.replace(base, span_head=True)

    def encode(self, records: Sequence[Record], labelled: bool = True) -> list[QAExample]:
        f, o = self.fields, self.options
        records = flatten_squad(records, f.question_field, f.context_field, f.answers_field, f.id_field)
        questions = self.tokenize([r.get(f.question_field) for r in records])
        contexts = [r.get(f.context_field) for r in records]
        encoded = self.tokenizer(contexts, add_special_tokens=False, return_offsets_mapping=True)
        out = []
        for i, record in enumerate(records):
            q = questions[i][:o.max_question_length]
            room = o.max_length - len(q) - 3
            if room <= o.doc_stride:
                raise ConfigError(f"task.extractive_qa: a window of max_length={o.max_length} with a {len(q)}-token "
                                  f"question leaves {room} context tokens, not more than doc_stride={o.doc_stride}")
            texts, starts = _answers(record, f.answers_field) if labelled else ([], [])
            span = self._char_span(record, contexts[i], texts, starts) if labelled else None
            ids, offsets = encoded["input_ids"][i], encoded["offset_mapping"][i]
            example = QAExample(self.example_id(record, i), contexts[i], texts, where=record.where)
            for lo in range(0, max(len(ids), 1), room - o.doc_stride):
                piece = ids[lo:lo + room]
                window = QAWindow([self.ids.bos, *q, self.ids.eos, *piece, self.ids.eos], len(q) + 2,
                                  [tuple(x) for x in offsets[lo:lo + room]])
                if span is not None:
                    window.start, window.end = _token_span(window, span)
                example.windows.append(window)
                if lo + room >= len(ids):
                    break
            out.append(example)
        return out

    @staticmethod
    def _char_span(record: Record, context: str, texts: list[str], starts: list[int]) -> tuple[int, int]:
        """The first answer's character span, found near ``answer_start`` if the offset is slightly off."""
        text, start = texts[0], starts[0]
        if context[start:start + len(text)] != text:
            found = context.find(text, max(0, start - 20))
            found = found if found >= 0 else context.find(text)
            if found < 0:
                raise BiglmError(f"{record.where}: answer {text!r} does not occur in the context")
            start = found
        return start, start + len(text)

    def train_items(self, examples: Sequence[QAExample]) -> list[QAWindow]:
        """Training rows are windows, not examples."""
        return [w for ex in examples for w in ex.windows]

    def batcher(self) -> QABatcher:
        return QABatcher()

    def criterion(self) -> SpanCriterion:
        return SpanCriterion()

    @torch.no_grad()
    def predict(self, model: nn.Module, examples: Sequence[QAExample]) -> list[dict[str, Any]]:
        o = self.options
        device = next(model.parameters()).device
        out = []
        for batch in chunks(examples, self.batch_size):
            windows = [(k, w) for k, ex in enumerate(batch) for w in ex.windows]
            rows = QABatcher()([w for _, w in windows], RowSeeds(0, 0)).to(device)
            span = model(rows.input_ids, rows.layout, rows.position_ids,
                         logits_mask=torch.zeros_like(rows.input_ids, dtype=torch.bool)).span_logits.float().cpu()
            best: list[tuple[float, str]] = [(-float("inf"), "")] * len(batch)
            for r, (k, w) in enumerate(windows):
                c0, n = w.context_start, len(w.offsets)
                starts, ends = span[r, c0:c0 + n, 0], span[r, c0:c0 + n, 1]
                top_s = starts.topk(min(o.n_best, n)).indices.tolist()
                top_e = ends.topk(min(o.n_best, n)).indices.tolist()
                for s in top_s:
                    for e in top_e:
                        if s <= e < s + o.max_answer_length:
                            score = float(starts[s] + ends[e])
                            if score > best[k][0]:
                                # byte-level BPE offsets include a word's leading space
                                best[k] = (score, batch[k].context[w.offsets[s][0]:w.offsets[e][1]].strip())
            out.extend({"answer": text, "score": score} for score, text in best)
        return out

    def score(self, examples: Sequence[QAExample], predictions: Sequence[dict[str, Any]]) -> dict[str, float]:
        return squad_scores([p["answer"] for p in predictions], [ex.answers for ex in examples])

    def output(self, example: QAExample, prediction: dict[str, Any]) -> dict[str, Any]:
        return {"id": example.id, "answer": prediction["answer"]}

    def show(self, example: QAExample, prediction: dict[str, Any]) -> str:
        question = self.text(example.windows[0].ids[1:example.windows[0].context_start - 1])
        context = example.context if len(example.context) <= 110 else example.context[:107] + "..."
        gold = f"   [gold: {' | '.join(example.answers)}]" if example.answers else ""
        return f"{question} | {context}\n    -> {prediction['answer']!r}{gold}"


def _token_span(window: QAWindow, span: tuple[int, int]) -> tuple[int, int]:
    """Row positions of the answer's first and last token if the window holds all of it, else (0, 0)."""
    lo, hi = span
    inside = [j for j, (s, e) in enumerate(window.offsets) if e > lo and s < hi]
    if not inside or window.offsets[0][0] > lo or window.offsets[-1][1] < hi:
        return 0, 0
    return window.context_start + inside[0], window.context_start + inside[-1]


class QABatcher:
    """Windows as rows (bidirectional attention) with start/end targets and the answerable positions."""

    def __call__(self, windows: list[QAWindow], seeds: RowSeeds) -> Batch:
        rows = []
        for w in windows:
            allowed = [False] * len(w.ids)
            allowed[0] = True  # BOS: the answer is not in this window
            for j in range(w.context_start, w.context_start + len(w.offsets)):
                allowed[j] = True
            extras = {"start_positions": torch.tensor([w.start]), "end_positions": torch.tensor([w.end]),
                      "answerable": torch.tensor([allowed])}
            rows.append(one_row(w.ids, no_labels(len(w.ids)), [0] * len(w.ids), "bidirectional", extras))
        return concat_batches(rows)


class SpanCriterion:
    """Mean of the start and end cross-entropies over each row's answerable positions (term ``span``)."""

    def __init__(self) -> None:
        self.weights = {"span": 1.0}

    def counts(self, batch: Batch) -> dict[str, float]:
        return {"span": float(len(batch.extras.get("start_positions", ())))}

    def __call__(self, model: nn.Module, batch: Batch) -> LossParts:
        out = model(batch.input_ids, batch.layout, batch.position_ids,
                    logits_mask=torch.zeros_like(batch.input_ids, dtype=torch.bool))
        if "start_positions" not in batch.extras:  # an evaluation padding batch without rows: same keys, zeros
            zero = out.logits.new_zeros(())
            return LossParts({"span": zero}, {"start": (zero, zero), "end": (zero, zero)})
        logits = out.span_logits.float().masked_fill(~batch.extras["answerable"][..., None], float("-inf"))
        start = F.cross_entropy(logits[..., 0], batch.extras["start_positions"], reduction="sum")
        end = F.cross_entropy(logits[..., 1], batch.extras["end_positions"], reduction="sum")
        n = torch.tensor(float(logits.shape[0]), device=logits.device)
        return LossParts({"span": (start + end) / 2}, {"start": (start.detach(), n), "end": (end.detach(), n)})
