"""The parallel strategies' options at seq2seq fine-tunes: ``task.<kind>.parallel`` (every ``ParallelOptions``
field, listed by ``--help``, checked with the strategy as the config loads) reaches the engine when predictions
are decoded, and ``biglm predict``'s flags override the fine-tune's decoding; a bad value is one line naming the
field; autoregressive models refuse the options before training."""

from __future__ import annotations

import pytest

from biglm.cli import main
from biglm.data.records import Record
from biglm.errors import BiglmError, ConfigError
from biglm.finetune import build_task
from biglm.finetune.predict import finetune_config_of, load_predictor, resolve_finetuned, with_decoding
from biglm.generate.options import ParallelOptions, field_help
from conftest import make_checkpoint, word_tokenizer
from test_finetune import cfg_for, finetune, write_jsonl
from test_parallel_options import ALL, flags, spy_engine

SAVED = ["--task.seq2seq.length", "eos", "--task.seq2seq.max_target_length", "8", "--task.seq2seq.steps", "8",
         "--task.seq2seq.strategy", "blocks", "--task.seq2seq.parallel.block_size", "4"]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A seq2seq fine-tune (one step) saved with strategy blocks, block_size 4, T = 8 over 8 target tokens."""
    folder = tmp_path_factory.mktemp("decoding")
    init = make_checkpoint(folder / "init")
    train = write_jsonl(folder / "train.jsonl", [{"source": "a b c", "target": "c b a"}] * 2)
    assert finetune("--task", "seq2seq", "--init", str(init), "--train", str(train), "--out", str(folder / "run"),
                    "--epochs", "1", "--train.global_batch_size", "2", *SAVED) == 0
    return folder / "run"


def predict(run, tmp_path, *args: str) -> None:
    """``biglm predict ... args`` on two sources."""
    inputs = write_jsonl(tmp_path / "in.jsonl", [{"source": "a b"}, {"source": "c"}])
    out = tmp_path / "out.jsonl"
    assert main(["predict", "--ckpt", str(run), "--input", str(inputs), "--out", str(out), *args]) == 0
    assert len(out.read_text().splitlines()) == 2


def passes(run, strategy=None, steps=None, **options) -> list[int]:
    """Each prediction's forward passes, decoded as ``biglm predict --strategy .. --steps .. --OPTION ..`` does."""
    cfg = with_decoding(finetune_config_of(resolve_finetuned(run)), strategy, steps, ParallelOptions(**options))
    predictor = load_predictor(run, cfg)
    examples = predictor.task.encode([Record({"source": s}, f"in:{i}") for i, s in enumerate(["a b", "c"])], False)
    return [p["forward_passes"] for p in predictor.task.predict(predictor.loaded.model, examples)]


def test_the_fine_tunes_options_and_predicts_flags_reach_the_engine(run, tmp_path, monkeypatch):
    assert passes(run) == [9, 9]  # as saved: 2 blocks of 4, Mask-Predict's 4 passes each, and the prefix pass
    assert passes(run, commit="threshold", threshold=1e-9) == [3, 3]  # a pass a block
    assert passes(run, steps=4, block_size=2) == [5, 5]  # 4 blocks, a pass each
    # Another strategy starts from its own defaults (block_size was the blocks strategy's): all in one pass.
    assert passes(run, "threshold", threshold=1e-9) == [2, 2]
    calls = spy_engine(monkeypatch)  # the same through the command line's flags
    predict(run, tmp_path)
    predict(run, tmp_path, "--commit", "threshold", "--threshold", "1e-9")
    predict(run, tmp_path, "--strategy", "threshold", "--threshold", "1e-9")
    blocks = {"strategy": "blocks", "block_size": 4, "cache": "prefix"}
    assert calls == [blocks, {**blocks, "commit": "threshold", "threshold": 1e-9},
                     {"strategy": "threshold", "threshold": 1e-9, "cache": "prefix"}]


@pytest.mark.parametrize("options", ALL)
def test_every_option_reaches_the_engine(run, tmp_path, monkeypatch, options):
    calls = spy_engine(monkeypatch)
    predict(run, tmp_path, *flags(options))
    expected = dict(options)
    if options["strategy"] == "blocks" and "block_size" not in options:
        expected["block_size"] = 4  # the fine-tune's, kept for the same strategy
    assert calls == [expected]


