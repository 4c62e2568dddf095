"""The options of the parallel strategies, as one typed value every door (``generate()``, ``biglm generate``,
``biglm chat``, ``biglm serve``, ``biglm predict``) reads: ``ParallelOptions``. ``None`` leaves a strategy's
own default; ``as_strategy_options()`` gives the keyword arguments of ``generate_ids`` / ``DecodeJob``, which
check the values (one-line errors) against the strategy chosen.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import typing
from dataclasses import dataclass
from typing import Any

import torch

from biglm.config_cli import field_docs
from biglm.errors import BiglmError
from biglm.generate.engine import start_decoding
from biglm.generate.strategies import DecodeState


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

    def check_types(self) -> None:
        """One-line ``BiglmError`` for a field whose value is not of its annotated type (an int is a float; a
        bool is no int). The values themselves are the engine's to check (``check``)."""
        for name, kind in field_types().items():
            value = getattr(self, name)
            ok = isinstance(value, kind) and not (isinstance(value, bool) and kind is not bool)
            if value is not None and not (ok or (kind is float and type(value) is int)):
                raise BiglmError(f"{name}={repr(value)[:40]}: expected {kind.__name__}")

    def check(self, strategy: str, prefix_cache: bool = True) -> None:
        """One-line ``BiglmError`` for options strategy ``strategy`` does not take or a value it (or the suffix
        cache) refuses: the engine's own checks, run by starting the decoding on a one-token dummy state."""
        self.check_types()
        state = DecodeState.all_masked(torch.ones(1, 1, dtype=torch.bool), mask_token_id=0, eos_token_id=1)
        start_decoding(strategy, state, 1, prefix_cache, self.as_strategy_options())


@functools.cache
def field_types() -> dict[str, type]:
    """Each field's type, ``None`` unwrapped: int, float, str or bool."""
    hints = typing.get_type_hints(ParallelOptions)
    return {name: next(a for a in typing.get_args(hints[name]) if a is not type(None))
            for name in ParallelOptions.field_names()}


def field_help(name: str) -> str:
    """Field ``name``'s docstring on one line, ``code`` quotes dropped (help text, schema descriptions)."""
    return " ".join(field_docs(ParallelOptions).get(name, "").split()).replace("``", "")


def add_parallel_args(parser: argparse.ArgumentParser | Any, title: str = "parallel strategies (threshold, blocks)"
                      ) -> None:
    """A flag per ``ParallelOptions`` field (``--block-size N`` ... ``--eos-exit`` / ``--no-eos-exit``), default
    None (the strategy's own), help from the field's docstring; ``ParallelOptions.of(args)`` reads them back."""
    group = parser.add_argument_group(title)
    for name, kind in field_types().items():
        flag, text = "--" + name.replace("_", "-"), field_help(name).replace("%", "%%")
        if kind is bool:
            group.add_argument(flag, dest=name, action=argparse.BooleanOptionalAction, default=None, help=text)
        else:
            metavar = "NAME" if kind is str else kind.__name__.upper()
            group.add_argument(flag, dest=name, type=kind, default=None, metavar=metavar, help=text)
