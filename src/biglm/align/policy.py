"""How a policy of each family samples responses and scores them: the one place ``biglm.align`` depends on
whether log π(y|x) is exact.

- ``ARPolicy`` (causal, bidirectional-ar): KV-cached sampling from ``BOS prompt`` (``biglm.generate``), exact
  per-token log-probabilities of ``BOS prompt response`` rows read left to right; the value head
  (``ModelConfig.reward_head``) gives V at each response token's position.
- ``MaskedPolicy`` (masked, BiGLM): Mask-Predict sampling (the policy's length head picks the length when it
  has one), and a documented sequence score standing in for log π(y|x)
  (``biglm.evaluate.sequence_score.masked_sequence_logps``) — sequence-level only, so GRPO only.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from biglm.align.config import RolloutConfig
from biglm.align.rollout import Sample, sample_rows
from biglm.devices import model_device
from biglm.errors import ConfigError
from biglm.evaluate.sequence_score import MASKED_SCORES, masked_sequence_logps
from biglm.finetune.tasks.base import TokenIds, chunks
from biglm.generate.autoregressive import AROptions, generate_ar_ids
from biglm.generate.engine import generate_ids
from biglm.generate.sampling import SamplingConfig
from biglm.objectives import IGNORE_INDEX, Batch


def sampling(temperature: float, cfg: RolloutConfig) -> SamplingConfig:
    return SamplingConfig(temperature, cfg.top_k, cfg.top_p) if temperature > 0 else SamplingConfig()


class ARPolicy:
    """An autoregressive policy (exact token log-probabilities). π is the model's distribution over the ids it may
    emit (``banned``: [MASK], BOS, PAD never are), renormalised, which is what the sampler draws from; otherwise
    an update that lowers a sampled token's probability could move mass onto ids that are never sampled, and the
    measured KL would not be the sampler's."""

    sequence_level = False

    def __init__(self, ids: TokenIds, cfg: RolloutConfig, max_seq_len: int, banned: Sequence[int]) -> None:
        self.ids, self.cfg, self.banned = ids, cfg, tuple(banned)
        self.budget = max_seq_len - cfg.max_new_tokens - 1

    def truncate(self, prompt_ids: list[int]) -> list[int]:
        """The prompt's last tokens that leave room for BOS and the longest response."""
        return prompt_ids[-self.budget:] if self.budget > 0 else []

    @torch.no_grad()
    def sample(self, model: nn.Module, prompts: Sequence[list[int]], seed: int, temperature: float) -> list[list[int]]:
        opts = AROptions(max_new_tokens=self.cfg.max_new_tokens, sampling=sampling(temperature, self.cfg),
                         banned_token_ids=self.banned)
        result = generate_ar_ids(model, prompts, bos_token_id=self.ids.bos, eos_token_id=self.ids.eos,
                                 pad_token_id=self.ids.pad, options=opts, seed=seed)
        return [[*t, self.ids.eos] if done else t for t, done in zip(result.token_ids, result.finished)]

    def batch_logps(self, model: nn.Module, batch: Batch, values: bool = False) -> tuple[Tensor, Tensor, Tensor | None]:
        """Per response token of ``batch`` (flat, row by row): (log π, entropy of π at that position, V or None)."""
        mask = batch.labels != IGNORE_INDEX
        out = model(batch.input_ids, batch.layout, batch.position_ids, logits_mask=mask)
        logits = out.logits.float()
        if self.banned:  # π is the distribution the sampler draws from: never the banned ids (finite: 0·log 0 = 0)
            logits = logits.index_fill(1, torch.tensor(self.banned, device=logits.device), -1e9)
        logp_all = F.log_softmax(logits, -1)
        logp = logp_all.gather(1, batch.labels[mask][:, None]).squeeze(1)
        entropy = -(logp_all.exp() * logp_all).sum(-1)
        value = out.reward_logits[mask].float() if values and out.reward_logits is not None else None
        return logp, entropy, value

    @torch.no_grad()
    def score(self, model: nn.Module, samples: Sequence[Sample], micro: int,
              values: bool = False) -> tuple[list[list[float]], list[list[float]]]:
        """Per sample: the response tokens' log π and (``values``) V, ``micro`` samples per forward pass."""
        device = model_device(model)
        logps: list[list[float]] = []
        vals: list[list[float]] = []
        for part in chunks(list(samples), micro):
            batch = sample_rows(part, self.ids.bos).to(device)
            lp, _, v = self.batch_logps(model, batch, values)
            sizes = [len(s.response) for s in part]
            logps += [x.tolist() for x in lp.cpu().split(sizes)]
            if v is not None:
                vals += [x.tolist() for x in v.cpu().split(sizes)]
        return logps, vals


