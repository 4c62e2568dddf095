"""Run configs: every shipped YAML parses; overrides, presets, bases, auto vocabulary, one-line errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from biglm.configurable import read_config_file, save_yaml
from biglm.errors import ConfigError
from biglm.objectives import OBJECTIVE_PRESETS
from biglm.train.config import PSEUDO_KEYS, RunConfig, load_run_config

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
SHIPPED = sorted(p for p in CONFIGS.rglob("*.yaml") if not {"finetune", "align"} & set(p.parts))  # pre-training


def test_configs_are_shipped():
    names = {p.relative_to(CONFIGS).as_posix() for p in SHIPPED}
    assert {"micro.yaml", "demo.yaml", "biglm-136m.yaml", "biglm-360m.yaml", "biglm-1.3b.yaml",
            "biglm-3.5b.yaml"} <= names
    assert {f"ablations/{p}.yaml" for p in OBJECTIVE_PRESETS} <= names


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.relative_to(CONFIGS).as_posix())
def test_shipped_config_parses(path):
    cfg = load_run_config(path)
    assert cfg.data.seq_len <= cfg.model.max_seq_len
    assert cfg.data.sources and cfg.data.tokenizer
    cfg.train.grad_accum(1)  # the batch sizes divide on one device
    assert RunConfig.from_dict(cfg.to_dict()).to_dict() == cfg.to_dict()  # the saved form round-trips


def test_paper_and_ablation_settings():
    c = load_run_config(CONFIGS / "biglm-1.3b.yaml")
    assert (c.model.num_layers, c.model.hidden_size, c.model.num_heads) == (24, 2048, 32)
    assert (c.train.steps, c.train.global_batch_size, c.data.seq_len) == (300_000, 1024, 2048)
    assert (c.train.lr, c.train.min_lr, c.train.schedule, c.train.decay_fraction) == (6e-4, 6e-5, "wsd", 0.2)
    assert c.train.parallel == "fsdp" and c.train.grad_accum(64) == 2
    assert [s.hf_config for s in c.data.sources] == ["fineweb-edu-dedup", "cosmopedia-v2"]
    a = load_run_config(CONFIGS / "ablations" / "biglm-no-attn.yaml")
    assert a.model.name == "biglm-124m" and a.train.steps == 50_000 and a.train.schedule == "cosine"
    assert a.objective.biglm.attention_masking is False and a.train.lr == 3e-3
    assert load_run_config(CONFIGS / "ablations" / "mlm-15.yaml").objective.name == "mlm"


def test_overrides_beat_yaml_beat_defaults():
    cfg = load_run_config(CONFIGS / "micro.yaml", ["--train.lr", "1e-3", "--model.num_layers", "4",
                                                     "--objective.biglm.alpha=0.3", "--train.compile", "true"])
    assert cfg.train.lr == 1e-3 and cfg.model.num_layers == 4 and cfg.objective.biglm.alpha == 0.3
    assert cfg.train.compile is True
    assert cfg.model.hidden_size == 64  # from the preset named in the YAML
    assert cfg.train.beta2 == 0.95  # default
    assert cfg.vocab_size_auto  # no vocab_size in micro.yaml


def test_vocab_size_auto_and_pinned():
    data = {"seq_len": 256}
    assert RunConfig.from_dict({"model": {"preset": "tiny", "vocab_size": "auto"}, "data": data}).vocab_size_auto
    pinned = RunConfig.from_dict({"model": {"preset": "tiny", "vocab_size": 1024}, "data": data})
    assert not pinned.vocab_size_auto and pinned.model.vocab_size == 1024
    resolved = RunConfig.from_dict({"model": {"preset": "tiny"}, "data": data}).with_vocab_size(8256)
    assert RunConfig.from_dict(resolved.to_dict()).model.vocab_size == 8256


def test_base_and_objective_preset(tmp_path):
    save_yaml({"model": {"preset": "micro"}, "data": {"seq_len": 64}, "train": {"lr": 0.5, "steps": 7}},
              tmp_path / "base.yaml")
    (tmp_path / "child.yaml").write_text("base: base.yaml\ntrain: {steps: 9}\n"
                                         "objective: {preset: biglm-alpha-0.3, biglm: {max_span: 2}}\n")
    cfg = load_run_config(tmp_path / "child.yaml")
    assert (cfg.train.lr, cfg.train.steps) == (0.5, 9)
    assert cfg.objective.biglm.alpha == 0.3 and cfg.objective.biglm.max_span == 2
    (tmp_path / "loop.yaml").write_text("base: loop.yaml\n")
    with pytest.raises(ConfigError, match="loops back"):
        read_config_file(tmp_path / "loop.yaml", RunConfig, PSEUDO_KEYS)


@pytest.mark.parametrize("overrides, message", [
    (["--train.lrr", "1"], "^--train.lrr: unknown config key 'train.lrr'; did you mean 'train.lr'"),
    (["--trian.lr", "1"], "^--trian.lr: unknown config key 'trian.lr'; did you mean 'train.lr'"),
    (["--trian.bogus", "1"], "^--trian.bogus: unknown config key 'trian.bogus'; did you mean 'train'"),
    (["--model.num_layer", "2"], "unknown config key 'model.num_layer'; did you mean 'model.num_layers'"),
    (["--model.prest", "micro"], "unknown config key 'model.prest'; did you mean 'model.preset'"),
    (["--objective.biglm.alfa", "0.3"],
     "unknown config key 'objective.biglm.alfa'; did you mean 'objective.biglm.alpha'"),
    (["--train.steps", "--train.lr", "1e-3"], "^--train.steps: missing value \\(the next argument is the option"),
    (["--train.steps"], "^--train.steps: missing value"),
    (["--train.lr", ".inf"], "train.lr=inf: expected a finite number"),
    (["--train.lr", "nan"], "train.lr='nan': expected a finite number"),
    (["--train.steps", "1e400"], "train.steps='1e400': expected int"),
    (["--data.seq_len", "512"], "data.seq_len=512: exceeds model.max_seq_len=256"),
    (["--train.schedule", "cosin"], "train.schedule='cosin': expected one of"),
    (["--objective.preset", "nope"], "objective.preset='nope': expected one of"),
])
def test_bad_config_is_one_line_error(overrides, message):
    with pytest.raises(ConfigError, match=message) as err:
        load_run_config(CONFIGS / "micro.yaml", overrides)
    assert "\n" not in str(err.value)


def test_unknown_yaml_key_names_its_file(tmp_path):
    (tmp_path / "base.yaml").write_text("model: {preset: micro}\ntrain: {lrr: 1}\n")
    (tmp_path / "child.yaml").write_text("base: base.yaml\ndata: {seq_len: 64}\n")
    with pytest.raises(ConfigError, match=r"base.yaml: unknown config key 'train.lrr'; did you mean 'train.lr'"):
        load_run_config(tmp_path / "child.yaml")
    (tmp_path / "src.yaml").write_text("data: {sources: [{pth: a.jsonl}]}\n")
    with pytest.raises(ConfigError, match=r"src.yaml: data.sources\[0\]: unknown config key 'pth'; did you mean "
                                          "'path'"):
        load_run_config(tmp_path / "src.yaml")
