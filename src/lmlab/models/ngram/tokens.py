"""NGramOverTokens: an n-gram model seen through a run's tokenizer (a draft model for speculative decoding).

Reads: an NGramLM and the run's Tokenizer. Writes: next-token distributions over the run's token ids.
"""
from __future__ import annotations

import math

import numpy as np

from .tables import LN10, sentence_context
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

    @property
    def block_size(self) -> None:
        return None

    def logprobs_next(self, ids, state=None):
        """Natural-log distribution [B, V_run] of the next run token after each row of run ids [B, T]."""
        import torch

        keep = self.model.order - 1
        rows = ids.tolist() if hasattr(ids, "tolist") else [list(r) for r in ids]
        out = np.empty((len(rows), self.vocab_size), dtype=np.float64)
        for b, row in enumerate(rows):
            tail = self.to_ngram[row[-keep:]].tolist() if keep > 0 else []
            out[b] = self.model.next_log10(sentence_context(tail, keep))[self.to_ngram] * LN10 + self.unk_share
        out -= np.logaddexp.reduce(out, axis=1, keepdims=True)  # renormalise (</s>, <unk> mass, unseen tokens)
        return torch.from_numpy(out.astype(np.float32)), state
