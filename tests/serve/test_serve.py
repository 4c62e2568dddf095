"""``biglm serve``: the OpenAI-compatible API (plain HTTP, ``curl``, the ``openai`` client, lm-eval), streaming
equal to the non-streamed reply, bad requests, a bounded queue, waiting requests decoded together, clients that
go away mid-stream, the command, and the live page in a real headless browser (Debian's chromium through
selenium)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests

from biglm.chat import ChatModel, Reply, ReplyUpdate
from biglm.serve.app import create_app
from biglm.serve.scheduler import STEPPERS, RowEvent
from serving import USER, browser, connect, head, served, sse
from test_chat import chat_checkpoint


@pytest.fixture(scope="module")
def chat(tmp_path_factory):
    return ChatModel.load(chat_checkpoint(tmp_path_factory.mktemp("serve") / "ckpt"))


@pytest.fixture
def server(chat):
    with served(create_app(chat, queue_size=4, max_batch=8)) as srv:
        yield srv


def test_chat_completion_stream_equals_non_stream_for_the_same_seed(server):
    body = {"model": "biglm", "messages": USER, "temperature": 0.8, "seed": 7, "max_tokens": 6, "steps": 4,
            "length": "fixed"}
    plain = requests.post(f"{server.url}/v1/chat/completions", json=body, timeout=60).json()
    assert plain["object"] == "chat.completion" and plain["choices"][0]["message"]["role"] == "assistant"
    assert plain["usage"]["completion_tokens"] <= 6
    events = sse(requests.post(f"{server.url}/v1/chat/completions", json={**body, "stream": True}, stream=True,
                               timeout=60))
    passes = [e["biglm"] for e in events if "biglm" in e]
    assert [p["index"] for p in passes] == [0, 1, 2, 3]  # each Mask-Predict pass, as it happened
    assert all(masked for _, masked in passes[0]["segments"]) and len(passes[0]["segments"]) == 6
    streamed = "".join(e["choices"][0]["delta"].get("content", "") for e in events)
    assert streamed == plain["choices"][0]["message"]["content"]
    assert events[-1]["choices"][0]["finish_reason"] in ("stop", "length")
    other_seed = requests.post(f"{server.url}/v1/chat/completions", json={**body, "seed": 8}, timeout=60).json()
    assert "choices" in other_seed  # another seed is a valid request too (its text may differ)


def test_autoregressive_models_stream_their_tokens(tmp_path):
    causal = ChatModel.load(chat_checkpoint(tmp_path / "causal", family="causal"))
    with served(create_app(causal)) as srv:
        for path, body in (("/v1/chat/completions", {"messages": USER}), ("/v1/completions", {"prompt": "a b c"})):
            body = {**body, "max_tokens": 6, "temperature": 0.8, "seed": 3}
            plain = requests.post(srv.url + path, json=body, timeout=60).json()["choices"][0]
            events = sse(requests.post(srv.url + path, json={**body, "stream": True}, stream=True, timeout=60))
            pieces = [e["choices"][0]["delta"].get("content", "") if "delta" in e["choices"][0]
                      else e["choices"][0]["text"] for e in events]
            assert "biglm" not in events[1]  # token deltas, no refinement passes
            assert "".join(pieces) == plain.get("message", {}).get("content", plain.get("text"))
            assert sum(bool(p) for p in pieces) >= 2 or len(plain.get("text") or plain["message"]["content"]) < 2


def test_completions_stream_equals_non_stream(server):
    body = {"prompt": "a b c", "max_tokens": 5, "steps": 3, "length": "fixed"}
    plain = requests.post(f"{server.url}/v1/completions", json=body, timeout=60).json()
    assert plain["object"] == "text_completion"
    events = sse(requests.post(f"{server.url}/v1/completions", json={**body, "stream": True}, stream=True,
                               timeout=60))
    assert "".join(e["choices"][0]["text"] for e in events) == plain["choices"][0]["text"]


def test_openai_client_talks_to_the_server(server):
    import openai

    client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="none")
    out = client.chat.completions.create(model="biglm", messages=USER, max_tokens=5, seed=1)
    stream = client.chat.completions.create(model="biglm", messages=USER, max_tokens=5, seed=1, stream=True,
                                            stream_options={"include_usage": True})
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == out.choices[0].message.content
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == out.usage.completion_tokens
    parts = client.chat.completions.create(model="biglm", max_tokens=5, seed=1, messages=[
        {"role": "user", "content": [{"type": "text", "text": "reverse this"}, {"type": "text", "text": "a b c"}]}])
    joined = client.chat.completions.create(model="biglm", max_tokens=5, seed=1, messages=[
        {"role": "user", "content": "reverse this\na b c"}])
    assert parts.choices[0].message.content == joined.choices[0].message.content  # list-of-parts content works
    again = client.chat.completions.create(model="biglm", max_completion_tokens=5, seed=1,
                                           messages=[*USER, out.choices[0].message, *USER])  # a reply sent back
    assert again.choices[0].message.content is not None
    assert [m.id for m in client.models.list().data] == ["biglm"]
    with pytest.raises(openai.NotFoundError, match="not served here"):
        client.chat.completions.create(model="gpt-4o", messages=USER)


def test_curl_talks_to_the_server(server):
    curl = shutil.which("curl")
    if curl is None:
        pytest.skip("curl is not installed")
    body = json.dumps({"messages": USER, "max_tokens": 4, "seed": 1})
    out = subprocess.run([curl, "-sS", f"{server.url}/v1/chat/completions", "-H", "Content-Type: application/json",
                          "-d", body], capture_output=True, text=True, timeout=60, check=True).stdout
    direct = requests.post(f"{server.url}/v1/chat/completions", data=body, timeout=60,
                           headers={"Content-Type": "application/json"}).json()
    assert json.loads(out)["choices"] == direct["choices"]
    stream = json.dumps({**json.loads(body), "stream": True})
    streamed = subprocess.run([curl, "-sSN", f"{server.url}/v1/chat/completions", "-H",
                               "Content-Type: application/json", "-d", stream],
                              capture_output=True, text=True, timeout=60, check=True).stdout
    assert streamed.rstrip().endswith("data: [DONE]")


def test_stop_strings_cut_the_reply_streamed_or_not(server):
    body = {"messages": USER, "max_tokens": 6, "steps": 3, "length": "fixed"}
    full = requests.post(f"{server.url}/v1/chat/completions", json=body, timeout=60).json()
    text = full["choices"][0]["message"]["content"]
    assert len(text) > 1
    stop = text[1:3].strip() or text[1]
    cut = requests.post(f"{server.url}/v1/chat/completions", json={**body, "stop": [stop]}, timeout=60).json()
    assert cut["choices"][0]["message"]["content"] == text[:text.index(stop)]
    assert cut["choices"][0]["finish_reason"] == "stop"
    events = sse(requests.post(f"{server.url}/v1/chat/completions", json={**body, "stop": stop, "stream": True},
                               stream=True, timeout=60))
    assert "".join(e["choices"][0]["delta"].get("content", "") for e in events) == text[:text.index(stop)]
    bad = requests.post(f"{server.url}/v1/chat/completions", json={**body, "stop": [1]}, timeout=60)
    assert bad.status_code == 400 and "'stop' must be" in bad.json()["error"]["message"]


def test_lm_eval_local_chat_completions_talks_to_the_server(server, tmp_path):
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    docs = [{"question": "reverse this a b c", "answer": "c b a"}, {"question": "caps this a b", "answer": "A B"}]
    (tmp_path / "docs.jsonl").write_text("".join(json.dumps(d) + "\n" for d in docs))
    (tmp_path / "chat_gen.yaml").write_text(
        "task: biglm_chat_gen\ndataset_path: json\ndataset_kwargs:\n  data_files:\n"
        f"    test: {tmp_path / 'docs.jsonl'}\ntest_split: test\noutput_type: generate_until\n"
        'doc_to_text: "{{question}}"\ndoc_to_target: "{{answer}}"\ngeneration_kwargs:\n'
        '  until: ["\\n"]\n  max_gen_toks: 6\nmetric_list:\n  - metric: exact_match\n')
    args = f"base_url={server.url}/v1/chat/completions,model=biglm,tokenizer_backend=None,tokenized_requests=False"
    result = simple_evaluate(model="local-chat-completions", model_args=args, tasks=["biglm_chat_gen"],
                             task_manager=TaskManager(include_path=[str(tmp_path)], include_defaults=False),
                             apply_chat_template=True, log_samples=True)
    answers = [s["resps"][0][0] for s in result["samples"]["biglm_chat_gen"]]
    direct = [requests.post(f"{server.url}/v1/chat/completions", timeout=60, json={
        "messages": [{"role": "user", "content": d["question"]}], "max_tokens": 6, "temperature": 0,
        "stop": ["\n"]}).json()["choices"][0]["message"]["content"] for d in docs]
    assert answers == direct  # lm-eval's client got the server's replies


@pytest.mark.parametrize("path, data, status, message", [
    ("/v1/chat/completions", b"{not json", 400, "not valid JSON"),
    ("/v1/chat/completions", b"[1, 2]", 400, "must be a JSON object"),
    ("/v1/chat/completions", json.dumps({"messages": [{"role": "robot", "content": "hi"}]}).encode(), 400,
     "'messages[0].role' must be 'system', 'developer', 'user' or 'assistant' (got 'robot')"),
    ("/v1/chat/completions", json.dumps({"messages": [{"role": "user", "content": 5}]}).encode(), 400,
     "'messages[0].content' must be a string or a list of content parts"),
    ("/v1/chat/completions", json.dumps({"messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "http://x/a.png"}}]}]}).encode(), 400,
     "content part 0 has type 'image_url'; this model reads text parts only"),
    ("/v1/chat/completions", json.dumps({"messages": USER, "temprature": 0.5}).encode(), 400,
     "'temprature' is not a field of this request"),
    ("/v1/chat/completions", json.dumps({"messages": USER, "logprobs": True}).encode(), 400,
     "'logprobs' is not supported"),
    ("/v1/chat/completions", json.dumps({"messages": [{"role": "user", "content": " "}]}).encode(), 400,
     "empty content"),
    ("/v1/chat/completions", json.dumps({"messages": USER, "max_tokens": "many"}).encode(), 400, "'max_tokens' must"),
    ("/v1/chat/completions", json.dumps({"messages": USER, "n": 2}).encode(), 400, "'n' must be 1"),
    ("/v1/completions", json.dumps({"prompt": ""}).encode(), 400, "'prompt' must be a non-empty string"),
    ("/v1/embeddings", b"{}", 404, "no route"),
    ("/v1/models", b"{}", 405, "Method Not Allowed"),
])
def test_bad_requests_get_4xx_and_the_server_stays_up(server, path, data, status, message):
    r = requests.post(server.url + path, data=data, headers={"Content-Type": "application/json"}, timeout=30)
    assert r.status_code == status and message in r.json()["error"]["message"]
    assert requests.get(f"{server.url}/v1/models", timeout=30).status_code == 200


def test_a_client_that_leaves_mid_stream_does_not_take_the_server_down(server, chat):
    body = json.dumps({"messages": USER, "stream": True, "max_tokens": 8, "steps": 8, "length": "fixed"}).encode()
    for _ in range(3):
        s = connect(server)
        s.sendall(head("/v1/chat/completions", body))
        assert s.recv(64).startswith(b"HTTP/1.1 200")  # the stream has begun
        s.close()
    r = requests.post(f"{server.url}/v1/chat/completions", json={"messages": USER, "max_tokens": 4}, timeout=60)
    assert r.status_code == 200 and r.json()["choices"][0]["message"]["content"] is not None


def blocked_model(chat, monkeypatch, after: int = 0):
    """Make ``chat``'s model wait in its forward passes (all but the first ``after``) until the returned event is
    set; the row counts of its passes are recorded in the returned list."""
    release, rows = threading.Event(), []
    forward = chat.model.forward

    def slow(input_ids, *args, **kwargs):
        rows.append(int(input_ids.shape[0]))
        if len(rows) > after:
            release.wait(30)
        return forward(input_ids, *args, **kwargs)

    monkeypatch.setattr(chat.model, "forward", slow)
    return release, rows


def wait_for(condition, what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


class GatedStepper:
    """A stand-in decoder: one token per step for every row (five to a reply); from its second step on, each step
    waits for ``gate``."""

    gate = threading.Event()
    steps = 0

    @staticmethod
    def batch_key(settings, stream, key):
        return 0

    def __init__(self, chat) -> None:
        self.rows: dict[int, int] = {}

    @property
    def active(self) -> int:
        return len(self.rows)

    def admit(self, rows) -> None:
        self.rows.update((r.key, 0) for r in rows)

    def drop(self, key: int) -> None:
        self.rows.pop(key, None)

    def keys(self) -> list[int]:
        return list(self.rows)

    def step(self) -> list:
        GatedStepper.steps += 1
        if GatedStepper.steps > 1:
            GatedStepper.gate.wait(30)
        events = []
        for key in list(self.rows):
            n = self.rows[key] = self.rows[key] + 1
            events.append(RowEvent(key, update=ReplyUpdate("token", n, "a" * n)))
            if n == 5:
                events.append(RowEvent(key, reply=Reply("a" * 5, [8] * 5, 3, 5, 0, True)))
                del self.rows[key]
        return events


@pytest.mark.parametrize("stream", [True, False])
def test_a_client_that_leaves_mid_reply_cancels_its_request(chat, monkeypatch, stream):
    monkeypatch.setitem(STEPPERS, chat.decoder, GatedStepper)
    GatedStepper.gate.clear()
    GatedStepper.steps = 0
    app = create_app(chat)
    stats = app.state.scheduler.stats
    with served(app) as server:
        s = connect(server)
        s.sendall(head("/v1/chat/completions", json.dumps({"messages": USER, "stream": stream}).encode()))
        seen = b""
        while stream and b'"content": "a"' not in seen:  # the stream has begun: the first token arrived
            seen += s.recv(4096)
        wait_for(lambda: GatedStepper.steps == 2, "the decoder to wait in its second step")
        s.close()  # the client leaves while the decoder waits in its second step
        handles = list(app.state.scheduler.handles.values())
        wait_for(lambda: all(h.cancelled for h in handles), "the server to cancel the request")
        GatedStepper.gate.set()
        wait_for(lambda: stats.cancelled == 1, "the request to be cancelled")
        assert stats.finished == 0 and GatedStepper.steps == 2  # it left the batch at the next step
        whole = requests.post(f"{server.url}/v1/chat/completions", json={"messages": USER}, timeout=60)
        assert whole.json()["choices"][0]["message"]["content"] == "aaaaa"  # the stand-in did decode


def test_the_queue_is_bounded_and_waiting_requests_are_decoded_together(chat, monkeypatch):
    app = create_app(chat, queue_size=3, max_batch=8)
    scheduler = app.state.scheduler
    with served(app) as server:
        release, rows = blocked_model(chat, monkeypatch)
        post = lambda m, n=4: requests.post(f"{server.url}/v1/chat/completions",
                                            json={"messages": m, "max_tokens": n, "length": "fixed"}, timeout=60)
        prompts = [[{"role": "user", "content": f"caps this {c}"}] for c in "abcd"]
        try:
            with ThreadPoolExecutor(8) as pool:
                first = pool.submit(post, prompts[0])
                wait_for(lambda: rows, "the worker to hold the first request")
                waiting = [pool.submit(post, p) for p in prompts[1:3]] + [pool.submit(post, prompts[3], 3)]
                wait_for(lambda: scheduler.queue_depth == 3, "three waiting requests")
                refused = post(prompts[0])  # the queue holds 3: a fourth waiting request is refused at once
                assert refused.status_code == 503 and "busy" in refused.json()["error"]["message"]
                assert int(refused.headers["Retry-After"]) >= 1
                release.set()
                answers = [f.result().json()["choices"][0]["message"]["content"] for f in [first, *waiting]]
        finally:
            release.set()
        assert rows[0] == 1 and max(rows[1:]) >= 2  # requests that waited shared a forward pass
        monkeypatch.undo()
        alone = [post(p, n).json()["choices"][0]["message"]["content"] for p, n in zip(prompts, (4, 4, 4, 3))]
        assert answers == alone  # batching changes nothing in the replies (greedy)


@pytest.mark.parametrize("stop", [signal.SIGINT, signal.SIGTERM])
def test_biglm_serve_command_serves_until_interrupted(tmp_path, stop):
    ckpt = chat_checkpoint(tmp_path / "ckpt")
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[2] / "src")}
    # Started as a background job is: SIGINT ignored on entry. Ctrl-C (SIGINT) and SIGTERM must still stop it.
    proc = subprocess.Popen([sys.executable, "-m", "biglm.cli", "serve", "--ckpt", str(ckpt), "--port", "0"],
                            stderr=subprocess.PIPE, text=True, env=env,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))
    try:
        line = proc.stderr.readline()
        while line and not line.startswith("biglm serve:"):  # notes about the checkpoint come first
            line = proc.stderr.readline()
        url = line.split(" at ")[1].split("/ ")[0]  # "biglm serve: masked model at http://...:PORT/ (API: ...)"
        r = requests.post(f"{url}/v1/chat/completions", json={"messages": USER, "max_tokens": 4}, timeout=60)
        assert r.status_code == 200 and r.json()["object"] == "chat.completion"
        assert "<title>biglm</title>" in requests.get(url + "/", timeout=30).text
    finally:
        proc.send_signal(stop)
        try:
            code = proc.wait(timeout=30)
        finally:
            proc.kill()
    assert code == 0


def test_the_page_shows_the_refinement_live_in_a_real_browser(server):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    page = browser()
    try:
        page.get(server.url + "/")
        WebDriverWait(page, 30).until(lambda p: "masked" in p.find_element(By.ID, "family").text)
        page.find_element(By.ID, "steps").send_keys("5")
        page.find_element(By.ID, "max_tokens").send_keys("6")
        page.find_element(By.ID, "prompt").send_keys("reverse this a b c")
        page.find_element(By.ID, "send").click()
        WebDriverWait(page, 60).until(lambda p: p.find_elements(By.CSS_SELECTOR, "#log .assistant"))
        passes = page.find_elements(By.CSS_SELECTOR, "#passes .pass")
        assert len(passes) == 5  # every refinement pass arrived and was drawn
        masked_first = passes[0].find_elements(By.CSS_SELECTOR, ".mask")
        spans = passes[0].find_elements(By.CSS_SELECTOR, "span")
        assert masked_first and len(masked_first) == len(spans)  # pass 0: every position masked, visibly marked
        assert all(m.text == "▢" for m in masked_first)
        assert len(passes[-1].find_elements(By.CSS_SELECTOR, ".mask")) < len(masked_first)  # and then refined
        reply = page.find_element(By.CSS_SELECTOR, "#log .assistant").text
        expected = requests.post(f"{server.url}/v1/chat/completions", timeout=60, json={
            "messages": USER, "steps": 5, "max_tokens": 6, "temperature": 0}).json()
        assert reply == expected["choices"][0]["message"]["content"]  # the page shows the API's reply
        assert "done" in page.find_element(By.ID, "status").text
    finally:
        page.quit()
