"""Choosing a token at each position being predicted: greedy, or seeded temperature / top-k / top-p sampling.

Whatever the rule, the *confidence* reported for a chosen token is its log-probability under the model
(``log_softmax`` of the raw logits over the whole vocabulary): temperature and the top-k / top-p filters
only change which token is drawn, not how sure the model is of it. Mask-Predict re-masks by this
confidence, the threshold strategy compares it with its threshold, and length candidates are ranked by
its average.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from biglm.errors import BiglmError, check

TEMPERATURE_RANGE = (1e-3, 1e3)
"""Sampling temperatures allowed besides 0 (greedy): dividing float32 logits by a smaller one overflows to
infinity, by a larger one (beyond float32's range) to 0 (NaN probabilities either way); both ends are far
outside any useful setting."""
SEED_RANGE = (-(2**63), 2**64 - 1)
"""Seeds a torch generator takes."""


def check_seed(seed: object, name: str = "seed") -> None:
    """A one-line ``BiglmError`` unless ``seed`` is None or an integer in ``SEED_RANGE``."""
    ok = seed is None or (isinstance(seed, int) and not isinstance(seed, bool) and
                          SEED_RANGE[0] <= seed <= SEED_RANGE[1])
    check(ok, f"{name}={str(seed)[:40]}: must be an integer from -2**63 to 2**64-1", BiglmError)


def seeded_generator(device: torch.device | str, seed: int | None) -> torch.Generator:
    """A generator on ``device`` seeded with ``seed`` (checked by ``check_seed``), or randomly when None."""
    check_seed(seed)
    generator = torch.Generator(device=device)
    if seed is None:
        generator.seed()
    else:
        generator.manual_seed(seed)
    return generator


@dataclass(frozen=True)
class SamplingConfig:
    """``temperature == 0`` is greedy (argmax); otherwise sample from softmax(logits / temperature)
    restricted to the ``top_k`` most probable tokens (0 = no limit) and to the smallest set whose
    probability reaches ``top_p`` (1.0 = no limit)."""

    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 1.0

    def __post_init__(self) -> None:
        low, high = TEMPERATURE_RANGE
        t = self.temperature
        check(isinstance(t, int | float) and (t == 0 or low <= t <= high),
              f"temperature={str(t)[:40]}: must be 0 (greedy) or from {low:g} to {high:g}", BiglmError)
        check(isinstance(self.top_k, int) and self.top_k >= 0,
              f"top_k={str(self.top_k)[:40]}: must be an integer >= 0 (0 = no limit)", BiglmError)
        check(isinstance(self.top_p, int | float) and 0.0 < self.top_p <= 1.0,
              f"top_p={str(self.top_p)[:40]}: must be in (0, 1]", BiglmError)

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0


def filter_logits(logits: Tensor, top_k: int = 0, top_p: float = 1.0) -> Tensor:
    """``logits`` (N, V) with everything outside the top-k / nucleus set to -inf (the best token always stays)."""
    if top_k > 0 and top_k < logits.shape[-1]:
        kth = logits.topk(top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = logits.sort(dim=-1, descending=True)
        probs = sorted_logits.softmax(dim=-1)
        # Drop a token when the tokens ranked above it already reach top_p.
        drop_sorted = (probs.cumsum(dim=-1) - probs) >= top_p
        drop_sorted[..., 0] = False
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    return logits


def choose_tokens(logits: Tensor, config: SamplingConfig, generator: torch.Generator | None = None,
                  banned: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Pick one token per row of ``logits`` (N, V).

    Returns ``(ids (N,), logprobs (N,))``: the chosen ids and their log-probabilities under the model
    (float32; the softmax over the whole vocabulary, untempered and unfiltered). ``banned`` (K,) ids
    are never chosen ([MASK], BOS, padding rows of the vocabulary...). Sampling draws from
    ``generator``, so a seeded generator gives the same tokens every run.
    """
    logits = logits.float()
    logprobs = logits.log_softmax(dim=-1)
    if banned is not None and banned.numel():
        logits = logits.index_fill(-1, banned.to(logits.device), float("-inf"))
    if config.greedy or logits.shape[0] == 0:
        ids = logits.argmax(dim=-1)
    else:
        filtered = filter_logits(logits / config.temperature, config.top_k, config.top_p)
        ids = torch.multinomial(filtered.softmax(dim=-1), 1, generator=generator).squeeze(-1)
    return ids, logprobs.gather(-1, ids[:, None]).squeeze(-1)


def choose_row_tokens(logits: Tensor, configs: Sequence[SamplingConfig],
                      generators: Sequence[torch.Generator | None]) -> Tensor:
    """One token id per row of ``logits`` (N, V), row i chosen by ``configs[i]`` drawing from ``generators[i]``:
    exactly what ``choose_tokens`` picks for that row alone (rows of a continuous batch, each with its own
    settings and seeded generator; the greedy rows are chosen together)."""
    ids = torch.zeros(logits.shape[0], dtype=torch.long, device=logits.device)
    greedy = [i for i, c in enumerate(configs) if c.greedy]
    if greedy:
        index = torch.tensor(greedy, device=logits.device)
        ids[index] = choose_tokens(logits[index], SamplingConfig())[0]
    for i, (config, generator) in enumerate(zip(configs, generators)):
        if not config.greedy:
            ids[i] = choose_tokens(logits[i:i + 1], config, generator)[0][0]
    return ids
