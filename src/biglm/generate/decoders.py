"""The decoders ``generate()`` can run, by the name a model family picks (``Family.decoder``).

``mask-predict`` is the parallel engine (``biglm.generate.engine``: Mask-Predict, threshold, blocks);
``autoregressive`` the token-by-token loop with the KV cache (``biglm.generate.autoregressive``: greedy,
sampling, beam; ``direction='r2l'`` for a model that reads both ways); ``blank-infilling`` GLM's part B on
the same loop (``biglm.generate.glm``). Each decoder refuses the options it has no use for, in one line.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from biglm.errors import BiglmError
from biglm.families import Family, check_direction
from biglm.generate.autoregressive import AR_STRATEGIES, AROptions, generate_ar_ids
from biglm.generate.engine import GenerationOutput, generate_ids
from biglm.generate.glm import GLMTokens, infill_ids
from biglm.generate.sampling import SamplingConfig
from biglm.generate.specials import banned_ids, special_ids


@dataclass(frozen=True)
class DecodeRequest:
    """``generate()``'s decoding arguments, as one value every decoder reads."""

    max_new_tokens: int = 32
    steps: int = 10
    strategy: str | None = None
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    seed: int | None = None
    prefix_cache: bool = True
    length: str = "fixed"
    length_candidates: int = 3
    length_rule: str = "joint"
    return_trajectory: bool = False
    direction: str = "l2r"
    num_beams: int = 1
    length_penalty: float = 1.0
    no_repeat_ngram_size: int = 0
    min_new_tokens: int = 0
    early_stopping: bool = False
    strategy_options: dict[str, Any] = field(default_factory=dict)

    def ar_changes(self) -> list[str]:
        """The autoregressive options set to something other than their defaults."""
        base = DecodeRequest()
        return [k for k in ("direction", "num_beams", "length_penalty", "no_repeat_ngram_size", "min_new_tokens",
                            "early_stopping") if getattr(self, k) != getattr(base, k)]


Decoder = Callable[[nn.Module, Family, list[list[int]], Any, DecodeRequest], GenerationOutput]


def resolve_ar_strategy(strategy: str | None, temperature: float, num_beams: int) -> str:
    """``greedy``, ``sample`` or ``beam`` (default: beam when ``num_beams > 1``, sample when
    ``temperature > 0``, else greedy), checked against the other options."""
    if strategy is None:
        strategy = "beam" if num_beams > 1 else ("sample" if temperature > 0 else "greedy")
    if strategy not in AR_STRATEGIES:
        raise BiglmError(f"unknown strategy {str(strategy)[:40]!r} for an autoregressive model: expected one of "
                         f"{', '.join(AR_STRATEGIES)}")
    if strategy == "beam" and num_beams < 2:
        raise BiglmError(f"strategy 'beam' needs num_beams >= 2 (got {num_beams})")
    if strategy != "beam" and num_beams > 1:
        raise BiglmError(f"num_beams={num_beams} needs strategy 'beam' (got '{strategy}')")
    if strategy == "greedy" and temperature > 0:
        raise BiglmError(f"strategy 'greedy' takes no temperature (got {temperature}); use 'sample'")
    return strategy


def ar_options(model: nn.Module, tokenizer: Any, r: DecodeRequest, allow: Sequence[int] = ()) -> AROptions:
    """The options of the autoregressive loop from a request (strategy checked)."""
    if r.strategy_options:
        raise BiglmError(f"autoregressive decoding has no option '{sorted(r.strategy_options)[0]}'")
    s = r.sampling
    strategy = resolve_ar_strategy(r.strategy, s.temperature, r.num_beams)
    temperature = 1.0 if strategy == "sample" and s.temperature == 0 else s.temperature
    return AROptions(max_new_tokens=r.max_new_tokens, min_new_tokens=r.min_new_tokens,
                     sampling=SamplingConfig(temperature, s.top_k, s.top_p), num_beams=r.num_beams,
                     length_penalty=r.length_penalty, early_stopping=r.early_stopping,
                     no_repeat_ngram_size=r.no_repeat_ngram_size,
                     banned_token_ids=tuple(banned_ids(tokenizer, model.config.vocab_size, allow=allow)))


