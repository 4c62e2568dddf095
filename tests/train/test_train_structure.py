"""The trainer's structure: step hooks (growth is one, registered only for a schedule), and the trainer's
modules import one another in one direction only (each imports alone; no function-local import among them)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import biglm.train
from biglm.train.config import RunConfig
from biglm.train.growth import GrowthHook
from biglm.train.setup import setup
from biglm.train.streams import synthetic_data

TRAIN = Path(biglm.train.__file__).parent
TRAINER_MODULES = ("parallel", "checkpointing", "sharded", "checkpointer", "build", "loop", "growth", "setup")
TRAIN_CFG = {"steps": 4, "global_batch_size": 2, "log_every": 1, "save_every": 0, "eval_batches": 1,
             "progress": False, "tensorboard": False, "peak_flops": 1e11, "prefetch": 0}


def config(**train) -> RunConfig:
    return RunConfig.from_dict({"model": {"preset": "micro"}, "data": {"seq_len": 32},
                                "train": {**TRAIN_CFG, **train}})


class Recorder:
    def __init__(self) -> None:
        self.calls: list[tuple[int, int]] = []

    def on_step(self, trainer, step: int) -> None:
        self.calls.append((step, trainer.step))


def test_step_hooks_run_after_every_step_and_growth_is_one_only_with_a_schedule(tmp_path):
    trainer = setup(config(), tmp_path / "plain", data=synthetic_data())
    assert trainer.hooks == ()  # no schedule: no growth hook
    recorder = Recorder()
    trainer.hooks = (recorder,)
    trainer.fit(until=3)
    trainer.close()
    assert recorder.calls == [(1, 1), (2, 2), (3, 3)]
    grows = setup(config(growth=[{"step": 2, "layers": "2x"}]), tmp_path / "grows", data=synthetic_data())
    assert [type(h) for h in grows.hooks] == [GrowthHook]
    grows.close()


def test_trainer_modules_have_no_function_local_imports_of_each_other():
    local = []
    for name in TRAINER_MODULES:
        tree = ast.parse((TRAIN / f"{name}.py").read_text())
        for fn in ast.walk(tree):
            if not isinstance(fn, ast.FunctionDef | ast.AsyncFunctionDef):
                continue
            for node in ast.walk(fn):
                if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("biglm.train"):
                    local.append(f"{name}.py:{node.lineno} {node.module}")
    assert local == []


def test_each_trainer_module_imports_alone():
    # A fresh biglm for each module (torch stays loaded): an import circle fails whichever module comes first.
    code = ("import importlib, sys\n"
            f"for name in {TRAINER_MODULES!r}:\n"
            "    for m in [m for m in sys.modules if m == 'biglm' or m.startswith('biglm.')]:\n"
            "        del sys.modules[m]\n"
            "    importlib.import_module('biglm.train.' + name)\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
