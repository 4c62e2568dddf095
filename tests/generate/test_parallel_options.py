"""The parallel strategies' options (``biglm.generate.options.ParallelOptions``) at ``biglm generate`` and
``generate()``: a flag per field, built from the dataclass, each reaching the engine (the forward passes change);
a bad value is one line naming the field; autoregressive models refuse them."""

from __future__ import annotations

import argparse
import re

import pytest

from biglm.cli import main
from biglm.errors import BiglmError
from biglm.generate import engine, generate
from biglm.generate.options import ParallelOptions, add_parallel_args, field_help, field_types
from conftest import make_checkpoint

ALL = [  # every field, valid together (a commit rule takes only its own bound)
    {"strategy": "blocks", "block_size": 4, "commit": "threshold", "threshold": 0.5, "cache": "dual", "refresh": 2,
     "eos_exit": True},
    {"strategy": "blocks", "block_size": 2, "commit": "factor", "factor": 1.5, "cache": "blocks", "refresh": 0,
     "eos_exit": False},
    {"strategy": "threshold", "commit": "margin", "margin": 0.3, "cache": "prefix", "eos_exit": True},
]


def spy_engine(monkeypatch) -> list[dict]:
    """The options each decoding the engine starts gets (its strategy's, ``cache`` and ``refresh``), as a list
    that fills as decodings start (``generate_ids`` and ``DecodeJob`` both start theirs with
    ``engine.start_decoding``); the one-token dummy decodings of ``ParallelOptions.check`` are left out."""
    calls: list[dict] = []
    start_strategy, start_suffix_cache = engine.start_strategy, engine.start_suffix_cache

    def strategy(name, state, steps, **options):
        if state.tokens.shape[1] > 1:
            calls.append({"strategy": name, **options})
        return start_strategy(name, state, steps, **options)

    def suffix_cache(mode, refresh, blockwise, prefix_cached):
        if calls and "cache" not in calls[-1]:
            calls[-1].update(cache=mode, **({} if refresh is None else {"refresh": refresh}))
        return start_suffix_cache(mode, refresh, blockwise, prefix_cached)

    monkeypatch.setattr(engine, "start_strategy", strategy)
    monkeypatch.setattr(engine, "start_suffix_cache", suffix_cache)
    return calls


def flags(options: dict) -> list[str]:
    """``options`` as ``biglm generate`` / ``chat`` / ``predict`` flags."""
    out = []
    for key, value in options.items():
        flag = "--" + key.replace("_", "-")
        out += [flag if value is True else "--no-" + flag[2:]] if isinstance(value, bool) else [flag, str(value)]
    return out


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    folder = tmp_path_factory.mktemp("parallel")
    return {"masked": make_checkpoint(folder / "masked"), "causal": make_checkpoint(folder / "causal", family="causal")}


def passes(capsys, ckpt, *args: str) -> int:
    """Forward passes of ``biglm generate`` on an 8-token suffix, as its stderr line says."""
    capsys.readouterr()
    assert main(["generate", "--ckpt", str(ckpt), "--prompt", "a b c", "--max-new-tokens", "8", *args]) == 0
    return int(re.search(r"(\d+) forward passes", capsys.readouterr().err).group(1))


def test_every_field_gets_a_flag_that_reads_back():
    parser = argparse.ArgumentParser()
    add_parallel_args(parser)
    assert ParallelOptions.of(parser.parse_args([])) == ParallelOptions()  # unset: the strategy's defaults
    values = {"block_size": 16, "commit": "threshold", "threshold": 0.8, "factor": 1.5, "margin": 0.3,
              "cache": "dual", "refresh": 2, "eos_exit": True}
    assert set(values) == set(ParallelOptions.field_names())
    argv = [f"--{k.replace('_', '-')}" if v is True else f"--{k.replace('_', '-')}={v}" for k, v in values.items()]
    assert ParallelOptions.of(parser.parse_args(argv)) == ParallelOptions(**values)
    assert ParallelOptions.of(parser.parse_args(["--no-eos-exit"])).eos_exit is False


def test_generate_help_lists_every_field_with_its_doc(capsys):
    with pytest.raises(SystemExit):
        main(["generate", "--help"])
    shown = " ".join(capsys.readouterr().out.split())
    for name, kind in field_types().items():
        flag = "--" + name.replace("_", "-")
        assert (f"{flag}, --no-{name.replace('_', '-')}" if kind is bool else f"{flag} ") in shown, name
        assert " ".join(field_help(name).split()[:6]) in shown, name


