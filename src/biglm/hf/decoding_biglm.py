"""Parallel decoding for the exported masked model: ``BiGLMForMaskedLM.generate_parallel``.

A DELIBERATE, SELF-CONTAINED COPY of the greedy decoding of ``biglm/generate`` (``engine.py``, ``strategies.py``,
``commit.py``), written for transformers: ``biglm export-hf`` copies this file next to the weights as remote code
(``modeling_biglm.py`` imports it), so it imports only torch. ``tests/hf/test_hf_decoding.py`` fails when its
tokens differ from ``biglm.generate.generate_ids``'s for any strategy or commit rule.

Layout (BiGLM's prefix-blind one): X = ``BOS prompt`` attends X only; Y = L ``[MASK]`` tokens attends X and Y and
is refined over at most T passes. Unlike biglm's engine, **every pass recomputes the whole sequence X Y**: no
prefix cache and no (approximate) suffix caches; the tokens are the same as biglm's exact decoding. Prompts of
different lengths are left-padded (``attention_mask`` 0: padding attends padding only); each row's positions
count from its own BOS; Y's position j is |X| + j (``config.suffix_positions == "continue"``) or 1 + j
(``aligned``).

Strategies (greedy: the most probable token that is not banned; its *confidence* is its probability under the
whole softmax):

- ``mask-predict``: pass 0 predicts all of Y; pass t = 1..T-1 re-masks the n = ⌊L·(T−t)/T⌋ least confident
  tokens (ties: the lower position first) and predicts them again.
- ``threshold``: each pass predicts every masked position and commits by the commit rule; committed tokens stay.
- ``blocks``: Y in blocks of ``block_size`` left to right, ⌊T/blocks⌋ passes each (the remainder to the first
  blocks, at least one each), each block by Mask-Predict (``commit="mask-predict"``, the default) or by a commit
  rule, the later blocks still masked.

Commit rules (each also commits at least ⌈remaining / passes left⌉ of a row's most confident predictions, by
its own confidence): ``threshold`` (p ≥ threshold, default 0.9), ``factor`` (Fast-dLLM: the row's probabilities
sorted, p_1 ≥ p_2 ≥ …, the leading n with p_i ≥ 1 − factor/(i+1) for every i ≤ n; default 1.0), ``margin``
(top-1 minus top-2 probability, banned ids excluded, ≥ margin; default 0.5).

``eos_exit`` (``threshold``, ``blocks``): a row stops once it has a final EOS with only final tokens before it
(committed tokens are final; with Mask-Predict inside blocks, a block's tokens are final when the block ends);
the rest of the row is filled with EOS without passes. For models that pad their targets with EOS.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor
from transformers.utils import logging

logger = logging.get_logger(__name__)

STRATEGIES = ("mask-predict", "threshold", "blocks")
COMMIT_DEFAULTS = {"threshold": 0.9, "factor": 1.0, "margin": 0.5}
"""Commit rule -> its parameter's default; the parameter is named as the rule."""
COMMIT_RANGES = {"threshold": (0.0, 1.0, True), "factor": (0.0, math.inf, True), "margin": (0.0, 1.0, False)}
"""Commit rule -> (low, high, low end open) of its parameter."""
OPTIONS = {"mask-predict": (), "threshold": ("commit", "eos_exit", *COMMIT_DEFAULTS),
           "blocks": ("block_size", "commit", "eos_exit", *COMMIT_DEFAULTS)}
"""Strategy -> the options it takes."""


@dataclass
class ParallelDecodeOutput:
    """Per prompt: the generated ids and, with a tokenizer, the text."""

    sequences: Tensor
    """(B, max_new_tokens): every generated id (EOS and what follows included)."""
    token_ids: list[list[int]]
    """Generated ids up to (not including) the first EOS."""
    texts: list[str] | None
    """The decoded ``token_ids`` (special tokens skipped) when a tokenizer was given."""
    forward_passes: int
    """Forward passes over the batch (each over the whole sequence)."""


