"""``biglm serve``: the OpenAI-compatible API and the live page of a model, on FastAPI + uvicorn.

    biglm serve --ckpt runs/instruct --port 8000          # http://127.0.0.1:8000/ , /v1/chat/completions
    BIGLM_API_KEY=secret biglm serve --ckpt runs/instruct --host 0.0.0.0 --allow-origin https://tools.example

``network_args`` / ``network_of`` are shared with ``biglm annotate``.
"""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Any

from biglm.errors import BiglmError


def network_args(p: argparse.ArgumentParser, api_key: bool = True) -> None:
    """Where to listen, who may call, and what one client may cost (``biglm.serve.security`` / ``limits``)."""
    from biglm.serve.limits import Limits

    d = Limits()
    g = p.add_argument_group("network and safety")
    g.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (default 127.0.0.1: this machine only; 0.0.0.0: every interface)")
    g.add_argument("--port", type=int, default=8000, help="port (0 = any free one)")
    if api_key:
        g.add_argument("--api-key", default=None, metavar="KEY",
                       help="require 'Authorization: Bearer KEY' on /v1 and /metrics (default: $BIGLM_API_KEY)")
    g.add_argument("--allow-origin", action="append", default=[], metavar="ORIGIN",
                   help="a web site (scheme://host[:port]) whose pages may call the server (repeatable)")
    g.add_argument("--allow-host", action="append", default=[], metavar="NAME",
                   help="a host name the server may be reached under besides this machine's (repeatable)")
    g.add_argument("--max-connections", type=int, default=d.max_connections,
                   help=f"open connections at most; more get 503 ({d.max_connections})")
    g.add_argument("--max-body", type=int, default=d.max_body, help=f"request body bytes at most ({d.max_body})")
    g.add_argument("--read-timeout", type=float, default=d.head_timeout,
                   help=f"seconds a client has to send a request's headers, and between pieces of its body "
                   f"({d.head_timeout:g})")
    g.add_argument("--keep-alive", type=float, default=d.keep_alive,
                   help=f"seconds an idle connection stays open ({d.keep_alive:g})")
    g.add_argument("--quiet", action="store_true", help="no request log lines on stderr")


def network_of(args: argparse.Namespace, what: str) -> tuple[Any, Any]:
    """The ``Security`` and ``Limits`` of the parsed ``network_args``; prints the exposure warning if needed."""
    from biglm.serve.limits import Limits
    from biglm.serve.security import Security, api_key_from, exposure_warning

    for name in ("max_connections", "max_body"):
        if getattr(args, name) < 1:
            raise BiglmError(f"--{name.replace('_', '-')} {getattr(args, name)}: must be at least 1")
    for name in ("read_timeout", "keep_alive"):
        if not 0 < getattr(args, name) <= 3600:
            raise BiglmError(f"--{name.replace('_', '-')} {getattr(args, name)}: expected seconds in (0, 3600]")
    key = api_key_from(getattr(args, "api_key", None))
    security = Security(args.host, key, tuple(args.allow_origin), tuple(args.allow_host))
    limits = Limits(max_body=args.max_body, head_timeout=args.read_timeout, body_timeout=args.read_timeout,
                    keep_alive=args.keep_alive, max_connections=args.max_connections)
    warning = exposure_warning(args.host, key, what)
    if warning is not None and not hasattr(args, "api_key"):  # no key to set (the annotation page)
        warning = warning.split(" without an API key")[0] + f": anyone who can reach this machine can use {what}"
    if warning is not None:
        print(f"biglm: {warning}", file=sys.stderr, flush=True)
    logger = logging.getLogger("biglm.serve")
    if not args.quiet and not any(isinstance(h, CurrentStderr) for h in logger.handlers):
        handler = CurrentStderr()
        handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(message)s", "%H:%M:%S"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
    return security, limits


class CurrentStderr(logging.StreamHandler):
    """The request log on whatever ``sys.stderr`` is when a line is written (one handler per process, however
    many servers it starts)."""

    @property  # type: ignore[override]
    def stream(self) -> Any:
        return sys.stderr

    @stream.setter
    def stream(self, value: Any) -> None:  # StreamHandler.__init__ sets it; the property decides
        pass


def register(subparsers: Any) -> None:
    from biglm.chat.cli import model_args

    text = "serve a model: OpenAI-compatible API and a live web page"
    p = subparsers.add_parser("serve", help=text, description=text + " (FastAPI on uvicorn; see docs/how-to/serve.md: "
                              "exposing the server to colleagues safely)")
    model_args(p)
    p.add_argument("--queue", type=int, default=64, help="requests waiting at most; more get HTTP 503 (64)")
    p.add_argument("--batch", type=int, default=16, help="requests decoded together at most (16)")
    p.add_argument("--model-name", default="biglm", help="the model id the API reports")
    network_args(p)
    p.set_defaults(func=run_serve)


def run_serve(args: argparse.Namespace) -> int:
    from biglm.chat.cli import load
    from biglm.serve.app import create_app
    from biglm.serve.server import Server

    for name in ("queue", "batch"):
        if getattr(args, name) < 1:
            raise BiglmError(f"--{name} {getattr(args, name)}: must be at least 1")
    security, limits = network_of(args, "the model")
    server = Server(None, args.host, args.port, limits)  # the port first: a taken one fails before the model loads
    chat = load(args)
    app = create_app(chat, model_name=args.model_name, security=security, limits=limits, max_batch=args.batch,
                     queue_size=args.queue)
    server.set_app(app)
    key = " (API key required)" if security.api_key else ""
    return server.run_until_stopped(lambda url: f"biglm serve: {chat.family} model at {url}/ (API: "
                                    f"{url}/v1/chat/completions{key}); Ctrl-C stops")


__all__ = ["network_args", "network_of", "register"]