def decode_masked(model: nn.Module, family: Family, encoded: list[list[int]], tokenizer: Any,
                  r: DecodeRequest) -> GenerationOutput:
    """Mask-Predict and the parallel strategies on the engine, with the exact prefix cache."""
    changed = r.ar_changes()
    if changed:
        raise BiglmError(f"{changed[0]} is an option of autoregressive decoding; this model is "
                         f"{family.name!r} (Mask-Predict and parallel strategies)")
    ids = special_ids(tokenizer)
    return generate_ids(
        model, encoded, bos_token_id=ids["bos"], eos_token_id=ids["eos"], mask_token_id=ids["mask"],
        pad_token_id=ids["pad"], max_new_tokens=r.max_new_tokens, steps=r.steps, strategy=r.strategy or "mask-predict",
        sampling=r.sampling, seed=r.seed, prefix_cache=r.prefix_cache, length=r.length,
        length_candidates_k=r.length_candidates, length_rule=r.length_rule,
        banned_token_ids=banned_ids(tokenizer, model.config.vocab_size),
        record_trajectory=r.return_trajectory, **r.strategy_options)


def decode_autoregressive(model: nn.Module, family: Family, encoded: list[list[int]], tokenizer: Any,
                          r: DecodeRequest) -> GenerationOutput:
    """Token by token with the KV cache, left to right, or right to left before an ending."""
    check_direction(family, r.direction)
    ids = special_ids(tokenizer)
    options = ar_options(model, tokenizer, r, allow=[ids["bos"]] if r.direction == "r2l" else ())
    result = generate_ar_ids(model, encoded, bos_token_id=ids["bos"], eos_token_id=ids["eos"],
                             pad_token_id=ids["pad"], direction=r.direction, options=options,
                             use_cache=r.prefix_cache, seed=r.seed)
    return GenerationOutput(token_ids=result.token_ids, full_token_ids=result.token_ids,
                            lengths=[len(t) for t in result.token_ids], scores=result.scores,
                            prompt_lengths=[min(len(p), model.config.max_seq_len - r.max_new_tokens - 1) + 1
                                            for p in encoded],
                            forward_passes=result.forward_passes)


def decode_blanks(model: nn.Module, family: Family, encoded: list[list[int]], tokenizer: Any,
                  r: DecodeRequest) -> GenerationOutput:
    """Blank infilling: a prompt with blanks gives the whole text with them filled, one without a blank
    its continuation (the fill of the ``[gMASK]`` appended)."""
    if r.direction != "l2r":
        raise BiglmError(f"direction={r.direction!r} is for bidirectional-ar models; a {family.name} model fills "
                         "blanks left to right")
    if r.strategy_options:
        raise BiglmError(f"blank infilling has no option '{sorted(r.strategy_options)[0]}'")
    tokens = GLMTokens.from_tokenizer(tokenizer)
    result = infill_ids(model, encoded, tokens, options=ar_options(model, tokenizer, r), use_cache=r.prefix_cache,
                        seed=r.seed)
    out = [result.filled(tokens, i) if any(t in tokens.blanks for t in p) else result.fills[i][0]
           for i, p in enumerate(encoded)]
    return GenerationOutput(token_ids=out, full_token_ids=out, lengths=[len(t) for t in out],
                            scores=[sum(s) for s in result.scores], prompt_lengths=[len(a) for a in result.part_a],
                            forward_passes=result.forward_passes)


DECODERS: dict[str, Decoder] = {
    "mask-predict": decode_masked,
    "autoregressive": decode_autoregressive,
    "blank-infilling": decode_blanks,
}
"""Decoder name (``Family.decoder``) -> the function that writes the texts' ids."""
