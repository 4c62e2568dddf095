"""The training loop on the micro model with synthetic streams: exact resume, accumulation, metrics, learning."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from biglm.errors import BiglmError
from biglm.train.config import RunConfig
from biglm.train.plot import plot_run
from biglm.train.setup import setup
from biglm.train.streams import synthetic_data

REQUIRED = {"step", "loss", "loss_x", "loss_y", "lr", "grad_norm", "tokens_per_s", "mfu"}


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models run fastest (and steadiest on a shared machine) on one thread."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def micro_config(model: dict | None = None, seq_len: int = 64, **train) -> RunConfig:
    base = {"steps": 8, "global_batch_size": 4, "lr": 3e-3, "min_lr": 3e-4, "warmup_steps": 2, "log_every": 1,
            "save_every": 0, "eval_batches": 2, "progress": False, "tensorboard": False, "peak_flops": 1e11,
            "prefetch": 0}
    return RunConfig.from_dict({"model": {"preset": "micro", **(model or {})}, "data": {"seq_len": seq_len},
                                "train": {**base, **train}})


def read_rows(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def losses(run_dir: Path) -> list[float]:
    return [r["loss"] for r in read_rows(run_dir)]


def final_weights(run_dir: Path) -> dict[str, torch.Tensor]:
    newest = sorted((run_dir / "checkpoints").glob("step_*"))[-1]
    return load_file(str(newest / "model.safetensors"))


def train(cfg: RunConfig, run_dir: Path, until: int | None = None, resume: bool = False, data=None) -> list[float]:
    trainer = setup(cfg, run_dir, resume=resume, data=data or synthetic_data())
    trainer.fit(until)
    trainer.close()
    return losses(run_dir)


def test_resume_is_exact(tmp_path):
    # Dropout (torch RNG), a WSD decay whose anneal data switch happens before the interruption, and the
    # background prefetch thread: all must come back exactly.
    cfg = micro_config({"dropout": 0.1}, decay_fraction=0.625, prefetch=2, eval_every=4)
    full = train(cfg, tmp_path / "full")
    first = train(cfg, tmp_path / "split", until=4)
    assert len(first) == 4
    torch.manual_seed(12345)  # disturb the process RNG: the checkpoint must restore it
    resumed = train(cfg, tmp_path / "split", resume=True)
    assert len(full) == len(resumed) == 8
    assert resumed == pytest.approx(full, abs=1e-6, rel=0)
    for name, w in final_weights(tmp_path / "full").items():
        torch.testing.assert_close(final_weights(tmp_path / "split")[name], w, atol=1e-6, rtol=0)
    val = [r["val_loss"] for r in read_rows(tmp_path / "split") if "val_loss" in r]
    assert val == pytest.approx([r["val_loss"] for r in read_rows(tmp_path / "full") if "val_loss" in r])


def test_grad_accumulation_equals_big_batch(tmp_path):
    big = train(micro_config(micro_batch_size=4, steps=4), tmp_path / "big")
    accum = train(micro_config(micro_batch_size=1, steps=4), tmp_path / "accum")
    assert accum == pytest.approx(big, abs=1e-5)
    for name, w in final_weights(tmp_path / "big").items():
        torch.testing.assert_close(final_weights(tmp_path / "accum")[name], w, atol=1e-5, rtol=1e-5)


def test_activation_checkpointing_matches(tmp_path):
    plain = train(micro_config(steps=3), tmp_path / "plain")
    ckpt = train(micro_config(steps=3, activation_checkpointing=True), tmp_path / "ckpt")
    assert ckpt == pytest.approx(plain, abs=1e-5)


def test_metrics_jsonl_and_plot(tmp_path):
    run = tmp_path / "run"
    train(micro_config(steps=6, log_every=2, eval_every=3, tensorboard=True), run)
    rows = read_rows(run)
    assert [r["step"] for r in rows] == [2, 3, 4, 6]
    for r in rows:
        assert set(r) >= REQUIRED, REQUIRED - set(r)
        assert r["loss"] > 0 and r["tokens_per_s"] > 0 and 0 < r["mfu"] < 1
    assert [r["step"] for r in rows if "val_loss" in r] == [3, 6]
    assert (run / "config.yaml").is_file() and any((run / "tensorboard").iterdir())
    png = plot_run(run, tmp_path / "curves.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000


def test_refuses_existing_run_without_resume(tmp_path):
    run = tmp_path / "run"
    train(micro_config(steps=1), run)
    with pytest.raises(BiglmError, match="already holds a run; pass --resume"):
        setup(micro_config(steps=1), run, data=synthetic_data())


def test_micro_model_learns_copy_task(tmp_path):
    # Documents repeat a random 2-4 token motif over 64 token types: uniform tokens, so nothing below
    # ln(64) ≈ 4.16 nats is reachable without copying from the context.
    cfg = micro_config(steps=150, global_batch_size=8, lr=1e-2, min_lr=1e-3, warmup_steps=10, log_every=10,
                       schedule="cosine", eval_every=150, eval_batches=4)
    curve = train(cfg, tmp_path / "run", data=synthetic_data(vocab_size=72, motif_len=(2, 4)))
    val = read_rows(tmp_path / "run")[-1]["val_loss"]
    assert curve[0] > 4.0 and curve[-1] < 0.65 * curve[0], curve
    assert val < math.log(64) - 1.0, val


def test_flops_per_token():
    from biglm.config import ModelConfig
    from biglm.train.metrics import flops_per_token

    cfg = ModelConfig.from_preset("biglm-136m")
    non_embedding = cfg.num_parameters() - cfg.vocab_size * cfg.hidden_size  # tied: one V×H matrix
    assert 100e6 < non_embedding < 110e6
    attention = 12 * 30 * 576 * 2048
    head = 6 * cfg.vocab_size * 576
    assert flops_per_token(cfg, 2048) == pytest.approx(6 * non_embedding + attention + head)
    # Logits only at the masked 35 % of the positions save 65 % of the LM-head FLOPs.
    assert flops_per_token(cfg, 2048, 0.35) == pytest.approx(flops_per_token(cfg, 2048) - 0.65 * head)
