"""``dpo``: Direct Preference Optimisation of a policy on judged pairs, on the shared trainer.

Autoregressive policies (``causal`` / ``bidirectional-ar``): a row is ``BOS prompt response EOS`` read left
to right (the response tokenised as it reads after the prompt, with a leading space, as the seq2seq and
instruction kinds do); log π(y|x) is the sum of the response's and EOS's token log-probabilities.

Masked (BiGLM, Mask-Predict) policies have no closed-form log π(y|x): a sequence score stands in for it
(``task.dpo.score``, ``biglm.evaluate.sequence_score``) on the rows the seq2seq / instruction kinds train
them on (X = ``BOS prompt``, Y = the response, prefix-blind), with the length head's log p(|y| | x) when
the policy has one. ``chain`` is deterministic, so the reference's scores are computed once as for
autoregressive policies. ``elbo`` and ``one-step`` are Monte-Carlo: a margin between a policy and a
reference scored on different masks would be mostly noise, so the reference scores the *same* masks —
in training a frozen copy of ``init`` is kept and scores each step's masks (fresh each step, seeded by
the trainer's row seeds: one extra no-grad pass per pair and a second model in memory); in validation
each response has a fixed seed (from its position and tokens, not the file's path) and the reference's
scores are computed once. At the start (policy = reference) every margin is exactly 0 with every score.
GLM policies are refused.

The loss per pair (chosen y_w, rejected y_l) is

    -log σ(β·[(log π(y_w|x) - log π_ref(y_w|x)) - (log π(y_l|x) - log π_ref(y_l|x))])

where π_ref is the starting checkpoint (``init``): its log-probabilities of every training and validation
row are computed once, when the run starts, with a frozen copy that is then freed. Ties (d = 0) carry no
preference and are left out. Validation reports the implicit reward margin β·[...] (``margin``, mean over
held-out pairs), the share of pairs where it is positive (``accuracy``, the main metric), and the mean
log π(y_w) - log π_ref(y_w) (``chosen_shift``; DPO can lower both responses' likelihood while widening
their gap).
"""

from __future__ import annotations

import dataclasses
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from biglm.config import ModelConfig
from biglm.data.preferences import preference_pair
from biglm.data.records import Record
from biglm.data.tokenizer import TokenIds
from biglm.errors import ConfigError
from biglm.evaluate.sequence_score import masked_sequence_logps
from biglm.families import get_family
from biglm.finetune.tasks.base import TaskBase, chunks, one_row
from biglm.finetune.tasks.reward import prompt_text
from biglm.objectives import IGNORE_INDEX, Batch, LossParts
from biglm.train.batches import RowSeeds, concat_batches


@dataclass
class DPOExample:
    id: str
    chosen: tuple[list[int], list[int]]
    """(row tokens, labels) of the chosen response; for masked policies (prompt ids, response ids)."""
    rejected: tuple[list[int], list[int]]
    where: str
    seed: int = 0
    """Masked policies, Monte-Carlo scores: the example's fixed mask seed (validation)."""
    ref_chosen: float = 0.0
    """log π_ref(y_w|x) (filled when the run starts)."""
    ref_rejected: float = 0.0


