"""GLM's autoregressive blank infilling (GLM paper §2.2–2.3) as a pure data transform.

Every packed document (piece) of a row becomes its own GLM sample, in place:

- **Spans** are chosen by the row's task (drawn per row with ``blank_prob`` / ``sentence_prob`` /
  ``gen_prob``): *blank* spans with lengths ~ Poisson(λ) truncated to 1..``max_span``, drawn until at
  least ``mask_ratio`` of the document is covered and placed with at least one kept token between two
  spans (the authors' placement); *sentence* spans: whole sentences (ending in a token of
  ``sentence_ends``) drawn in random order until ``sentence_ratio`` is covered; *generation*: one span
  at the document's end covering a share uniform in [``gen_min_ratio``, ``gen_max_ratio``].
  A leading BOS and (except for generation) a trailing EOS are never inside a span.
- **Part A** is the document with each span replaced by one blank token (``[MASK]``, ``[sMASK]`` or
  ``[gMASK]``); **part B** follows it: the spans in random order (eq. 3's permutation), each as
  ``[sop] span`` with targets ``span [eop]`` (the paper's [START] / [END]).
- **Attention**: the ``prefix_lm`` layout per document: A attends A (bidirectional); B attends A and
  the B tokens up to itself. Regions: 0 = A, 1 = B.
- **2D positions** (``position_ids`` (B, W, 2)): the first id is the token's position in part A (for B
  tokens: the position of its span's blank), the second its position inside the span (0 in A, 1..len+1
  in B). Example (the paper's Figure 2, 0-based): x0..x5 with spans [x2] and [x4 x5] →
  A = x0 x1 [M] x3 [M] at (0,0) (1,0) (2,0) (3,0) (4,0); B (order 2, 1) = [S] x4 x5 [S] x2 at
  (4,1) (4,2) (4,3) (2,1) (2,2), targets x4 x5 [E] x2 [E].

A document grows by two tokens per span (its blank in A and its [sop] in B; the span's tokens move),
so a row of T tokens with k spans becomes T + 2k wide; the batcher pads rows to the widest
(padding has document id -1 and no loss). Documents shorter than ``min_loss_tokens`` stay in part A
without blanks. The work per row is a Python loop over its documents and spans (a few spans per
hundred tokens), cheap next to a forward pass.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from torch import Tensor

from biglm.attention import AttentionLayout
from biglm.errors import ConfigError
from biglm.objectives.base import IGNORE_INDEX, Batch
from biglm.objectives.config import GLMObjectiveConfig

BLANK, SENTENCE, GEN = 0, 1, 2
"""The three GLM tasks (blank token ``[MASK]``, ``[sMASK]``, ``[gMASK]``)."""
TASK_NAMES = ("blank", "sentence", "gen")
GLM_SPECIAL_KEYS = ("bos", "eos", "pad", "smask", "gmask", "sop", "eop")


def truncated_poisson(lam: float, max_len: int) -> Tensor:
    """P(k) ∝ λ^k e^-λ / k! for k = 1..max_len (float64, sums to 1)."""
    k = torch.arange(1, max_len + 1, dtype=torch.float64)
    logp = k * math.log(lam) - lam - torch.lgamma(k + 1)
    p = torch.exp(logp - logp.max())
    return p / p.sum()


class GLMObjective:
    """Packed rows → GLM batches (see the module docstring)."""

    def __init__(self, config: GLMObjectiveConfig, mask_token_id: int, vocab_size: int,
                 specials: Mapping[str, Any] | None = None) -> None:
        specials = dict(specials or {})
        missing = [k for k in GLM_SPECIAL_KEYS if specials.get(k) is None]
        if missing:
            raise ConfigError(f"the glm objective needs the tokenizer's {', '.join(missing)} token ids (a glm run "
                              "adds [sMASK], [gMASK], [sop] and [eop] to the tokenizer)")
        self.config = config
        self.vocab_size = vocab_size
        self.bos, self.eos, self.pad = int(specials["bos"]), int(specials["eos"]), int(specials["pad"])
        self.sop, self.eop = int(specials["sop"]), int(specials["eop"])
        self.blank_ids = (int(mask_token_id), int(specials["smask"]), int(specials["gmask"]))
        self.sentence_ends = frozenset(int(i) for i in specials.get("sentence_ends", ()))
        self.span_probs = truncated_poisson(config.poisson_lambda, config.max_span)
        self.task_cdf = torch.tensor([config.blank_prob, config.blank_prob + config.sentence_prob], dtype=torch.float64)

    # --- spans --------------------------------------------------------------------------------------
    def row_task(self, generator: torch.Generator) -> int:
        u = torch.rand(1, generator=generator, dtype=torch.float64)
        return int((u >= self.task_cdf).sum())

    def _poisson_lengths(self, room: int, generator: torch.Generator) -> list[int]:
        """Span lengths drawn until they cover ``mask_ratio · room``, cut to fit ``room`` with separators."""
        target = self.config.mask_ratio * room
        draws = torch.multinomial(self.span_probs, max(1, math.ceil(target)), replacement=True,
                                  generator=generator) + 1
        cum = torch.cumsum(draws, 0)
        k = int((cum < target).sum()) + 1
        lengths = draws[:k].tolist()
        while lengths and sum(lengths) + len(lengths) - 1 > room:  # too long for the document: shorten the last
            excess = sum(lengths) + len(lengths) - 1 - room
            if lengths[-1] > excess:
                lengths[-1] -= excess
            else:
                lengths.pop()
        return lengths

    @staticmethod
    def _place(lengths: list[int], lo: int, room: int, generator: torch.Generator) -> list[tuple[int, int]]:
        """Spans of ``lengths`` (in that order) inside [lo, lo + room), at least one token apart, uniform gaps."""
        free = room - sum(lengths) - len(lengths) + 1
        places = torch.randint(0, free + 1, (len(lengths),), generator=generator).sort().values.tolist()
        spans, offset = [], lo
        for place, length in zip(places, lengths):
            spans.append((offset + place, length))
            offset += length + 1
        return spans

    def _sentence_spans(self, tokens: list[int], lo: int, hi: int, generator: torch.Generator) -> list[tuple[int, int]]:
        sentences, start = [], lo
        for i in range(lo, hi):
            if tokens[i] in self.sentence_ends or i == hi - 1:
                sentences.append((start, i + 1 - start))
                start = i + 1
        target = self.config.sentence_ratio * (hi - lo)
        chosen, covered = [], 0
        for j in torch.randperm(len(sentences), generator=generator).tolist():
            if covered >= target:
                break
            chosen.append(sentences[j])
            covered += sentences[j][1]
        return sorted(chosen)

    def spans(self, tokens: list[int], task: int, generator: torch.Generator) -> list[tuple[int, int]]:
        """(start, length) of the spans of one document, sorted by start."""
        n = len(tokens)
        if n < self.config.min_loss_tokens:
            return []
        lo = 1 if tokens[0] == self.bos else 0
        if task == GEN:  # one span up to the document's end (its EOS included: the model learns to end)
            room = n - lo
            first = max(1, math.ceil(self.config.gen_min_ratio * room))
            last = max(first, math.floor(self.config.gen_max_ratio * room))
            length = int(torch.randint(first, last + 1, (1,), generator=generator))
            return [(n - length, length)]
        hi = n - 1 if tokens[-1] == self.eos and n - 1 > lo else n
        if task == SENTENCE:
            return self._sentence_spans(tokens, lo, hi, generator)
        lengths = self._poisson_lengths(hi - lo, generator)
        return self._place(lengths, lo, hi - lo, generator) if lengths else []

    # --- rows ---------------------------------------------------------------------------------------
    def _row(self, ids: list[int], docs: list[int], generator: torch.Generator) -> list[list[int]]:
        """One row → [ids, labels, first position ids, second position ids, document ids, regions]."""
        task = self.row_task(generator)
        blank = self.blank_ids[task]
        out: list[list[int]] = [[], [], [], [], [], []]
        o_ids, o_lab, o_p1, o_p2, o_doc, o_reg = out
        s, T = 0, len(ids)
        while s < T:
            e = s
            while e < T and docs[e] == docs[s]:
                e += 1
            doc, tokens = docs[s], ids[s:e]
            spans = self.spans(tokens, task, generator) if doc >= 0 else []
            part_a, blanks, cursor = [], [], 0
            for start, length in spans:
                part_a += tokens[cursor:start]
                blanks.append(len(part_a))
                part_a.append(blank)
                cursor = start + length
            part_a += tokens[cursor:]
            n_a = len(part_a)
            base = 0 if self.config.reset_position_ids else len(o_ids)
            blanks = [base + b for b in blanks]
            o_ids += part_a
            o_p1 += list(range(base, base + n_a)) if doc >= 0 else [0] * n_a
            o_lab += [IGNORE_INDEX] * n_a
            o_p2 += [0] * n_a
            o_doc += [doc] * n_a
            o_reg += [0] * n_a
            order = torch.randperm(len(spans), generator=generator).tolist() if self.config.shuffle_spans \
                else list(range(len(spans)))
            for i in order:
                start, length = spans[i]
                span = tokens[start:start + length]
                o_ids += [self.sop, *span]
                o_lab += [*span, self.eop]
                o_p1 += [blanks[i]] * (length + 1)
                o_p2 += list(range(1, length + 2))
                o_doc += [doc] * (length + 1)
                o_reg += [1] * (length + 1)
            s = e
        return out

    def __call__(self, input_ids: Tensor, document_ids: Tensor, generator: torch.Generator) -> Batch:
        """``input_ids`` and ``document_ids`` are (B, T) packed rows (document id -1 = padding)."""
        B = input_ids.shape[0]
        rows = [self._row(input_ids[b].tolist(), document_ids[b].tolist(), generator) for b in range(B)]
        width = max(len(r[0]) for r in rows)
        # Columns filled through numpy: torch.tensor over Python lists costs several times the transform.
        fill = (self.pad, IGNORE_INDEX, 0, 0, -1, 0)
        cols = [np.full((B, width), value, dtype=np.int64) for value in fill]
        for b, row in enumerate(rows):
            for c, values in enumerate(row):
                cols[c][b, :len(values)] = values
        t = [torch.from_numpy(c) for c in cols]
        ids, labels = t[0].to(input_ids.dtype), t[1].to(input_ids.dtype)
        positions = torch.stack([t[2], t[3]], dim=-1)  # (B, W, 2)
        layout = AttentionLayout("prefix_lm", t[4].to(torch.int32), t[5].to(torch.int8))
        return Batch(ids, labels, positions, layout)


__all__ = ["BLANK", "GEN", "SENTENCE", "TASK_NAMES", "GLMObjective", "truncated_poisson"]
