"""``biglm chat``: the reply forming pass by pass (or token by token), /reset, /settings, history cut to the
context; the live view is exactly the engine's trajectory."""

from __future__ import annotations

import io
import itertools
import sys
from pathlib import Path

import pytest
import torch

from biglm import BiGLM, ModelConfig
from biglm.chat import ChatModel, ChatSettings
from biglm.chat.cli import chat_loop
from biglm.checkpoint import model_state_dict, write_checkpoint
from biglm.cli import main
from biglm.data.chat import set_chat_template
from biglm.data.tokenizer import ensure_glm_tokens
from biglm.errors import BiglmError
from biglm.generate.api import MASK_SYMBOL
from biglm.generate.autoregressive import AROptions
from biglm.generate.engine import generate_ids
from biglm.generate.glm import GLMTokens, infill_ids
from instruction_data import instruction_tokenizer


def chat_checkpoint(folder: Path, family: str = "masked", max_seq_len: int = 64, template: bool = True,
                    position_encoding: str = "rope", task: str | None = None) -> Path:
    """A random micro model (masked ones with a length head) whose tokenizer carries the chat template
    (``task``: a fine-tune of that kind, its config.yaml saved with it)."""
    torch.manual_seed(0)
    head = family == "masked"
    tok = instruction_tokenizer()
    if family == "glm":
        ensure_glm_tokens(tok)
    cfg = ModelConfig("test", max(64, len(tok)), 32, 1, 4, 2, 64, max_seq_len=max_seq_len, family=family,
                      length_head=head, max_target_length=9, position_encoding=position_encoding)
    if template:
        set_chat_template(tok)
    extra = {"config.yaml": lambda p: p.write_text(f"task:\n  kind: {task}\n")} if task else None
    return write_checkpoint(folder, model_state_dict(BiGLM(cfg)), cfg, tok, extra=extra)


def test_a_fine_tune_not_trained_to_write_gets_a_warning(tmp_path, capsys):
    """A cloze or reward fine-tune used to chat without a word."""
    for kind in ("cloze-classification", "reward", "extractive-qa", "instruction", "seq2seq"):
        capsys.readouterr()
        chat = ChatModel.load(chat_checkpoint(tmp_path / kind, task=kind))
        assert chat.reply([{"role": "user", "content": "hi"}]).text is not None  # it still runs
        warned = [line for line in capsys.readouterr().err.splitlines() if line.startswith("warning:")]
        if kind in ("instruction", "seq2seq"):
            assert warned == []
        else:
            assert len(warned) == 1 and f"is a {kind} fine-tune, not trained to write replies" in warned[0]
            assert "chat with a seq2seq, instruction, dpo fine-tune" in warned[0]


def test_live_passes_are_the_engine_trajectory(tmp_path):
    chat = ChatModel.load(chat_checkpoint(tmp_path / "ckpt"))
    settings = chat.settings.updated(max_new_tokens=6, steps=4, length="fixed")
    seen = []
    reply = chat.reply([{"role": "user", "content": "reverse this a b c"}], settings, seen.append)
    assert [u.index for u in seen] == [0, 1, 2, 3]
    assert seen[0].segments == [(MASK_SYMBOL, True)] * 6  # the first pass sees every position masked
    # The same generation through the engine with its recorded trajectory: every live pass matches.
    prompt, _ = chat.prompt_of([{"role": "user", "content": "reverse this a b c"}], settings)
    out = generate_ids(chat.model, [prompt], bos_token_id=chat.ids["bos"], eos_token_id=chat.ids["eos"],
                       mask_token_id=chat.ids["mask"], pad_token_id=chat.ids["pad"], max_new_tokens=6, steps=4,
                       banned_token_ids=chat.banned, record_trajectory=True)
    assert [chat.segments(step) for step in out.trajectories[0][:-1]] == [u.segments for u in seen]
    assert reply.token_ids == out.token_ids[0]


