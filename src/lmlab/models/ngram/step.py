"""One word at a time: log10 p(word | state) and the next state, as ``kenlm.Model.BaseScore`` steps a State.

A state is a tuple of word ids, oldest first: the last order - 1 words of the sentence so far, beginning with <s>
(id 1) at a sentence start, or empty for no context (KenLM's NullContextState). The probability is the ARPA
backoff one (tables.log10_stream, the path every other query takes), so a walk through a sentence adds up to
NGramLM.full_scores. KenLM trims its state to the longest context that has extensions; the probabilities are the
same either way.

Reads: an NGramLM's tables and a state. Writes: log10 probabilities and states.
"""
from __future__ import annotations

from functools import lru_cache

import numpy as np

from . import tables as tbl
from .vocab import BOS_ID, EOS_ID


class Stepper:
    """Word-by-word scoring of one model, memoised per (state, word id)."""

    def __init__(self, model, cache_size: int = 1 << 20):
        self.model = model
        self.keep = model.order - 1
        self.step = lru_cache(maxsize=cache_size)(self._step)

    def begin_sentence(self) -> tuple:
        return (BOS_ID,) if self.keep > 0 else ()

    def null_context(self) -> tuple:
        return ()

    def word_id(self, word: str) -> int:
        """The id of a word (<unk>'s for a word not in the vocabulary)."""
        return self.model.vocab.ids([word])[0]

    def _step(self, state: tuple, word_id: int) -> tuple[float, tuple]:
        """(log10 p(word | state), the state after the word)."""
        tokens = np.array((-1, *state, word_id), dtype=np.int64)  # -1 matches nothing: no context before state
        logp, _ = tbl.log10_stream(self.model.tables, tokens, np.arange(len(tokens), dtype=np.int64))
        after = (*state, word_id)[-self.keep:] if self.keep > 0 else ()
        return float(logp[-1]), after

    def end_score(self, state: tuple) -> float:
        """log10 p(</s> | state)."""
        return self.step(state, EOS_ID)[0]
