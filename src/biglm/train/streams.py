"""What the trainer needs from the data side (``RowStream``, ``DataBundle``), and ``SyntheticRows``: an
in-memory packed-row stream with the interface of ``biglm.data.PackedRows``, for tests and benchmarks.

Rows of one global stream are dealt round-robin to ranks (rank r gets rows r, r+W, r+2W, ...), and row
``g`` is a pure function of ``(seed, phase, g)``, so the stream is the same whatever the world size and
its state is a row counter. Each row packs documents of random length; a document repeats a short
random motif (a copy task): every masked token can be recovered from the unmasked ones, so a model that
learns to copy drives the loss well below ``ln(vocab)``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import torch

if TYPE_CHECKING:
    from biglm.train.config import RunConfig
    from biglm.train.parallel import DistEnv


class RowStream(Protocol):
    """What the trainer needs from a packed-row stream (``biglm.data.PackedRows`` implements it)."""

    def batches(self, batch_size: int | None = None) -> Iterator[dict[str, torch.Tensor]]: ...
    def state_dict(self) -> dict[str, Any]: ...
    def load_state_dict(self, state: dict[str, Any]) -> None: ...
    def set_phase(self, phase: str) -> None: ...


@dataclass
class DataBundle:
    """The data side of a run: row streams and the few tokenizer facts the trainer needs."""

    train: RowStream
    val: RowStream | None
    mask_token_id: int
    vocab_size: int
    """Padded vocabulary size (the embedding rows ``model.vocab_size: auto`` resolves to)."""
    n_tokens: int
    """Real token count of the tokenizer (a pinned ``model.vocab_size`` must be at least this)."""
    tokenizer: Any = None
    """Saved into every checkpoint when given."""
    anneal: bool = False
    """The train stream has an anneal mixture (``set_phase("anneal")``)."""
    special_ids: dict[str, Any] = field(default_factory=dict)
    """``bos``, ``eos``, ``pad``, ``mask`` token ids (objectives that mark directions or spans need them); GLM
    runs add ``smask``, ``gmask``, ``sop``, ``eop`` and ``sentence_ends`` (a tuple of ids)."""


DataFactory = Callable[["RunConfig", "DistEnv", int], DataBundle]
"""Builds a rank's ``DataBundle`` from the run config, the rank's place and the micro-batch size."""


class SyntheticRows:
    """Rows ``{"input_ids": (B, T) int64, "document_ids": (B, T) int32}`` of repeated random motifs.

    Token ids are drawn from ``[first_token, vocab_size)`` (ids below are left for special tokens);
    ``num_rows`` makes the stream finite (like a validation split).
    """

    def __init__(self, seq_len: int, vocab_size: int, seed: int = 0, rank: int = 0, world_size: int = 1,
                 first_token: int = 8, doc_len: tuple[int, int] = (16, 96), motif_len: tuple[int, int] = (2, 8),
                 num_rows: int | None = None) -> None:
        self.seq_len, self.vocab_size, self.seed = seq_len, vocab_size, seed
        self.rank, self.world_size, self.first_token = rank, world_size, first_token
        self.doc_len, self.motif_len, self.num_rows = doc_len, motif_len, num_rows
        self.phase = "main"
        self.rows = {"main": 0, "anneal": 0}
        """Global rows consumed so far, per phase (the same number on every rank)."""

    def row(self, index: int, phase: str = "main") -> tuple[torch.Tensor, torch.Tensor]:
        """Global row ``index`` of ``phase``: (tokens (T,), document ids (T,))."""
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + index * 2 + (phase == "anneal"))
        ids = torch.empty(self.seq_len, dtype=torch.long)
        docs = torch.empty(self.seq_len, dtype=torch.int32)
        pos, doc = 0, 0
        while pos < self.seq_len:
            n = int(torch.randint(self.doc_len[0], self.doc_len[1] + 1, (), generator=g))
            m = int(torch.randint(self.motif_len[0], self.motif_len[1] + 1, (), generator=g))
            motif = torch.randint(self.first_token, self.vocab_size, (m,), generator=g)
            n = min(n, self.seq_len - pos)
            ids[pos:pos + n] = motif.repeat(n // m + 1)[:n]
            docs[pos:pos + n] = doc
            pos, doc = pos + n, doc + 1
        return ids, docs

    def batches(self, batch_size: int | None = None) -> Iterator[dict[str, torch.Tensor]]:
        """This rank's rows, ``batch_size`` at a time; ``state_dict`` between batches resumes after the last."""
        b = batch_size or 1
        while True:
            rows = []
            while len(rows) < b:
                start = self.rows[self.phase]
                if self.num_rows is not None and start >= self.num_rows:
                    break
                self.rows[self.phase] = start + self.world_size
                if start + self.rank < (self.num_rows or float("inf")):
                    rows.append(self.row(start + self.rank, self.phase))
            if not rows:
                return
            yield {"input_ids": torch.stack([r[0] for r in rows]), "document_ids": torch.stack([r[1] for r in rows])}
            if len(rows) < b:
                return

    def state_dict(self) -> dict[str, Any]:
        return {"phase": self.phase, "rows": dict(self.rows), "seed": self.seed}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.phase, self.rows = state["phase"], dict(state["rows"])

    def set_phase(self, phase: str) -> None:
        self.phase = phase


SYNTHETIC_SPECIALS = {"pad": 0, "mask": 1, "bos": 2, "eos": 3, "smask": 4, "gmask": 5, "sop": 6, "eop": 7}


def synthetic_data(vocab_size: int = 512, seed: int = 0, val_rows: int = 32, **kwargs: Any) -> DataFactory:
    """A ``DataFactory`` of ``SyntheticRows`` (train: infinite with an anneal phase; val: ``val_rows`` rows).

    Ids 0..7 are left for specials: PAD 0, [MASK] 1, BOS 2, EOS 3, GLM's [sMASK] 4, [gMASK] 5, [sop] 6,
    [eop] 7 (the rows themselves hold none).
    """

    def build(cfg: RunConfig, env: DistEnv, micro_batch: int) -> DataBundle:
        common = dict(seq_len=cfg.data.seq_len, vocab_size=vocab_size, rank=env.rank, world_size=env.world_size)
        train = SyntheticRows(seed=seed, **common, **kwargs)
        val = SyntheticRows(seed=seed + 7919, num_rows=val_rows, **common, **kwargs) if val_rows else None
        return DataBundle(train, val, mask_token_id=1, vocab_size=-(-vocab_size // 64) * 64,
                          n_tokens=vocab_size, anneal=True, special_ids=dict(SYNTHETIC_SPECIALS))

    return build
