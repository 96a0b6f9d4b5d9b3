"""The lmlab serve app: `create_app(models)` puts the served models, limits, API key and Prometheus metrics on
`app.state`, adds the error handlers (OpenAI's error shape, never a traceback: serve/schemas.py), the body-size
and request-metrics middleware, the endpoints (serve/routes.py) and the playground's static files.
"""
from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from pathlib import Path

from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..errors import LmlabError
from .batching import Engine
from .schemas import ApiError, error_response, validation_message

log = logging.getLogger("lmlab.serve")
STATIC = Path(__file__).with_name("static")
ROUTES = {"/v1/completions", "/v1/chat/completions", "/v1/score", "/v1/models", "/health", "/metrics", "/"}  # counted by name in /metrics


@dataclass
class Limits:
    max_tokens: int = 512  # cap on max_tokens of one request
    max_body_bytes: int = 1 << 20  # cap on a request body
    timeout: float = 120.0  # seconds a request may take, queueing included
    max_batch: int = 32  # rows decoded together (prompts x n of all running requests)
    max_queue: int = 256  # requests waiting for room in the batch before new ones get 503


class ServedModel:
    """One served model: its engine and, where it has one, its chat template (`chat`; else `chat_problem` says
    why chat requests are refused). A template given at start (`chat_template`, a file) that fails to load stops
    the server from starting; the run's own one that does not load only refuses chat."""

    def __init__(self, name: str, model, tokenizer, limits: Limits, chat_template: str | Path | None = None):
        from ..chat import load_template

        self.name, self.model, self.tokenizer = name, model, tokenizer
        self.family = model.family
        self.context = model.block_size
        self.vocab_size = tokenizer.vocab_size
        self.created = int(time.time())
        self.chat, self.chat_problem = None, None
        try:
            self.chat = load_template(tokenizer, f"model '{name}'", chat_template)
        except LmlabError as e:
            if chat_template is not None:
                raise
            self.chat_problem = str(e).replace("give one with --chat-template FILE.jinja",
                                               "start the server with --chat-template FILE.jinja")
        self.engine = Engine(model, tokenizer, max_batch=limits.max_batch, max_queue=limits.max_queue)

    def chat_fit(self, messages: list, budget: int, truncate: bool):
        from ..chat import fit_history

        return fit_history(self.chat, self.tokenizer, messages, budget, truncate)


class Metrics:
    """The server's Prometheus metrics, in a registry of its own."""

    def __init__(self, served: dict[str, ServedModel]):
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.registry = r = CollectorRegistry()
        self.requests = Counter("lmlab_requests", "HTTP requests by route and status code", ["route", "status"],
                                registry=r)
        self.latency = Histogram("lmlab_request_latency_seconds", "Time from request to the end of the response",
                                 ["route"], registry=r,
                                 buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120))
        self.ttft = Histogram("lmlab_time_to_first_token_seconds", "Time from a completion request to its first "
                              "token", ["model"], registry=r,
                              buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30))
        self.prompt = Counter("lmlab_prompt_tokens", "Prompt tokens of completion requests", ["model"], registry=r)
        self.generated = Counter("lmlab_generated_tokens", "Tokens generated", ["model"], registry=r)
        self.cancelled = Counter("lmlab_cancelled_requests", "Completions stopped early: client gone or timeout",
                                 ["model", "reason"], registry=r)
        gauges = {"queued": Gauge("lmlab_queue_depth", "Requests waiting for room in the batch", ["model"], registry=r),
                  "running": Gauge("lmlab_running_sequences", "Sequences in the running batch", ["model"], registry=r),
                  "steps": Gauge("lmlab_decode_steps", "Decode steps run (one forward pass over the batch each)",
                                 ["model"], registry=r)}
        for name, s in served.items():
            for attribute, gauge in gauges.items():
                gauge.labels(name).set_function(lambda e=s.engine, a=attribute: getattr(e, a))


