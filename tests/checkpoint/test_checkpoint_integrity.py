"""Damaged checkpoints: every file of a checkpoint in turn is cut or altered; resume and load fall back to the
newest intact checkpoint with a note naming the file, a lone damaged checkpoint is a one-line error, pruning
never counts a damaged checkpoint, and NaN weights are never written."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from biglm.checkpoint import load_model, resolve_checkpoint, write_checkpoint
from biglm.cli import main
from biglm.config import ModelConfig
from biglm.errors import BiglmError
from biglm.train import checkpointing
from biglm.train.setup import setup
from biglm.train.streams import synthetic_data
from test_train_cli import corpus, pretrain  # noqa: F401  (fixture re-used)
from test_train_loop import micro_config, one_thread, read_rows  # noqa: F401  (fixture re-used)

FILES = ["model.safetensors", "optimizer.pt", "trainer_state.pt", "config.yaml", "model_config.yaml", "meta.json",
         "tokenizer/tokenizer.json", "tokenizer/tokenizer_config.json"]
TRAINING_STATE = {"optimizer.pt", "trainer_state.pt", "config.yaml"}  # read by --resume, not by load_model


@pytest.fixture(scope="module")
def source_run(tmp_path_factory, corpus) -> Path:  # noqa: F811
    """A micro run through the real pipeline with checkpoints at steps 4 and 8 (tokenizer included)."""
    run = tmp_path_factory.mktemp("integrity") / "run"
    assert pretrain(run, corpus, "--train.steps", "8", "--train.save_every", "4", "--train.keep_last", "5",
                    "--train.log_every", "2") == 0
    return run


def verify_checkpoint(folder: Path) -> None:
    from biglm.checkpoint import verify_checkpoint

    verify_checkpoint(folder)


def copy_run(source: Path, dest: Path) -> Path:
    shutil.copytree(source, dest)
    return dest


def damage(path: Path, how: str) -> None:
    data = path.read_bytes()
    if how == "truncate":
        path.write_bytes(data[: len(data) // 2])
    else:  # one byte changed in the middle, same size
        i = len(data) // 2
        path.write_bytes(data[:i] + bytes([data[i] ^ 0x20]) + data[i + 1:])


@pytest.mark.parametrize("how", ["truncate", "flip"])
@pytest.mark.parametrize("name", FILES)
def test_each_damaged_file_falls_back_to_the_newest_intact_checkpoint(source_run, tmp_path, name, how, capsys):
    run = copy_run(source_run, tmp_path / "run")
    newest = checkpointing.checkpoint_dir(run, 8)
    damage(newest / name, how)
    shown = name if name != "meta.json" else "meta.json"

    notes: list[str] = []
    assert checkpointing.find_resume_checkpoint(run, notes.append).name == "step_00000004"
    assert len(notes) == 1 and notes[0].startswith("note: skipping damaged checkpoint step_00000008 (") \
        and shown in notes[0] and notes[0].endswith("; resuming from step_00000004"), notes

    notes.clear()
    capsys.readouterr()
    if name in TRAINING_STATE:  # inference reads only the model files: the newest weights are intact
        assert load_model(run, note=notes.append).path.name == "step_00000008" and notes == []
        assert load_model(newest).meta["step"] == 8
        assert main(["generate", "--ckpt", str(run), "--prompt", "the cat", "--max-new-tokens", "4"]) == 0
        assert "note:" not in capsys.readouterr().err
        return
    loaded = load_model(run, note=notes.append)
    assert loaded.path.name == "step_00000004" and loaded.meta["step"] == 4
    assert len(notes) == 1 and shown in notes[0] and notes[0].endswith("using step_00000004"), notes

    with pytest.raises(BiglmError) as err:
        load_model(newest)
    assert shown in str(err.value) and "\n" not in str(err.value)

    # The command line says which checkpoint it used and why it skipped the newer one.
    assert main(["generate", "--ckpt", str(run), "--prompt", "the cat", "--max-new-tokens", "4"]) == 0
    err_text = capsys.readouterr().err
    assert f"note: skipping checkpoint step_00000008 ({shown}" in err_text and "using step_00000004" in err_text


def test_resume_after_damage_continues_like_an_uninterrupted_run(source_run, tmp_path, corpus):  # noqa: F811
    run = copy_run(source_run, tmp_path / "run")
    damage(checkpointing.checkpoint_dir(run, 8) / "optimizer.pt", "truncate")
    assert main(["pretrain", "--out", str(run), "--resume", "--train.steps", "10"]) == 0
    whole = tmp_path / "whole"
    assert pretrain(whole, corpus, "--train.steps", "10", "--train.save_every", "4", "--train.keep_last", "5",
                    "--train.log_every", "2") == 0
    got, want = read_rows(run), read_rows(whole)
    assert [r["step"] for r in got] == [r["step"] for r in want]
    for a, b in zip(got, want):
        for key in ("loss", "loss_x", "loss_y", "lr", "grad_norm", "val_loss"):
            assert (a.get(key) is None) == (b.get(key) is None)
            if a.get(key) is not None:
                assert a[key] == pytest.approx(b[key], abs=1e-6), (key, a, b)
    verify_checkpoint(checkpointing.checkpoint_dir(run, 8))  # the damaged one was written again, whole


def test_lone_damaged_checkpoint_is_a_one_line_error(source_run, tmp_path, capsys):
    run = copy_run(source_run, tmp_path / "run")
    shutil.rmtree(checkpointing.checkpoint_dir(run, 4))
    damage(checkpointing.checkpoint_dir(run, 8) / "model.safetensors", "truncate")
    rows_before = (run / "metrics.jsonl").read_text()
    for argv in (["generate", "--ckpt", str(run), "--prompt", "x"], ["export-hf", "--ckpt", str(run), "--out",
                 str(tmp_path / "hf")], ["pretrain", "--out", str(run), "--resume"]):
        capsys.readouterr()
        assert main(argv) == 2, argv
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and "no intact checkpoint" in err and \
            "step_00000008: model.safetensors has" in err and "truncated or damaged" in err, err
    # The refused resume neither restarted from step 0 nor touched the run's metrics.
    assert (run / "metrics.jsonl").read_text() == rows_before
    with pytest.raises(BiglmError, match=r"step_00000008: model.safetensors has \d[\d,]* bytes where"):
        resolve_checkpoint(checkpointing.checkpoint_dir(run, 8))


def test_keep_last_never_counts_a_damaged_checkpoint(tmp_path):
    run = tmp_path / "run"
    trainer = setup(micro_config(steps=6, save_every=1, keep_last=2), run, data=synthetic_data())
    trainer.fit(until=5)
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step_00000004", "step_00000005"]
    damage(checkpointing.checkpoint_dir(run, 5) / "model.safetensors", "truncate")
    trainer.fit()
    trainer.close()
    # Two intact checkpoints kept (4 and 6); the damaged 5 counted for nothing and was removed.
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step_00000004", "step_00000006"]
    for step in (4, 6):
        verify_checkpoint(checkpointing.checkpoint_dir(run, step))


def test_nonfinite_weights_are_never_written(tmp_path):
    config = ModelConfig.from_preset("micro")
    from biglm.checkpoint import model_state_dict
    from biglm.model import BiGLM

    state = model_state_dict(BiGLM(config))
    write_checkpoint(tmp_path / "good", state, config, step=1)
    state["model.norm.weight"][3] = float("nan")
    with pytest.raises(BiglmError, match=r"tensor 'model.norm.weight' holds NaN or Inf values; refusing"):
        write_checkpoint(tmp_path / "good", state, config, step=2)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["good"]  # untouched, nothing half written
    assert json.loads((tmp_path / "good" / "meta.json").read_text())["step"] == 1
    # The training writer also refuses non-finite optimizer state.
    good = model_state_dict(BiGLM(config))
    opt = {"state": {"model.norm.weight": {"exp_avg": torch.full((4,), float("inf"))}}, "param_groups": []}
    with pytest.raises(BiglmError, match=r"optimizer.pt: tensor 'state.model.norm.weight.exp_avg' holds NaN"):
        checkpointing.save_checkpoint(tmp_path / "run", 1, good, config, None, opt, {}, {}, keep_last=1)
    assert not (tmp_path / "run" / "checkpoints" / "step_00000001").exists()


def test_checkpoint_without_integrity_record_with_nan_weights_says_so(source_run, tmp_path, capsys):
    # As written by an earlier biglm: no size/checksum record, and weights that had diverged.
    run = copy_run(source_run, tmp_path / "run")
    newest = checkpointing.checkpoint_dir(run, 8)
    for folder in (checkpointing.checkpoint_dir(run, 4), newest):
        meta = json.loads((folder / "meta.json").read_text())
        meta = {k: v for k, v in meta.items() if not k.startswith(("integrity", "meta_"))}
        (folder / "meta.json").write_text(json.dumps({**meta, "format_version": 1}))  # the format before records
    weights = load_file(str(newest / "model.safetensors"))
    weights["model.embed_tokens.weight"][0, 0] = float("nan")
    save_file(weights, str(newest / "model.safetensors"))
    with pytest.raises(BiglmError, match=r"step_00000008: model.safetensors: tensor 'model.embed_tokens.weight' "
                                         r"holds NaN or Inf values"):
        load_model(newest)
    assert load_model(run, note=lambda _: None).path.name == "step_00000004"
    for argv in (["generate", "--ckpt", str(newest), "--prompt", "x"],
                 ["export-hf", "--ckpt", str(newest), "--out", str(tmp_path / "hf")]):
        capsys.readouterr()
        assert main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and "NaN or Inf" in err, err
    # A truncated file without a record is caught by its structure.
    damage(checkpointing.checkpoint_dir(run, 4) / "optimizer.pt", "truncate")
    with pytest.raises(BiglmError, match=r"step_00000004: optimizer.pt cannot be read, damaged"):
        verify_checkpoint(checkpointing.checkpoint_dir(run, 4))


def test_resume_with_an_emptied_run_config_uses_the_checkpoints_copy(source_run, tmp_path, capsys):
    run = copy_run(source_run, tmp_path / "run")
    (run / "config.yaml").write_text("")
    capsys.readouterr()
    assert main(["pretrain", "--out", str(run), "--resume", "--train.steps", "10"]) == 0
    assert f"note: {run / 'config.yaml'} is empty; using the run config saved in" in capsys.readouterr().err
    assert [r["step"] for r in read_rows(run)][-1] == 10
    assert "steps: 10" in (run / "config.yaml").read_text()  # the run-level copy is whole again
