"""The decoding engine on token ids: encode the prompts once, refine the suffix with a strategy.

Layout of one row: X = ``BOS prompt`` (no EOS), then Y = L [MASK] tokens refined over T passes. Under
the prefix-blind layout X never attends Y, so X's keys and values are the same in every pass:

- ``encode_prefix`` runs X once with ``use_cache=True`` (the **exact prefix cache**). Prompts of
  different lengths are left-padded; pad tokens get document id -1, so Y (document 0) never attends
  them, and every row's positions count from its own first real token (pads sit at position 0).
- each pass then runs Y alone with ``past=cache`` and ``position_ids = prompt_len + j`` (``1 + j`` for a model
  whose ``config.suffix_positions`` is ``aligned``): the outputs equal those of the full sequence ``X Y`` (to
  float rounding), at a fraction of the cost.
  ``use_cache=False`` runs the full sequence every pass instead (same layout, same positions).

Rows of Y shorter than the batch's longest (length candidates) are right-padded with document id -1.
Only the positions being predicted go through the LM head (``logits_mask``). ``encode_prefix`` and the suffix
pass live in ``biglm.generate.prefix``; the ``blocks`` strategy may also reuse Y's own keys and values between
passes (the approximate suffix caches, ``cache='blocks' | 'dual'``: ``biglm.generate.suffix_cache``).

``encode_prefix`` + ``decode`` are the building blocks (evaluation uses them directly);
``generate_ids`` adds BOS, truncation, length candidates and EOS cutting.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from biglm.errors import BiglmError
from biglm.generate.commit import Predictions
from biglm.generate.length import length_candidates, pick_best
from biglm.generate.prefix import PAD_DOCUMENT, EncodedPrefix, encode_prefix, suffix_forward, suffix_logits
from biglm.generate.sampling import SamplingConfig, choose_tokens, seeded_generator
from biglm.generate.strategies import DecodeState, StepRule, get_strategy, run_strategy, start_strategy
from biglm.generate.suffix_cache import SuffixRunner, start_suffix_cache

__all__ = ["PAD_DOCUMENT", "DecodeResult", "EncodedPrefix", "GenerationOutput", "decode", "encode_prefix",
           "generate_ids", "start_decoding", "suffix_forward", "suffix_logits"]

log = logging.getLogger("biglm.generate")


@dataclass
class DecodeResult:
    tokens: Tensor
    """(N, L) final suffix tokens (only ``active`` positions are meaningful)."""
    scores: Tensor
    """(N, L) log-probability of each final token when it was last predicted."""
    active: Tensor
    forward_passes: int
    trajectory: list[Tensor] = field(default_factory=list)
    """Suffix fed to each pass ([MASK] where undecided), then the final suffix; (N, L) each."""


def banned_tensor(banned_token_ids: Sequence[int], mask_token_id: int, device: torch.device) -> Tensor:
    """The ids never chosen: ``banned_token_ids`` and [MASK], as a sorted (K,) tensor."""
    return torch.tensor(sorted(set(banned_token_ids) | {mask_token_id}), dtype=torch.long, device=device)


def fill_predictions(logits: Tensor, tokens: Tensor, where: Tensor, sampling: SamplingConfig,
                     generator: torch.Generator | None, banned: Tensor | None, margins: bool = False) -> Predictions:
    """A pass's predictions as a strategy takes them: tokens chosen from ``logits`` (N, V), the N positions of
    ``where`` (B, L) in row-major order, written into a copy of ``tokens`` (B, L), their log-probabilities
    (B, L) (0 elsewhere) and, with ``margins``, the top-1 minus top-2 probability of each position's
    distribution (banned ids excluded)."""
    ids, logprobs = choose_tokens(logits, sampling, generator, banned)
    out_ids = tokens.clone()
    out_ids[where] = ids
    out_scores = torch.zeros(tokens.shape, dtype=torch.float32, device=tokens.device)
    out_scores[where] = logprobs
    out_margins = None
    if margins:
        probs = logits.float().softmax(dim=-1)
        if banned is not None and banned.numel():
            probs = probs.index_fill(-1, banned, 0.0)
        top = probs.topk(2, dim=-1).values if probs.shape[-1] > 1 else F.pad(probs, (0, 1))
        out_margins = torch.zeros(tokens.shape, dtype=torch.float32, device=tokens.device)
        out_margins[where] = top[:, 0] - top[:, 1]
    return Predictions(out_ids, out_scores, out_margins)


def start_decoding(strategy: str, state: DecodeState, steps: int, prefix_cached: bool,
                   options: dict[str, Any]) -> tuple[StepRule, SuffixRunner]:
    """The strategy's rule on ``state`` and the suffix cache it runs with (options ``cache`` and ``refresh``; the
    rest are the strategy's), each checked with one-line errors."""
    options = dict(options)
    cache, refresh = options.pop("cache", None) or "prefix", options.pop("refresh", None)
    rule = start_strategy(strategy, state, steps, **options)
    runner = start_suffix_cache(cache, refresh, getattr(rule, "blockwise", False), prefix_cached)
    return rule, runner


