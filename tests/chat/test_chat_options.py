"""The parallel strategies' options at ``biglm chat``: ``ChatSettings`` carries every ``ParallelOptions`` field,
``/settings`` and the command line set them, the engine gets them (the passes change), a bad value is one line
naming it (the engine's own check), and models that decode token by token refuse them."""

from __future__ import annotations

import dataclasses
import io
import sys

import pytest

from biglm.chat import ChatModel, ChatSettings
from biglm.chat.cli import chat_loop
from biglm.cli import main
from biglm.errors import BiglmError
from biglm.generate.options import ParallelOptions
from test_chat import chat_checkpoint
from test_parallel_options import ALL, flags, spy_engine

HI = [{"role": "user", "content": "reverse this a b c"}]
BLOCKS = "/settings strategy=blocks steps=2 length=fixed max_new_tokens=8"


@pytest.fixture(scope="module")
def chat(tmp_path_factory):
    return ChatModel.load(chat_checkpoint(tmp_path_factory.mktemp("chat") / "ckpt"))


def test_settings_carry_every_parallel_option(chat):
    fields = {f.name: f.default for f in dataclasses.fields(ChatSettings)}
    assert {name: fields.get(name, "missing") for name in ParallelOptions.field_names()} == \
        dict.fromkeys(ParallelOptions.field_names())  # all there, None: the strategy's default
    s = chat.settings.updated(strategy="blocks", block_size="4", commit="threshold", threshold="0.5", factor="1.5",
                              margin="0.2", cache="dual", refresh="2", eos_exit="yes")
    assert s.parallel == ParallelOptions(4, "threshold", 0.5, 1.5, 0.2, "dual", 2, True)
    assert s.updated(block_size="none", eos_exit="off").parallel == ParallelOptions(None, "threshold", 0.5, 1.5, 0.2,
                                                                                    "dual", 2, False)
    assert chat.masked_decoding(s)["block_size"] == 4 and "block_size" not in chat.masked_decoding(chat.settings)


def test_block_size_and_threshold_reach_the_engine(chat):
    base = chat.settings.updated(max_new_tokens=8, length="fixed", steps=2, strategy="blocks")
    assert chat.reply(HI, base.updated(block_size=8)).forward_passes == 3  # one block: 2 passes, and the prefix
    assert chat.reply(HI, base.updated(block_size=2)).forward_passes == 5  # four blocks: a pass each
    base = base.updated(steps=4, strategy="threshold")
    assert chat.reply(HI, base.updated(threshold=1.0)).forward_passes == 5  # never sure: 2 tokens a pass
    assert chat.reply(HI, base.updated(threshold=1e-9)).forward_passes == 2  # all in the first pass


@pytest.mark.parametrize("options", ALL)
def test_every_option_reaches_the_engine(chat, monkeypatch, options):
    calls = spy_engine(monkeypatch)
    chat.reply(HI, chat.settings.updated(max_new_tokens=8, length="fixed", steps=4, **options))
    assert calls == [options]
    calls.clear()
    out = io.StringIO()  # the same through /settings, typed as text
    typed = " ".join(f"{k}={v}" for k, v in options.items())
    chat_loop(chat, io.StringIO(f"/settings max_new_tokens=8 length=fixed steps=4 {typed}\nreverse this a b\n"), out,
              live=False)
    assert calls == [options], out.getvalue()


def test_the_commit_rule_reaches_the_engine(chat):
    base = chat.settings.updated(max_new_tokens=8, length="fixed", steps=8, strategy="blocks", block_size=4)
    assert chat.reply(HI, base).forward_passes == 9  # Mask-Predict in each block: 4 passes a block, and the prefix
    assert chat.reply(HI, base.updated(commit="threshold", threshold=1e-9)).forward_passes == 3  # a pass a block


def test_slash_settings_set_them_and_refuse_a_bad_value_in_one_line(chat):
    script = f"{BLOCKS} block_size=2\nreverse this a b\n/settings block_size=0\n/settings block_size=x\n"
    out = io.StringIO()
    chat_loop(chat, io.StringIO(script), out, live=False)
    text = out.getvalue()
    reply = text.split("block_size=2, commit=None")[1].split("Assistant: ")[0]
    assert reply.count("[pass ") == 4  # four blocks of two tokens, a pass each (steps=2 shared out)
    assert "\nerror: block_size=0: must be an integer > 0\n" in text
    assert "\nerror: setting block_size='x': expected int | None\n" in text
    assert text.count("block_size=2, commit=None") == 3  # the settings kept after each refusal


