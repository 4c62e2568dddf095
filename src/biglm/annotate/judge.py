"""AI feedback (BatGPT §3.3): a judge model labels pairs with the annotation page's options.

The judge is asked through a prompt template (``judge_template.txt`` here, or the user's) holding
``{prompt}``, ``{response_a}`` and ``{response_b}``; its answer is read for the three labels the page asks
for: ``Helpfulness: A | B | both good | both not good`` and ``A: acceptable | unacceptable``, ``B: ...``
(case and a few wordings are forgiven, see ``parse_verdict``). The helpfulness label is required; an
acceptability line that is missing leaves that field out. An answer without a readable helpfulness label
is counted and skipped, never guessed.

Judges: ``CheckpointJudge`` (a biglm checkpoint through ``biglm.chat.ChatModel``, greedy) or
``EndpointJudge`` (any OpenAI-compatible chat completions API through the ``openai`` client, temperature 0).
Answers are written by the same ``AnswerStore`` as the page's, as annotator ``ai:<model>``; pairs that
judge already answered in the file are skipped, so a stopped run continues where it stopped.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from biglm.errors import BiglmError

from .pairs import Pair
from .store import Answer, AnswerStore, Conflict

FIELDS = ("{prompt}", "{response_a}", "{response_b}")
_HELP = re.compile(r"helpfulness\s*[:=-]\s*([^\n]*)", re.IGNORECASE)
_ACC = re.compile(r"^\W*(?:response\s+)?([AB])\s*(?:is\s*)?[:=-]?\s*\**\s*(unacceptable|acceptable)[\s*.]*$",
                  re.IGNORECASE | re.MULTILINE)
_CHOICE_WORDS = {"a": "A", "a is better": "A", "a better": "A", "response a": "A",
                 "b": "B", "b is better": "B", "b better": "B", "response b": "B",
                 "both good": "both_good", "both_good": "both_good", "both are good": "both_good",
                 "both not good": "both_bad", "both_bad": "both_bad", "both bad": "both_bad",
                 "both are not good": "both_bad", "neither": "both_bad", "neither is good": "both_bad"}


def load_template(path: str | Path | None = None) -> str:
    """The judge's prompt template (biglm's when ``path`` is None), checked for its three fields."""
    if path is None:
        return resources.files("biglm.annotate").joinpath("judge_template.txt").read_text(encoding="utf-8")
    path = Path(path)
    if not path.is_file():
        raise BiglmError(f"{path}: no such template file")
    text = path.read_text(encoding="utf-8")
    missing = [f for f in FIELDS if f not in text]
    if missing:
        raise BiglmError(f"{path}: the template lacks {', '.join(missing)} (it needs {', '.join(FIELDS)})")
    return text


def _prompt_text(prompt: Any) -> str:
    return prompt if isinstance(prompt, str) else "\n".join(f"{m['role']}: {m['content']}" for m in prompt)


def render(template: str, pair: Pair) -> str:
    """The question for one pair: the three fields replaced in one pass, so braces in the pair's own text
    (even a ``{response_b}`` inside response A) are left alone."""
    values = dict(zip(FIELDS, (_prompt_text(pair.prompt), pair.response_a, pair.response_b)))
    return re.sub("|".join(re.escape(f) for f in FIELDS), lambda m: values[m.group(0)], template)


def _words(value: str) -> str:
    """A label as plain lower-case words: markdown, quotes, underscores and a final full stop dropped."""
    return " ".join(value.lower().replace("_", " ").strip(" *\"'`.").split())


def parse_verdict(text: str) -> Answer | None:
    """The labels in a judge's answer, or None when no single helpfulness label can be read."""
    found = {_CHOICE_WORDS.get(_words(m.group(1))) for m in _HELP.finditer(text)}
    if len(found) != 1 or None in found:
        return None
    acc: dict[str, str] = {}
    for m in _ACC.finditer(text):
        side, value = m.group(1).lower(), m.group(2).lower()
        if acc.setdefault(side, value) != value:  # said both ways: leave it out
            acc[side] = ""
    return Answer(found.pop(), acc.get("a") or None, acc.get("b") or None)


