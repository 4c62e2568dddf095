"""One row format for every packer: ``PackedRows`` (the sharded stream) and ``pack_documents`` (in-memory
documents in order: the policy's pre-training rows in alignment) both write rows with ``fill_row``; here the
rows equal the format ``biglm.data.packing`` documents, written out token by token."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from biglm.data.packing import fill_row, pack_documents

BOS, EOS, PAD = 1, 2, 0


def reference_rows(docs, seq_len):
    """The stream written out token by token: BOS doc EOS concatenated, cut every seq_len, pieces numbered per row."""
    flat, owner = [], []
    for d, doc in enumerate(docs):
        flat += [BOS, *doc, EOS]
        owner += [d] * (len(doc) + 2)
    rows = []
    for start in range(0, len(flat), seq_len):
        ids, own = flat[start:start + seq_len], owner[start:start + seq_len]
        first = {o: k for k, o in enumerate(dict.fromkeys(own))}
        n = seq_len - len(ids)
        rows.append((ids + [PAD] * n, [first[o] for o in own] + [-1] * n))
    return rows


@pytest.mark.parametrize("seed", range(5))
def test_rows_are_the_concatenated_stream_cut_into_rows(seed):
    rng = random.Random(seed)
    docs = [[rng.randrange(3, 50) for _ in range(rng.randrange(0, 40))] for _ in range(rng.randrange(1, 12))]
    seq_len = rng.choice([4, 7, 16, 33])
    got = [(i.tolist(), d.tolist()) for i, d in pack_documents(docs, seq_len, BOS, EOS, PAD)]
    assert got == reference_rows(docs, seq_len)


def test_fill_row_writes_a_document_split_across_rows():
    ids, docs = np.empty(6, np.int64), np.empty(6, np.int32)
    fill_row([([5, 6, 7, 8], 3, 6), ([9], 0, 3)], ids, docs, BOS, EOS, PAD)  # the tail of one, all of the next
    assert ids.tolist() == [7, 8, EOS, BOS, 9, EOS] and docs.tolist() == [0, 0, 0, 1, 1, 1]
    rows = pack_documents([[5]], 8, BOS, EOS, PAD)
    assert torch.equal(rows[0][0], torch.tensor([BOS, 5, EOS, PAD, PAD, PAD, PAD, PAD]))
