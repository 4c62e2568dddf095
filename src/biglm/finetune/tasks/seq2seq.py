"""``seq2seq``: source X -> target Y with Mask-Predict (summarisation, question generation, copy tasks).

Training row: X = ``BOS source`` (optionally a fixed share of its tokens masked), Y = the target, masked
whole in a share ``full_mask_fraction`` of the rows (the case Mask-Predict's first pass meets) and otherwise
at a ratio ~ U(min_mask_ratio, 1) (at least one token), under the prefix-blind layout (X never sees Y), as
in BiGLM's fine-tuning code. Y's positions follow ``target_positions``: ``aligned`` (the default)
starts Y at the source's first position, so target token j and source token j share a position and "the
source token at my place" is one fixed relative offset; ``continue`` (the paper's code) counts on after X,
where that offset changes with the source's length and a small model does not learn to copy (see
docs/results/learning.md, "Fine-tuning that learns"). The fine-tuned model records it
(``ModelConfig.suffix_positions``) for decoding and scoring. Source and target are tokenised as running text
(``source_space``/``target_space``).
The output length is decided one of two ways:

- ``length: head`` trains the length head on the mean-pooled X (every X token, BOS included: the tokens
  the engine pools at decoding) to predict |Y|, with weight ``length_loss_weight`` (0.1). Prediction
  decodes the head's ``length_candidates`` most probable lengths in parallel and keeps the candidate with
  the best average log-probability.
- ``length: eos`` pads Y with EOS up to ``max_target_length`` and trains on the padding too (LLaDA's SFT
  recipe); prediction decodes ``max_target_length`` tokens and cuts at the first EOS.

Both decode with the shared engine (``biglm.generate.generate_ids``, exact prefix cache, ``steps`` passes).

Causal and bidirectional-ar models (``model.family``) read ``BOS source target EOS`` left to right under the
causal layout with the loss on the target tokens and EOS only (the source is context, not a target), and
predict with the KV-cached greedy decoder up to EOS; no length head (``Family.length_head``). A family's rows
are built for its attention layout (``LAYOUT_ROWS`` by ``Family.layout``; a new layout adds its row builder
there).
"""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from biglm.config import ModelConfig
from biglm.data.records import Record
from biglm.errors import BiglmError
from biglm.families import FAMILIES, Family, get_family
from biglm.finetune.tasks.base import TaskBase, chunks, one_row
from biglm.generate.api import banned_ids
from biglm.generate.autoregressive import AROptions, generate_ar_ids
from biglm.generate.engine import generate_ids
from biglm.metrics import generation_metrics
from biglm.model import suffix_position_ids
from biglm.objectives import IGNORE_INDEX, Batch, LossParts, masked_lm_loss
from biglm.objectives.base import apply_mask
from biglm.train.batches import RowSeeds, concat_batches


@dataclass
class Seq2SeqExample:
    id: str
    source: list[int]
    """Source ids without BOS, already cut to fit."""
    target: list[int] | None
    target_text: str | None
    where: str


