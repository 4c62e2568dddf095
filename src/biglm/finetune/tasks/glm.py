"""The cloze and seq2seq task kinds for GLM models (family ``glm``): blanks filled in part B.

- ``cloze-classification``: part A = ``BOS before [MASK] after EOS``; every label's verbalizer is written
  in part B after ``[sop]`` at the blank's position and scored by the chain rule (one pass per batch of
  rows, ``biglm.evaluate.ar_scoring.score_rows``). p(label | x) is GLM's eq. 5, a softmax of the
  verbalizer log-probabilities over the label set (divided by their token counts with
  ``length_normalise``), and training minimises its cross-entropy against the gold label (GLM's
  fine-tuning loss; all labels' rows of an example sit in one micro-batch).
- ``seq2seq``: part A = ``BOS source [gMASK]``, part B = ``[sop] target`` with targets ``target [eop]``
  (label smoothing as configured); prediction fills the ``[gMASK]`` with the autoregressive loop
  (``biglm.generate.glm``: greedy, or beam search with ``num_beams``, ``no_repeat_ngram_size``,
  ``length_penalty``, ``min_target_length``), up to ``max_target_length`` tokens.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from biglm.attention import AttentionLayout
from biglm.config import ModelConfig
from biglm.errors import BiglmError
from biglm.evaluate.ar_scoring import score_rows
from biglm.finetune.tasks.base import chunks, no_labels
from biglm.finetune.tasks.cloze import ClozeExample, ClozeTask
from biglm.finetune.tasks.instruction import InstructionTask
from biglm.finetune.tasks.seq2seq import Seq2SeqExample, Seq2SeqTask
from biglm.generate.autoregressive import AROptions
from biglm.generate.glm import GLMTokens, infill_ids
from biglm.generate.sampling import SamplingConfig
from biglm.metrics import generation_metrics
from biglm.objectives import Batch, LossParts, MaskedLMCriterion
from biglm.train.batches import RowSeeds, concat_batches


def glm_row(part_a: Sequence[int], blank: int, part_b: Sequence[int], labels_b: Sequence[int],
            extras: dict[str, torch.Tensor] | None = None) -> Batch:
    """A one-row GLM ``Batch``: part A (positions 0..), part B at the blank's position, 1, 2, ... inside."""
    a, b = len(part_a), len(part_b)
    first = torch.cat([torch.arange(a), torch.full((b,), blank)])
    second = torch.cat([torch.zeros(a, dtype=torch.long), torch.arange(1, b + 1)])
    layout = AttentionLayout("prefix_lm", torch.zeros(1, a + b, dtype=torch.int32),
                             torch.tensor([[0] * a + [1] * b], dtype=torch.int8))
    return Batch(torch.tensor([[*part_a, *part_b]]), torch.tensor([[*no_labels(a), *labels_b]]),
                 torch.stack([first, second], -1)[None], layout, extras or {})


class GLMClozeTask(ClozeTask):
    """Cloze classification for GLM models (see the module docstring)."""

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.glm = GLMTokens.from_tokenizer(self.tokenizer)
        self.max_seq_len -= 3  # the blank, EOS and [sop] besides the text and the verbalizer

    def blank_fillers(self, verbalizers: list[list[int]]) -> list[list[int]]:
        """As they are: part A holds one [MASK] whatever the verbalizer's length, so nothing leaks."""
        return verbalizers

    def part_a(self, ex: ClozeExample) -> tuple[list[int], int]:
        return [*ex.before, self.glm.mask, *ex.after, self.glm.eos], len(ex.before)

    def verbalizer_logprobs(self, model: nn.Module, examples: Sequence[ClozeExample]) -> list[float]:
        rows, part_a = [], []
        for ex in examples:
            a, blank = self.part_a(ex)
            for v in ex.verbalizers:
                rows.append(([*a, self.glm.sop, *v], len(a) + 1))
                part_a.append((len(a), blank))
        scores = score_rows(model, rows, pad_token_id=self.ids.pad, part_a=part_a)
        return [s.logprob for s in scores]

    def batcher(self) -> GLMClozeBatcher:
        return GLMClozeBatcher(self)

    def criterion(self) -> GLMClozeCriterion:
        return GLMClozeCriterion(len(self.labels), self.options.length_normalise)


class GLMClozeBatcher:
    """Every label's row of every example: part A with the blank, part B = ``[sop] verbalizer[:-1]``
    predicting the verbalizer; ``extras["gold"]`` marks the gold label's row."""

    def __init__(self, task: GLMClozeTask) -> None:
        self.task = task

    def __call__(self, examples: list[ClozeExample], seeds: RowSeeds) -> Batch:
        rows = []
        for ex in examples:
            if ex.label is None:
                raise BiglmError(f"{ex.where}: training needs a label")
            a, blank = self.task.part_a(ex)
            for k, v in enumerate(ex.verbalizers):
                rows.append(glm_row(a, blank, [self.task.glm.sop, *v[:-1]], v,
                                    {"gold": torch.tensor([k == ex.label])}))
        return concat_batches(rows)


