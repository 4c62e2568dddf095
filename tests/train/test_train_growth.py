"""train.growth: the model grows inside one run (Algorithm 1 as one command); growing keeps the function where
the expansion is exact, carries or resets AdamW, and resuming before or after a growth step is exact."""

from __future__ import annotations

import json

import pytest
import torch

from biglm.errors import ConfigError
from biglm.grow.api import family_layout
from biglm.train.config import RunConfig
from biglm.train.growth import config_at, maybe_grow
from biglm.train.setup import setup
from biglm.train.streams import synthetic_data

BASE = {"steps": 8, "global_batch_size": 4, "lr": 3e-3, "min_lr": 3e-4, "warmup_steps": 2, "log_every": 1,
        "save_every": 0, "eval_batches": 2, "progress": False, "tensorboard": False, "peak_flops": 1e11,
        "prefetch": 0}


def config(growth, objective="bidirectional-ar", **train) -> RunConfig:
    return RunConfig.from_dict({"model": {"preset": "micro"}, "objective": {"preset": objective},
                                "data": {"seq_len": 32}, "train": {**BASE, "growth": growth, **train}})


def run(cfg, run_dir, until=None, resume=False):
    trainer = setup(cfg, run_dir, resume=resume, data=synthetic_data())
    trainer.fit(until)
    trainer.close()
    return trainer, [json.loads(x)["loss"] for x in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_schedule_grows_the_model_and_resume_is_exact(tmp_path):
    growth = [{"step": 3, "layers": "2x"}, {"step": 5, "hidden_size": "2x", "optimizer": "reset"}]
    cfg = config(growth)
    assert config_at(cfg, 2).model.num_layers == 2
    grown = config_at(cfg, 5).model
    assert (grown.num_layers, grown.hidden_size, grown.num_heads, grown.num_kv_heads) == (4, 128, 8, 4)
    full, losses = run(cfg, tmp_path / "full")
    assert (full.model.config.num_layers, full.model.config.hidden_size) == (4, 128) and len(losses) == 8
    saved = json.loads((tmp_path / "full" / "checkpoints" / "step_00000008" / "meta.json").read_text())
    assert saved["step"] == 8
    for stop in (2, 4, 6):  # before, between and after the two growth steps
        _, _ = run(cfg, tmp_path / f"split{stop}", until=stop)
        _, resumed = run(cfg, tmp_path / f"split{stop}", resume=True)
        assert resumed == pytest.approx(losses, abs=1e-6, rel=0), stop
    top = RunConfig.from_dict(__import__("yaml").safe_load((tmp_path / "full" / "config.yaml").read_text()))
    assert top.model.num_layers == 2 and len(top.train.growth) == 2  # the run config keeps the schedule


@pytest.mark.parametrize("optimizer", ["carry", "reset"])
def test_growing_keeps_the_function_where_exact(tmp_path, optimizer):
    cfg = config([{"step": 3, "layers": "2x", "hidden_size": "2x", "depth_init": "zero", "noise": 0.02,
                   "optimizer": optimizer}])
    trainer = setup(cfg, tmp_path / "run", data=synthetic_data())
    trainer.fit(until=2)
    rows = torch.randint(8, 512, (2, 32), generator=torch.Generator().manual_seed(0))
    layout = family_layout("bidirectional-ar", rows)
    trainer.model.eval()
    with torch.no_grad():
        before = trainer.model(rows, layout).logits
    trainer.step = 3  # as fit would after step 3
    assert maybe_grow(trainer)
    trainer.model.eval()
    with torch.no_grad():
        after = trainer.model(rows, layout).logits
    assert (before - after).abs().max() < 1e-4
    state = trainer.optimizer.state
    carried = [p for p in trainer.model.parameters() if p in state and "exp_avg" in state[p]]
    assert (len(carried) > 0) == (optimizer == "carry")
    assert trainer.cfg.model.num_layers == 4 and trainer.tcfg.growth == []
    trainer.close()


def test_schedule_errors():
    with pytest.raises(ConfigError, match="must increase"):
        config([{"step": 5, "layers": "2x"}, {"step": 3, "layers": "2x"}])
    with pytest.raises(ConfigError, match="give layers, hidden_size"):
        config([{"step": 3}])
    with pytest.raises(ConfigError, match=r"below train\.steps"):
        config([{"step": 9, "layers": "2x"}])