class Seq2SeqTask(TaskBase):
    kind = "seq2seq"
    mode = "max"

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        o = self.options
        self.main_metric = next((main for name, main in (("rouge", "rougeL"), ("bleu", "bleu"), ("bleu2", "bleu2"))
                                 if name in o.metrics), "exact_match")
        self.max_target = o.max_target_length
        room = self.max_seq_len - 1 - self.max_target  # BOS + source + the longest target
        if room < 1:
            raise BiglmError(f"{o.section}.max_target_length={self.max_target} leaves no room for a source in the "
                             f"model's max_seq_len={self.max_seq_len}")
        self.max_source = min(room, o.max_source_length) if o.max_source_length else room

    family: Family = get_family("masked")
    """The model family the rows are built for (set by ``model_config`` from the pretrained model)."""

    def model_config(self, base: ModelConfig) -> ModelConfig:
        family = get_family(base)
        if family.layout not in LAYOUT_ROWS:
            known = [f.name for f in FAMILIES.values() if f.layout in LAYOUT_ROWS]
            raise BiglmError(f"task {self.kind}: no training rows for model family {family.name!r} (known: "
                             f"{', '.join(known)})")
        self.family = family
        if family.autoregressive:
            return base
        # The fine-tuned model carries where its targets sit, so that decoding and scoring place them alike.
        base = dataclasses.replace(base, suffix_positions=self.options.target_positions)
        if self.options.length == "eos" or not family.length_head:
            return base
        # Classes 0..max_target_length; a pretrained head of another size is replaced (a fresh head).
        return dataclasses.replace(base, length_head=True, max_target_length=self.max_target + 1)

    # --- data ---------------------------------------------------------------------------------------------
    def encode(self, records: Sequence[Record], labelled: bool = True) -> list[Seq2SeqExample]:
        f, o = self.fields, self.options
        # A byte-level BPE word has one form after a space and another at a text's start ("Ġprocessing" vs
        # "process"+"ing"). Source and target both read as running text, so that a word copied from any place
        # of the source, its first word included, is the same tokens in the target.
        space = lambda text, on: " " + text.strip() if on else text
        sources = self.tokenize([space(r.get(f.source_field), o.source_space) for r in records])
        targets: list[list[int] | None] = [None] * len(records)
        texts: list[str | None] = [None] * len(records)
        if labelled:
            texts = [r.get(f.target_field) for r in records]
            targets = self.tokenize([space(t, o.target_space) for t in texts])
        cut_sources = cut_targets = 0
        out = []
        for i, (record, src, tgt) in enumerate(zip(records, sources, targets)):
            if not src:
                raise BiglmError(f"{record.where}: field '{f.source_field}' is empty")
            if tgt is not None:
                if not tgt or not texts[i].strip():
                    raise BiglmError(f"{record.where}: field '{f.target_field}' is empty (a target needs a token)")
                if len(tgt) > self.max_target:
                    if not self.options.truncate_targets:
                        raise BiglmError(
                            f"{record.where}: target of {len(tgt)} tokens exceeds {self.options.section}."
                            f"max_target_length={self.max_target} (raise it, or set truncate_targets true to cut)")
                    tgt, cut_targets = tgt[:self.max_target], cut_targets + 1
            if len(src) > self.max_source:
                src, cut_sources = src[:self.max_source], cut_sources + 1
            out.append(Seq2SeqExample(self.example_id(record, i), src, tgt, texts[i], record.where))
        if cut_sources or cut_targets:
            where = records[0].where.rsplit(":", 1)[0]
            print(f"note: {where}: kept the first {self.max_source} tokens of {cut_sources} source(s) and the first "
                  f"{self.max_target} of {cut_targets} target(s)", file=sys.stderr)
        return out

    def target_ids(self, ex: Seq2SeqExample) -> list[int]:
        """Y as trained: the target, or the target padded with EOS to max_target_length (``eos``)."""
        assert ex.target is not None
        if self.options.length == "eos":
            return ex.target + [self.ids.eos] * (self.max_target - len(ex.target))
        return ex.target

    def batcher(self) -> Seq2SeqBatcher:
        return Seq2SeqBatcher(self)

    def criterion(self) -> Seq2SeqCriterion:
        o = self.options
        head = o.length == "head" and self.family.length_head
        return Seq2SeqCriterion(o.label_smoothing, o.length_loss_weight if head else 0.0)

    # --- prediction ---------------------------------------------------------------------------------------
    @torch.no_grad()
    def predict(self, model: nn.Module, examples: Sequence[Seq2SeqExample]) -> list[dict[str, Any]]:
        o = self.options
        if get_family(model).autoregressive:
            return self._predict_ar(model, examples)
        head = o.length == "head"
        banned = banned_ids(self.tokenizer, model.config.vocab_size)
        out: list[dict[str, Any]] = []
        for batch in chunks(examples, self.batch_size):
            result = generate_ids(
                model, [ex.source for ex in batch], bos_token_id=self.ids.bos, eos_token_id=self.ids.eos,
                mask_token_id=self.ids.mask, pad_token_id=self.ids.pad, max_new_tokens=self.max_target,
                steps=min(o.steps, self.max_target), strategy=o.strategy, length="predict" if head else "fixed",
                length_candidates_k=o.length_candidates, length_rule=o.length_rule, banned_token_ids=banned,
                prefix_cache=o.prefix_cache, **o.parallel.as_strategy_options())
            texts = self.tokenizer.batch_decode(result.token_ids, skip_special_tokens=True)
            for i, text in enumerate(texts):
                pred: dict[str, Any] = {"prediction": text.strip(), "length": len(result.token_ids[i]),
                                        "forward_passes": result.forward_passes}
                if head and result.candidates is not None:
                    pred["length_candidates"] = result.candidates[i]
                out.append(pred)
        return out

    def _predict_ar(self, model: nn.Module, examples: Sequence[Seq2SeqExample]) -> list[dict[str, Any]]:
        """Greedy KV-cached decoding up to EOS (at most ``max_target_length`` tokens)."""
        opts = AROptions(max_new_tokens=self.max_target,
                         banned_token_ids=tuple(banned_ids(self.tokenizer, model.config.vocab_size)))
        out: list[dict[str, Any]] = []
        for batch in chunks(examples, self.batch_size):
            result = generate_ar_ids(model, [ex.source for ex in batch], bos_token_id=self.ids.bos,
                                     eos_token_id=self.ids.eos, pad_token_id=self.ids.pad, options=opts)
            texts = self.tokenizer.batch_decode(result.token_ids, skip_special_tokens=True)
            out += [{"prediction": text.strip(), "length": len(ids), "forward_passes": result.forward_passes}
                    for text, ids in zip(texts, result.token_ids)]
        return out

    def score(self, examples: Sequence[Seq2SeqExample], predictions: Sequence[dict[str, Any]]) -> dict[str, Any]:
        refs = [ex.target_text or "" for ex in examples]
        scores = generation_metrics(self.options.metrics, [p["prediction"] for p in predictions], refs)
        if self.options.length == "head" and predictions and "length_candidates" in predictions[0]:
            hits = sum(p["length_candidates"][0] == len(ex.target or []) for ex, p in zip(examples, predictions))
            scores["length_accuracy"] = 100.0 * hits / max(len(examples), 1)
        tokens = sum(max(p["length"], 1) for p in predictions)
        scores["passes_per_token"] = sum(p["forward_passes"] for p in predictions) / max(tokens, 1)
        return scores

    def output(self, example: Seq2SeqExample, prediction: dict[str, Any]) -> dict[str, Any]:
        return {"id": example.id, "prediction": prediction["prediction"]}

    def show(self, example: Seq2SeqExample, prediction: dict[str, Any]) -> str:
        ref = f"   [reference: {example.target_text}]" if example.target_text is not None else ""
        return f"{self.text(example.source)}\n    -> {prediction['prediction']}{ref}"


