"""Text in, text out: ``biglm.generate.generate(model_or_ckpt, prompts, ...)``.

The model's family decides how (``Family.encode_prompt`` reads the prompt, ``Family.decoder`` picks the
decoder of ``biglm.generate.decoders``): ``causal`` and ``bidirectional-ar`` models decode autoregressively
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

from biglm.checkpoint import load_model
from biglm.devices import resolve_device
from biglm.errors import BiglmError
from biglm.families import get_family
from biglm.generate.decoders import DECODERS, DecodeRequest, ar_options, resolve_ar_strategy
from biglm.generate.engine import GenerationOutput
from biglm.generate.sampling import SamplingConfig
from biglm.generate.specials import MASK_SYMBOL, banned_ids, render_step, special_ids

__all__ = ["MASK_SYMBOL", "GenerationResult", "ar_options", "banned_ids", "generate", "render_step",
           "resolve_ar_strategy", "special_ids"]


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


def _resolve(model_or_ckpt: Any, tokenizer: Any, device: str | torch.device | None) -> tuple[nn.Module, Any]:
    if isinstance(model_or_ckpt, str | Path):
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
    is T (1..L; default min(10, L)). ``strategy`` is ``mask-predict``, ``threshold`` or ``blocks``;
    ``strategy_options`` are the parallel strategies' options, the fields of
    ``biglm.generate.options.ParallelOptions`` (``ParallelOptions(...).as_strategy_options()`` gives them):
    ``block_size`` (blocks: tokens per block, 32), ``commit`` (the commit rule: ``threshold``, ``factor``,
    ``margin``; blocks also ``mask-predict``, its default), ``threshold`` / ``factor`` / ``margin`` (each rule's
    bound: 0.9, 1.0, 0.5), ``cache`` (blocks: ``prefix`` exact, or the approximate ``blocks`` / ``dual``
    suffix caches), ``refresh`` (approximate caches: refresh every this many passes; 0: at each block's
    start) and ``eos_exit`` (end a row once its text cannot change, for EOS-padded models); an option the
    strategy does not take, or a bad value, is a one-line error (autoregressive models take none).
    ``temperature=0`` is greedy; sampling is deterministic for
    a given ``seed``. ``prefix_cache=False`` re-encodes the prompt every pass (same result, slower).
    ``length='predict'`` decodes the length head's ``length_candidates`` best lengths and keeps the winner
    by ``length_rule`` (``average`` or ``joint``, see ``biglm.generate.length``).

    Returns the text (a ``str`` prompt) or the list of texts; with ``return_trajectory`` a
    ``GenerationResult`` with ids, per-pass partial texts and forward-pass counts.
    """
    model, tokenizer = _resolve(model_or_ckpt, tokenizer, device)
    family = get_family(model)
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
        encoded.append(family.encode_prompt(tokenizer, text))
    request = DecodeRequest(
        max_new_tokens=max_new_tokens, steps=steps, strategy=strategy, seed=seed, prefix_cache=prefix_cache,
        sampling=SamplingConfig(temperature, top_k, top_p), length=length, length_candidates=length_candidates,
        length_rule=length_rule, return_trajectory=return_trajectory, direction=direction, num_beams=num_beams,
        length_penalty=length_penalty, no_repeat_ngram_size=no_repeat_ngram_size, min_new_tokens=min_new_tokens,
        early_stopping=early_stopping, strategy_options=strategy_options)
    output = DECODERS[family.decoder](model, family, encoded, tokenizer, request)
    texts = [tokenizer.decode(t, skip_special_tokens=True) for t in output.token_ids]
    if not return_trajectory:
        return texts[0] if single else texts
    if output.trajectories is None:
        return GenerationResult(texts, output.token_ids, output, None)
    mask = special_ids(tokenizer)["mask"]
    steps_text = [[render_step(tokenizer, s, mask) for s in traj] for traj in output.trajectories or []]
    return GenerationResult(texts, output.token_ids, output, steps_text)
