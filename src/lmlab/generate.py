"""Generation from any causal LM: the public calls (`complete`, `complete_batch`, `generate`, `stream`,
`sample_steps`, `generate_ids`) and their settings (`GenerationConfig`, Hugging Face's names).

Every call builds `decoding.Row`s from the prompts and the config and runs them on the one driver
(lmlab.decoding: the batch, left padding, the context limit, the finishing rule); sampling rules are
lmlab.sampling's, beam search is lmlab.beam's, speculative decoding lmlab.speculative's. Sequence i of a
prompt draws from seed + i, so it is the same alone, in a batch of several prompts or streamed.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass, field
from typing import Iterator

import torch

from .beam import beam_search  # noqa: F401  (the generation API in one place)
from .decoding import Batch, Completion, Row, StopText, advance, choose, decode, end_ids  # noqa: F401
from .errors import LmlabError
from .sampling import (Sampling, apply_min_p, apply_repetition_penalty, apply_temperature, apply_top_k,  # noqa: F401
                       apply_top_p, banned_bad_words, banned_continuations, choose_next, draw, make_generators,
                       warped_probs)
from .speculative import SpeculativeStats, check_speculative, load_draft, speculative_steps  # noqa: F401


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
    stop_token_ids: list[int] = field(default_factory=list)  # and at these tokens (a chat template's turn end)
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


# --------------------------------------------------------------------------- lower-precision decoding

DECODING_DTYPES = ("fp32", "fp16", "bf16", "int8")


def decoding_model(model, dtype: str = "fp32"):
    """An opt-in lower-precision copy of a torch model for decoding; the model itself is left as it is.

    "fp16": every nn.Linear weight (the tied LM head and embedding included) rounded to float16, the arithmetic
    still float32: on CPU the decoding kernels keep those weights as float16, half the bytes to read per token,
    which is what bounds batch-1 decoding (models/kernels.py); elsewhere the copy runs as fp32 does.
    "bf16": weights, activations and KV cache in bfloat16 (log-probabilities still come out in float32).
    "int8": every nn.Linear weight (LM head and embedding included) rounded to int8 values times one float32
    scale per output channel (absmax / 127), the activations left in float32 ("weight-only", as llama.cpp's
    Q8_0 but with one scale per row): on CPU the kernels read the int8 values, a quarter of fp32's bytes.
    (torch's dynamic quantization, which also quantizes each activation tensor to 8 bits, is not used: Llama
    activations have outlier channels that it destroys, logits off by 30 on SmolLM2.) All three change the
    numbers (benchmarks/generate_throughput.py and llama_decode.py report the logit error against
    fp32). "fp32" returns the model unchanged. Models without weights (n-gram) are returned as they are.
    """
    import copy

    if dtype not in DECODING_DTYPES:
        raise LmlabError(f"dtype must be one of {', '.join(DECODING_DTYPES)}, got {dtype!r}.")
    if dtype == "fp32" or not isinstance(model, torch.nn.Module):
        return model
    if dtype == "bf16":
        return copy.deepcopy(model).to(torch.bfloat16).eval()
    from .models import kernels

    rounded = copy.deepcopy(model).eval()
    with torch.no_grad():
        for module in rounded.modules():
            if type(module) is torch.nn.Linear:
                if dtype == "fp16":
                    module.weight.copy_(module.weight.half())
                else:
                    q, scale = kernels.int8_rows(module.weight)
                    module.weight.copy_(q * scale[:, None])
                setattr(module, kernels.WEIGHT_FORMAT, dtype)
    return rounded


def crop_prompt(model, prompt_ids: list[int], warn: bool = True) -> list[int]:
    """A prompt longer than the model's context keeps its last block_size tokens (documented behaviour)."""
    block = model.block_size
    if block is not None and len(prompt_ids) > block:
        if warn:
            print(f"note: the prompt has {len(prompt_ids)} tokens, more than the model's context of {block}; "
                  f"only its last {block} tokens are used.", file=sys.stderr)
        return prompt_ids[-block:]
    return prompt_ids


