"""``biglm serve`` against a hostile or careless client: each finding of issue 25 (probes of the old hand-written
``http.server`` handler) as a test. Other sites' pages and DNS rebinding, the API key, bodies without a valid
length or too large, sockets that send nothing, one bad request among good ones, OpenAI's content parts, strict
types, a full queue under 50 clients (503 with Retry-After, never a reset), and clients that leave without
waiting for their reply (their requests are cancelled)."""

from __future__ import annotations

import json
import logging
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from biglm.chat import ChatModel
from biglm.serve.app import create_app
from biglm.serve.cli import network_of
from biglm.serve.limits import Limits
from biglm.serve.metrics import parse_text
from biglm.serve.security import API_KEY_ENV, Security, api_key_from, exposure_warning
from serving import USER, connect, head, read_all, served, status_of
from test_chat import chat_checkpoint
from test_serve import blocked_model, wait_for

CHAT = "/v1/chat/completions"
GOOD = {"messages": USER, "max_tokens": 4}


@pytest.fixture(scope="module")
def chat(tmp_path_factory):
    return ChatModel.load(chat_checkpoint(tmp_path_factory.mktemp("safety") / "ckpt"))


@pytest.fixture(scope="module")
def server(chat):
    with served(create_app(chat, queue_size=8)) as srv:
        yield srv


def post(server, body, headers=None, path=CHAT) -> requests.Response:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    return requests.post(server.url + path, data=data, timeout=60,
                         headers={"Content-Type": "application/json", **(headers or {})})


# ---- other sites' pages, DNS rebinding, the API key ----------------------------------------------------------

def test_a_cross_origin_text_plain_post_is_refused_and_generates_nothing(chat):
    app = create_app(chat)
    with served(app) as server:
        for headers in ({"Content-Type": "text/plain", "Origin": "http://evil.example"},  # a form or no-cors fetch
                        {"Content-Type": "application/json", "Origin": "http://evil.example"},
                        {"Content-Type": "application/json", "Origin": "null"}):  # a sandboxed frame, a file
            r = requests.post(server.url + CHAT, data=json.dumps(GOOD), headers=headers, timeout=30)
            assert r.status_code == 403 and "--allow-origin" in r.json()["error"]["message"]
        same_site_text = requests.post(server.url + CHAT, data=json.dumps(GOOD), timeout=30,
                                       headers={"Content-Type": "text/plain"})
        assert same_site_text.status_code == 415  # JSON only, whoever sends it
        assert app.state.scheduler.stats.submitted == 0  # nothing of it reached the model
        own = post(server, GOOD, {"Origin": server.url})  # the server's own page
        assert own.status_code == 200


def test_allowed_origins_get_cors_answers(chat):
    with served(create_app(chat, security=Security(allow_origins=["https://tools.example"]))) as server:
        pre = requests.options(server.url + CHAT, timeout=30, headers={
            "Origin": "https://tools.example", "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization, content-type"})
        assert pre.status_code == 200 and pre.headers["access-control-allow-origin"] == "https://tools.example"
        r = post(server, GOOD, {"Origin": "https://tools.example"})
        assert r.status_code == 200 and r.headers["access-control-allow-origin"] == "https://tools.example"
        assert post(server, GOOD, {"Origin": "https://other.example"}).status_code == 403


@pytest.mark.parametrize("host, status", [("evil.example", 400), ("evil.example:{port}", 400),
                                          ("127.0.0.1:{port}", 200), ("localhost:{port}", 200),
                                          ("[::1]:{port}", 200), ("10.1.2.3:{port}", 200)])
def test_a_dns_rebinding_host_is_refused(server, host, status):
    r = requests.get(server.url + "/v1/models", headers={"Host": host.format(port=server.port)}, timeout=30)
    assert r.status_code == status
    if status == 400:
        assert "--allow-host" in r.json()["error"]["message"]
        assert post(server, GOOD, {"Host": host.format(port=server.port)}).status_code == 400


def test_allow_host_admits_a_name(chat):
    with served(create_app(chat, security=Security(allow_hosts=["gpu-box.lab"]))) as server:
        assert requests.get(server.url + "/health", headers={"Host": "gpu-box.lab:80"}, timeout=30).status_code == 200
        assert requests.get(server.url + "/health", headers={"Host": "evil.example"}, timeout=30).status_code == 400


