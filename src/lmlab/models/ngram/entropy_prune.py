"""Entropy-based pruning of a trained backoff model (Stolcke 1998), what SRILM's ``ngram -prune`` does and lmplz lacks.

Reads: an NGramLM (any file load_ngram reads) and a threshold on the relative perplexity increase. Writes: the pruned
NGramLM (the same vocabulary and token scheme, fewer n-grams of order >= 2, backoffs renormalised);
`lmlab ngram prune` writes it to a file like `ngram train` does.

A. Stolcke, "Entropy-based pruning of backoff language models", DARPA Broadcast News Workshop 1998, as SRILM's
``NgramLM::pruneProbs`` implements it (lm/src/Ngram.cc). All logs below are log10, as ARPA and SRILM store them.
Removing the explicit n-gram hw (context h, h' = h without its oldest word) makes p(w|h) back off:

    p'(w|h) = alpha'(h) p(w|h'),   alpha'(h) = (num(h) + p(w|h)) / (den(h) + p(w|h'))
    num(h) = 1 - sum_{v explicit after h} p(v|h),   den(h) = 1 - sum_{v explicit after h} p(v|h')

and every word v that already backed off after h changes by alpha'(h)/alpha(h). The relative entropy of the
new model to the old one, restricted to this change (Stolcke's closed form; num(h) is the backed-off mass):

    dH = -P(h) { p(w|h) [log p(w|h') + log alpha'(h) - log p(w|h)] + num(h) [log alpha'(h) - log alpha(h)] }

P(h) is the chain product of the model's own probabilities (SRILM's LM::contextProb: a leading <s> counts as
p(</s>)). The n-gram is pruned when the relative (training-set) perplexity increase PP'/PP - 1 = 10**dH - 1 is below
the threshold, SRILM's ``perpChange < threshold`` (not dH itself; the two agree to first order). Each n-gram is
judged alone against the original model (highest order first, orders below `min_order` never; unigrams never);
an n-gram still needed as a context (SRILM's backoff node: the context of a kept longer n-gram, or a suffix of one)
stays. Then the backoffs are recomputed, lowest order first (SRILM's recomputeBOWs), so every distribution sums to 1.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ...errors import LmlabError
from .arpa import ngram_word_ids_range
from .model import NGramLM
from .prune import apply_pruning
from .tables import LN10, NGramTables, rows_of
from .vocab import BOS_ID, EOS_ID

PROB_EPSILON = 3e-6  # SRILM's Prob_Epsilon: sums of probabilities smaller than this (in magnitude) count as 0
LOG10_ZERO = -99.0  # what SRILM writes for log10 0 (a backoff when a context leaves no mass)


def entropy_prune(model: NGramLM, threshold: float, min_order: int = 2, history: NGramLM | None = None) -> NGramLM:
    """The model without the n-grams whose removal raises its perplexity by less than `threshold` (relative: 1e-8 is
    SRILM's usual value), backoffs renormalised. threshold 0 prunes nothing, as in SRILM. history: another model
    giving P(h) (SRILM's -prune-history-lm; order N-1 suffices), else the model itself."""
    threshold = check_threshold(threshold)
    min_order = check_min_order(min_order)
    tables = model.tables
    context_logp = context_log10(tables) if history is None else history_context_log10(model, history)
    increase, lower = perplexity_increase(tables, context_logp)
    keep = keep_masks(tables, increase, threshold, min_order)
    vocab, pruned = apply_pruning(model.vocab, tables, keep)
    renormalise(pruned, tables, keep, lower)
    info = {**model.info, "counts": [len(t.keys) for t in pruned], "entropy_prune": threshold}
    return NGramLM(vocab, pruned, model.scheme, info)


def threshold_for_size(model: NGramLM, size: int, min_order: int = 2, history: NGramLM | None = None,
                       steps: int = 24) -> float:
    """The smallest threshold (bisection over log10 1e-16 .. 100, `steps` halvings) whose pruned model has at most
    `size` n-grams of all orders: for comparisons at equal size. The criterion is computed once."""
    min_order = check_min_order(min_order)
    tables = model.tables
    context_logp = context_log10(tables) if history is None else history_context_log10(model, history)
    increase, _ = perplexity_increase(tables, context_logp)
    kept = lambda threshold: sum(int(k.sum()) for k in keep_masks(tables, increase, threshold, min_order))  # noqa
    lo, hi = -16.0, 2.0
    if kept(10.0 ** hi) > size:
        raise LmlabError(f"no threshold leaves {size:,} n-grams or fewer: the {kept(10.0 ** hi):,} that stay are "
                         f"unigrams and orders below --minprune.")
    for _ in range(steps):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if kept(10.0 ** mid) > size else (lo, mid)
    return 10.0 ** hi


def check_threshold(threshold) -> float:
    try:
        value = float(threshold)
    except (TypeError, ValueError):
        raise LmlabError(f"the pruning threshold must be a number >= 0 (got {threshold!r}).") from None
    if not value >= 0 or value == float("inf"):  # catches NaN too
        raise LmlabError(f"the pruning threshold must be a finite number >= 0, e.g. 1e-8 (got {threshold!r}).")
    return value


def check_min_order(min_order) -> int:
    if not isinstance(min_order, int) or isinstance(min_order, bool) or min_order < 2:
        raise LmlabError(f"--minprune must be a whole number >= 2 (unigrams are never pruned; got {min_order!r}).")
    return min_order


# ----------------------------------------------------------------------- the criterion, every n-gram at once

def perplexity_increase(tables: list[NGramTables], context_logp: list[np.ndarray] | None = None):
    """Per order: the relative perplexity increase 10**dH - 1 of removing each n-gram alone (NaN: not prunable,
    unigrams and contexts SRILM cannot judge), and log10 p(w|h') of each n-gram (None for unigrams).
    context_logp: log10 P(h) of every context (context_log10, history_context_log10); default the model's own."""
    V = len(tables[0].keys)
    if context_logp is None:
        context_logp = context_log10(tables)
    increase, lower = [np.full(V, np.nan)], [None]
    for n in range(2, len(tables) + 1):
        t, parent = tables[n - 1], tables[n - 2]
        prefix = t.keys // V
        lower_logp = conditional_log10(tables, word_ids(tables, n)[:, 1:])
        p, p_lower = 10.0 ** t.prob, 10.0 ** lower_logp
        num, den = leftover_mass(prefix, p, len(parent.keys)), leftover_mass(prefix, p_lower, len(parent.keys))
        num, den, judgeable = _srilm_bow_parts(num, den)
        num, den = num[prefix], den[prefix]
        with np.errstate(divide="ignore", invalid="ignore"):
            new_bow = np.log10(num + p) - np.log10(den + p_lower)  # alpha'(h) once hw is gone
            delta_h = -(10.0 ** context_logp[n - 2][prefix]) * (
                p * (lower_logp + new_bow - t.prob) + num * (new_bow - parent.backoff[prefix]))
        change = np.expm1(delta_h * LN10)  # PP'/PP - 1 = 10**dH - 1
        change[~judgeable[prefix] | ~np.isfinite(change)] = np.nan
        increase.append(change)
        lower.append(lower_logp)
    return increase, lower


def context_log10(tables: list[NGramTables]) -> list[np.ndarray]:
    """log10 P(h) of every n-gram of orders 1..N-1 read as a context: the chain product of its explicit
    probabilities (every prefix is an n-gram), a leading <s> counting as p(</s>) (SRILM's LM::contextProb)."""
    V = len(tables[0].keys)
    first = tables[0].prob.astype(np.float64).copy()
    first[BOS_ID] = tables[0].prob[EOS_ID]
    out = [first]
    for t in tables[1:-1]:
        out.append(out[-1][t.keys // V] + t.prob)
    return out


def history_context_log10(model: NGramLM, history: NGramLM) -> list[np.ndarray]:
    """log10 P(h) of every context of `model` under another model (SRILM's -prune-history-lm: Kneser-Ney lower
    orders are continuation distributions, poor estimates of how often a context occurs; Chelba et al. 2010), each
    word predicted from at most the history model's order - 1 words before it; words it lacks are its <unk>."""
    if history.scheme.note() != model.scheme.note():
        raise LmlabError("the history model was built with another tokenizer than the model to prune; "
                         "train it on the same text with the same --tokenizer.")
    tables, V, H = model.tables, model.vocab_size, history.order
    to_history = np.array(history.vocab.ids(model.vocab.words), dtype=np.int64)
    first = conditional_log10(history.tables, to_history[:, None])
    first[BOS_ID] = history.tables[0].prob[EOS_ID]  # a leading <s> counts as p(</s>), as in context_log10
    out = [first]
    for k in range(2, model.order):
        grams = to_history[word_ids(tables, k)[:, -min(k, H):]]
        out.append(out[-1][tables[k - 1].keys // V] + conditional_log10(history.tables, grams))
    return out


def conditional_log10(tables: list[NGramTables], grams: np.ndarray) -> np.ndarray:
    """log10 p(last word | the words before it) of each row of `grams` [m, L] by ARPA backoff: the longest explicit
    n-gram ending the row, plus the backoffs of the contexts longer than its context."""
    m, L = grams.shape
    logp = np.zeros(m)
    length = np.zeros(m, dtype=np.int64)
    for j in range(1, L + 1):  # the last j words; longer matches overwrite
        rows = rows_of(tables, grams[:, L - j:]) if j > 1 else grams[:, -1]
        hit = rows >= 0
        logp[hit] = tables[j - 1].prob[rows[hit]]
        length[hit] = j
    for j in range(1, L):  # contexts of j words (the j before the last word) longer than the match's context
        ctx = rows_of(tables, grams[:, L - 1 - j:L - 1])
        use = (ctx >= 0) & (length <= j)
        logp[use] += tables[j - 1].backoff[ctx[use]]
    return logp


def leftover_mass(prefix: np.ndarray, probs: np.ndarray, n_contexts: int) -> np.ndarray:
    """1 - the sum of `probs` over each context's explicit words (a numerator or denominator of a backoff)."""
    return 1.0 - np.bincount(prefix, weights=probs, minlength=n_contexts)


def _srilm_bow_parts(num: np.ndarray, den: np.ndarray):
    """SRILM's Ngram::computeBOW checks: near-zero sums become 0; a context is judgeable unless its explicit
    probabilities exceed 1 (num < 0) or leave mass with nowhere to back off (den ~ 0 < num: SRILM rescales those
    probabilities first; lmplz's models have neither)."""
    num = np.where(np.abs(num) < PROB_EPSILON, 0.0, num)
    den = np.where(np.abs(den) < PROB_EPSILON, 0.0, den)
    judgeable = (num >= 0) & ~((den < PROB_EPSILON) & (num > PROB_EPSILON))
    return num, np.where(den <= 0, 0.0, den), judgeable


# ----------------------------------------------------------------------- what goes, what must stay

def keep_masks(tables: list[NGramTables], increase: list[np.ndarray], threshold: float,
               min_order: int = 2) -> list[np.ndarray]:
    """Which n-grams survive: those at or above the threshold, and those SRILM keeps as backoff nodes: the context of
    a kept longer n-gram, or a suffix of such a context (SRILM's contexts trie holds every suffix of a context)."""
    V = len(tables[0].keys)
    keep = [np.ones(len(t.keys), dtype=bool) for t in tables]
    nodes = np.zeros(0, dtype=np.int64)  # rows of order n still needed as contexts (none for the highest order)
    for n in range(len(tables), 1, -1):
        t = tables[n - 1]
        if threshold > 0 and n >= min_order:
            keep[n - 1] = ~(increase[n - 1] < threshold)  # NaN (not judgeable) stays
            keep[n - 1][nodes] = True
        parents = t.keys[keep[n - 1]] // V
        suffixes = rows_of(tables, word_ids(tables, n, nodes)[:, 1:]) if n > 2 else word_ids(tables, n, nodes)[:, 1]
        nodes = np.unique(np.concatenate([parents, suffixes[suffixes >= 0]]))
    return keep


def word_ids(tables: list[NGramTables], n: int, rows: np.ndarray | None = None) -> np.ndarray:
    """[len(rows), n] word ids of rows of the order-n table (all rows when None)."""
    V = len(tables[0].keys)
    if rows is None:
        return ngram_word_ids_range(tables, n, V, 0, len(tables[n - 1].keys))
    cols = [rows]
    for m in range(n, 1, -1):  # follow the prefix rows down
        keys = tables[m - 1].keys[cols[-1]]
        cols[-1] = keys % V
        cols.append(keys // V)
    return np.stack(cols[::-1], axis=1).reshape(len(rows), n)


# ----------------------------------------------------------------------- renormalisation

def renormalise(pruned: list[NGramTables], original: list[NGramTables], keep: list[np.ndarray],
                original_lower: list[np.ndarray | None]) -> None:
    """Recompute, in place, the backoff of every context whose distribution changed, lowest order first (the higher
    orders back off through the lower ones): alpha(h) = (1 - sum_kept p(w|h)) / (1 - sum_kept p(w|h')) with SRILM's
    rules for the degenerate sums. A context that lost no n-gram and whose p(w|h') are all unchanged keeps its
    backoff bit for bit (SRILM recomputes those too, which on a 6-decimal ARPA only moves them by rounding)."""
    V = len(pruned[0].keys)
    for n in range(2, len(pruned) + 1):
        t, parent = pruned[n - 1], pruned[n - 2]
        prefix = t.keys // V
        lower_logp = conditional_log10(pruned, word_ids(pruned, n)[:, 1:])
        n_ctx = len(parent.keys)
        num = leftover_mass(prefix, 10.0 ** t.prob, n_ctx)
        den = leftover_mass(prefix, 10.0 ** lower_logp, n_ctx)
        lost = np.bincount(original[n - 1].keys // V, minlength=len(original[n - 2].keys))[keep[n - 2]] \
            != np.bincount(prefix, minlength=n_ctx)
        moved = np.bincount(prefix, weights=lower_logp != original_lower[n - 1][keep[n - 1]], minlength=n_ctx) > 0
        changed = (lost | moved) & (num > -PROB_EPSILON)  # an improper context (probabilities > 1) is left as it was
        bow, rescale = _srilm_bow(num, den)
        parent.backoff[changed] = bow[changed]
        fix = (changed & (rescale != 0))[prefix]
        t.prob[fix] += rescale[prefix[fix]]


def _srilm_bow(num: np.ndarray, den: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """log10 backoff of each context from its leftover masses, as SRILM's computeBOW(s), and the log10 factor to
    add to its explicit probabilities when they must be rescaled to sum to 1 (no lower-order mass left)."""
    num = np.where(np.abs(num) < PROB_EPSILON, 0.0, num)
    den = np.where(np.abs(den) < PROB_EPSILON, 0.0, den)
    rescale = np.zeros(len(num))
    scale = (den < PROB_EPSILON) & (num > PROB_EPSILON)
    rescale[scale] = -np.log10(1.0 - num[scale])
    with np.errstate(divide="ignore", invalid="ignore"):
        bow = np.log10(num) - np.log10(den)
    bow = np.where((num < PROB_EPSILON) & (den < PROB_EPSILON) | scale, 0.0, bow)
    return np.maximum(np.nan_to_num(bow, nan=0.0, neginf=LOG10_ZERO), LOG10_ZERO), rescale


# ----------------------------------------------------------------------- `lmlab ngram prune`

def prune_file(model, out, threshold: float, min_order: int = 2, history_lm=None) -> str:
    """`lmlab ngram prune`: entropy-prune the model file `model` and write `out` (by its suffix: .npz, .lmbin, else
    ARPA); history_lm: the file of a model giving P(h). Returns the summary line."""
    from .verbs import load_ngram

    threshold = check_threshold(threshold)
    lm = load_ngram(model)
    history = load_ngram(history_lm) if history_lm is not None else None
    small = entropy_prune(lm, threshold, min_order, history)
    save_model(small, out)
    before, after = lm.num_parameters(), small.num_parameters()
    counts = " ".join(f"{n + 1}-grams {len(t.keys):,}" for n, t in enumerate(small.tables))
    return (f"wrote {out}: threshold {threshold:g}, {after:,} of {before:,} n-grams kept "
            f"({100.0 * after / max(before, 1):.1f}%), {counts}")


def prune_command(model, out, threshold: float, minprune: int = 2, history_lm=None) -> None:
    """`lmlab ngram prune`: the pruned model file, and its summary line on stderr."""
    import sys

    print(prune_file(model, out, threshold, minprune, history_lm), file=sys.stderr)


def save_model(model: NGramLM, out) -> None:
    """Write a model by the suffix of `out`: .npz (lmlab's plain arrays), .lmbin (binary.py), else ARPA."""
    suffix = Path(out).suffix
    if suffix == ".npz":
        model.save(out)
    elif suffix == ".lmbin":
        from . import binary

        binary.write(model, out)
    else:
        model.save_arpa(out)
