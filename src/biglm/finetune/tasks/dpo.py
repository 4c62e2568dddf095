"""``dpo``: Direct Preference Optimisation of an autoregressive policy (``causal`` / ``bidirectional-ar``)
on judged pairs, on the shared trainer.

A row is ``BOS prompt response EOS`` read left to right (the response tokenised as it reads after the
prompt, with a leading space, as the seq2seq and instruction kinds do); log π(y|x) is the sum of the
response's and EOS's token log-probabilities. The loss per pair (chosen y_w, rejected y_l) is

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
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from biglm.config import ModelConfig
from biglm.data.preferences import preference_pair
from biglm.data.records import Record
from biglm.errors import ConfigError
from biglm.finetune.tasks.base import TaskBase, chunks, one_row
from biglm.finetune.tasks.reward import prompt_text
from biglm.objectives import IGNORE_INDEX, Batch, LossParts
from biglm.train.batches import RowSeeds, concat_batches


@dataclass
class DPOExample:
    id: str
    chosen: tuple[list[int], list[int]]
    """(row tokens, labels) of the chosen response."""
    rejected: tuple[list[int], list[int]]
    where: str
    ref_chosen: float = 0.0
    """log π_ref(y_w|x) (filled when the run starts)."""
    ref_rejected: float = 0.0


class DPOTask(TaskBase):
    kind = "dpo"
    main_metric = "accuracy"
    mode = "max"

    def __init__(self, *args: Any, family: str = "masked") -> None:
        super().__init__(*args)
        if family not in ("causal", "bidirectional-ar"):
            raise ConfigError(f"task.kind=dpo: needs an autoregressive policy (model family causal or "
                              f"bidirectional-ar), the checkpoint is {family}")
        o = self.options
        if o.max_length > self.max_seq_len:
            raise ConfigError(f"task.dpo.max_length={o.max_length}: exceeds the model's max_seq_len={self.max_seq_len}")
        self.row_len = o.max_length or self.max_seq_len

    def model_config(self, base: ModelConfig) -> ModelConfig:
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
        return [DPOExample(id_, self.row(prompts[i], chosen[i]), self.row(prompts[i], rejected[i]), p.where)
                for i, (id_, p) in enumerate(kept)]

    @torch.no_grad()
    def set_reference(self, reference: nn.Module, examples: Sequence[DPOExample]) -> None:
        """log π_ref of every example's two rows, with ``reference`` (the frozen starting policy)."""
        logps = self._logps(reference, examples)
        for ex, (c, r) in zip(examples, logps):
            ex.ref_chosen, ex.ref_rejected = c, r

    def _logps(self, model: nn.Module, examples: Sequence[DPOExample]) -> list[tuple[float, float]]:
        device = next(model.parameters()).device
        out: list[tuple[float, float]] = []
        for part in chunks(list(examples), self.batch_size):
            batch = DPOBatcher()(list(part), RowSeeds(0, 0)).to(device)
            lp = sequence_logps(model, batch).float().cpu()
            n = len(part)
            out += list(zip(lp[:n].tolist(), lp[n:].tolist()))
        return out

    def batcher(self) -> DPOBatcher:
        return DPOBatcher()

    def criterion(self) -> DPOCriterion:
        return DPOCriterion(self.options.beta)

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
        logps = sequence_logps(model, batch)
        n = len(ref) // 2
        shift = logps - ref.to(logps.dtype)
        margin = self.beta * (shift[:n] - shift[n:])
        loss = F.softplus(-margin).sum()
        return LossParts({"dpo": loss}, {"margin": (margin.sum().detach(), torch.tensor(float(n), device=loss.device))})
