"""Odd text never crashes a reader or an interactive verb: records (JSONL, JSON, CSV, .src, gz, parquet) follow one
set of rules (``biglm.textio``) with one-line errors naming the file and line; ``biglm chat`` survives bytes that
are not UTF-8, absurd settings and a failed turn, keeping its settings and the conversation; the server's request
validation refuses the same settings with a 400."""

from __future__ import annotations

import gzip
import io
import json
from pathlib import Path

import pytest

from biglm.chat import ChatModel, ChatSettings
from biglm.chat.cli import chat_loop
from biglm.cli import main
from biglm.data.records import read_records
from biglm.data.sources import iter_documents
from biglm.errors import BiglmError
from biglm.serve.validation import HTTPError, parse_request
from biglm.textio import MAX_DEPTH
from conftest import make_checkpoint
from test_chat import chat_checkpoint

DEEP = "[" * 100_000 + "]" * 100_000
BIG_INT = "9" * 5000

# (file name, bytes, text the one-line error holds)
BAD_FILES = [
    ("latin1.jsonl", b'{"text": "ok"}\n{"text": "caf\xe9"}\n',
     "latin1.jsonl:2: not UTF-8 text (byte 0xe9 at column 14)"),
    ("binary.jsonl", b'{"text": "ok"}\n' + bytes(range(128, 256)), "binary.jsonl:2: not UTF-8 text (byte 0x80"),
    ("bigint.jsonl", b'{"text": "a", "label": ' + BIG_INT.encode() + b"}\n",
     "bigint.jsonl:1: an integer of 5,000 digits"),
    ("nested.jsonl", b'{"text": ' + DEEP.encode() + b"}\n", f"nested.jsonl:1: JSON nested more than {MAX_DEPTH}"),
    ("shallow-nest.jsonl", b'{"text": ' + b"[" * 500 + b"]" * 500 + b"}\n",
     f"shallow-nest.jsonl:1: JSON nested more than {MAX_DEPTH}"),
    ("nan.jsonl", b'{"text": NaN, "label": 1}\n', "nan.jsonl:1: NaN is not a valid JSON value (non-finite numbers"),
    ("inf.jsonl", b'{"text": "a", "label": -Infinity}\n', "inf.jsonl:1: -Infinity is not a valid JSON value"),
    ("huge.jsonl", b'{"text": "a", "label": 1e999}\n', "huge.jsonl:1: number 1e999 is beyond the range of a float"),
    ("surrogate.jsonl", b'{"text": "a\\ud800b"}\n', "surrogate.jsonl:1: a string holds the unpaired surrogate \\ud800"),
    ("latin1.json", '[{"text": "ok"},\n {"text": "caf\xe9"}]'.encode("latin-1"), "latin1.json:2: not UTF-8 text"),
    ("nested.json", DEEP.encode(), f"nested.json: JSON nested more than {MAX_DEPTH}"),
    ("bigint.json", b'[{"label": ' + BIG_INT.encode() + b"}]", "bigint.json: an integer of 5,000 digits"),
    ("latin1.csv", "text,label\ncaf\xe9,1\n".encode("latin-1"), "latin1.csv:2: not UTF-8 text (byte 0xe9 at column 4)"),
    ("long.csv", b"text,label\n" + b"a" * 200_000 + b",1\n", "long.csv:2: not valid CSV (field larger than"),
    ("latin1.src", "caf\xe9\n".encode("latin-1"), "latin1.src:1: not UTF-8 text"),
    ("garbage.jsonl.gz", b"not gzip at all", "garbage.jsonl.gz: cannot be read (Not a gzipped file"),
    ("garbage.parquet", b"not parquet at all", "garbage.parquet: cannot be read as parquet"),
]


@pytest.mark.parametrize("name, data, message", BAD_FILES, ids=[c[0] for c in BAD_FILES])
def test_odd_record_files_are_one_line_errors(tmp_path, name, data, message):
    (tmp_path / name).write_bytes(data)
    (tmp_path / "latin1.tgt").write_text("x\n")
    with pytest.raises(BiglmError) as err:
        read_records(str(tmp_path / name))
    assert message in str(err.value) and "\n" not in str(err.value), str(err.value)
    assert str(tmp_path / name) in str(err.value)


@pytest.mark.parametrize("name, data", [
    ("bom.jsonl", b'\xef\xbb\xbf{"text": "a", "label": 1}\n'),
    ("bom.json", b'\xef\xbb\xbf[{"text": "a", "label": 1}]'),
    ("bom.csv", b"\xef\xbb\xbftext,label\na,1\n"),
    ("bom.jsonl.gz", gzip.compress(b'\xef\xbb\xbf{"text": "a", "label": 1}\n')),
])
def test_a_utf8_byte_order_mark_is_accepted(tmp_path, name, data):
    (tmp_path / name).write_bytes(data)
    records = read_records(str(tmp_path / name))
    assert records[0].get("text") == "a" and sorted(records[0].fields) == ["label", "text"]


