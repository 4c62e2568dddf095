"""Exact chain-rule scoring of GLM models over part B (see ``biglm.evaluate.ar_scoring``'s docstring).

* ``log p(y | x)``: the row ``BOS x [gMASK] | [sop] y``, targets y (y continues x; no ``[eop]`` target,
  since the text may go on). A context too long for the model loses its oldest tokens. ``blank``
  chooses another blank token: ``[MASK]`` for a model pretrained on short blanks only (the ``glm``
  preset never sees ``[gMASK]``; the paper writes generation prompts with ``[MASK]``).
* ``log p(x)`` (``loglikelihood_rolling``): targets ``x EOS`` written in part B after ``BOS [gMASK]``;
  a text longer than the model is scored in windows of half the maximum length, each window's part A
  holding as much of the preceding text as fits (with BOS only when it reaches the document's start).

Every row is one pass of ``score_rows`` (batched by length): part A bidirectional, part B causal,
2D positions; the tests check the sums equal a token-by-token computation.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from torch import nn

from biglm.errors import BiglmError
from biglm.evaluate.ar_scoring import ARScore, score_rows
from biglm.generate.glm import GLMTokens


def continuation_row(context: Sequence[int], continuation: Sequence[int], tokens: GLMTokens,
                     max_len: int, blank: int | None = None) -> tuple[list[int], int, int]:
    """(row ids, first target index, part A length) of ``log p(continuation | context)``; ``blank`` is the
    blank token after the context (default ``[gMASK]``; ``[MASK]`` for a model trained on short blanks
    only, as the paper writes generation prompts)."""
    x, y = list(context), list(continuation)
    if not y:
        raise BiglmError("empty continuation: there is nothing to score")
    keep = max_len - 3 - len(y)
    if keep < 0:
        raise BiglmError(f"continuation of {len(y)} tokens does not fit the model's maximum length {max_len}")
    x = x[len(x) - keep:] if len(x) > keep else x
    a = [tokens.bos, *x, tokens.gmask if blank is None else blank]
    return [*a, tokens.sop, *y], len(a) + 1, len(a)


def document_rows(document: Sequence[int], tokens: GLMTokens, max_len: int,
                  blank: int | None = None) -> list[tuple[list[int], int, int]]:
    """Rows scoring ``document EOS`` in part B (after ``blank``, default ``[gMASK]``), in windows when it
    does not fit ``max_len``."""
    seq = [*document, tokens.eos]
    chunk = max(1, (max_len - 3) // 2) if len(seq) + 3 > max_len else len(seq)
    rows = []
    for lo in range(0, len(seq), chunk):
        hi = min(lo + chunk, len(seq))
        room = max_len - 3 - (hi - lo)  # part A: [BOS] context [gMASK]; part B: [sop] targets
        ctx_lo = max(0, lo - room)
        a = ([tokens.bos] if ctx_lo == 0 else []) + list(seq[ctx_lo:lo]) + [tokens.gmask if blank is None else blank]
        rows.append(([*a, tokens.sop, *seq[lo:hi]], len(a) + 1, len(a)))
    return rows


def _score(model: nn.Module, rows: list[tuple[list[int], int, int]], owner: list[int], n: int, pad_token_id: int,
           batch_tokens: int, progress: Callable[[int], None] | None) -> tuple[list[float], list[bool]]:
    scores = score_rows(model, [(r, s) for r, s, _ in rows], pad_token_id=pad_token_id, batch_tokens=batch_tokens,
                        progress=progress, part_a=[(a, a - 1) for _, _, a in rows])
    total, greedy = [0.0] * n, [True] * n
    for i, sc in zip(owner, scores):
        total[i] += sc.logprob
        greedy[i] &= sc.is_greedy
    return total, greedy


def score_glm_continuations(model: nn.Module, requests: Sequence[tuple[Sequence[int], Sequence[int]]],
                            tokens: GLMTokens, *, blank: int | None = None, batch_tokens: int = 16384,
                            progress: Callable[[int], None] | None = None) -> list[ARScore]:
    """``log p(continuation | context)`` of each ``(context ids, continuation ids)`` (no markers)."""
    max_len = model.config.max_seq_len
    rows = [continuation_row(x, y, tokens, max_len, blank) for x, y in requests]
    total, greedy = _score(model, rows, list(range(len(rows))), len(rows), tokens.pad, batch_tokens, progress)
    return [ARScore(t, g, t, None, len(y)) for t, g, (_, y) in zip(total, greedy, requests)]


def score_glm_documents(model: nn.Module, documents: Sequence[Sequence[int]], tokens: GLMTokens, *,
                        blank: int | None = None, batch_tokens: int = 16384,
                        progress: Callable[[int], None] | None = None) -> list[ARScore]:
    """``log p(document EOS)`` of each token list, written in part B after ``BOS [gMASK]`` (or ``blank``)."""
    rows, owner = [], []
    for i, doc in enumerate(documents):
        for row in document_rows(doc, tokens, model.config.max_seq_len, blank):
            rows.append(row)
            owner.append(i)
    total, greedy = _score(model, rows, owner, len(documents), tokens.pad, batch_tokens, progress)
    return [ARScore(t, g, t, None, len(d) + 1) for t, g, d in zip(total, greedy, documents)]


__all__ = ["continuation_row", "document_rows", "score_glm_continuations", "score_glm_documents"]
