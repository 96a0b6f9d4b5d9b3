"""One generation loop for every causal model (GPT, RNN, n-gram): it only calls `logprobs_next`.

Each step turns the model's next-token log-probabilities into a choice, as Hugging Face `generate` does:
processors that look at the history (repetition penalty, no-repeat n-grams, banned words) then warpers
(temperature, top-k, top-p, min-p) reshape the distribution, and a sequence's own seeded generator draws
from it, so sample i is the same whether it is drawn alone or in a batch. Greedy and beam search use the
processors only. Stop strings end a sequence exactly where the string starts, even when it spans tokens;
the end-of-text token ends it too.
"""
from __future__ import annotations

import inspect
import math
import secrets
import sys
from dataclasses import dataclass, field
from typing import Iterator

import torch

from .errors import LmlabError


@dataclass
class GenerationConfig:
    max_new_tokens: int = 200
    max_length: int | None = None  # prompt + new tokens (Hugging Face's max_length); the smaller limit wins
    temperature: float = 1.0  # 0 = greedy
    top_k: int | None = None  # keep the k most likely tokens
    top_p: float | None = None  # keep the smallest set with probability >= top_p (nucleus, Holtzman et al. 2020)
    min_p: float | None = None  # drop tokens less likely than min_p x the most likely one (Nguyen et al. 2024)
    repetition_penalty: float = 1.0  # > 1 discourages tokens already in the sequence (CTRL, Keskar et al. 2019)
    no_repeat_ngram_size: int = 0  # never repeat an n-gram of this size
    bad_words: list[str] = field(default_factory=list)  # texts whose token sequences are never produced
    stop: list[str] = field(default_factory=list)  # end a sequence where one of these strings begins
    num_beams: int = 1  # > 1: beam search (deterministic; sampling settings are ignored)
    length_penalty: float = 1.0  # beam scores are sum log p / length ** length_penalty
    early_stopping: bool = False  # beam search ends once num_beams hypotheses are finished
    num_return_sequences: int = 1
    seed: int | None = None
    num_draft_tokens: int = 4  # speculative decoding: tokens the draft model proposes per target pass

    def validate(self) -> None:
        if self.max_new_tokens < 0:
            raise LmlabError(f"max_new_tokens must be >= 0, got {self.max_new_tokens}.")
        if self.max_length is not None and self.max_length < 1:
            raise LmlabError(f"max_length must be >= 1, got {self.max_length}.")
        if self.temperature < 0:
            raise LmlabError(f"temperature must be >= 0, got {self.temperature}.")
        if self.top_k is not None and self.top_k < 1:
            raise LmlabError(f"top_k must be >= 1, got {self.top_k}.")
        if self.top_p is not None and not 0 < self.top_p <= 1:
            raise LmlabError(f"top_p must be in (0, 1], got {self.top_p}.")
        if self.min_p is not None and not 0 <= self.min_p <= 1:
            raise LmlabError(f"min_p must be in [0, 1], got {self.min_p}.")
        if self.repetition_penalty <= 0:
            raise LmlabError(f"repetition_penalty must be > 0, got {self.repetition_penalty}.")
        if self.no_repeat_ngram_size < 0:
            raise LmlabError(f"no_repeat_ngram_size must be >= 0, got {self.no_repeat_ngram_size}.")
        if any(not s for s in self.stop):
            raise LmlabError("a stop string is empty; give non-empty stop strings.")
        if any(not w for w in self.bad_words):
            raise LmlabError("a bad word is empty; give non-empty bad words.")
        if self.num_return_sequences < 1:
            raise LmlabError(f"num_return_sequences must be >= 1, got {self.num_return_sequences}.")
        if self.num_beams < 1:
            raise LmlabError(f"num_beams must be >= 1, got {self.num_beams}.")
        if self.num_beams > 1 and self.num_beams < self.num_return_sequences:
            raise LmlabError(f"num_beams ({self.num_beams}) must be >= num_return_sequences "
                             f"({self.num_return_sequences}): beam search returns its best beams.")

    def new_tokens(self, prompt_length: int) -> int:
        """How many tokens to generate after a prompt of this length."""
        if self.max_length is None:
            return self.max_new_tokens
        return max(0, min(self.max_new_tokens, self.max_length - prompt_length))


# --------------------------------------------------------------------------- logits processors