class _ModelPredictor:
    """The strategies' view of the model: predict the selected positions, count passes, record inputs."""

    def __init__(self, model: nn.Module, prefix: EncodedPrefix, active: Tensor, runner: SuffixRunner,
                 sampling: SamplingConfig, generator: torch.Generator | None, banned: Tensor | None, record: bool,
                 on_pass: Callable[[int, Tensor], None] | None = None) -> None:
        self.model, self.prefix, self.active, self.runner, self.sampling = model, prefix, active, runner, sampling
        self.generator, self.banned, self.on_pass = generator, banned, on_pass
        self.passes = 0
        self.trajectory: list[Tensor] | None = [] if record else None

    def __call__(self, tokens: Tensor, where: Tensor, span: tuple[int, int] | None = None,
                 margins: bool = False) -> Predictions:
        where = where & self.active
        if self.trajectory is not None:
            self.trajectory.append(tokens.to("cpu", copy=True))
        if self.on_pass is not None:
            self.on_pass(self.passes, tokens.to("cpu", copy=True))
        logits = self.runner(self.model, self.prefix, tokens, self.active, where, span)
        self.passes += 1
        return fill_predictions(logits, tokens, where, self.sampling, self.generator, self.banned, margins)


@torch.inference_mode()
def decode(model: nn.Module, prefix: EncodedPrefix, active: Tensor, *, steps: int, mask_token_id: int,
           strategy: str = "mask-predict", sampling: SamplingConfig | None = None,
           generator: torch.Generator | None = None, banned_token_ids: Sequence[int] = (),
           record_trajectory: bool = False, on_pass: Callable[[int, Tensor], None] | None = None,
           eos_token_id: int | None = None, **strategy_options: Any) -> DecodeResult:
    """Refine an all-[MASK] suffix after ``prefix`` with ``strategy`` in at most ``steps`` passes
    (``blocks``: at least one per block). ``active`` (B, L) bool gives each row's target positions.
    ``strategy_options``: the strategy's, and ``cache`` / ``refresh`` (``biglm.generate.suffix_cache``).
    ``on_pass(t, tokens)`` sees the suffix fed to pass t ((B, L) on the CPU) as it happens."""
    if steps <= 0:
        raise BiglmError(f"steps={steps}: must be > 0")
    device = prefix.input_ids.device
    active = active.to(device)
    banned = banned_tensor(banned_token_ids, mask_token_id, device)
    state = DecodeState.all_masked(active, mask_token_id, eos_token_id)
    rule, runner = start_decoding(strategy, state, steps, prefix.cache is not None, strategy_options)
    predictor = _ModelPredictor(model, prefix, active, runner, sampling or SamplingConfig(), generator, banned,
                                record_trajectory, on_pass)
    run_strategy(rule, state, predictor)
    trajectory = predictor.trajectory or []
    if record_trajectory:
        trajectory.append(state.tokens.cpu())
    return DecodeResult(state.tokens, state.scores, active, predictor.passes, trajectory)


