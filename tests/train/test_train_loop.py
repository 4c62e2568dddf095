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


class TwoTermCriterion:
    """The masked loss split into an X term and a Y term with different weights (each normalised by its
    own global count), to check the trainer's per-term normalisation."""

    def __init__(self):
        self.weights = {"x": 1.0, "y": 0.5}

    def counts(self, batch):
        mask = batch.loss_mask
        y = int((batch.layout.regions[mask] == 1).sum())
        return {"x": float(int(mask.sum()) - y), "y": float(y)}

    def __call__(self, model, batch):
        from biglm.objectives import LossParts, masked_lm_loss

        mask = batch.loss_mask
        logits = model(batch.input_ids, batch.layout, batch.position_ids, logits_mask=mask).logits
        per_token = torch.nn.functional.cross_entropy(logits, batch.labels[mask], reduction="none")
        regions = batch.layout.regions[mask]
        parts = masked_lm_loss(logits, batch.labels[mask], regions).parts
        is_y = regions == 1
        return LossParts({"x": per_token[~is_y].sum(), "y": per_token[is_y].sum()}, parts)


def train_with(criterion, cfg, run_dir):
    trainer = setup(cfg, run_dir, data=synthetic_data())
    trainer.criterion = criterion
    trainer.fit()
    trainer.close()
    return read_rows(run_dir)


def test_weighted_terms_are_normalised_per_term_over_the_global_batch(tmp_path):
    big = train_with(TwoTermCriterion(), micro_config(micro_batch_size=4, steps=3), tmp_path / "big")
    accum = train_with(TwoTermCriterion(), micro_config(micro_batch_size=1, steps=3), tmp_path / "accum")
    assert [r["loss"] for r in accum] == pytest.approx([r["loss"] for r in big], abs=1e-5)
    for r in big:  # the logged loss is the weighted sum of the per-term means, each term reported apart
        assert r["loss"] == pytest.approx(r["loss_x"] + 0.5 * r["loss_y"], rel=1e-6)
        assert {"loss_x", "loss_y"} <= set(r)


class ScriptedValidator:
    """Returns a fixed sequence of scores, one per evaluation (resumable by evaluation count)."""

    def __init__(self, scores):
        self.scores, self.calls = list(scores), 0

    def __call__(self, model):
        self.calls += 1
        return {"score": self.scores[self.calls - 1]}


def run_scripted(cfg, run_dir, scores, until=None, resume=False, skip=0):
    trainer = setup(cfg, run_dir, resume=resume, data=synthetic_data())
    trainer.validator = ScriptedValidator(scores)
    trainer.validator.calls = skip
    trainer.fit(until)
    trainer.close()
    return trainer


def test_best_checkpoint_and_early_stopping(tmp_path):
    scores = [0.1, 0.3, 0.2, 0.25, 0.9, 0.9]
    cfg = micro_config(steps=6, eval_every=1, save_every=1, keep_last=10, best_metric="val_score",
                       best_mode="max", patience=2)
    trainer = run_scripted(cfg, tmp_path / "run", scores)
    # 0.3 at step 2 is the best; steps 3 and 4 do not beat it, so patience 2 stops the run after step 4.
    assert trainer.stopped_early and trainer.step == 4
    assert [r["val_score"] for r in read_rows(tmp_path / "run")] == scores[:4]
    meta = json.loads((tmp_path / "run" / "best" / "meta.json").read_text())
    assert meta["step"] == 2 and meta["best"] == {"metric": "val_score", "value": 0.3}
    best = load_file(str(tmp_path / "run" / "best" / "model.safetensors"))
    step2 = load_file(str(tmp_path / "run" / "checkpoints" / "step_00000002" / "model.safetensors"))
    assert all(torch.equal(best[k], step2[k]) for k in step2)
    assert (tmp_path / "run" / "checkpoints" / "step_00000004").is_dir()  # the stopping step is saved
    # Resuming a run that stopped early trains no further (raise train.patience to go on).
    again = run_scripted(cfg, tmp_path / "run", scores, resume=True, skip=4)
    assert again.step == 4 and again.stopped_early and len(read_rows(tmp_path / "run")) == 4


def test_best_state_resumes_exactly(tmp_path):
    scores = [0.1, 0.3, 0.2, 0.25, 0.9, 0.9]
    cfg = micro_config(steps=6, eval_every=1, best_metric="val_score", best_mode="max", patience=2)
    run_scripted(cfg, tmp_path / "run", scores, until=3)  # best 0.3 at step 2, one evaluation without gain
    resumed = run_scripted(cfg, tmp_path / "run", scores, resume=True, skip=3)
    assert resumed.step == 4 and resumed.stopped_early  # the count of evaluations without gain came back
    assert json.loads((tmp_path / "run" / "best" / "meta.json").read_text())["step"] == 2


def test_lower_is_better_by_default(tmp_path):
    cfg = micro_config(steps=4, eval_every=2, best_metric="val_loss")
    train(cfg, tmp_path / "run")
    rows = [r for r in read_rows(tmp_path / "run") if "val_loss" in r]
    best_step = min(rows, key=lambda r: r["val_loss"])["step"]
    assert json.loads((tmp_path / "run" / "best" / "meta.json").read_text())["step"] == best_step