def apply_temperature(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    return logits / temperature


def apply_top_k(logits: torch.Tensor, k: int) -> torch.Tensor:
    if k >= logits.size(-1):
        return logits
    kth = torch.topk(logits, k, dim=-1).values[..., -1:]
    return logits.masked_fill(logits < kth, float("-inf"))


def apply_top_p(logits: torch.Tensor, p: float) -> torch.Tensor:
    """Keep the most likely tokens whose cumulative probability first reaches p (always at least one)."""
    if p >= 1.0:
        return logits
    sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
    cumulative = sorted_logits.softmax(-1).cumsum(-1)
    drop_sorted = cumulative - sorted_logits.softmax(-1) >= p  # mass before this token already reaches p
    drop = drop_sorted.scatter(-1, order, drop_sorted)
    return logits.masked_fill(drop, float("-inf"))


def apply_min_p(logits: torch.Tensor, min_p: float) -> torch.Tensor:
    """Drop tokens whose probability is below min_p times the row's largest probability."""
    logp = logits.log_softmax(-1)
    threshold = logp.max(-1, keepdim=True).values + math.log(min_p) if min_p > 0 else -math.inf
    return logits.masked_fill(logp < threshold, float("-inf"))


def apply_repetition_penalty(logprobs: torch.Tensor, ids: torch.Tensor, penalty: float) -> torch.Tensor:
    """CTRL's penalty on every token already in the row. Log-probabilities are <= 0, so they are multiplied
    by the penalty (CTRL divides positive logits and multiplies negative ones: the same direction)."""
    seen = torch.gather(logprobs, 1, ids)
    return logprobs.scatter(1, ids, seen * penalty)


def banned_continuations(ids: list[int], n: int) -> set[int]:
    """Tokens that would complete an n-gram already in ids (no_repeat_ngram_size)."""
    if n < 1 or len(ids) < n:
        return set()
    if n == 1:
        return set(ids)
    prefix = tuple(ids[len(ids) - n + 1:])
    return {ids[i + n - 1] for i in range(len(ids) - n + 1) if tuple(ids[i:i + n - 1]) == prefix}


def banned_bad_words(ids: list[int], bad_words: list[list[int]]) -> set[int]:
    """Last tokens of bad-word sequences whose other tokens end the row (HF's bad_words_ids)."""
    return {w[-1] for w in bad_words if len(w) == 1 or ids[len(ids) - len(w) + 1:] == w[:-1]}


def process_history(logprobs: torch.Tensor, ids: torch.Tensor, cfg: GenerationConfig,
                    bad_words: list[list[int]], pad: list[int] | None = None) -> torch.Tensor:
    """The processors that depend on each row's tokens so far: repetition penalty, no-repeat n-grams, bad words.

    `pad`: left padding of each row (its first pad[row] ids are not history). Padding repeats the row's first
    token, so the repetition penalty, which only asks whether a token occurs, needs no special case.
    """
    if cfg.repetition_penalty != 1.0:
        logprobs = apply_repetition_penalty(logprobs, ids, cfg.repetition_penalty)
    if cfg.no_repeat_ngram_size or bad_words:
        logprobs = logprobs.clone()
        for row, history in enumerate(ids.tolist()):
            history = history[pad[row]:] if pad else history
            banned = banned_continuations(history, cfg.no_repeat_ngram_size) | banned_bad_words(history, bad_words)
            if banned:
                logprobs[row, list(banned)] = float("-inf")
    return logprobs


def choose_next(logprobs: torch.Tensor, cfg: GenerationConfig, generators: list[torch.Generator]) -> torch.Tensor:
    """Pick the next token of every row: greedy when temperature is 0, else sample after the warpers."""
    if cfg.temperature == 0:
        return logprobs.argmax(-1)
    logits = apply_temperature(logprobs.float(), cfg.temperature)
    if cfg.top_k is not None:
        logits = apply_top_k(logits, cfg.top_k)
    if cfg.top_p is not None:
        logits = apply_top_p(logits, cfg.top_p)
    if cfg.min_p is not None:
        logits = apply_min_p(logits, cfg.min_p)
    # Inverse-CDF sampling with one uniform draw per row from that row's generator.
    cdf = logits.softmax(-1).cumsum(-1)
    # right=True: the first token whose cumulative mass exceeds u, never one of probability 0.
    u = torch.stack([torch.rand((), generator=g) for g in generators]).to(cdf.device) * cdf[:, -1]
    return torch.searchsorted(cdf, u[:, None], right=True).clamp_(max=cdf.size(-1) - 1)[:, 0]


# --------------------------------------------------------------------------- the loop

def make_generators(cfg: GenerationConfig, n: int) -> list[torch.Generator]:
    # No seed: a fresh one from the OS (torch.seed() would also reseed torch's global RNG, e.g. a training run's).
    seed = cfg.seed if cfg.seed is not None else secrets.randbits(31)
    return [torch.Generator().manual_seed(seed + i) for i in range(n)]


def model_device(model):
    return next(iter(model.parameters()), torch.empty(0)).device if hasattr(model, "parameters") else "cpu"


DECODING_DTYPES = ("fp32", "fp16", "bf16", "int8")


def decoding_model(model, dtype: str = "fp32"):
    """An opt-in lower-precision copy of a torch model for decoding; the model itself is left as it is.

    "fp16": every nn.Linear weight (the tied LM head and embedding included) rounded to float16, the arithmetic
    still float32: on CPU the decoding kernels keep those weights as float16, half the bytes to read per token,
    which is what bounds batch-1 decoding (models/kernels.py); elsewhere the copy runs as fp32 does.
    "bf16": weights, activations and KV cache in bfloat16 (log-probabilities still come out in float32).
    "int8": every nn.Linear, the LM head included, becomes a dynamically quantized one (int8 weights with one
    scale per output channel, activations quantized on the fly; CPU only): a quarter of fp32's bytes to read
    per token. All three change the numbers (benchmarks/generate_throughput.py reports the logit error against
    fp32). "fp32" returns the model unchanged. Models without weights (n-gram) are returned as they are.
    """
    import copy
    import warnings

    if dtype not in DECODING_DTYPES:
        raise LmlabError(f"dtype must be one of {', '.join(DECODING_DTYPES)}, got {dtype!r}.")
    if dtype == "fp32" or not isinstance(model, torch.nn.Module):
        return model
    if dtype == "fp16":
        from .models.kernels import HALF_WEIGHTS

        half = copy.deepcopy(model).eval()
        with torch.no_grad():
            for module in half.modules():
                if type(module) is torch.nn.Linear:
                    module.weight.copy_(module.weight.half())
                    setattr(module, HALF_WEIGHTS, True)
        return half
    if dtype == "bf16":
        return copy.deepcopy(model).to(torch.bfloat16).eval()
    if model_device(model).type != "cpu":
        raise LmlabError("int8 decoding runs on the CPU only; use --dtype bf16 on a GPU, or --device cpu.")
    from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.ao.quantization announces its move to torchao
        return quantize_dynamic(copy.deepcopy(model).eval(), {torch.nn.Linear: per_channel_dynamic_qconfig},
                                dtype=torch.qint8)


class Padding:
    """Left padding of a batch of prompts of different lengths: each row is right-aligned, and the columns
    before its first real token repeat that token (placeholders: never context).

    A model whose `logprobs_next` takes `pad` (GPT) runs the padded batch at once; any other model runs each
    group of rows that share a prompt length separately, on its unpadded columns, with a state of its own.
    """

    def __init__(self, model, lengths: list[int], device):
        longest = max(lengths)
        self.counts = [longest - n for n in lengths]
        self.tensor = torch.tensor(self.counts, device=device) if any(self.counts) else None
        self.takes_pad = "pad" in inspect.signature(model.logprobs_next).parameters
        groups: dict[int, list[int]] = {}
        for row, p in enumerate(self.counts):
            groups.setdefault(p, []).append(row)
        self.groups = {p: torch.tensor(rows, device=device) for p, rows in groups.items()}

    def logprobs_next(self, model, ids: torch.Tensor, state):
        if self.tensor is None:
            return model.logprobs_next(ids, state)
        if self.takes_pad:
            return model.logprobs_next(ids, state, pad=self.tensor)
        state = state or {}
        out = None
        for p, rows in self.groups.items():
            logprobs, state[p] = model.logprobs_next(ids[rows, p:], state.get(p))
            if out is None:
                out = logprobs.new_empty(ids.shape[0], logprobs.shape[1])
            out[rows] = logprobs
        return out, state


def sample_steps(model, prompt_ids: list[int] | list[list[int]], cfg: GenerationConfig, first_sequence: int = 0,
                 batch: int | None = None, bad_words: list[list[int]] = ()) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Yield (next token [B], its log-probability under the model [B]) of each of `batch` sequences, step by step.

    Sequence i (counting from `first_sequence`) draws from generator seed + i. The log-probability is the
    model's own, before any processor or warper (what scoring and the API's logprobs report).

    `prompt_ids` is one prompt (a list of ids) or several (a list of lists, of any lengths): then each prompt
    has `batch` rows, prompt after prompt, all decoded in one batch, shorter prompts left-padded (Padding),
    and each prompt's rows are what it gives alone (its sequence i also draws from seed + i). With several
    prompts and max_length, the steps run to the longest limit: complete() stops each row at its own.
    """
    cfg.validate()
    several = bool(prompt_ids) and isinstance(prompt_ids[0], (list, tuple))
    prompts = [list(p) for p in prompt_ids] if several else [prompt_ids]
    for i, p in enumerate(prompts):
        if not p:
            raise LmlabError("the prompt is empty after tokenization; give a non-empty --prompt." if not several else
                             f"prompt {i + 1} of {len(prompts)} is empty after tokenization; give non-empty prompts.")
    batch = batch or cfg.num_return_sequences
    device = model_device(model)
    if torch.device(device).type == "cpu":
        from .runtime import tune_allocator

        tune_allocator()  # as the Trainer does: the step's large buffers (logits) reuse memory, no page faults
    generators = [g for _ in prompts for g in make_generators(cfg, first_sequence + batch)[first_sequence:]]
    rows = [p for p in prompts for _ in range(batch)]
    padding = Padding(model, [len(p) for p in rows], device)
    steps = max(cfg.new_tokens(len(p)) for p in prompts)
    width = max(len(p) for p in rows)
    # All the columns up front: each step writes its tokens into the next one (no per-step concatenation).
    buffer = torch.tensor([[p[0]] * (width - len(p)) + p + [0] * steps for p in rows], dtype=torch.long, device=device)
    bad_words = list(bad_words)
    state = None
    for t in range(width, width + steps):
        ids = buffer[:, :t]
        logprobs, state = padding.logprobs_next(model, ids, state)
        next_ids = choose_next(process_history(logprobs, ids, cfg, bad_words, padding.counts if several else None),
                               cfg, generators)
        yield next_ids, logprobs.gather(1, next_ids[:, None])[:, 0]
        buffer[:, t] = next_ids


def generate_ids(model, prompt_ids: list[int] | list[list[int]], cfg: GenerationConfig, first_sequence: int = 0,
                 batch: int | None = None) -> Iterator[torch.Tensor]:
    """Yield the next token of each of `batch` sequences [B] (of each prompt, if several), step by step,
    using the model's cache."""
    for next_ids, _ in sample_steps(model, prompt_ids, cfg, first_sequence, batch):
        yield next_ids


