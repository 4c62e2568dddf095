"""``biglm pretrain`` / ``biglm plot`` end to end with the real data pipeline on a tiny local corpus."""

from __future__ import annotations

import dataclasses
import json
import random
from pathlib import Path

import pytest
import torch

from biglm.checkpoint import load_model
from biglm.cli import main
from test_train_loop import one_thread, read_rows  # noqa: F401  (fixture re-used)

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> tuple[Path, Path]:
    """A 400-document JSONL corpus and a 300-token BPE tokenizer trained on it."""
    from biglm.data import train_tokenizer

    root = tmp_path_factory.mktemp("corpus")
    rng = random.Random(0)
    words = ["the", "a", "cat", "dog", "sat", "on", "mat", "ran", "far", "away", "big", "small", "red", "blue",
             "green", "house", "tree", "river", "stone"]
    with open(root / "corpus.jsonl", "w") as f:
        for _ in range(400):
            f.write(json.dumps({"text": " ".join(rng.choice(words) for _ in range(rng.randint(30, 120)))}) + "\n")
    train_tokenizer([root / "corpus.jsonl"], 300, root / "tok")
    return root / "corpus.jsonl", root / "tok"


def pretrain(out: Path, corpus: tuple[Path, Path], *extra: str) -> int:
    data, tok = corpus
    return main(["pretrain", "--config", str(CONFIGS / "micro.yaml"), "--out", str(out), "--data.tokenizer", str(tok),
                 "--data.sources", f"[{data}]", "--data.cache_dir", str(out.parent / "cache"),
                 "--data.val_fraction", "0.1", "--train.progress", "false", *extra])


def test_pretrain_resume_and_plot(tmp_path, corpus, capsys):
    run = tmp_path / "run"
    assert pretrain(run, corpus, "--train.steps", "12", "--train.save_every", "6") == 0
    rows = read_rows(run)
    assert [r["step"] for r in rows] == [5, 10, 12] and "val_loss" in rows[-1]
    assert rows[-1]["loss"] < rows[0]["loss"]
    loaded = load_model(run)
    assert loaded.meta["step"] == 12 and loaded.tokenizer is not None
    assert loaded.config.vocab_size == 320  # auto: the tokenizer's 300 tokens padded to a multiple of 64
    saved = (run / "config.yaml").read_text()
    assert "vocab_size: 320" in saved and "steps: 12" in saved

    # A second run into the same folder is refused; --resume (config taken from the run) continues it.
    assert pretrain(run, corpus) == 2
    assert "already holds a run; pass --resume" in capsys.readouterr().err
    assert main(["pretrain", "--out", str(run), "--resume", "--train.steps", "14", "--train.progress", "false"]) == 0
    assert [r["step"] for r in read_rows(run)] == [5, 10, 12, 14]

    assert main(["plot", str(run), "--out", str(tmp_path / "p.png")]) == 0
    assert (tmp_path / "p.png").read_bytes()[:4] == b"\x89PNG"


@pytest.mark.parametrize("extra, message", [
    (["--train.lrr", "1"], "--train.lrr: unknown config key 'train.lrr'; did you mean 'train.lr'?"),
    (["--data.seq_len", "4096"], "data.seq_len=4096: exceeds model.max_seq_len=256"),
    (["--model.vocab_size", "100"], "model.vocab_size=100: smaller than the tokenizer's 300 tokens"),
])
def test_bad_input_is_one_line(tmp_path, corpus, capsys, extra, message):
    assert pretrain(tmp_path / "run", corpus, *extra) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1, err


def test_pretrain_help_mentions_overrides(capsys):
    with pytest.raises(SystemExit):
        main(["pretrain", "--help"])
    assert "--section.field" in capsys.readouterr().out


def test_init_from_starts_a_new_run_from_checkpoint_weights(tmp_path, corpus, capsys):
    source = tmp_path / "source"
    assert pretrain(source, corpus, "--train.steps", "6") == 0
    start = load_model(source).model.state_dict()
    # Zero learning rate: the new run's weights stay exactly those it was initialised from.
    run = tmp_path / "continued"
    assert pretrain(run, corpus, "--train.steps", "2", "--train.lr", "1e-12", "--train.min_lr", "0",
                    "--train.weight_decay", "0", "--train.init_from", str(source)) == 0
    after = load_model(run).model.state_dict()
    assert all(torch.allclose(after[k], start[k], atol=1e-9) for k in start)
    fresh = tmp_path / "fresh"
    assert pretrain(fresh, corpus, "--train.steps", "2", "--train.lr", "1e-12", "--train.min_lr", "0") == 0
    # ...whereas a run without it starts from a fresh initialisation.
    fresh_weights = load_model(fresh).model.state_dict()["model.embed_tokens.weight"]
    assert not torch.allclose(fresh_weights, start["model.embed_tokens.weight"], atol=1e-6)
    # A model config that does not match the checkpoint is one clear line naming the fields and the fix.
    assert pretrain(tmp_path / "bad", corpus, "--train.init_from", str(source), "--model.hidden_size", "32",
                    "--model.intermediate_size", "64") == 2
    err = capsys.readouterr().err.strip()
    assert "--model.hidden_size 64 --model.intermediate_size 128" in err and len(err.splitlines()) == 1, err