class CheckpointJudge:
    """A biglm checkpoint as the judge (greedy replies through ``ChatModel``, a batch at a time)."""

    def __init__(self, chat: Any, name: str, max_tokens: int = 64, batch: int = 8) -> None:
        self.chat, self.name, self.batch = chat, name, max(1, batch)
        self.settings = chat.settings.updated(temperature=0.0, max_new_tokens=min(
            max_tokens, chat.model.config.max_seq_len // 2))

    def ask(self, questions: Sequence[str]) -> list[str | Exception]:
        out: list[str | Exception] = []
        for start in range(0, len(questions), self.batch):
            chunk = [[{"role": "user", "content": q}] for q in questions[start:start + self.batch]]
            out += [r.text for r in self.chat.replies(chunk, self.settings)]
        return out


class EndpointJudge:
    """Any OpenAI-compatible chat completions endpoint as the judge (``openai`` client, temperature 0)."""

    def __init__(self, base_url: str, model: str, api_key: str | None = None, max_tokens: int = 64,
                 concurrency: int = 4, timeout: float = 120.0) -> None:
        import openai

        self.name, self.max_tokens, self.concurrency = model, max_tokens, max(1, concurrency)
        self.client = openai.OpenAI(base_url=base_url.rstrip("/"), api_key=api_key or os.environ.get(
            "OPENAI_API_KEY") or "none", timeout=timeout, max_retries=2)

    def _one(self, question: str) -> str | Exception:
        try:
            out = self.client.chat.completions.create(
                model=self.name, messages=[{"role": "user", "content": question}], temperature=0,
                max_tokens=self.max_tokens)
            return out.choices[0].message.content or ""
        except Exception as e:  # a failed request is that pair's unreadable answer, not the end of the run
            return e

    def ask(self, questions: Sequence[str]) -> list[str | Exception]:
        with ThreadPoolExecutor(self.concurrency) as pool:
            return list(pool.map(self._one, questions))


@dataclass
class JudgeReport:
    """What a judging run did."""

    judge: str
    pairs: int = 0
    """Pairs asked about."""
    asked: int = 0
    """Answers asked for (two per pair with ``both_orders``)."""
    saved: int = 0
    inconsistent: int = 0
    already: int = 0
    unreadable: int = 0
    failed: int = 0
    first_unreadable: str = ""
    first_failure: str = ""
    out: str = ""
    records: list[dict[str, Any]] = field(default_factory=list)

    @property
    def no_verdict(self) -> bool:
        """Answers were asked for and not one could be read (every request failed or was unreadable)."""
        return self.asked > 0 and self.failed + self.unreadable == self.asked

    def failure_line(self) -> str:
        """One line on a run that got no verdict (``biglm judge`` exits 2 with it)."""
        why = [f"{n} {what} (first: {first})" for n, what, first in (
            (self.failed, "failed", " ".join(self.first_failure.split())[:200]),  # as one line
            (self.unreadable, "unreadable", repr(self.first_unreadable[:120]))) if n]
        return f"judge {self.judge}: no verdict from {self.asked} requests, nothing saved to {self.out}: " + \
            "; ".join(why)

    def summary(self) -> str:
        lines = [f"judge {self.judge}: {self.saved} answers saved to {self.out}"
                 + (f", {self.already} pairs already judged" if self.already else "")]
        if self.unreadable:
            lines.append(f"judge: {self.unreadable} of {self.asked} answers unreadable, skipped; first: "
                         f"{self.first_unreadable[:120]!r}")
        if self.failed:
            lines.append(f"judge: {self.failed} of {self.asked} requests failed, skipped; first: {self.first_failure}")
        if self.inconsistent:
            lines.append(f"judge: {self.inconsistent} of {self.pairs} pairs judged differently with A and B swapped, "
                         "skipped")
        return "\n".join(lines)


SWAP = {"A": "B", "B": "A", "both_good": "both_good", "both_bad": "both_bad"}


def swapped(pair: Pair) -> Pair:
    """The pair with A and B exchanged."""
    return Pair(pair.prompt, pair.response_b, pair.response_a, pair.model_b, pair.model_a)


def agreed(first: Answer, second: Answer) -> Answer | None:
    """The verdict of both orders (``second`` was given about the swapped pair), or None when the helpfulness
    differs; an acceptability the two orders disagree on is left out."""
    if SWAP[second.choice] != first.choice:
        return None
    return Answer(first.choice, first.acceptable_a if first.acceptable_a == second.acceptable_b else None,
                  first.acceptable_b if first.acceptable_b == second.acceptable_a else None)


def judge_pairs(pairs: Sequence[Pair], judge: Any, store: AnswerStore, template: str, chunk: int = 32,
                both_orders: bool = False, on_progress: Callable[[JudgeReport, int], None] | None = None
                ) -> JudgeReport:
    """Ask ``judge`` about every pair it has not answered in ``store`` yet and save the readable answers
    (annotator ``ai:<judge.name>``), ``chunk`` pairs at a time so a stop loses at most one chunk's questions.

    ``both_orders`` asks each pair a second time with A and B swapped and keeps only a helpfulness verdict the
    two orders agree on (LLM judges favour one position; a disagreement is counted and skipped).
    ``on_progress(report, pairs_to_do)`` is called after each chunk."""
    annotator = f"ai:{judge.name}"
    report = JudgeReport(judge.name, out=str(store.path))
    todo = [p for p in pairs if not store.answered(annotator, p.key)]
    report.already = len(pairs) - len(todo)
    ways = 2 if both_orders else 1
    for start in range(0, len(todo), chunk):
        part = todo[start:start + chunk]
        questions = [render(template, q) for p in part for q in ((p, swapped(p)) if both_orders else (p,))]
        replies = judge.ask(questions)
        for n, pair in enumerate(part):
            verdicts = [_read(report, r) for r in replies[n * ways:(n + 1) * ways]]
            if any(v is None for v in verdicts):
                continue
            verdict = verdicts[0] if not both_orders else agreed(verdicts[0], verdicts[1])
            if verdict is None:
                report.inconsistent += 1
                continue
            try:
                report.records.append(store.add(annotator, pair, verdict))
                report.saved += 1
            except Conflict:
                report.already += 1
        report.pairs += len(part)
        if on_progress is not None:
            on_progress(report, len(todo))
    return report


def _read(report: JudgeReport, reply: str | Exception) -> Answer | None:
    """One reply's verdict, counting the failed and the unreadable ones."""
    report.asked += 1
    if isinstance(reply, Exception):
        report.failed += 1
        report.first_failure = report.first_failure or f"{type(reply).__name__}: {reply}"
        return None
    verdict = parse_verdict(reply)
    if verdict is None:
        report.unreadable += 1
        report.first_unreadable = report.first_unreadable or reply
    return verdict


__all__ = ["CheckpointJudge", "EndpointJudge", "JudgeReport", "agreed", "judge_pairs", "load_template",
           "parse_verdict", "render", "swapped"]