def test_a_null_field_says_null_and_a_nan_from_parquet_is_refused(tmp_path):
    (tmp_path / "null.jsonl").write_text('{"text": "a", "label": null}\n')
    record = read_records(str(tmp_path / "null.jsonl"))[0]
    with pytest.raises(BiglmError, match=r"null.jsonl:1: field 'label' is null; expected a label"):
        record.get("label", (str, int), "a label")
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist([{"text": "a", "score": float("nan")}]), tmp_path / "nan.parquet")
    record = read_records(str(tmp_path / "nan.parquet"))[0]
    with pytest.raises(BiglmError, match=r"nan.parquet row 0: field 'score' is nan, not a finite number"):
        record.get("score", float, "a score")


def test_pretraining_sources_skip_such_lines_rather_than_crash(tmp_path):
    lines = [json.dumps({"text": "good one"}), '{"text": "a", "n": ' + BIG_INT + "}", '{"text": ' + DEEP + "}",
             '{"text": NaN}', json.dumps({"text": "good two"})]
    (tmp_path / "docs.jsonl").write_text("\n".join(lines) + "\n")
    assert list(iter_documents(str(tmp_path / "docs.jsonl"))) == ["good one", "good two"]


@pytest.fixture(scope="module")
def init(tmp_path_factory):
    return make_checkpoint(tmp_path_factory.mktemp("odd") / "init")


def test_finetune_and_predict_with_odd_files_say_one_line(init, tmp_path, capsys):
    good = tmp_path / "good.jsonl"
    good.write_text(json.dumps({"source": "a b", "target": "b a"}) + "\n")
    bad = {"latin1.jsonl": '{"source": "caf\xe9", "target": "a"}\n'.encode("latin-1"),
           "bigint.jsonl": b'{"source": "a", "target": "b", "n": ' + BIG_INT.encode() + b"}\n",
           "nested.jsonl": b'{"source": ' + DEEP.encode() + b', "target": "b"}\n',
           "nan.jsonl": b'{"source": NaN, "target": "b"}\n'}
    base = ["finetune", "--task", "seq2seq", "--init", str(init), "--task.seq2seq.max_target_length", "8",
            "--train.progress", "false", "--train.tensorboard", "false", "--epochs", "1",
            "--train.global_batch_size", "1"]
    for name, data in bad.items():
        (tmp_path / name).write_bytes(data)
        capsys.readouterr()
        assert main([*base, "--train", str(tmp_path / name), "--out", str(tmp_path / f"run-{name}")]) == 2, name
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and f"{name}:1: " in err[0], (name, err)
    assert main([*base, "--train", str(good), "--out", str(tmp_path / "run")]) == 0
    for name in bad:
        capsys.readouterr()
        assert main(["predict", "--ckpt", str(tmp_path / "run"), "--input", str(tmp_path / name), "--out",
                     str(tmp_path / "p.jsonl")]) == 2, name
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and f"{name}:1: " in err[0], (name, err)


def test_answers_file_and_expand_check_text_read_by_the_same_rules(tmp_path):
    from biglm.annotate.store import AnswerStore
    from biglm.grow.api import check_rows

    answers = tmp_path / "answers.jsonl"
    answers.write_bytes(b'{"prompt": "caf\xe9"}\n')
    with pytest.raises(BiglmError, match=r"answers.jsonl:1: not UTF-8 text"):
        AnswerStore(answers)
    (tmp_path / "check.jsonl").write_bytes(b'{"text": ' + BIG_INT.encode() + b"}\n")
    from conftest import word_tokenizer

    with pytest.raises(BiglmError, match=r"check.jsonl:1: an integer of 5,000 digits"):
        check_rows(word_tokenizer(), 64, str(tmp_path / "check.jsonl"))


# --- biglm chat and the server's request validation ----------------------------------------------------------

@pytest.fixture(scope="module")
def chat(tmp_path_factory) -> ChatModel:
    return ChatModel.load(chat_checkpoint(tmp_path_factory.mktemp("chat") / "ckpt", family="causal"))


def run_chat(chat: ChatModel, script: bytes) -> str:
    out = io.StringIO()
    assert chat_loop(chat, io.TextIOWrapper(io.BytesIO(script), encoding="utf-8"), out, live=False) == 0
    return out.getvalue()