def crop_prompt(model, prompt_ids: list[int], warn: bool = True) -> list[int]:
    """A prompt longer than the model's context keeps its last block_size tokens (documented behaviour)."""
    block = getattr(model, "block_size", None)
    if block is not None and len(prompt_ids) > block:
        if warn:
            print(f"note: the prompt has {len(prompt_ids)} tokens, more than the model's context of {block}; "
                  f"only its last {block} tokens are used.", file=sys.stderr)
        return prompt_ids[-block:]
    return prompt_ids


# --------------------------------------------------------------------------- text, stop strings

class StopText:
    """The text of one sequence as its tokens arrive, ending exactly where a stop string begins.

    `add(id)` returns the text that is now certain: a tail that could be the start of a stop string is held
    back until the next tokens decide, so a stream never shows part of a stop string.
    """

    def __init__(self, tokenizer, stop: list[str], context: list[int] = ()):
        from .tokenizer import StreamDecoder

        self.decoder = StreamDecoder(tokenizer, context)  # context: the prompt's last token (see StreamDecoder)
        self.stop = list(stop)
        self.text, self.emitted, self.stopped = "", 0, False

    def add(self, token_id: int) -> str:
        return self._extend(self.decoder.add(token_id))

    def flush(self) -> str:
        out = self._extend(self.decoder.flush()) if not self.stopped else ""
        tail, self.emitted = self.text[self.emitted:], len(self.text)
        return out + tail

    def final(self) -> str:
        """The whole text once the sequence has ended (flushes what the decoder and the stop check held)."""
        self.flush()
        return self.text

    def _extend(self, piece: str) -> str:
        if self.stopped or not piece:
            return ""
        before = len(self.text)
        self.text += piece
        hits = [i for i in (self.text.find(s, max(0, before - len(s) + 1)) for s in self.stop) if i >= 0]
        if hits:
            self.text, self.stopped = self.text[:min(hits)], True
            safe = len(self.text)
        else:
            safe = len(self.text) - self._held()
        out, self.emitted = self.text[self.emitted:safe], max(self.emitted, safe)
        return out

    def _held(self) -> int:
        """Length of the longest tail of the text that is a proper prefix of a stop string."""
        longest = 0
        for s in self.stop:
            for k in range(min(len(s) - 1, len(self.text)), longest, -1):
                if self.text.endswith(s[:k]):
                    longest = k
                    break
        return longest


