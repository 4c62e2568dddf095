"""``biglm serve``: an OpenAI-compatible HTTP server with a live page, on the standard library.

Endpoints: ``GET /`` (the page), ``GET /v1/models``, ``POST /v1/chat/completions`` and ``POST
/v1/completions`` (OpenAI's request and response shapes, ``stop`` strings included; ``stream: true`` answers
with server-sent events ending in ``data: [DONE]``). Streaming follows the model: an autoregressive model's
chunks carry its tokens as ``delta.content``; a masked model's reply is not written left to right, so each
Mask-Predict pass is sent as a chunk with an empty delta and a ``biglm`` field (``{kind: pass, index, text,
segments: [[text, is_masked], ...]}``), and the final chunk carries the whole reply as ``delta.content``.
Either way the concatenated ``delta.content`` equals the non-streamed reply (same seed, same settings). Extra
request fields: ``steps``, ``strategy``, ``top_k``, ``length`` (``predict`` / ``fixed``).

One worker thread owns the model; requests wait in a bounded queue (``queue_size``; a full queue answers
503 at once). Non-streamed requests with the same settings that wait together are decoded as one batch (up
to ``batch``). Bad requests get a 4xx with OpenAI's error body and the server stays up; a client that goes
away mid-stream cancels its generation at the next pass or token.

Other pages mount on the same server through a route table (``routes``: ``(method, path) -> Route``; checked
before the built-in routes), as ``biglm annotate`` does; a server built without a model serves only those.
"""

from __future__ import annotations

import dataclasses
import json
import queue
import signal
import sys
import threading
import time
import urllib.parse
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from typing import Any

from biglm.chat.session import ChatModel, ChatSettings, Reply, ReplyUpdate
from biglm.errors import BiglmError
from biglm.textio import parse_json

MAX_BODY = 1 << 20

Route = Callable[[dict[str, Any] | None, dict[str, str]], tuple[int, Any, str]]
"""A mounted route: (JSON body of a POST or None, query parameters) -> (status, payload, content type); a
``bytes`` payload is sent as is, anything else as JSON. Raising ``HTTPError`` answers with OpenAI's error body."""


class HTTPError(BiglmError):
    """A request refused with ``status`` and a one-line ``message`` (OpenAI's error body)."""

    def __init__(self, status: int, message: str, kind: str = "invalid_request_error") -> None:
        super().__init__(message)
        self.status, self.message, self.kind = status, message, kind


class Cancelled(Exception):
    """The client went away: stop generating."""


@dataclass
class Job:
    """One request for the worker: a chat (``messages``) or a plain completion (``prompt``)."""

    settings: ChatSettings
    messages: list[dict[str, Any]] | None = None
    prompt: str | None = None
    stream: bool = False
    stop: list[str] = field(default_factory=list)
    """OpenAI's ``stop``: the reply ends before the first of these strings."""
    events: queue.Queue = field(default_factory=queue.Queue)
    """Streamed ``ReplyUpdate`` objects, then ``("done", Reply)`` or ``("error", message)``."""
    cancelled: threading.Event = field(default_factory=threading.Event)

    @property
    def batch_key(self) -> Any:
        return (self.messages is None, dataclasses.astuple(self.settings))


def stop_strings(body: dict[str, Any]) -> list[str]:
    """The request's ``stop`` field (a string or a list of up to 4 strings) as a list."""
    stop = body.get("stop")
    if stop is None:
        return []
    stops = [stop] if isinstance(stop, str) else stop
    if not isinstance(stops, list) or len(stops) > 4 or not all(isinstance(s, str) and s for s in stops):
        raise HTTPError(400, "'stop' must be a non-empty string or a list of up to 4 of them")
    return stops


def cut_at_stop(text: str, stops: list[str]) -> tuple[str, bool]:
    """``text`` up to the first stop string, and whether one was found."""
    cuts = [text.index(s) for s in stops if s in text]
    return (text[:min(cuts)], True) if cuts else (text, False)


def settings_from(body: dict[str, Any], base: ChatSettings) -> ChatSettings:
    """The request's generation settings over the server's defaults (OpenAI names where there are some)."""
    names = {"max_tokens": "max_new_tokens", "max_completion_tokens": "max_new_tokens", "temperature": "temperature",
             "top_p": "top_p", "top_k": "top_k", "seed": "seed", "steps": "steps", "strategy": "strategy",
             "length": "length"}
    changes = {}
    for key, name in names.items():
        if body.get(key) is not None:
            value = body[key]
            want = (int,) if name in ("max_new_tokens", "top_k", "seed", "steps") else (
                (int, float) if name in ("temperature", "top_p") else (str,))
            if not isinstance(value, want) or isinstance(value, bool):
                raise HTTPError(400, f"'{key}' must be {'a number' if float in want else want[0].__name__}")
            changes[name] = value
    if body.get("n", 1) != 1:
        raise HTTPError(400, "'n' must be 1")
    if body.get("logprobs") or body.get("echo"):
        raise HTTPError(400, "'logprobs' and 'echo' are not supported (score with `biglm evaluate` instead)")
    try:
        return base.updated(**changes)
    except BiglmError as e:
        raise HTTPError(400, str(e)) from None


