"""Pass 1 (lmplz's corpus_count, the counting half): the sentence stream -> the unique n-grams of every order.

Reads: the sentence stream (word ids with <s>/</s>) and each position's distance from its <s> (corpus.py).
Writes: one Counts per order: sorted packed keys (prefix_row * V + word, so a context's children are one
contiguous range, like KenLM's trie), raw counts, and each n-gram's suffix row in the order below.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .vocab import BOS_ID


@dataclass
class Counts:
    """Unique n-grams of one order, sorted, with their raw counts and links into the order below."""
    keys: np.ndarray       # prefix_id * V + word, sorted (order 1: the word id itself)
    raw: np.ndarray        # occurrences in the padded text
    suffix: np.ndarray     # id of the n-gram without its first word (order n-1); -1 for order 1
    starts_bos: np.ndarray  # first word is <s>


def count_ngrams(stream: np.ndarray, dist: np.ndarray, order: int, V: int, progress=None) -> list[Counts]:
    """Count all n-grams up to `order` that do not cross a sentence start: sort/unique on packed keys."""
    counts = []
    # order 1: the ids are the vocabulary itself; <s> is in the table but never counted as predicted
    ids = stream  # id of the n-gram (current order) ending at each position
    raw1 = np.bincount(stream[dist >= 1], minlength=V).astype(np.int64)
    counts.append(Counts(np.arange(V, dtype=np.int64), raw1, np.full(V, -1, np.int64), np.arange(V) == BOS_ID))
    if progress:
        progress.update(1)
    for n in range(2, order + 1):
        pos = np.flatnonzero(dist >= n - 1)
        keys = ids[pos - 1] * V + stream[pos]
        uniq, inverse, raw, first = unique_groups(keys, len(counts[-1].keys) * V)
        del keys
        suffix = ids[pos[first]]
        starts_bos = counts[-1].starts_bos[uniq // V]
        new_ids = np.full(len(stream), -1, dtype=np.int64)
        new_ids[pos] = inverse
        del pos, inverse
        ids = new_ids
        counts.append(Counts(uniq, raw, suffix, starts_bos))
        if progress:
            progress.update(1)
    return counts


def unique_groups(keys: np.ndarray, key_bound: int):
    """np.unique(keys, return_inverse=True) plus group sizes and one index per group, about 3x faster.

    Each key is packed with its index into one int64 (key << index_bits | index), so a plain np.sort
    (no argsort) orders them and the low bits give the permutation. When key and index need more than
    63 bits together, keys are first split into buckets by their top bits (a stable 16-bit radix pass).
    """
    n = len(keys)
    if n == 0:
        empty = np.zeros(0, np.int64)
        return empty, empty, empty, empty
    index_bits = max(1, (n - 1).bit_length())
    key_bits = max(1, (max(int(key_bound), 2) - 1).bit_length())
    over = key_bits + index_bits - 63
    if over > 16:
        uniq, inverse, raw = np.unique(keys, return_inverse=True, return_counts=True)
        first = np.empty(len(uniq), np.int64)
        first[inverse[::-1]] = np.arange(n - 1, -1, -1)
        return uniq, inverse, raw, first
    if over <= 0:
        packed = np.sort((keys << index_bits) | np.arange(n, dtype=np.int64))
    else:  # buckets on the top `over` bits; each bucket's lower bits fit with the index
        low_bits = key_bits - over
        bucket = (keys >> low_bits).astype(np.uint16)
        by_bucket = np.argsort(bucket, kind="stable")
        edges = np.searchsorted(bucket[by_bucket], np.arange((1 << over) + 1))
        mask = (1 << low_bits) - 1
        packed = np.empty(n, np.int64)
        for b in range(1 << over):
            lo, hi = edges[b], edges[b + 1]
            if hi > lo:
                idx = by_bucket[lo:hi]
                packed[lo:hi] = np.sort(((keys[idx] & mask) << index_bits) | idx)
    perm = packed & ((1 << index_bits) - 1)
    sorted_keys = keys[perm]
    del packed
    new_group = np.empty(n, dtype=bool)
    new_group[0] = True
    np.not_equal(sorted_keys[1:], sorted_keys[:-1], out=new_group[1:])
    starts = np.flatnonzero(new_group)
    uniq = sorted_keys[starts]
    del sorted_keys
    raw = np.diff(np.append(starts, n))
    inverse = np.empty(n, np.int64)
    inverse[perm] = np.cumsum(new_group) - 1
    return uniq, inverse, raw, perm[starts]
