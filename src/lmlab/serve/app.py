"""The HTTP API: OpenAI-compatible /v1/completions (SSE streaming) and /v1/models, our /v1/score, /health,
/metrics (Prometheus text) and the playground page at /.

Every error is OpenAI's JSON shape, {"error": {"message", "type", "param", "code"}}, with the status that fits
(400 bad input, 401 missing or wrong API key, 404 unknown model or route, 413 body too large, 503 queue full,
504 timeout, 500 anything unexpected, logged on the server and never a stack trace in the response).
"""
from __future__ import annotations

import asyncio
import hmac
import json
import logging
import math
import secrets
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Union

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, PlainTextResponse, StreamingResponse
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..errors import LmlabError
from ..generate import GenerationConfig, encode_bad_words
from .batching import Engine, Event, Request as EngineRequest, prompt_logprobs

log = logging.getLogger("lmlab.serve")
STATIC = Path(__file__).with_name("static")
MAX_STOP = 4  # OpenAI's limit on stop strings
MAX_LOGPROBS = 5  # OpenAI's limit on `logprobs` (top alternatives per token)


@dataclass
class Limits:
    max_tokens: int = 512  # cap on max_tokens of one request
    max_body_bytes: int = 1 << 20  # cap on a request body
    timeout: float = 120.0  # seconds a request may take, queueing included
    max_batch: int = 32  # rows decoded together (prompts x n of all running requests)
    max_queue: int = 256  # requests waiting for room in the batch before new ones get 503


class ServedModel:
    def __init__(self, name: str, model, tokenizer, limits: Limits):
        self.name, self.model, self.tokenizer = name, model, tokenizer
        self.family = getattr(model, "family", type(model).__name__)
        self.context = getattr(model, "block_size", None)
        self.vocab_size = getattr(tokenizer, "vocab_size", None) or getattr(model, "vocab_size", None)
        self.created = int(time.time())
        self.engine = Engine(model, tokenizer, max_batch=limits.max_batch, max_queue=limits.max_queue)


# --------------------------------------------------------------------------- errors

class ApiError(Exception):
    def __init__(self, status: int, message: str, type: str = "invalid_request_error", param: str | None = None,
                 code: str | None = None):
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type, param, code


def error_body(message: str, type: str = "invalid_request_error", param: str | None = None,
               code: str | None = None) -> dict:
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


def error_response(status: int, message: str, type: str = "invalid_request_error", param: str | None = None,
                   code: str | None = None, headers: dict | None = None) -> JSONResponse:
    return JSONResponse(error_body(message, type, param, code), status_code=status, headers=headers)


def _field(loc) -> str:
    parts = [str(p) for p in loc if p != "body"]
    return ".".join(parts)


def validation_message(errors: list[dict]) -> tuple[str, str | None]:
    """One sentence from pydantic's errors: the first problem, naming the field."""
    if not errors:
        return "the request body is invalid.", None
    e = errors[0]
    kind = e.get("type", "")
    if kind == "json_invalid":
        where = e.get("ctx", {}).get("error", "")
        return f"the request body is not valid JSON ({where}); send a JSON object.", None
    if kind == "model_attributes_type" or (kind.endswith("_type") and not _field(e.get("loc", ()))):
        return "the request body must be a JSON object.", None
    field = _field(e.get("loc", ()))
    if kind == "missing":
        if not field:
            return "the request body is empty; send a JSON object.", None
        return f"'{field}' is required.", field
    if kind == "extra_forbidden":
        return f"unknown field '{field}'; /openapi.json lists the fields this server accepts.", field
    msg = str(e.get("msg", "is invalid"))[:200]
    # a union (prompt, stop) reports one error per alternative: name the field once
    field = field.split(".")[0] if field else field
    return f"'{field}' is invalid: {msg[0].lower() + msg[1:]}.", field or None


# --------------------------------------------------------------------------- request bodies

class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    include_usage: bool = False


