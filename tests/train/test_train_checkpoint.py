"""Training checkpoints: atomic saves, keep-last-K, skipping an incomplete newest checkpoint on resume."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from biglm.checkpoint import load_model, resolve_checkpoint
from biglm.train import checkpointing
from biglm.train.setup import setup
from biglm.train.streams import synthetic_data
from test_train_loop import losses, micro_config, one_thread, train  # noqa: F401  (fixture re-used)


def step_names(run_dir) -> list[str]:
    return sorted(p.name for p in (run_dir / "checkpoints").iterdir())


def test_keep_last_k(tmp_path):
    run = tmp_path / "run"
    train(micro_config(steps=6, save_every=1, keep_last=2), run)
    assert step_names(run) == ["step_00000005", "step_00000006"]
    folder = run / "checkpoints" / "step_00000006"
    assert {"model.safetensors", "model_config.yaml", "optimizer.pt", "trainer_state.pt", "config.yaml",
            "meta.json"} <= {p.name for p in folder.iterdir()}
    state = checkpointing.read_trainer_state(folder)
    assert state["step"] == 6 and state["tokens_seen"] == 6 * 4 * 64
    assert load_model(run).config.num_layers == 2


def test_killed_save_keeps_previous_checkpoint(tmp_path, monkeypatch, capsys):
    run = tmp_path / "run"
    cfg = micro_config(steps=4, save_every=2)
    trainer = setup(cfg, run, data=synthetic_data())
    trainer.fit(until=2)
    real_save = torch.save

    def dying_save(obj, path, *args, **kwargs):
        if str(path).endswith(checkpointing.TRAINER_STATE):
            raise KeyboardInterrupt("killed half-way through the save")
        return real_save(obj, path, *args, **kwargs)

    monkeypatch.setattr(checkpointing.torch, "save", dying_save)
    with pytest.raises(KeyboardInterrupt):
        trainer.fit()  # steps 3-4, then the save of step 4 dies after the weights and optimizer were written
    trainer.close()
    monkeypatch.setattr(checkpointing.torch, "save", real_save)
    assert step_names(run) == [".tmp-step_00000004", "step_00000002"]
    assert resolve_checkpoint(run).name == "step_00000002"
    assert load_model(run).meta["step"] == 2
    # The resumed run notes the unfinished save, continues from step 2 and matches an uninterrupted run.
    capsys.readouterr()
    resumed = train(cfg, run, resume=True)
    assert "note: skipping incomplete checkpoint .tmp-step_00000004; resuming from step_00000002" \
        in capsys.readouterr().err
    assert resumed == pytest.approx(train(cfg, tmp_path / "whole"), abs=1e-6)
    assert step_names(run) == ["step_00000002", "step_00000004"]  # leftovers cleaned after a complete save


def test_incomplete_newest_checkpoint_is_skipped(tmp_path, capsys):
    run = tmp_path / "run"
    cfg = micro_config(steps=4, save_every=2)
    train(cfg, run)
    # A newest folder without meta.json (e.g. copied or truncated by hand) is not complete.
    broken = run / "checkpoints" / "step_00000006"
    shutil.copytree(run / "checkpoints" / "step_00000004", broken)
    (broken / "meta.json").unlink()
    notes: list[str] = []
    assert checkpointing.find_resume_checkpoint(run, notes.append).name == "step_00000004"
    assert notes == ["note: skipping incomplete checkpoint step_00000006 (no meta.json: its save did not finish); "
                     "resuming from step_00000004"]
    # Resuming a finished run re-saves nothing and trains no further step.
    before = losses(run)
    assert train(micro_config(steps=4, save_every=2), run, resume=True) == before


def test_resume_extends_a_finished_run(tmp_path):
    run = tmp_path / "run"
    train(micro_config(steps=4, schedule="constant", warmup_steps=0), run)
    longer = train(micro_config(steps=6, schedule="constant", warmup_steps=0), run, resume=True)
    whole = train(micro_config(steps=6, schedule="constant", warmup_steps=0), tmp_path / "whole")
    assert longer == pytest.approx(whole, abs=1e-6)
    meta = json.loads((run / "checkpoints" / "step_00000006" / "meta.json").read_text())
    assert meta["step"] == 6 and meta["tokens_seen"] == 6 * 4 * 64


def test_resume_repairs_damaged_metrics_lines(tmp_path, capsys):
    from biglm.train.plot import plot_run

    cfg = micro_config(steps=6, save_every=3)
    run = tmp_path / "run"
    train(cfg, run, until=3)
    lines = (run / "metrics.jsonl").read_text().splitlines()
    # An edit left junk in the middle, and a crash cut the last row mid-write (no newline).
    lines.insert(1, "<<<<<<< junk from an editor")
    (run / "metrics.jsonl").write_text("\n".join(lines) + '\n{"step": 4, "loss": 3.1')
    capsys.readouterr()
    resumed = train(cfg, run, resume=True)
    err = capsys.readouterr().err
    assert "metrics.jsonl: dropped 2 damaged line(s) (first: line 2)" in err, err
    assert resumed == pytest.approx(train(cfg, tmp_path / "whole"), abs=1e-6)
    for line in (run / "metrics.jsonl").read_text().splitlines():
        json.loads(line, parse_constant=lambda c: pytest.fail(f"not JSON: {c}"))
    # plot skips (and names) damaged lines instead of refusing the whole file.
    with open(run / "metrics.jsonl", "a") as f:
        f.write('{"step": 7, "lo')
    notes: list[str] = []
    assert plot_run(run, tmp_path / "p.png", note=notes.append).is_file()
    assert notes == [f"note: {run / 'metrics.jsonl'}: skipped 1 damaged line(s) (first: line 7)"]