def encode_bad_words(tokenizer, cfg: GenerationConfig) -> list[list[int]]:
    """Token sequences of the bad words, as they appear inside text (with and without a leading space)."""
    out = []
    for word in cfg.bad_words:
        for variant in dict.fromkeys((word, " " + word)):
            ids = tokenizer.encode(variant)
            if ids and ids not in out:
                out.append(ids)
    return out


# --------------------------------------------------------------------------- rows from prompts

def make_rows(tokenizer, prompts: list[list[int]], cfg: GenerationConfig, first_sequence: int = 0,
              n: int | None = None) -> list[Row]:
    """n rows per prompt (cfg.num_return_sequences by default), prompt after prompt; sequence i of each prompt
    draws from seed + first_sequence + i; each row ends at end-of-text, a stop string or cfg's token limit."""
    n = n or cfg.num_return_sequences
    sampling = Sampling.from_config(cfg, encode_bad_words(tokenizer, cfg))
    rows = []
    for prompt in prompts:
        for g in make_generators(cfg, first_sequence + n)[first_sequence:]:
            rows.append(Row(prompt, sampling, g, cfg.new_tokens(len(prompt)),
                            StopText(tokenizer, cfg.stop, prompt[-1:]), end_ids(tokenizer, cfg)))
    return rows


def _prompt_list(prompt_ids) -> tuple[list[list[int]], bool]:
    """One prompt (a list of ids) or several (a list of lists); an empty one is a user error."""
    several = bool(prompt_ids) and isinstance(prompt_ids[0], (list, tuple))
    prompts = [list(p) for p in prompt_ids] if several else [list(prompt_ids)]
    for i, p in enumerate(prompts):
        if not p:
            raise LmlabError("the prompt is empty after tokenization; give a non-empty --prompt." if not several else
                             f"prompt {i + 1} of {len(prompts)} is empty after tokenization; give non-empty prompts.")
    return prompts, several


def sample_steps(model, prompt_ids: list[int] | list[list[int]], cfg: GenerationConfig, first_sequence: int = 0,
                 batch: int | None = None, bad_words: list[list[int]] = ()) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Yield (next token [B], its log-probability under the model [B]) of each of `batch` sequences, step by step.

    Sequence i (counting from `first_sequence`) draws from generator seed + i. The log-probability is the
    model's own, before any processor or warper (what scoring and the API's logprobs report). `prompt_ids` is one
    prompt or several (then each has `batch` rows, prompt after prompt, decoded in one batch); the steps run to
    the longest prompt's limit, and no row ends early (no tokenizer here: end-of-text is just a token).
    """
    cfg.validate()
    prompts, _ = _prompt_list(prompt_ids)
    batch = batch or cfg.num_return_sequences
    steps = max(cfg.new_tokens(len(p)) for p in prompts)
    sampling = Sampling.from_config(cfg, list(bad_words))
    rows = [Row(p, sampling, g, steps) for p in prompts
            for g in make_generators(cfg, first_sequence + batch)[first_sequence:]]
    if not steps:
        return
    driver = Batch(model)
    logprobs = driver.add(rows)
    for i in range(steps):
        tokens = choose(rows, logprobs)  # (no row ends here: only the histories grow)
        yield tokens, logprobs.gather(1, tokens[:, None])[:, 0]
        for row, token in zip(rows, tokens.tolist()):
            row.history.append(token)
        if i + 1 < steps:
            logprobs = driver.step(tokens)


def generate_ids(model, prompt_ids: list[int] | list[list[int]], cfg: GenerationConfig, first_sequence: int = 0,
                 batch: int | None = None) -> Iterator[torch.Tensor]:
    """Yield the next token of each of `batch` sequences [B] (of each prompt, if several), step by step,
    using the model's cache."""
    for next_ids, _ in sample_steps(model, prompt_ids, cfg, first_sequence, batch):
        yield next_ids


def _feed(rows: list[Row], steps) -> Iterator[str]:
    """Pass tokens that come from elsewhere (speculative decoding) to the rows; yield row 0's text pieces."""
    for next_ids, lps in steps:
        for r, token, lp in zip(rows, next_ids.tolist(), lps.tolist()):
            if r.finish is None:
                piece = r.accept(token, lp)
                if piece and r is rows[0]:
                    yield piece
        if all(r.finish is not None for r in rows):
            return


