"""``create_app``: the FastAPI app of ``biglm serve`` (and the base of ``biglm annotate``'s).

Routes: ``GET /`` (the live page), ``GET /v1/models``, ``POST /v1/chat/completions``, ``POST /v1/completions``
(OpenAI's shapes, ``biglm.serve.schemas``), ``GET /health``, ``GET /metrics`` (Prometheus), ``GET
/openapi.json`` and ``GET /docs``. Around every route, outermost first: the request log (a request id, taken
from a sane ``X-Request-Id`` or made, in the log line and the response header; the HTTP metrics), ``Guard``
(Host, Origin, JSON content type, API key: ``biglm.serve.security``), CORS for ``--allow-origin`` sites, the
body size limit and pace deadline (``biglm.serve.limits``). Every refusal has OpenAI's error body.

A request is validated whole (``biglm.serve.validation``) and only then submitted to the scheduler; a full
queue answers 503 with ``Retry-After``; a client that leaves cancels its request (``biglm.serve.answers``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import sys
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from importlib import resources
from typing import Any

from fastapi import APIRouter, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException
from starlette.middleware.cors import CORSMiddleware
from starlette.types import ASGIApp, Message, Receive, Scope, Send

import biglm
from biglm.chat.session import ChatModel
from biglm.serve.answers import ClientGone, first_event, response, stream
from biglm.serve.limits import BodyGuard, Limits
from biglm.serve.metrics import CONTENT_TYPE, Metrics
from biglm.serve.scheduler import Overloaded, Scheduler
from biglm.serve.schemas import (
    ChatCompletion,
    ChatCompletionRequest,
    Completion,
    CompletionRequest,
    ErrorBody,
    Health,
    ModelList,
)
from biglm.serve.security import Guard, Security
from biglm.serve.validation import CHAT_PATH, COMPLETIONS_PATH, HTTPError, error_body, parse_request

log = logging.getLogger("biglm.serve")
REQUEST_ID = re.compile(r"^[\w.:-]{1,64}$")
GONE = 499  # nginx's "client closed request", for the log and the metrics


class RequestLog:
    """ASGI middleware: the request id (scope state, ``X-Request-Id`` header), one log line, the HTTP metrics."""

    def __init__(self, app: ASGIApp, metrics: Metrics, routes: set[str]) -> None:
        self.app, self.metrics, self.routes = app, metrics, routes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        given = dict(scope["headers"]).get(b"x-request-id", b"").decode("latin-1")
        rid = given if REQUEST_ID.match(given) else uuid.uuid4().hex[:16]
        scope.setdefault("state", {})["request_id"] = rid
        status, start = 500, time.monotonic()

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message = {**message, "headers": [*message.get("headers", []), (b"x-request-id", rid.encode())]}
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            took = time.monotonic() - start
            route = scope["path"] if scope["path"] in self.routes else "other"
            self.metrics.observe(route, status, took)
            log.info("%s %s %s %d %.0f ms", rid, scope["method"], scope["path"][:200], status, 1000 * took)


def error_response(status: int, message: str, kind: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse(error_body(status, message, kind), status, headers=headers)


KINDS = {404: "not_found", 405: "invalid_request_error", 408: "timeout", 413: "request_too_large"}


def install_errors(app: FastAPI) -> None:
    """Every error as OpenAI's error body; the body-limit and timeout refusals close the connection."""

    @app.exception_handler(HTTPError)
    async def _ours(request: Request, e: HTTPError) -> JSONResponse:
        return error_response(e.status, e.message, e.kind, e.headers)

    @app.exception_handler(HTTPException)
    async def _starlette(request: Request, e: HTTPException) -> JSONResponse:
        message = f"no route {request.url.path[:200]}" if e.status_code == 404 else str(e.detail)
        close = {"Connection": "close"} if e.status_code in (408, 413) else {}
        return error_response(e.status_code, message, KINDS.get(e.status_code, "invalid_request_error"),
                              {**close, **(e.headers or {})})

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, e: RequestValidationError) -> JSONResponse:
        first = e.errors()[0] if e.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ()))
        return error_response(400, f"{where}: {first.get('msg', 'invalid request')}", "invalid_request_error")

    @app.exception_handler(Exception)
    async def _internal(request: Request, e: Exception) -> JSONResponse:
        rid = getattr(request.state, "request_id", "-")
        print(f"biglm: {rid} error in {request.method} {request.url.path}: {type(e).__name__}: {e}", file=sys.stderr)
        return error_response(500, f"internal error: {type(e).__name__}: {str(e)[:200]}", "server_error")


ERRORS: dict[int | str, dict[str, Any]] = {code: {"model": ErrorBody} for code in (400, 401, 403, 404, 413, 415, 503)}


def json_body(model: type) -> dict[str, Any]:
    """``openapi_extra`` documenting a JSON request body of ``model`` (the route reads and checks it itself)."""
    return {"requestBody": {"required": True, "content": {"application/json": {
        "schema": {"$ref": f"#/components/schemas/{model.__name__}"}}}}}


