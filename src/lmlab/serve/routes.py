"""The endpoints, as module-level functions on one APIRouter: OpenAI-compatible /v1/completions (SSE streaming)
and /v1/models (saying which models can chat; serve/chat.py has /v1/chat/completions), our /v1/score, /health,
/metrics (Prometheus text) and the playground page at /.

A handler finds what it serves on `request.app.state` (set by create_app: `served` models, `limits`, `api_key`,
`metrics`). `Generation` is one request's run through its model's engine as the handler sees it (submission,
the events as they arrive, timeout and disconnect); the completion endpoint turns its events into OpenAI's
response shape, and a new endpoint (chat) can reuse it the same way.
"""
from __future__ import annotations

import asyncio
import hmac
import json
import logging
import secrets
import time

from fastapi import APIRouter, Depends, Request
from fastapi.responses import FileResponse, PlainTextResponse, StreamingResponse

from ..generate import GenerationConfig, encode_bad_words
from .batching import Event, Request as EngineRequest, prompt_logprobs
from .schemas import (ApiError, CompletionRequest, ScoreRequest, completion_config, encode, error_body,
                      parse_prompt)

log = logging.getLogger("lmlab.serve")


def check_key(request: Request) -> None:
    """With an API key, /v1 and /metrics need `Authorization: Bearer <key>`."""
    api_key = request.app.state.api_key
    if api_key is None:
        return
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), api_key.encode()):
        raise ApiError(401, "missing or wrong API key; send the header 'Authorization: Bearer <key>' with the "
                            "key the server was started with.", code="invalid_api_key")


router = APIRouter()
v1 = APIRouter(dependencies=[Depends(check_key)])


def served_model(request: Request, name: str):
    served = request.app.state.served
    if name not in served:
        raise ApiError(404, f"the model '{name[:100]}' does not exist; this server has "
                            f"{', '.join(repr(n) for n in served)} (see /v1/models).", param="model",
                       code="model_not_found")
    return served[name]


# --------------------------------------------------------------------------- pages, health, models, metrics

@router.get("/", include_in_schema=False)
async def playground(request: Request):
    return FileResponse(request.app.state.static / "index.html", headers={"Cache-Control": "no-cache"})


@router.get("/health")
async def health(request: Request):
    state = request.app.state
    return {"status": "ok", "models": list(state.served), "max_tokens": state.limits.max_tokens,
            "api_key_required": state.api_key is not None,
            "running": sum(s.engine.running for s in state.served.values()),
            "queued": sum(s.engine.queued for s in state.served.values())}


@v1.get("/metrics")
async def metrics(request: Request):
    from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

    return PlainTextResponse(generate_latest(request.app.state.metrics.registry), media_type=CONTENT_TYPE_LATEST)


def model_card(s) -> dict:
    return {"id": s.name, "object": "model", "created": s.created, "owned_by": "lmlab", "family": s.family,
            "context_length": s.context, "vocab_size": s.vocab_size, "chat": s.chat is not None}


@v1.get("/v1/models")
async def list_models(request: Request):
    return {"object": "list", "data": [model_card(s) for s in request.app.state.served.values()]}


@v1.get("/v1/models/{name:path}")
async def get_model_card(name: str, request: Request):
    return model_card(served_model(request, name))


@v1.post("/v1/score")
async def score(body: ScoreRequest, request: Request):
    from ..metrics import score_text

    s = served_model(request, body.model)
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


# --------------------------------------------------------------------------- one request through the engine

