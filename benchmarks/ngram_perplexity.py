"""Perplexity of lmlab's modified Kneser-Ney models, orders 2-5, next to KenLM's on the same splits.

    python benchmarks/ngram_perplexity.py [--lmplz PATH]

Splits (the WikiText-2 train split is not available offline, so valid is the training text):
- WikiText-2: train on valid.txt (literal `<unk>` tokens skipped, lmplz --skip_symbols), evaluate on
  test.txt where a literal `<unk>` counts as an OOV token, as KenLM's `query` counts it;
- Multi30k English: train.en -> test_2016_flickr.en.
KenLM's figure is lmplz's ARPA scored by the kenlm module (same as KenLM `query`), when lmplz is found.
"""
from __future__ import annotations

import argparse
import subprocess
import tempfile
from pathlib import Path

from ngram_train import DATA, find_lmplz

from lmlab.models.ngram import NGramLM

SPLITS = {
    "WikiText-2 valid -> test": (DATA / "wikitext-2" / "valid.txt", DATA / "wikitext-2" / "test.txt"),
    "Multi30k en train -> test_2016": (DATA / "multi30k" / "train.en", DATA / "multi30k" / "test_2016_flickr.en"),
}


def kenlm_perplexity(lmplz: str, train: Path, test_lines: list[str], order: int, workdir: Path) -> tuple[float, float]:
    import kenlm

    arpa = workdir / f"lmplz{order}.arpa"
    with open(train) as src, open(arpa, "w") as out:
        subprocess.run([lmplz, "-o", str(order), "--skip_symbols"], stdin=src, stdout=out,
                       stderr=subprocess.DEVNULL, check=True)
    model = kenlm.Model(str(arpa))
    total, tokens, oov_total, oovs = 0.0, 0, 0.0, 0
    for line in test_lines:
        for logp, _, oov in model.full_scores(line):
            total += logp
            tokens += 1
            if oov:
                oov_total += logp
                oovs += 1
    return 10 ** (-total / tokens), 10 ** (-(total - oov_total) / (tokens - oovs))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--lmplz", default=None)
    args = ap.parse_args()
    lmplz = find_lmplz(args.lmplz)
    try:
        import kenlm  # noqa: F401
    except ImportError:
        lmplz = None
    print("| split | order | lmlab ppl (incl. OOV) | KenLM ppl | lmlab ppl (excl. OOV) | KenLM ppl (excl.) |")
    print("|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for name, (train, test) in SPLITS.items():
            test_lines = test.read_text(encoding="utf-8").split("\n")[:-1]
            for order in (2, 3, 4, 5):
                model = NGramLM.train(train, order=order, skip_symbols=True, progress=False)
                r = model.query_lines(test_lines)
                k_in, k_ex = kenlm_perplexity(lmplz, train, test_lines, order, Path(tmp)) if lmplz else ("-", "-")
                fmt = lambda x: f"{x:.2f}" if isinstance(x, float) else x  # noqa: E731
                print(f"| {name} | {order} | {r['perplexity']:.2f} | {fmt(k_in)} | "
                      f"{r['perplexity_excluding_oov']:.2f} | {fmt(k_ex)} |", flush=True)


if __name__ == "__main__":
    main()
