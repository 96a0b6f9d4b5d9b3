"""The `lmlab ngram` verbs as library calls: train_command / train_file (`ngram train`), query_command, load_ngram and
query_report (`ngram query`), build_binary_command (`ngram build-binary`).

Reads: a training text file / an .arpa, .npz or .lmbin model and the text to score. Writes: a model file and its
summary line / KenLM ``query``'s lines (log10).
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterable

import numpy as np

from ...errors import LmlabError
from . import binary
from .model import NGramLM
from .vocab import EOS, UNK_ID


def train_file(data, out, **options) -> str:
    """`lmlab ngram train`: build a model from the text file `data` (options: those of NGramLM.train) and write it
    to `out` (.npz: lmlab's binary, else ARPA); returns the summary line. With memory (and temp_dir, workers) the
    counting runs out of core in that budget, and an ARPA file gets its highest order streamed (bounded.py; the
    same file byte for byte)."""
    if options.get("memory") is not None and Path(out).suffix not in (".npz", ".lmbin"):
        from .bounded import write_bounded_arpa

        model = write_bounded_arpa(Path(data), out, **options)  # the highest order streamed into the file
        counts = " ".join(f"{n + 1}-grams {c:,}" for n, c in enumerate(model.info["counts"]))
        return f"wrote {out}: {model.info['tokens']:,} tokens, vocab {model.vocab_size:,}, {counts}"
    if options.get("memory") is not None:
        from .bounded import train_bounded

        model = train_bounded(Path(data), **options)
    else:
        for name in ("temp_dir", "workers"):
            if options.pop(name, None) is not None:
                raise LmlabError(f"--{name.replace('_', '-')} works with --memory (the out-of-core build); "
                                 f"add e.g. --memory 4G.")
        options.pop("memory", None)
        model = NGramLM.train(Path(data), **options)
    if Path(out).suffix == ".npz":
        model.save(out)
    elif Path(out).suffix == ".lmbin":
        binary.write(model, out)
    else:
        model.save_arpa(out)
    counts = " ".join(f"{n + 1}-grams {c:,}" for n, c in enumerate(model.info["counts"]))
    return f"wrote {out}: {model.info['tokens']:,} tokens, vocab {model.vocab_size:,}, {counts}"


def train_command(data, out, order: int = 5, tokenizer="word", smoothing: str = "mkn", k: float = 1.0,
                  discount_fallback=None, skip_symbols: bool = False, prune=None, limit_vocab_file=None,
                  encoding: str = "utf-8", quiet: bool = False, memory=None, temp_dir=None, workers=None) -> None:
    """`lmlab ngram train`: the model file, and its summary line on stderr. discount_fallback: None (off), [] (lmplz's
    defaults) or one to three discounts. memory ("4G"), temp_dir, workers: the out-of-core build (bounded.py)."""
    import sys

    fallback = None if discount_fallback is None else (list(discount_fallback) or True)
    print(train_file(data, out, order=order, smoothing=smoothing, discount_fallback=fallback, prune=prune,
                     limit_vocab=limit_vocab_file, progress=not quiet, tokenizer=tokenizer, skip_symbols=skip_symbols,
                     k=k, encoding=encoding, memory=memory, temp_dir=temp_dir,
                     **({} if workers is None else {"workers": workers})), file=sys.stderr)


def query_command(model, data=None, summary: bool = False, verify: bool = False) -> None:
    """`lmlab ngram query`: KenLM query's lines for the text of `data` (default: stdin) on stdout. verify: check an
    .lmbin model's checksum before scoring."""
    import sys

    from ...files import read_text

    lm = load_ngram(model, verify=verify)  # a bad model fails before stdin is read
    for line in query_report(lm, read_text(data) if data else sys.stdin.read(), summary=summary):
        sys.stdout.write(line)


def load_ngram(path, tokenizer=None, verify: bool = False) -> NGramLM:
    """An n-gram model from an .lmbin file (known by its magic bytes, whatever the suffix; memory-mapped; verify:
    check its checksum too), our .npz, or an ARPA file. tokenizer: the token scheme, instead of the one noted."""
    path = Path(path)
    if path.suffix == ".lmbin" or binary.is_lmbin(path):
        model = binary.load(path, verify=verify)
        if tokenizer is not None:
            model = NGramLM(model.vocab, model.tables, tokenizer, model.info)
        return model
    return NGramLM.load(path) if path.suffix == ".npz" else NGramLM.from_arpa(path, tokenizer)


def build_binary_command(model, out, tokenizer=None) -> None:
    """`lmlab ngram build-binary`: an ARPA (or .npz / .lmbin) model as an .lmbin file, its checksum checked after
    writing; the summary line on stderr."""
    import sys
    import time

    start = time.perf_counter()
    lm = load_ngram(model, tokenizer)
    binary.write(lm, out)
    counts = " ".join(f"{n + 1}-grams {len(t.keys):,}" for n, t in enumerate(lm.tables))
    print(f"wrote {out}: {Path(out).stat().st_size / 1e6:,.1f} MB, vocab {lm.vocab_size:,}, {counts} "
          f"({time.perf_counter() - start:.1f} s)", file=sys.stderr)


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