@dataclass
class Completion:
    text: str
    token_ids: list[int]  # the tokens behind `text` (up to and including the one that completed a stop string)
    logprobs: list[float]  # the model's natural-log probability of each of token_ids
    finish_reason: str  # "stop" (a stop string or end-of-text) or "length"


def encode_bad_words(tokenizer, cfg: GenerationConfig) -> list[list[int]]:
    """Token sequences of the bad words, as they appear inside text (with and without a leading space)."""
    out = []
    for word in cfg.bad_words:
        for variant in dict.fromkeys((word, " " + word)):
            ids = tokenizer.encode(variant)
            if ids and ids not in out:
                out.append(ids)
    return out


def complete(model, tokenizer, prompt: str | list[str], cfg: GenerationConfig | None = None, *, draft=None,
             stats: SpeculativeStats | None = None, **kwargs) -> list[Completion]:
    """cfg.num_return_sequences continuations of `prompt` with their tokens, log-probabilities and finish reason.

    With a `draft` model (load_draft: an n-gram or a smaller run sharing the tokenizer) decoding is speculative;
    `stats` then counts drafted and accepted tokens. A list of prompts gives one such list per prompt, decoded
    in one batch (complete_batch).
    """
    if not isinstance(prompt, str):
        return complete_batch(model, tokenizer, prompt, cfg, draft=draft, stats=stats, **kwargs)
    cfg = cfg or GenerationConfig(**kwargs)
    cfg.validate()
    if draft is not None:
        check_speculative(cfg)
    prompt_ids = crop_prompt(model, tokenizer.encode(prompt), warn=False)
    if cfg.num_beams > 1:
        return beam_search(model, tokenizer, prompt_ids, cfg)
    steps = (speculative_steps(model, draft, prompt_ids, cfg, stats=stats) if draft is not None else
             sample_steps(model, prompt_ids, cfg, bad_words=encode_bad_words(tokenizer, cfg)))
    n = cfg.num_return_sequences
    return collect_completions(tokenizer, cfg, steps, [cfg.new_tokens(len(prompt_ids))] * n, [prompt_ids[-1:]] * n)