class Generation:
    """One request's sequences decoding in its model's engine, seen from the handler's event loop."""

    def __init__(self, request: Request, s, ids: list[list[int]], cfg: GenerationConfig, top_logprobs: int,
                 stream: bool):
        self.request, self.s, self.stream = request, s, stream
        self.limits, self.metrics = request.app.state.limits, request.app.state.metrics
        loop = asyncio.get_running_loop()
        self.inbox: asyncio.Queue = asyncio.Queue()
        self.job = EngineRequest(ids, cfg, on_events=lambda evs: loop.call_soon_threadsafe(self.inbox.put_nowait, evs),
                                 on_done=lambda err: loop.call_soon_threadsafe(self.inbox.put_nowait, err or True),
                                 top_logprobs=top_logprobs, bad_words=encode_bad_words(s.tokenizer, cfg))
        self.start = time.perf_counter()
        self.deadline = self.start + self.limits.timeout
        self.first_token: float | None = None
        if not s.engine.submit(self.job):
            raise ApiError(503, f"the server is busy ({self.limits.max_queue} requests are waiting); retry shortly.",
                           type="server_error", code="overloaded")
        self.metrics.prompt.labels(s.name).inc(sum(len(row) for row in ids))

    def cancel(self, reason: str | None = None) -> None:
        """Stop the sequences (a no-op once they finished); `reason` counts a cancellation in /metrics."""
        self.s.engine.cancel(self.job)
        if reason:
            self.metrics.cancelled.labels(self.s.name, reason).inc()

    async def events(self):
        """The engine's events for this request, until it is done; cancels it on timeout or disconnect."""
        checked = time.perf_counter()
        while True:
            now = time.perf_counter()
            if now >= self.deadline:
                self.cancel("timeout")
                raise ApiError(504, f"the completion did not finish within this server's limit of "
                                    f"{self.limits.timeout:g} s; ask for fewer tokens.", type="timeout_error",
                               code="timeout")
            if not self.stream and now - checked > 0.25:  # (a stream learns of a disconnect from Starlette)
                checked = now
                if await self.request.is_disconnected():
                    self.cancel("disconnect")
                    return
            try:
                item = await asyncio.wait_for(self.inbox.get(), timeout=min(self.deadline - now, 0.25))
            except asyncio.TimeoutError:
                continue
            if item is True:
                return
            if isinstance(item, BaseException):
                raise ApiError(500, "generation failed on the server; it is logged there.", type="server_error")
            batch = [item]
            while not self.inbox.empty():  # everything that arrived meanwhile goes out together
                more = self.inbox.get_nowait()
                if more is True or isinstance(more, BaseException):
                    self.inbox.put_nowait(more)
                    break
                batch.append(more)
            if self.first_token is None:
                self.first_token = time.perf_counter()
                self.metrics.ttft.labels(self.s.name).observe(self.first_token - self.start)
            yield [e for evs in batch for e in evs]


# --------------------------------------------------------------------------- /v1/completions

def logprobs_block(tokenizer, entries: list[tuple[int, float | None, list | None]], offset: int, top: bool) -> dict:
    """OpenAI's `logprobs` object of a choice: each token's text, log-probability, alternatives and offset."""
    tokens, lps, tops, offsets = [], [], [], []
    for token, lp, alternatives in entries:
        piece = tokenizer.decode([token])
        tokens.append(piece)
        lps.append(lp)
        tops.append(None if alternatives is None else {tokenizer.decode([t]): v for t, v in alternatives})
        offsets.append(offset)
        offset += len(piece)
    return {"tokens": tokens, "token_logprobs": lps, "top_logprobs": tops if top else None, "text_offset": offsets}


class CompletionRun:
    """What a /v1/completions response is made of: the prompts, the settings, the echoed prompt log-probabilities."""

    def __init__(self, s, body: CompletionRequest, texts, ids, cfg, echo_logprobs):
        self.s, self.body, self.texts, self.ids, self.echo_logprobs = s, body, texts, ids, echo_logprobs
        self.n, self.k, self.want_logprobs = cfg.num_return_sequences, body.logprobs or 0, body.logprobs is not None
        self.base = {"id": "cmpl-" + secrets.token_hex(12), "object": "text_completion", "created": int(time.time()),
                     "model": s.name}
        self.rows = len(ids) * self.n
        self.prompt_tokens = sum(len(row) for row in ids)

    def block(self, entries, offset: int) -> dict:
        return logprobs_block(self.s.tokenizer, entries, offset, bool(self.k))

    def echo_entries(self, row: int) -> list:
        if not self.echo_logprobs:
            return []
        lps, tops = self.echo_logprobs[row]
        return [(t, lp, top) for t, lp, top in zip(self.ids[row], lps, tops)]


