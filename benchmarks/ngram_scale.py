"""Build speed and memory at scale: a >= 50M-token corpus sampled from an lmlab n-gram model, lmlab vs lmplz.

    python benchmarks/ngram_scale.py [--tokens 50_000_000] [--order 5] [--lmplz PATH] [--workdir DIR]

The corpus is *sampled* (not concatenated copies) from a 3-gram MKN model of the shared English texts
(Multi30k train.en + WikiText-2 valid and test), so it holds many distinct 4- and 5-grams. It is cached
in --workdir. Each builder runs once in its own process (wall time, peak RSS via /usr/bin/time); lmplz
gets -S 8G (its default takes 80% of RAM). Sampled <unk> tokens are skipped by both (--skip_symbols); sampled text has no unigram with adjusted
count 1 (every word follows several others), so both need --discount_fallback for the unigram discounts. The ARPA files are compared by n-gram counts and by the
kenlm module's scores of held-out sampled sentences under each file.
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

from ngram_train import DATA, LMLAB, find_lmplz, timed

from lmlab.models.ngram import NGramLM


def sample_corpus(path: Path, tokens: int, seed: int = 0) -> None:
    texts = [DATA / "multi30k" / "train.en", DATA / "wikitext-2" / "valid.txt", DATA / "wikitext-2" / "test.txt"]
    lines = [line for t in texts for line in t.read_text(encoding="utf-8").split("\n") if line.strip()]
    model = NGramLM.train(lines, order=3, skip_symbols=True, progress=False)
    t0 = time.perf_counter()
    with open(path, "w", encoding="utf-8") as f:
        buf = []
        for line in model.sample_text(tokens, seed=seed, batch=200_000):
            buf.append(line)
            if len(buf) >= 100_000:
                f.write("".join(buf))
                buf = []
        f.write("".join(buf))
    print(f"sampled {tokens:,} tokens from {model} in {time.perf_counter() - t0:.0f} s -> {path}", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tokens", type=int, default=50_000_000)
    ap.add_argument("--order", type=int, default=5)
    ap.add_argument("--lmplz", default=None)
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/lmlab_ngram_scale"))
    args = ap.parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)
    corpus = args.workdir / f"sampled_{args.tokens}.txt"
    if not corpus.exists():
        sample_corpus(corpus, args.tokens)
    n_words = sum(len(line.split()) for line in open(corpus, encoding="utf-8"))
    print(f"\n## build order {args.order} on {n_words:,} sampled words ({corpus.stat().st_size / 1e6:.0f} MB)")
    print("| tool | wall s | peak RSS MB |\n|---|---|---|")
    ours_arpa = args.workdir / "lmlab.arpa"
    ours_t, ours_rss = timed([*LMLAB, "ngram", "train", "-o", str(args.order), "--data", str(corpus),
                              "--out", str(ours_arpa), "--quiet", "--skip-symbols", "--discount-fallback"])
    print(f"| lmlab ngram train | {ours_t:.1f} | {ours_rss:,.0f} |", flush=True)
    lmplz = find_lmplz(args.lmplz)
    if not lmplz:
        print("(lmplz not found: KenLM skipped)")
        return
    kenlm_arpa = args.workdir / "lmplz.arpa"
    with open(corpus) as src, open(kenlm_arpa, "w") as out:
        k_t, k_rss = timed([lmplz, "-o", str(args.order), "-S", "8G", "-T", str(args.workdir), "--skip_symbols", "--discount_fallback"], stdin=src, stdout=out)
    print(f"| KenLM lmplz -S 8G | {k_t:.1f} | {k_rss:,.0f} |")
    print(f"\nlmlab / lmplz time: {ours_t / k_t:.2f}x (goal <= 2x)")
    heads = [[next(open(p)) for _ in range(1)] for p in (ours_arpa, kenlm_arpa)]
    counts = []
    for p in (ours_arpa, kenlm_arpa):
        with open(p) as f:
            f.readline()
            counts.append([f.readline().strip() for _ in range(args.order)])
    print("n-gram counts:", "same" if counts[0] == counts[1] else f"differ {counts}", counts[0], heads[0][0].strip())
    try:
        import kenlm
    except ImportError:
        return
    held_out = list(NGramLM.train(DATA / "multi30k" / "val.en", order=2, progress=False).sample_text(20_000, seed=7))
    held_out = [line.strip() for line in held_out]
    scores = []
    for p in (ours_arpa, kenlm_arpa):
        m = kenlm.Model(str(p))
        scores.append([m.score(line) for line in held_out])
    worst = max(abs(a - b) for a, b in zip(*scores))
    print(f"kenlm scores of {len(held_out):,} held-out sentences under both ARPAs: max |difference| {worst:.2g}")


if __name__ == "__main__":
    sys.exit(main())
