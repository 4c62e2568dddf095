"""Alignment methods by name: one module each, registered in ``METHODS``.

Adding a method is one new module here (a ``Method`` record, a subclass for what it does differently), one
line in ``METHODS`` and, when it has settings, its section in ``biglm.align.config.AlignConfig``.
"""

from __future__ import annotations

from biglm.align.methods.base import Method, Need
from biglm.align.methods.dpo import DPO
from biglm.align.methods.grpo import GRPO
from biglm.align.methods.ppo import PPO
from biglm.errors import ConfigError

METHODS: dict[str, Method] = {m.name: m for m in (PPO, GRPO, DPO)}
"""Every alignment method, by name; the order is the order errors list them in."""


def get_method(name: str) -> Method:
    """The method called ``name`` (one-line refusal of an unknown name)."""
    method = METHODS.get(name)
    if method is None:
        raise ConfigError(f"method={name!r}: expected one of {', '.join(METHODS)}")
    return method


__all__ = ["METHODS", "Method", "Need", "get_method"]