@pytest.mark.parametrize("options", ALL)
def test_every_option_reaches_the_engine_from_the_command_line(tmp_path, monkeypatch, options):
    ckpt = chat_checkpoint(tmp_path / "ckpt")
    calls = spy_engine(monkeypatch)
    monkeypatch.setattr(sys, "stdin", io.StringIO("/settings length=fixed max_new_tokens=8\nreverse this a b\n"))
    assert main(["chat", "--ckpt", str(ckpt), "--steps", "4", *flags(options)]) == 0
    assert calls == [options]


def test_the_command_line_sets_them(tmp_path, monkeypatch, capsys):
    ckpt = chat_checkpoint(tmp_path / "ckpt")
    monkeypatch.setattr(sys, "stdin", io.StringIO("/settings length=fixed max_new_tokens=8\nreverse this a b\n"))
    assert main(["chat", "--ckpt", str(ckpt), "--strategy", "blocks", "--steps", "2", "--block-size", "2"]) == 0
    out = capsys.readouterr().out
    assert "strategy=blocks" in out and "block_size=2" in out
    assert out.split("Assistant: ")[0].count("[pass ") == 4
    for args, message in ((["--strategy", "blocks", "--block-size", "0"], "block_size=0: must be an integer > 0"),
                          (["--block-size", "4"], "strategy 'mask-predict' has no option 'block_size'"),
                          (["--strategy", "threshold", "--threshold", "1.5"], "threshold=1.5: must be in (0, 1]")):
        assert main(["chat", "--ckpt", str(ckpt), *args]) == 2
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1, err


@pytest.mark.parametrize(("changes", "message"), [
    (dict(block_size=0, strategy="blocks"), "block_size=0: must be an integer > 0"),
    (dict(threshold=2.0, strategy="threshold"), "threshold=2.0: must be in (0, 1]"),
    (dict(block_size=4), "strategy 'mask-predict' has no option 'block_size'"),
    (dict(block_size=4, strategy="threshold"), "strategy 'threshold' has no option 'block_size'"),
    (dict(commit="guess", strategy="blocks"), "unknown commit rule 'guess'"),
    (dict(cache="dual", strategy="threshold"), "cache='dual' caches blocks: it needs strategy 'blocks'"),
    (dict(refresh=-1, cache="dual", strategy="blocks"), "refresh=-1: must be"),
    (dict(eos_exit=True), "strategy 'mask-predict' has no option 'eos_exit'"),
])
def test_check_settings_is_the_engines_check(chat, changes, message):
    settings = dataclasses.replace(chat.settings, **changes)
    with pytest.raises(BiglmError) as err:
        chat.check_settings(settings)
    assert str(err.value).startswith(message) and "\n" not in str(err.value)


def test_wrong_types_are_one_line(chat):
    with pytest.raises(BiglmError, match=r"^block_size=True: expected int$"):
        ChatSettings(block_size=True).check()
    with pytest.raises(BiglmError, match=r"^setting eos_exit='maybe': expected bool \| None$"):
        chat.settings.updated(eos_exit="maybe")


@pytest.mark.parametrize("family", ["causal", "glm"])
def test_token_by_token_models_refuse_them_in_one_line(tmp_path, family):
    encoding = "rope-2d" if family == "glm" else "rope"
    ar = ChatModel.load(chat_checkpoint(tmp_path / family, family=family, position_encoding=encoding))
    with pytest.raises(BiglmError) as err:
        ar.check_settings(ChatSettings(max_new_tokens=6, block_size=4))
    assert str(err.value) == (f"block_size=4: an option of the masked models' parallel strategies; {family} models "
                              "decode token by token (set it to none)")
    out = io.StringIO()
    chat_loop(ar, io.StringIO("/settings threshold=0.5\n"), out, live=False)
    assert "\nerror: threshold=0.5: an option of the masked models' parallel strategies" in out.getvalue()
