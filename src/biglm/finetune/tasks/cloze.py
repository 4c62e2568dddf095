"""``cloze-classification``: classify by filling a blank with a label's verbalizer (no [CLS] head).

The template (a Python format string over the example's fields with one ``{blank}``) gives the text
before the blank and the text after it; both are X (``BOS before ... after``), the blank is Y. In training
the gold label's verbalizer tokens fill the blank as [MASK] tokens and are predicted (the masked-token
loss; ``regions`` 0 / 1 / 0 under the prefix-blind layout, so X never sees the blank). At prediction every
label's verbalizer is scored with the evaluation scorers (``single-pass`` or ``greedy-order``, exact
prefix cache, text after the blank included) and the label distribution is GLM's eq. 5: a softmax of
the verbalizer log-probabilities over the label set (optionally divided by their token counts).

Whitespace: when the text before the blank ends in whitespace, that whitespace moves into the
verbalizer (``"Answer: {blank}"`` fills ``" Yes"``), which is how the word is tokenised in running text.

Equal blanks: verbalizers of different token counts are padded with EOS to the longest (``" yes"`` may be
two tokens where ``" no"`` is one: ``" no" EOS``), in training and at prediction. Otherwise the number of
[MASK] tokens in the blank tells the label in training, and a model learns that instead of the task: it
fits the training set and stays at chance on new text (measured: docs/results/learning.md, "Fine-tuning that learns").
"""

from __future__ import annotations

import string
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from biglm.config import ModelConfig
from biglm.data.records import Record
from biglm.errors import BiglmError, ConfigError
from biglm.evaluate.scoring import ScoringConfig, score_requests
from biglm.finetune.tasks.base import TaskBase, no_labels, one_row
from biglm.metrics import accuracy
from biglm.objectives import Batch, MaskedLMCriterion
from biglm.train.batches import RowSeeds, concat_batches

BLANK = "blank"


@dataclass
class ClozeExample:
    id: str
    before: list[int]
    """BOS + the text before the blank."""
    after: list[int]
    verbalizers: list[list[int]]
    """Token ids of every label's verbalizer as it fills this example's blank (label order)."""
    label: int | None
    where: str


def parse_template(template: str) -> tuple[list[tuple[str, str | None]], list[tuple[str, str | None]]]:
    """The template's pieces before and after ``{blank}``: (literal, field or None) pairs."""
    try:
        parts = [(lit, name) for lit, name, _, _ in string.Formatter().parse(template)]
    except ValueError as e:
        raise ConfigError(f"task.cloze_classification.template={template!r}: not a valid template ({e})") from None
    blanks = [i for i, (_, name) in enumerate(parts) if name == BLANK]
    if len(blanks) != 1:
        raise ConfigError(f"task.cloze_classification.template={template!r}: needs exactly one {{{BLANK}}} "
                          f"(found {len(blanks)})")
    if any(name == "" for _, name in parts):
        raise ConfigError(f"task.cloze_classification.template={template!r}: empty {{}} field; name the field")
    i = blanks[0]
    before = [*parts[:i], (parts[i][0], None)]
    return before, parts[i + 1:]