def test_block_size_and_threshold_reach_the_engine_from_the_cli(ckpts, capsys):
    blocks = ["--strategy", "blocks", "--steps", "2"]
    # One block of 8: its two passes; four blocks of 2: a pass each (the prefix pass counted in both).
    assert passes(capsys, ckpts["masked"], *blocks, "--block-size", "8") == 3
    assert passes(capsys, ckpts["masked"], *blocks, "--block-size", "2") == 5
    threshold = ["--strategy", "threshold", "--steps", "4"]
    # A random model is never 100% sure: two tokens a pass; any probability is enough: all in the first pass.
    assert passes(capsys, ckpts["masked"], *threshold, "--threshold", "1.0") == 5
    assert passes(capsys, ckpts["masked"], *threshold, "--threshold", "1e-9") == 2


@pytest.mark.parametrize("options", ALL)
def test_every_option_reaches_the_engine_from_the_cli(ckpts, capsys, monkeypatch, options):
    calls = spy_engine(monkeypatch)
    passes(capsys, ckpts["masked"], "--steps", "4", *flags(options))
    assert calls == [options]


def test_the_commit_rule_reaches_the_engine(ckpts, capsys):
    blocks = ["--strategy", "blocks", "--steps", "8", "--block-size", "4"]
    assert passes(capsys, ckpts["masked"], *blocks) == 9  # Mask-Predict in each block: 4 passes a block
    assert passes(capsys, ckpts["masked"], *blocks, "--commit", "threshold", "--threshold", "1e-9") == 3  # 1 a block


def test_generate_api_takes_the_options_as_parallel_options_give_them(ckpts):
    options = ParallelOptions(block_size=2).as_strategy_options()
    result = generate(ckpts["masked"], "a b c", max_new_tokens=8, steps=2, strategy="blocks", return_trajectory=True,
                      **options)
    assert result.forward_passes == 5


@pytest.mark.parametrize(("model", "args", "message"), [
    ("masked", ["--strategy", "blocks", "--block-size", "0"], "block_size=0: must be an integer > 0"),
    ("masked", ["--strategy", "threshold", "--threshold", "2"], "threshold=2.0: must be in (0, 1]"),
    ("masked", ["--block-size", "4"], "strategy 'mask-predict' has no option 'block_size'"),
    ("masked", ["--strategy", "threshold", "--block-size", "4"], "strategy 'threshold' has no option 'block_size'"),
    ("causal", ["--threshold", "0.5"], "autoregressive decoding has no option 'threshold'"),
    ("masked", ["--strategy", "blocks", "--commit", "guess"], "unknown commit rule 'guess'"),
    ("masked", ["--strategy", "threshold", "--cache", "dual"], "cache='dual' caches blocks: it needs strategy"),
    ("masked", ["--strategy", "blocks", "--cache", "dual", "--no-prefix-cache"], "cache='dual' needs the prompt's"),
    ("masked", ["--strategy", "blocks", "--cache", "blocks", "--refresh", "-1"], "refresh=-1: must be"),
    ("masked", ["--eos-exit"], "strategy 'mask-predict' has no option 'eos_exit'"),
])
def test_a_bad_option_is_one_line_naming_it(ckpts, capsys, model, args, message):
    assert main(["generate", "--ckpt", str(ckpts[model]), "--prompt", "a b", "--max-new-tokens", "4", *args]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1, err


@pytest.mark.parametrize(("options", "strategy", "message"), [
    (ParallelOptions(block_size=True), "blocks", "block_size=True: expected int"),
    (ParallelOptions(threshold="high"), "threshold", "threshold='high': expected float"),
    (ParallelOptions(eos_exit=1), "blocks", "eos_exit=1: expected bool"),
    (ParallelOptions(block_size=0), "blocks", "block_size=0: must be an integer > 0"),
    (ParallelOptions(block_size=4), "nope", "unknown strategy 'nope'"),
    (ParallelOptions(cache="everything"), "blocks", "unknown cache 'everything'"),
    (ParallelOptions(commit="factor", margin=0.2), "blocks", "option 'margin' is the parameter of commit rule"),
])
def test_check_is_the_engines_check_without_a_model(options, strategy, message):
    with pytest.raises(BiglmError, match=re.escape(message)) as err:
        options.check(strategy)
    assert "\n" not in str(err.value)
    ParallelOptions(block_size=4).check("blocks")
    ParallelOptions(threshold=1).check("threshold")  # an int is a float
    for options in ALL:
        ParallelOptions(**{k: v for k, v in options.items() if k != "strategy"}).check(options["strategy"])
