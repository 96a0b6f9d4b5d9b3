"""N-gram build and query speed, side by side: lmlab vs KenLM lmplz / kenlm module vs NLTK.

    python benchmarks/ngram_train.py [--lmplz PATH] [--order 5] [--corpus FILE] [--rounds 3]

- build: `lmlab ngram train` and `lmplz` end to end on the same text (Multi30k English train +
  WikiText-2 valid, ~560k words, unless --corpus), wall time (median of --rounds) and peak RSS
  (/usr/bin/time), each in its own process; the two ARPA files are compared entry by entry.
- NLTK: KneserNeyInterpolated order 3 on a subset it can finish, against lmlab on the same subset
  (fit, then scoring tokens/s).
- query: the kenlm module vs lmlab scoring WikiText-2 test with the same ARPA, tokens/s.
KenLM is found on PATH or via --lmplz (build it from github.com/kpu/kenlm with cmake; never vendored).
"""
from __future__ import annotations

import argparse
import math
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from lmlab.models.ngram import NGramLM

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
LMLAB = [sys.executable, "-m", "lmlab.cli"]


def timed(cmd, stdin=None, stdout=None) -> tuple[float, float]:
    """(wall seconds, peak RSS MB) of one command in its own process."""
    time_bin = shutil.which("time") or "/usr/bin/time"
    with tempfile.NamedTemporaryFile("r", suffix=".time") as rss:
        t0 = time.perf_counter()
        done = subprocess.run([time_bin, "-f", "%M", "-o", rss.name, *cmd], stdin=stdin, stdout=stdout,
                              stderr=subprocess.PIPE, text=True)
        if done.returncode:
            raise SystemExit(f"{' '.join(cmd)} failed:\n{done.stderr[-2000:]}")
        wall = time.perf_counter() - t0
        return wall, int(rss.read().split()[-1]) / 1024


def build_corpus(workdir: Path) -> Path:
    path = workdir / "corpus.txt"
    with open(path, "w", encoding="utf-8") as out:
        for part in (DATA / "multi30k" / "train.en", DATA / "wikitext-2" / "valid.txt"):
            out.write(part.read_text(encoding="utf-8").replace("<unk>", " "))
    return path


def compare_arpa(a: Path, b: Path) -> str:
    ours, theirs = NGramLM.from_arpa(a), NGramLM.from_arpa(b)
    if [len(t.keys) for t in ours.tables] != [len(t.keys) for t in theirs.tables]:
        return "n-gram counts differ"
    worst = 0.0
    for n in range(ours.order):  # same n-grams, same log10 probs and backoffs (vocab ids may differ)
        ea, eb = _entries(ours, n), _entries(theirs, n)
        if ea.keys() != eb.keys():
            return f"different {n + 1}-grams"
        worst = max(worst, max(max(abs(ea[k][0] - eb[k][0]), abs(ea[k][1] - eb[k][1])) for k in ea))
    return f"same n-grams, max |difference| {worst:.2g}"


def _entries(m, n):
    from lmlab.models.ngram.arpa import ngram_word_ids_range as _ngram_word_ids_range

    t = m.tables[n]
    rows = _ngram_word_ids_range(m.tables, n + 1, m.vocab_size, 0, len(t.keys)).tolist()
    words = m.vocab.words
    return {" ".join(words[i] for i in r): (p, b) for r, p, b in zip(rows, t.prob.tolist(), t.backoff.tolist())}


def bench_build(corpus: Path, order: int, lmplz: str | None, rounds: int, workdir: Path):
    ours_arpa, kenlm_arpa = workdir / "lmlab.arpa", workdir / "lmplz.arpa"
    ours = [timed([*LMLAB, "ngram", "train", "-o", str(order), "--data", str(corpus), "--out", str(ours_arpa),
                   "--quiet"]) for _ in range(rounds)]
    print(f"\n## build, order {order}, {corpus.stat().st_size / 1e6:.1f} MB text")
    print("| tool | wall s (median) | peak RSS MB |\n|---|---|---|")
    ours_t = statistics.median(t for t, _ in ours)
    print(f"| lmlab ngram train | {ours_t:.2f} | {max(r for _, r in ours):.0f} |")
    if lmplz:
        theirs = []
        for _ in range(rounds):
            with open(corpus) as src, open(kenlm_arpa, "w") as out:
                theirs.append(timed([lmplz, "-o", str(order)], stdin=src, stdout=out))
        kt = statistics.median(t for t, _ in theirs)
        print(f"| KenLM lmplz | {kt:.2f} | {max(r for _, r in theirs):.0f} |")
        print(f"\nlmlab / lmplz time: {ours_t / kt:.2f}x (goal <= 2x); ARPA: {compare_arpa(ours_arpa, kenlm_arpa)}")
    return ours_arpa