def rank_in_row(values: Tensor, eligible: Tensor, descending: bool) -> Tensor:
    """Rank (0 = first) of each eligible entry within its row; ineligible ones rank last; ties to the lower position."""
    keyed = values.masked_fill(~eligible, float("-inf") if descending else float("inf"))
    order = keyed.argsort(dim=1, descending=descending, stable=True)
    ranks = torch.empty_like(order)
    ranks.scatter_(1, order, torch.arange(order.shape[1], device=order.device).expand_as(order))
    return ranks


class _Rows:
    """The batch being decoded: left-padded prefixes X, the suffix Y (``tokens``, ``scores``) and one forward pass
    over X Y per ``predict`` call."""

    def __init__(self, model: Any, prefixes: list[list[int]], length: int, mask_id: int, pad_id: int,
                 banned: list[int]) -> None:
        device = model.get_input_embeddings().weight.device
        self.model, self.mask_id, self.passes = model, mask_id, 0
        lengths = torch.tensor([len(p) for p in prefixes], device=device)
        width = int(lengths.max())
        self.x = torch.tensor([[pad_id] * (width - len(p)) + p for p in prefixes], device=device)
        self.x_real = torch.arange(width, device=device)[None, :] >= (width - lengths)[:, None]
        x_pos = (torch.arange(width, device=device)[None, :] - (width - lengths)[:, None]).clamp_min(0)
        start = lengths if model.config.suffix_positions == "continue" else torch.ones_like(lengths)
        self.positions = torch.cat([x_pos, start[:, None] + torch.arange(length, device=device)], dim=1)
        self.regions = torch.cat([torch.zeros_like(self.x), torch.ones(len(prefixes), length, dtype=torch.long,
                                                                        device=device)], dim=1)
        self.tokens = torch.full((len(prefixes), length), mask_id, dtype=torch.long, device=device)
        self.scores = torch.zeros(self.tokens.shape, device=device)
        self.banned = torch.tensor(sorted(set(banned) | {mask_id}), dtype=torch.long, device=device)

    @property
    def masked(self) -> Tensor:
        return self.tokens == self.mask_id

    def remask(self, where: Tensor) -> None:
        self.tokens = self.tokens.masked_fill(where, self.mask_id)
        self.scores = self.scores.masked_fill(where, 0.0)

    def predict(self, where: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """One pass over X Y: at ``where`` (B, L) the greedy ids, their log-probabilities and top-1 minus top-2
        probability margins (each (B, L), 0 elsewhere)."""
        attention = torch.cat([self.x_real, torch.ones_like(self.tokens, dtype=torch.bool)], dim=1).long()
        logits = self.model(torch.cat([self.x, self.tokens], dim=1), attention_mask=attention, regions=self.regions,
                            position_ids=self.positions).logits[:, self.x.shape[1]:][where].float()
        ids = logits.index_fill(-1, self.banned, float("-inf")).argmax(dim=-1)
        logprobs = logits.log_softmax(dim=-1).gather(-1, ids[:, None])[:, 0]  # under the whole softmax
        top2 = logits.softmax(dim=-1).index_fill(-1, self.banned, 0.0).topk(2, dim=-1).values
        self.passes += 1
        return self._spread(ids, where), self._spread(logprobs, where), self._spread(top2[:, 0] - top2[:, 1], where)

    def _spread(self, values: Tensor, where: Tensor) -> Tensor:
        """``values`` (N,) at the N positions of ``where`` (row-major) in a (B, L) tensor, 0 elsewhere."""
        out = torch.zeros(self.tokens.shape, dtype=values.dtype, device=values.device)
        out[where] = values
        return out

    def fill(self, where: Tensor, ids: Tensor, logprobs: Tensor) -> None:
        self.tokens = torch.where(where, ids, self.tokens)
        self.scores = torch.where(where, logprobs, self.scores)

    def settle_at_eos(self, eos_id: int) -> None:
        """Fill with EOS every masked position of the rows whose decided (final) tokens hold an EOS with no masked
        position before it."""
        masked = self.masked
        is_eos = ~masked & (self.tokens == eos_id)
        first = torch.where(is_eos.any(dim=1), is_eos.to(torch.int8).argmax(dim=1), self.tokens.shape[1])
        columns = torch.arange(self.tokens.shape[1], device=self.tokens.device)[None, :]
        settled = is_eos.any(dim=1) & ~(masked & (columns < first[:, None])).any(dim=1)
        self.fill(masked & settled[:, None], torch.full_like(self.tokens, eos_id), torch.zeros_like(self.scores))


def mask_predict(rows: _Rows, steps: int, region: Tensor) -> None:
    """Mask-Predict over ``region`` (B, L) in at most ``steps`` passes."""
    lengths = region.sum(dim=1)
    for t in range(steps if bool(lengths.any()) else 0):
        if t == 0:
            where = region
        else:
            n = lengths * (steps - t) // steps
            if not bool(n.any()):
                return  # n only shrinks with t
            where = region & (rank_in_row(rows.scores, region, descending=False) < n[:, None])
        rows.remask(where)
        ids, logprobs, _ = rows.predict(where)
        rows.fill(where, ids, logprobs)


def commit_select(rule: str, value: float, logprobs: Tensor, margins: Tensor, where: Tensor, remaining: Tensor,
                  passes_left: int) -> Tensor:
    """The positions of ``where`` that ``rule`` commits, with at least ⌈remaining / passes_left⌉ per row (the most
    confident by the rule's confidence: the margin for ``margin``, else the probability)."""
    ranks = rank_in_row(margins if rule == "margin" else logprobs, where, descending=True)
    if rule == "threshold":
        keep = logprobs >= math.log(value)
    elif rule == "margin":
        keep = margins >= value
    else:  # factor: the passing ranks must run unbroken from the most confident
        passes = logprobs.exp() >= 1.0 - value / (ranks + 2).to(torch.float32)
        ordered = torch.zeros_like(passes).scatter_(1, ranks.clamp_max(passes.shape[1] - 1), passes & where)
        keep = ranks < ordered.to(torch.int8).cumprod(dim=1).sum(dim=1)[:, None]
    at_least = (remaining + passes_left - 1) // passes_left
    return where & (keep | (ranks < at_least[:, None]))


def commit_decode(rows: _Rows, steps: int, region: Tensor, rule: str, value: float, eos_id: int | None) -> None:
    """Predict ``region``'s masked positions each pass and commit by ``rule`` (never revised), ``steps`` passes at
    most; with ``eos_id`` (``eos_exit``) rows whose text is final are settled after each pass."""
    for t in range(steps):
        masked = rows.masked & region
        remaining = masked.sum(dim=1)
        if not bool(remaining.any()):
            return
        ids, logprobs, margins = rows.predict(masked)
        rows.fill(commit_select(rule, value, logprobs, margins, masked, remaining, steps - t), ids, logprobs)
        if eos_id is not None:
            rows.settle_at_eos(eos_id)


def decode_blocks(rows: _Rows, steps: int, block_size: int, rule: str, value: float, eos_id: int | None) -> None:
    """Blocks of ``block_size`` left to right, the ``steps`` passes shared out among them; with ``eos_id``
    (``eos_exit``) rows whose text is final are settled as each block starts."""
    width = rows.tokens.shape[1]
    count = max(1, -(-width // block_size))
    columns = torch.arange(width, device=rows.tokens.device)
    for b in range(count):
        if eos_id is not None and b > 0:  # the finished blocks are final now
            rows.settle_at_eos(eos_id)
        region = ((columns >= b * block_size) & (columns < (b + 1) * block_size))[None, :] & rows.masked
        block_steps = max(1, steps // count + (b < steps % count))
        if rule == "mask-predict":
            mask_predict(rows, block_steps, region)
        else:
            commit_decode(rows, block_steps, region, rule, value, eos_id)


def _commit_value(strategy: str, commit: str | None, values: dict[str, float | None]) -> tuple[str, float]:
    """The commit rule and its parameter; one-line errors for an unknown rule or another rule's parameter."""
    rules = ("mask-predict", *COMMIT_DEFAULTS) if strategy == "blocks" else tuple(COMMIT_DEFAULTS)
    rule = commit if commit is not None else rules[0]
    if rule not in rules:
        raise ValueError(f"unknown commit rule {str(rule)[:40]!r}: expected one of {', '.join(rules)}")
    for name, value in values.items():
        if value is not None and rule == "mask-predict":
            raise ValueError(f"option '{name}' needs a commit rule (commit='{name}'); blocks decode by Mask-Predict "
                             "without one")
        if value is not None and name != rule:
            raise ValueError(f"option '{name}' is the parameter of commit rule '{name}' (this decoding commits by "
                             f"'{rule}')")
    if rule == "mask-predict":
        return rule, 0.0
    value = values[rule] if values[rule] is not None else COMMIT_DEFAULTS[rule]
    low, high, low_open = COMMIT_RANGES[rule]
    ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
    if not (ok and (value > low if low_open else value >= low) and value <= high):
        raise ValueError(f"{rule}={str(value)[:40]}: must be in {'(' if low_open else '['}{low:g}, {high:g}]")
    return rule, float(value)


def check_options(strategy: str, options: dict[str, Any]) -> tuple[str, float]:
    """One-line errors for an unknown strategy or an option it does not take; returns the commit rule and value."""
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown strategy {str(strategy)[:40]!r}: expected one of {', '.join(STRATEGIES)}")
    for name, value in options.items():
        if value is not None and name not in OPTIONS[strategy]:
            accepted = ", ".join(sorted(OPTIONS[strategy])) or "none"
            raise ValueError(f"strategy '{strategy}' has no option '{name}' (options: {accepted})")
    if strategy == "mask-predict":
        return "mask-predict", 0.0
    block_size, eos_exit = options.get("block_size"), options.get("eos_exit")
    if block_size is not None and (not isinstance(block_size, int) or isinstance(block_size, bool) or block_size <= 0):
        raise ValueError(f"block_size={str(block_size)[:40]}: must be an integer > 0")
    if eos_exit is not None and not isinstance(eos_exit, bool):
        raise ValueError(f"eos_exit={str(eos_exit)[:40]}: must be true or false")
    return _commit_value(strategy, options.get("commit"), {k: options.get(k) for k in COMMIT_DEFAULTS})


def prompt_ids(input_ids: Any, attention_mask: Any, tokenizer: Any, text: Any) -> list[list[int]]:
    """The prompts as lists of ids (no BOS): ``text`` (a string or a list) through ``tokenizer``, or ``input_ids``
    (a list of ids, a list of lists, or a (B, T) tensor whose ``attention_mask`` 0 marks padding)."""
    if (text is None) == (input_ids is None):
        raise ValueError("generate_parallel: pass exactly one of input_ids and text")
    if text is not None:
        if tokenizer is None:
            raise ValueError("generate_parallel: text needs tokenizer=...")
        texts = [text] if isinstance(text, str) else list(text)
        return [list(tokenizer(t, add_special_tokens=False)["input_ids"]) for t in texts]
    if isinstance(input_ids, Tensor):
        ids = input_ids if input_ids.dim() == 2 else input_ids[None]
        real = torch.ones_like(ids, dtype=torch.bool) if attention_mask is None \
            else torch.as_tensor(attention_mask).bool()
        return [row[keep].tolist() for row, keep in zip(ids.cpu(), real.reshape(ids.shape).cpu())]
    rows = list(input_ids)
    return [list(map(int, r)) for r in rows] if rows and not isinstance(rows[0], int) else [list(map(int, rows))]


def banned_default(config: Any, tokenizer: Any) -> list[int]:
    """What biglm's decoding never emits: the export records it (``banned_token_ids``: [MASK], BOS, PAD unless it is
    EOS, the vocabulary's padding rows); else [MASK], BOS, PAD (unless EOS) and, with a tokenizer, the rows past it."""
    if getattr(config, "banned_token_ids", None) is not None:
        return list(config.banned_token_ids)
    banned = {config.mask_token_id, config.bos_token_id} | ({config.pad_token_id} - {config.eos_token_id})
    if tokenizer is not None:
        banned |= set(range(len(tokenizer), config.vocab_size))
    return sorted(i for i in banned if i is not None)


@torch.no_grad()
def generate_parallel(model: Any, input_ids: Any = None, attention_mask: Any = None, *, tokenizer: Any = None,
                      text: str | list[str] | None = None, max_new_tokens: int = 32, steps: int | None = None,
                      strategy: str = "mask-predict", block_size: int | None = None, commit: str | None = None,
                      threshold: float | None = None, factor: float | None = None, margin: float | None = None,
                      eos_exit: bool | None = None, banned_token_ids: list[int] | None = None,
                      **unknown: Any) -> ParallelDecodeOutput:
    """Generate ``max_new_tokens`` tokens after each prompt by greedy parallel decoding, as ``biglm generate`` does
    with the same options (see the module docstring), recomputing the whole sequence every pass.

    Prompts: ``input_ids`` without BOS (it is added) as a list of ids, a list of lists, or a (B, T) tensor with an
    optional ``attention_mask`` (0 = padding, either side); or ``text`` (a string or a list) with ``tokenizer``.
    A prompt too long for ``max_seq_len`` keeps its last tokens. ``steps`` is T (1..max_new_tokens; default
    min(10, max_new_tokens)). ``banned_token_ids`` replaces the ids never emitted (default: ``banned_default``).
    Returns a ``ParallelDecodeOutput``; unknown values raise a one-line ``ValueError``."""
    config = model.config
    if getattr(config, "attention_layout", "prefix_blind") != "prefix_blind":
        raise ValueError(f"generate_parallel: a model with attention_layout {config.attention_layout!r} does not "
                         "decode in parallel (a GLM model fills blanks with infill())")
    for name in unknown:
        why = " (the exported model recomputes the whole sequence every pass: no caches)" \
            if name in ("cache", "refresh", "prefix_cache") else ""
        raise ValueError(f"generate_parallel: unknown option '{name}'{why}")
    rule, value = check_options(strategy, {"block_size": block_size, "commit": commit, "threshold": threshold,
                                           "factor": factor, "margin": margin, "eos_exit": eos_exit})
    if eos_exit and config.eos_token_id is None:
        raise ValueError("eos_exit needs the tokenizer's EOS token (config.eos_token_id)")
    eos_id = config.eos_token_id if eos_exit else None
    if not isinstance(max_new_tokens, int) or max_new_tokens <= 0:
        raise ValueError(f"max_new_tokens={str(max_new_tokens)[:40]}: must be > 0")
    steps = min(10, max_new_tokens) if steps is None else steps
    if not isinstance(steps, int) or not 0 < steps <= max_new_tokens:
        raise ValueError(f"steps={str(steps)[:40]}: must be in 1..max_new_tokens={max_new_tokens}")
    budget = config.max_seq_len - max_new_tokens
    if budget < 2:
        raise ValueError(f"max_new_tokens={max_new_tokens} leaves no room for a prompt in max_seq_len="
                         f"{config.max_seq_len} (at most {config.max_seq_len - 2})")
    prompts = prompt_ids(input_ids, attention_mask, tokenizer, text)
    if not prompts or any(not p for p in prompts):
        raise ValueError("generate_parallel: every prompt needs at least one token")
    for i, p in enumerate(prompts):
        if len(p) + 1 > budget:
            logger.warning("prompt %d: %d tokens + BOS + %d new tokens exceed max_seq_len=%d: keeping its last %d "
                           "tokens", i, len(p), max_new_tokens, config.max_seq_len, budget - 1)
    prefixes = [[config.bos_token_id, *p[-(budget - 1):]] for p in prompts]
    pad = config.pad_token_id if config.pad_token_id is not None else config.eos_token_id
    banned = banned_default(config, tokenizer) if banned_token_ids is None else list(banned_token_ids)
    rows = _Rows(model, prefixes, max_new_tokens, config.mask_token_id, pad, banned)
    everything = torch.ones_like(rows.tokens, dtype=torch.bool)
    if strategy == "mask-predict":
        mask_predict(rows, steps, everything)
    elif strategy == "threshold":
        commit_decode(rows, steps, everything, rule, value, eos_id)
    else:
        decode_blocks(rows, steps, 32 if block_size is None else block_size, rule, value, eos_id)
    full = rows.tokens.cpu().tolist()
    eos = config.eos_token_id
    cut = [ids[:ids.index(eos)] if eos in ids else ids for ids in full]
    texts = [tokenizer.decode(ids, skip_special_tokens=True) for ids in cut] if tokenizer is not None else None
    return ParallelDecodeOutput(rows.tokens, cut, texts, rows.passes)