def test_chat_over_stdin_shows_passes_and_handles_commands(tmp_path, monkeypatch, capsys):
    ckpt = chat_checkpoint(tmp_path / "ckpt")
    script = "\n".join(["reverse this a b c d", "/settings steps=3 length=fixed max_new_tokens=5",
                        "caps this a b", "/settings bogus=1", "/reset", "/frobnicate", "find it k1", "/quit",
                        "never read"]) + "\n"
    monkeypatch.setattr(sys, "stdin", io.StringIO(script))
    assert main(["chat", "--ckpt", str(ckpt)]) == 0  # stdout is not a terminal: one line per pass
    out = capsys.readouterr().out
    assert out.count("Assistant: ") == 3  # three replies; the line after /quit is never read
    assert "[pass 0] " + MASK_SYMBOL in out  # the reply forming: all masked at first
    assert "steps=3" in out and "error: unknown setting 'bogus'" in out
    assert "(conversation reset)" in out and "unknown command /frobnicate" in out
    after = out.split("settings: max_new_tokens=5")[1].split("Assistant: ")[0]  # the reply after /settings
    assert after.count("[pass ") == 3 and "[pass 3]" not in after, after


def test_history_beyond_the_context_is_cut_and_said(tmp_path):
    chat = ChatModel.load(chat_checkpoint(tmp_path / "ckpt", max_seq_len=32))
    lines = "\n".join(["reverse this a b c d e f"] * 4) + "\n"
    out = io.StringIO()
    chat_loop(chat, io.StringIO(lines), out, live=False)
    text = out.getvalue()
    assert "oldest turn(s) left out" in text
    # On a terminal the reply is rewritten in place: carriage return + clear line before each pass.
    live = io.StringIO()
    chat_loop(chat, io.StringIO("reverse this a b\n"), live, live=True)
    assert "\r\x1b[KAssistant (pass 0): " + MASK_SYMBOL in live.getvalue()


def test_autoregressive_models_stream_tokens(tmp_path):
    chat = ChatModel.load(chat_checkpoint(tmp_path / "ckpt", family="causal"))
    seen = []
    reply = chat.reply([{"role": "user", "content": "caps this a b"}], ChatSettings(max_new_tokens=6), seen.append)
    assert seen and all(u.kind == "token" for u in seen)
    assert seen[-1].text == reply.text  # the streamed text ends as the reply
    assert all(b.text.startswith(a.text) for a, b in itertools.pairwise(seen))  # tokens only ever append
    out = io.StringIO()
    chat_loop(chat, io.StringIO("caps this a b\n"), out, live=False)
    assert "[token 0]" in out.getvalue()


@pytest.mark.parametrize("encoding", ["rope-2d", "learned-2d"])
def test_glm_models_write_the_reply_into_a_gmask_blank(tmp_path, encoding):
    chat = ChatModel.load(chat_checkpoint(tmp_path / "ckpt", family="glm", position_encoding=encoding))
    settings, seen = ChatSettings(max_new_tokens=6), []
    messages = [{"role": "user", "content": "caps this a b " * 30}]  # longer than the context: cut to fit
    reply = chat.reply(messages, settings, seen.append)
    assert seen and all(u.kind == "token" for u in seen) and seen[-1].text == reply.text
    # The reply is the infilling of [gMASK] after the (cut) conversation, within the learned table's range.
    prompt, _ = chat.prompt_of(messages, settings)
    assert len(prompt) + 2 + 1 + settings.max_new_tokens == chat.model.config.max_seq_len
    g = GLMTokens.from_tokenizer(chat.tokenizer)
    expected = infill_ids(chat.model, [[*prompt, g.gmask]], g,
                          options=AROptions(max_new_tokens=6, banned_token_ids=tuple(chat.banned)))
    assert reply.token_ids == expected.fills[0][0]


def test_bad_messages_and_settings(tmp_path):
    chat = ChatModel.load(chat_checkpoint(tmp_path / "ckpt", template=False))  # biglm's template is set
    assert "Assistant:" in chat.tokenizer.chat_template
    with pytest.raises(BiglmError, match="unknown role 'robot'"):
        chat.reply([{"role": "robot", "content": "hi"}])
    with pytest.raises(BiglmError, match="empty content"):
        chat.reply([{"role": "user", "content": ""}])
    with pytest.raises(BiglmError, match="a reply answers a user message"):
        chat.reply([{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}])
    with pytest.raises(BiglmError, match="steps='x': expected int"):
        chat.settings.updated(steps="x")
