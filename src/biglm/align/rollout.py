"""On-policy rollouts on the shared trainer: the stream that samples, scores and replays response buffers.

``RolloutStream`` is the trainer's row stream (``biglm.train.streams.RowStream``). It holds the policy (the
model object the trainer updates), the frozen reference policy π_ref, the reward source and the prompts.
When its buffer is used up it samples responses to the next ``rollout.prompts_per_rollout`` prompts with the
shared engine (``biglm.align.policy``: KV-cached sampling for autoregressive policies, Mask-Predict for
masked ones), scores them with the reward, records the policy's and the reference's log-probabilities (and
the values, for PPO) and computes the advantages (``gae`` or ``group_advantages``). It then yields the
buffer ``epochs`` times in micro-batches (a seeded shuffle per epoch; a masked policy's Monte-Carlo score
draws each response's masks from that response's own seed, so π_old, π and π_ref see the same masks), each
with a micro-batch of pretraining rows when λ_PT > 0. ``RolloutBatcher`` turns them into ``Batch``es whose
extras carry all of it.

The stream's state is the number of rows consumed; a resumed run re-samples the buffer it stopped in with the
policy as saved.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from biglm.finetune.data import ExampleStream
from biglm.finetune.tasks.base import one_row
from biglm.objectives import IGNORE_INDEX, Batch
from biglm.train.batches import Batcher, RowSeeds, concat_batches, row_seed


@dataclass
class Sample:
    """One sampled response and what the losses need of it (lists are per response token, or one item per
    sequence for a masked policy)."""

    prompt: Any
    """The prompt as the record gave it (what the reward reads)."""
    prompt_ids: list[int]
    response: list[int]
    """Sampled ids (autoregressive: EOS last when the policy stopped)."""
    text: str = ""
    score: float = 0.0
    old: list[float] = field(default_factory=list)
    ref: list[float] = field(default_factory=list)
    values: list[float] = field(default_factory=list)
    advantages: list[float] = field(default_factory=list)
    returns: list[float] = field(default_factory=list)
    seed: int = 0
    """Seed of a masked policy's score masks for this response."""

    @property
    def kl(self) -> float:
        """log π(y|x) - log π_ref(y|x) of this sample (its expectation is KL(π || π_ref))."""
        return sum(self.old) - sum(self.ref)


def gae(rewards: Sequence[float], values: Sequence[float], gamma: float, lam: float) -> tuple[list[float], list[float]]:
    """Generalised advantage estimation over one response: A_t = Σ_l (γλ)^l δ_{t+l},
    δ_t = r_t + γ V_{t+1} - V_t (V after the last token is 0). Returns (advantages, returns = A + V)."""
    n = len(rewards)
    adv, last = [0.0] * n, 0.0
    for t in reversed(range(n)):
        following = values[t + 1] if t + 1 < n else 0.0
        delta = rewards[t] + gamma * following - values[t]
        last = delta + gamma * lam * last
        adv[t] = last
    return adv, [a + v for a, v in zip(adv, values)]


def group_advantages(scores: Tensor, scale: bool = True, eps: float = 1e-4) -> Tensor:
    """GRPO's advantages: each group's (row's) rewards minus their mean, divided by their standard deviation
    (+ eps) when ``scale``. ``scores`` (P, G) -> (P, G)."""
    centred = scores - scores.mean(dim=1, keepdim=True)
    return centred / (scores.std(dim=1, keepdim=True) + eps) if scale else centred


def whiten(values: Tensor, eps: float = 1e-8) -> Tensor:
    return (values - values.mean()) / (values.std() + eps) if values.numel() > 1 else values - values.mean()


@dataclass
class RLMicro:
    """What the stream yields for one micro-batch: rollout samples and, with λ_PT > 0, pretraining rows."""

    samples: list[Sample]
    pretrain: dict[str, Tensor] | None = None


