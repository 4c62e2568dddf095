"""Text in, text out: ``biglm.generate.generate(model_or_ckpt, prompts, ...)``.

Each prompt becomes X = ``BOS prompt`` (tokenized without special tokens, no EOS); Y = L [MASK]
tokens is refined over T passes by the chosen strategy (see ``biglm.generate.strategies``) with the
exact prefix cache (see ``biglm.generate.engine``). The text is the decoded suffix up to its first EOS.
A prompt longer than ``max_seq_len - max_new_tokens - 1`` tokens is left-truncated (its end is kept)
with a warning.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from biglm.errors import BiglmError
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


def special_ids(tokenizer: Any) -> dict[str, int]:
    """BOS, EOS, [MASK] and PAD ids of ``tokenizer``; one clear error when one is missing."""
    ids = {}
    for name in ("bos", "eos", "mask"):
        value = getattr(tokenizer, f"{name}_token_id", None)
        if value is None:
            raise BiglmError(f"tokenizer has no {name} token; generation needs BOS, EOS and [MASK] "
                             "(load it with biglm.data.tokenizer.load_tokenizer)")
        ids[name] = int(value)
    pad = getattr(tokenizer, "pad_token_id", None)
    ids["pad"] = int(pad) if pad is not None else ids["eos"]
    return ids


def banned_ids(tokenizer: Any, vocab_size: int) -> list[int]:
    """Ids generation never emits: [MASK], BOS, PAD (unless it is EOS) and the vocabulary's padding rows."""
    ids = special_ids(tokenizer)
    banned = {ids["mask"], ids["bos"]} | ({ids["pad"]} - {ids["eos"]})
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
             max_new_tokens: int = 32, steps: int | None = None, strategy: str = "mask-predict",
             temperature: float = 0.0, top_k: int = 0, top_p: float = 1.0, seed: int | None = None,
             prefix_cache: bool = True, length: Literal["fixed", "predict"] = "fixed",
             length_candidates: int = 3, length_rule: str = "joint", return_trajectory: bool = False,
             device: str | torch.device | None = None, **strategy_options: Any) -> str | list[str] | GenerationResult:
    """Generate a continuation of each prompt non-autoregressively.

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
        encoded.append(tokenizer(text, add_special_tokens=False)["input_ids"])
    ids = special_ids(tokenizer)
    output = generate_ids(
        model, encoded, bos_token_id=ids["bos"], eos_token_id=ids["eos"], mask_token_id=ids["mask"],
        pad_token_id=ids["pad"], max_new_tokens=max_new_tokens, steps=steps, strategy=strategy,
        sampling=SamplingConfig(temperature, top_k, top_p), seed=seed, prefix_cache=prefix_cache,
        length=length, length_candidates_k=length_candidates, length_rule=length_rule,
        banned_token_ids=banned_ids(tokenizer, model.config.vocab_size),
        record_trajectory=return_trajectory, **strategy_options)
    texts = [tokenizer.decode(t, skip_special_tokens=True) for t in output.token_ids]
    if not return_trajectory:
        return texts[0] if single else texts
    steps_text = [[render_step(tokenizer, s, ids["mask"]) for s in traj] for traj in output.trajectories or []]
    return GenerationResult(texts, output.token_ids, output, steps_text)
