"""Pack tokenised documents into fixed-length rows: mixture sampling, shuffling, resumable, DDP-split.

The global stream is defined once, independently of ranks:

1. Document ``k`` of the stream comes from source ``s`` with probability ∝ ``weight[s]``; the choice uses
   the ``k``-th uniform number of a counter-based generator seeded by ``seed`` (so the position is a
   handful of integers, not an opaque RNG state).
2. Each source walks a seeded permutation of its documents longer than ``min_doc_tokens``; when it
   runs out it starts its next epoch with a new permutation (an infinite stream), or leaves the
   mixture (a finite stream, ``infinite=False``, used for validation).
3. Each document becomes ``BOS doc EOS``; these are concatenated and cut into rows of ``seq_len``
   tokens. A document that does not fit continues at the start of the next row. ``document_ids``
   numbers the pieces inside a row 0, 1, 2, ...; -1 (and the PAD token) fills the tail of the last
   row of a finite stream.

Global row ``i`` goes to rank ``i % world_size``, so the local batches of ``world_size`` ranks
together hold exactly the rows of one process's global batch. ``state_dict()`` is taken after whole
rounds of ``world_size`` rows and is the same on every rank.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from biglm.data.prepare import PreparedData
from biglm.data.shards import Shard
from biglm.errors import BiglmError, check

PHASES = ("main", "anneal")
_BLOCK = 8192  # uniforms drawn per generator call


@dataclass
class _Source:
    name: str
    shard: Shard
    weight: float
    eligible: np.ndarray  # indices of documents longer than min_doc_tokens
    lengths: np.ndarray  # tokens per document (without BOS/EOS)
    tokens: np.ndarray  # the shard's memory map seen as a plain array (cheaper slicing)


@dataclass
class _Cursor:
    """Exact position of one phase's stream; plain integers so it serialises as JSON."""

    docs_drawn: int = 0
    rows: int = 0
    epochs: list[int] = field(default_factory=list)
    cursors: list[int] = field(default_factory=list)
    exhausted: list[bool] = field(default_factory=list)
    carry: list[int] | None = None  # [source, doc, offset into BOS+doc+EOS] of a partly emitted document


SourceList = Mapping[Any, float] | Sequence[Any]


