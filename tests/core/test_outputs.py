"""Nothing is deleted or overwritten without asking, and one writer per run folder and answers file.

Every verb that writes goes through one output guard (``biglm.outputs.check_output``): an output that is,
contains or lies inside an input is refused whatever its spelling (relative, ``..``, a symlink), a non-empty
folder of another kind is never emptied (not even with ``--force``), and a file is written under a temporary
name and renamed. Training runs and the annotation answers file hold one lock (``biglm.files.hold_lock``): a
second writer gets one line naming the first one's PID, also through a symlink."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from biglm.annotate.store import Answer, AnswerStore
from biglm.cli import main
from biglm.errors import BiglmError
from biglm.files import hold_lock, lock_holder
from conftest import make_checkpoint
from test_annotate import PAIRS, write_pairs
from test_train_cli import CONFIGS, corpus  # noqa: F401  (fixture re-used)
from test_train_loop import micro_config, train

SRC = Path(__file__).resolve().parents[2] / "src"


def snapshot(*roots: Path) -> dict[Path, bytes]:
    """Every file under ``roots`` with its bytes (what a refused command must leave as it was)."""
    files = [p for r in roots for p in ([r] if r.is_file() else r.rglob("*")) if p.is_file()]
    return {p: p.read_bytes() for p in files}


def refused(capsys, argv: list[str], *texts: str) -> str:
    """``biglm ARGV`` exits 2 with one line on stderr holding every one of ``texts``."""
    capsys.readouterr()
    assert main(argv) == 2, argv
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    for text in texts:
        assert text in err, (text, err)
    return err


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    """A full and a sharded two-step micro run, a fine-tuned seq2seq run and its data."""
    root = tmp_path_factory.mktemp("outputs")
    train(micro_config(steps=2, save_every=2), root / "full")
    train(micro_config(steps=2, save_every=2, checkpoint_format="sharded"), root / "sharded")
    init = make_checkpoint(root / "init")
    data = write_jsonl(root / "data.jsonl", [{"id": f"e{i}", "source": "a b", "target": "b a"} for i in range(4)])
    assert main(["finetune", "--task", "seq2seq", "--init", str(init), "--train", str(data), "--out", str(root / "ft"),
                 "--epochs", "1", "--train.global_batch_size", "4", "--task.seq2seq.max_target_length", "8",
                 "--train.progress", "false", "--train.tensorboard", "false"]) == 0
    (root / "link").symlink_to(root / "sharded")
    return {"root": root, "full": root / "full", "sharded": root / "sharded", "init": init, "data": data,
            "ft": root / "ft"}


# --- 1. the output guard -------------------------------------------------------------------------------------

def test_consolidate_never_deletes_the_run_it_reads(runs, capsys, monkeypatch):
    run, before = runs["sharded"], snapshot(runs["sharded"])
    monkeypatch.chdir(runs["root"])
    step = run / "checkpoints" / "step_00000002"
    for out, relation in [(str(run), "is"), ("./sharded/../sharded", "is"), (str(runs["root"] / "link"), "is"),
                          (str(step), "is"), (str(runs["root"]), "contains"), (str(run / "best"), "lies inside")]:
        for force in ([], ["--force"]):
            refused(capsys, ["consolidate", str(run), "--out", out, *force], f"{relation} the source")
    refused(capsys, ["consolidate", "link", "--out", "sharded"], "is the source link")
    assert snapshot(run) == before


def test_consolidate_never_empties_another_folder(tmp_path, capsys):
    run = tmp_path / "run"
    train(micro_config(steps=2, save_every=2, checkpoint_format="sharded"), run)
    notes = tmp_path / "mine"
    notes.mkdir()
    (notes / "notes.txt").write_text("keep me")
    refused(capsys, ["consolidate", str(run), "--out", str(notes)], "not empty and not a checkpoint")
    refused(capsys, ["consolidate", str(run), "--out", str(notes), "--force"], "even with --force")
    assert [p.name for p in notes.iterdir()] == ["notes.txt"]
    # Its own kind of folder: replaced only with --force.
    out = tmp_path / "model"
    assert main(["consolidate", str(run), "--out", str(out)]) == 0
    refused(capsys, ["consolidate", str(run), "--out", str(out)], "pass --force to replace it")
    assert main(["consolidate", str(run), "--out", str(out), "--force"]) == 0
    assert (out / "model.safetensors").is_file()


def test_expand_never_replaces_its_source(runs, capsys):
    run, before = runs["full"], snapshot(runs["full"])
    for out in [run, run / "checkpoints" / "step_00000002", run / "checkpoints" / ".." / ".." / "full"]:
        refused(capsys, ["expand", "--ckpt", str(run), "--out", str(out), "--num-layers", "2x", "--force"],
                "the source", "replacing it would delete the source")
    assert snapshot(run) == before


def test_predict_never_overwrites_its_input_or_the_weights(runs, tmp_path, capsys):
    ft, data = runs["ft"], runs["data"]
    before = snapshot(ft, data)
    weights = ft / "checkpoints" / "step_00000001" / "model.safetensors"  # the checkpoint predict reads
    assert weights.is_file()
    predict = ["predict", "--ckpt", str(ft), "--input", str(data), "--out"]
    refused(capsys, [*predict, str(data)], "is the source")
    refused(capsys, [*predict, str(weights)], "lies inside the source")
    (tmp_path / "somedir").mkdir()
    refused(capsys, [*predict, str(tmp_path / "somedir")], "is a folder; expected the path of a file",
            "somedir/predictions.jsonl")
    assert snapshot(ft, data) == before
    # A file beside them is fine, written under a temporary name (nothing else is left behind).
    assert main(["predict", "--ckpt", str(ft), "--input", str(data), "--out", str(tmp_path / "p.jsonl")]) == 0
    assert len((tmp_path / "p.jsonl").read_text().splitlines()) == 4
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p.jsonl", "somedir"]


def test_every_writing_verb_refuses_to_write_over_what_it_reads(runs, corpus, tmp_path, capsys):  # noqa: F811
    data, tok = corpus
    init, ft, ckpt_data = runs["init"], runs["ft"], runs["data"]
    pairs = write_pairs(tmp_path / "pairs.jsonl")
    cfg = tmp_path / "recipes" / "micro.yaml"
    cfg.parent.mkdir()
    cfg.write_text((CONFIGS / "micro.yaml").read_text())
    before = snapshot(data.parent, init, ft, ckpt_data, pairs, cfg)
    pretrain = ["pretrain", "--config", str(CONFIGS / "micro.yaml"), "--data.tokenizer", str(tok), "--data.sources",
                f"[{data}]", "--train.progress", "false"]
    cases = [
        ([*pretrain, "--out", str(data.parent)], "contains the source"),
        ([*pretrain, "--out", str(tok)], "is the source"),
        ([*pretrain, "--out", str(tok / "x")], "lies inside the source"),
        (["finetune", "--task", "seq2seq", "--init", str(init), "--train", str(ckpt_data), "--out", str(init)],
         "is the source"),
        (["finetune", "--task", "seq2seq", "--init", str(init), "--train", str(ckpt_data), "--out", str(ckpt_data)],
         "is the source"),
        (["finetune", "--eval-only", "--ckpt", str(ft), "--out", str(ft)], "is the source"),
        (["align", "--init", str(init), "--reward", "py:x:y", "--prompts", str(ckpt_data), "--out", str(init)],
         "is the source"),
        (["export-hf", "--ckpt", str(init), "--out", str(init), "--force"], "is the source"),
        (["reward", "--ckpt", str(ft), "--input", str(ckpt_data), "--out", str(ckpt_data)], "is the source"),
        (["judge", "--pairs", str(pairs), "--out", str(pairs), "--judge-url", "http://127.0.0.1:9/v1",
          "--judge-model", "m"], "is the source"),
        (["annotate", "--pairs", str(pairs), "--out", str(pairs), "--port", "0"], "is the source"),
        (["evaluate", "--ckpt", str(init), "--tasks", "biglm_cloze", "--out", str(init)], "is the source"),
        (["compare", str(cfg), "--out", str(cfg.parent), "--train-only"], "contains the source"),
    ]
    for argv, text in cases:
        refused(capsys, argv, text)
    assert snapshot(data.parent, init, ft, ckpt_data, pairs, cfg) == before


def test_training_never_writes_into_another_kind_of_folder(corpus, tmp_path, capsys):  # noqa: F811
    data, tok = corpus
    (tmp_path / "notes.txt").write_text("keep me")
    refused(capsys, ["pretrain", "--config", str(CONFIGS / "micro.yaml"), "--out", str(tmp_path), "--data.tokenizer",
                     str(tok), "--data.sources", f"[{data}]", "--train.progress", "false"],
            "not empty and not a run folder")
    assert [p.name for p in tmp_path.iterdir()] == ["notes.txt"]


# --- 2. one writer per run folder and per answers file ----------------------------------------------------------

def test_a_second_run_into_the_same_folder_is_refused_naming_the_first(corpus, tmp_path):  # noqa: F811
    data, tok = corpus
    run = tmp_path / "runs" / "x"
    argv = [sys.executable, "-m", "biglm.cli", "pretrain", "--config", str(CONFIGS / "micro.yaml"), "--out", str(run),
            "--data.tokenizer", str(tok), "--data.sources", f"[{data}]", "--data.cache_dir", str(tmp_path / "cache"),
            "--train.progress", "false", "--train.steps", "100", "--train.save_every", "50"]
    env = {**os.environ, "PYTHONPATH": f"{SRC}{os.pathsep}{os.environ.get('PYTHONPATH', '')}", "OMP_NUM_THREADS": "1"}
    first = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        while first.poll() is None and lock_holder(run / ".lock") != first.pid:
            time.sleep(0.05)
        assert first.poll() is None, "the first run never held the run folder's lock"
        second = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=300)
        assert first.poll() is None, "the first run ended before the second tried"
        first_err = first.communicate(timeout=600)[1]
    finally:
        first.kill()
    assert second.returncode == 2
    lines = second.stderr.strip().splitlines()
    assert len(lines) == 1 and f"another process is writing it (PID {first.pid}" in lines[0], second.stderr
    assert first.returncode == 0, first_err
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == sorted({r["step"] for r in rows}) and rows[-1]["step"] == 100
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step_00000050", "step_00000100"]


def test_the_lock_names_its_holder_and_goes_with_it(tmp_path):
    lock = hold_lock(tmp_path / "x.lock", "thing")
    with pytest.raises(BiglmError, match=f"thing: another process is writing it \\(PID {os.getpid()}, lock "):
        hold_lock(tmp_path / "x.lock", "thing")
    lock.release()
    with hold_lock(tmp_path / "x.lock", "thing"):
        pass


def linked_answers(tmp_path: Path) -> tuple[Path, Path]:
    real = tmp_path / "data" / "prefs.jsonl"
    real.parent.mkdir()
    link = tmp_path / "prefs.jsonl"
    link.symlink_to(real)
    return real, link


def test_a_second_writer_through_a_symlink_is_refused(tmp_path):
    real, link = linked_answers(tmp_path)
    store = AnswerStore(real)
    with pytest.raises(BiglmError, match=f"another process is writing it \\(PID {os.getpid()}"):
        AnswerStore(link)  # the same file by another name: the same lock
    store.close()
    AnswerStore(link).close()


def test_undo_through_a_symlink_rewrites_the_file_it_names(tmp_path):
    real, link = linked_answers(tmp_path)
    store = AnswerStore(link)
    for pair in PAIRS[:3]:
        store.add("human:ann", pair, Answer("A"))
    store.undo("human:ann")
    store.add("human:ann", PAIRS[4], Answer("B"))
    store.close()
    assert link.is_symlink() and link.resolve() == real  # undo replaced the file, not the link
    prompts = [json.loads(x)["prompt"] for x in real.read_text().splitlines()]
    assert prompts == [PAIRS[0].prompt, PAIRS[1].prompt, PAIRS[4].prompt]