class RolloutStream:
    """Rollout buffers as the trainer's row stream (see the module docstring).

    ``collect(prompts, seed, micro) -> samples`` samples, scores and prepares one buffer (set by
    ``biglm.align.setup`` once the policy exists); ``pretrain`` is a finite list of packed rows to cycle
    through (or None). With several ranks, each samples ``prompts_per_rollout`` prompts of its own per buffer."""

    def __init__(self, prompts: Sequence[Any], prompts_per_rollout: int, samples_per_prompt: int, epochs: int,
                 seed: int, pretrain: Sequence[tuple[Tensor, Tensor]] | None = None, pretrain_rows: int = 4,
                 rank: int = 0, world_size: int = 1) -> None:
        self.prompts = ExampleStream(list(prompts), None, seed)
        self.rank, self.world = rank, world_size
        self.per_rollout, self.per_prompt, self.epochs = prompts_per_rollout, samples_per_prompt, epochs
        self.seed = seed
        self.pretrain = ExampleStream(list(pretrain), None, seed + 1) if pretrain else None
        self.pretrain_rows = pretrain_rows
        self.collect: Callable[[list[Any], int, int], list[Sample]] | None = None
        self.rows = 0
        """Sample rows this rank consumed so far (the same count on every rank)."""
        self.buffer: tuple[int, list[Sample]] | None = None
        self.rollouts = 0
        """Buffers sampled by this process (a resumed run counts from its restart)."""

    @property
    def buffer_rows(self) -> int:
        """Rows of one buffer, epochs included."""
        return self.per_rollout * self.per_prompt * self.epochs

    def _buffer(self, index: int, micro: int) -> list[Sample]:
        if self.buffer is None or self.buffer[0] != index:
            if self.collect is None:
                raise RuntimeError("RolloutStream.collect is not set (biglm.align.setup sets it)")
            # rank r samples its own prompts of the global order (prompts_per_rollout per rank) with its own seed
            first = index * self.per_rollout * self.world
            prompts = [self.prompts.example(first + i * self.world + self.rank) for i in range(self.per_rollout)]
            self.buffer = (index, self.collect(prompts, row_seed(self.seed, index * self.world + self.rank), micro))
            self.rollouts += 1
        return self.buffer[1]

    def batches(self, batch_size: int | None = None) -> Iterator[RLMicro]:
        micro = batch_size or 1
        size = self.per_rollout * self.per_prompt
        if size % micro:
            raise ValueError(f"a rollout buffer of {size} samples does not split into micro-batches of {micro}")
        while True:
            index, offset = divmod(self.rows, self.buffer_rows)
            samples = self._buffer(index, micro)
            epoch, within = divmod(offset, size)
            shuffle = torch.Generator().manual_seed(row_seed(self.seed, index * 1000 + epoch))
            order = torch.randperm(size, generator=shuffle)
            chosen = [samples[int(i)] for i in order[within:within + micro]]
            self.rows += micro
            pretrain = None
            if self.pretrain is not None:
                first = ((self.rows // micro - 1) * self.world + self.rank) * self.pretrain_rows
                rows = [self.pretrain.example(first + j) for j in range(self.pretrain_rows)]
                pretrain = {"input_ids": torch.stack([r[0] for r in rows]),
                            "document_ids": torch.stack([r[1] for r in rows])}
            yield RLMicro(chosen, pretrain)

    def state_dict(self) -> dict[str, Any]:
        return {"rows": self.rows}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.rows = int(state["rows"])

    def set_phase(self, phase: str) -> None:
        """No anneal phase for rollouts."""


def per_token(batch: Batch, values: Sequence[Sequence[float]]) -> Tensor:
    """(B, T) float32 holding each row's ``values`` at its labelled positions, in order; 0 elsewhere."""
    out = torch.zeros(batch.labels.shape, dtype=torch.float32)
    mask = batch.labels != IGNORE_INDEX
    flat = [v for row in values for v in row]
    if flat:
        out[mask] = torch.tensor(flat, dtype=torch.float32)
    return out


def ar_row(prompt_ids: Sequence[int], response: Sequence[int], bos: int) -> tuple[list[int], list[int]]:
    """(inputs, labels) of ``BOS prompt response``: position t predicts token t+1; labels on the response."""
    tokens = [bos, *prompt_ids, *response]
    return tokens[:-1], [IGNORE_INDEX] * len(prompt_ids) + list(response)


def sample_rows(samples: Sequence[Sample], bos: int, full: bool = False) -> Batch:
    """The samples' ``BOS prompt response`` rows (causal layout), labels on the responses, plus per-row extras
    ``prompt_len`` / ``response_len``. ``full``: every token is an input (a masked policy's scorer reads prompt
    and response back from the row; its response may be empty); else the last token is only a label."""
    rows = []
    for s in samples:
        inputs, labels = ar_row(s.prompt_ids, s.response, bos)
        if full:
            inputs, labels = [bos, *s.prompt_ids, *s.response], [IGNORE_INDEX, *labels]
        rows.append(one_row(inputs, labels, [1] * len(inputs), kind="causal"))
    extras = {"prompt_len": torch.tensor([len(s.prompt_ids) for s in samples]),
              "response_len": torch.tensor([len(s.response) for s in samples])}
    return dataclasses.replace(concat_batches(rows), extras=extras)


class RolloutBatcher:
    """``RLMicro`` -> ``Batch``: the sample rows, with extras ``old``/``ref``/``values``/``advantages``/``returns``
    (per token (B, T) for autoregressive policies; per sequence (B,) as ``*_seq`` for masked ones), ``score``,
    ``kl``, ``seed``, and the pretraining rows made by the policy's pretraining objective as ``pt_*``."""

    def __init__(self, bos: int, sequence_level: bool, pretrain: Batcher | None = None) -> None:
        self.bos, self.sequence_level, self.pretrain = bos, sequence_level, pretrain

    def __call__(self, raw: RLMicro, seeds: RowSeeds) -> Batch:
        samples = raw.samples
        batch = sample_rows(samples, self.bos, full=self.sequence_level)
        extras = dict(batch.extras)
        for name in ("old", "ref", "values", "advantages", "returns"):
            lists = [getattr(s, name) for s in samples]
            if self.sequence_level:
                extras[f"{name}_seq"] = torch.tensor([x[0] if x else 0.0 for x in lists], dtype=torch.float32)
            else:
                extras[name] = per_token(batch, lists)
        extras["score"] = torch.tensor([s.score for s in samples], dtype=torch.float32)
        extras["kl"] = torch.tensor([s.kl for s in samples], dtype=torch.float32)
        extras["seed"] = torch.tensor([s.seed for s in samples], dtype=torch.long)
        if raw.pretrain is not None and self.pretrain is not None:
            pt = self.pretrain(raw.pretrain, seeds)
            extras.update(pt_input_ids=pt.input_ids, pt_labels=pt.labels, pt_position_ids=pt.position_ids)
            if pt.layout.document_ids is not None:
                extras["pt_document_ids"] = pt.layout.document_ids
            if pt.layout.regions is not None:
                extras["pt_regions"] = pt.layout.regions
        return dataclasses.replace(batch, extras=extras)