def test_the_api_key_is_required_on_the_api(chat, monkeypatch):
    import openai

    with served(create_app(chat, security=Security(api_key="s3cret-key"))) as server:
        missing = post(server, GOOD)
        assert missing.status_code == 401 and missing.headers["WWW-Authenticate"] == "Bearer"
        assert post(server, GOOD, {"Authorization": "Bearer wrong"}).status_code == 401
        assert post(server, GOOD, {"Authorization": "Basic s3cret-key"}).status_code == 401
        assert post(server, GOOD, {"Authorization": "Bearer s3cret-key"}).status_code == 200
        assert requests.get(server.url + "/metrics", timeout=30).status_code == 401
        assert requests.get(server.url + "/health", timeout=30).status_code == 200  # for load balancers
        assert requests.get(server.url + "/", timeout=30).status_code == 200  # the page asks for the key
        client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="s3cret-key")
        assert client.chat.completions.create(model="biglm", messages=USER, max_tokens=3).choices
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=f"{server.url}/v1", api_key="nope").models.list()
    monkeypatch.setenv(API_KEY_ENV, "from-env")
    assert api_key_from(None) == "from-env" and api_key_from("given") == "given"


def test_a_non_loopback_bind_without_a_key_is_said_loudly(capsys):
    import argparse

    from biglm.serve.cli import network_args

    p = argparse.ArgumentParser()
    network_args(p)
    for argv, loud in ((["--host", "0.0.0.0"], True), (["--host", "0.0.0.0", "--api-key", "k"], False),
                       (["--host", "127.0.0.1"], False), (["--host", "::1"], False), (["--host", "10.0.0.5"], True)):
        network_of(p.parse_args([*argv, "--quiet"]), "the model")
        err = capsys.readouterr().err
        assert ("WARNING: listening on" in err and "without an API key" in err) == loud, (argv, err)
    assert exposure_warning("localhost", None) is None


# ---- bodies without a valid length, too large, or never finished; sockets that send nothing ------------------

def test_content_length_minus_one_is_refused_at_once(server):
    s = connect(server)
    s.sendall(head(CHAT, b"x" * 10_000, length=-1))  # and the socket stays open, as a hostile client's would
    answer = read_all(s)  # the answer, and the server closes the connection
    assert status_of(answer) == 400
    s.close()


def test_an_oversized_body_is_refused_before_it_is_read(server):
    s = connect(server)
    s.sendall(head(CHAT, b"{" * 1000, length=200_000_000))  # 200 MB announced, 1 KB sent
    answer = read_all(s)
    assert status_of(answer) == 413 and b"larger than 1048576 bytes" in answer
    s.close()


def test_a_chunked_body_works_and_an_oversized_one_is_cut_off(server):
    body = json.dumps(GOOD).encode()
    s = connect(server, timeout=60)
    s.sendall(head(CHAT, extra="Transfer-Encoding: chunked\r\n").replace(b"Content-Length: 0\r\n", b"")
              + b"%x\r\n" % len(body) + body + b"\r\n0\r\n\r\n")
    assert status_of(s.recv(4096)) == 200
    s.close()
    s = connect(server)
    s.sendall(head(CHAT, extra="Transfer-Encoding: chunked\r\n").replace(b"Content-Length: 0\r\n", b""))
    sent, piece = 0, b"10000\r\n" + b" " * 0x10000 + b"\r\n"
    try:
        while sent < 64 << 20:  # 64 MiB offered; the server answers and closes after 1 MiB
            s.sendall(piece)
            sent += 0x10000
    except OSError:
        pass
    answer = read_all(s)
    assert sent < 64 << 20 and status_of(answer) == 413
    s.close()