class Seq2SeqBatcher:
    """Training rows: ``BOS source | target`` with the target (and optionally the source) masked."""

    def __init__(self, task: Seq2SeqTask) -> None:
        self.task = task

    def __call__(self, examples: list[Seq2SeqExample], seeds: RowSeeds) -> Batch:
        build = LAYOUT_ROWS[self.task.family.layout]
        g = torch.Generator()
        rows = []
        for j, ex in enumerate(examples):
            g.manual_seed(seeds[j])
            rows.append(build(self.task, ex, g))
        return concat_batches(rows)


def masked_row(task: Seq2SeqTask, ex: Seq2SeqExample, g: torch.Generator) -> Batch:
    """``BOS source | target`` under the prefix-blind layout, the target masked with a ratio ~ U(min, 1)."""
    o, ids = task.options, task.ids
    x = [ids.bos, *ex.source]
    y = task.target_ids(ex)
    u, whole = torch.rand(2, generator=g, dtype=torch.float64).tolist()
    ratio = 1.0 if whole < o.full_mask_fraction else o.min_mask_ratio + (1.0 - o.min_mask_ratio) * u
    hide_y = _choose(len(y), max(1, round(ratio * len(y))), g)
    hide_x = torch.zeros(len(x), dtype=torch.bool)
    if o.source_mask_ratio > 0:
        hide_x[1:] = _choose(len(ex.source), round(o.source_mask_ratio * len(ex.source)), g)
    tokens = torch.tensor(x + y)
    inputs, labels = apply_mask(tokens, torch.cat([hide_x, hide_y]), ids.mask)
    extras = {"length_targets": torch.tensor([len(ex.target or [])]),
              "length_mask": torch.tensor([[True] * len(x) + [False] * len(y)])}
    y_positions = suffix_position_ids(o.target_positions, torch.tensor([len(x)]), len(y))[0]
    return one_row(inputs.tolist(), labels.tolist(), [0] * len(x) + [1] * len(y), extras=extras,
                   position_ids=[*range(len(x)), *y_positions.tolist()])


