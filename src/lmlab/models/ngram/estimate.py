"""Passes 3-4 (lmplz's initial_probabilities + interpolate): counts -> the model's tables, one order at a time.

Reads: the Counts of every order (count.py); for MKN also the adjusted counts and discounts (discount.py) and the
prune masks (prune.py). Writes: one NGramTables per order, log10 probabilities and log10 backoffs.

Modified Kneser-Ney follows KenLM's ``lmplz`` exactly (Heafield et al. 2013, "Scalable modified Kneser-Ney
language model estimation"; Chen & Goodman 1998, "An empirical study of smoothing techniques"):
- interpolation: p(w|h) = (a(hw) - D(a(hw)))/sum_x a(hx) + gamma(h) p(w|h'),
  gamma(h) = (D1 N1(h.) + D2 N2(h.) + D3 N3+(h.)) / sum_x a(hx); unigrams interpolate with the
  uniform 1/(|V|-1) (``<s>`` excluded), so ``<unk>`` gets gamma/(|V|-1);
- the ARPA backoff of a context h is log10 gamma(h); ``<s>`` gets log10 prob 0 (as lmplz writes it;
  SRILM writes -99; both are read and neither is ever used, ``<s>`` is never predicted).
Witten-Bell and add-k are interpolated the same way, on raw counts.
"""
from __future__ import annotations

import numpy as np

from ...errors import LmlabError
from .count import Counts
from .discount import adjusted_counts, mkn_discounts
from .tables import NGramTables
from .vocab import BOS_ID

SMOOTHINGS = ("mkn", "witten-bell", "add-k")


def estimate(counts: list[Counts], V: int, smoothing: str, fallback, k: float, name: str, bar, keep=None):
    """(tables, info) of one of SMOOTHINGS; pruning (`keep` masks) works with MKN only, as in lmplz."""
    if smoothing == "mkn":
        return estimate_mkn(counts, V, fallback, name, bar, keep)
    if keep is not None:
        raise LmlabError("--prune and --limit-vocab-file work with --smoothing mkn only (as in lmplz).")
    return estimate_simple(counts, V, smoothing, k, bar)


def _context_stats(prefix: np.ndarray, counts: np.ndarray, n_contexts: int):
    """Per context: sum of counts, and the number of words following it with count 1, 2 and 3+."""
    denom = np.bincount(prefix, weights=counts, minlength=n_contexts)
    n1 = np.bincount(prefix[counts == 1], minlength=n_contexts)
    n2 = np.bincount(prefix[counts == 2], minlength=n_contexts)
    n3 = np.bincount(prefix[counts >= 3], minlength=n_contexts)
    return denom, n1, n2, n3


