"""POST /v1/chat/completions: OpenAI's chat endpoint on the same continuous-batching engine as completions.

The messages become the prompt through the served model's chat template (lmlab.chat: the run's own, or the one
given with `lmlab serve --chat-template`); the template's turn-end tokens end each choice (finish_reason
"stop"), as do the request's stop strings; max_tokens (or max_completion_tokens) ends it with "length". A
conversation longer than the model's context is a 400, or with `--truncate-history` loses its oldest turns.
Streaming sends OpenAI's chunks: first each choice's `delta.role`, then its text as it is certain (never half a
character or half a stop string), then a chunk with its finish_reason, the usage with
stream_options.include_usage, and `data: [DONE]`.
"""
from __future__ import annotations

import secrets
import time

from fastapi import APIRouter, Depends, Request
from fastapi.responses import StreamingResponse

from ..errors import LmlabError
from .routes import Generation, by_choice, check_key, collect, served_model, sse_data, usage
from .schemas import ApiError, ChatCompletionRequest, completion_config, error_body

MAX_TOP_LOGPROBS = 20  # OpenAI's limit on top_logprobs

router = APIRouter(dependencies=[Depends(check_key)])


def check_chat_body(body: ChatCompletionRequest) -> None:
    """What completions' checks do not cover: the chat-only fields."""
    if body.tools:
        raise ApiError(400, "'tools' (function calling) is not supported; leave it out.", param="tools")
    if body.response_format and body.response_format.get("type") not in (None, "text"):
        raise ApiError(400, "'response_format' other than text is not supported; leave it out.",
                       param="response_format")
    if body.use_beam_search:
        raise ApiError(400, "beam search is not served (the engine decodes sampled and greedy rows together); "
                            "use n with sampling, or `lmlab chat --num-beams`.", param="use_beam_search")
    if body.top_logprobs is not None:
        if not body.logprobs:
            raise ApiError(400, "'top_logprobs' needs 'logprobs': true.", param="top_logprobs")
        if not 0 <= body.top_logprobs <= MAX_TOP_LOGPROBS:
            raise ApiError(400, f"'top_logprobs' must be between 0 and {MAX_TOP_LOGPROBS}, got {body.top_logprobs}.",
                           param="top_logprobs")
    if body.max_tokens is not None and body.max_completion_tokens is not None \
            and body.max_tokens != body.max_completion_tokens:
        raise ApiError(400, "'max_tokens' and 'max_completion_tokens' differ; give one of them.",
                       param="max_completion_tokens")


def chat_ids(request: Request, s, body: ChatCompletionRequest, max_tokens: int | None) -> list[int]:
    """The prompt ids of the conversation under the model's template, within its context."""
    if s.chat is None:
        raise ApiError(400, s.chat_problem, param="model", code="no_chat_template")
    budget = s.context - (max_tokens if max_tokens is not None else 1) if s.context else 1 << 62
    if budget < 1:
        raise ApiError(400, f"'max_tokens' is {max_tokens}, the whole context of model '{s.name}' ({s.context} "
                            "tokens) or more; ask for fewer tokens.", param="max_tokens")
    try:
        _, _, ids = s.chat_fit(body.messages, budget, request.app.state.truncate_history)
    except LmlabError as e:
        raise ApiError(400, str(e), param="messages") from None
    return ids


@router.post("/v1/chat/completions")
async def chat_completions(body: ChatCompletionRequest, request: Request):
    s = served_model(request, body.model)
    check_chat_body(body)
    requested = body.max_completion_tokens if body.max_completion_tokens is not None else body.max_tokens
    ids = chat_ids(request, s, body, requested)
    limits = request.app.state.limits
    max_tokens = requested
    if max_tokens is None:  # OpenAI's default: as much as fits; here, up to the server's cap
        max_tokens = min(limits.max_tokens, s.context - len(ids)) if s.context else limits.max_tokens
    cfg = completion_config(body, 1, limits, max_tokens=max_tokens)
    cfg.stop_token_ids = list(s.chat.stop_ids)
    top = body.top_logprobs or 0
    gen = Generation(request, s, [ids], cfg, top, bool(body.stream))
    run = ChatRun(s, body, len(ids), cfg.num_return_sequences)
    if body.stream:
        return StreamingResponse(stream_chat(run, gen), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
    return await collect_chat(run, gen)


class ChatRun:
    def __init__(self, s, body: ChatCompletionRequest, prompt_tokens: int, n: int):
        self.s, self.body, self.prompt_tokens, self.n = s, body, prompt_tokens, n
        self.base = {"id": "chatcmpl-" + secrets.token_hex(12), "created": int(time.time()), "model": s.name,
                     "system_fingerprint": None}

    def logprobs(self, entries) -> dict | None:
        """OpenAI's chat `logprobs`: {"content": [{token, logprob, bytes, top_logprobs}]}."""
        if not self.body.logprobs:
            return None
        decode = self.s.tokenizer.decode

        def item(token, lp):
            text = decode([token])
            return {"token": text, "logprob": lp, "bytes": list(text.encode("utf-8"))}
        return {"content": [{**item(t, lp), "top_logprobs": [item(a, v) for a, v in (top or [])]}
                            for t, lp, top in entries]}


async def stream_chat(run: ChatRun, gen: Generation):
    chunk = {**run.base, "object": "chat.completion.chunk"}
    generated, ended = 0, False
    try:
        yield sse_data({**chunk, "choices": [{"index": i, "delta": {"role": "assistant", "content": ""},
                                              "logprobs": None, "finish_reason": None} for i in range(run.n)]})
        async for evs in gen.events():
            choices = []
            for i, (text, entries, finish) in by_choice(evs).items():
                generated += len(entries)
                if text or (entries and run.body.logprobs):  # (a held half character waits for its rest)
                    choices.append({"index": i, "delta": {"content": text}, "logprobs": run.logprobs(entries),
                                    "finish_reason": None})
                if finish:
                    choices.append({"index": i, "delta": {}, "logprobs": None, "finish_reason": finish})
            if choices:
                yield sse_data({**chunk, "choices": choices})
        gen.metrics.generated.labels(run.s.name).inc(generated)
        ended = True
        if run.body.stream_options is not None and run.body.stream_options.include_usage:
            yield sse_data({**chunk, "choices": [], "usage": usage(run.prompt_tokens, generated)})
    except ApiError as e:
        ended = True
        yield sse_data(error_body(e.message, e.type, e.param, e.code))
    finally:
        gen.cancel(None if ended else "disconnect")
    yield "data: [DONE]\n\n"


async def collect_chat(run: ChatRun, gen: Generation) -> dict:
    texts, entries, finish, generated = await collect(gen, run.n)
    choices = [{"index": i, "message": {"role": "assistant", "content": texts[i]},
                "logprobs": run.logprobs(entries[i]), "finish_reason": finish[i]} for i in range(run.n)]
    return {**run.base, "object": "chat.completion", "choices": choices,
            "usage": usage(run.prompt_tokens, generated)}
