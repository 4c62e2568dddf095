"""Exact chain-rule scoring for autoregressive models (``causal``, ``bidirectional-ar``), in either
reading direction, batched: one forward pass per batch of rows, logits only where a target is.

A *row* is a token sequence that starts with its direction's marker (``BOS …`` read left to right,
``EOS`` + reversed text read right to left; see ``biglm.objectives.autoregressive``); its score is
``Σ_j log p(row[j] | row[<j])`` over the target positions ``j ≥ start``.

* **Continuation** ``log p(y | x)`` (lm-eval ``loglikelihood``):

  - ``l2r``: the row ``BOS x y``, targets y. This is the usual causal-LM score (the same number as
    transformers gives the exported model).
  - ``r2l``: reading right to left cannot leave what follows y open, so both texts are taken as
    whole documents: ``log p(x y) − log p(x)`` with each term the R2L chain rule over
    ``EOS reversed(text) BOS`` (targets: every token and the closing BOS). It estimates
    ``log p(y | x) + log p(end | x y) − log p(end | x)``: the continuation's score when y ends the
    text, the natural reading for a multiple-choice answer.
  - ``mean``: the average of the two.
* **Whole text** ``log p(x)`` (``loglikelihood_rolling``): the document likelihood with both
  boundary markers, ``BOS x EOS`` left to right (targets x and the closing EOS) or ``EOS reversed(x)
  BOS`` right to left (targets reversed x and BOS). The two are estimates of the *same* quantity, the
  probability of the document, so for a ``bidirectional-ar`` model their gap measures how far its two
  halves agree. Texts longer than the model's maximum length are scored in windows: targets in chunks
  of half the maximum length, each with as much preceding context (in reading order) as fits.

Contexts too long for the model lose their tokens farthest from the continuation (and then their
boundary marker target, which no longer holds).

**GLM models** (family ``glm``) are scored by the same chain rule over part B, in one forward pass per
batch: a continuation is the row ``BOS x [gMASK] | [sop] y`` (part A | part B; targets y), a whole text
``BOS [gMASK] | [sop] x EOS`` (targets x and EOS; long texts in windows whose part A holds the
preceding tokens). Part A is read bidirectionally, part B left to right (the ``prefix_lm`` layout),
with GLM's 2D positions (B tokens at the [gMASK]'s position, 1, 2, … inside the span).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from biglm.attention import AttentionLayout
from biglm.devices import model_device
from biglm.errors import BiglmError

AR_DIRECTIONS: tuple[str, ...] = ("l2r", "r2l", "mean")


@dataclass
class RowScore:
    logprob: float
    is_greedy: bool
    targets: int
    greedy_run: int = 0
    """How many leading targets are the model's arg-max."""


def _layout(rows: list[tuple[Sequence[int], int]], part_a: Sequence[tuple[int, int]] | None, width: int,
            device: torch.device) -> tuple[AttentionLayout, torch.Tensor | None]:
    """The causal layout, or for GLM rows (``part_a``: (tokens in part A, index of the blank) per row)
    the prefix-LM layout with 2D positions; padding (document id -1) right of each row."""
    docs = torch.full((len(rows), width), -1, dtype=torch.int32)
    for r, (seq, _) in enumerate(rows):
        docs[r, :len(seq)] = 0
    if part_a is None:
        return AttentionLayout("causal", docs.to(device)), None
    regions = torch.zeros(len(rows), width, dtype=torch.int8)
    positions = torch.zeros(len(rows), width, 2, dtype=torch.long)
    for r, ((seq, _), (a, blank)) in enumerate(zip(rows, part_a)):
        regions[r, a:len(seq)] = 1
        positions[r, :a, 0] = torch.arange(a)
        positions[r, a:len(seq), 0] = blank  # part B sits at its blank's position
        positions[r, a:len(seq), 1] = torch.arange(1, len(seq) - a + 1)
    return AttentionLayout("prefix_lm", docs.to(device), regions.to(device)), positions.to(device)