def complete_batch(model, tokenizer, prompts: list[str], cfg: GenerationConfig | None = None, *, draft=None,
                   stats: SpeculativeStats | None = None, **kwargs) -> list[list[Completion]]:
    """complete() for several prompts at once: for each prompt, in order, its cfg.num_return_sequences completions.

    All rows are decoded in one batch; prompts of different lengths are left-padded (see Padding), and each
    prompt's completions are what complete() gives for it alone (greedy: the same tokens; log-probabilities
    equal to float rounding). Beam search and speculative decoding run the prompts one after another.
    """
    cfg = cfg or GenerationConfig(**kwargs)
    cfg.validate()
    if isinstance(prompts, str) or not isinstance(prompts, (list, tuple)) or not prompts:
        raise LmlabError("complete_batch needs a non-empty list of prompt strings.")
    for i, prompt in enumerate(prompts):
        if not isinstance(prompt, str):
            raise LmlabError(f"prompt {i + 1} of {len(prompts)} is a {type(prompt).__name__}, not a string.")
    if draft is not None or cfg.num_beams > 1:
        return [complete(model, tokenizer, prompt, cfg, draft=draft, stats=stats) for prompt in prompts]
    encoded = [crop_prompt(model, tokenizer.encode(prompt), warn=False) for prompt in prompts]
    n = cfg.num_return_sequences
    steps = sample_steps(model, encoded, cfg, bad_words=encode_bad_words(tokenizer, cfg))
    flat = collect_completions(tokenizer, cfg, steps, [cfg.new_tokens(len(ids)) for ids in encoded for _ in range(n)],
                               [ids[-1:] for ids in encoded for _ in range(n)])
    return [flat[i * n:(i + 1) * n] for i in range(len(prompts))]


def collect_completions(tokenizer, cfg: GenerationConfig, steps, limits: list[int],
                        contexts: list[list[int]] | None = None) -> list[Completion]:
    """Completions from the steps of a decoding loop; row r ends at end-of-text, a stop string or limits[r] tokens.
    contexts[r]: the end of row r's prompt, which its text continues (StopText)."""
    rows = len(limits)
    texts = [StopText(tokenizer, cfg.stop, contexts[r] if contexts else ()) for r in range(rows)]
    ids, logprobs = [[] for _ in range(rows)], [[] for _ in range(rows)]
    done = [False] * rows
    eot = getattr(tokenizer, "eot_id", None)
    for step, (next_ids, lps) in enumerate(steps):
        for row, (token, lp) in enumerate(zip(next_ids.tolist(), lps.tolist())):
            if done[row] or step >= limits[row]:
                continue
            if token == eot:
                done[row] = True
                continue
            ids[row].append(token)
            logprobs[row].append(lp)
            texts[row].add(token)
            done[row] = texts[row].stopped
        if all(d or step + 1 >= limit for d, limit in zip(done, limits)):
            break
    return [Completion(t.final(), i, lp, "stop" if d or t.stopped else "length")
            for t, i, lp, d in zip(texts, ids, logprobs, done)]