def model_routes(app: FastAPI, chat: ChatModel, scheduler: Scheduler, model_name: str) -> None:
    """The OpenAI-compatible API and the live page."""

    @app.get("/", include_in_schema=False)
    @app.get("/index.html", include_in_schema=False)
    async def page() -> HTMLResponse:
        return HTMLResponse(resources.files("biglm.serve").joinpath("page.html").read_bytes())

    @app.get("/v1/models", response_model=ModelList, responses=ERRORS)
    async def models() -> dict[str, Any]:
        return {"object": "list", "data": [{"id": model_name, "object": "model", "created": 0, "owned_by": "biglm",
                                            "family": chat.family}]}

    async def answer(request: Request, path: str) -> Response:
        rid = request.state.request_id
        req = parse_request(chat, path, await request.body(), model_name, rid)
        try:
            handle = scheduler.submit(req, loop=asyncio.get_running_loop())
        except Overloaded as e:
            raise HTTPError(503, str(e), "server_busy", {"Retry-After": str(e.retry_after)}) from None
        try:
            first, events = await first_event(request, handle)
        except ClientGone:
            return Response(status_code=GONE)
        if not req.stream:
            return JSONResponse(response(req, first, model_name))  # type: ignore[arg-type]
        return StreamingResponse(stream(req, handle, first, events, model_name), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    streamed = {"text/event-stream": {"schema": {"type": "string"}}}

    @app.post(CHAT_PATH, response_model=ChatCompletion, openapi_extra=json_body(ChatCompletionRequest),
              responses={**ERRORS, 200: {"content": streamed}})
    async def chat_completions(request: Request) -> Response:
        return await answer(request, CHAT_PATH)

    @app.post(COMPLETIONS_PATH, response_model=Completion, openapi_extra=json_body(CompletionRequest),
              responses={**ERRORS, 200: {"content": streamed}})
    async def completions(request: Request) -> Response:
        return await answer(request, COMPLETIONS_PATH)


def create_app(chat: ChatModel | None = None, *, model_name: str = "biglm", security: Security | None = None,
               limits: Limits | None = None, max_batch: int = 16, queue_size: int = 64,
               routers: Sequence[APIRouter] = (), schemas: Sequence[type] = (), title: str = "biglm serve") -> FastAPI:
    """The app: the model API over a ``Scheduler`` of ``chat`` (started with the app) when a model is given, and
    ``routers`` (``biglm annotate``'s page) beside it; ``/health``, ``/metrics`` and the docs always."""
    security, limits = security or Security(), limits or Limits()
    scheduler = Scheduler(chat, max_batch=max_batch, queue_size=queue_size) if chat is not None else None
    metrics = Metrics(scheduler)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if scheduler is not None:
            scheduler.start()
        try:
            yield
        finally:
            if scheduler is not None:
                scheduler.stop()

    app = FastAPI(title=title, version=biglm.__version__, lifespan=lifespan, redoc_url=None,
                  description="OpenAI-compatible API of a biglm model (streaming as server-sent events); errors have "
                  "OpenAI's error body.")
    app.state.scheduler, app.state.metrics, app.state.security, app.state.limits = scheduler, metrics, security, limits
    install_errors(app)

    @app.get("/health", response_model=Health)
    async def health() -> dict[str, Any]:
        if scheduler is None:
            return {"status": "ok", "waiting": 0, "active": 0}
        return {"status": "ok", "waiting": scheduler.queue_depth, "active": scheduler.active}

    @app.get("/metrics", response_class=Response, responses={200: {"content": {CONTENT_TYPE: {}}}})
    async def prometheus() -> Response:
        return Response(metrics.render(), media_type=CONTENT_TYPE)

    if chat is not None and scheduler is not None:
        model_routes(app, chat, scheduler, model_name)
    for router in routers:
        app.include_router(router)
    add_schemas(app, [ChatCompletionRequest, CompletionRequest] if chat is not None else [], *schemas)

    app.add_middleware(BodyGuard, limits=limits)
    if security.allow_origins:
        app.add_middleware(CORSMiddleware, allow_origins=list(security.allow_origins), allow_methods=["GET", "POST"],
                           allow_headers=["Authorization", "Content-Type", "X-Request-Id"],
                           expose_headers=["X-Request-Id", "Retry-After"])
    app.add_middleware(Guard, security=security)
    app.add_middleware(RequestLog, metrics=metrics, routes={getattr(r, "path", "") for r in app.routes})
    return app


def add_schemas(app: FastAPI, models: Sequence[type], *more: type) -> None:
    """Put request models that routes read themselves (``json_body``) into the OpenAPI components."""
    wanted = [*models, *more]
    if not wanted:
        return
    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = build()
            components = schema.setdefault("components", {}).setdefault("schemas", {})
            for model in wanted:
                full = model.model_json_schema(ref_template="#/components/schemas/{model}")  # type: ignore[attr-defined]
                components.update(full.pop("$defs", {}))
                components[model.__name__] = full
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


__all__ = ["RequestLog", "create_app", "error_response", "install_errors", "json_body"]
