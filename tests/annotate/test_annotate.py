"""``biglm annotate``: the answers file (whole lines, torn-tail repair, undo by atomic rewrite, resume, one
answer per pair and annotator), sampled pairs that stay the same across a restart, bad input, who may write
(the page's session token, the annotator's token, Origin, Host, JSON), and the page in a real headless browser:
buttons and keyboard, undo, the server killed (SIGKILL) mid-session and restarted, every answer saved exactly
once with its labels, and a forged write from another site's page that fails."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import requests

from biglm.annotate.app import Annotation, annotation_app
from biglm.annotate.pairs import Pair, PairPool, chat_sampler, read_pairs, read_prompts, sampled_pool
from biglm.annotate.store import Answer, AnswerStore, Conflict
from biglm.cli import main
from biglm.data.preferences import preference_pairs
from biglm.data.records import read_records
from biglm.errors import BiglmError
from serving import browser, served
from test_train_distributed import free_port

PAIRS = [Pair(f"name the last letter of {w}?", w[-1], w[0], "m1", "m2") for w in ("abc", "dog", "cat", "pyx", "elk")]


def write_pairs(path: Path, pairs=PAIRS) -> Path:
    path.write_text("".join(json.dumps(p.to_dict()) + "\n" for p in pairs))
    return path


def read_back(path: Path):
    """The answers as the reward task reads them (every line must parse)."""
    return preference_pairs(read_records(str(path)))


class Annotator:
    """What the page does over HTTP: a session token and an annotator token from /api/session, then reads and
    writes with them (``token``: act as that annotator; ``session``: use that write token)."""

    def __init__(self, url: str, name: str, token: str | None = None, session: str | None = None) -> None:
        given = requests.get(f"{url}/api/session", timeout=30).json()
        self.url, self.name = url, name
        self.token = token or given["annotator_token"]
        self.session = session or given["session"]

    def headers(self) -> dict[str, str]:
        return {"X-Biglm-Annotator": self.token, "X-Biglm-Session": self.session}

    def state(self) -> dict:
        return requests.get(f"{self.url}/api/state", params={"annotator": self.name}, headers=self.headers(),
                            timeout=30).json()

    def answer(self, pair: str, choice: str, **labels) -> requests.Response:
        return requests.post(f"{self.url}/api/answer", headers=self.headers(), timeout=30,
                             json={"annotator": self.name, "pair": pair, "choice": choice, **labels})

    def undo(self) -> requests.Response:
        return requests.post(f"{self.url}/api/undo", json={"annotator": self.name}, headers=self.headers(), timeout=30)


def test_answers_are_appended_whole_once_and_undo_rewrites_atomically(tmp_path):
    out = tmp_path / "prefs.jsonl"
    store = AnswerStore(out)
    store.add("human:ann", PAIRS[0], Answer("A", "acceptable", "unacceptable"))
    store.add("human:ann", PAIRS[1], Answer("both_bad"))
    store.add("human:bob", PAIRS[0], Answer("B", "acceptable", "acceptable"))  # another annotator may judge it too
    with pytest.raises(Conflict, match="already answered by human:ann"):
        store.add("human:ann", PAIRS[0], Answer("B"))
    with pytest.raises(BiglmError, match="choice='C'"):
        store.add("human:ann", PAIRS[2], Answer("C"))
    with pytest.raises(BiglmError, match="acceptable_b='fine'"):
        store.add("human:ann", PAIRS[2], Answer("A", "acceptable", "fine"))
    pairs = read_back(out)
    assert [(p.d, p.annotator, p.acceptable_y, p.model_y) for p in pairs] == [
        (-1, "human:ann", "acceptable", "m1"), (0, "human:ann", None, "m1"), (1, "human:bob", "acceptable", "m1")]
    inode = out.stat().st_ino
    removed = store.undo("human:ann")  # ann's last answer, not the file's last line
    assert removed["prompt"] == PAIRS[1].prompt and out.stat().st_ino != inode  # replaced by a rename
    store.add("human:ann", PAIRS[3], Answer("B"))  # appends go to the new file
    assert [(p.annotator, p.prompt) for p in read_back(out)] == [
        ("human:ann", PAIRS[0].prompt), ("human:bob", PAIRS[0].prompt), ("human:ann", PAIRS[3].prompt)]
    assert all("timestamp" in json.loads(line) for line in out.read_text().splitlines())
    store.close()
    resumed = AnswerStore(out)  # a restart knows what is done
    assert resumed.answered("human:ann", PAIRS[0].key) and not resumed.answered("human:ann", PAIRS[1].key)
    assert resumed.count("human:ann") == 2 and resumed.count("human:bob") == 1
    for _ in range(2):
        resumed.undo("human:ann")
    with pytest.raises(Conflict, match="nothing to undo"):
        resumed.undo("human:ann")
    resumed.close()


def test_one_writer_at_a_time(tmp_path):
    store = AnswerStore(tmp_path / "prefs.jsonl")
    with pytest.raises(BiglmError, match="another process is writing it"):
        AnswerStore(tmp_path / "prefs.jsonl")
    store.close()
    AnswerStore(tmp_path / "prefs.jsonl").close()  # the lock goes with its holder


def test_a_torn_last_line_is_repaired_with_a_note(tmp_path, capsys):
    out = tmp_path / "prefs.jsonl"
    store = AnswerStore(out)
    for pair in PAIRS[:2]:
        store.add("human:ann", pair, Answer("A"))
    store.close()
    whole = out.read_bytes()
    out.write_bytes(whole + b'{"prompt": "name the last le')  # a power cut mid-line
    store = AnswerStore(out)
    assert "its last line was cut off mid-write" in capsys.readouterr().err
    assert out.read_bytes() == whole
    assert (tmp_path / "prefs.jsonl.torn").read_bytes() == b'{"prompt": "name the last le\n'
    assert store.count("human:ann") == 2
    store.add("human:ann", PAIRS[2], Answer("B"))
    store.close()
    assert len(read_back(out)) == 3
    # A whole last record without its newline (an editor's save) is kept.
    out.write_bytes(out.read_bytes().rstrip(b"\n"))
    AnswerStore(out).close()
    assert len(read_back(out)) == 3 and out.read_bytes().endswith(b"}\n")
    out.write_bytes(out.read_bytes() + b"not json\n" + whole)
    with pytest.raises(BiglmError, match=r"prefs.jsonl:4: not valid JSON"):
        AnswerStore(out)


def test_sampled_pairs_are_cached_and_the_same_after_a_restart(tmp_path):
    prompts = [f"prompt {i}" for i in range(7)]
    calls: list[list[str]] = []

    def sampler(batch, fail_after=None):
        calls.append(list(batch))
        if fail_after is not None and len(calls) > fail_after:
            raise RuntimeError("killed")
        return [(f"{p} first {len(calls)}", f"{p} second {len(calls)}") for p in batch]

    cache, sig = tmp_path / "pairs.jsonl", {"ckpt": "x", "seed": 1}
    with pytest.raises(BiglmError, match="sampling pairs failed: RuntimeError: killed"):
        sampled_pool(prompts, lambda b: sampler(b, fail_after=2), ("m1", "m2"), cache, sig, batch=3,
                     background=False)
    assert len(cache.read_text().splitlines()) == 1 + 6  # the header and the two batches made before the crash
    calls.clear()
    pool = sampled_pool(prompts, sampler, ("m1", "m2"), cache, sig, batch=3, background=False)
    assert calls == [["prompt 6"]]  # only the missing prompt is sampled again
    assert [p.prompt for p in pool.pairs] == prompts and pool.total == 7 and not pool.sampling
    assert {p.model_a for p in pool.pairs} == {"m1", "m2"}  # the seeded coin put each model on both sides
    for p in pool.pairs:
        first, second = (p.response_a, p.response_b) if p.model_a == "m1" else (p.response_b, p.response_a)
        assert "first" in first and "second" in second
    calls.clear()
    again = sampled_pool(prompts, sampler, ("m1", "m2"), cache, sig, batch=3, background=True)
    again.finished.wait(10)
    assert calls == [] and [p.to_dict() for p in again.pairs] == [p.to_dict() for p in pool.pairs]
    with pytest.raises(BiglmError, match="sampled with other checkpoints or settings"):
        sampled_pool(prompts, sampler, ("m1", "m2"), cache, {"ckpt": "y", "seed": 1}, background=False)
    with pytest.raises(BiglmError, match=r"pairs.jsonl:3: this cached pair's prompt is not prompt 1"):
        sampled_pool(["prompt 0", "changed"], sampler, ("m1", "m2"), cache, sig, background=False)


def test_one_checkpoint_sampled_twice_through_the_page_api(tmp_path):
    from biglm.chat import ChatModel
    from test_chat import chat_checkpoint

    chat = ChatModel.load(chat_checkpoint(tmp_path / "ckpt"))
    settings = [chat.settings.updated(temperature=1.0, seed=s, max_new_tokens=5, length="fixed") for s in (1, 2)]
    prompts = ["reverse this a b c", "caps this a b", [{"role": "user", "content": "find it k1"}]]
    pool = sampled_pool(prompts, chat_sampler([chat], settings), ("m[seed=1]", "m[seed=2]"), tmp_path / "c.jsonl",
                        {"s": 1}, batch=2, background=True)
    store = AnswerStore(tmp_path / "prefs.jsonl")
    with served(annotation_app(Annotation(store, pool))) as server:
        pool.finished.wait(60)
        assert pool.error is None and len(pool.pairs) == 3
        ann = Annotator(server.url, "ann")
        state = ann.state()
        assert state["total"] == 3 and state["done"] == 0 and not state["sampling"]
        assert "model_a" not in state["pair"]  # the page stays blind to the models
        first = chat.replies([[{"role": "user", "content": p}] for p in prompts[:2]], settings[0])  # batch 1
        second = chat.replies([[{"role": "user", "content": p}] for p in prompts[:2]], settings[1])
        for pair, a, b in zip(pool.pairs, first, second):  # each seed's reply, on the side the coin chose
            assert {pair.response_a, pair.response_b} == {a.text, b.text}
            assert (pair.response_a, pair.model_a) in ((a.text, "m[seed=1]"), (b.text, "m[seed=2]"))
        for _ in range(3):
            r = ann.answer(ann.state()["pair"]["id"], "both_good", acceptable_a="acceptable",
                           acceptable_b="acceptable")
            assert r.status_code == 200
        assert r.json()["done"] == 3 and r.json()["pair"] is None
        assert requests.get(f"{server.url}/v1/models", timeout=30).status_code == 404  # no model API here
    store.close()
    assert [p.prompt for p in read_back(tmp_path / "prefs.jsonl")] == prompts


@pytest.mark.parametrize("text, message", [
    ('{"prompt": "p", "response_a": "x"}\n', r"pairs.jsonl:1: field 'response_b' missing"),
    ('{"prompt": "p", "response_a": "x", "response_b": "y"}\n{"prompt": "p", "response_a": "", "response_b": "y"}\n',
     r"pairs.jsonl:2: field 'response_a' must be a non-empty string"),
    ('{"response_a": "x", "response_b": "y"}\n', r"pairs.jsonl:1: missing field 'prompt'"),
    ('{"prompt": "p", "response_a": "x", "response_b": "y"}\n{oops\n', r"pairs.jsonl:2: not valid JSON"),
])
def test_bad_pairs_files_are_one_line_errors(tmp_path, text, message):
    (tmp_path / "pairs.jsonl").write_text(text)
    with pytest.raises(BiglmError, match=message):
        read_pairs(tmp_path / "pairs.jsonl")


def test_prompts_files_and_their_bad_lines(tmp_path):
    (tmp_path / "p.txt").write_text("first\n\n second \n")
    assert read_prompts(tmp_path / "p.txt") == ["first", "second"]
    (tmp_path / "p.jsonl").write_text(json.dumps({"prompt": "a"}) + "\n" + json.dumps(
        {"instruction": "sum", "input": "1 2"}) + "\n" + json.dumps({"messages": [{"role": "user", "content": "hi"}]}))
    assert read_prompts(tmp_path / "p.jsonl") == ["a", "sum\n\n1 2", [{"role": "user", "content": "hi"}]]
    for line, message in ((json.dumps({"text": "a"}), r"p.jsonl:2: expected a 'prompt', 'instruction' or 'messages'"),
                          ("[1]", r"p.jsonl:2: expected a JSON object"),
                          (json.dumps({"messages": [{"role": "user", "content": "a"}, {"role": "assistant",
                                                                                       "content": "b"}]}),
                           r"p.jsonl:2: the last message is 'assistant'")):
        (tmp_path / "p.jsonl").write_text(json.dumps({"prompt": "a"}) + "\n" + line + "\n")
        with pytest.raises(BiglmError, match=message):
            read_prompts(tmp_path / "p.jsonl")


def test_an_unknown_choice_label_in_an_answers_file_is_refused(tmp_path):
    out = tmp_path / "prefs.jsonl"
    out.write_text(json.dumps({**PAIRS[0].to_dict(), "choice": "C"}) + "\n")
    with pytest.raises(BiglmError, match=r"prefs.jsonl:1: field 'choice'='C': expected one of A, B, both_good"):
        read_back(out)
    with pytest.raises(BiglmError, match=r"prefs.jsonl:1: field 'choice'='C': expected one of A, B, both_good"):
        AnswerStore(out)  # the page refuses to append to it
    out.write_text(json.dumps({"prompt": "p", "response_a": "x", "choice": "A"}) + "\n")
    with pytest.raises(BiglmError, match=r"prefs.jsonl:1: not an answer in biglm's preference format"):
        AnswerStore(out)


def test_the_cli_refuses_bad_arguments(tmp_path, capsys):
    pairs = write_pairs(tmp_path / "pairs.jsonl")
    assert main(["annotate", "--out", str(tmp_path / "o.jsonl")]) == 2
    assert "give either --pairs FILE or --prompts FILE" in capsys.readouterr().err
    assert main(["annotate", "--out", str(tmp_path / "o.jsonl"), "--pairs", str(pairs), "--ckpt", "x"]) == 2
    assert "--ckpt/--ckpt-b go with --prompts" in capsys.readouterr().err
    assert main(["annotate", "--out", str(tmp_path / "o.jsonl"), "--pairs", str(pairs), "--annotator", "a b"]) == 2
    assert "annotator: give a name" in capsys.readouterr().err


# ---- the page in a real browser, with the server killed mid-session ----------------------------------------

def start_annotate(pairs: Path, out: Path, port: int) -> tuple[subprocess.Popen, str]:
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[2] / "src")}
    proc = subprocess.Popen([sys.executable, "-m", "biglm.cli", "annotate", "--pairs", str(pairs), "--out", str(out),
                             "--port", str(port)], stderr=subprocess.PIPE, text=True, env=env)
    line = proc.stderr.readline()
    while line.startswith("note:"):
        line = proc.stderr.readline()
    match = re.search(r" at (http://\S+?)/", line)
    assert match, line
    return proc, match.group(1)


def test_the_page_in_a_real_browser_survives_a_killed_server(tmp_path):
    page = browser()  # or a skip naming what is missing
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait

    pairs, out, port = write_pairs(tmp_path / "pairs.jsonl"), tmp_path / "prefs.jsonl", free_port()
    proc, url = start_annotate(pairs, out, port)
    try:
        wait = WebDriverWait(page, 30)
        progress = lambda n: wait.until(lambda p: p.find_element(By.ID, "progress").text == f"{n} of 5 done")
        showing = lambda i: wait.until(lambda p: p.find_element(By.ID, "prompt").text == PAIRS[i].prompt)
        click = lambda *ids: [page.find_element(By.ID, i).click() for i in ids]
        keys = lambda text: page.find_element(By.TAG_NAME, "body").send_keys(text)

        page.get(url + "/?annotator=ann")
        showing(0)
        progress(0)
        assert "Keyboard:" in page.find_element(By.ID, "keys").text  # the shortcuts are documented on the page
        assert page.find_element(By.ID, "send").get_attribute("disabled")  # three labels first
        click("acc_a", "unacc_b", "choice_A", "send")  # pair 0 with the buttons
        progress(1)
        showing(1)
        keys("13b" + Keys.ENTER)  # pair 1 with the keyboard
        progress(2)
        showing(2)
        keys("24n" + Keys.ENTER)
        progress(3)
        keys("u")  # undo: pair 2 comes back with its labels
        progress(2)
        showing(2)
        assert "on" in page.find_element(By.ID, "unacc_a").get_attribute("class")
        keys("31g")  # change B to acceptable, A to acceptable, helpfulness both good
        keys(Keys.ENTER)
        progress(3)
        showing(3)
        click("acc_a")  # half-way through pair 3 ...
        proc.send_signal(signal.SIGKILL)  # ... the server dies
        proc.wait(30)
        assert [p.choice for p in read_back(out)] == ["A", "B", "both_good"]  # everything sent is on disk

        proc, url2 = start_annotate(pairs, out, port)  # restarted on the same address
        assert url2 == url
        keys("4a" + Keys.ENTER)  # the open tab goes on with pair 3
        progress(4)
        page.get(url + "/?annotator=ann")  # a tab closed and opened again starts at pair 4
        showing(4)
        progress(4)
        keys("2" + "4" + "n")
        keys(Keys.CONTROL + "z")  # Ctrl+Z undoes pair 3's answer (pair 4 not sent yet)
        progress(3)
        showing(3)
        keys("14b" + Keys.ENTER)
        progress(4)
        keys("23a" + Keys.ENTER)
        progress(5)
        wait.until(lambda p: "all 5 pairs are done" in p.find_element(By.ID, "status").text)
        token = page.execute_script("return localStorage.getItem('biglm-annotator-token')")
        again = Annotator(url, "ann", token).answer(PAIRS[0].key, "B")  # a late duplicate is refused
        assert again.status_code == 409 and "already answered" in again.json()["error"]["message"]
    finally:
        page.quit()
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
    saved = read_back(out)
    assert [p.prompt for p in saved] == [p.prompt for p in PAIRS]  # every pair exactly once, in order
    assert [(p.choice, p.acceptable_y, p.acceptable_y_prime) for p in saved] == [
        ("A", "acceptable", "unacceptable"), ("B", "acceptable", "acceptable"),
        ("both_good", "acceptable", "acceptable"), ("B", "acceptable", "unacceptable"),
        ("A", "unacceptable", "acceptable")]
    assert {p.annotator for p in saved} == {"human:ann"} and {p.model_y for p in saved} == {"m1"}
    assert not list(tmp_path.glob("*.torn"))


def test_the_page_shows_sampling_progress_and_waits_for_pairs(tmp_path):
    page = browser()
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    release = threading.Event()

    def slow(batch):
        release.wait(30)
        return [(f"{p} one", f"{p} two") for p in batch]

    pool = sampled_pool(["p0", "p1"], slow, ("m1", "m2"), tmp_path / "c.jsonl", {}, batch=1, shuffle=False)
    store = AnswerStore(tmp_path / "prefs.jsonl")
    server = served(annotation_app(Annotation(store, pool)))
    try:
        url = server.__enter__().url
        wait = WebDriverWait(page, 30)
        page.get(url + "/?annotator=ann")
        wait.until(lambda p: "sampling pairs: 0 of 2 ready" in p.find_element(By.ID, "sampling").text)
        assert "waiting for the next pair" in page.find_element(By.ID, "status").text
        release.set()  # the page picks the pairs up as they come
        wait.until(lambda p: p.find_element(By.ID, "prompt").text == "p0")
        wait.until(lambda p: p.find_element(By.ID, "sampling").text == "")
        assert page.find_element(By.ID, "response_a").text == "p0 one"
    finally:
        release.set()
        page.quit()
        server.__exit__(None, None, None)
        store.close()


def test_a_failed_write_takes_back_its_part_and_the_page_gets_a_500(tmp_path, monkeypatch):
    store = AnswerStore(tmp_path / "prefs.jsonl")
    real = os.write

    def half_then_full(fd, data):  # half the line goes in, then the disk is full
        real(fd, bytes(data[:len(data) // 2]))
        raise OSError(28, "No space left on device")

    with served(annotation_app(Annotation(store, PairPool(PAIRS)))) as server:
        ann = Annotator(server.url, "ann")
        assert ann.answer(PAIRS[0].key, "A").status_code == 200
        monkeypatch.setattr(os, "write", half_then_full)
        r = ann.answer(PAIRS[1].key, "B")
        assert r.status_code == 500 and "No space left" in r.json()["error"]["message"]
        monkeypatch.setattr(os, "write", real)
        r = ann.answer(PAIRS[1].key, "B")
        assert r.status_code == 200 and r.json()["done"] == 2  # the retry is saved, once
    store.close()
    assert [p.choice for p in read_back(tmp_path / "prefs.jsonl")] == ["A", "B"]
