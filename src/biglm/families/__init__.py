"""Model families by name: one module each, registered in ``FAMILIES``.

Adding a family is one new module here (a ``Family`` record, a subclass where a method differs) and one
line in ``FAMILIES``; ``docs/explanation/architecture.md`` walks through an example.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from biglm.errors import ConfigError
from biglm.families.base import Family
from biglm.families.bidirectional_ar import BIDIRECTIONAL_AR
from biglm.families.causal import CAUSAL
from biglm.families.glm import GLM
from biglm.families.masked import MASKED

FAMILIES: dict[str, Family] = {f.name: f for f in (MASKED, CAUSAL, BIDIRECTIONAL_AR, GLM)}
"""Every model family, by name. The order is the order ``--help`` and errors list them in."""


def register_family(family: Family) -> Family:
    """Add a family defined outside biglm (a plug-in, a test); its name must be new."""
    if family.name in FAMILIES:
        raise ConfigError(f"model family {family.name!r} is already registered")
    FAMILIES[family.name] = family
    return family


def get_family(of: Any) -> Family:
    """The family of a name, a ``ModelConfig`` or a model (anything with ``.config.family``)."""
    name = of if isinstance(of, str) else getattr(getattr(of, "config", of), "family", "masked")
    family = FAMILIES.get(name)
    if family is None:
        raise ConfigError(f"model family {name!r}: expected one of {', '.join(FAMILIES)}")
    return family


def family_names(where: Callable[[Family], bool]) -> str:
    """The families for which ``where`` holds, for a message: ``causal or bidirectional-ar``."""
    return " or ".join(f.name for f in FAMILIES.values() if where(f)) or "no"


def check_direction(family: Family, direction: str, what: str = "direction") -> None:
    """One-line refusal of a reading direction ``family`` does not have, naming the families that do."""
    if direction not in family.directions:
        have = family_names(lambda f: direction in f.directions)
        raise ConfigError(f"{what}={direction!r} needs a {have} model (this one is {family.name!r})")


def objective_families(objective: str) -> tuple[str, ...]:
    """The families an objective trains, the default (the family listing it first) first."""
    fams = [f for f in FAMILIES.values() if objective in f.objectives]
    fams.sort(key=lambda f: f.objectives.index(objective))
    return tuple(f.name for f in fams)


__all__ = ["FAMILIES", "Family", "check_direction", "family_names", "get_family", "objective_families",
           "register_family"]
