"""Speculative decoding (Leviathan et al. 2023, Algorithm 1; Chen et al. 2023) with any CausalLM as the draft.

The draft proposes k tokens x_i ~ q_i, the target scores all k + 1 positions in one pass (`logprobs_last`), x_i
is kept with probability min(1, p_i(x_i) / q_i(x_i)); the first rejected one is replaced by a draw from
norm(max(0, p_i - q_i)), and when all k are kept one more token comes from p_{k+1}. Every token is then
distributed exactly as the target's (warped) p; greedy keeps the draft's tokens while they are the target's
argmax, so its output is the target's greedy output. Both models' states are rolled back past rejected tokens
(DecodeState.rollback; a state that cannot go back is recomputed). The tokens it yields end rows by the same
rule as every other path (decoding.Row.accept).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import torch

from .errors import LmlabError
from .sampling import Sampling, draw, make_generators


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


def check_speculative(cfg) -> None:
    if cfg.num_beams > 1:
        raise LmlabError("speculative decoding (a draft model) works with greedy decoding and sampling, "
                         "not with beam search; drop --draft or --num-beams.")
    if cfg.repetition_penalty != 1.0 or cfg.no_repeat_ngram_size or cfg.bad_words:
        raise LmlabError("speculative decoding supports temperature, top-k, top-p and min-p; drop the "
                         "repetition penalty, no-repeat-ngram-size and bad words, or the draft model.")
    if cfg.num_draft_tokens < 1:
        raise LmlabError(f"num_draft_tokens must be >= 1, got {cfg.num_draft_tokens}.")


def _rollback(state, length: int):
    return None if state is None else state.rollback(length)


def speculate(model, draft, prompt_ids: list[int], cfg, generator: torch.Generator, limit: int,
              stats: SpeculativeStats) -> Iterator[tuple[int, float]]:
    """Up to `limit` tokens of one sequence, each with the target's log-probability (see the module docstring)."""
    greedy = cfg.temperature == 0
    warp = Sampling.from_config(cfg).probs
    ids, state, draft_state, produced = list(prompt_ids), None, None, 0
    while produced < limit:
        k = min(cfg.num_draft_tokens, limit - produced - 1)  # a round yields up to k + 1 tokens
        proposal, q = [], []
        for _ in range(k):
            logprobs, draft_state = draft.logprobs_next(torch.tensor([ids + proposal], device=draft.device),
                                                        draft_state)
            q.append(logprobs[0] if greedy else warp(logprobs[0]))
            proposal.append(int(q[-1].argmax()) if greedy else draw(q[-1], generator))
        target, state = model.logprobs_last(torch.tensor([ids + proposal], device=model.device), state, k + 1)
        target = target[0]
        stats.target_calls += 1
        out, accepted = [], 0
        for i, token in enumerate(proposal):
            if greedy:
                keep = int(target[i].argmax()) == token
            else:
                p = warp(target[i]).to(q[i].device)
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
            out.append(int(target[k].argmax()) if greedy else draw(warp(target[k]), generator))
        stats.drafted += k
        stats.accepted += accepted
        state = _rollback(state, len(ids) + accepted)
        draft_state = _rollback(draft_state, len(ids) + accepted)
        for i, token in enumerate(out):
            stats.tokens += 1
            yield token, float(target[i, token])
        ids += out
        produced += len(out)


def speculative_steps(model, draft, prompt_ids: list[int], cfg, first_sequence: int = 0,
                      batch: int | None = None, stats: SpeculativeStats | None = None
                      ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """sample_steps with a draft model: yield (next token [B], its log-probability [B]) step by step.
    Each sequence speculates on its own (sequences accept different numbers of draft tokens per round)."""
    cfg.validate()
    check_speculative(cfg)
    if not prompt_ids:
        raise LmlabError("the prompt is empty after tokenization; give a non-empty --prompt.")
    if model.vocab_size != draft.vocab_size:
        raise LmlabError(f"the draft model has {draft.vocab_size} tokens and the model {model.vocab_size}; "
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
    """A draft model for a run with this tokenizer: an n-gram file (.arpa / .npz / .lmbin, seen through the run's
    tokenizer) or another run directory with the same tokenizer."""
    from .checkpoint import is_ngram_file, load

    if is_ngram_file(path):
        from .models.ngram import load_ngram

        return load_ngram(path).over_tokenizer(tokenizer)
    draft, draft_tokenizer = load(path)
    if draft_tokenizer.to_str() != tokenizer.to_str():
        raise LmlabError(f"the draft model {path} has another tokenizer than the model; a draft must share it.")
    return draft
