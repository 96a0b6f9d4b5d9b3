"""The `lmlab ngram` verbs as library calls: train_file (`ngram train`), load_ngram + query_report (`ngram query`).

Reads: a training text file / an .arpa or .npz model and the text to score. Writes: a model file and its summary
line / KenLM ``query``'s lines (log10).
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterable

import numpy as np

from .model import NGramLM
from .vocab import EOS, UNK_ID


def train_file(data, out, **options) -> str:
    """`lmlab ngram train`: build a model from the text file `data` (options: those of NGramLM.train) and write it
    to `out` (.npz: lmlab's binary, else ARPA); returns the summary line."""
    model = NGramLM.train(Path(data), **options)
    if Path(out).suffix == ".npz":
        model.save(out)
    else:
        model.save_arpa(out)
    counts = " ".join(f"{n + 1}-grams {c:,}" for n, c in enumerate(model.info["counts"]))
    return f"wrote {out}: {model.info['tokens']:,} tokens, vocab {model.vocab_size:,}, {counts}"


def load_ngram(path, tokenizer=None) -> NGramLM:
    """An n-gram model from an ARPA file or our .npz binary."""
    return NGramLM.load(path) if Path(path).suffix == ".npz" else NGramLM.from_arpa(path, tokenizer)


def query_report(model: NGramLM, text: str, summary: bool = False) -> Iterable[str]:
    """Lines like KenLM's ``query``: ``word=id length log10prob`` per token, ``Total: .. OOV: ..``, then totals."""
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    r = model.query_lines(lines)
    stream, dist, logp, length = r["stream"], r["dist"], r["log10"], r["length"]
    if not summary:
        starts = np.flatnonzero(dist == 0)
        ends = np.append(starts[1:], len(stream))
        for line, lo, hi in zip(lines, starts, ends):
            pieces = model.scheme.split(line) + [EOS]
            ids, lens, probs = stream[lo + 1:hi].tolist(), length[lo + 1:hi].tolist(), logp[lo + 1:hi].tolist()
            oov = sum(1 for i in ids if i == UNK_ID)
            cells = [f"{w}={i} {n} {p:.6g}" for w, i, n, p in zip(pieces, ids, lens, probs)]
            yield "\t".join(cells) + f"\tTotal: {sum(probs):.6g} OOV: {oov}\n"
    yield f"Perplexity including OOVs:\t{r['perplexity']:.6g}\n"
    yield f"Perplexity excluding OOVs:\t{r['perplexity_excluding_oov']:.6g}\n"
    yield f"OOVs:\t{r['oov']}\n"
    yield f"Tokens:\t{r['tokens']}\n"