def strict_rows(run: Path) -> list[dict]:
    def refuse(token: str) -> None:
        raise AssertionError(f"metrics.jsonl holds {token}, which is not JSON")

    return [json.loads(line, parse_constant=refuse) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_diverging_run_stops_and_keeps_finite_checkpoints(tmp_path, corpus, capsys):
    run = tmp_path / "run"
    assert pretrain(run, corpus, "--train.lr", "1e4", "--train.min_lr", "0", "--train.steps", "40",
                    "--train.save_every", "5", "--train.keep_last", "2") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "non-finite" in err[0] and "in a row, train.nonfinite_patience=10" in err[0], err
    rows = strict_rows(run)
    assert sum(r["skipped_steps"] for r in rows) >= 5
    saved = sorted((run / "checkpoints").glob("step_*"))
    assert saved, "the checkpoints written before the divergence are kept"
    for folder in saved:
        weights = load_model(folder).model.state_dict()
        assert all(torch.isfinite(w).all() for w in weights.values()), folder


def test_metrics_are_strict_json(tmp_path, corpus):
    # mlm-15 has no suffix Y: its loss_y is absent, written as null (not NaN, which is not JSON).
    run = tmp_path / "run"
    assert pretrain(run, corpus, "--train.steps", "5", "--objective.preset", "mlm-15") == 0
    rows = strict_rows(run)
    assert rows and all(r["loss_y"] is None and r["loss"] > 0 for r in rows)


def config_keys(cls, prefix: str):
    """(dotted key, docstring) of every leaf field of a config dataclass."""
    import dataclasses
    import typing

    from biglm.config_cli import field_docs

    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if dataclasses.is_dataclass(hints[f.name]):
            yield from config_keys(hints[f.name], f"{prefix}.{f.name}")
        else:
            yield f"{prefix}.{f.name}", field_docs(cls).get(f.name)


def test_pretrain_help_lists_every_config_field(capsys):
    from biglm.train.cli import run_sections

    with pytest.raises(SystemExit) as exit_:
        main(["pretrain", "--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    lines: dict[str, str] = {}
    for line in out.splitlines():  # an entry whose key and type are long continues on the next line
        if line.startswith("  --"):
            key = line.split()[0]
            lines[key] = line
        elif line.startswith(" " * 20) and lines:
            lines[key] += line
    fields = [kv for name, cls in run_sections().items() for kv in config_keys(cls, name)]
    assert len(fields) == 108  # every leaf field of model, objective, data and train
    for key, doc in fields:
        assert f"--{key}" in lines, key
        assert doc, f"{key} has no docstring"
        assert "(default " in lines[f"--{key}"]
    assert "--train.lr FLOAT" in lines["--train.lr"] and "(default 0.0006) Peak learning rate" in lines["--train.lr"]
    assert "{skip,stop}" in lines["--train.nonfinite"] and "(default skip)" in lines["--train.nonfinite"]
    assert "INT|auto" in lines["--model.vocab_size"] and "micro" in lines["--model.preset"]
    assert "    data.sources[i].text_field STR" in out and "--print-config" in out


def test_print_config_prints_the_resolved_config(tmp_path, capsys, monkeypatch):
    import yaml

    from biglm.train.config import RunConfig, load_run_config

    monkeypatch.chdir(tmp_path)
    assert main(["pretrain", "--config", str(CONFIGS / "micro.yaml"), "--train.lr", "1e-3", "--print-config"]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["train"]["lr"] == 1e-3 and printed["train"]["steps"] == 20
    assert printed["model"]["vocab_size"] == "auto" and printed["model"]["num_layers"] == 2
    again, direct = RunConfig.from_dict(printed), load_run_config(CONFIGS / "micro.yaml", ["--train.lr", "1e-3"])
    assert again.vocab_size_auto and direct.vocab_size_auto  # "auto" stays unresolved until the tokenizer is read
    drop = lambda d: {**d, "model": {k: v for k, v in d["model"].items() if k != "vocab_size"}}
    assert drop(again.to_dict()) == drop(direct.to_dict())
    assert not list(tmp_path.iterdir())  # printing writes nothing


@dataclasses.dataclass
class _Adapter:
    rank: int = 8
    """Adapter rank."""


@dataclasses.dataclass
class _Finetune:
    epochs: int = 3
    """Passes over the data."""
    adapter: _Adapter = dataclasses.field(default_factory=_Adapter)


def test_config_options_serve_any_verb(capsys):
    import argparse

    from biglm.config_cli import add_config_options

    parser = argparse.ArgumentParser(prog="biglm finetune", add_help=False)
    add_config_options(parser, lambda: {"finetune": _Finetune})
    with pytest.raises(SystemExit):
        parser.parse_args(["--help"])
    out = capsys.readouterr().out
    assert "--finetune.epochs INT" in out and "(default 3) Passes over the data." in out
    assert "--finetune.adapter.rank INT" in out and "(default 8) Adapter rank." in out
    assert parser.parse_args(["--print-config"]).print_config