def test_idle_and_slow_sockets_are_closed(chat):
    with served(create_app(chat, limits=Limits(head_timeout=0.5, body_timeout=0.5, keep_alive=0.5))) as server:
        silent = connect(server)  # connects and sends nothing
        assert read_all(silent) == b""
        slow = connect(server)  # a slow loris: a header line every 0.2 s, never the end of the head
        slow.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        closed = False
        for i in range(100):
            try:
                slow.sendall(f"X-Slow-{i}: 1\r\n".encode())
            except OSError:
                closed = True
                break
            time.sleep(0.2)
        assert closed or read_all(slow) == b""
        stalled = connect(server)  # a body that stops half-way
        stalled.sendall(head(CHAT, b'{"messages": ', length=100))
        answer = read_all(stalled)
        assert status_of(answer) == 408 and b"stalled" in answer
        kept = connect(server)  # keep-alive: an idle connection after a response is closed too
        kept.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        assert status_of(read_all(kept)) == 200  # the answer, then the server closes the idle connection
        assert requests.get(server.url + "/health", timeout=30).status_code == 200  # and the server is fine


def test_the_connection_cap_answers_503_not_a_reset(chat):
    with served(create_app(chat, limits=Limits(max_connections=4, head_timeout=30))) as server:
        idle = [connect(server) for _ in range(4)]
        time.sleep(0.2)
        r = requests.get(server.url + "/health", timeout=30)
        assert r.status_code == 503
        for s in idle:
            s.close()
        wait_for(lambda: requests.get(server.url + "/health", timeout=30).status_code == 200, "the cap to free")


# ---- one bad request among good ones; content parts; strict types --------------------------------------------

def test_a_lone_surrogate_fails_only_its_own_request(server, chat, monkeypatch):
    release, _ = blocked_model(chat, monkeypatch)  # so that all five wait together and would share a batch
    bad = b'{"messages": [{"role": "user", "content": "a \\udcff b"}], "max_tokens": 4}'
    with ThreadPoolExecutor(6) as pool:
        blocker = pool.submit(post, server, GOOD)
        time.sleep(0.2)
        answers = [pool.submit(post, server, b) for b in (GOOD, GOOD, bad, GOOD, GOOD)]
        time.sleep(0.5)
        release.set()
        codes = [a.result().status_code for a in answers]
        assert blocker.result().status_code == 200
    assert codes == [200, 200, 400, 200, 200]
    assert "unpaired surrogate" in answers[2].result().json()["error"]["message"]


def test_list_of_parts_content_is_text(server):
    parts = post(server, {"messages": [{"role": "user", "content": [{"type": "text", "text": "reverse this a b c"}]}],
                          "max_tokens": 4})
    plain = post(server, GOOD)
    assert parts.status_code == 200
    assert parts.json()["choices"][0]["message"] == plain.json()["choices"][0]["message"]


@pytest.mark.parametrize("field, value, message", [
    ("stream", "no", "'stream' must be true or false (got 'no')"),
    ("stream", 1, "'stream' must be true or false (got 1)"),
    ("max_tokens", 4.0, "'max_tokens' must be a valid integer (got 4.0)"),
    ("temperature", "0.5", "'temperature' must be a valid number"),
    ("temperature", 1e308, "temperature=1e+308: must be 0 (greedy) or from 0.001 to 1000"),
    ("seed", 2**70, "seed=1180591620717411303424: must be an integer from -2**63 to 2**64-1"),
    ("seed", True, "'seed' must be a valid integer (got True)"),
    ("top_p", 0, "top_p=0.0: must be in (0, 1]"),
    ("n", 2, "'n' must be 1 (got 2)"),
    ("stream_options", {"include_usage": True}, "'stream_options' goes with stream: true"),
])
def test_types_and_values_are_checked_strictly(server, field, value, message):
    r = post(server, {**GOOD, field: value})
    assert r.status_code == 400 and message in r.json()["error"]["message"], r.text
    assert "\n" not in r.json()["error"]["message"]


# ---- a full queue under many clients; clients that leave ---------------------------------------------------

def test_fifty_clients_get_200_or_503_with_retry_after_never_a_reset(chat):
    with served(create_app(chat, queue_size=4, max_batch=4)) as server:
        def client(_):
            try:
                r = requests.post(server.url + CHAT, timeout=120, json={
                    "messages": USER, "max_tokens": 8, "steps": 8, "length": "fixed"})
                return r.status_code, r.headers.get("Retry-After")
            except requests.ConnectionError as e:
                return f"connection error: {e}", None

        with ThreadPoolExecutor(50) as pool:
            outcomes = list(pool.map(client, range(50)))
    codes = [c for c, _ in outcomes]
    assert all(c == 200 or (c == 503 and ra and int(ra) >= 1) for c, ra in outcomes), outcomes
    assert 200 in codes


