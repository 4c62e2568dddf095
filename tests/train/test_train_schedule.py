"""Learning-rate schedule shapes and optimizer parameter groups."""

from __future__ import annotations

import itertools

import pytest

from biglm.config import ModelConfig
from biglm.errors import ConfigError
from biglm.model import BiGLM
from biglm.train.config import TrainConfig
from biglm.train.optim import build_optimizer
from biglm.train.schedule import decay_start, learning_rate


def test_wsd_shape():
    cfg = TrainConfig(steps=1000, lr=6e-4, min_lr=6e-5, warmup_steps=100, schedule="wsd", decay_fraction=0.2)
    lr = [learning_rate(s, cfg) for s in range(cfg.steps)]
    assert lr[0] == pytest.approx(6e-4 / 100)
    assert lr[49] == pytest.approx(6e-4 * 50 / 100)
    assert lr[99] == pytest.approx(6e-4)  # end of warm-up
    assert decay_start(cfg) == 800
    assert all(v == pytest.approx(6e-4) for v in lr[99:801])  # stable, and the first decay step is still peak
    assert lr[900] == pytest.approx(6e-4 + (6e-5 - 6e-4) * 100 / 199)  # linear
    assert lr[-1] == pytest.approx(6e-5)
    assert all(a >= b for a, b in itertools.pairwise(lr[800:]))


def test_cosine_shape():
    cfg = TrainConfig(steps=501, lr=3e-3, min_lr=3e-4, warmup_steps=100, schedule="cosine")
    lr = [learning_rate(s, cfg) for s in range(cfg.steps)]
    assert lr[99] == pytest.approx(3e-3)
    assert lr[100] == pytest.approx(3e-3)
    assert lr[300] == pytest.approx((3e-3 + 3e-4) / 2)  # half-way down the cosine
    assert lr[-1] == pytest.approx(3e-4)
    assert all(a >= b for a, b in itertools.pairwise(lr[100:]))
    assert decay_start(cfg) == cfg.steps  # no anneal-data switch for cosine


def test_paper_wsd_anneals_last_60k_of_300k():
    cfg = TrainConfig(steps=300_000, warmup_steps=2000, decay_fraction=0.2)
    assert decay_start(cfg) == 240_000
    assert learning_rate(299_999, cfg) == pytest.approx(cfg.min_lr)


def test_batch_size_arithmetic():
    cfg = TrainConfig(global_batch_size=1024, micro_batch_size=8)
    assert cfg.grad_accum(64) == 2 and cfg.grad_accum(8) == 16 and cfg.micro_batch(8) == 8
    assert TrainConfig(global_batch_size=8).grad_accum(2) == 1
    with pytest.raises(ConfigError, match="global_batch_size=1024: must be a multiple of micro_batch_size"):
        TrainConfig(global_batch_size=1024, micro_batch_size=24).grad_accum(8)


def test_weight_decay_groups():
    model = BiGLM(ModelConfig.from_preset("micro"))
    groups = {g["name"]: g for g in build_optimizer(model, TrainConfig(weight_decay=0.01)).param_groups}
    names = {id(p): n for n, p in model.named_parameters()}
    decayed = {names[id(p)] for p in groups["decay"]["params"]}
    plain = {names[id(p)] for p in groups["no_decay"]["params"]}
    assert groups["decay"]["weight_decay"] == 0.01 and groups["no_decay"]["weight_decay"] == 0.0
    assert "model.embed_tokens.weight" in decayed and "model.layers.0.mlp.up_proj.weight" in decayed
    assert "model.norm.weight" in plain and "model.layers.1.input_layernorm.weight" in plain
    assert len(decayed) + len(plain) == len(list(model.parameters()))  # tied head counted once
    no_emb = build_optimizer(model, TrainConfig(decay_embeddings=False)).param_groups
    assert "model.embed_tokens.weight" in {names[id(p)] for p in no_emb[1]["params"]}


def test_linear_shape():
    cfg = TrainConfig(steps=101, lr=5e-5, min_lr=0.0, warmup_steps=1, schedule="linear")
    lr = [learning_rate(s, cfg) for s in range(cfg.steps)]
    assert lr[0] == pytest.approx(5e-5)  # warm-up of one step ends at the peak
    # Straight down from the peak at the end of warm-up (step 1) to min_lr at the last step (100).
    assert lr[1:] == pytest.approx([5e-5 * (1 - k / 99) for k in range(100)])
    assert lr[-1] == pytest.approx(0.0)
    assert all(a >= b for a, b in itertools.pairwise(lr))