@v1.post("/v1/completions")
async def completions(body: CompletionRequest, request: Request):
    s = served_model(request, body.model)
    texts, ids = parse_prompt(s, body)
    cfg = completion_config(body, len(ids), request.app.state.limits)
    gen = Generation(request, s, ids, cfg, body.logprobs or 0, bool(body.stream))
    echo_logprobs = None
    if body.echo and body.logprobs is not None:
        echo_logprobs = [await asyncio.to_thread(prompt_logprobs, s.model, row, body.logprobs) for row in ids]
    run = CompletionRun(s, body, texts, ids, cfg, echo_logprobs)
    if body.stream:
        return StreamingResponse(stream_completion(run, gen), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
    return await collect_completion(run, gen)


async def stream_completion(run: CompletionRun, gen: Generation):
    """The SSE events of a streamed completion: the echoed prompt, then each step's text per choice."""
    generated, ended = 0, False
    offsets = [0] * run.rows
    try:
        if run.body.echo:
            choices = []
            for i in range(run.rows):
                row = i // run.n
                lp = run.block(run.echo_entries(row), 0) if run.echo_logprobs else None
                choices.append({"text": run.texts[row], "index": i, "logprobs": lp, "finish_reason": None})
                offsets[i] = len(run.texts[row])
            yield sse_data({**run.base, "choices": choices})
        async for evs in gen.events():
            choices = []
            for i, (text, entries, finish) in by_choice(evs).items():
                generated += len(entries)
                lp = run.block(entries, offsets[i]) if run.want_logprobs else None
                offsets[i] += len(text)
                choices.append({"text": text, "index": i, "logprobs": lp, "finish_reason": finish})
            yield sse_data({**run.base, "choices": choices})
        gen.metrics.generated.labels(run.s.name).inc(generated)
        ended = True
        if run.body.stream_options is not None and run.body.stream_options.include_usage:
            yield sse_data({**run.base, "choices": [], "usage": usage(run.prompt_tokens, generated)})
    except ApiError as e:
        ended = True
        yield sse_data(error_body(e.message, e.type, e.param, e.code))
    finally:
        gen.cancel(None if ended else "disconnect")  # Starlette cancelled the stream: the client went away
    yield "data: [DONE]\n\n"


def by_choice(evs: list[Event]) -> dict[int, tuple[str, list, str | None]]:
    """A batch of events per choice: its new text, its (token, logprob, alternatives) entries, its finish reason."""
    groups: dict[int, list[Event]] = {}
    for e in evs:
        groups.setdefault(e.index, []).append(e)
    return {i: ("".join(e.text for e in group), [(e.token, e.logprob, e.top) for e in group if e.token is not None],
                next((e.finish for e in group if e.finish), None)) for i, group in groups.items()}


async def collect(gen: Generation, rows: int) -> tuple[list[str], list[list], list[str], int]:
    """A request run to its end: each choice's text, entries and finish reason ("length" when it was cut), and
    the tokens generated (counted in /metrics)."""
    texts, entries, finish = [""] * rows, [[] for _ in range(rows)], ["length"] * rows
    try:
        async for evs in gen.events():
            for i, (text, new, reason) in by_choice(evs).items():
                texts[i] += text
                entries[i] += new
                finish[i] = reason or finish[i]
    finally:
        gen.cancel()
    generated = sum(len(x) for x in entries)
    gen.metrics.generated.labels(gen.s.name).inc(generated)
    return texts, entries, finish, generated


async def collect_completion(run: CompletionRun, gen: Generation) -> dict:
    """A non-streamed completion: every choice's whole text, log-probabilities and finish reason."""
    texts, entries, finish, generated = await collect(gen, run.rows)
    choices = []
    for i in range(run.rows):
        row = i // run.n
        lp = run.block(run.echo_entries(row) + entries[i], 0) if run.want_logprobs else None
        choices.append({"text": (run.texts[row] if run.body.echo else "") + texts[i], "index": i,
                        "logprobs": lp, "finish_reason": finish[i]})
    return {**run.base, "choices": choices, "usage": usage(run.prompt_tokens, generated)}


def usage(prompt_tokens: int, completion_tokens: int) -> dict:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


def sse_data(obj) -> str:
    return f"data: {json.dumps(obj, separators=(',', ':'), allow_nan=False)}\n\n"


router.include_router(v1)