class CompletionRequest(BaseModel):
    """OpenAI's completions request; top_k, min_p and repetition_penalty are extras (vLLM's names)."""
    model_config = ConfigDict(extra="forbid", strict=True)
    model: str
    prompt: Union[str, list[str], list[int], list[list[int]]]
    max_tokens: int | None = 16
    temperature: float | None = 1.0
    top_p: float | None = 1.0
    n: int | None = 1
    stop: Union[str, list[str], None] = None
    seed: int | None = None
    logprobs: int | None = None
    echo: bool | None = False
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    best_of: int | None = None
    frequency_penalty: float | None = 0.0
    presence_penalty: float | None = 0.0
    logit_bias: dict[str, float] | None = None
    suffix: str | None = None
    user: str | None = None
    top_k: int | None = None
    min_p: float | None = None
    repetition_penalty: float | None = None


class ScoreRequest(BaseModel):
    """Our addition: the log-probability of a text under a model."""
    model_config = ConfigDict(extra="forbid", strict=True)
    model: str
    text: str = Field(description="the text to score")


# --------------------------------------------------------------------------- the app

def create_app(models: dict[str, tuple], limits: Limits | None = None, api_key: str | None = None) -> FastAPI:
    """An app serving `models` ({name: (model, tokenizer)}); with api_key, /v1 and /metrics need
    `Authorization: Bearer <api_key>`."""
    from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

    limits = limits or Limits()
    served = {name: ServedModel(name, m, t, limits) for name, (m, t) in models.items()}
    registry = CollectorRegistry()
    m_requests = Counter("lmlab_requests", "HTTP requests by route and status code", ["route", "status"],
                         registry=registry)
    m_latency = Histogram("lmlab_request_latency_seconds", "Time from request to the end of the response",
                          ["route"], registry=registry,
                          buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120))
    m_ttft = Histogram("lmlab_time_to_first_token_seconds", "Time from a completion request to its first token",
                       ["model"], registry=registry,
                       buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30))
    m_prompt = Counter("lmlab_prompt_tokens", "Prompt tokens of completion requests", ["model"], registry=registry)
    m_generated = Counter("lmlab_generated_tokens", "Tokens generated", ["model"], registry=registry)
    m_cancelled = Counter("lmlab_cancelled_requests", "Completions stopped early: client gone or timeout",
                          ["model", "reason"], registry=registry)
    queue_depth = Gauge("lmlab_queue_depth", "Requests waiting for room in the batch", ["model"], registry=registry)
    running = Gauge("lmlab_running_sequences", "Sequences in the running batch", ["model"], registry=registry)
    steps = Gauge("lmlab_decode_steps", "Decode steps run (one forward pass over the batch each)", ["model"],
                  registry=registry)
    for name, s in served.items():
        queue_depth.labels(name).set_function(lambda e=s.engine: e.queued)
        running.labels(name).set_function(lambda e=s.engine: e.running)
        steps.labels(name).set_function(lambda e=s.engine: e.steps)

    async def lifespan(app):
        for s in served.values():
            s.engine.start()
        yield
        for s in served.values():
            await asyncio.to_thread(s.engine.stop)

    # No /docs or /redoc: FastAPI's pages load their scripts from a CDN, and lmlab runs offline.
    app = FastAPI(title="lmlab", version="1", lifespan=lifespan, docs_url=None, redoc_url=None,
                  description="OpenAI-compatible completions over lmlab models, with continuous batching.")
    app.state.served, app.state.limits = served, limits

    def check_key(request: Request) -> None:
        if api_key is None:
            return
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), api_key.encode()):
            raise ApiError(401, "missing or wrong API key; send the header 'Authorization: Bearer <key>' with the "
                                "key the server was started with.", code="invalid_api_key")

    def get_model(name: str) -> ServedModel:
        if name not in served:
            raise ApiError(404, f"the model '{name[:100]}' does not exist; this server has "
                                f"{', '.join(repr(n) for n in served)} (see /v1/models).", param="model",
                           code="model_not_found")
        return served[name]

    # -- error handlers: OpenAI's shape, never a traceback

    @app.exception_handler(ApiError)
    async def _api_error(request, e: ApiError):
        headers = {"WWW-Authenticate": "Bearer"} if e.status == 401 else None
        return error_response(e.status, e.message, e.type, e.param, e.code, headers)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request, e: RequestValidationError):
        message, param = validation_message(e.errors())
        kind = request.headers.get("content-type", "")
        if param is None and kind and "json" not in kind:
            message = f"the body is sent as {kind.split(';')[0][:60]}; send JSON with 'Content-Type: application/json'."
        return error_response(400, message, param=param)

    @app.exception_handler(LmlabError)
    async def _lmlab_error(request, e: LmlabError):
        return error_response(400, str(e))

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request, e: StarletteHTTPException):
        if e.status_code == 404:
            message = f"no such endpoint: {request.method} {request.url.path[:100]}; /openapi.json lists them."
        elif e.status_code == 405:
            message = f"{request.method} is not allowed on {request.url.path[:100]}; /openapi.json lists the methods."
        else:
            message = str(e.detail)
        return error_response(e.status_code, message, headers=getattr(e, "headers", None))

    @app.exception_handler(Exception)
    async def _server_error(request, e: Exception):
        log.exception("unexpected error on %s %s", request.method, request.url.path)
        return error_response(500, "the server hit an unexpected error; it is logged on the server.",
                              type="server_error")

    # -- middleware (pure ASGI): body size cap, request metrics

    app.add_middleware(BodyLimit, limit=limits.max_body_bytes)
    app.add_middleware(RequestMetrics, counter=m_requests, latency=m_latency,
                       routes={"/v1/completions", "/v1/score", "/v1/models", "/health", "/metrics", "/"})

    # -- endpoints

    @app.get("/", include_in_schema=False)
    async def playground():
        return FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-cache"})

    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    @app.get("/health")
    async def health():
        return {"status": "ok", "models": list(served), "max_tokens": limits.max_tokens,
                "api_key_required": api_key is not None,
                "running": sum(s.engine.running for s in served.values()),
                "queued": sum(s.engine.queued for s in served.values())}

    @app.get("/metrics", dependencies=[Depends(check_key)])
    async def metrics():
        return PlainTextResponse(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    def model_card(s: ServedModel) -> dict:
        return {"id": s.name, "object": "model", "created": s.created, "owned_by": "lmlab", "family": s.family,
                "context_length": s.context, "vocab_size": s.vocab_size}

    @app.get("/v1/models", dependencies=[Depends(check_key)])
    async def list_models():
        return {"object": "list", "data": [model_card(s) for s in served.values()]}

    @app.get("/v1/models/{name:path}", dependencies=[Depends(check_key)])
    async def get_model_card(name: str):
        return model_card(get_model(name))

    @app.post("/v1/score", dependencies=[Depends(check_key)])
    async def score(body: ScoreRequest):
        from ..metrics import score_text

        s = get_model(body.model)
        if not body.text:
            raise ApiError(400, "'text' is empty; give the text to score.", param="text")
        ids = encode(s, body.text, "text")
        if len(ids) < 2:
            raise ApiError(400, "'text' is one token long; scoring needs at least two tokens.", param="text")
        logprobs, result = await asyncio.to_thread(score_text, s.model, s.tokenizer, body.text)
        skipped = len(ids) - len(logprobs)
        token_lps = [None] * skipped + [float(x) for x in logprobs]
        return {"object": "score", "model": s.name, "tokens": [s.tokenizer.decode([t]) for t in ids],
                "token_ids": ids, "token_logprobs": token_lps, "total_logprob": float(logprobs.sum()),
                "tokens_scored": result.tokens, "bytes": result.bytes, "perplexity": result.perplexity,
                "bits_per_token": result.bits_per_token, "bits_per_byte": result.bits_per_byte,
                "usage": {"prompt_tokens": len(ids), "total_tokens": len(ids)}}

    def encode(s: ServedModel, text: str, param: str) -> list[int]:
        try:
            return list(s.tokenizer.encode(text))
        except LmlabError as e:
            raise ApiError(400, f"'{param}' cannot be tokenized by model '{s.name}': {e}", param=param) from None

    def parse_completion(s: ServedModel, body: CompletionRequest) -> tuple[list[str], list[list[int]], GenerationConfig]:
        p = body.prompt
        if isinstance(p, str) or (isinstance(p, list) and p and isinstance(p[0], str)):
            texts = [p] if isinstance(p, str) else list(p)
            if not texts or any(not t for t in texts):
                raise ApiError(400, "'prompt' is empty; give the text to continue.", param="prompt")
            ids = [encode(s, t, "prompt") for t in texts]
        else:
            ids = [p] if (p and isinstance(p[0], int)) else list(p)
            if not ids or any(not row for row in ids):
                raise ApiError(400, "'prompt' is empty; give the text (or token ids) to continue.", param="prompt")
            for row in ids:
                bad = [t for t in row if not 0 <= t < (s.vocab_size or 0)]
                if bad:
                    raise ApiError(400, f"'prompt' has token id {bad[0]} outside model '{s.name}'s vocabulary of "
                                        f"{s.vocab_size} tokens.", param="prompt")
            texts = [s.tokenizer.decode(row) for row in ids]
        if any(not row for row in ids):
            raise ApiError(400, "'prompt' is empty after tokenization; give text the model's tokenizer knows.",
                           param="prompt")
        max_tokens = 16 if body.max_tokens is None else body.max_tokens
        if max_tokens < 0:
            raise ApiError(400, f"'max_tokens' must be >= 0, got {max_tokens}.", param="max_tokens")
        if max_tokens > limits.max_tokens:
            raise ApiError(400, f"'max_tokens' is {max_tokens}, over this server's cap of {limits.max_tokens}; "
                                "ask for fewer tokens.", param="max_tokens")
        n = 1 if body.n is None else body.n
        if n < 1:
            raise ApiError(400, f"'n' must be >= 1, got {n}.", param="n")
        if len(ids) * n > limits.max_batch:
            raise ApiError(400, f"{len(ids)} prompt(s) x n={n} is {len(ids) * n} sequences, more than this server "
                                f"decodes at once ({limits.max_batch}); send fewer prompts or a smaller n.",
                           param="n")
        if body.best_of is not None and body.best_of != n:
            raise ApiError(400, "'best_of' other than n is not supported; leave it out.", param="best_of")
        for name in ("frequency_penalty", "presence_penalty"):
            if getattr(body, name) not in (None, 0):
                raise ApiError(400, f"'{name}' is not supported; use 'repetition_penalty' instead.", param=name)
        if body.logit_bias:
            raise ApiError(400, "'logit_bias' is not supported; leave it out.", param="logit_bias")
        if body.suffix:
            raise ApiError(400, "'suffix' (insertion) is not supported by causal models; leave it out.",
                           param="suffix")
        if body.stream_options is not None and not body.stream:
            raise ApiError(400, "'stream_options' is only allowed with stream: true.", param="stream_options")
        stop = [body.stop] if isinstance(body.stop, str) else list(body.stop or [])
        if len(stop) > MAX_STOP:
            raise ApiError(400, f"'stop' has {len(stop)} strings; give at most {MAX_STOP}.", param="stop")
        if any(not x for x in stop):
            raise ApiError(400, "'stop' has an empty string; give non-empty stop strings.", param="stop")
        if body.logprobs is not None and not 0 <= body.logprobs <= MAX_LOGPROBS:
            raise ApiError(400, f"'logprobs' must be between 0 and {MAX_LOGPROBS}, got {body.logprobs}.",
                           param="logprobs")
        temperature = 1.0 if body.temperature is None else body.temperature
        if not (math.isfinite(temperature) and 0 <= temperature <= 2):
            raise ApiError(400, f"'temperature' must be between 0 and 2, got {temperature}.", param="temperature")
        top_p = 1.0 if body.top_p is None else body.top_p
        if not (math.isfinite(top_p) and 0 < top_p <= 1):
            raise ApiError(400, f"'top_p' must be in (0, 1], got {top_p}.", param="top_p")
        for name in ("min_p", "repetition_penalty"):
            value = getattr(body, name)
            if value is not None and not math.isfinite(value):
                raise ApiError(400, f"'{name}' must be a finite number.", param=name)
        seed = body.seed
        if seed is not None and not 0 <= seed < 2 ** 62:
            raise ApiError(400, f"'seed' must be between 0 and 2**62, got {seed}.", param="seed")
        cfg = GenerationConfig(max_new_tokens=max_tokens, temperature=temperature, top_p=top_p if top_p < 1 else None,
                               top_k=body.top_k, min_p=body.min_p,
                               repetition_penalty=1.0 if body.repetition_penalty is None else body.repetition_penalty,
                               stop=stop, num_return_sequences=n, seed=seed)
        try:
            cfg.validate()
        except LmlabError as e:
            raise ApiError(400, str(e)) from None
        return texts, ids, cfg

    @app.post("/v1/completions", dependencies=[Depends(check_key)])
    async def completions(body: CompletionRequest, request: Request):
        s = get_model(body.model)
        texts, ids, cfg = parse_completion(s, body)
        k = body.logprobs or 0
        want_logprobs = body.logprobs is not None
        loop = asyncio.get_running_loop()
        inbox: asyncio.Queue = asyncio.Queue()
        job = EngineRequest(ids, cfg, on_events=lambda evs: loop.call_soon_threadsafe(inbox.put_nowait, evs),
                            on_done=lambda err: loop.call_soon_threadsafe(inbox.put_nowait, err or True),
                            top_logprobs=k, bad_words=encode_bad_words(s.tokenizer, cfg))
        start = time.perf_counter()
        deadline = start + limits.timeout
        if not s.engine.submit(job):
            raise ApiError(503, f"the server is busy ({limits.max_queue} requests are waiting); retry shortly.",
                           type="server_error", code="overloaded")
        m_prompt.labels(s.name).inc(sum(len(row) for row in ids))
        completion_id = "cmpl-" + secrets.token_hex(12)
        created = int(time.time())
        echo_logprobs = None
        if body.echo and want_logprobs:
            echo_logprobs = [await asyncio.to_thread(prompt_logprobs, s.model, row, k) for row in ids]
        base = {"id": completion_id, "object": "text_completion", "created": created, "model": s.name}
        timing = {"first": None}

        async def events():
            """The engine's events for this request, until it is done; cancels it on timeout or disconnect."""
            checked = time.perf_counter()
            while True:
                now = time.perf_counter()
                if now >= deadline:
                    s.engine.cancel(job)
                    m_cancelled.labels(s.name, "timeout").inc()
                    raise ApiError(504, f"the completion did not finish within this server's limit of "
                                        f"{limits.timeout:g} s; ask for fewer tokens.", type="timeout_error",
                                   code="timeout")
                if not body.stream and now - checked > 0.25:  # (a stream learns of a disconnect from Starlette)
                    checked = now
                    if await request.is_disconnected():
                        s.engine.cancel(job)
                        m_cancelled.labels(s.name, "disconnect").inc()
                        return
                try:
                    item = await asyncio.wait_for(inbox.get(), timeout=min(deadline - now, 0.25))
                except asyncio.TimeoutError:
                    continue
                if item is True:
                    return
                if isinstance(item, BaseException):
                    raise ApiError(500, "generation failed on the server; it is logged there.", type="server_error")
                batch = [item]
                while not inbox.empty():  # everything that arrived meanwhile goes out together
                    more = inbox.get_nowait()
                    if more is True or isinstance(more, BaseException):
                        inbox.put_nowait(more)
                        break
                    batch.append(more)
                if timing["first"] is None:
                    timing["first"] = time.perf_counter()
                    m_ttft.labels(s.name).observe(timing["first"] - start)
                yield [e for evs in batch for e in evs]

        n = cfg.num_return_sequences
        prompt_tokens = sum(len(row) for row in ids)

        def logprobs_block(entries: list[tuple[int, float | None, list | None]], offset: int) -> dict:
            tokens, lps, tops, offsets = [], [], [], []
            for token, lp, top in entries:
                piece = s.tokenizer.decode([token])
                tokens.append(piece)
                lps.append(lp)
                tops.append(None if top is None else {s.tokenizer.decode([t]): v for t, v in top})
                offsets.append(offset)
                offset += len(piece)
            return {"tokens": tokens, "token_logprobs": lps, "top_logprobs": tops if k else None,
                    "text_offset": offsets}

        def echo_entries(row: int) -> list:
            lps, tops = echo_logprobs[row]
            return [(t, lp, top) for t, lp, top in zip(ids[row], lps, tops)]

        if body.stream:
            async def sse():
                generated, ended = 0, False
                offsets = [0] * (len(ids) * n)
                try:
                    if body.echo:
                        choices = []
                        for i in range(len(ids) * n):
                            row = i // n
                            lp = logprobs_block(echo_entries(row), 0) if echo_logprobs else None
                            choices.append({"text": texts[row], "index": i, "logprobs": lp, "finish_reason": None})
                            offsets[i] = len(texts[row])
                        yield sse_data({**base, "choices": choices})
                    async for evs in events():
                        by_index: dict[int, list[Event]] = {}
                        for e in evs:
                            by_index.setdefault(e.index, []).append(e)
                        choices = []
                        for i, group in by_index.items():
                            text = "".join(e.text for e in group)
                            entries = [(e.token, e.logprob, e.top) for e in group if e.token is not None]
                            generated += len(entries)
                            lp = logprobs_block(entries, offsets[i]) if want_logprobs else None
                            offsets[i] += len(text)
                            finish = next((e.finish for e in group if e.finish), None)
                            choices.append({"text": text, "index": i, "logprobs": lp, "finish_reason": finish})
                        yield sse_data({**base, "choices": choices})
                    m_generated.labels(s.name).inc(generated)
                    ended = True
                    if body.stream_options is not None and body.stream_options.include_usage:
                        yield sse_data({**base, "choices": [], "usage": usage(prompt_tokens, generated)})
                except ApiError as e:
                    ended = True
                    yield sse_data(error_body(e.message, e.type, e.param, e.code))
                finally:
                    if not ended:  # Starlette cancelled the stream: the client went away
                        m_cancelled.labels(s.name, "disconnect").inc()
                    s.engine.cancel(job)  # a no-op when it finished; stops it when the client went away
                yield "data: [DONE]\n\n"

            return StreamingResponse(sse(), media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

        rows = len(ids) * n
        pieces: list[list[str]] = [[] for _ in range(rows)]
        entries: list[list] = [[] for _ in range(rows)]
        finish: list[str | None] = [None] * rows
        try:
            async for evs in events():
                for e in evs:
                    pieces[e.index].append(e.text)
                    if e.token is not None:
                        entries[e.index].append((e.token, e.logprob, e.top))
                    if e.finish:
                        finish[e.index] = e.finish
        finally:
            s.engine.cancel(job)
        generated = sum(len(x) for x in entries)
        m_generated.labels(s.name).inc(generated)
        choices = []
        for i in range(rows):
            row = i // n
            text = "".join(pieces[i])
            lp = None
            if want_logprobs:
                prefix = echo_entries(row) if echo_logprobs else []
                lp = logprobs_block(prefix + entries[i], 0)
            choices.append({"text": (texts[row] if body.echo else "") + text, "index": i, "logprobs": lp,
                            "finish_reason": finish[i] or "length"})
        return {**base, "choices": choices, "usage": usage(prompt_tokens, generated)}

    return app


def usage(prompt_tokens: int, completion_tokens: int) -> dict:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


def sse_data(obj) -> str:
    return f"data: {json.dumps(obj, separators=(',', ':'), allow_nan=False)}\n\n"


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
