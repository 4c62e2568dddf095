"""The alignment losses as a criterion of the shared trainer: the terms a method on rollouts asks for
(``biglm.align.methods``: PPO, GRPO) and the λ_PT pretraining term.

Terms (summed here, divided by their count over the global batch and weighted by the trainer):

- ``policy``: the clipped surrogate -min(ρA, clip(ρ, 1-ε, 1+ε)A), ρ = π/π_old, per response token
  (autoregressive policies) or per sequence (masked policies, ρ from the sequence score);
- ``value`` (a method with a value head: PPO): ½·max((V - R)², (V_clip - R)²) per response token,
  V_clip = V_old + clip(V - V_old, ±ε_V); weight ``ppo.vf_coef``;
- ``kl`` (a method with the KL in its loss: GRPO, β > 0): exp(d) - d - 1 with d = log π_ref - log π (an
  unbiased, non-negative estimate of KL(π || π_ref)); weight β. PPO folds its KL penalty into the rewards
  instead (``biglm.align.methods.ppo``);
- ``ptx`` (λ_PT > 0): the policy's pretraining loss on the micro-batch's pretraining rows (BatGPT's
  λ_PT·E[log π(x)], maximised, is this cross-entropy minimised); weight λ_PT.

Report parts, logged as ``train_<name>`` (``metric_parts``): ``reward`` (the sampled responses' mean reward),
``kl`` (mean log π_old(y|x) - log π_ref(y|x) of the sampled responses: the KL to the reference when they were
sampled), ``response_len``, ``clip_frac`` (share of ratios outside [1-ε, 1+ε]), ``approx_kl`` (mean
½(log π - log π_old)², how far the update moved from the sampling policy), ``entropy`` (autoregressive).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from biglm.align.methods import get_method
from biglm.attention import AttentionLayout
from biglm.objectives import IGNORE_INDEX, Batch, Criterion, LossParts


def clipped_surrogate(logp: Tensor, old: Tensor, adv: Tensor, clip: float) -> tuple[Tensor, Tensor]:
    """Per item: (-min(ρA, clip(ρ, 1-ε, 1+ε)A), whether ρ lies outside [1-ε, 1+ε])."""
    ratio = torch.exp(logp - old)
    loss = torch.maximum(-adv * ratio, -adv * ratio.clamp(1 - clip, 1 + clip))
    return loss, ((ratio - 1).abs() > clip).float()


def clipped_value_loss(value: Tensor, old: Tensor, returns: Tensor, clip: float) -> Tensor:
    clipped = old + (value - old).clamp(-clip, clip)
    return 0.5 * torch.maximum((value - returns).square(), (clipped - returns).square())


def kl_estimate(logp: Tensor, ref: Tensor) -> Tensor:
    """exp(d) - d - 1, d = log π_ref - log π (k3 of Schulman's KL estimators; ≥ 0, 0 where π = π_ref)."""
    d = ref - logp
    return torch.exp(d) - d - 1


class AlignCriterion:
    """A policy-gradient method's loss on rollout batches (``method``: its name in ``biglm.align.methods``, which
    says which terms it adds), with the pretraining term; ``policy`` is an ``ARPolicy`` or ``MaskedPolicy`` (how
    log π is computed), ``pretrain`` the policy's pretraining criterion and the layout kind of its rows."""

    metric_parts = ("reward", "kl", "response_len", "clip_frac", "approx_kl", "entropy")

    def __init__(self, method: str, policy: Any, *, clip: float, value_clip: float = 0.2, vf_coef: float = 0.1,
                 beta: float = 0.0, ptx_coef: float = 0.0, pretrain: tuple[Criterion, str] | None = None) -> None:
        self.method, self.policy, self.clip, self.value_clip = get_method(method), policy, clip, value_clip
        self.beta, self.pretrain = beta, pretrain
        self.value = self.method.value_head
        """The value term (and V from the policy's value head)."""
        self.kl = self.method.kl_in_loss and beta > 0
        """The β·KL term (a method that folds its KL penalty into the rewards has none)."""
        self.weights = {"policy": 1.0, "value": vf_coef, "kl": beta, "ptx": ptx_coef}

    @property
    def sequence_level(self) -> bool:
        return bool(self.policy.sequence_level)

    def counts(self, batch: Batch) -> dict[str, float]:
        items = float(len(batch.extras["score"])) if self.sequence_level else float(batch.num_targets)
        out = {"policy": items}
        if self.value:
            out["value"] = items
        if self.kl:
            out["kl"] = items
        if "pt_labels" in batch.extras and self.pretrain is not None:
            out["ptx"] = float((batch.extras["pt_labels"] != IGNORE_INDEX).sum())
        return out

    def __call__(self, model: nn.Module, batch: Batch) -> LossParts:
        x = batch.extras
        rows = torch.tensor(float(len(x["score"])), device=x["score"].device)
        parts: dict[str, tuple[Tensor, Tensor]] = {
            "reward": (x["score"].sum(), rows), "kl": (x["kl"].sum(), rows),
            "response_len": (x["response_len"].float().sum(), rows)}
        terms: dict[str, Tensor] = {}
        if self.sequence_level:
            logp = self.policy.batch_logps(model, batch).float()
            old, adv, ref = x["old_seq"], x["advantages_seq"], x["ref_seq"]
        else:
            value: Tensor | None
            logp, entropy, value = self.policy.batch_logps(model, batch, values=self.value)
            mask = batch.labels != IGNORE_INDEX
            old, adv, ref = x["old"][mask], x["advantages"][mask], x["ref"][mask]
            parts["entropy"] = (entropy.detach().sum(), torch.tensor(float(len(entropy)), device=logp.device))
            if self.value:
                if value is None:
                    raise RuntimeError(f"{self.method.name} needs the policy's value head (ModelConfig.reward_head)")
                terms["value"] = clipped_value_loss(value, x["values"][mask], x["returns"][mask], self.value_clip).sum()
        loss, clipped = clipped_surrogate(logp, old, adv, self.clip)
        terms["policy"] = loss.sum()
        n = torch.tensor(float(len(logp)), device=logp.device)
        parts["clip_frac"] = (clipped.sum(), n)
        parts["approx_kl"] = (0.5 * (logp.detach() - old).square().sum(), n)
        if self.kl:
            terms["kl"] = kl_estimate(logp, ref).sum()
        if "pt_labels" in x and self.pretrain is not None:
            criterion, kind = self.pretrain
            layout = AttentionLayout(kind, x.get("pt_document_ids"), x.get("pt_regions"))
            pt = criterion(model, Batch(x["pt_input_ids"], x["pt_labels"], x["pt_position_ids"], layout))
            terms["ptx"] = next(iter(pt.terms.values()))
        return LossParts(terms, parts)
