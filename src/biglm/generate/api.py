"""Text in, text out: ``biglm.generate.generate(model_or_ckpt, prompts, ...)``.

The model's family decides how: ``causal`` and ``bidirectional-ar`` models decode autoregressively
with the KV cache (``biglm.generate.autoregressive``; ``direction='r2l'`` writes the text that comes
before the prompt); ``glm`` models fill the prompt's ``[MASK]`` / ``[sMASK]`` / ``[gMASK]`` blanks left to
right on the same loop (``biglm.generate.glm``; a prompt without a blank is continued); ``masked`` models
decode non-autoregressively as follows. Each prompt becomes
X = ``BOS prompt`` (tokenized without special tokens, no EOS); Y = L [MASK] tokens is refined over T
passes by the chosen strategy (see ``biglm.generate.strategies``) with the exact prefix cache (see
``biglm.generate.engine``). The text is the decoded suffix up to its first EOS. A prompt longer than
``max_seq_len - max_new_tokens - 1`` tokens is left-truncated (its end is kept) with a warning.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from biglm.data.tokenizer import special_ids
from biglm.errors import BiglmError
from biglm.generate.autoregressive import AR_STRATEGIES, AROptions, generate_ar_ids
from biglm.generate.engine import GenerationOutput, generate_ids
from biglm.generate.sampling import SamplingConfig

MASK_SYMBOL = "▢"


@dataclass
class GenerationResult:
    """Everything about one ``generate`` call; ``texts[i]`` answers ``prompts[i]``."""

    texts: list[str]
    token_ids: list[list[int]]
    """Generated ids up to the first EOS."""
    output: GenerationOutput
    """The engine's output: full ids, lengths, scores, candidates, forward passes, raw trajectories."""
    steps: list[list[str]] | None = None
    """Per prompt, the partly decoded text fed to each pass (``▢`` = still masked), then the final text."""

    @property
    def forward_passes(self) -> int:
        return self.output.forward_passes


def banned_ids(tokenizer: Any, vocab_size: int, allow: Sequence[int] = ()) -> list[int]:
    """Ids generation never emits: [MASK], BOS, PAD (unless it is EOS) and the vocabulary's padding rows;
    ``allow`` keeps some (R2L decoding ends at BOS)."""
    ids = special_ids(tokenizer)
    banned = ({ids["mask"], ids["bos"]} | ({ids["pad"]} - {ids["eos"]})) - set(allow)
    banned |= set(range(len(tokenizer), vocab_size))
    return sorted(i for i in banned if 0 <= i < vocab_size)


def render_step(tokenizer: Any, ids: Sequence[int], mask_token_id: int, mask_symbol: str = MASK_SYMBOL) -> str:
    """Text of a partly decoded suffix with ``mask_symbol`` at every [MASK]."""
    parts: list[str] = []
    run: list[int] = []
    for i in ids:
        if i == mask_token_id:
            if run:
                parts.append(tokenizer.decode(run, skip_special_tokens=True))
                run = []
            parts.append(mask_symbol)
        else:
            run.append(i)
    if run:
        parts.append(tokenizer.decode(run, skip_special_tokens=True))
    return "".join(parts)


def _resolve(model_or_ckpt: Any, tokenizer: Any, device: str | torch.device | None) -> tuple[nn.Module, Any]:
    if isinstance(model_or_ckpt, str | Path):
        from biglm.checkpoint import load_model

        loaded = load_model(model_or_ckpt, device=device or "cpu")
        model_or_ckpt = loaded
    if hasattr(model_or_ckpt, "model") and hasattr(model_or_ckpt, "tokenizer") and not isinstance(
            model_or_ckpt, nn.Module):
        tokenizer = tokenizer if tokenizer is not None else model_or_ckpt.tokenizer
        model_or_ckpt = model_or_ckpt.model
    if not isinstance(model_or_ckpt, nn.Module):
        raise BiglmError(f"generate: expected a BiGLM model, a LoadedModel or a checkpoint path, "
                         f"got {type(model_or_ckpt).__name__}")
    if tokenizer is None:
        raise BiglmError("generate: no tokenizer (pass tokenizer=..., or a checkpoint saved with one)")
    if device is not None:
        from biglm.devices import resolve_device

        model_or_ckpt = model_or_ckpt.to(resolve_device(device, "device"))
    return model_or_ckpt.eval(), tokenizer


