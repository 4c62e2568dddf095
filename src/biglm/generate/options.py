"""The options of the parallel strategies, as one typed value every door (``generate()``, ``biglm generate``,
``biglm chat``, ``biglm serve``, ``biglm predict``) reads: ``ParallelOptions``. ``None`` leaves a strategy's
own default; ``as_strategy_options()`` gives the keyword arguments of ``generate_ids`` / ``DecodeJob``, which
check the values (one-line errors) against the strategy chosen.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class ParallelOptions:
    """How ``threshold`` and ``blocks`` decode (``biglm.generate.strategies``, ``biglm.generate.commit``,
    ``biglm.generate.suffix_cache``); unset fields keep the strategy's defaults."""

    block_size: int | None = None
    """``blocks``: tokens per block (default 32)."""
    commit: str | None = None
    """Which predictions a pass keeps: ``threshold`` (probability ≥ ``threshold``), ``factor`` (Fast-dLLM's
    factor rule), ``margin`` (top-1 minus top-2 probability ≥ ``margin``); ``blocks`` also takes
    ``mask-predict`` (its default: Mask-Predict inside each block)."""
    threshold: float | None = None
    """Commit rule ``threshold``: the probability a prediction needs (default 0.9)."""
    factor: float | None = None
    """Commit rule ``factor``: keep the n most confident while (n + 1)(1 − p_n) < factor (default 1.0)."""
    margin: float | None = None
    """Commit rule ``margin``: the top-1 minus top-2 probability a prediction needs (default 0.5)."""
    cache: str | None = None
    """``prefix`` (exact, the default), or the approximate ``blocks`` (committed blocks' keys and values
    reused; each pass runs the current block and the masked rest) and ``dual`` (the masked later blocks' too;
    each pass runs the current block only), both refreshed at each block's first pass; ``blocks`` only."""
    refresh: int | None = None
    """Approximate caches: also refresh every ``refresh`` passes inside a block (0, the default: only at a
    block's start; 1: every pass, which is the exact computation)."""
    eos_exit: bool | None = None
    """Stop a row once a final EOS follows only final tokens (the text, cut at EOS, cannot change), filling the
    rest with EOS: for models that pad with EOS."""

    def as_strategy_options(self) -> dict[str, Any]:
        """The set fields, as the strategy's keyword arguments."""
        return {k: v for k, v in dataclasses.asdict(self).items() if v is not None}

    @classmethod
    def field_names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in dataclasses.fields(cls))

    @classmethod
    def of(cls, settings: Any) -> ParallelOptions:
        """The options carried by ``settings``, any object with (some of) these fields as attributes."""
        return cls(**{name: getattr(settings, name) for name in cls.field_names() if hasattr(settings, name)})