def _run(model, rows: list[Row], steps=None) -> None:
    """Decode the rows to their end: on the driver, or from the given steps (speculative decoding)."""
    for _ in (_feed(rows, steps) if steps is not None else decode(model, rows)):
        pass


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
    rows = make_rows(tokenizer, _prompt_list(prompt_ids)[0], cfg)
    _run(model, rows, speculative_steps(model, draft, prompt_ids, cfg, stats=stats) if draft is not None else None)
    return [r.completion() for r in rows]


def complete_batch(model, tokenizer, prompts: list[str], cfg: GenerationConfig | None = None, *, draft=None,
                   stats: SpeculativeStats | None = None, **kwargs) -> list[list[Completion]]:
    """complete() for several prompts at once: for each prompt, in order, its cfg.num_return_sequences completions.

    All rows are decoded in one batch; prompts of different lengths are left-padded, and each prompt's
    completions are what complete() gives for it alone (greedy: the same tokens; log-probabilities equal to
    float rounding). Beam search and speculative decoding run the prompts one after another.
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
    encoded, _ = _prompt_list([crop_prompt(model, tokenizer.encode(prompt), warn=False) for prompt in prompts])
    rows = make_rows(tokenizer, encoded, cfg)
    _run(model, rows)
    n = cfg.num_return_sequences
    return [[r.completion() for r in rows[i * n:(i + 1) * n]] for i in range(len(prompts))]


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
    cfg.validate()
    prompt_ids = crop_prompt(model, tokenizer.encode(prompt))
    rows = make_rows(tokenizer, _prompt_list(prompt_ids)[0], cfg, first_sequence=sequence, n=1)
    if draft is not None:
        yield from _feed(rows, speculative_steps(model, draft, prompt_ids, cfg, first_sequence=sequence, batch=1,
                                                 stats=stats))
        return
    for _, step in decode(model, rows):
        if step.texts[0]:
            yield step.texts[0]


def generate_command(run, cfg: GenerationConfig, prompt: str = "\n", draft=None, stream_output: bool = True,
                     logprobs: bool = False, device: str = "cpu", dtype: str = "fp32") -> None:
    """`lmlab generate`: the prompt and each continuation on stdout, streamed as tokens arrive (beam search and
    --logprobs print each sequence when it is done); with --draft, speculative decoding's acceptance on stderr."""
    from .checkpoint import load
    from .models.base import require_causal
    from .runtime import resolve_device

    cfg.validate()
    if draft:
        check_speculative(cfg)
    model, tokenizer = load(run, device=str(resolve_device(device)))
    require_causal(model, run)
    model = decoding_model(model, dtype)
    draft_model = load_draft(draft, tokenizer) if draft else None
    stats = SpeculativeStats()
    if not tokenizer.encode(prompt):  # unknown characters fail here, before the prompt is echoed
        raise LmlabError("the prompt is empty after tokenization; give a non-empty --prompt.")
    streaming = stream_output and cfg.num_beams == 1 and not logprobs
    completions = None if streaming else complete(model, tokenizer, prompt, cfg, draft=draft_model, stats=stats)
    for i in range(cfg.num_return_sequences):
        if cfg.num_return_sequences > 1:
            print(f"--- sample {i + 1} ---", flush=True)
        sys.stdout.write(prompt)
        pieces = (stream(model, tokenizer, prompt, cfg, sequence=i, draft=draft_model, stats=stats) if streaming
                  else [completions[i].text])
        for piece in pieces:
            sys.stdout.write(piece)
            sys.stdout.flush()
        sys.stdout.write("\n")
        if logprobs:
            c = completions[i]
            for token, lp in zip(c.token_ids, c.logprobs):
                sys.stdout.write(f"{token}\t{tokenizer.decode([token])!r}\t{lp:.4f}\n")
            sys.stdout.write(f"total log p {sum(c.logprobs):.4f} over {len(c.logprobs)} tokens ({c.finish_reason})\n")
    sys.stdout.flush()
    if draft_model is not None:
        print(f"speculative decoding: accepted {stats.accepted:,} of {stats.drafted:,} draft tokens "
              f"({stats.acceptance_rate:.0%}); {stats.tokens:,} tokens in {stats.target_calls:,} passes of the model",
              file=sys.stderr)
