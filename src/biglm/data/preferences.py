"""Preference data: pairs of responses to one prompt with a human (or AI) judgement, as BatGPT §3.3 collects
them, mapped to the paper's triplets (y, y', d).

biglm's preference format (JSONL, one judgement per line)::

    {"prompt": "...", "response_a": "...", "response_b": "...",
     "model_a": "ckpt-1", "model_b": "ckpt-2",                # optional: which model wrote each response
     "choice": "A",                                          # A | B | both_good | both_bad (helpfulness)
     "acceptable_a": "acceptable", "acceptable_b": "unacceptable",   # optional (harmlessness)
     "annotator": "human"}                                   # optional: human | ai

Mapping to (y, y', d): y = response A, y' = response B, and d follows the paper (d = -1 prefers y,
d = 1 prefers y', d = 0 is a tie): ``A`` -> -1, ``B`` -> 1, ``both_good`` and ``both_bad`` -> 0 (ties:
the helpfulness labels say the two are equally good or equally bad). With ``acceptability_first`` a pair
where exactly one response is acceptable prefers that one whatever the helpfulness choice (harmlessness
before helpfulness); otherwise acceptability is kept on the pair but does not change d.

The common pairwise layout (``chosen`` / ``rejected``, optionally ``prompt``; as in trl and many datasets on
the hub, read through ``biglm.data.records`` so ``hf:NAME`` works) maps to y = chosen, y' = rejected, d = -1.
Without a ``prompt`` field the prompt is the two texts' common prefix, cut back to a whitespace boundary
(how transcripts such as ``\\n\\nHuman: ... \\n\\nAssistant: ...`` store it). A prompt may also be a list of
chat messages (``{role, content}``) and a response a list whose last message is the reply.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from biglm.errors import BiglmError

from .records import Record

CHOICES: dict[str, int] = {"A": -1, "B": 1, "both_good": 0, "both_bad": 0}
"""Helpfulness choice -> the paper's d (y = response A, y' = response B)."""
ACCEPTABILITY = ("acceptable", "unacceptable")


@dataclass
class PreferencePair:
    """One judged pair: the paper's (x, y, y', d) plus what the annotation said."""

    prompt: str | list[dict[str, str]]
    """The instruction x: text, or chat messages (rendered with the tokenizer's chat template)."""
    y: str
    y_prime: str
    d: int
    """-1: y is preferred, 1: y' is preferred, 0: a tie."""
    where: str
    choice: str = ""
    model_y: str = ""
    model_y_prime: str = ""
    acceptable_y: str | None = None
    acceptable_y_prime: str | None = None
    annotator: str = ""


def _text(record: Record, name: str) -> str:
    value = record.fields.get(name)
    if value is None:
        keys = ", ".join(sorted(record.fields)) or "none"
        raise BiglmError(f"{record.where}: missing response field '{name}' (fields: {keys})")
    if isinstance(value, list):  # chat messages: the reply is the last one
        if not value or not isinstance(value[-1], dict) or not isinstance(value[-1].get("content"), str):
            raise BiglmError(f"{record.where}: field '{name}' must be a string or a list of {{role, content}} "
                             "messages ending with the reply")
        value = value[-1]["content"]
    if not isinstance(value, str) or not value.strip():
        raise BiglmError(f"{record.where}: field '{name}' must be a non-empty string (the response)")
    return value


def _prompt(record: Record, name: str) -> str | list[dict[str, str]]:
    value = record.fields.get(name)
    if isinstance(value, list) and all(isinstance(m, dict) and "role" in m and "content" in m for m in value):
        return [{"role": str(m["role"]), "content": str(m["content"])} for m in value]
    if not isinstance(value, str):
        raise BiglmError(f"{record.where}: field '{name}' must be a string or a list of {{role, content}} messages")
    return value


def split_common_prefix(a: str, b: str) -> tuple[str, str, str]:
    """(prompt, rest of a, rest of b): the longest common prefix of ``a`` and ``b`` cut back to just after a
    whitespace character, so no word is split between the prompt and a response."""
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    while n > 0 and not a[n - 1].isspace():
        n -= 1
    return a[:n], a[n:], b[n:]


def _acceptability(record: Record, name: str) -> str | None:
    value = record.fields.get(name)
    if value is None:
        return None
    if value not in ACCEPTABILITY:
        raise BiglmError(f"{record.where}: field '{name}'={repr(value)[:40]}: expected one of "
                         f"{', '.join(ACCEPTABILITY)}")
    return str(value)


def preference_pair(record: Record, acceptability_first: bool = False) -> PreferencePair:
    """The pair of one record in biglm's format or the chosen/rejected layout (one-line errors naming the line)."""
    f = record.fields
    if "chosen" in f or "rejected" in f:
        chosen, rejected = _text(record, "chosen"), _text(record, "rejected")
        if f.get("prompt") is not None:
            prompt = _prompt(record, "prompt")
        elif isinstance(f["chosen"], list):  # conversations: the prompt is the chosen one's history
            prompt = [{"role": str(m.get("role")), "content": str(m.get("content"))} for m in f["chosen"][:-1]]
        else:
            prompt, chosen, rejected = split_common_prefix(chosen, rejected)
            if not chosen.strip() or not rejected.strip():
                raise BiglmError(f"{record.where}: 'chosen' and 'rejected' differ only in whitespace")
        return PreferencePair(prompt, chosen, rejected, -1, record.where, choice="A")
    if "response_a" not in f and "response_b" not in f:
        keys = ", ".join(sorted(f)) or "none"
        raise BiglmError(f"{record.where}: not a preference record: expected response_a/response_b/choice or "
                         f"chosen/rejected (fields: {keys})")
    y, y_prime = _text(record, "response_a"), _text(record, "response_b")
    if "prompt" not in f:
        raise BiglmError(f"{record.where}: missing field 'prompt'")
    choice = f.get("choice")
    if not isinstance(choice, str) or choice not in CHOICES:
        raise BiglmError(f"{record.where}: field 'choice'={repr(choice)[:40]}: expected one of {', '.join(CHOICES)}")
    acc_y, acc_y_prime = _acceptability(record, "acceptable_a"), _acceptability(record, "acceptable_b")
    d = CHOICES[choice]
    if acceptability_first and acc_y is not None and acc_y_prime is not None and acc_y != acc_y_prime:
        d = -1 if acc_y == "acceptable" else 1
    return PreferencePair(_prompt(record, "prompt"), y, y_prime, d, record.where, choice=str(choice),
                          model_y=str(f.get("model_a") or ""), model_y_prime=str(f.get("model_b") or ""),
                          acceptable_y=acc_y, acceptable_y_prime=acc_y_prime, annotator=str(f.get("annotator") or ""))


def preference_pairs(records: Sequence[Record], acceptability_first: bool = False) -> list[PreferencePair]:
    """``preference_pair`` of every record."""
    return [preference_pair(r, acceptability_first) for r in records]


def pair_record(pair: PreferencePair) -> dict[str, Any]:
    """A pair in biglm's preference format (what ``preference_pair`` reads back to the same d)."""
    choice = pair.choice if pair.choice in CHOICES and CHOICES[pair.choice] == pair.d else \
        {-1: "A", 1: "B", 0: "both_good"}[pair.d]
    out: dict[str, Any] = {"prompt": pair.prompt, "response_a": pair.y, "response_b": pair.y_prime, "choice": choice}
    for key, value in (("model_a", pair.model_y), ("model_b", pair.model_y_prime), ("annotator", pair.annotator),
                       ("acceptable_a", pair.acceptable_y), ("acceptable_b", pair.acceptable_y_prime)):
        if value:
            out[key] = value
    return out
