"""Scoring a continuation Y given a prefix X with a BiGLM: batched, with the exact prefix cache.

A request is ``(prefix, suffix)`` token ids; ``prefix`` is X (``BOS context``), ``suffix`` is Y. Every
method starts from X followed by Y with some Y tokens replaced by [MASK], under the prefix-blind
layout (X never attends Y), and reads the log-probability of gold tokens at masked positions.
A request ``(prefix, suffix, post)`` puts Y in a blank *inside* the context: X is ``prefix + post``
with the ``post`` tokens at the positions after Y (a cloze prompt with text after its blank); X still
never attends Y, so the cache stays exact.

Methods (``METHODS``):

* ``greedy-order`` (the BiGLM reference code): start with Y fully masked; at each of |Y| passes reveal
  the still-masked position whose *gold* token is most probable and multiply its probability in.
  ``beam=k`` keeps the k best partial orders (sets of revealed positions) by summed log-probability;
  the score is the best full order's. A chain rule along a data-dependent order (an upper estimate of
  the fixed-order chain rule, since it picks the easiest order for the gold answer).
* ``left-to-right``: the chain rule revealing positions left to right; |Y| rows, one pass.
* ``single-pass``: all of Y masked, one pass, sum of log-probs (a product of marginals).
* ``pll``: pseudo-log-likelihood: each Y token masked alone with the others visible; |Y| rows.
* ``mc-elbo``: the masked-diffusion ELBO ``E_t[(1/t) Σ_masked log p]`` (t ~ U(0,1], each Y token masked
  with probability t), estimated with the lower-variance equivalent form of LLaDA: draw the number of
  masked tokens l ~ U{1..|Y|}, mask a uniform l-subset and weight by |Y|/l. The two are equal in
  expectation (∫ C(n,l) t^(l-1)(1-t)^(n-l) dt = 1/l), and the l-form is exactly t ~ U(0,1] with
  Bernoulli(t) masking conditioned on at least one masked token. ``samples`` draws per request; the
  mean is returned with its standard error. A lower bound on log p(Y|X) for a model trained with that
  objective; for |Y| = 1 it equals every other method.

``is_greedy`` — "the gold continuation is what greedy decoding would produce along the same order":
for ``greedy-order`` every revealed gold token (best beam) was the arg-max of its position's
distribution at the step it was revealed; for ``left-to-right`` the same along left to right; for
``single-pass`` every position's arg-max (all masked) is gold; for ``pll`` every token is the arg-max
when masked alone; for ``mc-elbo`` every masked position of every sample has gold as its arg-max.
Ties count as greedy.

Batching: requests are grouped (``batch_size`` per group); each group's distinct prefixes are encoded
once, left-padded (document id -1) with ``use_cache=True``; all Y passes run on ``past=cache`` rows
selected with ``KVCache.index_select``, at most ``max_rows`` rows per forward pass. Requests whose
X + Y exceed the model's maximum length keep X's first token (BOS) and lose the oldest context tokens;
a Y that alone leaves no room for one prefix token is an error.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from biglm.attention import AttentionLayout
from biglm.errors import BiglmError
from biglm.model import BiGLM, suffix_position_ids

METHODS: tuple[str, ...] = ("greedy-order", "left-to-right", "single-pass", "mc-elbo", "pll")


@dataclass
class ScoringConfig:
    """How to score: the method and its knobs, and how to batch."""

    method: str = "greedy-order"
    beam: int = 1
    """greedy-order: partial orders kept per request (1 = the reference code's greedy)."""
    samples: int = 16
    """mc-elbo: masked samples per request."""
    seed: int = 0
    """mc-elbo: samples of request i come from a generator seeded by (seed, i)."""
    batch_size: int = 32
    """Requests scored together (their distinct prefixes encoded in one pass)."""
    max_rows: int = 512
    """Most suffix rows in one forward pass (bounds memory; results do not depend on it)."""
    use_cache: bool = True
    """False re-encodes X in every pass (for checking; same results)."""

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise BiglmError(f"unknown scoring method '{self.method}': expected one of {', '.join(METHODS)}")
        for name in ("beam", "samples", "batch_size", "max_rows"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise BiglmError(f"scoring {name}={value!r}: must be a positive integer")


@dataclass
class Score:
    """A request's score: log p(Y | X) under the method, whether Y is the greedy decode, and for
    ``mc-elbo`` the standard error of the estimate (None otherwise)."""

    logprob: float
    is_greedy: bool
    stderr: float | None = None


Request = tuple[Sequence[int], Sequence[int]] | tuple[Sequence[int], Sequence[int], Sequence[int]]
"""``(prefix, suffix)``, or ``(prefix, suffix, post)`` with context after the blank."""


def fit_request(prefix: Sequence[int], suffix: Sequence[int], max_len: int,
                post: Sequence[int] = ()) -> tuple[list[int], list[int], list[int]]:
    """Check a request and make it fit ``max_len``: the prefix loses its oldest tokens (its first, BOS,
    is kept), then the context after the blank loses its last ones."""
    prefix, suffix, post = list(prefix), list(suffix), list(post)
    if not suffix:
        raise BiglmError("empty continuation: there is nothing to score")
    if not prefix:
        raise BiglmError("empty prefix: a request needs at least the BOS token before the continuation")
    if len(suffix) > max_len - 1:
        raise BiglmError(f"continuation of {len(suffix)} tokens does not fit the model's maximum length "
                         f"{max_len} (it needs {max_len - 1} tokens or fewer, plus BOS)")
    room = max_len - len(suffix)
    if len(prefix) > room:
        prefix = prefix[:1] + prefix[len(prefix) - (room - 1):]
    return prefix, suffix, post[:room - len(prefix)]


def rolling_requests(tokens: Sequence[int], bos_token_id: int, max_len: int,
                     chunk: int) -> list[tuple[list[int], list[int]]]:
    """Requests covering ``tokens`` once for perplexity: disjoint chunks of ``chunk`` tokens, each with
    ``BOS`` and as many preceding tokens as fit in ``max_len``. Summing the chunk scores gives the
    chain rule over chunks (each chunk scored by the chosen method given everything before it)."""
    chunk = max(1, min(chunk, max_len - 1))
    out = []
    for start in range(0, len(tokens), chunk):
        suffix = list(tokens[start:start + chunk])
        keep = max_len - 1 - len(suffix)
        out.append(([bos_token_id, *tokens[max(0, start - keep):start]], suffix))
    return out


class _PrefixGroup:
    """A group's distinct contexts X, left-padded and encoded once; runs suffix passes against them.

    A context is ``(prefix, post, blank)``: X = ``prefix + post`` with ``post`` at the positions after a
    blank of ``blank`` tokens; Y's first token sits at position ``len(prefix)``.
    """

    def __init__(self, model: BiGLM, contexts: list[tuple[list[int], list[int], int]], pad_token_id: int,
                 use_cache: bool, length_logits: bool = False) -> None:
        device = next(model.parameters()).device  # also through a DDP wrapper
        G, P = len(contexts), max(len(p) + len(q) for p, q, _ in contexts)
        self.ids = torch.full((G, P), pad_token_id, dtype=torch.long)
        self.docs = torch.full((G, P), -1, dtype=torch.int32)
        self.pos = torch.zeros(G, P, dtype=torch.long)
        for i, (p, q, blank) in enumerate(contexts):
            n = len(p) + len(q)
            self.ids[i, P - n:] = torch.tensor(p + q)
            self.docs[i, P - n:] = 0
            self.pos[i, P - n:] = torch.cat([torch.arange(len(p)), len(p) + blank + torch.arange(len(q))])
        self.ids, self.docs, self.pos = self.ids.to(device), self.docs.to(device), self.pos.to(device)
        self.lengths = torch.tensor([len(p) for p, _, _ in contexts], device=device)  # Y's first position
        self.model, self.device, self.cache = model, device, None
        self.suffix_mode = getattr(model, "module", model).config.suffix_positions  # (a DDP wrapper holds .module)
        self.length_logits: Tensor | None = None
        """(G, classes): the length head over each context's tokens (``length_logits=True``, with the cache)."""
        if use_cache:
            layout = AttentionLayout("prefix_blind", self.docs, torch.zeros(G, P, dtype=torch.int8, device=device))
            none = torch.zeros(G, P, dtype=torch.bool, device=device)
            out = model(self.ids, layout, self.pos, logits_mask=none, use_cache=True,
                        length_mask=self.docs >= 0 if length_logits else None)
            self.cache, self.length_logits = out.cache, out.length_logits

    def run(self, rows: Tensor, tokens: Tensor, valid: Tensor, want: Tensor, gold: Tensor,
            max_rows: int, on_device: bool = False) -> tuple[Tensor, Tensor]:
        """Gold log-probs and arg-max flags at the ``want`` positions (row-major) of suffix rows
        ``tokens`` (R, M) whose prefixes are ``rows`` (R,); on the CPU unless ``on_device``
        (differentiable either way when grad is enabled)."""
        logps, greedy = [], []
        for lo in range(0, rows.numel(), max_rows):
            sl = slice(lo, lo + max_rows)
            lp, am = self._run(rows[sl], tokens[sl], valid[sl], want[sl], gold[sl])
            logps.append(lp)
            greedy.append(am)
        lp, am = torch.cat(logps), torch.cat(greedy)
        return (lp, am) if on_device else (lp.cpu(), am.cpu())

    def _run(self, rows: Tensor, tokens: Tensor, valid: Tensor, want: Tensor,
             gold: Tensor) -> tuple[Tensor, Tensor]:
        d = self.device
        rows, tokens, valid, want, gold = rows.to(d), tokens.to(d), valid.to(d), want.to(d), gold.to(d)
        R, M = tokens.shape
        pos = suffix_position_ids(self.suffix_mode, self.lengths[rows], M)
        docs = torch.where(valid, 0, -1).to(torch.int32)
        regions = torch.ones(R, M, dtype=torch.int8, device=d)
        if self.cache is not None:
            layout = AttentionLayout("prefix_blind", docs, regions)
            out = self.model(tokens, layout, pos, logits_mask=want, past=self.cache.index_select(rows))
        else:  # the whole X + Y sequence in every pass
            P = self.ids.shape[1]
            layout = AttentionLayout("prefix_blind", torch.cat([self.docs[rows], docs], 1),
                                     torch.cat([torch.zeros(R, P, dtype=torch.int8, device=d), regions], 1))
            full_want = torch.cat([torch.zeros(R, P, dtype=torch.bool, device=d), want], 1)
            out = self.model(torch.cat([self.ids[rows], tokens], 1), layout, torch.cat([self.pos[rows], pos], 1),
                             logits_mask=full_want)
        logits = out.logits.float()
        target = gold[want]
        gold_logit = logits.gather(1, target[:, None])[:, 0]
        return gold_logit - logits.logsumexp(-1), gold_logit >= logits.max(-1).values


def _pad(suffixes: list[list[int]], pad_token_id: int) -> tuple[Tensor, Tensor]:
    """(R, M) gold tokens (pad beyond each length) and the validity mask."""
    M = max(len(s) for s in suffixes)
    gold = torch.full((len(suffixes), M), pad_token_id, dtype=torch.long)
    for i, s in enumerate(suffixes):
        gold[i, :len(s)] = torch.tensor(s)
    return gold, gold.new_tensor([len(s) for s in suffixes])[:, None] > torch.arange(M)


def _masked(gold: Tensor, valid: Tensor, hide: Tensor, mask_token_id: int, pad_token_id: int) -> Tensor:
    """Suffix input: [MASK] where ``hide``, gold elsewhere, pad outside the continuation."""
    return torch.where(valid, torch.where(hide, mask_token_id, gold), pad_token_id)


def _segment_sum(values: Tensor, segment: Tensor, n: int) -> Tensor:
    return torch.zeros(n, dtype=values.dtype).index_add_(0, segment, values)


def position_rows(gold: Tensor, valid: Tensor, hide_fn: Callable[[Tensor, Tensor], Tensor], mask_id: int,
                  pad_id: int) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """One suffix row per (request, position k): ``hide_fn(j, k)`` says which positions j are masked, the
    target is k. Returns each row's request, its input tokens, target mask, gold tokens and validity."""
    R = gold.shape[0]
    n = valid.sum(1)
    req = torch.repeat_interleave(torch.arange(R), n)
    k = torch.arange(req.numel()) - torch.repeat_interleave(torch.cumsum(n, 0) - n, n)
    j = torch.arange(gold.shape[1])[None]
    g, v = gold[req], valid[req]
    return req, _masked(g, v, hide_fn(j, k[:, None]), mask_id, pad_id), j == k[:, None], g, v


def _one_row_per_position(group: _PrefixGroup, prefix_idx: Tensor, gold: Tensor, valid: Tensor, cfg: ScoringConfig,
                          mask_id: int, pad_id: int, hide_fn: Callable[[Tensor, Tensor], Tensor]) -> list[Score]:
    """left-to-right / pll: row k of request r targets position k; ``hide_fn(j, k)`` says what is masked."""
    R, n = gold.shape[0], valid.sum(1)
    req, tokens, want, g, v = position_rows(gold, valid, hide_fn, mask_id, pad_id)
    lp, am = group.run(prefix_idx[req], tokens, v, want, g, cfg.max_rows)
    total = _segment_sum(lp.double(), req, R)
    greedy = _segment_sum(am.long(), req, R) == n
    return [Score(float(total[r]), bool(greedy[r])) for r in range(R)]


def _single_pass(group: _PrefixGroup, prefix_idx: Tensor, gold: Tensor, valid: Tensor, cfg: ScoringConfig,
                 mask_id: int, pad_id: int) -> list[Score]:
    R = gold.shape[0]
    lp, am = group.run(prefix_idx, _masked(gold, valid, valid, mask_id, pad_id), valid, valid, gold, cfg.max_rows)
    req = torch.arange(R)[:, None].expand_as(valid)[valid]
    total, hits = _segment_sum(lp.double(), req, R), _segment_sum(am.long(), req, R)
    return [Score(float(total[r]), bool(hits[r] == valid[r].sum())) for r in range(R)]


def _mc_elbo(group: _PrefixGroup, prefix_idx: Tensor, gold: Tensor, valid: Tensor, cfg: ScoringConfig,
             mask_id: int, pad_id: int, request_ids: Sequence[int]) -> list[Score]:
    R, M = gold.shape
    S = cfg.samples
    n = valid.sum(1)
    hide = torch.zeros(R * S, M, dtype=torch.bool)
    count = torch.zeros(R * S, dtype=torch.long)
    for r in range(R):  # per-request generator: samples do not depend on batching
        g = torch.Generator().manual_seed((cfg.seed * 1_000_003 + int(request_ids[r])) % (2**63))
        nr = int(n[r])
        count[r * S:(r + 1) * S] = torch.randint(1, nr + 1, (S,), generator=g)
        rank = torch.rand(S, nr, generator=g).argsort(1).argsort(1)
        hide[r * S:(r + 1) * S, :nr] = rank < count[r * S:(r + 1) * S, None]
    req = torch.repeat_interleave(torch.arange(R), S)
    g_rows, v_rows = gold[req], valid[req]
    lp, am = group.run(prefix_idx[req], _masked(g_rows, v_rows, hide, mask_id, pad_id), v_rows, hide, g_rows,
                       cfg.max_rows)
    row = torch.arange(R * S)[:, None].expand_as(hide)[hide]
    est = _segment_sum(lp.double(), row, R * S) * n[req].double() / count.double()
    hits = _segment_sum(am.long(), row, R * S) == count
    out = []
    for r in range(R):
        e = est[r * S:(r + 1) * S]
        se = float(e.std() / math.sqrt(S)) if S > 1 else None
        out.append(Score(float(e.mean()), bool(hits[r * S:(r + 1) * S].all()), se))
    return out


def _greedy_order(group: _PrefixGroup, prefix_idx: Tensor, gold: Tensor, valid: Tensor, cfg: ScoringConfig,
                  mask_id: int, pad_id: int) -> list[Score]:
    """|Y| steps; each step one batched pass over every live (request, partial order) row."""
    R, M = gold.shape
    n = valid.sum(1)
    # Beams as flat lists: owner request, revealed set, summed log-prob, all-greedy flag.
    owner = torch.arange(R)
    revealed = torch.zeros(R, M, dtype=torch.bool)
    score = torch.zeros(R, dtype=torch.float64)
    greedy = torch.ones(R, dtype=torch.bool)
    for step in range(int(n.max())):
        live = n[owner] > step
        o, rv = owner[live], revealed[live]
        g, v = gold[o], valid[o]
        want = v & ~rv
        lp, am = group.run(prefix_idx[o], _masked(g, v, ~rv, mask_id, pad_id), v, want, g, cfg.max_rows)
        lp_full = torch.full(want.shape, -math.inf, dtype=torch.float64)
        am_full = torch.zeros(want.shape, dtype=torch.bool)
        lp_full[want], am_full[want] = lp.double(), am
        cand = score[live][:, None] + lp_full
        if cfg.beam == 1:
            best = cand.argmax(1)
            idx = torch.arange(o.numel())
            new_rv = rv.clone()
            new_rv[idx, best] = True
            owner_n, revealed_n = o, new_rv
            score_n, greedy_n = cand[idx, best], greedy[live] & am_full[idx, best]
        else:
            owner_n, revealed_n, score_n, greedy_n = _beam_step(o, rv, cand, am_full, greedy[live], cfg.beam)
        done = ~live
        owner = torch.cat([owner[done], owner_n])
        revealed = torch.cat([revealed[done], revealed_n])
        score = torch.cat([score[done], score_n])
        greedy = torch.cat([greedy[done], greedy_n])
    out = []
    for r in range(R):
        mine = (owner == r).nonzero()[:, 0]
        b = mine[score[mine].argmax()]
        out.append(Score(float(score[b]), bool(greedy[b])))
    return out


def _beam_step(owner: Tensor, revealed: Tensor, cand: Tensor, am: Tensor, greedy: Tensor,
               beam: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Keep, per request, the ``beam`` best distinct revealed sets reachable by revealing one position."""
    keep_owner, keep_rv, keep_score, keep_greedy = [], [], [], []
    for r in owner.unique().tolist():
        rows = (owner == r).nonzero()[:, 0]
        flat = cand[rows].flatten()
        order = flat.argsort(descending=True)
        seen: set[bytes] = set()
        for f in order.tolist():
            if flat[f] == -math.inf or len(seen) >= beam:
                break
            b, j = rows[f // cand.shape[1]], f % cand.shape[1]
            rv = revealed[b].clone()
            rv[j] = True
            key = rv.numpy().tobytes()
            if key in seen:
                continue
            seen.add(key)
            keep_owner.append(r)
            keep_rv.append(rv)
            keep_score.append(float(flat[f]))
            keep_greedy.append(bool(greedy[b] & am[b, j]))
    return (torch.tensor(keep_owner, dtype=torch.long), torch.stack(keep_rv),
            torch.tensor(keep_score, dtype=torch.float64), torch.tensor(keep_greedy))


@torch.no_grad()
def score_requests(model: BiGLM, requests: Sequence[Request], *, mask_token_id: int,
                   pad_token_id: int = 0, config: ScoringConfig | None = None,
                   progress: Callable[[int], None] | None = None) -> list[Score]:
    """Score every ``(prefix, suffix)`` or ``(prefix, suffix, post)`` request; results in the input order.

    Identical requests are scored once (lm-eval's ``acc_mutual_info`` asks for each choice's
    context-free score once per item it appears in). The distinct ones are sorted (longest prefix
    first, equal prefixes together) and cut into groups of ``config.batch_size``; ``progress(k)`` is
    called after each group with the number of requests it answered.
    """
    cfg = config or ScoringConfig()
    max_len = model.config.max_seq_len
    fitted = [fit_request(r[0], r[1], max_len, r[2] if len(r) > 2 else ()) for r in requests]
    first: dict[tuple[tuple[int, ...], ...], int] = {}
    same_as = [first.setdefault(tuple(map(tuple, f)), i) for i, f in enumerate(fitted)]
    copies = Counter(same_as)
    order = sorted(first.values(), key=lambda i: (-len(fitted[i][0]), fitted[i][0], fitted[i][2],
                                                  len(fitted[i][1])))
    results: list[Score | None] = [None] * len(fitted)
    was_training = model.training
    model.eval()
    try:
        for lo in range(0, len(order), cfg.batch_size):
            ids = order[lo:lo + cfg.batch_size]
            for i, s in zip(ids, _score_group(model, [fitted[i] for i in ids], ids, cfg, mask_token_id, pad_token_id)):
                results[i] = s
            if progress is not None:
                progress(sum(copies[i] for i in ids))
    finally:
        model.train(was_training)
    return [results[i] for i in same_as]  # type: ignore[misc]


def _score_group(model: BiGLM, reqs: list[tuple[list[int], list[int], list[int]]], request_ids: Sequence[int],
                 cfg: ScoringConfig, mask_id: int, pad_id: int) -> list[Score]:
    # Contexts without text after the blank do not depend on the continuation's length.
    distinct: dict[tuple[tuple[int, ...], tuple[int, ...], int], int] = {}
    keys = [(tuple(p), tuple(q), len(s) if q else 0) for p, s, q in reqs]
    prefix_idx = torch.tensor([distinct.setdefault(k, len(distinct)) for k in keys])
    group = _PrefixGroup(model, [(list(p), list(q), n) for p, q, n in distinct], pad_id, cfg.use_cache)
    gold, valid = _pad([s for _, s, _ in reqs], pad_id)
    if cfg.method == "greedy-order":
        return _greedy_order(group, prefix_idx, gold, valid, cfg, mask_id, pad_id)
    if cfg.method == "single-pass":
        return _single_pass(group, prefix_idx, gold, valid, cfg, mask_id, pad_id)
    if cfg.method == "mc-elbo":
        return _mc_elbo(group, prefix_idx, gold, valid, cfg, mask_id, pad_id, request_ids)
    hide = (lambda j, k: j >= k) if cfg.method == "left-to-right" else (lambda j, k: j == k)
    return _one_row_per_position(group, prefix_idx, gold, valid, cfg, mask_id, pad_id, hide)


@torch.no_grad()
def reference_greedy_order(model: BiGLM, prefix: Sequence[int], suffix: Sequence[int], mask_token_id: int) -> Score:
    """The BiGLM reference code's scoring, kept as the baseline: one request, no cache, input
    ``prefix [MASK]×|Y|`` re-encoded in full for each of the |Y| reveals."""
    prefix, suffix, _ = fit_request(prefix, suffix, model.config.max_seq_len)
    device = model.lm_head.weight.device
    P, n = len(prefix), len(suffix)
    ids = torch.tensor([prefix + [mask_token_id] * n], device=device)
    gold = torch.tensor(suffix, device=device)
    regions = torch.tensor([[0] * P + [1] * n], dtype=torch.int8, device=device)
    layout = AttentionLayout("prefix_blind", None, regions)
    masked = torch.ones(n, dtype=torch.bool, device=device)
    total, greedy = 0.0, True
    for _ in range(n):
        logp = model(ids, layout).logits[0, P:].float().log_softmax(-1)
        gold_lp = logp.gather(1, gold[:, None])[:, 0].masked_fill(~masked, -math.inf)
        j = int(gold_lp.argmax())
        total += float(gold_lp[j])
        greedy &= bool(gold_lp[j] >= logp[j].max())
        ids[0, P + j] = gold[j]
        masked[j] = False
    return Score(total, greedy)


__all__ = ["METHODS", "Request", "Score", "ScoringConfig", "fit_request", "reference_greedy_order",
           "rolling_requests", "score_requests"]
