"""Rule rewards for the alignment tests (``py:align_rewards:NAME``).

``contains_a``: a prompt is a few letters and '?'; the right answer is "yes" when the letter a is among them, else
"no". Learnable by attending to one token type (no copying), and prompt-dependent: a policy that answers at random
gets 0.5 on average."""

from __future__ import annotations


def right_answer(prompt: str) -> str:
    return "yes" if "a" in prompt.split()[:-1] else "no"


def contains_a(prompts: list[str], responses: list[str]) -> list[float]:
    """1 for the right answer alone, 0.5 for a response that starts with it, else 0."""
    out = []
    for prompt, response in zip(prompts, responses):
        words, right = response.split(), right_answer(prompt)
        out.append(1.0 if words == [right] else 0.5 if words[:1] == [right] else 0.0)
    return out


def wrong_length(prompts: list[str], responses: list[str]) -> list[float]:
    return [0.0]
