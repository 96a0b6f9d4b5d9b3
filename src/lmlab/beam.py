"""Beam search as Hugging Face runs it, on the one decoding driver (decoding.Batch: the beams are its rows).

Each step keeps the best 2 x num_beams candidates; a hypothesis that reaches end-of-text is finished with score
sum log p / length ** length_penalty; the search ends when no running beam can beat the worst of num_beams
finished ones (or, with early_stopping, as soon as there are num_beams). The model's state is reordered to the
surviving beams, not recomputed. Stop strings are applied to each returned hypothesis at the end.
"""
from __future__ import annotations

import math

import torch

from .decoding import Batch, Completion, Row, StopText, end_ids
from .errors import LmlabError
from .sampling import Sampling


def beam_search(model, tokenizer, prompt_ids: list[int], cfg) -> list[Completion]:
    """The best cfg.num_return_sequences hypotheses continuing prompt_ids, best first."""
    from .generate import encode_bad_words

    if not prompt_ids:
        raise LmlabError("the prompt is empty after tokenization; give a non-empty --prompt.")
    k, ends = cfg.num_beams, end_ids(tokenizer, cfg)
    sampling = Sampling.from_config(cfg, encode_bad_words(tokenizer, cfg))
    steps = cfg.new_tokens(len(prompt_ids))
    beams = [Row(prompt_ids, sampling, None, steps)]
    batch = Batch(model)
    logprobs = batch.add(beams) if steps else None
    scores = torch.zeros(1, device=model.device)
    finished: list[tuple[float, list[int], list[float], str, float]] = []  # (score, tokens, their log p, reason,
    # log p of the end-of-text token)
    norm = lambda total, length: total / max(length, 1) ** cfg.length_penalty  # noqa: E731
    for step in range(steps):
        processed = torch.cat([sampling.process_history(logprobs[i:i + 1], b.history) for i, b in enumerate(beams)])
        processed = processed.float().log_softmax(-1)
        candidates = (scores[:, None] + processed).view(-1)
        top = torch.topk(candidates, min(2 * k, candidates.numel()))
        parents, keep = [], []
        V = processed.size(-1)
        for total, flat in zip(top.values.tolist(), top.indices.tolist()):  # best first
            row, token = divmod(flat, V)
            if total == -math.inf:
                break
            lps = beams[row].logprobs + [float(logprobs[row, token])]
            if token in ends:
                finished.append((norm(total, step + 1), list(beams[row].tokens), lps[:-1], "stop", lps[-1]))
            else:
                parents.append(row)
                keep.append((token, total, lps))
            if len(keep) == k:
                break
        if not keep or (cfg.early_stopping and len(finished) >= k) or _done(finished, keep, k, step, norm):
            break
        beams = [_child(beams[p], token, lps) for p, (token, _, lps) in zip(parents, keep)]
        scores = torch.tensor([s for _, s, _ in keep], device=scores.device)
        batch.reorder(parents, beams)
        if step + 1 < steps:
            logprobs = batch.step()
    else:
        keep = None
    running = [(norm(float(s), len(b.tokens)), b.tokens, b.logprobs, "length", 0.0)
               for s, b in zip(scores.tolist(), beams)] if keep is None else []
    best = sorted(finished + running, key=lambda h: -h[0])[:cfg.num_return_sequences]
    return [_completion(tokenizer, cfg, tokens, lps, reason, prompt_ids[-1:], end)
            for _, tokens, lps, reason, end in best]


def _child(parent: Row, token: int, logprobs: list[float]) -> Row:
    """A beam one token longer than its parent."""
    row = Row(parent.history + [token], parent.sampling, None, parent.limit)
    row.tokens, row.logprobs = parent.tokens + [token], logprobs
    return row


def _completion(tokenizer, cfg, tokens, lps, reason, context, end_logprob: float = 0.0) -> Completion:
    """A finished hypothesis as text, cut at the first stop string by the rows' own finishing rule."""
    row = Row(context, None, None, len(tokens), StopText(tokenizer, cfg.stop, context))
    for token, lp in zip(tokens, lps):
        row.accept(token, lp)
        if row.finish:
            break
    done = row.completion()
    if row.finish == "stop" and len(done.token_ids) < len(tokens):
        end_logprob = 0.0  # cut at a stop string: the end-of-text token is not part of it
    return Completion(done.text, done.token_ids, done.logprobs, "stop" if row.finish == "stop" else reason,
                      end_logprob)


def _done(finished, keep, k, step, norm) -> bool:
    """HF's default stopping rule: k finished hypotheses, and no running beam can still beat the worst of them."""
    if len(finished) < k:
        return False
    worst = sorted(h[0] for h in finished)[-k]
    return max(norm(total, step + 1) for _, total, _ in keep) <= worst
