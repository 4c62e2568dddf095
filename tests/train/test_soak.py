"""Soak test: a micro run is killed with SIGKILL again and again (at random moments, during checkpoint saves and
in the middle of a metrics row) and resumed each time; its metrics and weights end equal to an uninterrupted
run's.

The child process writes its checkpoint files and metrics rows slowly (a pause after each training-state
file, and each metrics row written in two halves with a pause between), so that kills land inside those
writes; the pauses change no number.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from biglm.train import checkpointing
from biglm.train.config import RunConfig
from biglm.train.metrics import read_metrics_file
from test_train_guard import assert_same_curves, strict_rows
from test_train_loop import one_thread, train  # noqa: F401  (fixture re-used)

TRAIN = {"steps": 40, "global_batch_size": 4, "lr": 3e-3, "min_lr": 3e-4, "warmup_steps": 4, "log_every": 1,
         "save_every": 4, "keep_last": 2, "eval_every": 8, "eval_batches": 2, "progress": False,
         "tensorboard": False, "peak_flops": 1e11, "prefetch": 2, "decay_fraction": 0.25}
CONFIG = {"model": {"preset": "micro", "dropout": 0.1}, "data": {"seq_len": 64}, "train": TRAIN}

# Kills aimed at rows stop short of the end, so that a run that got far in earlier rounds is still alive.
LAST_KILL_ROW = TRAIN["steps"] - 6

CHILD = '''
import sys, time
import torch
torch.set_num_threads(1)
from biglm.train import checkpointing, metrics
from biglm.train import checkpointing
from biglm.train.config import RunConfig
from biglm.train.metrics import read_metrics_file
from biglm.train.setup import setup
from biglm.train.streams import synthetic_data
import json
from pathlib import Path

run, resume, config = Path(sys.argv[1]), sys.argv[2] == "1", json.loads(sys.argv[3])
save = torch.save


def slow_save(obj, path, *args, **kwargs):  # inside a checkpoint save: the window for a kill
    save(obj, path, *args, **kwargs)
    time.sleep(0.2)


checkpointing.torch.save = slow_save
log = metrics.JsonlLogger.log


def slow_log(self, step, values):  # a row in two halves: a kill between them leaves a cut line
    line = metrics.json_line({"step": step, **values}) + "\\n"
    self.file.write(line[: len(line) // 2])
    self.file.flush()
    time.sleep(0.03)
    self.file.write(line[len(line) // 2:])
    self.file.flush()


metrics.JsonlLogger.log = slow_log
trainer = setup(RunConfig.from_dict(config), run, resume=resume, data=synthetic_data())
trainer.fit()
trainer.close()
print("DONE", flush=True)
'''


def start(child: Path, run: Path, resume: bool) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, str(child), str(run), "1" if resume else "0", json.dumps(CONFIG)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def wait_for(proc: subprocess.Popen, condition, timeout: float = 60.0) -> bool:
    """Poll every 2 ms until ``condition()`` holds (True), the process ends (False) or ``timeout`` passes
    (None)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return False
        if condition():
            return True
        time.sleep(0.002)
    return None


def saving(run: Path) -> bool:
    root = run / "checkpoints"
    return root.is_dir() and any(p.name.startswith(".tmp-step_") for p in root.iterdir())


def resume_step(run: Path) -> int:
    """The step a resume of ``run`` starts from."""
    if not run.exists():
        return 0
    folder = checkpointing.find_resume_checkpoint(run, note=lambda _: None)
    return 0 if folder is None else int(folder.name.removeprefix("step_"))


def logged_rows(run: Path) -> int:
    path = run / "metrics.jsonl"
    return len(read_metrics_file(path)[0]) if path.is_file() else 0


def mid_row(run: Path) -> bool:
    path = run / "metrics.jsonl"
    data = path.read_bytes() if path.is_file() else b""
    return bool(data) and not data.endswith(b"\n")


@pytest.mark.slow
@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs SIGKILL")
def test_sigkill_at_random_moments_then_resume_equals_uninterrupted(tmp_path):
    child = tmp_path / "child.py"
    child.write_text(CHILD)
    run = tmp_path / "run"
    rng = random.Random(12)
    plan = ["save", "any", "row", "save", "training", "save", "training"]
    kills, notes = [], []
    for moment in plan:
        resumed_at = resume_step(run)
        proc = start(child, run, resume=run.exists())
        if moment == "save":  # inside the save of one of the next three checkpoints
            target = min(resumed_at + TRAIN["save_every"] * rng.randint(1, 3), TRAIN["steps"])
            hit = wait_for(proc, lambda t=target: (run / "checkpoints" / f".tmp-step_{t:08d}").is_dir())
            assert hit is not None, "the soak child made no progress"
            if hit:
                time.sleep(rng.uniform(0.0, 0.35))
        elif moment == "row":  # a metrics row cut in the middle, a few steps on
            target = min(logged_rows(run) + rng.randint(1, 6), LAST_KILL_ROW)
            hit = wait_for(proc, lambda t=target: logged_rows(run) >= t and mid_row(run))
            assert hit is not None, "the soak child made no progress"
        elif moment == "training":  # a random moment a few steps on
            target = min(logged_rows(run) + rng.randint(1, 10), LAST_KILL_ROW)
            hit = wait_for(proc, lambda t=target: logged_rows(run) >= t)
            hit = hit and wait_for(proc, lambda: False, timeout=rng.uniform(0.0, 0.3)) is None
        else:  # any moment from the start: imports, set-up (config and metrics rewritten), steps, saves
            hit = wait_for(proc, lambda: False, timeout=rng.uniform(0.5, 5.0)) is None
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            kills.append((moment, hit))
        out, err = proc.communicate()
        notes += [line for line in (out + err).splitlines() if line.startswith(("note:", "biglm pretrain:"))]
    final = start(child, run, resume=True)
    out, err = final.communicate(timeout=300)
    assert final.returncode == 0 and "DONE" in out, err[-3000:]
    notes += [line for line in (out + err).splitlines() if line.startswith(("note:", "biglm pretrain:"))]

    # Every planned kill happened, at least two inside a save, and resume noticed what they left behind.
    assert len(kills) == len(plan), kills
    assert sum(1 for moment, hit in kills if moment == "save" and hit) >= 2, kills
    assert any("skipping incomplete checkpoint .tmp-step_" in n for n in notes), notes
    assert any("damaged line" in n for n in notes), notes

    whole = tmp_path / "whole"
    train(RunConfig.from_dict(CONFIG), whole)
    assert_same_curves(strict_rows(run), strict_rows(whole))
    assert [r["step"] for r in strict_rows(run)] == list(range(1, 41))
    newest = lambda r: sorted((r / "checkpoints").glob("step_*"))[-1]
    assert newest(run).name == newest(whole).name == "step_00000040"
    a, b = load_file(str(newest(run) / "model.safetensors")), load_file(str(newest(whole) / "model.safetensors"))
    for name in b:
        torch.testing.assert_close(a[name], b[name], atol=1e-6, rtol=0)
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step_00000036", "step_00000040"]
