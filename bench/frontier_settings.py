"""The decoding settings ``bench/decode_frontier.py`` measures: one data table, one row per setting.

A setting is the keyword arguments of ``biglm.generate.generate_ids``: a strategy, its pass budget T (``"L"``:
as many passes as target tokens) and the ``biglm.generate.options.ParallelOptions`` fields it sets. Fields at
their defaults (``cache: prefix``, ``commit: mask-predict`` for ``blocks``, ``commit: threshold`` for
``threshold``) are left out, so a setting runs on any engine that knows its non-default fields; one that the
engine refuses (a one-line ``BiglmError``) is reported as unsupported, not measured.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

REFERENCE = "full recompute, 1 token/pass"
"""The quality reference: the threshold strategy at threshold 1.0 and T = L commits the single most
confident token per pass (ceil(remaining / passes left) = 1), every pass over the whole suffix (exact
prefix cache only)."""


@dataclass(frozen=True)
class Setting:
    name: str
    strategy: str
    steps: int | str
    """Passes T, or ``"L"``: the number of target tokens."""
    options: dict[str, Any] = field(default_factory=dict)
    group: str = ""
    """The plot's series: strategy × commit rule × cache mode."""
    quick: bool = False
    """Part of ``--quick``'s few settings."""

    def kwargs(self, length: int, eos_exit: bool = False) -> dict[str, Any]:
        """``generate_ids`` keyword arguments for ``length`` target tokens (``eos_exit``: add the EOS early
        exit, for EOS-padded seq2seq models; never to Mask-Predict, which revises its tokens)."""
        steps = length if self.steps == "L" else min(int(self.steps), length)
        extra = {"eos_exit": True} if eos_exit and self.strategy != "mask-predict" else {}
        return {"strategy": self.strategy, "steps": steps, **self.options, **extra}

    def even(self, passes: int, length: int) -> dict[str, Any]:
        """The same strategy and cache mode committing evenly in ``passes`` suffix passes, whatever the weights:
        for random weights of a larger shape, the pass count a trained model needed (threshold 1.0 commits by
        the pass budget alone). Mask-Predict's passes never depend on the weights: its own arguments."""
        rule = self.options.get("commit", "mask-predict" if self.strategy == "blocks" else "threshold")
        if self.strategy == "mask-predict" or rule == "mask-predict":
            return self.kwargs(length)
        keep = {k: v for k, v in self.options.items() if k in ("block_size", "cache", "refresh")}
        if "commit" in self.options:
            keep["commit"] = "threshold"
        return {"strategy": self.strategy, "steps": max(1, passes), **keep, "threshold": 1.0}

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "strategy": self.strategy, "steps": self.steps, "options": self.options,
                "group": self.group}


def _blocks() -> list[Setting]:
    out = []
    for size in (8, 16, 32):
        for cache in ("prefix", "blocks", "dual"):
            c = {} if cache == "prefix" else {"cache": cache}
            for rule, steps, opts in (("mask-predict", 8, {}), ("mask-predict", 16, {}),
                                      ("threshold 0.9", "L", {"commit": "threshold", "threshold": 0.9}),
                                      ("factor 1", "L", {"commit": "factor", "factor": 1.0})):
                t = f" T={steps}" if steps != "L" else ""
                out.append(Setting(f"blocks {size} · {cache} · {rule}{t}", "blocks", steps,
                                   {"block_size": size, **c, **opts}, f"blocks · {cache} · {rule.split()[0]}",
                                   quick=size == 16 and cache == "prefix" and steps == 8))
    return out


SETTINGS: list[Setting] = [
    Setting(REFERENCE, "threshold", "L", {"threshold": 1.0}, "reference", quick=True),
    Setting("mask-predict T=L", "mask-predict", "L", {}, "mask-predict"),
    *[Setting(f"mask-predict T={t}", "mask-predict", t, {}, "mask-predict", quick=t in (4, 16))
      for t in (4, 8, 16, 32)],
    *[Setting(f"threshold τ={x}", "threshold", "L", {"threshold": x}, "threshold · threshold", quick=x == 0.9)
      for x in (0.5, 0.7, 0.9)],
    *[Setting(f"threshold · factor f={x}", "threshold", "L", {"commit": "factor", "factor": float(x)},
              "threshold · factor") for x in (1, 2)],
    *[Setting(f"threshold · margin m={x}", "threshold", "L", {"commit": "margin", "margin": x}, "threshold · margin")
      for x in (0.3, 0.6)],
    *_blocks(),
]


def readable(kwargs: dict[str, Any]) -> str:
    """A one-line form of ``generate_ids`` keyword arguments, e.g. ``strategy=blocks steps=8 block_size=16``."""
    return " ".join(f"{k}={v}" for k, v in kwargs.items())
