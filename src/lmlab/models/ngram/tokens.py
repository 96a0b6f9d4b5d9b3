"""NGramOverTokens: an n-gram model seen through a run's tokenizer (a draft model for speculative decoding).

Reads: an NGramLM and the run's Tokenizer. Writes: next-token distributions over the run's token ids.
"""
from __future__ import annotations

import math

import numpy as np

from .tables import LN10, history_rows, sentence_context
from .vocab import EOS_ID, UNK_ID


class NGramOverTokens:
    """An n-gram model answering `logprobs_next` over another tokenizer's ids (a run's), so it can draft for
    that run. Each run token maps to the n-gram's word for it: its id in decimal (an n-gram counted with the
    run's tokenizer), its character (a char n-gram), or its text (a word n-gram); a token that decodes to a
    newline is </s>; run tokens the n-gram has no word for share <unk>'s probability equally."""

    def __init__(self, model, tokenizer):
        self.model, self.vocab_size = model, tokenizer.vocab_size
        words = model.scheme.run_words(tokenizer)
        self.to_ngram = np.array([EOS_ID if w == "\n" else model.vocab.index.get(w, UNK_ID) for w in words])
        unknown = self.to_ngram == UNK_ID
        self.unk_share = np.where(unknown, -math.log(max(int(unknown.sum()), 1)), 0.0)

    family = "ngram"
    block_size = None

    @property
    def device(self):
        import torch

        return torch.device("cpu")

    def _logprobs(self, row: list[int]) -> np.ndarray:
        """Natural-log distribution [V_run] of the run token after the run ids `row` (renormalised over the run's
        tokens: </s>, <unk>'s mass shared, unseen tokens)."""
        keep = self.model.order - 1
        tail = self.to_ngram[row[-keep:]].tolist() if keep > 0 and row else []
        out = self.model.next_log10(sentence_context(tail, keep))[self.to_ngram] * LN10 + self.unk_share
        return out - np.logaddexp.reduce(out)

    def logprobs_next(self, ids, state=None, pad=None):
        """Natural-log distributions [B, V_run] (float32) of the next run token after each row of run ids [B, T]
        (row b's real tokens start at column pad[b]). No state: (logprobs, None)."""
        import torch

        rows = history_rows(ids, pad)
        out = np.stack([self._logprobs(row) for row in rows]) if rows else np.zeros((0, self.vocab_size))
        return torch.from_numpy(out.astype(np.float32)), None

    def logprobs_last(self, ids, state, n: int):
        from ..base import logprobs_last_by_steps

        return logprobs_last_by_steps(self, ids, state, n)

    def num_parameters(self) -> int:
        return self.model.num_parameters()

    def token_logprobs(self, ids) -> np.ndarray:
        """Natural-log probability of each run token given the ones before it (the first one given <s>)."""
        ids = [int(i) for i in (ids.tolist() if hasattr(ids, "tolist") else ids)]
        return np.array([self._logprobs(ids[:t])[token] for t, token in enumerate(ids)], dtype=np.float64)