def _interpolate(counts: list[Counts], uninterp: list[np.ndarray], gammas: list[np.ndarray], V: int,
                 unigrams: int | None = None):
    """p_n(hw) = uninterp(hw) + gamma(h) p_{n-1}(h'w); unigrams back off to uniform 1/(|V|-1), <s> excluded."""
    probs = []
    for n, c in enumerate(counts):
        if n == 0:
            p = uninterp[0] + gammas[0][0] / ((unigrams or V) - 1)
            p[BOS_ID] = 1.0  # log10 0, as lmplz writes <s>; never used for prediction
        else:
            p = uninterp[n] + gammas[n][c.keys // V] * probs[n - 1][c.suffix]
        probs.append(p)
    return probs


def _to_tables(counts: list[Counts], probs: list[np.ndarray], gammas: list[np.ndarray]) -> list[NGramTables]:
    """log10 probs (clamped at 0 like lmplz) and log10 backoffs (0 for n-grams that are no context)."""
    tables = []
    for n, c in enumerate(counts):
        with np.errstate(divide="ignore"):
            prob = np.minimum(0.0, np.log10(probs[n]))
        backoff = _log10_or_zero(gammas[n + 1]) if n + 1 < len(counts) else np.zeros(len(c.keys))
        tables.append(NGramTables(c.keys, prob, backoff))
    return tables


def estimate_mkn(counts: list[Counts], V: int, fallback, name: str, bar, keep=None):
    """Interpolated modified Kneser-Ney, one order at a time (only p of the order below is kept alive).

    With pruning (`keep` masks), discounts still come from all counts; a context's pruned children give
    their whole count to its gamma (lmplz's "normalizer"), so the distribution still sums to 1.
    """
    tables, discounts, _ = mkn_orders(counts, adjusted_counts(counts), V, fallback, name, bar, keep)
    tables[-1].backoff = np.zeros(len(tables[-1].keys))
    info = {"discounts": [d[1:].tolist() for d in discounts], "counts": [len(c.keys) for c in counts]}
    return tables, info


def mkn_orders(counts: list[Counts], adjusted: list[np.ndarray], V: int, fallback, name: str, bar, keep=None):
    """The orders of `counts` estimated one at a time (estimate_mkn's loop; bounded.py runs it on the orders below
    the highest): their tables (each backoff set once the next order's gammas are known; the last one's not), the
    discounts, and the last order's probabilities (not log). `adjusted`: discount.adjusted_counts of them."""
    unigrams = V if keep is None else int(keep[0].sum())
    tables, discounts, lower_p = [], [], None
    for n, c in enumerate(counts):
        a = adjusted[n]
        adjusted[n] = None
        d = mkn_discounts(a, n + 1, fallback, name)
        discounts.append(d)
        kept = a if keep is None else np.where(keep[n], a, 0)
        prefix = np.zeros(len(a), dtype=np.int64) if n == 0 else c.keys // V
        n_ctx = 1 if n == 0 else len(counts[n - 1].keys)
        denom = np.bincount(prefix, weights=a, minlength=n_ctx)
        _, n1, n2, n3 = _context_stats(prefix, kept, n_ctx)
        pruned_mass = denom - np.bincount(prefix, weights=kept, minlength=n_ctx) if keep is not None else 0.0
        del kept
        with np.errstate(divide="ignore", invalid="ignore"):
            gamma = np.where(denom > 0, (d[1] * n1 + d[2] * n2 + d[3] * n3 + pruned_mass) / denom, 0.0)
            p = (a - d[np.minimum(a, 3)]) / denom[prefix]
        del a, denom, n1, n2, n3
        if n == 0:  # unigrams interpolate with the uniform distribution; <s> gets log10 prob 0 like lmplz
            p += gamma[0] / (unigrams - 1)
            p[BOS_ID] = 1.0
        else:  # p(w|h) = uninterp + gamma(h) p(w|h'); the backoff of each context h is log10 gamma(h)
            p += gamma[prefix] * lower_p[c.suffix]
            tables[n - 1].backoff = _log10_or_zero(gamma)
        del prefix, gamma
        with np.errstate(divide="ignore"):
            tables.append(NGramTables(c.keys, np.minimum(0.0, np.log10(p)), np.zeros(0)))
        lower_p = p
        c.raw = c.suffix = None  # no longer needed: free memory before the next order
        if bar:
            bar.update(1)
    return tables, discounts, lower_p


def _log10_or_zero(gamma: np.ndarray) -> np.ndarray:
    """log10 of each context's gamma; 0 where a row is no context (gamma 0)."""
    out = np.zeros(len(gamma))
    has = gamma > 0
    out[has] = np.log10(gamma[has])
    return out


def estimate_simple(counts: list[Counts], V: int, smoothing: str, k: float, bar):
    """Interpolated Witten-Bell (Witten & Bell 1991) or add-k with the lower order as prior, on raw counts.

    Witten-Bell: p(w|h) = (c(hw) + N1+(h.) p(w|h')) / (c(h) + N1+(h.)).
    add-k:       p(w|h) = (c(hw) + k |V| p(w|h')) / (c(h) + k |V|)  (plain add-k at order 1, where p = 1/|V|).
    Both are interpolated models, so they write to ARPA exactly like MKN.
    """
    uninterp, gammas = [], []
    V_pred = V - 1  # <s> is never predicted
    for n, c in enumerate(counts):
        raw = c.raw.copy()
        if n == 0:
            raw[BOS_ID] = 0
        prefix = np.zeros(len(raw), dtype=np.int64) if n == 0 else c.keys // V
        n_ctx = 1 if n == 0 else len(counts[n - 1].keys)
        denom = np.bincount(prefix, weights=raw, minlength=n_ctx)
        extra = np.bincount(prefix, weights=raw > 0, minlength=n_ctx) if smoothing == "witten-bell" \
            else np.full(n_ctx, k * V_pred)
        total = denom + extra
        with np.errstate(divide="ignore", invalid="ignore"):
            uninterp.append(raw / total[prefix])
            gammas.append(np.where(total > 0, extra / total, 0.0))
        if bar:
            bar.update(1)
    probs = _interpolate(counts, uninterp, gammas, V)
    return _to_tables(counts, probs, gammas), {"counts": [len(c.keys) for c in counts]}
