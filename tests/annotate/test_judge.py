"""``biglm judge``: AI feedback written in the preference format as annotator ``ai:<model>``. Reading
verdicts; an OpenAI-compatible endpoint (a stub that answers by a script, some answers garbage: counted,
skipped, one message; ``biglm serve`` running a micro model); a biglm checkpoint as the judge; resume."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from biglm.annotate.judge import CheckpointJudge, judge_pairs, load_template, parse_verdict, render
from biglm.annotate.pairs import Pair
from biglm.annotate.store import Answer, AnswerStore
from biglm.chat import ChatModel
from biglm.cli import main
from biglm.data.preferences import preference_pairs
from biglm.data.records import read_records
from biglm.errors import BiglmError
from biglm.serve.app import create_app
from biglm.serve.server import Server
from test_chat import chat_checkpoint

PAIRS = [Pair(f"pair{i}: say {w}", w, w.upper(), "m1", "m2") for i, w in enumerate(["ab", "cd", "ef", "gh", "ij"])]


def write_pairs(path):
    path.write_text("".join(json.dumps(p.to_dict()) + "\n" for p in PAIRS))
    return path


@pytest.mark.parametrize("text, expected", [
    ("A: acceptable\nB: unacceptable\nHelpfulness: A", Answer("A", "acceptable", "unacceptable")),
    ("Helpfulness: B is better.\nA: unacceptable", Answer("B", "unacceptable", None)),
    ("**Helpfulness:** both not good", Answer("both_bad")),
    ("helpfulness = Both good\nResponse A is acceptable\nResponse B: acceptable", Answer("both_good", "acceptable",
                                                                                         "acceptable")),
    ("A: acceptable\nA: unacceptable\nHelpfulness: A", Answer("A", None, None)),  # said both ways: left out
    ("Helpfulness: A\nHelpfulness: B", None),  # two answers: unreadable
    ("Helpfulness: A, B, both good or both not good", None),  # the template's line echoed back
    ("I think the first one", None),
    ("", None),
])
def test_parse_verdict(text, expected):
    assert parse_verdict(text) == expected


def test_the_default_template_is_unreadable_as_an_answer_and_rendering_keeps_braces():
    template = load_template()
    assert parse_verdict(template) is None
    pair = Pair("fill {x} in", "a {response_b}", "b")
    assert "fill {x} in" in render(template, pair) and "a {response_b}" in render(template, pair)


def test_a_template_without_its_fields_is_refused(tmp_path):
    (tmp_path / "t.txt").write_text("Compare {response_a} and {response_b}.")
    with pytest.raises(BiglmError, match=r"t.txt: the template lacks \{prompt\}"):
        load_template(tmp_path / "t.txt")


class Stub:
    """An OpenAI-compatible chat endpoint answering by a script keyed on the pair the question is about."""

    def __init__(self, script: dict[str, Any]) -> None:
        self.script, self.asked = script, []
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                question = body["messages"][-1]["content"]
                key = next(k for k in stub.script if k in question)
                stub.asked.append(key)
                answer = stub.script[key]
                if isinstance(answer, int):  # an HTTP error status
                    out = json.dumps({"error": {"message": "bad request", "type": "invalid_request_error"}}).encode()
                    self.send_response(answer)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(out)))
                    self.end_headers()
                    self.wfile.write(out)
                    return
                out = json.dumps({"id": "x", "object": "chat.completion", "created": 0, "model": body["model"],
                                  "choices": [{"index": 0, "finish_reason": "stop", "message": {
                                      "role": "assistant", "content": answer if isinstance(answer, str)
                                      else answer(question)}}]}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(out)))
                self.end_headers()
                self.wfile.write(out)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"


def test_an_endpoint_judge_with_garbage_answers_counted_skipped_and_resumed(tmp_path, capsys):
    script = {"pair0": "A: acceptable\nB: acceptable\nHelpfulness: A", "pair1": "B: unacceptable\nHelpfulness: B",
              "pair2": "%%% garbage %%%", "pair3": "Helpfulness: both not good", "pair4": "no idea"}
    stub = Stub(script)
    pairs, out = write_pairs(tmp_path / "pairs.jsonl"), tmp_path / "ai.jsonl"
    args = ["judge", "--pairs", str(pairs), "--out", str(out), "--judge-url", stub.url, "--judge-model", "gpt-x"]
    try:
        assert main(args) == 0
        err = capsys.readouterr().err
        assert "judge gpt-x: 3 answers saved" in err
        assert "judge: 2 of 5 answers unreadable, skipped; first: '%%% garbage %%%'" in err
        saved = preference_pairs(read_records(str(out)))
        assert [(p.prompt, p.choice, p.acceptable_y, p.acceptable_y_prime, p.annotator) for p in saved] == [
            (PAIRS[0].prompt, "A", "acceptable", "acceptable", "ai:gpt-x"),
            (PAIRS[1].prompt, "B", None, "unacceptable", "ai:gpt-x"),
            (PAIRS[3].prompt, "both_bad", None, None, "ai:gpt-x")]
        assert sorted(stub.asked) == sorted(script)
        stub.asked.clear()
        stub.script["pair2"] = "Helpfulness: A"  # a second run asks again only what is not saved yet
        assert main(args) == 0
        assert "1 answers saved" in capsys.readouterr().err and sorted(stub.asked) == ["pair2", "pair4"]
        assert len(preference_pairs(read_records(str(out)))) == 4
    finally:
        stub.httpd.shutdown()


def test_a_run_without_a_single_verdict_exits_2_with_one_line(tmp_path, capsys):
    """Every request failed (or every answer was unreadable): it used to exit 0 as if judged."""
    pairs = write_pairs(tmp_path / "pairs.jsonl")
    for name, answer, why in [("failed", 400, "5 failed (first: BadRequestError: "),
                              ("unreadable", "no idea", "5 unreadable (first: 'no idea')")]:
        stub = Stub({f"pair{i}": answer for i in range(5)})
        out = tmp_path / f"{name}.jsonl"
        try:
            capsys.readouterr()
            assert main(["judge", "--pairs", str(pairs), "--out", str(out), "--judge-url", stub.url,
                         "--judge-model", "gpt-x"]) == 2
        finally:
            stub.httpd.shutdown()
        err = [line for line in capsys.readouterr().err.splitlines() if not line.startswith("judge: ")]
        assert len(err) == 1 and "judge gpt-x: no verdict from 5 requests, nothing saved to" in err[0], err
        assert why in err[0]
        assert not out.exists() or not out.read_text().strip()  # nothing saved


@pytest.fixture(scope="module")
def judge_ckpt(tmp_path_factory):
    return chat_checkpoint(tmp_path_factory.mktemp("judge") / "ckpt", max_seq_len=96)


def test_biglm_serve_as_the_openai_compatible_judge(judge_ckpt, tmp_path):
    chat = ChatModel.load(judge_ckpt)
    server = Server(create_app(chat, model_name="micro")).start()
    try:
        from biglm.annotate.judge import EndpointJudge

        judge = EndpointJudge(f"{server.url}/v1", "micro", max_tokens=6)
        store = AnswerStore(tmp_path / "ai.jsonl")
        report = judge_pairs(PAIRS, judge, store, load_template())
        store.close()
    finally:
        server.stop()
    # What the judge read is what the served model says to each question (greedy, same settings).
    settings = chat.settings.updated(temperature=0.0, max_new_tokens=6)
    direct = [chat.reply([{"role": "user", "content": render(load_template(), p)}], settings).text for p in PAIRS]
    readable = [parse_verdict(t) for t in direct]
    assert report.asked == 5 and report.failed == 0
    assert report.saved == sum(v is not None for v in readable) and report.unreadable == 5 - report.saved
    if report.unreadable:
        assert report.first_unreadable == next(t for t, v in zip(direct, readable) if v is None)
        assert f"judge: {report.unreadable} of 5 answers unreadable, skipped" in report.summary()
    assert [r["annotator"] for r in report.records] == ["ai:micro"] * report.saved


def test_a_biglm_checkpoint_as_the_judge(judge_ckpt, tmp_path, capsys):
    pairs, out = write_pairs(tmp_path / "pairs.jsonl"), tmp_path / "ai.jsonl"
    chat = ChatModel.load(judge_ckpt)
    judge = CheckpointJudge(chat, str(judge_ckpt), max_tokens=6)
    direct = [r.text for r in chat.replies([[{"role": "user", "content": render(load_template(), p)}]
                                            for p in PAIRS], judge.settings)]
    verdicts = [parse_verdict(t) for t in direct]
    capsys.readouterr()
    status = main(["judge", "--pairs", str(pairs), "--out", str(out), "--judge-ckpt", str(judge_ckpt),
                   "--judge-max-tokens", "6"])
    assert status == (0 if any(v is not None for v in verdicts) else 2)  # no verdict at all: exit 2
    err = capsys.readouterr().err
    if status == 2:
        first = next(t for t, v in zip(direct, verdicts) if v is None)
        assert f"no verdict from 5 requests, nothing saved to {out}: 5 unreadable (first: {first[:120]!r})" in err
        return
    saved = preference_pairs(read_records(str(out))) if out.read_text() else []
    assert [p.prompt for p in saved] == [p.prompt for p, v in zip(PAIRS, verdicts) if v is not None]
    assert all(p.annotator == f"ai:{judge_ckpt}" for p in saved)
    unreadable = sum(v is None for v in verdicts)
    if unreadable:  # a random micro model mostly writes garbage: counted, skipped, named once
        first = next(t for t, v in zip(direct, verdicts) if v is None)
        assert f"judge: {unreadable} of 5 answers unreadable, skipped; first: {first[:120]!r}" in err


def test_judge_cli_refuses_bad_arguments(tmp_path, capsys):
    pairs = write_pairs(tmp_path / "pairs.jsonl")
    out = str(tmp_path / "ai.jsonl")
    assert main(["judge", "--pairs", str(pairs), "--out", out]) == 2
    assert "give one judge" in capsys.readouterr().err
    assert main(["judge", "--pairs", str(pairs), "--out", out, "--judge-url", "http://x/v1"]) == 2
    assert "--judge-url needs --judge-model" in capsys.readouterr().err
    assert main(["judge", "--pairs", str(pairs), "--out", out, "--judge-url", "http://x/v1", "--judge-model", "m",
                 "--template", str(tmp_path / "none.txt")]) == 2
    assert "none.txt: no such template file" in capsys.readouterr().err


def test_judging_pairs_sampled_from_one_checkpoint(judge_ckpt, tmp_path, capsys):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("reverse this a b c\ncaps this a b\n")
    stub = Stub({"reverse this": "Helpfulness: A", "caps this": "Helpfulness: both good"})
    out = tmp_path / "ai.jsonl"
    args = ["judge", "--prompts", str(prompts), "--ckpt", str(judge_ckpt), "--max-new-tokens", "5", "--out", str(out),
            "--judge-url", stub.url, "--judge-model", "gpt-x"]
    try:
        assert main(args) == 0
        cache = tmp_path / "ai.pairs.jsonl"
        kept = cache.read_text()
        saved = preference_pairs(read_records(str(out)))
        assert [(p.prompt, p.choice) for p in saved] == [("reverse this a b c", "A"), ("caps this a b", "both_good")]
        names = {f"{judge_ckpt}[seed=1,temperature=0.7]", f"{judge_ckpt}[seed=2,temperature=0.7]"}
        assert all({p.model_y, p.model_y_prime} == names for p in saved)
        assert main(args) == 0  # nothing new: the cached pairs are the same pairs, all judged
        assert "0 answers saved" in capsys.readouterr().err and cache.read_text() == kept
        assert main([*args, "--seed-b", "3"]) == 2  # other settings do not mix into the cache
        assert "sampled with other checkpoints or settings" in capsys.readouterr().err
        pairs_args = ["judge", "--pairs", str(cache), "--out", str(out), "--judge-url", stub.url, "--judge-model",
                      "gpt-x"]
        assert main(pairs_args) == 0  # the cache read as a pairs file: the very pairs judged above
        assert "0 answers saved" in capsys.readouterr().err
    finally:
        stub.httpd.shutdown()


def test_both_orders_keeps_only_verdicts_that_survive_swapping_a_and_b(tmp_path, capsys):
    def prefers_capitals(question: str) -> str:  # a judge that reads the responses
        if "Response A:\nCD" in question:
            return "A: acceptable\nB: acceptable\nHelpfulness: A"
        return "A: acceptable\nB: unacceptable\nHelpfulness: B"

    stub = Stub({"pair0": "Helpfulness: A", "pair1": prefers_capitals, "pair2": "??"})  # pair0: position bias
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("".join(json.dumps(p.to_dict()) + "\n" for p in PAIRS[:3]))
    out = tmp_path / "ai.jsonl"
    try:
        assert main(["judge", "--pairs", str(pairs), "--out", str(out), "--judge-url", stub.url, "--judge-model",
                     "gpt-x", "--both-orders"]) == 0
    finally:
        stub.httpd.shutdown()
    err = capsys.readouterr().err
    assert sorted(stub.asked) == ["pair0", "pair0", "pair1", "pair1", "pair2", "pair2"]
    assert "judge: 2 of 6 answers unreadable, skipped; first: '??'" in err
    assert "judge: 1 of 3 pairs judged differently with A and B swapped, skipped" in err
    assert "judge: 3 of 3 pairs asked, 1 saved" in err  # progress
    saved = preference_pairs(read_records(str(out)))
    assert [(p.prompt, p.y, p.choice, p.acceptable_y, p.acceptable_y_prime) for p in saved] == [
        (PAIRS[1].prompt, "cd", "B", "acceptable", None)]  # the acceptability the orders disagree on is left out


def test_judging_pairs_from_two_checkpoints(judge_ckpt, tmp_path):
    other = chat_checkpoint(tmp_path / "causal", family="causal", max_seq_len=96)
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"instruction": f"caps this {w}"}) + "\n" for w in "abcdef"))
    stub = Stub({"caps this": "Helpfulness: B"})
    out = tmp_path / "ai.jsonl"
    try:
        assert main(["judge", "--prompts", str(prompts), "--ckpt", str(judge_ckpt), "--ckpt-b", str(other),
                     "--max-new-tokens", "4", "--out", str(out), "--judge-url", stub.url, "--judge-model", "j"]) == 0
    finally:
        stub.httpd.shutdown()
    saved = preference_pairs(read_records(str(out)))
    assert len(saved) == 6 and all({p.model_y, p.model_y_prime} == {str(judge_ckpt), str(other)} for p in saved)
    assert {p.model_y for p in saved} == {str(judge_ckpt), str(other)}  # each model on both sides