class DPOTask(TaskBase):
    kind = "dpo"
    main_metric = "accuracy"
    mode = "max"

    def __init__(self, *args: Any, family: str = "masked") -> None:
        super().__init__(*args)  # the families that refuse it: ``Family.refused_tasks`` (glm, by ``build_task``)
        o = self.options
        if o.max_length > self.max_seq_len:
            raise ConfigError(f"task.dpo.max_length={o.max_length}: exceeds the model's max_seq_len={self.max_seq_len}")
        self.row_len = o.max_length or self.max_seq_len
        self.masked = get_family(family).scoring == "masked"
        """Scored by a masked sequence score (``evaluate/sequence_score.py``), else by the exact chain rule."""
        self.max_response = self.row_len - 2  # masked rows: BOS, at least one prompt token
        self.reference: nn.Module | None = None
        """Masked policies with a Monte-Carlo score: the frozen reference, scoring each training step's masks."""

    def model_config(self, base: ModelConfig) -> ModelConfig:
        o = self.options
        if self.masked and o.pad_to:
            self.max_response = min(self.max_response, o.pad_to)
        elif self.masked and o.length_term and base.length_head:
            self.max_response = min(self.max_response, base.max_target_length - 1)  # the length head's classes
        return base

    def row(self, prompt: list[int], response: list[int]) -> tuple[list[int], list[int]]:
        """(inputs, labels) of ``BOS prompt response EOS`` within ``row_len`` tokens (the prompt keeps its last
        tokens): position t predicts token t+1, labels only on the response and EOS."""
        response = response[:self.row_len - 1]
        keep = self.row_len - 1 - len(response)
        prompt = prompt[len(prompt) - keep:] if keep > 0 else []
        tokens = [self.ids.bos, *prompt, *response, self.ids.eos]
        labels = [IGNORE_INDEX] * len(prompt) + tokens[1 + len(prompt):]
        return tokens[:-1], labels

    def encode(self, records: Sequence[Record], labelled: bool = True) -> list[DPOExample]:
        kept = [(self.example_id(r, i), p) for i, r in enumerate(records) if (p := preference_pair(r)).d != 0]
        prompts = self.tokenize([prompt_text(self.tokenizer, p.prompt) for _, p in kept])
        chosen = self.tokenize([" " + (p.y if p.d < 0 else p.y_prime).strip() for _, p in kept])
        rejected = self.tokenize([" " + (p.y_prime if p.d < 0 else p.y).strip() for _, p in kept])
        if self.masked:  # responses keep their first tokens; the prompt is fitted when scored (its last tokens)
            n = self.max_response
            return [DPOExample(id_, (prompts[i][-(self.row_len - 1 - len(chosen[i][:n])):], chosen[i][:n]),
                               (prompts[i][-(self.row_len - 1 - len(rejected[i][:n])):], rejected[i][:n]), p.where,
                               _seed(i, prompts[i], chosen[i], rejected[i]))
                    for i, (id_, p) in enumerate(kept)]
        return [DPOExample(id_, self.row(prompts[i], chosen[i]), self.row(prompts[i], rejected[i]), p.where)
                for i, (id_, p) in enumerate(kept)]

    @torch.no_grad()
    def set_reference(self, reference: nn.Module, examples: Sequence[DPOExample]) -> None:
        """log π_ref of every example's two rows, with ``reference`` (the frozen starting policy)."""
        reference.eval()
        logps = self._logps(reference, examples)
        for ex, (c, r) in zip(examples, logps):
            ex.ref_chosen, ex.ref_rejected = c, r
        if self.masked and self.options.score != "chain":
            self.reference = reference  # kept: it scores each training step's masks

    def _logps(self, model: nn.Module, examples: Sequence[DPOExample]) -> list[tuple[float, float]]:
        device = next(model.parameters()).device
        out: list[tuple[float, float]] = []
        for part in chunks(list(examples), self.batch_size):
            if self.masked:
                rows = [ex.chosen for ex in part] + [ex.rejected for ex in part]
                seeds = [2 * ex.seed for ex in part] + [2 * ex.seed + 1 for ex in part]
                lp = self.criterion().scores(model, rows, seeds).float().cpu()
            else:
                batch = DPOBatcher()(list(part), RowSeeds(0, 0)).to(device)
                lp = sequence_logps(model, batch).float().cpu()
            n = len(part)
            out += list(zip(lp[:n].tolist(), lp[n:].tolist()))
        return out

    def batcher(self) -> DPOBatcher | MaskedDPOBatcher:
        return MaskedDPOBatcher(self.ids.bos) if self.masked else DPOBatcher()

    def criterion(self) -> DPOCriterion:
        o = self.options
        if self.masked:
            return MaskedDPOCriterion(o.beta, self.ids, o.score, o.samples, o.length_term, o.pad_to, self.reference)
        return DPOCriterion(o.beta)

    @torch.no_grad()
    def predict(self, model: nn.Module, examples: Sequence[DPOExample]) -> list[dict[str, Any]]:
        return [{"logp_chosen": c, "logp_rejected": r} for c, r in self._logps(model, examples)]

    def score(self, examples: Sequence[DPOExample], predictions: Sequence[dict[str, Any]]) -> dict[str, float]:
        beta = self.options.beta
        margins = [beta * ((p["logp_chosen"] - ex.ref_chosen) - (p["logp_rejected"] - ex.ref_rejected))
                   for ex, p in zip(examples, predictions)]
        n = max(len(margins), 1)
        return {"accuracy": sum(m > 0 for m in margins) / n, "margin": sum(margins) / n,
                "chosen_shift": sum(p["logp_chosen"] - ex.ref_chosen for ex, p in zip(examples, predictions)) / n}

    def output(self, example: DPOExample, prediction: dict[str, Any]) -> dict[str, Any]:
        return {"id": example.id, **prediction}

    def show(self, example: DPOExample, prediction: dict[str, Any]) -> str:
        return (f"{self.text(example.chosen[0])!r}: log p chosen {prediction['logp_chosen']:.3f}, rejected "
                f"{prediction['logp_rejected']:.3f}")


def _seed(index: int, *token_lists: list[int]) -> int:
    """A pair's fixed mask seed: its position in its file and its tokens (the same wherever the file lies)."""
    return zlib.crc32(repr((index, *token_lists)).encode())


def sequence_logps(model: nn.Module, batch: Batch) -> Tensor:
    """Σ log p(label) over each row's labelled positions: (B,)."""
    mask = batch.labels != IGNORE_INDEX
    logits = model(batch.input_ids, batch.layout, batch.position_ids, logits_mask=mask).logits.float()
    token = torch.log_softmax(logits, -1).gather(1, batch.labels[mask][:, None]).squeeze(1)
    rows = mask.nonzero()[:, 0]
    return torch.zeros(batch.input_ids.shape[0], device=token.device).index_add(0, rows, token)


