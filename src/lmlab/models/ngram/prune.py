"""lmplz's --prune and --limit_vocab_file: which n-grams survive, and the tables renumbered without the others.

Reads: the thresholds / the allowed words, the Counts of every order (count.py); after estimation, the tables
(estimate.py). Writes: one keep mask per order (estimation gives the pruned mass to the contexts' backoffs), then
the pruned Vocab and tables.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ...errors import LmlabError
from ...tokenizer import split_words
from .corpus import read_text
from .count import Counts
from .tables import NGramTables
from .vocab import BOS_ID, EOS_ID, UNK_ID, Vocab


def prune_thresholds(prune, order: int) -> list[int] | None:
    """lmplz's rules: one threshold per order, the last repeated; non-decreasing; unigrams are not pruned."""
    if prune is None or len(prune) == 0:
        return None
    values = [int(x) for x in prune]
    if len(values) > order:
        raise LmlabError(f"--prune gives {len(values)} thresholds but the model has order {order}.")
    if any(v < 0 for v in values) or values[0] != 0:
        raise LmlabError("--prune thresholds must be >= 0 and the first (unigrams) must be 0, e.g. --prune 0 0 1.")
    if any(b < a for a, b in zip(values, values[1:])):
        raise LmlabError("--prune thresholds must not decrease (else a kept n-gram could lose its context).")
    values += [values[-1]] * (order - len(values))
    return values if any(values) else None


def allowed_words(vocab: Vocab, limit_vocab) -> np.ndarray | None:
    """Mask of words allowed by --limit-vocab-file (a path, or an iterable of words); specials always allowed."""
    if limit_vocab is None:
        return None
    if isinstance(limit_vocab, (str, os.PathLike)):
        words = split_words(read_text(Path(limit_vocab)).replace("\n", " "))  # lmplz's ASCII blanks and NUL
    else:
        words = list(limit_vocab)
    allowed = np.zeros(len(vocab), dtype=bool)
    allowed[[vocab.index[w] for w in words if w in vocab.index]] = True
    allowed[[UNK_ID, BOS_ID, EOS_ID]] = True
    return allowed


def keep_masks(counts: list[Counts], thresholds, allowed, V: int) -> list[np.ndarray] | None:
    """Which n-grams survive: raw count above the order's threshold and only allowed words (lmplz marks)."""
    if thresholds is None and allowed is None:
        return None
    keep = []
    for n, c in enumerate(counts):
        k = np.ones(len(c.keys), dtype=bool)
        if thresholds is not None and n > 0:
            k &= c.raw > thresholds[n]
        if allowed is not None:
            k &= allowed[c.keys % V if n > 0 else c.keys]
            if n > 0:
                k &= keep[n - 1][c.keys // V]
        keep.append(k)
    return keep


def apply_pruning(vocab: Vocab, tables: list[NGramTables], keep: list[np.ndarray]):
    """Drop pruned rows and renumber (monotonically, so keys stay sorted); prefixes of kept rows are kept."""
    old_V = len(vocab)
    word_map = np.cumsum(keep[0]) - 1
    new_vocab = Vocab([w for w, k in zip(vocab.words, keep[0]) if k])
    V = len(new_vocab)
    out = [NGramTables(np.arange(V, dtype=np.int64), tables[0].prob[keep[0]], tables[0].backoff[keep[0]])]
    row_map = word_map
    for n in range(1, len(tables)):
        t, k = tables[n], keep[n]
        keys = t.keys[k]
        new_keys = row_map[keys // old_V] * V + word_map[keys % old_V]
        out.append(NGramTables(new_keys, t.prob[k], t.backoff[k]))
        row_map = np.cumsum(k) - 1
    return new_vocab, out