def causal_row(task: Seq2SeqTask, ex: Seq2SeqExample, g: torch.Generator) -> Batch:
    """``BOS source target`` read left to right: position t predicts token t+1, with a loss only where that
    token is in the target or its EOS (region 1 there, so ``loss_y`` is the reply's loss)."""
    ids = task.ids
    assert ex.target is not None
    tokens = [ids.bos, *ex.source, *ex.target, ids.eos]
    first = 1 + len(ex.source)  # index of the first target token
    inputs = tokens[:-1]
    labels = [IGNORE_INDEX] * (first - 1) + tokens[first:]
    regions = [0] * (first - 1) + [1] * (len(inputs) - first + 1)
    return one_row(inputs, labels, regions, kind="causal")


LAYOUT_ROWS = {"prefix_blind": masked_row, "causal": causal_row}
"""``Family.layout`` -> ``(task, example, generator) -> one-row Batch`` (GLM's ``prefix_lm`` rows: ``tasks/glm.py``)."""


def _choose(n: int, k: int, generator: torch.Generator) -> torch.Tensor:
    """A boolean mask of ``k`` of ``n`` positions, uniformly at random."""
    hide = torch.zeros(n, dtype=torch.bool)
    hide[torch.randperm(n, generator=generator)[:k]] = True
    return hide


class Seq2SeqCriterion:
    """Masked-token loss (optionally label-smoothed) + ``length_weight`` × the length head's cross-entropy."""

    def __init__(self, label_smoothing: float = 0.0, length_weight: float = 0.1) -> None:
        self.label_smoothing, self.length_weight = label_smoothing, length_weight
        self.weights = {"mlm": 1.0, **({"length": length_weight} if length_weight > 0 else {})}

    def counts(self, batch: Batch) -> dict[str, float]:
        counts = {"mlm": float(batch.num_targets)}
        if self.length_weight > 0:
            counts["length"] = float(len(batch.extras.get("length_targets", ())))
        return counts

    def __call__(self, model: nn.Module, batch: Batch) -> LossParts:
        mask = batch.loss_mask
        length_mask = batch.extras.get("length_mask") if self.length_weight > 0 else None
        out = model(batch.input_ids, batch.layout, batch.position_ids, logits_mask=mask, length_mask=length_mask)
        regions = batch.layout.regions[mask] if batch.layout.regions is not None else None
        parts = masked_lm_loss(out.logits, batch.labels[mask], regions, self.label_smoothing)
        if self.length_weight > 0:
            # Always the same keys, also for a padding batch without examples (ranks reduce by key).
            total = out.logits.new_zeros(())
            count = torch.zeros((), device=out.logits.device)
            if out.length_logits is not None:
                total = F.cross_entropy(out.length_logits.float(), batch.extras["length_targets"], reduction="sum")
                count = count + out.length_logits.shape[0]
            parts.terms["length"] = total
            parts.parts["length"] = (total.detach(), count)
        return parts


__all__ = ["Seq2SeqBatcher", "Seq2SeqCriterion", "Seq2SeqExample", "Seq2SeqTask"]
