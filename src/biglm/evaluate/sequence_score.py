"""Differentiable sequence scores log π(y | x) of a Mask-Predict (BiGLM, ``masked``) policy.

A Mask-Predict policy has no closed-form sequence likelihood: it picks a length, then fills [MASK]s in
an order of its own. Preference and policy-gradient training (DPO, GRPO) need a score that stands in for
log π(y | x) and carries a gradient. Every method here reads the rows the ``seq2seq`` / ``instruction``
task kinds train a masked model on: X = ``BOS prompt`` (the prompt ids as those kinds encode their
source, without BOS), Y = the response, under the prefix-blind layout (X never attends Y, so X is encoded
once per distinct prompt and its keys/values reused by every Y row, exactly; ``biglm.evaluate.scoring``'s
prefix cache). A pair longer than the model keeps BOS and the prompt's last tokens (as the instruction kind
keeps the latest turns). Methods (``MASKED_SCORES``):

* ``chain`` — the left-to-right chain rule Σ_i log p(y_i | x, y_<i, [MASK] for y_>i): row i shows y_<i and
  masks the rest, the target is position i. Exact for that (fixed) order; one suffix row per response
  token, all in one batched pass: cost |Y| rows of |Y| tokens per response (plus the shared prompt).
* ``elbo`` — the masked-diffusion lower bound E_t[(1/t) Σ_{masked} log p(y_i | x, y_unmasked)] (LLaDA,
  dllm; t ~ U(0, 1], each Y token masked with probability t), estimated as LLaDA's likelihood evaluation
  does: sample s masks l_s tokens, a uniform l_s-subset of Y, weighted |Y| / l_s. The counts are
  stratified over the ``samples`` draws (l_s = 1 + ⌊|Y|·(s + u)/S⌋, one u ~ U[0, 1) per response), so
  S ≥ |Y| samples cover every count. The two forms have the same expectation (∫ C(n,l) t^(l-1)
  (1-t)^(n-l) dt = 1/l); the count form never draws an empty mask and its weights are bounded by |Y|
  where 1/t is not. Cost: ``samples`` rows of |Y| tokens per response (identical rows are run once).
* ``one-step`` — dllm's GRPO score (d1): each prompt token masked with probability ``prompt_mask`` (0.3),
  the response fully masked, Σ_i log p(y_i | x̃) in one row per sample (a product of marginals with a
  perturbed prompt; cheap, and no bound on log p(y | x)). Cost: ``samples`` rows of |X| + |Y| tokens.

Length: the Mask-Predict policy chooses |Y| with the length head before it fills Y, so with ``length``
(default) and a model with a length head the score adds log p(|Y| | x) (the head's softmax over its
classes, mean-pooled over X as the engine reads it). ``length=False`` leaves it out. With ``pad_to``
(the ``length: eos`` recipe: Y padded with EOS up to ``max_target_length``, EOS scored like any token)
the padding is part of Y and no length term is added.

Randomness (``elbo``, ``one-step``) is drawn from ``generator`` (the global generator when None) response
by response in input order, or from ``generator[i]`` for response i when a list is given (a fixed seed per
example). The masks depend only on the draws and the responses' (and, for ``one-step``, prompts')
lengths: the same seeds give the same masks to any model (a policy and its reference score the same
masks), and scoring rows together equals scoring them one after another with one generator. The model
runs in its current mode (``model.eval()`` for dropout-free scores); grad flows when enabled.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor, nn

from biglm.data.tokenizer import TokenIds
from biglm.errors import BiglmError
from biglm.evaluate.scoring import _masked, _pad, _PrefixGroup, fit_request, position_rows
from biglm.families import get_family

MASKED_SCORES: tuple[str, ...] = ("chain", "elbo", "one-step")
"""The sequence scores of this module (``method``); configs take their names from here (``MaskedScore``)."""
MaskedScore = Literal[MASKED_SCORES]  # type: ignore[valid-type]
Generators = torch.Generator | Sequence[torch.Generator] | None
"""One generator for the whole batch, one per response, or None (the global one)."""


@dataclass
class SequenceScores:
    """Scores of a batch of responses and what they cost."""

    logps: Tensor
    """(B,) float32 sequence scores (length term included where it applies)."""
    length_logps: Tensor | None
    """(B,) the length head's log p(|Y| | x) included in ``logps`` (None: no length term)."""
    samples: Tensor | None
    """(B, S) the per-sample estimates whose mean is the token part of ``logps`` (``elbo``, ``one-step``)."""
    rows: int
    """Suffix rows run (after merging identical rows); the prompts are encoded once more, ``prompt_rows``."""
    prompt_rows: int
    tokens: int
    """Tokens processed: prompt rows' plus suffix rows' widths (padding included)."""