def generate(model, tokenizer, prompt: str | list[str], cfg: GenerationConfig | None = None,
             **kwargs) -> list[str] | list[list[str]]:
    """Generate cfg.num_return_sequences continuations of `prompt` (batched); return their texts
    (for a list of prompts: one list of texts per prompt)."""
    out = complete(model, tokenizer, prompt, cfg, **kwargs)
    return [c.text for c in out] if isinstance(prompt, str) else [[c.text for c in cs] for cs in out]


def stream(model, tokenizer, prompt: str, cfg: GenerationConfig, sequence: int = 0, *, draft=None,
           stats: SpeculativeStats | None = None) -> Iterator[str]:
    """Yield the text of one continuation piece by piece as tokens arrive (sequence index picks its seed)."""
    if draft is not None:
        check_speculative(cfg)
    if cfg.num_beams > 1:  # beam search knows its best sequence only at the end
        yield complete(model, tokenizer, prompt, cfg)[sequence].text
        return
    prompt_ids = crop_prompt(model, tokenizer.encode(prompt))
    text = StopText(tokenizer, cfg.stop, prompt_ids[-1:])
    eot = getattr(tokenizer, "eot_id", None)
    steps = (speculative_steps(model, draft, prompt_ids, cfg, first_sequence=sequence, batch=1, stats=stats)
             if draft is not None else
             sample_steps(model, prompt_ids, cfg, first_sequence=sequence, batch=1,
                          bad_words=encode_bad_words(tokenizer, cfg)))
    for next_ids, _ in steps:
        token = int(next_ids[0])
        if token == eot:
            break
        piece = text.add(token)
        if piece:
            yield piece
        if text.stopped:
            return
    tail = text.flush()
    if tail:
        yield tail


# --------------------------------------------------------------------------- beam search

def reorder(model, state, rows: torch.Tensor):
    """The model's cache for the chosen beams (rows of the previous state); None makes the model recompute."""
    if state is None or not hasattr(model, "reorder_state"):
        return None
    return model.reorder_state(state, rows)


def beam_search(model, tokenizer, prompt_ids: list[int], cfg: GenerationConfig) -> list[Completion]:
    """Beam search as Hugging Face runs it: 2 x num_beams candidates per step, hypotheses that reach
    end-of-text are kept with score sum log p / length ** length_penalty; the best num_return_sequences return."""
    if not prompt_ids:
        raise LmlabError("the prompt is empty after tokenization; give a non-empty --prompt.")
    device, k, eot = model_device(model), cfg.num_beams, getattr(tokenizer, "eot_id", None)
    bad_words = encode_bad_words(tokenizer, cfg)
    ids = torch.tensor([prompt_ids], dtype=torch.long, device=device)
    scores = torch.zeros(1, device=device)
    token_lps: list[list[float]] = [[]]
    finished: list[tuple[float, list[int], list[float], str]] = []  # (score, tokens, their log p, reason)
    state, steps = None, cfg.new_tokens(len(prompt_ids))
    norm = lambda total, length: total / max(length, 1) ** cfg.length_penalty
    for step in range(steps):
        logprobs, state = model.logprobs_next(ids, state)
        processed = process_history(logprobs, ids, cfg, bad_words).float().log_softmax(-1)
        candidates = (scores[:, None] + processed).view(-1)
        top = torch.topk(candidates, min(2 * k, candidates.numel()))
        rows, keep = [], []
        V = processed.size(-1)
        for total, flat in zip(top.values.tolist(), top.indices.tolist()):  # best first
            row, token = divmod(flat, V)
            if total == -math.inf:
                break
            lps = token_lps[row] + [float(logprobs[row, token])]
            if token == eot:
                finished.append((norm(total, step + 1), ids[row, len(prompt_ids):].tolist(), lps[:-1], "stop"))
            else:
                rows.append(row)
                keep.append((token, total, lps))
            if len(keep) == k:
                break
        if not keep or (cfg.early_stopping and len(finished) >= k) or _beams_done(finished, keep, k, step, norm):
            break
        index = torch.tensor(rows, device=device)
        ids = torch.cat([ids[index], torch.tensor([[t] for t, _, _ in keep], device=device)], dim=1)
        scores = torch.tensor([s for _, s, _ in keep], device=device)
        token_lps = [lps for _, _, lps in keep]
        state = reorder(model, state, index)
    else:
        keep = None
    running = [(norm(float(s), len(lps)), ids[i, len(prompt_ids):].tolist(), lps, "length")
               for i, (s, lps) in enumerate(zip(scores.tolist(), token_lps))] if keep is None else []
    best = sorted(finished + running, key=lambda h: -h[0])[:cfg.num_return_sequences]
    return [_beam_completion(tokenizer, cfg, token_ids, lps, reason, prompt_ids[-1:])
            for _, token_ids, lps, reason in best]


