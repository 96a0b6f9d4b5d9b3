"""Sampling whole sentences from a model, many at once (for synthetic corpora; `lmlab generate` uses logprobs_next).

Reads: the model's tables. Writes: sentences of word ids (without <s> and </s>), drawn exactly from the backoff
distribution.
"""
from __future__ import annotations

import numpy as np

from .tables import NGramTables, lookup
from .vocab import BOS_ID, EOS_ID


class BatchSampler:
    """Draw from the backoff distribution of many sentences at once (Katz-style backoff sampling).

    p(w|h) is p*(hw) for the explicit children of h, else bo(h) p(w|h'). So: with probability
    S(h) = sum of the children's p*, pick a child in proportion to p*; otherwise draw from p(.|h') and
    redraw while the word is a child of h (exact rejection sampling; suffix closure makes one check enough).
    """

    def __init__(self, tables: list[NGramTables], rng):
        self.tables, self.rng = tables, rng
        self.order, self.V = len(tables), len(tables[0].keys)
        self.cum = []  # per order: cumulative sum of 10**prob over the sorted table (children are ranges)
        for n, t in enumerate(tables):
            p = 10.0 ** t.prob
            if n == 0:
                p[BOS_ID] = 0.0
            self.cum.append(np.concatenate(([0.0], np.cumsum(p))))

    def _children(self, level: int, rows: np.ndarray):
        """[lo, hi) of the children of context rows of `level` words, in the order level+1 table."""
        if level == 0:
            return np.zeros(len(rows), np.int64), np.full(len(rows), self.V, np.int64)
        keys = self.tables[level].keys
        V = self.V
        return np.searchsorted(keys, rows * V), np.searchsorted(keys, (rows + 1) * V)

    def step(self, ctx: np.ndarray) -> np.ndarray:
        """One next word per row; ctx[:, j] = row of the last j+1 words in the order j+1 table (-1: none)."""
        B, N1 = ctx.shape
        top = np.full(B, 0, np.int64)
        for j in range(N1):
            top = np.where(ctx[:, j] >= 0, j + 1, top)
        level = top.copy()
        out = np.full(B, -1, np.int64)
        todo = np.arange(B)
        while len(todo):
            L = level[todo]
            word = np.full(len(todo), -1, np.int64)
            for lv in np.unique(L):
                sel = np.flatnonzero(L == lv)
                rows = todo[sel]
                ctx_rows = ctx[rows, lv - 1] if lv > 0 else np.zeros(len(rows), np.int64)
                lo, hi = self._children(lv, ctx_rows)
                cum = self.cum[lv]
                mass = cum[hi] - cum[lo]
                u = self.rng.random(len(rows))
                take = (u < mass) | (lv == 0)
                t = cum[lo] + self.rng.random(len(rows)) * mass
                idx = np.clip(np.searchsorted(cum, t, side="right") - 1, lo, np.maximum(hi - 1, lo))
                keys = self.tables[lv].keys
                picked = keys[idx] % self.V if lv > 0 else idx
                word[sel[take]] = picked[take]
                level[rows[~take]] -= 1  # back off
                if lv < top[rows].max():  # a word drawn below the top must not be a child of the level above
                    above = take & (lv < top[rows])
                    if above.any():
                        r = rows[above]
                        child = lookup(self.tables, lv + 2, ctx[r, lv], picked[above]) >= 0
                        word[sel[above][child]] = -1  # rejected: redraw at this level
            done = word >= 0
            out[todo[done]] = word[done]
            todo = todo[~done]
        return out

    def sentences(self, batch: int, max_len: int) -> list[np.ndarray]:
        N1 = max(self.order - 1, 1)
        ctx = np.full((batch, N1), -1, np.int64)
        ctx[:, 0] = BOS_ID if self.order > 1 else -1
        history = np.full((batch, max_len), -1, np.int64)
        length = np.zeros(batch, np.int64)
        alive = np.ones(batch, bool)
        for t in range(max_len):
            rows = np.flatnonzero(alive)
            if not len(rows):
                break
            w = self.step(ctx[rows]) if self.order > 1 else self.step(np.full((len(rows), 1), -1, np.int64))
            ended = w == EOS_ID
            history[rows[~ended], t] = w[~ended]
            length[rows[~ended]] += 1
            alive[rows[ended]] = False
            if self.order > 1:  # new context rows: the (j+1)-word row extends the old j-word row by w
                old = ctx[rows]
                new = np.full_like(old, -1)
                new[:, 0] = w
                for j in range(1, N1):
                    new[:, j] = lookup(self.tables, j + 1, old[:, j - 1], w)
                ctx[rows] = new
        return [history[b, :length[b]] for b in range(batch)]