class DPOBatcher:
    """Every pair's chosen row, then every pair's rejected row (causal layout); reference log-probs as extras."""

    def __call__(self, pairs: list[DPOExample], seeds: RowSeeds) -> Batch:
        rows = [ex.chosen for ex in pairs] + [ex.rejected for ex in pairs]
        batch = concat_batches([one_row(x, y, [1] * len(x), kind="causal") for x, y in rows])
        ref = torch.tensor([ex.ref_chosen for ex in pairs] + [ex.ref_rejected for ex in pairs], dtype=torch.float64)
        return dataclasses.replace(batch, extras={"ref_logps": ref})


class DPOCriterion:
    """The DPO loss summed over pairs (term ``dpo``)."""

    def __init__(self, beta: float) -> None:
        self.beta = beta
        self.weights = {"dpo": 1.0}

    def counts(self, batch: Batch) -> dict[str, float]:
        ref = batch.extras.get("ref_logps")
        return {"dpo": float(len(ref) // 2) if ref is not None else 0.0}

    def __call__(self, model: nn.Module, batch: Batch) -> LossParts:
        ref = batch.extras.get("ref_logps")
        if ref is None:  # an evaluation padding batch without pairs: same keys, zeros
            zero = model(batch.input_ids, batch.layout, batch.position_ids).logits.sum() * 0
            return LossParts({"dpo": zero}, {"margin": (zero.detach(), zero.detach())})
        return self.loss(sequence_logps(model, batch), ref)

    def loss(self, logps: Tensor, ref: Tensor) -> LossParts:
        """The DPO loss of the (2n,) scores ``logps`` (chosen rows, then rejected) against the reference's."""
        n = len(ref) // 2
        shift = logps - ref.to(logps.dtype)
        margin = self.beta * (shift[:n] - shift[n:])
        loss = F.softplus(-margin).sum()
        return LossParts({"dpo": loss}, {"margin": (margin.sum().detach(), torch.tensor(float(n), device=loss.device))})


class MaskedDPOBatcher:
    """Masked policies: every pair's chosen row ``BOS prompt response`` (labels on the response), then every
    pair's rejected row; extras: the prompts' lengths, the reference's scores and each row's mask seed."""

    def __init__(self, bos: int) -> None:
        self.bos = bos

    def __call__(self, pairs: list[DPOExample], seeds: RowSeeds) -> Batch:
        rows = [ex.chosen for ex in pairs] + [ex.rejected for ex in pairs]
        batch = concat_batches([one_row([self.bos, *x, *y], [IGNORE_INDEX] * (1 + len(x)) + list(y),
                                        [0] * (1 + len(x)) + [1] * len(y)) for x, y in rows])
        # Training masks are fresh each step (the trainer's row seeds); validation rows keep their own seed.
        base = [seeds[j] % 2**62 for j in range(len(pairs))] if seeds is not None else [ex.seed for ex in pairs]
        extras = {"prompt_lengths": torch.tensor([len(x) for x, _ in rows]),
                  "ref_logps": torch.tensor([ex.ref_chosen for ex in pairs] + [ex.ref_rejected for ex in pairs],
                                            dtype=torch.float64),
                  "mask_seeds": torch.tensor([2 * s for s in base] + [2 * s + 1 for s in base])}
        return dataclasses.replace(batch, extras=extras)


class MaskedDPOCriterion(DPOCriterion):
    """DPO with a masked policy's sequence score; with a ``reference`` model (Monte-Carlo scores) the reference
    scores the step's own masks, else the batch's precomputed reference scores are used."""

    def __init__(self, beta: float, ids: TokenIds, score: str, samples: int, length_term: bool, pad_to: int,
                 reference: nn.Module | None = None) -> None:
        super().__init__(beta)
        self.ids, self.score, self.samples, self.length_term, self.pad_to = ids, score, samples, length_term, pad_to
        self.reference = reference

    def scores(self, model: nn.Module, rows: Sequence[tuple[list[int], list[int]]], seeds: Sequence[int]) -> Tensor:
        """The sequence scores of (prompt, response) ``rows``, masks drawn from one generator per row's seed."""
        gens = [torch.Generator().manual_seed(int(s)) for s in seeds]
        return masked_sequence_logps(model, [x for x, _ in rows], [y for _, y in rows], self.ids, method=self.score,
                                     samples=self.samples, generator=gens, length=self.length_term,
                                     pad_to=self.pad_to)

    def __call__(self, model: nn.Module, batch: Batch) -> LossParts:
        ref = batch.extras.get("ref_logps")
        if ref is None:
            return super().__call__(model, batch)
        ids, labels = batch.input_ids.tolist(), batch.labels.tolist()
        rows = [(r[1:1 + p], [t for t in lab if t != IGNORE_INDEX])
                for r, lab, p in zip(ids, labels, batch.extras["prompt_lengths"].tolist())]
        seeds = batch.extras["mask_seeds"].tolist()
        logps = self.scores(model, rows, seeds)
        if self.reference is not None:
            device = logps.device
            if next(self.reference.parameters()).device != device:
                self.reference.to(device)
            with torch.no_grad():
                ref = self.scores(self.reference, rows, seeds)
        return self.loss(logps, ref)