class GLMClozeCriterion:
    """Cross-entropy of eq. 5's label distribution (term ``cloze``, averaged over examples)."""

    def __init__(self, num_labels: int, length_normalise: bool) -> None:
        self.num_labels, self.length_normalise = num_labels, length_normalise
        self.weights = {"cloze": 1.0}

    def counts(self, batch: Batch) -> dict[str, float]:
        return {"cloze": float(batch.input_ids.shape[0] // self.num_labels)}

    def __call__(self, model: nn.Module, batch: Batch) -> LossParts:
        mask = batch.loss_mask
        out = model(batch.input_ids, batch.layout, batch.position_ids, logits_mask=mask)
        logp = -F.cross_entropy(out.logits.float(), batch.labels[mask], reduction="none")
        row = mask.nonzero()[:, 0]  # the row of each target (row-major, as the logits)
        rows = batch.input_ids.shape[0]
        total = logp.new_zeros(rows).index_add(0, row, logp)
        if self.length_normalise:
            total = total / mask.sum(1).clamp_min(1).to(total.dtype)
        scores = total.view(-1, self.num_labels)
        gold = batch.extras["gold"].view(-1, self.num_labels).float().argmax(1)
        loss = F.cross_entropy(scores, gold, reduction="sum")
        count = torch.tensor(float(scores.shape[0]), device=loss.device)
        return LossParts({"cloze": loss}, {"cloze": (loss.detach(), count)})


class GLMSeq2SeqTask(Seq2SeqTask):
    """seq2seq for GLM models (see the module docstring)."""

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.glm = GLMTokens.from_tokenizer(self.tokenizer)
        self.max_source = max(1, self.max_source - 3)  # [gMASK], [sop] and [eop] besides BOS, source and target

    def model_config(self, base: ModelConfig) -> ModelConfig:
        return base  # the length follows from [eop]: no length head

    def target_ids(self, ex: Seq2SeqExample) -> list[int]:
        assert ex.target is not None
        return ex.target

    def batcher(self) -> GLMSeq2SeqBatcher:
        return GLMSeq2SeqBatcher(self)

    def criterion(self) -> MaskedLMCriterion:
        return MaskedLMCriterion(self.options.label_smoothing, term="blank_infilling", parts=("a", "b"))

    @torch.no_grad()
    def predict(self, model: nn.Module, examples: Sequence[Seq2SeqExample]) -> list[dict[str, Any]]:
        o = self.options
        opts = AROptions(max_new_tokens=self.max_target, min_new_tokens=min(o.min_target_length, self.max_target),
                         sampling=SamplingConfig(), num_beams=o.num_beams, length_penalty=o.length_penalty,
                         no_repeat_ngram_size=o.no_repeat_ngram_size)
        out: list[dict[str, Any]] = []
        for batch in chunks(examples, self.batch_size):
            result = infill_ids(model, [[*ex.source, self.glm.gmask] for ex in batch], self.glm, options=opts,
                                use_cache=o.prefix_cache)
            fills = [f[0] for f in result.fills]
            for fill, text in zip(fills, self.tokenizer.batch_decode(fills, skip_special_tokens=True)):
                out.append({"prediction": text.strip(), "length": len(fill),
                            "forward_passes": result.forward_passes})
        return out

    def score(self, examples: Sequence[Seq2SeqExample], predictions: Sequence[dict[str, Any]]) -> dict[str, Any]:
        scores = generation_metrics(self.options.metrics, [p["prediction"] for p in predictions],
                                    [ex.target_text or "" for ex in examples])
        tokens = sum(max(p["length"], 1) for p in predictions)
        scores["passes_per_token"] = sum(p["forward_passes"] for p in predictions) / max(tokens, 1)
        return scores


class GLMInstructionTask(InstructionTask, GLMSeq2SeqTask):
    """Instruction tuning for GLM models: the conversation so far (chat template) in part A before
    ``[gMASK]``, the reply written in part B; data as ``instruction``, training and decoding as GLM's seq2seq."""


class GLMSeq2SeqBatcher:
    """Training rows: part A ``BOS source [gMASK]``, part B ``[sop] target`` with targets ``target [eop]``."""

    def __init__(self, task: GLMSeq2SeqTask) -> None:
        self.task = task

    def __call__(self, examples: list[Seq2SeqExample], seeds: RowSeeds) -> Batch:
        g = self.task.glm
        rows = []
        for ex in examples:
            y = self.task.target_ids(ex)
            a = [g.bos, *ex.source, g.gmask]
            rows.append(glm_row(a, len(a) - 1, [g.sop, *y], [*y, g.eop]))
        return concat_batches(rows)


__all__ = ["GLMClozeBatcher", "GLMClozeCriterion", "GLMClozeTask", "GLMInstructionTask", "GLMSeq2SeqBatcher",
           "GLMSeq2SeqTask", "glm_row"]