@dataclass
class GenerationOutput:
    """Per prompt: the chosen suffix, cut at the first EOS, and how it was found."""

    token_ids: list[list[int]]
    """Generated ids up to (not including) the first EOS."""
    full_token_ids: list[list[int]]
    """All ``lengths[i]`` generated ids, EOS and after included."""
    lengths: list[int]
    """Target length decoded (the chosen candidate with ``length='predict'``)."""
    scores: list[float]
    """Average log-probability of the generated tokens."""
    prompt_lengths: list[int]
    """Tokens in X after truncation (BOS included)."""
    forward_passes: int
    """Model calls for the whole batch (prefix pass included)."""
    trajectories: list[list[list[int]]] | None = None
    """Per prompt, per pass: the suffix fed to the model ([MASK] id where undecided), then the final."""
    candidates: list[list[int]] | None = None
    """With ``length='predict'``: the candidate lengths decoded for each prompt, best-ranked first."""


def prepare_prefixes(prompts: Sequence[Sequence[int]], bos_token_id: int, max_new_tokens: int,
                     max_seq_len: int) -> list[list[int]]:
    """``BOS prompt`` per prompt, left-truncated (with a warning) so that X + Y fits ``max_seq_len``."""
    if max_new_tokens <= 0:
        raise BiglmError(f"max_new_tokens={max_new_tokens}: must be > 0")
    budget = max_seq_len - max_new_tokens
    if budget < 2:
        raise BiglmError(f"max_new_tokens={max_new_tokens} leaves no room for a prompt in the model's "
                         f"max_seq_len={max_seq_len} (at most {max_seq_len - 2})")
    out = []
    for i, p in enumerate(prompts):
        if len(p) == 0:
            raise BiglmError(f"prompt {i} is empty")
        p = list(p)
        if len(p) + 1 > budget:
            log.warning("prompt %d: %d tokens + BOS + %d new tokens exceed max_seq_len=%d: keeping its "
                        "last %d tokens", i, len(p), max_new_tokens, max_seq_len, budget - 1)
            p = p[len(p) - (budget - 1):]
        out.append([bos_token_id, *p])
    return out


@torch.inference_mode()
def generate_ids(model: nn.Module, prompts: Sequence[Sequence[int]], *, bos_token_id: int,
                 eos_token_id: int | None, mask_token_id: int, pad_token_id: int = 0,
                 max_new_tokens: int = 32, steps: int = 10, strategy: str = "mask-predict",
                 sampling: SamplingConfig | None = None, seed: int | None = None, prefix_cache: bool = True,
                 length: Literal["fixed", "predict"] = "fixed", length_candidates_k: int = 3,
                 length_rule: str = "joint", banned_token_ids: Sequence[int] = (), record_trajectory: bool = False,
                 on_pass: Callable[[int, list[list[int]]], None] | None = None,
                 **strategy_options: Any) -> GenerationOutput:
    """Generate a suffix for each prompt (token ids without BOS). ``max_new_tokens`` is the length L
    with ``length='fixed'`` and the largest candidate with ``length='predict'`` (the winner picked by
    ``length_rule``, see ``biglm.generate.length``). ``on_pass(t, ids)`` is called as each pass starts with,
    per prompt, the suffix it is fed ([MASK] id where undecided; with length candidates, the top-ranked
    candidate's): a live view of the refinement (the final text is the returned output)."""
    check_decoding(strategy, steps, max_new_tokens, length)
    if not prompts:
        raise BiglmError("no prompts given")
    prefixes = prepare_prefixes(prompts, bos_token_id, max_new_tokens, model.config.max_seq_len)
    prefix = encode_prefix(model, prefixes, pad_token_id=pad_token_id, use_cache=prefix_cache,
                           length_logits=length == "predict")
    passes = int(prefix_cache or length == "predict")
    batch = len(prefixes)
    prefix, row_lengths, cands = candidate_rows(prefix, length, length_candidates_k, max_new_tokens)
    k = row_lengths.shape[0] // batch
    active = target_mask(row_lengths)
    generator = None
    if sampling is not None and not sampling.greedy:
        generator = seeded_generator(prefix.input_ids.device, seed)
    shown = None
    if on_pass is not None:
        rows, lens = list(range(0, batch * k, k)), row_lengths.cpu().tolist()
        shown = lambda t, tokens: on_pass(t, [tokens[r, :lens[r]].tolist() for r in rows])
    result = decode(model, prefix, active, steps=steps, mask_token_id=mask_token_id, strategy=strategy,
                    sampling=sampling, generator=generator, banned_token_ids=banned_token_ids,
                    record_trajectory=record_trajectory, on_pass=shown, eos_token_id=eos_token_id,
                    **strategy_options)
    return collect_output(result, prefix, row_lengths, cands, length_rule, eos_token_id, prefixes, passes)


