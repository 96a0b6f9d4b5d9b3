"""The HTTP API's request bodies and how they are checked: OpenAI's completion request, our score request,
OpenAI-shaped errors, and the translation of a request into a GenerationConfig.

Every error is OpenAI's JSON shape, {"error": {"message", "type", "param", "code"}}, with the status that fits
(400 bad input, 401 missing or wrong API key, 404 unknown model or route, 413 body too large, 503 queue full,
504 timeout, 500 anything unexpected, logged on the server and never a stack trace in the response).
"""
from __future__ import annotations

import math
from typing import Any, Union

from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from ..errors import LmlabError
from ..generate import GenerationConfig

MAX_STOP = 4  # OpenAI's limit on stop strings
MAX_LOGPROBS = 5  # OpenAI's limit on `logprobs` (top alternatives per token)


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


class ChatCompletionRequest(BaseModel):
    """OpenAI's chat completions request (text content); top_k, min_p and repetition_penalty are extras, as in
    completions. `messages` are checked by lmlab.chat (one sentence naming the message at fault)."""
    model_config = ConfigDict(extra="forbid", strict=True)
    model: str
    messages: list[Any]
    max_tokens: int | None = None
    max_completion_tokens: int | None = None
    temperature: float | None = 1.0
    top_p: float | None = 1.0
    n: int | None = 1
    stop: Union[str, list[str], None] = None
    seed: int | None = None
    logprobs: bool | None = False
    top_logprobs: int | None = None
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    frequency_penalty: float | None = 0.0
    presence_penalty: float | None = 0.0
    logit_bias: dict[str, float] | None = None
    user: str | None = None
    tools: list[Any] | None = None
    tool_choice: Any = None
    response_format: dict[str, Any] | None = None
    use_beam_search: bool | None = None  # vLLM's extra: not served here (400), see lmlab chat --num-beams
    top_k: int | None = None
    min_p: float | None = None
    repetition_penalty: float | None = None


class ScoreRequest(BaseModel):
    """Our addition: the log-probability of a text under a model."""
    model_config = ConfigDict(extra="forbid", strict=True)
    model: str
    text: str = Field(description="the text to score")


# --------------------------------------------------------------------------- from a request to generation settings

def encode(s, text: str, param: str) -> list[int]:
    """The token ids of a text under served model `s`; text it cannot tokenize is a 400 naming `param`."""
    try:
        return list(s.tokenizer.encode(text))
    except LmlabError as e:
        raise ApiError(400, f"'{param}' cannot be tokenized by model '{s.name}': {e}", param=param) from None


def parse_prompt(s, body: CompletionRequest) -> tuple[list[str], list[list[int]]]:
    """The prompts of a completion request as texts and token ids (a string, strings, ids or lists of ids)."""
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
    return texts, ids


def completion_config(body, prompts: int, limits, max_tokens: int | None = None) -> GenerationConfig:
    """The GenerationConfig of a completion or chat request for `prompts` prompts, every field checked against
    OpenAI's rules and this server's limits (`max_tokens`: the request's, where it is not body.max_tokens)."""
    if max_tokens is None:
        max_tokens = 16 if body.max_tokens is None else body.max_tokens
    if max_tokens < 0:
        raise ApiError(400, f"'max_tokens' must be >= 0, got {max_tokens}.", param="max_tokens")
    if max_tokens > limits.max_tokens:
        raise ApiError(400, f"'max_tokens' is {max_tokens}, over this server's cap of {limits.max_tokens}; "
                            "ask for fewer tokens.", param="max_tokens")
    n = 1 if body.n is None else body.n
    if n < 1:
        raise ApiError(400, f"'n' must be >= 1, got {n}.", param="n")
    if prompts * n > limits.max_batch:
        raise ApiError(400, f"{prompts} prompt(s) x n={n} is {prompts * n} sequences, more than this server "
                            f"decodes at once ({limits.max_batch}); send fewer prompts or a smaller n.", param="n")
    best_of = getattr(body, "best_of", None)
    if best_of is not None and best_of != n:
        raise ApiError(400, "'best_of' other than n is not supported; leave it out.", param="best_of")
    for name in ("frequency_penalty", "presence_penalty"):
        if getattr(body, name) not in (None, 0):
            raise ApiError(400, f"'{name}' is not supported; use 'repetition_penalty' instead.", param=name)
    if body.logit_bias:
        raise ApiError(400, "'logit_bias' is not supported; leave it out.", param="logit_bias")
    if getattr(body, "suffix", None):
        raise ApiError(400, "'suffix' (insertion) is not supported by causal models; leave it out.", param="suffix")
    if body.stream_options is not None and not body.stream:
        raise ApiError(400, "'stream_options' is only allowed with stream: true.", param="stream_options")
    stop = [body.stop] if isinstance(body.stop, str) else list(body.stop or [])
    if len(stop) > MAX_STOP:
        raise ApiError(400, f"'stop' has {len(stop)} strings; give at most {MAX_STOP}.", param="stop")
    if any(not x for x in stop):
        raise ApiError(400, "'stop' has an empty string; give non-empty stop strings.", param="stop")
    if isinstance(body, CompletionRequest) and body.logprobs is not None and not 0 <= body.logprobs <= MAX_LOGPROBS:
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
    return cfg
