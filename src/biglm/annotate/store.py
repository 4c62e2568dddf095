"""Crash-safe JSONL files for annotation: every answer is on disk, whole, the moment it is acknowledged.

``JsonlLog`` is an append-only JSONL file held by one process (``biglm.files.hold_lock`` on ``FILE.lock`` beside
the resolved file, so a second writer through a symlink or another spelling of the path is refused too; the
kernel drops it when the process dies, so a killed server never blocks its restart). A record is appended as
one ``write`` of its whole line with ``O_APPEND``, then ``fsync``: a kill can only stop before or after the
line. A line torn by a power cut or by an editor is repaired on open: a last line that still parses gets its
newline, one that does not is cut off and kept in ``FILE.torn`` (a note says so). Removing a record (undo)
rewrites the file beside it and renames it over (``biglm.files.atomic_write_text``; the resolved file: a
symlink to it stays a symlink), so a reader such as
``biglm finetune --task reward`` sees the old or the new file, never a half-written one, and never sees a
removed answer.

``AnswerStore`` keeps preference judgements in biglm's format (``biglm.data.preferences``) on a ``JsonlLog``:
one answer per (annotator, pair) - a second is refused, so none is saved twice - and undo of an annotator's
last answer. An annotator is whoever ``owner_of`` a record names: the ``annotator_id`` the annotation page
writes (the digest of the annotator's token, so a typed name alone cannot act as someone else) or else the
``annotator`` name (AI judges, other tools). A pair is named by the digest of its prompt and two responses
(``pair_key``), so the file needs no extra field and answers written by other tools count too.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from biglm.data.preferences import ACCEPTABILITY, CHOICES, preference_pair
from biglm.data.records import Record, json_object
from biglm.errors import BiglmError
from biglm.files import atomic_write_bytes, atomic_write_text, bytes_digest, hold_lock
from biglm.textio import decode_utf8, parse_json


class Conflict(BiglmError):
    """The request contradicts what is saved (an answer given twice, an undo with nothing to undo)."""


def owner_of(record: dict[str, Any]) -> str:
    """Who gave an answer: its ``annotator_id`` (the annotation page's token digest), else its ``annotator``."""
    return str(record.get("annotator_id") or record.get("annotator", ""))


def pair_key(prompt: Any, response_a: str, response_b: str) -> str:
    """A pair's name: the digest of its prompt and two responses in their A/B order."""
    text = json.dumps([prompt, response_a, response_b], ensure_ascii=False, sort_keys=True)
    return bytes_digest(text.encode())[:16]


class JsonlLog:
    """An append-only JSONL file owned by this process; see the module docstring."""

    def __init__(self, path: str | os.PathLike, what: str = "records") -> None:
        self.path, self.what = Path(path), what
        if self.path.is_dir():
            raise BiglmError(f"{self.path}: is a folder; expected a JSONL file for the {what}")
        self.file = self.path.resolve()  # every read, write, lock and rename goes to the file a symlink names
        self._lock = hold_lock(self.file.with_name(self.file.name + ".lock"), str(self.path))
        try:
            self.records: list[dict[str, Any]] = self._read()
            self._fd = self._open()
        except BaseException:
            self._lock.release()
            raise

    def _open(self) -> int:
        new = not self.file.exists()
        fd = os.open(self.file, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        if new:  # the file's name must survive a crash too
            dir_fd = os.open(self.file.parent, os.O_RDONLY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)
        return fd

    def _read(self) -> list[dict[str, Any]]:
        if not self.file.exists():
            return []
        data = self.file.read_bytes()
        decode_utf8(data[:data.rfind(b"\n") + 1], str(self.path))  # whole lines: a torn last one is repaired
        if data and not data.endswith(b"\n"):
            self._repair(data)
            data = self.file.read_bytes()
        out = []
        for lineno, line in enumerate(decode_utf8(data, str(self.path)).splitlines(), 1):
            if line.strip():
                out.append(json_object(line, f"{self.path}:{lineno}", "; fix or remove that line"))
        return out

    def _repair(self, data: bytes) -> None:
        """Give a whole last line its newline; cut a torn one off into ``FILE.torn`` (with a note)."""
        cut = data.rfind(b"\n") + 1
        tail = data[cut:]
        try:
            whole = isinstance(parse_json(tail, str(self.path)), dict)
        except BiglmError:
            whole = False
        if whole:
            atomic_write_bytes(self.file, data + b"\n")
            return
        torn = self.file.with_name(self.file.name + ".torn")
        with open(torn, "ab") as f:
            f.write(tail + b"\n")
        atomic_write_bytes(self.file, data[:cut])
        print(f"note: {self.path}: its last line was cut off mid-write ({len(tail)} bytes); removed it and kept it "
              f"in {torn.name}", file=sys.stderr)

    def append(self, record: dict[str, Any]) -> None:
        """Write ``record`` as one line (one ``write``, then ``fsync``)."""
        line = (json.dumps(record, ensure_ascii=False) + "\n").encode()
        size = os.fstat(self._fd).st_size
        view = memoryview(line)
        try:
            while view:  # a regular file takes the whole line at once; the loop only guards short writes
                view = view[os.write(self._fd, view):]
            os.fsync(self._fd)
        except OSError:  # a full disk: take back the part written, so the next line does not join a torn one
            os.ftruncate(self._fd, size)
            raise
        self.records.append(record)

    def rewrite(self, records: list[dict[str, Any]]) -> None:
        """Replace the file's records atomically (temporary file, then rename)."""
        atomic_write_text(self.file, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
        os.close(self._fd)  # the rename gave the name a new file: append to that one from now on
        self._fd = self._open()
        self.records = list(records)

    def close(self) -> None:
        os.close(self._fd)
        self._lock.release()

    def __iter__(self) -> Iterator[dict[str, Any]]:
        return iter(self.records)


@dataclass
class Answer:
    """One judgement of a pair (the labels of ``biglm.data.preferences``)."""

    choice: str
    acceptable_a: str | None = None
    acceptable_b: str | None = None

    def check(self) -> Answer:
        if self.choice not in CHOICES:
            raise BiglmError(f"choice={self.choice!r}: expected one of {', '.join(CHOICES)}")
        for name, value in (("acceptable_a", self.acceptable_a), ("acceptable_b", self.acceptable_b)):
            if value is not None and value not in ACCEPTABILITY:
                raise BiglmError(f"{name}={value!r}: expected one of {', '.join(ACCEPTABILITY)}")
        return self


class AnswerStore:
    """Preference judgements on a ``JsonlLog``: one per (annotator, pair), undo of an annotator's last one.
    Thread-safe (the page's requests arrive on several threads)."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.log = JsonlLog(path, "answers")
        self.lock = threading.Lock()
        self.done: set[tuple[str, str]] = set()
        try:
            self._index()
        except BiglmError:
            self.log.close()  # refused: let go of the file
            raise

    def _index(self) -> None:
        for i, r in enumerate(self.log.records, 1):
            if "response_a" not in r or "response_b" not in r:
                raise BiglmError(f"{self.log.path}:{i}: not an answer in biglm's preference format (no response_a/"
                                 "response_b); write the answers to a new file")
            # What is already there must read back as the reward task reads it (a known choice, both responses).
            preference_pair(Record(r, f"{self.log.path}:{i}"))
            self.done.add((owner_of(r), pair_key(r["prompt"], r["response_a"], r["response_b"])))

    @property
    def path(self) -> Path:
        return self.log.path

    def answered(self, who: str, key: str) -> bool:
        """Whether ``who`` (``owner_of``: an annotator id or name) answered the pair ``key``."""
        return (who, key) in self.done

    def count(self, who: str) -> int:
        return sum(1 for a, _ in self.done if a == who)

    def add(self, annotator: str, pair: Any, answer: Answer, owner: str | None = None) -> dict[str, Any]:
        """Save ``answer`` to ``pair`` (a ``biglm.annotate.pairs.Pair``) by ``annotator`` (the name saved), who is
        ``owner`` (saved as ``annotator_id``) when given; a ``Conflict`` if they already answered it. The record
        is checked by the preference reader before it is written, so the file always reads back."""
        answer.check()
        record: dict[str, Any] = {"prompt": pair.prompt, "response_a": pair.response_a,
                                  "response_b": pair.response_b}
        for name, value in (("model_a", pair.model_a), ("model_b", pair.model_b), ("choice", answer.choice),
                            ("acceptable_a", answer.acceptable_a), ("acceptable_b", answer.acceptable_b)):
            if value:
                record[name] = value
        record["annotator"] = annotator
        if owner:
            record["annotator_id"] = owner
        record["timestamp"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        preference_pair(Record(record, f"{self.path} (new answer)"))
        with self.lock:
            key = (owner_of(record), pair.key)
            if key in self.done:
                raise Conflict(f"pair {pair.key} is already answered by {annotator} in {self.path}")
            self.log.append(record)
            self.done.add(key)
        return record

    def undo(self, who: str, name: str | None = None) -> dict[str, Any]:
        """Remove the last answer of ``who`` (``owner_of``; ``name`` says who in the message) by an atomic
        rewrite; a ``Conflict`` when there is none."""
        with self.lock:
            records = self.log.records
            last = next((i for i in range(len(records) - 1, -1, -1) if owner_of(records[i]) == who), None)
            if last is None:
                raise Conflict(f"nothing to undo: {name or who} has no answer in {self.path}")
            removed = records[last]
            self.log.rewrite(records[:last] + records[last + 1:])
            self.done.discard((who, pair_key(removed["prompt"], removed["response_a"], removed["response_b"])))
            return removed

    def close(self) -> None:
        self.log.close()


__all__ = ["Answer", "AnswerStore", "Conflict", "JsonlLog", "owner_of", "pair_key"]