def _beam_completion(tokenizer, cfg, token_ids, lps, reason, context) -> Completion:
    """A finished beam as text, cut at the first stop string (beam search applies them at the end)."""
    text = StopText(tokenizer, cfg.stop, context)
    for used, token in enumerate(token_ids, start=1):
        text.add(token)
        if text.stopped:
            return Completion(text.text, token_ids[:used], lps[:used], "stop")
    return Completion(text.final(), token_ids, lps, "stop" if text.stopped else reason)


def _beams_done(finished, keep, k, step, norm) -> bool:
    """HF's default stopping rule: k finished hypotheses, and no running beam can still beat the worst of them."""
    if len(finished) < k:
        return False
    worst = sorted(h[0] for h in finished)[-k]
    return max(norm(total, step + 1) for _, total, _ in keep) <= worst


# --------------------------------------------------------------------------- speculative decoding

@dataclass
class SpeculativeStats:
    """How a speculative run went: draft tokens proposed and accepted, target forward passes."""
    drafted: int = 0
    accepted: int = 0
    target_calls: int = 0
    tokens: int = 0

    @property
    def acceptance_rate(self) -> float:
        return self.accepted / self.drafted if self.drafted else 0.0


def check_speculative(cfg: GenerationConfig) -> None:
    if cfg.num_beams > 1:
        raise LmlabError("speculative decoding (a draft model) works with greedy decoding and sampling, "
                         "not with beam search; drop --draft or --num-beams.")
    if cfg.repetition_penalty != 1.0 or cfg.no_repeat_ngram_size or cfg.bad_words:
        raise LmlabError("speculative decoding supports temperature, top-k, top-p and min-p; drop the "
                         "repetition penalty, no-repeat-ngram-size and bad words, or the draft model.")
    if cfg.num_draft_tokens < 1:
        raise LmlabError(f"num_draft_tokens must be >= 1, got {cfg.num_draft_tokens}.")


def warped_probs(logprobs: torch.Tensor, cfg: GenerationConfig) -> torch.Tensor:
    """The distribution sampling draws from: temperature, then top-k, top-p, min-p, softmax."""
    logits = apply_temperature(logprobs.float(), cfg.temperature)
    if cfg.top_k is not None:
        logits = apply_top_k(logits, cfg.top_k)
    if cfg.top_p is not None:
        logits = apply_top_p(logits, cfg.top_p)
    if cfg.min_p is not None:
        logits = apply_min_p(logits, cfg.min_p)
    return logits.softmax(-1)


def draw(probs: torch.Tensor, generator: torch.Generator) -> int:
    """One token from a probability vector by inverse CDF (one uniform draw, never a token of probability 0)."""
    cdf = probs.cumsum(-1)
    u = torch.rand((), generator=generator).to(cdf.device) * cdf[-1]
    return int(torch.searchsorted(cdf, u[None], right=True).clamp_(max=cdf.numel() - 1))


def logprobs_last(model, ids: torch.Tensor, state, n: int):
    """The model's next-token log-probabilities after each of the last n prefixes of ids: [B, n, V].
    One forward pass when the model has `logprobs_last` (GPT), else n cached calls of logprobs_next."""
    if hasattr(model, "logprobs_last"):
        return model.logprobs_last(ids, state, n)
    out = []
    for end in range(ids.shape[1] - n + 1, ids.shape[1] + 1):
        logprobs, state = model.logprobs_next(ids[:, :end], state)
        out.append(logprobs)
    return torch.stack(out, dim=1), state


def rollback(model, state, length: int):
    """The model's cache cut back to the first `length` tokens; None (recompute) when it cannot be cut."""
    if state is None or not hasattr(model, "rollback_state"):
        return None
    return model.rollback_state(state, length)