def test_abandoned_non_streamed_requests_are_cancelled(chat, monkeypatch):
    app = create_app(chat)
    stats = app.state.scheduler.stats
    with served(app) as server:
        release, rows = blocked_model(chat, monkeypatch)
        body = json.dumps({**GOOD, "length": "fixed"}).encode()  # one row per request in each forward pass
        first = connect(server)
        first.sendall(head(CHAT, body))
        wait_for(lambda: rows, "the worker to take the first request")
        left = [connect(server) for _ in range(3)]
        for s in left:
            s.sendall(head(CHAT, body))
        wait_for(lambda: stats.submitted == 4, "four submitted requests")
        for s in left:  # three clients give up without waiting for their replies
            s.close()
        gone = 'biglm_http_requests_total{route="/v1/chat/completions",status="499"}'
        wait_for(lambda: parse_text(app.state.metrics.render().decode()).get(gone) == 3, "three clients gone")
        release.set()
        assert status_of(first.recv(4096)) == 200
        first.close()
        wait_for(lambda: stats.cancelled == 3, "the three abandoned requests to be cancelled")
        assert rows == [1] * len(rows)  # nothing but the first request was decoded
        assert stats.finished == 1 and stats.failed == 0
        assert post(server, GOOD).status_code == 200  # and the next request is served at once


# ---- request ids, metrics, the schema ------------------------------------------------------------------------

def test_request_ids_are_in_the_log_and_the_answer(server, caplog):
    with caplog.at_level(logging.INFO, logger="biglm.serve"):
        given = post(server, GOOD, {"X-Request-Id": "trace-42"})
        made = post(server, {"messages": "nope"})
        assert given.headers["X-Request-Id"] == "trace-42"
        assert made.status_code == 400 and len(made.headers["X-Request-Id"]) == 16
        logged = lambda start: any(r.getMessage().startswith(start) for r in caplog.records if r.name == "biglm.serve")
        wait_for(lambda: logged("trace-42 POST /v1/chat/completions 200"), "the log line of the given id")
        wait_for(lambda: logged(made.headers["X-Request-Id"] + " POST /v1/chat/completions 400"), "a made id's line")
    weird = post(server, GOOD, {"X-Request-Id": "x" * 500})
    assert weird.headers["X-Request-Id"] != "x" * 500  # not echoed: a fresh one


def test_metrics_count_requests_tokens_and_the_queue(chat):
    with served(create_app(chat)) as server:
        for _ in range(3):
            assert post(server, GOOD).status_code == 200
        assert post(server, {"messages": []}).status_code == 400
        scrape = lambda: parse_text(requests.get(server.url + "/metrics", timeout=30).text)
        duration = 'biglm_http_request_duration_seconds_count{route="/v1/chat/completions"}'
        wait_for(lambda: scrape().get(duration) == 4, "the four requests to be counted")  # counted as they end
        m = scrape()
    assert m['biglm_http_requests_total{route="/v1/chat/completions",status="200"}'] == 3
    assert m['biglm_http_requests_total{route="/v1/chat/completions",status="400"}'] == 1
    assert m['biglm_requests_total{outcome="finished"}'] == 3 and m["biglm_queue_depth"] == 0
    assert m["biglm_generated_tokens_total"] >= 3 and m["biglm_reply_latency_seconds_count"] == 3
    assert "biglm_tokens_per_second" in m and "biglm_active_requests" in m
    assert m['biglm_http_requests_total{route="/metrics",status="200"}'] >= 1


def test_the_schema_and_docs_are_served(server):
    schema = requests.get(server.url + "/openapi.json", timeout=30).json()
    assert {"/v1/chat/completions", "/v1/completions", "/v1/models", "/health", "/metrics"} <= set(schema["paths"])
    request = schema["components"]["schemas"]["ChatCompletionRequest"]
    assert {"messages", "stream", "stream_options", "max_completion_tokens", "steps"} <= set(request["properties"])
    assert "<title>" in requests.get(server.url + "/docs", timeout=30).text