def masked_sequence_logps(model: nn.Module, prompts: Sequence[Sequence[int]], responses: Sequence[Sequence[int]],
                          ids: TokenIds, *, method: str = "elbo", samples: int = 4,
                          generator: Generators = None, length: bool = True, pad_to: int = 0,
                          prompt_mask: float = 0.3, max_rows: int = 1024) -> Tensor:
    """log π(response | prompt) under ``method`` for each pair: a (B,) float32 tensor, differentiable when
    grad is enabled. See the module docstring; ``masked_sequence_scores`` also returns the costs."""
    return masked_sequence_scores(model, prompts, responses, ids, method=method, samples=samples,
                                  generator=generator, length=length, pad_to=pad_to, prompt_mask=prompt_mask,
                                  max_rows=max_rows).logps


def masked_sequence_scores(model: nn.Module, prompts: Sequence[Sequence[int]], responses: Sequence[Sequence[int]],
                           ids: TokenIds, *, method: str = "elbo", samples: int = 4,
                           generator: Generators = None, length: bool = True, pad_to: int = 0,
                           prompt_mask: float = 0.3, max_rows: int = 1024) -> SequenceScores:
    """``masked_sequence_logps`` with the per-sample estimates and the cost in rows and tokens."""
    config = getattr(model, "module", model).config  # a DDP/FSDP-wrapped policy is called through its wrapper
    if get_family(config).scoring != "masked":
        raise BiglmError(f"masked sequence scores need a masked (BiGLM) model, got family {config.family!r}")
    if method not in MASKED_SCORES:
        raise BiglmError(f"unknown sequence score {method!r}: expected one of {', '.join(MASKED_SCORES)}")
    if not isinstance(samples, int) or isinstance(samples, bool) or samples < 1:
        raise BiglmError(f"samples={samples!r}: must be a positive integer")
    if len(prompts) != len(responses) or not responses:
        raise BiglmError(f"{len(prompts)} prompts and {len(responses)} responses: need as many, at least one")
    if isinstance(generator, Sequence) and len(generator) != len(responses):
        raise BiglmError(f"{len(generator)} generators for {len(responses)} responses: need one per response")
    if not 0.0 <= prompt_mask < 1.0:
        raise BiglmError(f"prompt_mask={prompt_mask}: must be in [0, 1)")
    pairs = []
    for i, (x, y) in enumerate(zip(prompts, responses)):
        y = list(y)
        if pad_to:
            if len(y) > pad_to:
                raise BiglmError(f"response {i} has {len(y)} tokens, more than pad_to={pad_to}")
            y = y + [ids.eos] * (pad_to - len(y))
        prefix, suffix, _ = fit_request([ids.bos, *x], y, config.max_seq_len)
        pairs.append((prefix, suffix))
    n = torch.tensor([len(y) for _, y in pairs])
    with_length = length and not pad_to and config.length_head
    if with_length and int(n.max()) >= config.max_target_length:
        raise BiglmError(f"a response of {int(n.max())} tokens is beyond the length head's "
                         f"{config.max_target_length} classes (lengths 0..{config.max_target_length - 1})")
    if method == "one-step":
        return _one_step(model, pairs, ids, samples, generator, prompt_mask, max_rows, with_length)
    distinct: dict[tuple[int, ...], int] = {}
    prefix_idx = torch.tensor([distinct.setdefault(tuple(x), len(distinct)) for x, _ in pairs])
    group = _PrefixGroup(model, [(list(x), [], 0) for x in distinct], ids.pad, True, length_logits=with_length)
    gold, valid = _pad([y for _, y in pairs], ids.pad)
    if method == "chain":
        req, tokens, want, g, v = position_rows(gold, valid, lambda j, k: j >= k, ids.mask, ids.pad)
        row_logps, rows = _run_rows(group, prefix_idx[req], tokens, want, g, v, max_rows)
        token_part = torch.zeros(len(pairs), device=row_logps.device).index_add(0, req.to(row_logps.device),
                                                                              row_logps)
        per_sample = None
    else:
        hide, weight = elbo_masks(n, samples, generator)
        req = torch.repeat_interleave(torch.arange(len(pairs)), samples)
        g, v = gold[req], valid[req]
        row_logps, rows = _run_rows(group, prefix_idx[req], _masked(g, v, hide, ids.mask, ids.pad), hide, g, v,
                                    max_rows)
        per_sample = (row_logps * weight.to(row_logps.device)).view(len(pairs), samples)
        token_part = per_sample.mean(1)
    length_logps = None
    if with_length:
        assert group.length_logits is not None
        classes = group.length_logits.float().log_softmax(-1)
        length_logps = classes[prefix_idx.to(classes.device), n.to(classes.device)]
        token_part = token_part + length_logps
    width = gold.shape[1]
    return SequenceScores(token_part.float(), length_logps, per_sample, rows, len(distinct),
                          len(distinct) * group.ids.shape[1] + rows * width)


