"""The model's tables and the lookups in them (KenLM's trie, flattened into sorted NumPy arrays).

An n-gram of order n is one int64 key, ``key = prefix_row * V + last_word``, where ``prefix_row`` is the row of
its first n-1 words in the order n-1 table (order 1: the word id itself, the table holds every word). Sorted
keys sort n-grams lexicographically, the children of a context are one contiguous range, and a lookup is
``np.searchsorted``. Probabilities and backoffs are log10, as ARPA stores them (ARPA backoff semantics).

Reads: one NGramTables per order (estimate.py, arpa.py, the .npz). Writes: table rows, log10 probabilities.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from .vocab import BOS_ID, EOS_ID

LN10 = math.log(10.0)


@dataclass
class NGramTables:
    """One order of the model: sorted keys (prefix_row * V + word), log10 probs and log10 backoffs."""
    keys: np.ndarray
    prob: np.ndarray
    backoff: np.ndarray


def lookup(tables: list[NGramTables], n: int, prefix_rows, words: np.ndarray) -> np.ndarray:
    """Row of each n-gram (prefix row in order n-1, last word) in the order-n table; -1 if absent."""
    V = len(tables[0].keys)
    keys = tables[n - 1].keys
    if n == 1:
        return np.where((words >= 0) & (words < V), words, -1)
    query = prefix_rows * V + words
    if len(keys) == 0:  # an order emptied by pruning
        return np.full(np.shape(query), -1, dtype=np.int64)
    row = np.searchsorted(keys, query)
    row_c = np.minimum(row, len(keys) - 1)
    found = (prefix_rows >= 0) & (len(keys) > 0) & (keys[row_c] == query)
    return np.where(found, row_c, -1)


def rows_of(tables: list[NGramTables], rows: np.ndarray) -> np.ndarray:
    """Row in the table of order rows.shape[1] of each word-id row (-1 if absent)."""
    cur = None
    for n in range(1, rows.shape[1] + 1):
        cur = lookup(tables, n, cur, rows[:, n - 1])
        if n > 1:
            cur = np.where(prev_ok, cur, -1)
        prev_ok = cur >= 0
    return cur


def context_row(tables: list[NGramTables], words: Sequence[int]) -> int:
    """Row of one context (word ids, oldest first) in the table of its order; -1 if absent."""
    row = -1
    for n, w in enumerate(words, start=1):
        row = int(lookup(tables, n, np.array([row]), np.array([w]))[0])
        if row < 0:
            return -1
    return row


def _position_rows(tables: list[NGramTables], stream: np.ndarray, dist: np.ndarray) -> list[np.ndarray]:
    """For each order n, the row of the n-gram ending at each position (-1: absent or crosses <s>)."""
    ids = [lookup(tables, 1, None, stream)]
    for n in range(2, len(tables) + 1):
        prev = np.concatenate(([-1], ids[-1][:-1]))
        cur = lookup(tables, n, prev, stream)
        cur[dist < n - 1] = -1
        ids.append(cur)
    return ids


def log10_stream(tables: list[NGramTables], stream: np.ndarray, dist: np.ndarray):
    """log10 p of every position with dist >= 1 (backoff semantics of ARPA), and the n-gram length used."""
    ids = _position_rows(tables, stream, dist)
    N = len(tables)
    logp = np.zeros(len(stream))
    length = np.zeros(len(stream), dtype=np.int64)
    for n in range(1, N + 1):  # longest match wins: later orders overwrite
        hit = ids[n - 1] >= 0
        logp[hit] = tables[n - 1].prob[ids[n - 1][hit]]
        length[hit] = n
    # add the backoffs of the contexts longer than the match: contexts of length j >= length
    for j in range(1, N):
        ctx = np.concatenate(([-1], ids[j - 1][:-1]))
        use = (ctx >= 0) & (length <= j) & (dist >= j)
        logp[use] += tables[j - 1].backoff[ctx[use]]
    return logp, length


def next_log10(tables: list[NGramTables], context: Sequence[int]) -> np.ndarray:
    """log10 p(w | context) for every w; context = ids, most recent last (begin it with <s> at a sentence start)."""
    order, V = len(tables), len(tables[0].keys)
    context = list(context)[-(order - 1):] if order > 1 else []
    logp = tables[0].prob.astype(np.float64).copy()
    for j in range(1, len(context) + 1):
        row = context_row(tables, context[-j:])
        if row < 0:
            continue  # suffix closure: no longer context can exist either, but stay safe
        logp += tables[j - 1].backoff[row]
        keys = tables[j].keys
        lo, hi = np.searchsorted(keys, [row * V, (row + 1) * V])
        logp[keys[lo:hi] - row * V] = tables[j].prob[lo:hi]
    logp[BOS_ID] = -np.inf
    return logp


def sentence_context(row: list[int], keep: int) -> list[int]:
    """<s> + the ids after the last </s> (or <s>) of a history, the last `keep` of them."""
    start = 0
    for i in range(len(row) - 1, -1, -1):
        if row[i] in (EOS_ID, BOS_ID):
            start = i + 1
            break
    ctx = [BOS_ID] + list(row[start:])
    return ctx[-keep:] if keep > 0 else []


def history_rows(ids, pad=None) -> list[list[int]]:
    """Each row's ids without its pad placeholders: ids [B, T] (a tensor, an array, or lists that may differ in
    length; a flat list is one row); pad[b] placeholder columns begin row b."""
    rows = ids.tolist() if hasattr(ids, "tolist") else [r if isinstance(r, int) else list(r) for r in ids]
    if rows and not isinstance(rows[0], list):
        rows = [rows]
    if pad is not None:
        rows = [row[int(p):] for row, p in zip(rows, pad)]
    return rows