def bench_nltk(corpus: Path, tokens: int):
    try:
        from nltk.lm import KneserNeyInterpolated
        from nltk.lm.preprocessing import padded_everygram_pipeline
    except ImportError:
        print("\n(NLTK not installed: skipped)")
        return
    lines, n = [], 0
    for line in corpus.read_text(encoding="utf-8").split("\n"):
        if n >= tokens:
            break
        lines.append(line)
        n += len(line.split())
    train, test = lines[: int(len(lines) * 0.9)], lines[int(len(lines) * 0.9):][:40]
    t0 = time.perf_counter()
    grams, vocab = padded_everygram_pipeline(3, [l.split() for l in train])
    lm = KneserNeyInterpolated(3)
    lm.fit(grams, vocab)
    nltk_fit = time.perf_counter() - t0
    t0 = time.perf_counter()
    scored = 0
    for line in test[:20]:
        words = ["<s>", "<s>"] + line.split() + ["</s>"]
        for i in range(2, len(words)):
            lm.logscore(words[i], words[i - 2:i])
            scored += 1
    nltk_qps = scored / (time.perf_counter() - t0)
    t0 = time.perf_counter()
    ours = NGramLM.train(train, order=3, progress=False, discount_fallback=True)
    ours_fit = time.perf_counter() - t0
    t0 = time.perf_counter()
    reps = 0
    while time.perf_counter() - t0 < 0.5:
        r = ours.query_lines(test[:20])
        reps += 1
    ours_qps = reps * r["tokens"] / (time.perf_counter() - t0)
    print(f"\n## NLTK KneserNeyInterpolated vs lmlab, order 3, {n:,}-token subset")
    print("| | NLTK | lmlab | lmlab speed-up |\n|---|---|---|---|")
    print(f"| fit s (NLTK only counts here) | {nltk_fit:.2f} | {ours_fit:.3f} | {nltk_fit / ours_fit:.0f}x |")
    print(f"| scoring tokens/s | {nltk_qps:,.0f} | {ours_qps:,.0f} | {ours_qps / nltk_qps:,.0f}x |")
    bench_nltk_full_model(train[:200])


def bench_nltk_full_model(train: list[str]):
    """Like for like: a trained model = every seen n-gram's probability (what lmplz and lmlab write out).

    NLTK's fit only counts; its Kneser-Ney probabilities are computed at query time, so the equivalent of
    training is fit + one score() per distinct trigram. Measured on a small subset NLTK finishes quickly.
    """
    from nltk.lm import KneserNeyInterpolated
    from nltk.lm.preprocessing import padded_everygram_pipeline
    from nltk.util import ngrams

    sents = [line.split() for line in train]
    t0 = time.perf_counter()
    grams, vocab = padded_everygram_pipeline(3, sents)
    lm = KneserNeyInterpolated(3)
    lm.fit(grams, vocab)
    distinct = {g for s in sents for g in ngrams(["<s>", "<s>"] + s + ["</s>"], 3)}
    for g in distinct:
        lm.score(g[2], list(g[:2]))
    nltk_t = time.perf_counter() - t0
    reps, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < 1.0:
        NGramLM.train(train, order=3, progress=False, discount_fallback=True)
        reps += 1
    ours_t = (time.perf_counter() - t0) / reps
    tokens = sum(len(s) for s in sents)
    print(f"| fit + all {len(distinct):,} trigram probabilities ({tokens:,} tokens) s | {nltk_t:.2f} | "
          f"{ours_t:.4f} | {nltk_t / ours_t:,.0f}x |")


def bench_query(arpa: Path):
    lines = (DATA / "wikitext-2" / "test.txt").read_text(encoding="utf-8").split("\n")[:-1]
    ours = NGramLM.from_arpa(arpa)
    t0 = time.perf_counter()
    r = ours.query_lines(lines)
    ours_t = time.perf_counter() - t0
    print(f"\n## query, WikiText-2 test ({r['tokens']:,} tokens incl. </s>), same ARPA")
    print("| scorer | tokens/s | total log10 |\n|---|---|---|")
    print(f"| lmlab query_lines | {r['tokens'] / ours_t:,.0f} | {r['total']:.2f} |")
    try:
        import kenlm
    except ImportError:
        print("(kenlm module not installed: skipped)")
        return
    k = kenlm.Model(str(arpa))
    t0 = time.perf_counter()
    total = sum(k.score(line) for line in lines)
    k_t = time.perf_counter() - t0
    print(f"| kenlm module (Model.score per line) | {r['tokens'] / k_t:,.0f} | {total:.2f} |")
    print(f"\nlmlab / kenlm query throughput: {k_t / ours_t:.2f}x")


def find_lmplz(arg):
    for cand in (arg, shutil.which("lmplz"), "/tmp/kenlm_src/build/bin/lmplz"):
        if cand and os.access(cand, os.X_OK):
            return cand
    return None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--lmplz", default=None)
    ap.add_argument("--order", type=int, default=5)
    ap.add_argument("--corpus", type=Path, default=None)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--nltk-tokens", type=int, default=60_000)
    args = ap.parse_args()
    lmplz = find_lmplz(args.lmplz)
    if not lmplz:
        print("lmplz not found (PATH or --lmplz): KenLM columns are skipped")
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        corpus = args.corpus or build_corpus(workdir)
        arpa = bench_build(corpus, args.order, lmplz, args.rounds, workdir)
        bench_query(arpa)
        bench_nltk(corpus, args.nltk_tokens)


if __name__ == "__main__":
    main()
