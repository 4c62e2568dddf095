"""The API fuzzed from its own OpenAPI schema (schemathesis, bounded and derandomised): valid and invalid
requests to every operation; none may get a 5xx other than 503, and the server stays up."""

from __future__ import annotations

from collections import Counter

import pytest
import requests
import schemathesis
import schemathesis.specs.openapi.schemas

# CPython 3.11.7 can fail compiling a module while other threads compile, 'AST constructor recursion depth')
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode

from biglm.chat import ChatModel
from biglm.serve.app import create_app
from serving import served
from test_chat import chat_checkpoint

STATUSES: Counter[int] = Counter()


@pytest.fixture(scope="module")
def fuzzed(tmp_path_factory):
    chat = ChatModel.load(chat_checkpoint(tmp_path_factory.mktemp("fuzz") / "ckpt"))
    with served(create_app(chat, queue_size=8)) as server:
        yield server


def operations(server) -> list:
    """Every operation of the server's own schema (its /openapi.json)."""
    schema = schemathesis.openapi.from_url(f"{server.url}/openapi.json")
    return [result.ok() for result in schema.get_all_operations()]


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
def test_no_request_gets_a_server_error(fuzzed, mode):
    seen: Counter[int] = Counter()
    for operation in operations(fuzzed):
        if mode is GenerationMode.NEGATIVE and not (len(operation.body) or len(operation.query)):
            continue  # nothing to get wrong

        @settings(max_examples=30, deadline=None, derandomize=True, database=None,
                  suppress_health_check=list(HealthCheck))
        @given(case=operation.as_strategy(generation_mode=mode))
        def check(case) -> None:
            response = case.call(base_url=fuzzed.url, timeout=60)
            seen[response.status_code] += 1
            assert response.status_code < 500 or response.status_code == 503, (case.as_curl_command(), response.text)
            if response.status_code >= 400 and response.status_code != 503:
                assert "\n" not in response.json()["error"]["message"]  # one line, OpenAI's error body

        check()
    STATUSES.update(seen)
    print(f"{mode.value}: statuses {dict(sorted(seen.items()))}")
    assert sum(seen.values()) >= 30


def test_the_server_is_still_up_after_fuzzing(fuzzed):
    assert requests.get(f"{fuzzed.url}/health", timeout=30).json()["status"] == "ok"
    assert any(s < 300 for s in STATUSES) and any(400 <= s < 500 for s in STATUSES)