class MaskedPolicy:
    """A Mask-Predict policy scored with a sequence score (``grpo.score``)."""

    sequence_level = True

    def __init__(self, ids: TokenIds, cfg: RolloutConfig, max_seq_len: int, banned: Sequence[int],
                 score: str, score_samples: int) -> None:

        if score not in MASKED_SCORES:

            raise ConfigError(f"grpo.score={score!r}: expected one of {', '.join(MASKED_SCORES)}")
        self.ids, self.cfg, self.banned = ids, cfg, tuple(banned)
        self.method, self.samples = score, score_samples
        self.budget = max_seq_len - cfg.max_new_tokens - 1

    def truncate(self, prompt_ids: list[int]) -> list[int]:
        return prompt_ids[-self.budget:] if self.budget > 0 else []

    @torch.no_grad()
    def sample(self, model: nn.Module, prompts: Sequence[list[int]], seed: int, temperature: float) -> list[list[int]]:

        out = generate_ids(model, prompts, bos_token_id=self.ids.bos, eos_token_id=self.ids.eos,
                           mask_token_id=self.ids.mask, pad_token_id=self.ids.pad,
                           max_new_tokens=self.cfg.max_new_tokens, steps=self.cfg.steps or self.cfg.max_new_tokens,
                           sampling=sampling(temperature, self.cfg), seed=seed,
                           length="predict" if model.config.length_head else "fixed",
                           banned_token_ids=self.banned)
        return [list(t) for t in out.full_token_ids]  # every token the policy chose (EOS padding included)

    def sequence_logps(self, model: nn.Module, prompts: Sequence[list[int]], responses: Sequence[list[int]],
                       seeds: Sequence[int]) -> Tensor:
        """The sequence score of each (prompt, response), the Monte-Carlo masks of response i drawn from
        ``seeds[i]`` (the same masks for π_old at sampling time, π in every epoch, and π_ref)."""

        device = model_device(model)
        generators = [torch.Generator(device=device).manual_seed(int(s)) for s in seeds]
        return masked_sequence_logps(model, prompts, responses, self.ids, method=self.method, samples=self.samples,
                                     generator=generators)

    def batch_logps(self, model: nn.Module, batch: Batch) -> Tensor:
        """The sequence score of every row of a rollout batch (prompt and response read back from the row)."""
        rows = batch.input_ids.cpu()
        plen, rlen = batch.extras["prompt_len"].cpu().tolist(), batch.extras["response_len"].cpu().tolist()
        prompts = [rows[i, 1:1 + p].tolist() for i, p in enumerate(plen)]
        responses = [rows[i, 1 + p:1 + p + r].tolist() for i, (p, r) in enumerate(zip(plen, rlen))]  # full rows
        return self.sequence_logps(model, prompts, responses, batch.extras["seed"].tolist())

    @torch.no_grad()
    def score(self, model: nn.Module, samples: Sequence[Sample], micro: int,
              values: bool = False) -> tuple[list[list[float]], list[list[float]]]:
        out: list[list[float]] = []
        for part in chunks(list(samples), micro):
            lp = self.sequence_logps(model, [s.prompt_ids for s in part], [s.response for s in part],
                                     [s.seed for s in part])
            out += [[x] for x in lp.float().cpu().tolist()]
        return out, []