def request_body(raw: bytes) -> dict[str, Any]:
    """A request body as a JSON object (``biglm.textio`` rules: UTF-8, no NaN, bounded numbers and nesting);
    ``HTTPError`` 400 otherwise."""
    try:
        body = parse_json(raw or b"null", "the request body")
    except BiglmError as e:
        raise HTTPError(400, str(e)) from None
    if not isinstance(body, dict):
        raise HTTPError(400, "the request body must be a JSON object")
    return body


def request_job(chat: ChatModel, path: str, body: dict[str, Any]) -> Job:
    """The validated ``Job`` of a request ``body`` to ``path`` (``/v1/chat/completions`` or ``/v1/completions``):
    settings over ``chat``'s defaults, checked against the model, and the messages or prompt; ``HTTPError``
    400 for anything a reply cannot be generated from."""
    settings = settings_from(body, chat.settings)
    stream = body.get("stream") or False
    if not isinstance(stream, bool):
        raise HTTPError(400, "'stream' must be true or false")
    stop = stop_strings(body)
    if path == "/v1/chat/completions":
        messages = body.get("messages")
        try:  # the checks of the chat data (roles, empty content, a user turn last); no tokenizer here
            chat.check_request(messages, settings)
        except BiglmError as e:
            raise HTTPError(400, str(e)) from None
        return Job(settings, messages=messages, stream=stream, stop=stop)
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1:
        prompt = prompt[0]
    if not isinstance(prompt, str) or not prompt.strip():
        raise HTTPError(400, "'prompt' must be a non-empty string")
    try:
        chat.check_settings(settings)
    except BiglmError as e:
        raise HTTPError(400, str(e)) from None
    return Job(settings, prompt=prompt, stream=stream, stop=stop)


def parse_request(chat: ChatModel, path: str, raw: bytes) -> Job:
    """The validation of a request: its raw body to ``path`` -> a ``Job`` for the worker, or ``HTTPError``
    (a ``BiglmError``) with the status and one line to answer."""
    return request_job(chat, path, request_body(raw))


class ChatServer:
    """The model worker, its queue and the HTTP server (``start`` / ``stop`` for tests and benchmarks)."""

    def __init__(self, chat: ChatModel | None, host: str = "127.0.0.1", port: int = 0, queue_size: int = 16,
                 batch: int = 8, model_name: str = "biglm", routes: dict[tuple[str, str], Route] | None = None) -> None:
        self.chat, self.batch, self.model_name = chat, max(1, batch), model_name
        self.routes = dict(routes or {})
        self.jobs: queue.Queue[Job] = queue.Queue(maxsize=max(1, queue_size))
        self.httpd = ThreadingHTTPServer((host, port), _handler(self))
        self.httpd.daemon_threads = True
        self.worker = threading.Thread(target=self._work, name="biglm-worker", daemon=True)
        self._stop = threading.Event()

    @property
    def url(self) -> str:
        host, port = self.httpd.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> ChatServer:
        if self.chat is not None:
            self.worker.start()
        threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, name="biglm-http",
                         daemon=True).start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self.httpd.shutdown()
        self.httpd.server_close()

    def submit(self, job: Job) -> Job:
        try:
            self.jobs.put_nowait(job)
        except queue.Full:
            raise HTTPError(503, f"server busy: {self.jobs.maxsize} requests already waiting; retry later",
                            "server_busy") from None
        return job

    def _work(self) -> None:
        held: list[Job] = []  # taken from the queue while batching but not of the batch: served first, in order
        while not self._stop.is_set():
            if held:
                first = held.pop(0)
            else:
                try:
                    first = self.jobs.get(timeout=0.2)
                except queue.Empty:
                    continue
            group = [first]
            if not first.stream:  # decode waiting non-streamed requests with the same settings together
                for job in list(held):
                    if len(group) < self.batch and not job.stream and job.batch_key == first.batch_key:
                        held.remove(job)
                        group.append(job)
                while len(group) < self.batch:
                    try:
                        job = self.jobs.get_nowait()
                    except queue.Empty:
                        break
                    (group if not job.stream and job.batch_key == first.batch_key else held).append(job)
            self._run(group)

    def _run(self, group: list[Job]) -> None:
        first = group[0]

        def update(u: ReplyUpdate) -> None:
            if first.cancelled.is_set():
                raise Cancelled
            first.events.put(u)

        try:
            if first.messages is not None:
                replies = self.chat.replies([j.messages for j in group], first.settings,
                                            update if first.stream else None)
            else:
                replies = self.chat.complete([j.prompt for j in group], first.settings,
                                             update if first.stream else None)
            for job, reply in zip(group, replies):
                job.events.put(("done", reply))
        except Cancelled:
            pass
        except BiglmError as e:
            for job in group:
                job.events.put(("error", str(e)))
        except Exception as e:  # never let one request take the worker down
            print(f"biglm serve: error in generation: {type(e).__name__}: {e}", file=sys.stderr)
            for job in group:
                job.events.put(("error", f"internal error: {type(e).__name__}"))