def create_app(models: dict[str, tuple], limits: Limits | None = None, api_key: str | None = None,
               chat_templates: dict[str, str | Path] | None = None, truncate_history: bool = False) -> FastAPI:
    """An app serving `models` ({name: (model, tokenizer)}); with api_key, /v1 and /metrics need
    `Authorization: Bearer <api_key>`. chat_templates: {name: Jinja file} replacing those models' own templates;
    truncate_history: a chat longer than the context loses its oldest turns instead of being refused."""
    from .chat import router as chat_router
    from .routes import router

    limits = limits or Limits()
    chat_templates = chat_templates or {}
    unknown = set(chat_templates) - set(models)
    if unknown:
        raise LmlabError(f"--chat-template names {sorted(unknown)[0]!r}, which is not a served model; use one of "
                         f"{', '.join(repr(n) for n in models)}.")
    served = {name: ServedModel(name, m, t, limits, chat_templates.get(name)) for name, (m, t) in models.items()}

    async def lifespan(app):
        for s in served.values():
            s.engine.start()
        yield
        for s in served.values():
            await asyncio.to_thread(s.engine.stop)

    # No /docs or /redoc: FastAPI's pages load their scripts from a CDN, and lmlab runs offline.
    app = FastAPI(title="lmlab", version="1", lifespan=lifespan, docs_url=None, redoc_url=None,
                  description="OpenAI-compatible completions over lmlab models, with continuous batching.")
    app.state.served, app.state.limits, app.state.api_key, app.state.static = served, limits, api_key, STATIC
    app.state.truncate_history = truncate_history
    app.state.metrics = metrics = Metrics(served)
    for kind, handler in ERROR_HANDLERS.items():
        app.add_exception_handler(kind, handler)
    app.add_middleware(BodyLimit, limit=limits.max_body_bytes)
    app.add_middleware(RequestMetrics, counter=metrics.requests, latency=metrics.latency, routes=ROUTES)
    app.include_router(router)
    app.include_router(chat_router)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    return app


# --------------------------------------------------------------------------- errors: OpenAI's shape, never a traceback

async def _api_error(request, e: ApiError):
    headers = {"WWW-Authenticate": "Bearer"} if e.status == 401 else None
    return error_response(e.status, e.message, e.type, e.param, e.code, headers)


async def _validation_error(request, e: RequestValidationError):
    message, param = validation_message(e.errors())
    kind = request.headers.get("content-type", "")
    if param is None and kind and "json" not in kind:
        message = f"the body is sent as {kind.split(';')[0][:60]}; send JSON with 'Content-Type: application/json'."
    return error_response(400, message, param=param)


async def _lmlab_error(request, e: LmlabError):
    return error_response(400, str(e))


async def _http_error(request, e: StarletteHTTPException):
    if e.status_code == 404:
        message = f"no such endpoint: {request.method} {request.url.path[:100]}; /openapi.json lists them."
    elif e.status_code == 405:
        message = f"{request.method} is not allowed on {request.url.path[:100]}; /openapi.json lists the methods."
    else:
        message = str(e.detail)
    return error_response(e.status_code, message, headers=getattr(e, "headers", None))


async def _server_error(request, e: Exception):
    log.exception("unexpected error on %s %s", request.method, request.url.path)
    return error_response(500, "the server hit an unexpected error; it is logged on the server.", type="server_error")


ERROR_HANDLERS = {ApiError: _api_error, RequestValidationError: _validation_error, LmlabError: _lmlab_error,
                  StarletteHTTPException: _http_error, Exception: _server_error}


# --------------------------------------------------------------------------- ASGI middleware

class BodyLimit:
    """Refuse request bodies over `limit` bytes with 413 (by Content-Length, or while reading a chunked body)."""

    def __init__(self, app, limit: int):
        self.app, self.limit = app, limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope.get("headers") or [])
        length = headers.get(b"content-length")
        too_large = error_response(413, f"the request body is larger than this server's limit of {self.limit:,} "
                                        "bytes; send a smaller body.", code="body_too_large")
        if length is not None:
            try:
                declared = int(length)
            except ValueError:
                return await error_response(400, "the Content-Length header is not a number.")(scope, receive, send)
            if declared > self.limit:
                return await too_large(scope, receive, send)
        chunks, size, more = [], 0, True
        while more:  # read the whole (bounded) body first, then hand it to the app
            message = await receive()
            if message["type"] != "http.request":
                chunks = None
                first = message
                break
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            if size > self.limit:
                return await too_large(scope, receive, send)
            more = message.get("more_body", False)
        body = b"".join(chunks) if chunks is not None else None
        sent = False

        async def replay():
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": body, "more_body": False} if body is not None else first
            return await receive()

        return await self.app(scope, replay, send)


class RequestMetrics:
    """Count requests by route and status and time them to the end of the response."""

    def __init__(self, app, counter, latency, routes: set[str]):
        self.app, self.counter, self.latency, self.routes = app, counter, latency, routes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        route = scope.get("path", "")
        route = route if route in self.routes else "other"
        start, status = time.perf_counter(), [500]

        async def send_status(message):
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            self.counter.labels(route, str(status[0])).inc()
            self.latency.labels(route).observe(time.perf_counter() - start)
