"""Mask-Predict rows that join and leave the running batch between passes (``STEPPERS["mask-predict"]``).

Each admitted row becomes a ``biglm.generate.stepwise.DecodeJob``: its prefix encoded once when it joins (exact
cache, length-head candidates), its own pass counter, passes T, length L or candidates, strategy, sampling
settings and seeded generator. Every ``step()`` runs one forward pass for all the rows (whatever pass each is
at: prefixes left-padded with document id -1, the joined cache kept while the rows stay), then each row takes
its own positions' logits. So a reply is the one ``ChatModel.complete_ids`` gives for that request alone
(greedy or seeded), whenever it joined and whoever shared its passes; rows of any settings share one stepper.
"""

from __future__ import annotations

import sys
from collections.abc import Hashable, Sequence

from biglm.chat.session import ChatModel, ChatSettings
from biglm.errors import BiglmError
from biglm.generate.stepwise import DecodeJob, PassBatch
from biglm.serve.rows import Row, RowEvent


def masked_batch_key(settings: ChatSettings, stream: bool, key: int) -> Hashable:
    """Every row of the model shares the one stepper: settings and streaming are per row."""
    return "mask-predict"


class MaskedStepper:
    """Continuous Mask-Predict (see the module docstring); ``prefix_cache=False`` re-encodes the prompts with the
    suffix every pass instead (same replies, slower)."""

    batch_key = staticmethod(masked_batch_key)

    def __init__(self, chat: ChatModel, prefix_cache: bool = True) -> None:
        self.chat, self.prefix_cache = chat, prefix_cache
        self.batch = PassBatch(chat.model)
        self.rows: dict[int, tuple[Row, str]] = {}
        """Key -> the row and its length mode (``fixed`` or ``predict``, as the model allows)."""
        self.failed: dict[int, str] = {}
        """Rows that could not start (reported by the next step)."""

    @property
    def active(self) -> int:
        return len(self.rows) + len(self.failed)

    def keys(self) -> list[int]:
        return [*self.rows, *self.failed]

    def admit(self, rows: Sequence[Row]) -> None:
        """Encode each row's prompt (alone: a row that fails, fails by itself); it joins at the next pass."""
        for row in rows:
            try:
                options = self.chat.masked_decoding(row.settings)
                job = DecodeJob(self.chat.model, row.prompt, prefix_cache=self.prefix_cache, **options)
            except Exception as e:  # whatever the error, only this row fails
                if not isinstance(e, BiglmError):
                    print(f"biglm serve: error starting a reply: {type(e).__name__}: {e}", file=sys.stderr)
                self.failed[row.key] = str(e) if isinstance(e, BiglmError) else f"internal error: {type(e).__name__}"
                continue
            self.rows[row.key] = (row, options["length"])
            self.batch.add(row.key, job)

    def drop(self, key: int) -> None:
        self.rows.pop(key, None)
        self.failed.pop(key, None)
        self.batch.remove(key)

    def step(self) -> list[RowEvent]:
        """One pass for every row: streamed rows get the suffix fed to it; finished rows their reply."""
        events = [RowEvent(key, error=message) for key, message in self.failed.items()]
        self.failed.clear()
        for key, (row, _) in self.rows.items():
            job = self.batch.jobs[key]
            if row.stream and not job.done:
                events.append(RowEvent(key, update=self.chat.pass_update(job.passes, job.fed())))
        self.batch.step()
        for key, (row, length) in list(self.rows.items()):
            job = self.batch.jobs[key]
            if job.done:
                reply = self.chat.masked_replies(job.output(), [(row.prompt, row.dropped)], length)[0]
                events.append(RowEvent(key, reply=reply))
                self.drop(key)
        return events