def generate(model_or_ckpt: Any, prompts: str | Sequence[str], tokenizer: Any = None, *,
             max_new_tokens: int = 32, steps: int | None = None, strategy: str | None = None,
             temperature: float = 0.0, top_k: int = 0, top_p: float = 1.0, seed: int | None = None,
             prefix_cache: bool = True, length: Literal["fixed", "predict"] = "fixed",
             length_candidates: int = 3, length_rule: str = "joint", return_trajectory: bool = False,
             device: str | torch.device | None = None, direction: str = "l2r", num_beams: int = 1,
             length_penalty: float = 1.0, no_repeat_ngram_size: int = 0, min_new_tokens: int = 0,
             early_stopping: bool = False, **strategy_options: Any) -> str | list[str] | GenerationResult:
    """Generate a continuation of each prompt: autoregressively for ``causal`` / ``bidirectional-ar``
    models (``strategy`` greedy, sample or beam; ``direction``, ``num_beams``, ``length_penalty``,
    ``no_repeat_ngram_size``, ``min_new_tokens``, ``early_stopping``; ``prefix_cache=False`` re-encodes
    the whole sequence at every step), non-autoregressively for ``masked`` ones (below).

    ``model_or_ckpt``: a ``BiGLM`` (then ``tokenizer`` is required), a ``LoadedModel`` or a checkpoint
    / run folder. ``max_new_tokens`` is L (the largest candidate with ``length='predict'``), ``steps``
    is T (1..L; default min(10, L)). ``strategy`` is ``mask-predict``, ``threshold`` (option ``threshold=0.9``) or
    ``blocks`` (option ``block_size=32``). ``temperature=0`` is greedy; sampling is deterministic for
    a given ``seed``. ``prefix_cache=False`` re-encodes the prompt every pass (same result, slower).
    ``length='predict'`` decodes the length head's ``length_candidates`` best lengths and keeps the winner
    by ``length_rule`` (``average`` or ``joint``, see ``biglm.generate.length``).

    Returns the text (a ``str`` prompt) or the list of texts; with ``return_trajectory`` a
    ``GenerationResult`` with ids, per-pass partial texts and forward-pass counts.
    """
    model, tokenizer = _resolve(model_or_ckpt, tokenizer, device)
    ar = {"direction": direction, "num_beams": num_beams, "length_penalty": length_penalty,
          "no_repeat_ngram_size": no_repeat_ngram_size, "min_new_tokens": min_new_tokens,
          "early_stopping": early_stopping}
    decodes_ar = model.config.is_autoregressive or model.config.family == "glm"
    if model.config.family == "glm" and direction != "l2r":
        raise BiglmError("direction='r2l' is for bidirectional-ar models; a glm model fills blanks left to right")
    if not decodes_ar:
        changed = [k for k, v in ar.items() if v != {"direction": "l2r", "num_beams": 1, "length_penalty": 1.0,
                                                      "no_repeat_ngram_size": 0, "min_new_tokens": 0,
                                                      "early_stopping": False}[k]]
        if changed:
            raise BiglmError(f"{changed[0]} is an option of autoregressive decoding; this model is "
                             f"{model.config.family!r} (Mask-Predict and parallel strategies)")
    single = isinstance(prompts, str)
    prompt_list = [prompts] if single else list(prompts)
    if not prompt_list:
        raise BiglmError("no prompts given")
    if steps is None:
        steps = min(10, max_new_tokens) if isinstance(max_new_tokens, int) and max_new_tokens > 0 else 10
    encoded = []
    for i, text in enumerate(prompt_list):
        if not isinstance(text, str):
            raise BiglmError(f"prompt {i}: expected a string, got {type(text).__name__}")
        if not text.strip():
            raise BiglmError(f"prompt {i} is {'blank (only whitespace)' if text else 'empty'}: give some text "
                             "to continue")
        if model.config.family == "glm":  # blanks as single tokens, the space before one left to its span
            from biglm.generate.glm import encode_prompt

            encoded.append(encode_prompt(tokenizer, text))
        else:
            encoded.append(tokenizer(text, add_special_tokens=False)["input_ids"])
    ids = special_ids(tokenizer)
    if model.config.family == "glm":
        if strategy_options:
            raise BiglmError(f"blank infilling has no option '{sorted(strategy_options)[0]}'")
        ar.pop("direction")
        output = _generate_glm(model, encoded, tokenizer, max_new_tokens=max_new_tokens, strategy=strategy,
                               sampling=(temperature, top_k, top_p), seed=seed, use_cache=prefix_cache, **ar)
    elif model.config.is_autoregressive:
        if strategy_options:
            raise BiglmError(f"autoregressive decoding has no option '{sorted(strategy_options)[0]}'")
        output = _generate_ar(model, encoded, ids, tokenizer, max_new_tokens=max_new_tokens, strategy=strategy,
                              sampling=(temperature, top_k, top_p), seed=seed, use_cache=prefix_cache, **ar)
    else:
        output = generate_ids(
        model, encoded, bos_token_id=ids["bos"], eos_token_id=ids["eos"], mask_token_id=ids["mask"],
            pad_token_id=ids["pad"], max_new_tokens=max_new_tokens, steps=steps, strategy=strategy or "mask-predict",
            sampling=SamplingConfig(temperature, top_k, top_p), seed=seed, prefix_cache=prefix_cache,
            length=length, length_candidates_k=length_candidates, length_rule=length_rule,
            banned_token_ids=banned_ids(tokenizer, model.config.vocab_size),
            record_trajectory=return_trajectory, **strategy_options)
    texts = [tokenizer.decode(t, skip_special_tokens=True) for t in output.token_ids]
    if not return_trajectory:
        return texts[0] if single else texts
    if output.trajectories is None:
        return GenerationResult(texts, output.token_ids, output, None)
    steps_text = [[render_step(tokenizer, s, ids["mask"]) for s in traj] for traj in output.trajectories or []]
    return GenerationResult(texts, output.token_ids, output, steps_text)


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


