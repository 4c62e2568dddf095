"""Target lengths: fixed, or candidates from the length-prediction head and the rule that picks one.

With ``ModelConfig.length_head`` the model mean-pools the hidden states of the prompt tokens (BOS and
prompt, no padding: the ``length_mask`` given to the prefix pass) and scores the lengths
0 .. max_target_length-1. We keep the ``k`` most probable lengths in 1 .. ``max_length`` and decode
them all in parallel (one row each). **Rules** (``LENGTH_RULES``), ties going to the candidate the
length head ranked higher:

- ``joint`` (default): the highest log p(l | X) + Σ log p(y_i | X, l): the length head's log-probability
  plus the tokens' summed log-probabilities, the model's joint score of length and text.
- ``average`` (the reference code's rule; Mask-Predict with a length head: 10 iterations, 3 candidates):
  the highest *average* log-probability of the candidate's tokens — the mean over its l positions of each
  token's log-probability when it was last predicted (so longer candidates are not penalised for their
  length). A wrong-length candidate can be as confident per token as the right one: on the copy task of
  ``bench/finetune.py`` it chose a wrong length for 82% of the examples where the length head's top
  length was right for all of them (exact match 17.5% against 98.5% with ``joint``).
"""

from __future__ import annotations

import torch
from torch import Tensor

from biglm.errors import BiglmError


def length_candidates(length_logits: Tensor, k: int, max_length: Tensor | int) -> Tensor:
    """The ``k`` most probable lengths per row of ``length_logits`` (B, C), best first, as (B, k) long.

    Only lengths 1 .. ``max_length`` (an int or a (B,) tensor) are eligible; ``k`` is clipped to the
    number of eligible lengths of the tightest row.
    """
    if k <= 0:
        raise BiglmError(f"length_candidates={k}: must be > 0")
    batch, classes = length_logits.shape
    limit = torch.as_tensor(max_length, device=length_logits.device).expand(batch)
    lengths = torch.arange(classes, device=length_logits.device)
    eligible = (lengths[None, :] >= 1) & (lengths[None, :] <= limit[:, None])
    available = int(eligible.sum(dim=1).min())
    if available == 0:
        raise BiglmError(f"no target length in 1..{int(limit.min())} is covered by the length head "
                         f"({classes} classes)")
    scores = length_logits.float().masked_fill(~eligible, float("-inf"))
    return scores.topk(min(k, available), dim=1, sorted=True).indices


def average_logprob(scores: Tensor, active: Tensor) -> Tensor:
    """Mean log-probability over each row's active positions: ``scores``/``active`` (N, L) -> (N,)."""
    total = (scores.float() * active).sum(dim=1)
    return total / active.sum(dim=1).clamp_min(1)


LENGTH_RULES: tuple[str, ...] = ("average", "joint")


def pick_best(scores: Tensor, active: Tensor, num_candidates: int, rule: str = "joint",
              length_logprobs: Tensor | None = None) -> Tensor:
    """Index (into the N = B·k rows, candidates of a prompt adjacent, best-ranked first) of the winner of
    each prompt under ``rule``; ``joint`` needs each row's length log-probability ``length_logprobs`` (N,).
    Returns (B,) long."""
    if rule not in LENGTH_RULES:
        raise BiglmError(f"length rule {rule!r}: expected one of {', '.join(LENGTH_RULES)}")
    if rule == "joint":
        if length_logprobs is None:
            raise BiglmError("the joint length rule needs the length head's log-probabilities")
        total = (scores.float() * active).sum(dim=1) + length_logprobs.float()
        avg = total.view(-1, num_candidates)
    else:
        avg = average_logprob(scores, active).view(-1, num_candidates)
    # argmax returns the first maximum: ties go to the higher-ranked length.
    best = avg.argmax(dim=1)
    return torch.arange(avg.shape[0], device=avg.device) * num_candidates + best
