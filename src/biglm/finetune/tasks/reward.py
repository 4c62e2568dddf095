"""``reward``: a reward model r(x, y) on any biglm backbone, trained on judged pairs (BatGPT §3.3).

A row is ``BOS prompt EOS response EOS``. The reward head (``ModelConfig.reward_head``: one scalar per
token) is pooled into r(x, y) as the family says (``Family.reward_pooling``): the mean over the row's tokens
for masked (bidirectional) models, which see the whole row from every position, and the last token for
causal / bidirectional-ar / glm models, whose last position is the one that has read everything left to
right (``pooling`` overrides it).
Masked models read the row bidirectionally, causal and bidirectional-ar ones causally, glm ones as part A
(bidirectional).

Each training item is a pair (y, y', d) (``biglm.data.preferences``: d = -1 prefers y, 1 prefers y', 0 is
a tie); a micro-batch holds all its pairs' y rows then all their y' rows. The loss per strict pair is the
paper's hinge max(0, 1 - d·(r(y') - r(y))) or the Bradley–Terry -log σ(d·(r(y') - r(y))); ties are
dropped or pulled together (``ties``, see ``RewardConfig``). Validation scores held-out pairs: pairwise
accuracy (the share of strict pairs whose preferred response gets the strictly higher reward; the main
metric), the mean signed margin d·(r(y') - r(y)), and the mean |r(y') - r(y)| of ties.

For scoring (``biglm reward``, ``biglm predict``) a record with a ``response`` field (and ``prompt``) is
scored alone; a preference record gets both responses' rewards.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from biglm.config import ModelConfig
from biglm.data.chat import render_prompt, set_chat_template
from biglm.data.preferences import PreferencePair, preference_pairs
from biglm.data.records import Record
from biglm.errors import BiglmError, ConfigError
from biglm.families import get_family
from biglm.finetune.tasks.base import TaskBase, chunks, no_labels, one_row
from biglm.objectives import Batch, LossParts
from biglm.train.batches import RowSeeds, concat_batches


@dataclass
class RewardExample:
    """A pair (``ids_b`` set: y and y' with d) or one response to score (``ids_b`` None)."""

    id: str
    ids_a: list[int]
    ids_b: list[int] | None
    d: int | None
    where: str
    prompt: Any = ""
    response_a: str = ""
    response_b: str = ""


class RewardTask(TaskBase):
    kind = "reward"
    main_metric = "accuracy"
    mode = "max"

    def __init__(self, *args: Any, family: str = "masked") -> None:
        super().__init__(*args)
        o = self.options
        if o.max_length > self.max_seq_len:
            raise ConfigError(f"task.reward.max_length={o.max_length}: exceeds the model's max_seq_len="
                              f"{self.max_seq_len}")
        self.row_len = o.max_length or self.max_seq_len
        self.family = get_family(family)
        self.pooling = o.pooling if o.pooling != "auto" else self.family.reward_pooling
        # a left-to-right model reads the row causally; every other family sees all of it from every position
        self.layout_kind = "causal" if self.family.layout == "causal" else "bidirectional"

    def model_config(self, base: ModelConfig) -> ModelConfig:
        return dataclasses.replace(base, reward_head=True)

    # --- data ---------------------------------------------------------------------------------------------
    def _prompt_text(self, prompt: Any) -> str:
        return prompt_text(self.tokenizer, prompt)

    def row_ids(self, prompt: list[int], response: list[int]) -> list[int]:
        """``BOS prompt EOS response EOS`` within ``row_len`` (the prompt keeps its last tokens)."""
        response = response[:self.row_len - 3]
        keep = self.row_len - 3 - len(response)
        prompt = prompt[len(prompt) - keep:] if keep > 0 else []
        return [self.ids.bos, *prompt, self.ids.eos, *response, self.ids.eos]

    def encode(self, records: Sequence[Record], labelled: bool = True) -> list[RewardExample]:
        singles = [r for r in records if not labelled and "response" in r.fields]
        if singles and len(singles) != len(records):
            raise BiglmError(f"{records[0].where}: a file to score holds either prompt/response records or "
                             "preference pairs, not both")
        if singles:
            prompts = [self._prompt_text(r.fields.get("prompt", "")) for r in records]
            responses = [r.get("response") for r in records]
            p_ids, r_ids = self.tokenize(prompts), self.tokenize(responses)
            return [RewardExample(self.example_id(r, i), self.row_ids(p_ids[i], r_ids[i]), None, None, r.where,
                                  r.fields.get("prompt", ""), responses[i]) for i, r in enumerate(records)]
        pairs = preference_pairs(records, self.options.acceptability_first)
        return self.encode_pairs(pairs, [self.example_id(r, i) for i, r in enumerate(records)])

    def encode_pairs(self, pairs: Sequence[PreferencePair], ids: Sequence[str]) -> list[RewardExample]:
        """Examples of ``pairs`` (biglm's or the chosen/rejected layout, already parsed)."""
        p_ids = self.tokenize([self._prompt_text(p.prompt) for p in pairs])
        a_ids, b_ids = self.tokenize([p.y for p in pairs]), self.tokenize([p.y_prime for p in pairs])
        return [RewardExample(ids[i], self.row_ids(p_ids[i], a_ids[i]), self.row_ids(p_ids[i], b_ids[i]), p.d,
                              p.where, p.prompt, p.y, p.y_prime) for i, p in enumerate(pairs)]

    def train_items(self, examples: Sequence[RewardExample]) -> list[RewardExample]:
        # ties carry no gradient under ``drop``: keep them out of the epoch instead of spending compute on them
        if self.options.ties == "drop":
            return [ex for ex in examples if ex.d != 0]
        return list(examples)

    def batcher(self) -> RewardBatcher:
        return RewardBatcher(self.layout_kind)

    def criterion(self) -> RewardCriterion:
        return RewardCriterion(self.options.loss, self.options.ties, self.options.tie_weight, self.pooling)

    # --- prediction and metrics ---------------------------------------------------------------------------
    @torch.no_grad()
    def predict(self, model: nn.Module, examples: Sequence[RewardExample]) -> list[dict[str, Any]]:
        device = next(model.parameters()).device
        rows = [ids for ex in examples for ids in ((ex.ids_a,) if ex.ids_b is None else (ex.ids_a, ex.ids_b))]
        scores: list[float] = []
        for part in chunks(rows, self.batch_size):
            batch = rows_batch(list(part), self.layout_kind).to(device)
            scores += rewards(model, batch, self.pooling).float().cpu().tolist()
        out, k = [], 0
        for ex in examples:
            if ex.ids_b is None:
                out.append({"reward": scores[k]})
                k += 1
            else:
                out.append({"reward_a": scores[k], "reward_b": scores[k + 1]})
                k += 2
        return out

    def score(self, examples: Sequence[RewardExample], predictions: Sequence[dict[str, Any]]) -> dict[str, float]:
        return pairwise_scores([ex.d for ex in examples],
                               [p["reward_b"] - p["reward_a"] for p in predictions])

    def output(self, example: RewardExample, prediction: dict[str, Any]) -> dict[str, Any]:
        if example.ids_b is None:
            return {"id": example.id, "prompt": example.prompt, "response": example.response_a,
                    "reward": prediction["reward"]}
        a, b = prediction["reward_a"], prediction["reward_b"]
        return {"id": example.id, "reward_a": a, "reward_b": b, "preferred": "A" if a > b else "B" if b > a else "tie"}

    def show(self, example: RewardExample, prediction: dict[str, Any]) -> str:
        if example.ids_b is None:
            return f"{example.response_a!r} -> {prediction['reward']:.3f}"
        return (f"A {example.response_a!r}: {prediction['reward_a']:.3f} | B {example.response_b!r}: "
                f"{prediction['reward_b']:.3f}   [d = {example.d}]")


def prompt_text(tokenizer: Any, prompt: str | list[dict[str, str]]) -> str:
    """A pair's prompt as text: as it is, or chat messages rendered with the tokenizer's chat template (biglm's
    when it has none) up to the generation prompt."""
    if isinstance(prompt, str):
        return prompt
    if not getattr(tokenizer, "chat_template", None):
        set_chat_template(tokenizer)
    return render_prompt(tokenizer, prompt)


def pairwise_scores(ds: Sequence[int | None], deltas: Sequence[float]) -> dict[str, float]:
    """Pairwise accuracy and mean signed margin d·Δ over strict pairs, mean |Δ| over ties (Δ = r(y') - r(y))."""
    strict = [(d, x) for d, x in zip(ds, deltas) if d]
    ties = [abs(x) for d, x in zip(ds, deltas) if d == 0]
    out = {"pairs": float(len(strict))}
    if strict:
        out["accuracy"] = sum(d * x > 0 for d, x in strict) / len(strict)
        out["margin"] = sum(d * x for d, x in strict) / len(strict)
    if ties:
        out["tie_gap"] = sum(ties) / len(ties)
    return out


def rows_batch(rows: list[list[int]], kind: str) -> Batch:
    """Token rows as one right-padded batch under the ``kind`` layout (no labels)."""
    return concat_batches([one_row(r, no_labels(len(r)), [0] * len(r), kind) for r in rows])


def rewards(model: nn.Module, batch: Batch, pooling: str) -> Tensor:
    """r per row of ``batch``: the reward head's scalars pooled (``mean`` over the row's tokens, or ``last``)."""
    out = model(batch.input_ids, batch.layout, batch.position_ids,
                logits_mask=torch.zeros_like(batch.input_ids, dtype=torch.bool))
    if out.reward_logits is None:
        raise BiglmError("the model has no reward head (ModelConfig.reward_head); fine-tune with --task reward")
    token = out.reward_logits.float()
    real = batch.layout.document_ids >= 0 if batch.layout.document_ids is not None else torch.ones_like(token).bool()
    if pooling == "mean":
        return (token * real).sum(1) / real.sum(1).clamp_min(1)
    last = real.sum(1).long() - 1  # rows are right-padded
    return token.gather(1, last.clamp_min(0)[:, None]).squeeze(1)


class RewardBatcher:
    """Pairs as rows: every pair's y, then every pair's y'; ``d`` per pair in the extras."""

    def __init__(self, kind: str) -> None:
        self.kind = kind

    def __call__(self, pairs: list[RewardExample], seeds: RowSeeds) -> Batch:
        batch = rows_batch([ex.ids_a for ex in pairs] + [ex.ids_b for ex in pairs], self.kind)  # type: ignore[misc]
        return dataclasses.replace(batch, extras={"d": torch.tensor([float(ex.d) for ex in pairs])})


class RewardCriterion:
    """The pair loss (term ``reward``), a mean over the strict pairs (and the ties with ``ties: pull``);
    reported in parts ``pref`` (strict pairs) and ``tie``."""

    def __init__(self, loss: str = "hinge", ties: str = "drop", tie_weight: float = 1.0,
                 pooling: str = "mean") -> None:
        self.loss, self.ties, self.tie_weight, self.pooling = loss, ties, tie_weight, pooling
        self.weights = {"reward": 1.0}

    def counts(self, batch: Batch) -> dict[str, float]:
        d = batch.extras.get("d")
        if d is None:
            return {"reward": 0.0}
        return {"reward": float((d != 0).sum()) if self.ties == "drop" else float(len(d))}

    def pair_losses(self, d: Tensor, delta: Tensor) -> tuple[Tensor, Tensor]:
        """Per pair: (preference loss, zero for ties; tie loss, zero for strict pairs). Δ = r(y') - r(y)."""
        strict = d != 0
        z = d * delta
        pref = torch.clamp(1 - z, min=0) if self.loss == "hinge" else F.softplus(-z)
        tie = self.tie_weight * delta.square() if self.ties == "pull" else torch.zeros_like(delta)
        return torch.where(strict, pref, 0.0), torch.where(strict, 0.0, tie)

    def __call__(self, model: nn.Module, batch: Batch) -> LossParts:
        r = rewards(model, batch, self.pooling)
        d = batch.extras.get("d")
        if d is None:  # an evaluation padding batch without pairs: same keys, zeros
            zero = r.sum() * 0
            return LossParts({"reward": zero}, {"pref": (zero.detach(), zero.detach()), "tie": (zero.detach(),) * 2})
        n = len(d)
        delta = r[n:] - r[:n]
        pref, tie = self.pair_losses(d.to(r.dtype), delta)
        strict = (d != 0).to(r.dtype)
        return LossParts({"reward": pref.sum() + tie.sum()},
                         {"pref": (pref.sum().detach(), strict.sum()), "tie": (tie.sum().detach(), (1 - strict).sum())})