def check_decoding(strategy: str, steps: int, max_new_tokens: int, length: str) -> None:
    """One-line errors for a strategy, a number of passes or a length mode ``generate_ids`` cannot decode with."""
    get_strategy(strategy)
    if steps <= 0 or steps > max_new_tokens:
        raise BiglmError(f"steps={steps}: must be in 1..max_new_tokens={max_new_tokens}")
    if length not in ("fixed", "predict"):
        raise BiglmError(f"length={length!r}: expected 'fixed' or 'predict'")


def candidate_rows(prefix: EncodedPrefix, length: str, k: int,
                   max_new_tokens: int) -> tuple[EncodedPrefix, Tensor, Tensor | None]:
    """The rows to decode for ``prefix``'s B prompts: with ``length='predict'``, each prompt's ``k`` best
    length-head candidates (rows of a prompt adjacent, best-ranked first; returned as (B, k)), else one row
    of ``max_new_tokens``. Returns the prefix of each row, each row's target length and the candidates."""
    batch, device = prefix.input_ids.shape[0], prefix.input_ids.device
    if length != "predict":
        return prefix, torch.full((batch,), max_new_tokens, dtype=torch.long, device=device), None
    cands = length_candidates(prefix.length_logits, k, max_new_tokens)  # (B, k)
    rows = prefix.index_select(torch.arange(batch, device=device).repeat_interleave(cands.shape[1]))
    return rows, cands.flatten(), cands


def target_mask(row_lengths: Tensor) -> Tensor:
    """(N, max length) bool: each row's target positions."""
    return torch.arange(int(row_lengths.max()), device=row_lengths.device)[None, :] < row_lengths[:, None]


def collect_output(result: DecodeResult, prefix: EncodedPrefix, row_lengths: Tensor, cands: Tensor | None,
                   length_rule: str, eos_token_id: int | None, prefixes: Sequence[Sequence[int]],
                   passes: int) -> GenerationOutput:
    """Each prompt's winning candidate (by ``length_rule``), cut at EOS; ``passes`` made before ``result``'s."""
    batch, device = len(prefixes), row_lengths.device
    k = row_lengths.shape[0] // batch
    active = result.active
    length_logprobs = None
    if cands is not None:
        length_logprobs = prefix.length_logits.log_softmax(-1).gather(1, row_lengths[:, None])[:, 0]
    best = pick_best(result.scores, active, k, length_rule, length_logprobs) if k > 1 \
        else torch.arange(batch, device=device)
    tokens, scores = result.tokens[best].cpu(), result.scores[best].float().cpu()
    chosen = row_lengths[best].cpu().tolist()
    full = [tokens[i, :n].tolist() for i, n in enumerate(chosen)]
    return GenerationOutput(
        token_ids=[cut_at_eos(ids, eos_token_id) for ids in full],
        full_token_ids=full,
        lengths=chosen,
        scores=[float(scores[i, :n].mean()) for i, n in enumerate(chosen)],
        prompt_lengths=[len(p) for p in prefixes],
        forward_passes=passes + result.forward_passes,
        trajectories=[[step[r, :n].tolist() for step in result.trajectory]
                      for r, n in zip(best.cpu().tolist(), chosen)] if result.trajectory else None,
        candidates=cands.cpu().tolist() if cands is not None else None,
    )


def cut_at_eos(ids: Sequence[int], eos_token_id: int | None) -> list[int]:
    """``ids`` up to (not including) the first EOS."""
    ids = list(ids)
    if eos_token_id is not None and eos_token_id in ids:
        return ids[:ids.index(eos_token_id)]
    return ids