@pytest.mark.parametrize(("args", "message"), [
    (["--block-size", "0"], "task.seq2seq.parallel: block_size=0: must be an integer > 0"),
    (["--strategy", "threshold", "--block-size", "4"], "task.seq2seq.parallel: strategy 'threshold' has no option "
                                                      "'block_size'"),
    (["--commit", "guess"], "task.seq2seq.parallel: unknown commit rule 'guess'"),
    (["--cache", "dual", "--strategy", "threshold"], "task.seq2seq.parallel: cache='dual' caches blocks"),
    (["--strategy", "nope"], "task.seq2seq.strategy: unknown strategy 'nope'"),
])
def test_a_bad_predict_flag_is_one_line_naming_the_field(run, tmp_path, capsys, args, message):
    inputs = write_jsonl(tmp_path / "in.jsonl", [{"source": "a b"}])
    capsys.readouterr()
    assert main(["predict", "--ckpt", str(run), "--input", str(inputs), "--out", str(tmp_path / "o.jsonl"), *args]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1, err
    assert not (tmp_path / "o.jsonl").exists()


@pytest.mark.parametrize(("overrides", "message"), [
    (["--task.seq2seq.parallel.block_size", "4"], "task.seq2seq.parallel: strategy 'mask-predict' has no option "
                                                  "'block_size'"),
    (["--task.instruction.strategy", "blocks", "--task.instruction.parallel.block_size", "0"],
     "task.instruction.parallel: block_size=0: must be an integer > 0"),
    (["--task.seq2seq.parallel.threshold", "high"], "task.seq2seq.parallel.threshold='high': expected float"),
    (["--task.seq2seq.parallel.blocksize", "4"], "did you mean 'task.seq2seq.parallel.block_size'?"),
    (["--task.seq2seq.strategy", "blocks", "--task.seq2seq.parallel.cache", "dual", "--task.seq2seq.prefix_cache",
      "false"], "task.seq2seq.parallel: cache='dual' needs the prompt's cache"),
])
def test_a_bad_config_value_is_one_line_naming_the_field(overrides, message):
    with pytest.raises(ConfigError) as err:
        cfg_for(*overrides)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_finetune_refuses_a_bad_option_before_training(tmp_path, capsys):
    init = make_checkpoint(tmp_path / "init")
    train = write_jsonl(tmp_path / "train.jsonl", [{"source": "a", "target": "a"}])
    assert finetune("--task", "seq2seq", "--init", str(init), "--train", str(train), "--out", str(tmp_path / "run"),
                    "--task.seq2seq.strategy", "blocks", "--task.seq2seq.parallel.commit", "guess") == 2
    err = capsys.readouterr().err
    assert "task.seq2seq.parallel: unknown commit rule 'guess'" in err and err.count("\n") == 1
    assert not (tmp_path / "run").exists()


def test_help_lists_every_field(capsys):
    with pytest.raises(SystemExit):
        main(["finetune", "--help"])
    shown = " ".join(capsys.readouterr().out.split())
    for kind in ("seq2seq", "instruction"):
        for name in ParallelOptions.field_names():
            assert f"task.{kind}.parallel.{name} " in shown, (kind, name)
    with pytest.raises(SystemExit):
        main(["predict", "--help"])
    shown = " ".join(capsys.readouterr().out.split())
    for name in ParallelOptions.field_names():
        assert f"--{name.replace('_', '-')}" in shown and " ".join(field_help(name).split()[:6]) in shown, name


@pytest.mark.parametrize("family", ["causal", "bidirectional-ar"])
def test_autoregressive_models_refuse_the_options(family):
    cfg = cfg_for("--task.kind", "seq2seq", "--task.seq2seq.strategy", "threshold",
                  "--task.seq2seq.parallel.threshold", "0.5")
    with pytest.raises(ConfigError) as err:
        build_task(cfg, word_tokenizer(), 64, family)
    assert str(err.value) == (f"task.seq2seq.parallel.threshold=0.5: an option of the masked models' parallel "
                              f"strategies; a {family} model decodes token by token")


def test_other_task_kinds_have_no_decoding_to_set():
    with pytest.raises(BiglmError, match=r"^--block-size: a decoding setting of seq2seq and instruction fine-tunes; "
                                         r"this checkpoint is a cloze-classification one$"):
        with_decoding(cfg_for("--task.kind", "cloze-classification"), parallel=ParallelOptions(block_size=4))
    cfg = cfg_for("--task.kind", "instruction")
    assert with_decoding(cfg) is cfg
    changed = with_decoding(cfg, "blocks", 4, ParallelOptions(block_size=2))
    assert (changed.task.instruction.strategy, changed.task.instruction.steps) == ("blocks", 4)
    assert changed.task.instruction.parallel == ParallelOptions(block_size=2)
