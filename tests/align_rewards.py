"""A broken rule reward for the alignment tests (``py:align_rewards:wrong_length``)."""

from __future__ import annotations


def wrong_length(prompts: list[str], responses: list[str]) -> list[float]:
    return [0.0]
