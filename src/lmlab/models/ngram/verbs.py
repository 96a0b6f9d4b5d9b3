"""The `lmlab ngram` verbs as library calls: train_command / train_file (`ngram train`), query_command, load_ngram and
query_report (`ngram query`).

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


def train_command(data, out, order: int = 5, tokenizer="word", smoothing: str = "mkn", k: float = 1.0,
                  discount_fallback=None, skip_symbols: bool = False, prune=None, limit_vocab_file=None,
                  encoding: str = "utf-8", quiet: bool = False) -> None:
    """`lmlab ngram train`: the model file, and its summary line on stderr. discount_fallback: None (off), [] (lmplz's
    defaults) or one to three discounts."""
    import sys

    fallback = None if discount_fallback is None else (list(discount_fallback) or True)
    print(train_file(data, out, order=order, smoothing=smoothing, discount_fallback=fallback, prune=prune,
                     limit_vocab=limit_vocab_file, progress=not quiet, tokenizer=tokenizer, skip_symbols=skip_symbols,
                     k=k, encoding=encoding), file=sys.stderr)


def query_command(model, data=None, summary: bool = False) -> None:
    """`lmlab ngram query`: KenLM query's lines for the text of `data` (default: stdin) on stdout."""
    import sys

    from ...files import read_text

    lm = load_ngram(model)  # a bad model fails before stdin is read
    for line in query_report(lm, read_text(data) if data else sys.stdin.read(), summary=summary):
        sys.stdout.write(line)


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