class ClozeTask(TaskBase):
    kind = "cloze-classification"
    main_metric = "accuracy"
    mode = "max"

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        o = self.options
        if not o.verbalizer:
            raise ConfigError("task.cloze_classification.verbalizer: give each label its words, e.g. "
                              "--verbalizer entailment=Yes --verbalizer contradiction=No")
        if any(not words.strip() for words in o.verbalizer.values()):
            raise ConfigError("task.cloze_classification.verbalizer: a label has no words")
        self.labels = list(o.verbalizer)
        self.before, self.after = parse_template(o.template)
        # Each verbalizer as it reads after whitespace and directly after text.
        words = list(o.verbalizer.values())
        self.spaced = self.blank_fillers(self.tokenize([" " + w.strip() for w in words]))
        self.joined = self.blank_fillers(self.tokenize([w.strip() for w in words]))

    def model_config(self, base: ModelConfig) -> ModelConfig:
        return base

    def blank_fillers(self, verbalizers: list[list[int]]) -> list[list[int]]:
        """Every verbalizer padded with EOS to the longest, so that the blank's width never tells the label."""
        width = max(len(v) for v in verbalizers)
        return [v + [self.ids.eos] * (width - len(v)) for v in verbalizers]

    def _render(self, pieces: list[tuple[str, str | None]], record: Record) -> str:
        return "".join(lit + ("" if name is None else str(record.get(name, (str, int, float), "text")))
                       for lit, name in pieces)

    def encode(self, records: Sequence[Record], labelled: bool = True) -> list[ClozeExample]:
        befores = [self._render(self.before, r) for r in records]
        afters = [self._render(self.after, r) for r in records]
        spaced = [b[-1:].isspace() for b in befores]
        before_ids = self.tokenize([b.rstrip() for b in befores])
        after_ids = self.tokenize(afters)
        longest = max(len(v) for v in self.spaced + self.joined)
        out = []
        for i, record in enumerate(records):
            label = None
            if labelled:
                value = str(record.get(self.fields.label_field, (str, int, float), "a label"))
                if value not in self.labels:
                    # YAML 1.1 reads unquoted yes/no/on/off as booleans: say so when that is what happened.
                    yaml = ("; YAML reads unquoted yes/no/on/off as True/False: quote the labels in the "
                            "config ('yes': ...)" if value.lower() in ("yes", "no", "on", "off")
                            and {"True", "False"} & set(self.labels) else "")
                    raise BiglmError(f"{record.where}: label {value!r} is not in the verbalizer "
                                     f"(labels: {', '.join(self.labels)}){yaml}")
                label = self.labels.index(value)
            before, after = [self.ids.bos, *before_ids[i]], after_ids[i]
            room = self.max_seq_len - longest
            if len(before) + len(after) > room:  # the oldest context goes first, then the end of the text after
                before = before[:1] + before[max(1, len(before) - room + 1):]
                after = after[:max(0, room - len(before))]
            out.append(ClozeExample(self.example_id(record, i), before, after,
                                    self.spaced if spaced[i] else self.joined, label, record.where))
        return out

    def batcher(self) -> ClozeBatcher:
        return ClozeBatcher(self.ids.mask)

    def criterion(self) -> MaskedLMCriterion:
        return MaskedLMCriterion()

    def verbalizer_logprobs(self, model: nn.Module, examples: Sequence[ClozeExample]) -> list[float]:
        """log p(verbalizer | example) of every (example, label), labels innermost (the masked scorers)."""
        requests = [(ex.before, v, ex.after) for ex in examples for v in ex.verbalizers]
        scoring = ScoringConfig(method=self.options.scoring, batch_size=self.batch_size * len(self.labels))
        scores = score_requests(model, requests, mask_token_id=self.ids.mask, pad_token_id=self.ids.pad,
                                config=scoring)
        return [s.logprob for s in scores]

    @torch.no_grad()
    def predict(self, model: nn.Module, examples: Sequence[ClozeExample]) -> list[dict[str, Any]]:
        scores = self.verbalizer_logprobs(model, examples)
        out = []
        for i, ex in enumerate(examples):
            logp = torch.tensor(scores[i * len(self.labels):(i + 1) * len(self.labels)])
            if self.options.length_normalise:
                logp = logp / torch.tensor([len(v) for v in ex.verbalizers], dtype=logp.dtype)
            probs = logp.softmax(0)  # GLM eq. 5: normalised over the label set
            best = int(probs.argmax())
            out.append({"label": self.labels[best], "index": best,
                        "probs": {lab: float(p) for lab, p in zip(self.labels, probs)}})
        return out

    def score(self, examples: Sequence[ClozeExample], predictions: Sequence[dict[str, Any]]) -> dict[str, float]:
        return accuracy([p["index"] for p in predictions], [ex.label for ex in examples])

    def output(self, example: ClozeExample, prediction: dict[str, Any]) -> dict[str, Any]:
        return {"id": example.id, "label": prediction["label"], "probs": prediction["probs"]}

    def show(self, example: ClozeExample, prediction: dict[str, Any]) -> str:
        gold = f"   [gold: {self.labels[example.label]}]" if example.label is not None else ""
        p = prediction["probs"][prediction["label"]]
        return (f"{self.text(example.before)} ___ {self.text(example.after)}\n    -> {prediction['label']} "
                f"(p={p:.2f}){gold}")


class ClozeBatcher:
    """Training rows: ``BOS before [MASK]×|gold verbalizer| after``; the blank is Y, the rest X."""

    def __init__(self, mask_token_id: int) -> None:
        self.mask = mask_token_id

    def __call__(self, examples: list[ClozeExample], seeds: RowSeeds) -> Batch:
        rows = []
        for ex in examples:
            if ex.label is None:
                raise BiglmError(f"{ex.where}: training needs a label")
            gold = ex.verbalizers[ex.label]
            ids = ex.before + [self.mask] * len(gold) + ex.after
            labels = no_labels(len(ex.before)) + gold + no_labels(len(ex.after))
            regions = [0] * len(ex.before) + [1] * len(gold) + [0] * len(ex.after)
            rows.append(one_row(ids, labels, regions))
        return concat_batches(rows)