class PackedRows:
    """An iterable of packed rows ``{"input_ids": (seq_len,) int64, "document_ids": (seq_len,) int32}``.

    ``sources`` maps shard folders (or ``Shard`` objects) to weights, or is a list of ``(shard, weight)``
    pairs or of bare shards (weight 1). ``anneal_sources`` is a second mixture used after
    ``set_phase("anneal")``. See the module docstring for the exact stream definition.

    Iterating (``for row in rows`` or ``rows.batches(B)``) advances one shared position, which
    ``state_dict()`` / ``load_state_dict()`` save and restore. Nothing is read ahead: the position
    after a yielded batch is exactly "after that batch".
    """

    def __init__(self, sources: SourceList, seq_len: int, *, bos_token_id: int, eos_token_id: int,
                 pad_token_id: int, min_doc_tokens: int = 20, seed: int = 0, rank: int = 0,
                 world_size: int = 1, infinite: bool = True, anneal_sources: SourceList | None = None,
                 phase: str = "main", batch_size: int | None = None):
        check(seq_len > 0, f"PackedRows: seq_len={seq_len} must be > 0")
        check(world_size >= 1 and 0 <= rank < world_size,
              f"PackedRows: rank={rank} must be in [0, world_size={world_size})")
        check(min_doc_tokens >= 0, f"PackedRows: min_doc_tokens={min_doc_tokens} must be >= 0")
        check(seed >= 0, f"PackedRows: seed={seed} must be >= 0")
        self.seq_len, self.min_doc_tokens, self.seed = seq_len, min_doc_tokens, seed
        self.rank, self.world_size, self.infinite, self.batch_size = rank, world_size, infinite, batch_size
        self.bos, self.eos, self.pad = bos_token_id, eos_token_id, pad_token_id
        self._mixtures = {"main": self._open(sources, "sources")}
        if anneal_sources:
            self._mixtures["anneal"] = self._open(anneal_sources, "anneal_sources")
        self._state = {p: self._fresh(p) for p in self._mixtures}
        self._perm_cache: dict[tuple[str, int], tuple[int, np.ndarray]] = {}
        self._choice_cache: dict[tuple[str, tuple[int, ...]], tuple[int, list[int]]] = {}
        self.phase = "main"
        self.set_phase(phase)

    # ---- construction ----------------------------------------------------------------------------
    def _open(self, sources: SourceList, what: str) -> list[_Source]:
        pairs = list(sources.items()) if isinstance(sources, Mapping) else [
            s if isinstance(s, tuple) else (s, 1.0) for s in sources]
        check(len(pairs) > 0, f"PackedRows: {what} is empty", BiglmError)
        out = []
        for src, weight in pairs:
            shard = src if isinstance(src, Shard) else Shard(src)
            check(weight > 0, f"PackedRows: weight {weight} of {shard.path} must be > 0")
            lengths = shard.lengths
            eligible = np.flatnonzero(lengths > self.min_doc_tokens)
            name = str(shard.meta.get("name") or shard.path.name)
            check(len(eligible) > 0, f"{shard.path}: no document longer than min_doc_tokens="
                  f"{self.min_doc_tokens} tokens (of {shard.n_docs})", BiglmError)
            out.append(_Source(name, shard, float(weight), eligible, lengths, np.asarray(shard.tokens)))
        return out

    def _fresh(self, phase: str) -> _Cursor:
        n = len(self._mixtures[phase])
        return _Cursor(epochs=[0] * n, cursors=[0] * n, exhausted=[False] * n)

    def set_phase(self, phase: str) -> None:
        """Switch between the ``main`` mixture and the ``anneal`` mixture; each keeps its own position."""
        check(phase in PHASES, f"PackedRows.set_phase: phase={phase!r}; expected 'main' or 'anneal'")
        check(phase in self._mixtures, "PackedRows.set_phase('anneal'): no anneal_sources were given", BiglmError)
        self.phase = phase

    # ---- randomness (counter based) ---------------------------------------------------------------
    def _phase_id(self) -> int:
        return PHASES.index(self.phase)

    def _choice(self, k: int, active: Sequence[int]) -> int:
        """Source of the ``k``-th document: uniform ``k`` of a counter-based stream, mapped by weight."""
        block = k // _BLOCK
        key = (self.phase, tuple(active))
        cached = self._choice_cache.get(key)
        if cached is None or cached[0] != block:
            u = np.random.default_rng([self.seed, self._phase_id(), 0xD0C, block]).random(_BLOCK)
            w = np.cumsum([self._mixtures[self.phase][i].weight for i in active])
            pick = np.minimum(np.searchsorted(w, u * w[-1], side="right"), len(active) - 1)
            cached = self._choice_cache[key] = (block, pick.tolist())
        return active[cached[1][k % _BLOCK]]

    def _perm(self, s: int, epoch: int) -> np.ndarray:
        cached = self._perm_cache.get((self.phase, s))
        if cached is None or cached[0] != epoch:
            src = self._mixtures[self.phase][s]
            perm = np.random.default_rng([self.seed, self._phase_id(), s, epoch]).permutation(src.eligible)
            cached = self._perm_cache[(self.phase, s)] = (epoch, perm)
        return cached[1]

    # ---- the stream ----------------------------------------------------------------------------------
    def _draw(self, st: _Cursor) -> tuple[int, int] | None:
        """Next (source, document) of the stream, or None when a finite stream is over."""
        srcs = self._mixtures[self.phase]
        active = range(len(srcs)) if self.infinite else [i for i in range(len(srcs)) if not st.exhausted[i]]
        if not active:
            return None
        s = self._choice(st.docs_drawn, active)
        st.docs_drawn += 1
        perm = self._perm(s, st.epochs[s])
        d = int(perm[st.cursors[s]])
        st.cursors[s] += 1
        if st.cursors[s] == len(perm):
            if self.infinite:
                st.epochs[s], st.cursors[s] = st.epochs[s] + 1, 0
            else:
                st.exhausted[s] = True
        return s, d

    def _layout(self, st: _Cursor) -> list[tuple[int, int, int, int]]:
        """Segments ``(source, doc, start, end)`` (offsets into BOS+doc+EOS) of the next global row."""
        srcs = self._mixtures[self.phase]
        segs, room = [], self.seq_len
        while room > 0:
            if st.carry is None:
                nxt = self._draw(st)
                if nxt is None:
                    break
                st.carry = [nxt[0], nxt[1], 0]
            s, d, off = st.carry
            total = int(srcs[s].lengths[d]) + 2
            take = min(total - off, room)
            segs.append((s, d, off, off + take))
            room -= take
            st.carry = None if off + take == total else [s, d, off + take]
        if segs:
            st.rows += 1
        return segs

    def _fill(self, segs: list[tuple[int, int, int, int]], ids: np.ndarray, doc_ids: np.ndarray) -> None:
        """Write the tokens of ``segs`` into ``ids``/``doc_ids`` (one row), padding the tail."""
        srcs = self._mixtures[self.phase]
        pieces = []
        for s, d, a, b in segs:
            start = int(srcs[s].shard.offsets[d])
            pieces.append((srcs[s].tokens[start:start + int(srcs[s].lengths[d])], a, b))
        fill_row(pieces, ids, doc_ids, self.bos, self.eos, self.pad)

    def _next_round(self, ids: np.ndarray, doc_ids: np.ndarray) -> bool:
        """Lay out the next ``world_size`` global rows and fill this rank's; False when the stream is over."""
        st = self._state[self.phase]
        mine = False
        for r in range(self.world_size):
            segs = self._layout(st)
            if not segs:
                return mine
            if r == self.rank:
                self._fill(segs, ids, doc_ids)
                mine = True
        return mine

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        """Rows for this rank, one at a time (forever unless ``infinite=False``)."""
        while True:
            ids = np.empty(self.seq_len, np.int64)
            doc_ids = np.empty(self.seq_len, np.int32)
            if not self._next_round(ids, doc_ids):
                return
            yield {"input_ids": torch.from_numpy(ids), "document_ids": torch.from_numpy(doc_ids)}

    def batches(self, batch_size: int | None = None) -> Iterator[dict[str, torch.Tensor]]:
        """Batches ``{"input_ids": (B, T) int64, "document_ids": (B, T) int32}`` of this rank's rows.

        The last batch of a finite stream may hold fewer rows. ``state_dict()`` taken between batches
        resumes right after the last batch yielded.
        """
        b = batch_size or self.batch_size
        check(b is not None and b > 0, f"PackedRows.batches: batch_size={b} must be > 0")
        while True:
            ids = np.empty((b, self.seq_len), np.int64)
            doc_ids = np.empty((b, self.seq_len), np.int32)
            n = 0
            while n < b and self._next_round(ids[n], doc_ids[n]):
                n += 1
            if n == 0:
                return
            yield {"input_ids": torch.from_numpy(ids[:n]), "document_ids": torch.from_numpy(doc_ids[:n])}
            if n < b:
                return

    def num_rows(self) -> int:
        """Rows this rank will still get from a finite stream (a dry run of the layout; no tokens read)."""
        check(not self.infinite, "PackedRows.num_rows: the stream is infinite", BiglmError)
        st = copy.deepcopy(self._state[self.phase])
        total = 0
        while self._layout(st):
            total += 1
        done, w = self._state[self.phase].rows, self.world_size
        return len(range(done + (self.rank - done) % w, done + total, w))

    # ---- checkpointing ---------------------------------------------------------------------------------
    def _identity(self) -> dict[str, Any]:
        # Weights may change between runs (the stream then follows the new mixture); documents may not.
        return {p: [[s.name, s.shard.n_docs] for s in m] for p, m in self._mixtures.items()}

    def state_dict(self) -> dict[str, Any]:
        """The exact stream position (JSON-serialisable, identical on every rank)."""
        return {"version": 1, "seed": self.seed, "seq_len": self.seq_len, "min_doc_tokens": self.min_doc_tokens,
                "sources": self._identity(), "phase": self.phase,
                "state": {p: copy.deepcopy(vars(st)) for p, st in self._state.items()}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue exactly where ``state`` was taken; the sources, seed and seq_len must match."""
        for k in ("seed", "seq_len", "min_doc_tokens"):
            check(state.get(k) == getattr(self, k),
                  f"PackedRows.load_state_dict: {k}={state.get(k)!r} in the checkpoint, {getattr(self, k)!r} now",
                  BiglmError)
        check(_norm(state.get("sources")) == _norm(self._identity()),
              "PackedRows.load_state_dict: the checkpoint was taken with other data sources "
              f"({state.get('sources')} vs {self._identity()})", BiglmError)
        self._state = {p: _Cursor(**copy.deepcopy(v)) for p, v in state["state"].items()}
        self.set_phase(state["phase"])


def fill_row(pieces: Sequence[tuple[Sequence[int] | np.ndarray, int, int]], ids: np.ndarray, doc_ids: np.ndarray,
             bos: int, eos: int, pad: int) -> None:
    """Write one packed row: piece k is ``(document tokens, start, end)``, offsets into ``BOS doc EOS``, and gets
    document id k; the tail is PAD with document id -1. The one row format of every packer here."""
    pos = 0
    for k, (doc, a, b) in enumerate(pieces):
        n, p = len(doc), pos
        if a == 0:
            ids[p] = bos
            p += 1
        ta, tb = max(a - 1, 0), min(b - 1, n)
        if tb > ta:
            ids[p:p + tb - ta] = doc[ta:tb]
            p += tb - ta
        if b == n + 2:
            ids[p] = eos
        doc_ids[pos:pos + b - a] = k
        pos += b - a
    ids[pos:] = pad
    doc_ids[pos:] = -1


def pack_documents(docs: Sequence[Sequence[int]], seq_len: int, bos: int, eos: int,
                   pad: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """``(input_ids (T,), document_ids (T,))`` rows of in-memory documents in their order, in ``PackedRows``'
    format: ``BOS doc EOS`` one after the other, a document that does not fit continuing in the next row, the
    last row padded."""
    rows: list[tuple[torch.Tensor, torch.Tensor]] = []
    pieces: list[tuple[Sequence[int], int, int]] = []
    room = seq_len

    def close() -> None:
        ids, doc_ids = np.empty(seq_len, np.int64), np.empty(seq_len, np.int32)
        fill_row(pieces, ids, doc_ids, bos, eos, pad)
        rows.append((torch.from_numpy(ids), torch.from_numpy(doc_ids)))

    for doc in docs:
        total, off = len(doc) + 2, 0
        while off < total:
            take = min(total - off, room)
            pieces.append((doc, off, off + take))
            off, room = off + take, room - take
            if room == 0:
                close()
                pieces, room = [], seq_len
    if pieces:
        close()
    return rows


def _norm(x: Any) -> Any:
    """Lists and tuples compare alike (a checkpoint may have gone through JSON or YAML)."""
    if isinstance(x, list | tuple):
        return [_norm(v) for v in x]
    if isinstance(x, dict):
        return {k: _norm(v) for k, v in x.items()}
    return x


def build_rows(prepared: PreparedData, split: str = "train", seq_len: int | None = None,
               batch_size: int | None = None, rank: int = 0, world_size: int = 1,
               seed: int | None = None) -> PackedRows:
    """The packed-row stream of ``prepared`` (from ``prepare_data``) for one rank.

    ``split="train"``: an infinite stream over the training shards with the configured weights, plus
    the anneal mixture (switch with ``rows.set_phase("anneal")``). ``split="val"``: one finite pass
    over the held-out documents of the main sources. ``seq_len`` and ``seed`` default to the config's;
    ``batch_size`` is the default of ``rows.batches()`` (rows per rank). With ``world_size > 1`` the
    val stream gives ranks row counts that differ by at most one (see ``PackedRows.num_rows``).
    """
    check(split in ("train", "val"), f"build_rows: split={split!r}; expected 'train' or 'val'")
    tok = prepared.tokenizer
    common = {"bos_token_id": tok.bos_token_id, "eos_token_id": tok.eos_token_id,
              "pad_token_id": tok.pad_token_id, "min_doc_tokens": prepared.min_doc_tokens,
              "seed": prepared.seed if seed is None else seed, "rank": rank, "world_size": world_size,
              "batch_size": batch_size}
    seq_len = seq_len or prepared.seq_len
    if split == "train":
        anneal = [(s.train, s.weight) for s in prepared.anneal_sources]
        return PackedRows([(s.train, s.weight) for s in prepared.sources], seq_len,
                          anneal_sources=anneal or None, **common)
    val = [(s.val, s.weight) for s in prepared.sources
           if (s.val / "meta.json").is_file() and _has_eligible(s.val, prepared.min_doc_tokens)]
    check(bool(val), f"build_rows: no validation documents longer than {prepared.min_doc_tokens} tokens "
          "(raise data.val_fraction)", BiglmError)
    return PackedRows(val, seq_len, infinite=False, **common)


def _has_eligible(path: Any, min_doc_tokens: int) -> bool:
    return bool((Shard(path).lengths > min_doc_tokens).any())