def speculate(model, draft, prompt_ids: list[int], cfg: GenerationConfig, generator: torch.Generator,
              limit: int, stats: SpeculativeStats) -> Iterator[tuple[int, float]]:
    """Up to `limit` tokens of one sequence, each with the target's log-probability, by speculative sampling
    (Leviathan et al. 2023, Algorithm 1; Chen et al. 2023): the draft proposes k tokens x_i ~ q_i, the target
    scores all k + 1 positions in one pass, x_i is kept with probability min(1, p_i(x_i) / q_i(x_i)); the first
    rejected one is replaced by a draw from norm(max(0, p_i - q_i)), and when all k are kept one more token comes
    from p_{k+1}. Every token is then distributed exactly as the target's (warped) p; greedy keeps the draft's
    tokens while they are the target's argmax, so its output is the target's greedy output."""
    greedy = cfg.temperature == 0
    device, draft_device = model_device(model), model_device(draft)
    ids, state, draft_state, produced = list(prompt_ids), None, None, 0
    while produced < limit:
        k = min(cfg.num_draft_tokens, limit - produced - 1)  # a round yields up to k + 1 tokens
        proposal, q = [], []
        for _ in range(k):
            logprobs, draft_state = draft.logprobs_next(torch.tensor([ids + proposal], device=draft_device),
                                                        draft_state)
            q.append(logprobs[0] if greedy else warped_probs(logprobs[0], cfg))
            proposal.append(int(q[-1].argmax()) if greedy else draw(q[-1], generator))
        target, state = logprobs_last(model, torch.tensor([ids + proposal], device=device), state, k + 1)
        target = target[0]
        stats.target_calls += 1
        out, accepted = [], 0
        for i, token in enumerate(proposal):
            if greedy:
                keep = int(target[i].argmax()) == token
            else:
                p = warped_probs(target[i], cfg).to(q[i].device)
                keep = float(torch.rand((), generator=generator)) * float(q[i][token]) < float(p[token])
            if keep:
                out.append(token)
                accepted += 1
                continue
            if greedy:
                out.append(int(target[i].argmax()))
            else:  # resample from the part of p that q under-proposes
                residual = (p - q[i]).clamp_(min=0)
                out.append(draw(residual if float(residual.sum()) > 0 else p, generator))
            break
        else:  # every draft token kept: one more from the target's last position
            out.append(int(target[k].argmax()) if greedy else draw(warped_probs(target[k], cfg), generator))
        stats.drafted += k
        stats.accepted += accepted
        state = rollback(model, state, len(ids) + accepted)
        draft_state = rollback(draft, draft_state, len(ids) + accepted)
        for i, token in enumerate(out):
            stats.tokens += 1
            yield token, float(target[i, token])
        ids += out
        produced += len(out)


def speculative_steps(model, draft, prompt_ids: list[int], cfg: GenerationConfig, first_sequence: int = 0,
                      batch: int | None = None, stats: SpeculativeStats | None = None
                      ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """sample_steps with a draft model: yield (next token [B], its log-probability [B]) step by step.
    Each sequence speculates on its own (sequences accept different numbers of draft tokens per round)."""
    cfg.validate()
    check_speculative(cfg)
    if not prompt_ids:
        raise LmlabError("the prompt is empty after tokenization; give a non-empty --prompt.")
    sizes = [getattr(m, "vocab_size", None) or m.cfg.vocab_size for m in (model, draft)]
    if sizes[0] != sizes[1]:
        raise LmlabError(f"the draft model has {sizes[1]} tokens and the model {sizes[0]}; "
                         "a draft must share the model's tokenizer.")
    batch = batch or cfg.num_return_sequences
    stats = stats if stats is not None else SpeculativeStats()
    limit = cfg.new_tokens(len(prompt_ids))
    generators = make_generators(cfg, first_sequence + batch)[first_sequence:]
    rows = [speculate(model, draft, prompt_ids, cfg, g, limit, stats) for g in generators]
    for _ in range(limit):
        pairs = [next(row) for row in rows]
        yield torch.tensor([t for t, _ in pairs]), torch.tensor([lp for _, lp in pairs])


def load_draft(path, tokenizer):
    """A draft model for a run with this tokenizer: an n-gram file (.arpa / .npz, seen through the run's
    tokenizer) or another run directory with the same tokenizer."""
    from .checkpoint import is_ngram_file, load

    if is_ngram_file(path):
        from .models.ngram import load_ngram

        return load_ngram(path).over_tokenizer(tokenizer)
    draft, draft_tokenizer = load(path)
    if draft_tokenizer.to_str() != tokenizer.to_str():
        raise LmlabError(f"the draft model {path} has another tokenizer than the model; a draft must share it.")
    return draft