def _handler(server: ChatServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        server_version = "biglm"

        def log_message(self, format: str, *args: Any) -> None:  # quiet: one line per error only
            pass

        def _send(self, status: int, body: bytes, content_type: str = "application/json") -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def _json(self, status: int, obj: Any) -> None:
            self._send(status, json.dumps(obj).encode())

        def _error(self, e: HTTPError) -> None:
            self._json(e.status, {"error": {"message": e.message, "type": e.kind, "code": e.status}})

        def _mounted(self, method: str) -> bool:
            """Answer from the route table if it has this route (True), else leave it to the built-in ones."""
            path, _, query = self.path.partition("?")
            route = server.routes.get((method, path))
            if route is None:
                return False
            try:
                status, payload, content_type = route(self._body() if method == "POST" else None,
                                                      dict(urllib.parse.parse_qsl(query)))
                self._send(status, payload if isinstance(payload, bytes) else json.dumps(payload).encode(),
                           content_type)
            except HTTPError as e:
                self._error(e)
            except (BrokenPipeError, ConnectionResetError):
                pass
            except Exception as e:  # a failing route (a full disk, say) answers 500; the server stays up
                print(f"biglm: error in {method} {path}: {type(e).__name__}: {e}", file=sys.stderr)
                self._error(HTTPError(500, f"internal error: {type(e).__name__}: {e}", "server_error"))
            return True

        def do_GET(self) -> None:
            if self._mounted("GET"):
                return
            path = self.path.split("?")[0]
            if server.chat is None and path != "/health":
                self._error(HTTPError(404, f"no route {path}", "not_found"))
            elif path in ("/", "/index.html"):
                page = resources.files("biglm.chat").joinpath("page.html").read_bytes()
                self._send(200, page, "text/html; charset=utf-8")
            elif path == "/v1/models":
                self._json(200, {"object": "list", "data": [{"id": server.model_name, "object": "model",
                                                             "owned_by": "biglm", "family": server.chat.family}]})
            elif path == "/health":
                self._json(200, {"status": "ok", "waiting": server.jobs.qsize()})
            else:
                self._error(HTTPError(404, f"no route {path}", "not_found"))

        def do_POST(self) -> None:
            if self._mounted("POST"):
                return
            path = self.path.split("?")[0]
            try:
                if server.chat is None or path not in ("/v1/chat/completions", "/v1/completions"):
                    raise HTTPError(404, f"no route {path}", "not_found")
                job = request_job(server.chat, path, self._body())
                server.submit(job)
                if job.stream:
                    self._stream(job, path)
                else:
                    self._answer(job, path)
            except HTTPError as e:
                self._error(e)
            except (BrokenPipeError, ConnectionResetError):
                pass

        def _body(self) -> dict[str, Any]:
            try:
                length = int(self.headers.get("Content-Length") or 0)
            except ValueError:
                raise HTTPError(400, "bad Content-Length") from None
            if length > MAX_BODY:
                raise HTTPError(413, f"request body of {length} bytes exceeds {MAX_BODY}")
            return request_body(self.rfile.read(length) if length else b"")

        def _wait(self, job: Job) -> Reply:
            while True:
                event = job.events.get()
                if isinstance(event, tuple):
                    if event[0] == "error":
                        raise HTTPError(400, event[1])
                    return stopped(event[1], job.stop)

        def _answer(self, job: Job, path: str) -> None:
            self._json(200, response(job, self._wait(job), server.model_name, path))

        def _stream(self, job: Job, path: str) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.send_header("Cache-Control", "no-cache")
            self.send_header("Connection", "close")
            self.end_headers()
            self.close_connection = True
            ident, created = f"chatcmpl-{uuid.uuid4().hex[:24]}", int(time.time())
            chat = path == "/v1/chat/completions"
            sent = ""
            try:
                if chat:
                    self._event(chunk(ident, created, server.model_name, {"role": "assistant"}, None))
                while True:
                    event = job.events.get()
                    if isinstance(event, ReplyUpdate):
                        delta = ""
                        text = cut_at_stop(event.text, job.stop)[0]
                        if event.kind == "token" and text.startswith(sent):
                            delta, sent = text[len(sent):], text
                        self._event(chunk(ident, created, server.model_name, {"content": delta} if delta else {},
                                          None, chat, extra=None if event.kind == "token" else event.to_dict()))
                        continue
                    if event[0] == "error":
                        self._event({"error": {"message": event[1], "type": "invalid_request_error"}})
                        break
                    reply: Reply = stopped(event[1], job.stop)
                    rest = reply.text[len(sent):] if reply.text.startswith(sent) else reply.text
                    self._event(chunk(ident, created, server.model_name, {"content": rest}, finish(reply), chat,
                                      usage=usage(reply)))
                    break
                self.wfile.write(b"data: [DONE]\n\n")
                self.wfile.flush()
            except (BrokenPipeError, ConnectionResetError, OSError):
                job.cancelled.set()  # the worker stops this generation at its next pass or token

        def _event(self, obj: Any) -> None:
            self.wfile.write(b"data: " + json.dumps(obj).encode() + b"\n\n")
            self.wfile.flush()

    return Handler


def stopped(reply: Reply, stops: list[str]) -> Reply:
    """``reply`` cut at its first stop string (then it counts as finished)."""
    text, hit = cut_at_stop(reply.text, stops)
    return dataclasses.replace(reply, text=text, finished=reply.finished or hit) if hit else reply


def finish(reply: Reply) -> str:
    return "stop" if reply.finished else "length"


def usage(reply: Reply) -> dict[str, int]:
    n = len(reply.token_ids)
    return {"prompt_tokens": reply.prompt_tokens, "completion_tokens": n, "total_tokens": reply.prompt_tokens + n}


def response(job: Job, reply: Reply, model: str, path: str) -> dict[str, Any]:
    """OpenAI's non-streamed response body for ``reply``."""
    created = int(time.time())
    if path == "/v1/chat/completions":
        return {"id": f"chatcmpl-{uuid.uuid4().hex[:24]}", "object": "chat.completion", "created": created,
                "model": model, "choices": [{"index": 0, "message": {"role": "assistant", "content": reply.text},
                                             "finish_reason": finish(reply)}],
                "usage": usage(reply), "biglm": {"forward_passes": reply.forward_passes,
                                                 "dropped_turns": reply.dropped_turns}}
    return {"id": f"cmpl-{uuid.uuid4().hex[:24]}", "object": "text_completion", "created": created, "model": model,
            "choices": [{"index": 0, "text": reply.text, "finish_reason": finish(reply), "logprobs": None}],
            "usage": usage(reply)}


def chunk(ident: str, created: int, model: str, delta: dict[str, Any], finish_reason: str | None,
          chat: bool = True, extra: dict[str, Any] | None = None,
          usage: dict[str, int] | None = None) -> dict[str, Any]:
    """One streamed chunk (``chat.completion.chunk``, or ``text_completion`` for ``/v1/completions``)."""
    if chat:
        choice = {"index": 0, "delta": delta, "finish_reason": finish_reason}
        out: dict[str, Any] = {"id": ident, "object": "chat.completion.chunk", "created": created, "model": model,
                               "choices": [choice]}
    else:
        choice = {"index": 0, "text": delta.get("content", ""), "finish_reason": finish_reason, "logprobs": None}
        out = {"id": ident, "object": "text_completion", "created": created, "model": model, "choices": [choice]}
    if extra is not None:
        out["biglm"] = extra
    if usage is not None:
        out["usage"] = usage
    return out


def serve(chat: ChatModel, host: str = "127.0.0.1", port: int = 8000, queue_size: int = 16, batch: int = 8,
          model_name: str = "biglm") -> int:
    """Serve until interrupted (``biglm serve``): Ctrl-C (SIGINT) or SIGTERM stops it cleanly. The handlers
    are installed here because a process started in the background inherits SIGINT ignored."""
    server = ChatServer(chat, host, port, queue_size, batch, model_name)
    return serve_until_stopped(server, lambda url: f"biglm serve: {chat.family} model at {url}/ (API: "
                               f"{url}/v1/chat/completions); Ctrl-C stops")


def serve_until_stopped(server: ChatServer, banner: Callable[[str], str]) -> int:
    """Start ``server``, print ``banner(url)`` to stderr, and serve until SIGINT or SIGTERM."""
    stop = threading.Event()
    handlers = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGINT, signal.SIGTERM)}
    server.start()
    print(banner(server.url), file=sys.stderr, flush=True)
    try:
        while not stop.wait(0.2):
            pass
    finally:
        server.stop()
        for sig, handler in handlers.items():
            signal.signal(sig, handler)
    return 0


__all__ = ["ChatServer", "HTTPError", "Job", "Route", "parse_request", "request_body", "request_job", "serve",
           "serve_until_stopped", "settings_from"]