@pytest.mark.parametrize("command, message", [
    (b"/settings seed=99999999999999999999999", "seed=99999999999999999999999: must be an integer from -2**63"),
    (b"/settings temperature=1e308", "temperature=1e+308: must be 0 (greedy) or from 0.001 to 1000"),
    (b"/settings temperature=1e-320", "temperature=1e-320: must be 0 (greedy) or from 0.001 to 1000"),
    (b"/settings temperature=nan", "temperature=nan: must be 0 (greedy)"),
    (b"/settings top_p=nan", "top_p=nan: must be in (0, 1]"),
    (b"/settings max_new_tokens=100000", "max_new_tokens=100000 leaves no room for a prompt"),
    (b"/settings strategy=beam", "strategy 'beam': chat decodes causal models with greedy or sample"),
    (b"/settings seed=" + BIG_INT.encode(), "setting seed='99999"),
])
def test_chat_settings_are_checked_when_set_and_the_session_goes_on(chat, command, message):
    out = run_chat(chat, b"reverse this a b\n" + command + b" steps=3\n/settings\nreverse this a b\n")
    assert f"error: {message}" in out, out
    assert all(len(line) < 200 for line in out.splitlines() if line.startswith("error:")), out  # values cut short
    shown = [line for line in out.splitlines() if line.startswith("settings: ")]
    assert len(shown) == 2 and shown[0] == shown[1] and "steps=10" in shown[0], shown  # nothing of it applied
    assert out.count("Assistant: ") >= 2 and "Traceback" not in out


def test_chat_line_that_is_not_utf8_is_said_and_skipped(chat):
    out = run_chat(chat, b"caf\xe9 au lait\nreverse this a b\n")
    assert "error: that line is not UTF-8 text (byte 0xe9); not sent" in out
    assert out.count("Assistant: ") >= 1


def test_a_failed_turn_keeps_the_session_and_the_conversation(chat, monkeypatch):
    seen: list[list[dict]] = []
    real = chat.reply

    def flaky(messages, settings, show):
        seen.append([dict(m) for m in messages])
        if len(seen) == 2:
            raise RuntimeError("probability tensor contains either inf or nan")
        return real(messages, settings, show)

    monkeypatch.setattr(chat, "reply", flaky)
    out = run_chat(chat, b"first turn a\nsecond turn b\nthird turn c\n")
    assert "error: the reply failed (RuntimeError: probability tensor contains either inf or nan)" in out
    # The third turn still has the first exchange; the failed user turn was taken back.
    assert [m["content"] for m in seen[2] if m["role"] == "user"] == ["first turn a", "third turn c"]
    assert len(seen[2]) == 3 and seen[2][1]["role"] == "assistant"


@pytest.mark.parametrize("body, message", [
    ({"seed": 10**23}, "seed=100000000000000000000000: must be an integer"),
    ({"temperature": 1e308}, "temperature=1e+308: must be 0 (greedy)"),
    ({"temperature": 1e-320}, "temperature=1e-320: must be 0 (greedy)"),
])
def test_server_refuses_the_same_settings(chat, body, message):
    with pytest.raises(BiglmError, match=message.replace("(", r"\(").replace(")", r"\)").replace("+", r"\+")):
        ChatSettings().updated(**body)  # what biglm chat's /settings checks
    raw = json.dumps({"messages": [{"role": "user", "content": "hi"}], **body}).encode()
    with pytest.raises(HTTPError) as err:
        parse_request(chat, "/v1/chat/completions", raw)
    assert err.value.status == 400 and message in err.value.message


def test_generate_refuses_absurd_temperature_and_seed(init, capsys):
    for extra, message in ((["--temperature", "1e308"], "temperature=1e+308: must be 0 (greedy)"),
                           (["--temperature", "0.7", "--seed", "99999999999999999999999"], "seed=9999")):
        capsys.readouterr()
        assert main(["generate", "--ckpt", str(init), "--prompt", "a b", "--max-new-tokens", "4", *extra]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and message in err[0], err


def test_request_body_json_follows_the_same_rules(chat):
    for raw, message in ((b'{"messages": NaN}', "NaN is not a valid JSON value"),
                         (b'{"x": ' + DEEP.encode() + b"}", "JSON nested more than"),
                         (b'{"max_tokens": ' + BIG_INT.encode() + b"}", "an integer of 5,000 digits"),
                         (b'{"messages": "caf\xe9"}', "not UTF-8 text"),
                         (b'{"stream": "yes", "prompt": "a"}', "'stream' must be true or false"),
                         (b'{"prompt": "a \\udcff b"}', "unpaired surrogate")):
        with pytest.raises(HTTPError) as err:
            parse_request(chat, "/v1/completions", raw)
        assert err.value.status == 400 and message in err.value.message, err.value.message


def test_textio_paths_are_named(tmp_path: Path):
    from biglm.textio import parse_json

    with pytest.raises(BiglmError, match=r"^f.json:3: not valid JSON \(Expecting"):
        parse_json('{\n"a":\n}', "f.json", at_line=True)
    assert parse_json(b'\xef\xbb\xbf{"a": [1.5, -2, "\\ud83d\\ude00"]}', "x") == {"a": [1.5, -2, "\U0001F600"]}