def _ar_options(model: nn.Module, tokenizer: Any, *, max_new_tokens: int, strategy: str | None,
                sampling: tuple[float, int, float], num_beams: int, length_penalty: float, no_repeat_ngram_size: int,
                min_new_tokens: int, early_stopping: bool, allow: Sequence[int] = ()) -> AROptions:
    """The options of the autoregressive loop from ``generate``'s arguments (strategy checked)."""
    temperature, top_k, top_p = sampling
    strategy = resolve_ar_strategy(strategy, temperature, num_beams)
    if strategy == "sample" and temperature == 0:
        temperature = 1.0
    return AROptions(max_new_tokens=max_new_tokens, min_new_tokens=min_new_tokens,
                     sampling=SamplingConfig(temperature, top_k, top_p), num_beams=num_beams,
                     length_penalty=length_penalty, early_stopping=early_stopping,
                     no_repeat_ngram_size=no_repeat_ngram_size,
                     banned_token_ids=tuple(banned_ids(tokenizer, model.config.vocab_size, allow=allow)))


def _generate_glm(model: nn.Module, encoded: list[list[int]], tokenizer: Any, *, max_new_tokens: int,
                  seed: int | None, use_cache: bool, **options: Any) -> GenerationOutput:
    """Blank infilling: a prompt with blanks gives the whole text with them filled, one without a blank
    its continuation (the fill of the ``[gMASK]`` appended)."""
    from biglm.generate.glm import GLMTokens, infill_ids

    tokens = GLMTokens.from_tokenizer(tokenizer)
    opts = _ar_options(model, tokenizer, max_new_tokens=max_new_tokens, **options)
    result = infill_ids(model, encoded, tokens, options=opts, use_cache=use_cache, seed=seed)
    out = [result.filled(tokens, i) if any(t in tokens.blanks for t in p) else result.fills[i][0]
           for i, p in enumerate(encoded)]
    return GenerationOutput(token_ids=out, full_token_ids=out, lengths=[len(t) for t in out],
                            scores=[sum(s) for s in result.scores], prompt_lengths=[len(a) for a in result.part_a],
                            forward_passes=result.forward_passes)


def _generate_ar(model: nn.Module, encoded: list[list[int]], ids: dict[str, int], tokenizer: Any, *,
                 max_new_tokens: int, strategy: str | None, sampling: tuple[float, int, float], seed: int | None,
                 use_cache: bool, direction: str, num_beams: int, length_penalty: float,
                 no_repeat_ngram_size: int, min_new_tokens: int, early_stopping: bool) -> GenerationOutput:
    options = _ar_options(model, tokenizer, max_new_tokens=max_new_tokens, strategy=strategy, sampling=sampling,
                          num_beams=num_beams, length_penalty=length_penalty,
                          no_repeat_ngram_size=no_repeat_ngram_size, min_new_tokens=min_new_tokens,
                          early_stopping=early_stopping, allow=[ids["bos"]] if direction == "r2l" else ())
    result = generate_ar_ids(model, encoded, bos_token_id=ids["bos"], eos_token_id=ids["eos"],
                             pad_token_id=ids["pad"], direction=direction, options=options, use_cache=use_cache,
                             seed=seed)
    return GenerationOutput(token_ids=result.token_ids, full_token_ids=result.token_ids,
                            lengths=[len(t) for t in result.token_ids], scores=result.scores,
                            prompt_lengths=[min(len(p), model.config.max_seq_len - max_new_tokens - 1) + 1
                                            for p in encoded],
                            forward_passes=result.forward_passes)
