"""How a row's next token is chosen from the model's log-probabilities: one small class per rule (Hugging Face's
LogitsProcessor idea), chained once per request from its GenerationConfig (`Sampling.from_config`).

History processors look at the row's tokens so far: repetition penalty (CTRL, Keskar et al. 2019), no repeated
n-grams, banned words. Warpers reshape the distribution: temperature, top-k, top-p (nucleus, Holtzman et al.
2020), min-p (Nguyen et al. 2024). Greedy (temperature 0) and beam search use the history processors only;
sampling draws by inverse CDF with one uniform number from the row's own seeded generator, so sequence i is the
same whether it is drawn alone or in a batch.
"""
from __future__ import annotations

import math
import secrets

import torch


# --------------------------------------------------------------------------- the rules as functions

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


# --------------------------------------------------------------------------- the rules as objects

class RepetitionPenalty:
    def __init__(self, penalty: float):
        self.penalty = penalty

    def __call__(self, logprobs: torch.Tensor, history: list[int]) -> torch.Tensor:
        ids = torch.tensor([history], dtype=torch.long, device=logprobs.device)
        return apply_repetition_penalty(logprobs, ids, self.penalty)


class BannedTokens:
    """No repeated n-gram of size `ngram` and no bad word: the tokens that would make one get probability 0."""

    def __init__(self, ngram: int, bad_words: list[list[int]]):
        self.ngram, self.bad_words = ngram, bad_words

    def __call__(self, logprobs: torch.Tensor, history: list[int]) -> torch.Tensor:
        banned = banned_continuations(history, self.ngram) | banned_bad_words(history, self.bad_words)
        if banned:
            logprobs = logprobs.clone()
            logprobs[:, list(banned)] = float("-inf")
        return logprobs


class Warper:
    """A rule that reshapes the logits of every row with one setting, `value`, through its function `rule`."""

    rule = staticmethod(lambda logits, value: logits)

    def __init__(self, value: float):
        self.value = value

    def __call__(self, logits: torch.Tensor) -> torch.Tensor:
        return self.rule(logits, self.value)


class Temperature(Warper):
    rule = staticmethod(apply_temperature)


class TopK(Warper):
    rule = staticmethod(apply_top_k)


class TopP(Warper):
    rule = staticmethod(apply_top_p)


class MinP(Warper):
    rule = staticmethod(apply_min_p)


class Sampling:
    """The chain of one request: history processors, then (unless greedy) warpers and a seeded draw.

    `key` is equal for two chains that choose alike from the same processed log-probabilities, so rows of
    different requests are chosen for together (the server's batch).
    """

    def __init__(self, history: list, warpers: list, greedy: bool, key: tuple):
        self.history, self.warpers, self.greedy, self.key = history, warpers, greedy, key

    @classmethod
    def from_config(cls, cfg, bad_words: list[list[int]] = ()) -> "Sampling":
        history = []
        if cfg.repetition_penalty != 1.0:
            history.append(RepetitionPenalty(cfg.repetition_penalty))
        if cfg.no_repeat_ngram_size or bad_words:
            history.append(BannedTokens(cfg.no_repeat_ngram_size, list(bad_words)))
        warpers = [Temperature(cfg.temperature)] if cfg.temperature else []
        for value, rule in ((cfg.top_k, TopK), (cfg.top_p, TopP), (cfg.min_p, MinP)):
            if value is not None:
                warpers.append(rule(value))
        return cls(history, warpers, cfg.temperature == 0, (cfg.temperature, cfg.top_k, cfg.top_p, cfg.min_p))

    def process_history(self, logprobs: torch.Tensor, history: list[int]) -> torch.Tensor:
        """One row's log-probabilities [1, V] after the history processors."""
        for rule in self.history:
            logprobs = rule(logprobs, history)
        return logprobs

    def probs(self, logprobs: torch.Tensor) -> torch.Tensor:
        """The distribution sampling draws from: the warpers in order, then softmax."""
        logits = logprobs.float()
        for rule in self.warpers:
            logits = rule(logits)
        return logits.softmax(-1)

    def choose(self, logprobs: torch.Tensor, generators: list[torch.Generator]) -> torch.Tensor:
        """The next token of every row [B] (history already processed): argmax, or one draw per row."""
        if self.greedy:
            return logprobs.argmax(-1)
        cdf = self.probs(logprobs).cumsum(-1)
        # right=True: the first token whose cumulative mass exceeds u, never one of probability 0.
        u = torch.stack([torch.rand((), generator=g) for g in generators]).to(cdf.device) * cdf[:, -1]
        return torch.searchsorted(cdf, u[:, None], right=True).clamp_(max=cdf.size(-1) - 1)[:, 0]


def choose_next(logprobs: torch.Tensor, cfg, generators: list[torch.Generator]) -> torch.Tensor:
    """Pick the next token of every row: greedy when temperature is 0, else sample after the warpers."""
    return Sampling.from_config(cfg).choose(logprobs, generators)


def warped_probs(logprobs: torch.Tensor, cfg) -> torch.Tensor:
    """The distribution sampling draws from: temperature, then top-k, top-p, min-p, softmax."""
    return Sampling.from_config(cfg).probs(logprobs)


def draw(probs: torch.Tensor, generator: torch.Generator) -> int:
    """One token from a probability vector by inverse CDF (one uniform draw, never a token of probability 0)."""
    cdf = probs.cumsum(-1)
    u = torch.rand((), generator=generator).to(cdf.device) * cdf[-1]
    return int(torch.searchsorted(cdf, u[None], right=True).clamp_(max=cdf.numel() - 1))


def make_generators(cfg, n: int) -> list[torch.Generator]:
    """Sequence i draws from seed + i. No seed: a fresh one from the OS (torch.seed() would also reseed torch's
    global RNG, e.g. a training run's)."""
    seed = cfg.seed if cfg.seed is not None else secrets.randbits(31)
    return [torch.Generator().manual_seed(seed + i) for i in range(n)]