def elbo_masks(lengths: Tensor, samples: int, generator: Generators = None) -> tuple[Tensor, Tensor]:
    """The ``elbo`` draws: for each response (in order) ``samples`` masks of its ``lengths[r]`` tokens.

    Sample s of a response of n tokens masks l_s = 1 + ⌊n·(s + u)/S⌋ tokens (u ~ U[0, 1) once per response:
    the counts are stratified), a uniform l_s-subset; its weight is n / l_s. Returns ``hide`` (B·S, max n)
    bool, rows grouped by response, and ``weight`` (B·S,) float32."""
    B, M = lengths.numel(), int(lengths.max())
    hide = torch.zeros(B * samples, M, dtype=torch.bool)
    weight = torch.zeros(B * samples)
    strata = torch.arange(samples, dtype=torch.float64)
    for r, nr in enumerate(lengths.tolist()):
        gen = _generator(generator, r)
        u = torch.rand((), generator=gen, dtype=torch.float64)
        count = 1 + torch.floor(nr * (strata + u) / samples).long().clamp_max(nr - 1)
        rank = torch.rand(samples, nr, generator=gen).argsort(1).argsort(1)
        rows = slice(r * samples, (r + 1) * samples)
        hide[rows, :nr] = rank < count[:, None]
        weight[rows] = nr / count.float()
    return hide, weight


def _generator(generator: Generators, r: int) -> torch.Generator | None:
    return generator[r] if isinstance(generator, Sequence) else generator


def _run_rows(group: _PrefixGroup, prefix_rows: Tensor, tokens: Tensor, want: Tensor, gold: Tensor, valid: Tensor,
              max_rows: int) -> tuple[Tensor, int]:
    """Σ of gold log-probs at ``want`` for each suffix row; identical rows (same prompt, input and targets)
    run once. Returns the (R,) sums on the model's device and the number of rows run."""
    key = torch.cat([prefix_rows[:, None], tokens, gold, want.long(), valid.long()], 1)
    unique, inverse = torch.unique(key, dim=0, return_inverse=True)
    first = torch.full((unique.shape[0],), key.shape[0], dtype=torch.long).scatter_reduce(
        0, inverse, torch.arange(key.shape[0]), "amin")
    p, t, w, g, v = prefix_rows[first], tokens[first], want[first], gold[first], valid[first]
    lp, _ = group.run(p, t, v, w, g, max_rows, on_device=True)
    row = w.nonzero()[:, 0].to(lp.device)
    sums = torch.zeros(first.numel(), dtype=lp.dtype, device=lp.device).index_add(0, row, lp)
    return sums[inverse.to(lp.device)], int(first.numel())


def _one_step(model: nn.Module, pairs: list[tuple[list[int], list[int]]], ids: TokenIds, samples: int,
              generator: Generators, prompt_mask: float, max_rows: int,
              with_length: bool) -> SequenceScores:
    """dllm's one-step score: per sample, the prompt (BOS kept) masked with probability ``prompt_mask`` and
    the response fully masked; the length term is read from the clean prompt."""
    contexts, length_rows = [], []
    for r, (x, _) in enumerate(pairs):
        length_rows.append(x)
        for _ in range(samples):
            hide = torch.rand(len(x), generator=_generator(generator, r)) < prompt_mask
            hide[0] = False
            contexts.append(torch.where(hide, ids.mask, torch.tensor(x)).tolist())
    distinct: dict[tuple[int, ...], int] = {}
    ctx_idx = torch.tensor([distinct.setdefault(tuple(c), len(distinct)) for c in contexts])
    group = _PrefixGroup(model, [(list(c), [], 0) for c in distinct], ids.pad, True)
    gold, valid = _pad([y for _, y in pairs], ids.pad)
    req = torch.repeat_interleave(torch.arange(len(pairs)), samples)
    g, v = gold[req], valid[req]
    row_logps, rows = _run_rows(group, ctx_idx, _masked(g, v, v, ids.mask, ids.pad), v, g, v, max_rows)
    per_sample = row_logps.view(len(pairs), samples)
    token_part = per_sample.mean(1)
    length_logps, prompt_rows, tokens = None, len(distinct), len(distinct) * group.ids.shape[1]
    if with_length:
        clean: dict[tuple[int, ...], int] = {}
        idx = torch.tensor([clean.setdefault(tuple(x), len(clean)) for x in length_rows])
        heads = _PrefixGroup(model, [(list(x), [], 0) for x in clean], ids.pad, True, length_logits=True)
        assert heads.length_logits is not None
        n = valid.sum(1)
        classes = heads.length_logits.float().log_softmax(-1)
        length_logps = classes[idx.to(classes.device), n.to(classes.device)]
        token_part = token_part + length_logps
        prompt_rows, tokens = prompt_rows + len(clean), tokens + len(clean) * heads.ids.shape[1]
    return SequenceScores(token_part.float(), length_logps, per_sample, rows, prompt_rows,
                          tokens + rows * gold.shape[1])


__all__ = ["MASKED_SCORES", "MaskedScore", "SequenceScores", "elbo_masks", "masked_sequence_logps",
           "masked_sequence_scores"]
