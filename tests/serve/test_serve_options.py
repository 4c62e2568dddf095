"""The parallel strategies' options at ``biglm serve``: a request field per ``ParallelOptions`` field (typed and
described from it), each reaching the engine's stepper (the forward passes change), a bad value answered 400 with
one line naming it, models that decode token by token refusing them, and ``biglm serve``'s flags setting the
server's defaults."""

from __future__ import annotations

import json

import pytest
import requests

from biglm.chat import ChatModel
from biglm.cli import build_parser
from biglm.generate.options import ParallelOptions, field_help
from biglm.serve.app import create_app
from biglm.serve.validation import CHAT_PATH, COMPLETIONS_PATH, HTTPError, parse_request
from serving import USER, served, sse
from test_chat import chat_checkpoint
from test_parallel_options import ALL, spy_engine

BLOCKS = {"messages": USER, "strategy": "blocks", "steps": 2, "max_tokens": 8, "length": "fixed"}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    chat = ChatModel.load(chat_checkpoint(tmp_path_factory.mktemp("serve-options") / "ckpt"))
    with served(create_app(chat, queue_size=4, max_batch=8)) as srv:
        yield srv


def passes(server, **fields) -> int:
    r = requests.post(f"{server.url}/v1/chat/completions", json={**BLOCKS, **fields}, timeout=60)
    assert r.status_code == 200, r.text
    return r.json()["biglm"]["forward_passes"]


def test_block_size_and_threshold_reach_the_stepper(server):
    assert passes(server, block_size=8) == 3  # one block of 8: its 2 passes, and the prefix pass
    assert passes(server, block_size=2) == 5  # four blocks of 2: a pass each
    assert passes(server, strategy="threshold", steps=4, threshold=1.0) == 5  # never sure: 2 tokens a pass
    assert passes(server, strategy="threshold", steps=4, threshold=1e-9) == 2  # all in the first pass
    events = sse(requests.post(f"{server.url}/v1/chat/completions", json={**BLOCKS, "block_size": 2, "stream": True},
                               stream=True, timeout=60))
    assert [e["biglm"]["index"] for e in events if "biglm" in e] == [0, 1, 2, 3]  # streamed: the same passes


@pytest.mark.parametrize("options", ALL)
def test_every_option_reaches_the_engine(server, monkeypatch, options):
    calls = spy_engine(monkeypatch)
    assert passes(server, steps=4, **options) > 1
    r = requests.post(f"{server.url}/v1/completions", json={"prompt": "a b c", "max_tokens": 8, "length": "fixed",
                                                            "steps": 4, **options}, timeout=60)
    assert r.status_code == 200, r.text
    assert calls == [options, options]  # each request's DecodeJob (the chat, then the completion)


def test_the_commit_rule_reaches_the_stepper(server):
    assert passes(server, steps=8, block_size=4) == 9  # Mask-Predict in each block: 4 passes a block, and the prefix
    assert passes(server, steps=8, block_size=4, commit="threshold", threshold=1e-9) == 3  # a pass a block


def test_the_schema_has_every_field_with_its_doc(server):
    schema = requests.get(f"{server.url}/openapi.json", timeout=30).json()["components"]["schemas"]
    for request in ("ChatCompletionRequest", "CompletionRequest"):
        properties = schema[request]["properties"]
        for name in ParallelOptions.field_names():
            assert properties[name]["description"] == field_help(name), (request, name)


@pytest.mark.parametrize(("path", "fields", "message"), [
    (CHAT_PATH, {"block_size": 0}, "block_size=0: must be an integer > 0"),
    (CHAT_PATH, {"strategy": "threshold", "threshold": 1.5}, "threshold=1.5: must be in (0, 1]"),
    (CHAT_PATH, {"strategy": "mask-predict", "block_size": 4}, "strategy 'mask-predict' has no option 'block_size'"),
    (CHAT_PATH, {"block_size": "16"}, "'block_size' must be a valid integer (got '16')"),
    (CHAT_PATH, {"eos_exit": "yes"}, "'eos_exit' must be true or false (got 'yes')"),
    (COMPLETIONS_PATH, {"strategy": "threshold", "block_size": 4}, "strategy 'threshold' has no option 'block_size'"),
    (CHAT_PATH, {"commit": "guess"}, "unknown commit rule 'guess'"),
    (CHAT_PATH, {"strategy": "threshold", "cache": "dual"}, "cache='dual' caches blocks: it needs strategy 'blocks'"),
    (CHAT_PATH, {"cache": "blocks", "refresh": -1}, "refresh=-1: must be"),
    (CHAT_PATH, {"strategy": "mask-predict", "eos_exit": True}, "strategy 'mask-predict' has no option 'eos_exit'"),
])
def test_a_bad_value_is_a_400_naming_the_field(server, path, fields, message):
    body = {**BLOCKS, **fields}
    if path == COMPLETIONS_PATH:
        body = {"prompt": "a b c", **{k: v for k, v in body.items() if k != "messages"}}
    r = requests.post(server.url + path, json=body, timeout=30)
    line = r.json()["error"]["message"]
    assert r.status_code == 400 and line.startswith(message) and "\n" not in line, r.text
    assert passes(server, block_size=4) == 3  # the server is still up, and decodes


@pytest.mark.parametrize("family", ["causal", "glm"])
def test_token_by_token_models_refuse_them(tmp_path, family):
    encoding = "rope-2d" if family == "glm" else "rope"
    ar = ChatModel.load(chat_checkpoint(tmp_path / family, family=family, position_encoding=encoding))
    for path, body in ((CHAT_PATH, {"messages": USER}), (COMPLETIONS_PATH, {"prompt": "a b"})):
        with pytest.raises(HTTPError) as err:
            parse_request(ar, path, json.dumps({**body, "cache": "dual"}).encode())
        assert err.value.status == 400
        assert err.value.message == (f"cache='dual': an option of the masked models' parallel strategies; {family} "
                                     "models decode token by token (set it to none)")


def test_serve_flags_set_the_default_settings():
    args = build_parser(["serve"]).parse_args(["serve", "--ckpt", "x", "--strategy", "blocks", "--block-size", "4",
                                      "--commit", "threshold", "--eos-exit"])
    assert (args.strategy, ParallelOptions.of(args)) == ("blocks", ParallelOptions(4, "threshold", eos_exit=True))