@torch.no_grad()
def score_rows(model: nn.Module, rows: Sequence[tuple[Sequence[int], int]], *, pad_token_id: int = 0,
               batch_tokens: int = 16384, progress: Callable[[int], None] | None = None,
               part_a: Sequence[tuple[int, int]] | None = None) -> list[RowScore]:
    """Chain-rule log-probabilities of ``rows`` = [(token ids, first target index)], batched by length.

    Rows are sorted by length and packed into batches of at most ``batch_tokens`` (padded) tokens;
    padding is right of each row with document id -1 (so it changes nothing). GLM rows give
    ``part_a``: (how many leading tokens of the row are part A, the index of the blank its part B fills)."""
    max_len = model.config.max_seq_len
    for ids, start in rows:
        if len(ids) > max_len:
            raise BiglmError(f"a scoring row of {len(ids)} tokens exceeds the model's maximum length {max_len}")
        if not 1 <= start <= len(ids):
            raise BiglmError(f"scoring row: first target {start} outside 1..{len(ids)}")
    device = model_device(model)
    order = sorted(range(len(rows)), key=lambda i: -len(rows[i][0]))
    out: list[RowScore | None] = [None] * len(rows)
    was_training = model.training
    model.eval()
    try:
        lo = 0
        while lo < len(order):
            width = len(rows[order[lo]][0])
            hi = min(len(order), lo + max(1, batch_tokens // max(width, 1)))
            part = order[lo:hi]
            ids = torch.full((len(part), width), pad_token_id, dtype=torch.long)
            want = torch.zeros(len(part), width, dtype=torch.bool)  # positions whose logits predict a target
            for r, i in enumerate(part):
                seq, start = rows[i]
                ids[r, :len(seq)] = torch.as_tensor(list(seq))
                want[r, start - 1:len(seq) - 1] = True
            gold = torch.zeros_like(ids)
            gold[:, :-1] = ids[:, 1:]
            layout, positions = _layout([rows[i] for i in part], None if part_a is None else [part_a[i] for i in part],
                                        width, device)
            logits = model(ids.to(device), layout, positions, logits_mask=want.to(device)).logits.float()
            target = gold[want].to(device)
            gold_logit = logits.gather(1, target[:, None])[:, 0]
            logp = (gold_logit - logits.logsumexp(-1)).double().cpu()
            greedy = (gold_logit >= logits.max(-1).values).cpu()
            counts = want.sum(1)
            owner = torch.repeat_interleave(torch.arange(len(part)), counts)
            sums = torch.zeros(len(part), dtype=torch.float64).index_add_(0, owner, logp)
            hits = torch.zeros(len(part), dtype=torch.long).index_add_(0, owner, greedy.long())
            k = torch.arange(owner.numel()) - torch.repeat_interleave(torch.cumsum(counts, 0) - counts, counts)
            miss = torch.where(greedy, torch.iinfo(torch.long).max, k)
            run = torch.full((len(part),), torch.iinfo(torch.long).max).scatter_reduce(0, owner, miss, "amin")
            run = torch.minimum(run, counts)
            for r, i in enumerate(part):
                out[i] = RowScore(float(sums[r]), bool(hits[r] == counts[r]), int(counts[r]), int(run[r]))
            if progress is not None:
                progress(len(part))
            lo = hi
    finally:
        model.train(was_training)
    return out  # type: ignore[return-value]


def document_rows(tokens: Sequence[int], start: int, stop: int, max_len: int) -> list[tuple[list[int], int]]:
    """Rows scoring the document ``start tokens stop`` (every token after the start marker is a target),
    in windows when it is longer than ``max_len``."""
    seq = [start, *tokens, stop]
    if len(seq) <= max_len:
        return [(seq, 1)]
    chunk = max(1, max_len // 2)
    rows = []
    for a in range(1, len(seq), chunk):
        b = min(a + chunk, len(seq))
        c = max(0, b - max_len)
        rows.append((seq[c:b], a - c))
    return rows


def continuation_rows(context: Sequence[int], continuation: Sequence[int], bos: int, eos: int,
                      direction: str, max_len: int) -> list[tuple[list[int], int, int]]:
    """The rows of one request, each with its sign: l2r ``[(BOS x y, +1)]``; r2l the two documents
    ``EOS rev(y) rev(x) BOS`` (+1) and ``EOS rev(x) BOS`` (−1)."""
    x, y = list(context), list(continuation)
    if not y:
        raise BiglmError("empty continuation: there is nothing to score")
    if len(y) + 1 > max_len:
        raise BiglmError(f"continuation of {len(y)} tokens does not fit the model's maximum length {max_len}")
    if direction == "l2r":
        keep = max_len - 1 - len(y)
        x = x[len(x) - keep:] if len(x) > keep else x
        return [([bos, *x, *y], 1 + len(x), 1)]
    keep = max_len - 2 - len(y)
    whole = len(x) <= keep
    x_tail = x if whole else x[len(x) - max(keep, 0):]
    closing = [bos] if whole else []  # a cut context no longer starts the document
    return [([eos, *reversed(y), *reversed(x_tail), *closing], 1, 1),
            ([eos, *reversed(x_tail), *closing], 1, -1)]


@dataclass
class ARScore:
    """A request's score under the chosen direction, with each direction's own value when computed."""

    logprob: float
    is_greedy: bool
    l2r: float | None = None
    r2l: float | None = None
    tokens: int = 0
    """Tokens scored (targets of one direction): for per-token figures."""


def _score_unique(model: nn.Module, rows: list[tuple[list[int], int]], pad_token_id: int, batch_tokens: int,
                  progress: Callable[[int], None] | None) -> list[RowScore]:
    """``score_rows`` over the distinct rows only (the context-only rows of R2L repeat across choices)."""
    first: dict[tuple[tuple[int, ...], int], int] = {}
    index = [first.setdefault((tuple(r), s), len(first)) for r, s in rows]
    unique = [(list(r), s) for r, s in first]
    scores = score_rows(model, unique, pad_token_id=pad_token_id, batch_tokens=batch_tokens, progress=progress)
    return [scores[i] for i in index]


def _directions(direction: str) -> tuple[str, ...]:
    if direction not in AR_DIRECTIONS:
        raise BiglmError(f"direction={direction!r}: expected one of {', '.join(AR_DIRECTIONS)}")
    return ("l2r", "r2l") if direction == "mean" else (direction,)


def _combine(direction: str, parts: dict[str, list[float]], greedy: dict[str, list[bool]],
             tokens: list[int]) -> list[ARScore]:
    out = []
    for i, n in enumerate(tokens):
        l2r = parts["l2r"][i] if "l2r" in parts else None
        r2l = parts["r2l"][i] if "r2l" in parts else None
        value = (l2r + r2l) / 2 if direction == "mean" else (l2r if direction == "l2r" else r2l)
        first = "l2r" if "l2r" in greedy else "r2l"
        out.append(ARScore(float(value), greedy[first][i], l2r, r2l, n))
    return out


def score_continuations(model: nn.Module, requests: Sequence[tuple[Sequence[int], Sequence[int]]], *,
                        bos_token_id: int, eos_token_id: int, pad_token_id: int = 0, direction: str = "l2r",
                        batch_tokens: int = 16384,
                        progress: Callable[[int], None] | None = None) -> list[ARScore]:
    """``log p(continuation | context)`` of each ``(context ids, continuation ids)`` (no markers), in the
    order given (see the module docstring for the directions); ``is_greedy``: every continuation token
    is the model's arg-max (L2R when it is computed, else R2L)."""
    max_len = model.config.max_seq_len
    parts: dict[str, list[float]] = {}
    greedy: dict[str, list[bool]] = {}
    for d in _directions(direction):
        rows, owner, sign = [], [], []
        for i, (x, y) in enumerate(requests):
            for seq, start, sg in continuation_rows(x, y, bos_token_id, eos_token_id, d, max_len):
                rows.append((seq, start))
                owner.append(i)
                sign.append(sg)
        scores = _score_unique(model, rows, pad_token_id, batch_tokens, progress)
        total = [0.0] * len(requests)
        hit = [True] * len(requests)
        for i, sg, sc in zip(owner, sign, scores):
            total[i] += sg * sc.logprob
            if sg > 0 and d == "l2r":
                hit[i] = sc.is_greedy
            elif sg > 0:  # R2L: greedy over the continuation's tokens only (the first |y| targets)
                hit[i] = sc.greedy_run >= len(requests[i][1])
        parts[d], greedy[d] = total, hit
    return _combine(direction, parts, greedy, [len(y) for _, y in requests])


def score_documents(model: nn.Module, documents: Sequence[Sequence[int]], *, bos_token_id: int, eos_token_id: int,
                    pad_token_id: int = 0, direction: str = "l2r", batch_tokens: int = 16384,
                    progress: Callable[[int], None] | None = None) -> list[ARScore]:
    """The document log-likelihood of each token list (both boundary markers, see the module docstring)."""
    max_len = model.config.max_seq_len
    parts: dict[str, list[float]] = {}
    greedy: dict[str, list[bool]] = {}
    for d in _directions(direction):
        start, stop = (bos_token_id, eos_token_id) if d == "l2r" else (eos_token_id, bos_token_id)
        rows, owner = [], []
        for i, doc in enumerate(documents):
            toks = list(doc) if d == "l2r" else list(reversed(doc))
            for row in document_rows(toks, start, stop, max_len):
                rows.append(row)
                owner.append(i)
        scores = _score_unique(model, rows, pad_token_id, batch_tokens, progress)
        total = [0.0] * len(documents)
        hit = [True] * len(documents)
        for i, sc in zip(owner, scores):
            total[i] += sc.logprob
            hit[i] &= sc.is_greedy
        parts[d], greedy[d] = total, hit
    return _combine(direction, parts, greedy, [len(doc) + 1 for doc in documents])


def agreement(scores: Sequence[ARScore]) -> dict[str, float]:
    """How far the L2R and R2L estimates agree over ``scores`` that hold both: mean of each (nats per
    token), mean |L2R − R2L| per request and per token, and their Pearson correlation."""
    pairs = [(s.l2r, s.r2l, s.tokens) for s in scores if s.l2r is not None and s.r2l is not None]
    if not pairs:
        return {}
    l2r = torch.tensor([p[0] for p in pairs], dtype=torch.float64)
    r2l = torch.tensor([p[1] for p in pairs], dtype=torch.float64)
    tokens = torch.tensor([max(p[2], 1) for p in pairs], dtype=torch.float64)
    diff = (l2r - r2l).abs()
    corr = float(torch.corrcoef(torch.stack([l2r, r2l]))[0, 1]) if len(pairs) > 1 else float("nan")
    return {"n": float(len(pairs)), "l2r_nats_per_token": float(-(l2r.sum() / tokens.sum())),
            "r2l_nats_per_token": float(-(r2l.sum() / tokens.sum())),
            "mean_abs_diff": float(diff.mean()), "mean_abs_diff_per_token": float((diff / tokens).mean()),
            "mean_diff_l2r_minus_r2l": float((l2r - r2l).mean()), "pearson_r": corr}


__all__ = ["AR_DIRECTIONS", "ARScore", "RowScore", "agreement", "continuation_rows", "document_rows",
           "score_continuations", "score_documents", "score_rows"]

