"""One generation loop for every causal model (GPT, RNN, n-gram): it only calls `logprobs_next`.

Each step turns the model's next-token log-probabilities into a choice: the logits processors
(temperature, top-k, top-p) reshape the distribution, then a sequence's own seeded generator
draws from it, so sample i is the same whether it is drawn alone or in a batch.
"""
from __future__ import annotations

import secrets
import sys
from dataclasses import dataclass
from typing import Iterator

import torch

from .errors import LmlabError


@dataclass
class GenerationConfig:
    max_new_tokens: int = 200
    temperature: float = 1.0  # 0 = greedy
    top_k: int | None = None  # keep the k most likely tokens
    top_p: float | None = None  # keep the smallest set with probability >= top_p (nucleus, Holtzman et al. 2020)
    num_return_sequences: int = 1
    seed: int | None = None

    def validate(self) -> None:
        if self.max_new_tokens < 0:
            raise LmlabError(f"max_new_tokens must be >= 0, got {self.max_new_tokens}.")
        if self.temperature < 0:
            raise LmlabError(f"temperature must be >= 0, got {self.temperature}.")
        if self.top_k is not None and self.top_k < 1:
            raise LmlabError(f"top_k must be >= 1, got {self.top_k}.")
        if self.top_p is not None and not 0 < self.top_p <= 1:
            raise LmlabError(f"top_p must be in (0, 1], got {self.top_p}.")
        if self.num_return_sequences < 1:
            raise LmlabError(f"num_return_sequences must be >= 1, got {self.num_return_sequences}.")


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


def choose_next(logprobs: torch.Tensor, cfg: GenerationConfig, generators: list[torch.Generator]) -> torch.Tensor:
    """Pick the next token of every row: greedy when temperature is 0, else sample."""
    if cfg.temperature == 0:
        return logprobs.argmax(-1)
    logits = apply_temperature(logprobs.float(), cfg.temperature)
    if cfg.top_k is not None:
        logits = apply_top_k(logits, cfg.top_k)
    if cfg.top_p is not None:
        logits = apply_top_p(logits, cfg.top_p)
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


def generate_ids(model, prompt_ids: list[int], cfg: GenerationConfig, first_sequence: int = 0,
                 batch: int | None = None) -> Iterator[torch.Tensor]:
    """Yield the next token of each of `batch` sequences [B], step by step, using the model's cache.

    Sequence i (counting from `first_sequence`) draws from generator seed + i.
    """
    cfg.validate()
    if not prompt_ids:
        raise LmlabError("the prompt is empty after tokenization; give a non-empty --prompt.")
    batch = batch or cfg.num_return_sequences
    generators = make_generators(cfg, first_sequence + batch)[first_sequence:]
    device = next(iter(model.parameters()), torch.empty(0)).device if hasattr(model, "parameters") else "cpu"
    ids = torch.tensor([prompt_ids] * batch, dtype=torch.long, device=device)
    state = None
    for _ in range(cfg.max_new_tokens):
        logprobs, state = model.logprobs_next(ids, state)
        next_ids = choose_next(logprobs, cfg, generators)
        ids = torch.cat([ids, next_ids[:, None]], dim=1)
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


def generate(model, tokenizer, prompt: str, cfg: GenerationConfig | None = None, **kwargs) -> list[str]:
    """Generate cfg.num_return_sequences continuations of `prompt` (batched); return their texts."""
    cfg = cfg or GenerationConfig(**kwargs)
    prompt_ids = crop_prompt(model, tokenizer.encode(prompt), warn=False)
    steps = list(generate_ids(model, prompt_ids, cfg))
    if not steps:
        return [""] * cfg.num_return_sequences
    new = torch.stack(steps, dim=1).tolist()
    return [tokenizer.decode(row) for row in new]


def stream(model, tokenizer, prompt: str, cfg: GenerationConfig, sequence: int = 0) -> Iterator[str]:
    """Yield the text of one continuation piece by piece as tokens arrive (sequence index picks its seed)."""
    from .tokenizer import StreamDecoder

    prompt_ids = crop_prompt(model, tokenizer.encode(prompt))
    decoder = StreamDecoder(tokenizer)
    for next_ids in generate_ids(model, prompt_ids, cfg, first_sequence=sequence, batch=1):
        piece = decoder.add(int(next_ids[0]))
        if piece:
            yield piece
    tail = decoder.flush()
    if tail:
        yield tail
