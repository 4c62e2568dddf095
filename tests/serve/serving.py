"""Helpers of the server tests: an app served on a free loopback port, server-sent events, raw sockets, and a
headless Debian chromium driven by selenium."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
from collections.abc import Iterator
from typing import Any

import pytest
import requests

from biglm.serve.server import Server

USER = [{"role": "user", "content": "reverse this a b c"}]


@contextlib.contextmanager
def served(app: Any) -> Iterator[Server]:
    """``app`` on uvicorn on a free loopback port (under the app's limits), for the ``with`` block."""
    server = Server(app, "127.0.0.1", 0).start()
    try:
        yield server
    finally:
        server.stop()


def sse(response: requests.Response) -> list[dict]:
    """The JSON events of a streamed answer (which must end with ``[DONE]``)."""
    events = [line[6:] for line in response.iter_lines(decode_unicode=True) if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    return [json.loads(e) for e in events[:-1]]


def connect(server: Server, timeout: float = 10.0) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", server.port))
    s.settimeout(timeout)
    return s


def head(path: str, body: bytes = b"", extra: str = "", length: int | None = None) -> bytes:
    """A raw POST request head (and ``body``) with a JSON content type."""
    n = len(body) if length is None else length
    return (f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            f"Content-Length: {n}\r\n{extra}\r\n").encode() + body


def status_of(answer: bytes) -> int:
    return int(answer.split(b" ", 2)[1])


def read_all(s: socket.socket) -> bytes:
    """Everything until the server closes the connection (``TimeoutError`` if it keeps it open past the socket's
    timeout)."""
    out = b""
    with contextlib.suppress(ConnectionResetError):
        while chunk := s.recv(65536):
            out += chunk
    return out


def browser() -> Any:
    """A headless Debian chromium driven by selenium. Without chromium the test is skipped, saying so, except
    under ``.ci/run`` (which installs it and sets ``BIGLM_REQUIRE_BROWSER=1``): there it fails."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    binary, driver = shutil.which("chromium"), shutil.which("chromedriver")
    if not binary or not driver:
        why = "Debian's chromium and chromium-driver are not installed (apt-get install chromium chromium-driver)"
        if os.environ.get("BIGLM_REQUIRE_BROWSER"):
            pytest.fail(why)
        pytest.skip(why)
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"):
        options.add_argument(arg)
    return webdriver.Chrome(service=Service(driver), options=options)
