"""Non-finite losses: skipped steps apply no update, are counted, resume exactly, and stop the run by policy."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from biglm.train import checkpointing
from biglm.train.guard import NonFiniteLoss
from biglm.train.setup import setup
from biglm.train.streams import synthetic_data
from test_train_loop import micro_config, one_thread  # noqa: F401  (fixture re-used)


def poison(trainer, steps: set[int]) -> None:
    """Make the training forward passes of the given (1-based) optimizer steps return NaN."""

    def hook(module, args, out):
        if module.training and trainer.step + 1 in steps:
            return out * float("nan")
        return None

    trainer.model.model.norm.register_forward_hook(hook)


def strict_rows(run: Path) -> list[dict]:
    """metrics.jsonl parsed as strict JSON (NaN / Infinity are not JSON)."""

    def refuse(token: str) -> None:
        raise AssertionError(f"metrics.jsonl holds {token}, which is not JSON")

    return [json.loads(line, parse_constant=refuse) for line in (run / "metrics.jsonl").read_text().splitlines()]


CURVE = ("step", "loss", "loss_x", "loss_y", "lr", "grad_norm", "skipped_steps", "tokens_seen", "val_loss")


def assert_same_curves(a: list[dict], b: list[dict]) -> None:
    """The reproducible part of two runs' metrics rows (no timings) agrees to 1e-6; nulls where nulls."""
    assert [r["step"] for r in a] == [r["step"] for r in b]
    for ra, rb in zip(a, b):
        for key in CURVE:
            va, vb = ra.get(key), rb.get(key)
            assert (va is None) == (vb is None) and (va is None or va == pytest.approx(vb, abs=1e-6)), (ra, rb)


def ckpt(run: Path, step: int) -> Path:
    return checkpointing.checkpoint_dir(run, step)


def run_poisoned(cfg, run: Path, steps: set[int], until: int | None = None, resume: bool = False) -> None:
    trainer = setup(cfg, run, resume=resume, data=synthetic_data())
    poison(trainer, steps)
    try:
        trainer.fit(until)
    finally:
        trainer.close()


def test_nonfinite_step_is_skipped_and_counted(tmp_path, capsys):
    run = tmp_path / "run"
    run_poisoned(micro_config(steps=8, save_every=1, keep_last=10), run, {3, 4})
    rows = strict_rows(run)
    assert [r["skipped_steps"] for r in rows] == [0, 0, 1, 1, 0, 0, 0, 0]
    assert rows[2]["loss"] is None and rows[2]["grad_norm"] is None
    assert all(isinstance(r["loss"], float) for i, r in enumerate(rows) if i not in (2, 3))
    out = capsys.readouterr().out
    assert "step 3: non-finite loss and gradient norm" in out and "(1 in a row, 1 in all)" in out
    assert "step 4: non-finite" in out and "(2 in a row, 2 in all)" in out
    # A skipped step applies no update: weights and AdamW state after step 4 are those after step 2 ...
    w2, w4, w5 = (load_file(str(ckpt(run, s) / "model.safetensors")) for s in (2, 4, 5))
    assert all(torch.equal(w2[k], w4[k]) for k in w2)
    assert not all(torch.equal(w4[k], w5[k]) for k in w4)
    o2, o4 = (checkpointing.read_optimizer_state(ckpt(run, s))["state"] for s in (2, 4))
    for name, state in o2.items():
        for key, value in state.items():
            assert torch.equal(value, o4[name][key]), (name, key)
    # ... while the step counter and the data position advance.
    state = checkpointing.read_trainer_state(ckpt(run, 4))
    assert state["step"] == 4 and state["data"]["rows"]["main"] == 4 * 4
    assert state["guard"] == {"consecutive": 2, "total": 2}
    for s in range(1, 9):
        assert all(torch.isfinite(t).all() for t in load_file(str(ckpt(run, s) / "model.safetensors")).values())


def test_consecutive_skips_stop_the_run_and_resume_keeps_the_count(tmp_path):
    cfg = micro_config(steps=8, save_every=1, keep_last=10, nonfinite_patience=3)
    whole = tmp_path / "whole"
    with pytest.raises(NonFiniteLoss, match=r"^step 5: non-finite .*3 in a row, train.nonfinite_patience=3"):
        run_poisoned(cfg, whole, {3, 4, 5, 6})
    assert sorted(p.name for p in (whole / "checkpoints").iterdir())[-1] == "step_00000004"
    # Interrupted after step 4 (two skips so far): the resumed run counts on from 2 and stops at step 5 too.
    split = tmp_path / "split"
    run_poisoned(cfg, split, {3, 4}, until=4)
    with pytest.raises(NonFiniteLoss, match=r"^step 5: non-finite"):
        run_poisoned(cfg, split, {5, 6}, resume=True)
    assert_same_curves(strict_rows(split), strict_rows(whole))
    assert [r["skipped_steps"] for r in strict_rows(split)] == [0, 0, 1, 1]


def test_stop_policy_stops_at_the_first_nonfinite_step(tmp_path):
    run = tmp_path / "run"
    with pytest.raises(NonFiniteLoss, match=r"^step 3: non-finite .*train.nonfinite=stop"):
        run_poisoned(micro_config(steps=8, save_every=1, nonfinite="stop"), run, {3})
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step_00000001", "step_00000002"]


def test_a_stop_before_any_checkpoint_does_not_advise_resuming_one(tmp_path):
    """The stop message used to say "the newest one holds the last finite weights ... then --resume" when the
    run had no checkpoint at all."""
    run = tmp_path / "run"
    with pytest.raises(NonFiniteLoss) as stop:
        run_poisoned(micro_config(steps=8, save_every=4, nonfinite="stop"), run, {2})
    message = str(stop.value)
    assert not (run / "checkpoints").exists() or not any((run / "checkpoints").iterdir())
    assert "the run has none, so there is nothing to resume: lower train.lr" in message
    assert "newest one holds" not in message and "\n" not in message
    with pytest.raises(NonFiniteLoss, match=r"the newest one holds the last finite weights: .*then --resume$"):
        run_poisoned(micro_config(steps=8, save_every=1, nonfinite="stop"), tmp_path / "saved", {2})
