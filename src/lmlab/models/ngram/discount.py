"""Pass 2 (lmplz's adjust_counts): raw counts -> adjusted (continuation) counts and the MKN discounts of each order.

Reads: the Counts of every order (count.py). Writes: per order, the adjusted counts (raw at the top order and for
n-grams that begin with <s>; else the number of distinct words seen to the left), and the discounts
[0, D1, D2, D3+] from their counts-of-counts (Chen & Goodman 1998, eq. 26), or lmplz's fallback discounts.
"""
from __future__ import annotations

import numpy as np

from ...errors import LmlabError
from .count import Counts
from .vocab import BOS_ID

FALLBACK_DISCOUNTS = (0.5, 1.0, 1.5)  # lmplz --discount_fallback defaults


def adjusted_counts(counts: list[Counts]) -> list[np.ndarray]:
    """Kneser-Ney counts: raw at the top order and for n-grams starting with <s>; else N1+(. x)."""
    adjusted = []
    for n in range(len(counts)):
        if n == len(counts) - 1:
            adjusted.append(counts[n].raw.copy())
            continue
        left = np.bincount(counts[n + 1].suffix, minlength=len(counts[n].keys)).astype(np.int64)
        adjusted.append(np.where(counts[n].starts_bos, counts[n].raw, left))
    adjusted[0][BOS_ID] = 0  # lmplz: <s> has count 0 and is never predicted
    return adjusted


def mkn_discounts(adjusted: np.ndarray, order: int, fallback, name: str) -> np.ndarray:
    """[0, D1, D2, D3+] from counts-of-counts n1..n4 (Chen & Goodman 1998, eq. 26), or the fallback."""
    return discounts_of(np.bincount(np.minimum(adjusted, 5), minlength=6)[:5], order, fallback, name)


def discounts_of(n: np.ndarray, order: int, fallback, name: str) -> np.ndarray:
    """mkn_discounts from the counts-of-counts n[k] = how many n-grams have adjusted count k (k = 0..4; the
    bounded build sums them block by block)."""
    problem = None
    if (n[1:4] == 0).any():
        k = int(np.flatnonzero(n[1:4] == 0)[0]) + 1
        problem = (f"no {order}-grams have adjusted count {k}, so modified Kneser-Ney discounts cannot be "
                   f"estimated (is {name} tiny or duplicated?)")
    else:
        y = n[1] / (n[1] + 2.0 * n[2])
        d = np.array([0.0] + [k - (k + 1) * y * n[k + 1] / n[k] for k in (1, 2, 3)])
        bad = [k for k in (1, 2, 3) if not 0.0 <= d[k] <= k]
        if not bad:
            return d
        problem = f"the {order}-gram discount D{bad[0]} = {d[bad[0]]:.4g} is out of range (0..{bad[0]})"
    if fallback is None:
        raise LmlabError(f"{problem}; pass --discount-fallback to use lmplz's fallback discounts "
                         f"0.5 1 1.5, or train on more text.")
    return np.array([0.0, *fallback], dtype=np.float64)


def normalize_fallback(discount_fallback):
    """The fallback discounts (D1, D2, D3+) of --discount-fallback: None (off), True (lmplz's), or 1-3 values."""
    if discount_fallback is None or discount_fallback is False:
        return None
    if discount_fallback is True:
        return FALLBACK_DISCOUNTS
    values = [float(x) for x in discount_fallback]
    if not 1 <= len(values) <= 3:
        raise LmlabError("--discount-fallback takes one to three discounts (for counts 1, 2 and 3+).")
    while len(values) < 3:  # lmplz repeats the last value
        values.append(values[-1])
    return tuple(values)
