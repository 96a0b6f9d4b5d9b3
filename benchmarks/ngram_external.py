"""The bounded-memory build side by side: lmlab `ngram train --memory M --temp-dir D` vs `lmplz -S M -T D`, with the
same budget, on corpora sampled as in ngram_scale.py, at one or more sizes (does peak RSS grow with the corpus?).

    python benchmarks/ngram_external.py [--tokens 1_000_000 2_000_000] [--memory 64M] [--order 5]
                                        [--workers 2] [--lmplz PATH] [--workdir DIR] [--no-in-memory]

Per size, each in its own process (wall time and peak RSS from /usr/bin/time): lmlab in memory (the reference),
lmlab --memory M, lmlab --memory M --workers N, and lmplz -S M -T D. The lmlab files must be byte-identical to the
in-memory one (sha256); lmplz's is compared by its n-gram counts. Both get --skip-symbols and --discount-fallback
(as in ngram_scale.py). lmplz is found on PATH or by --lmplz; build it from the kenlm sdist on PyPI:

    pip download kenlm==0.2.0 --no-deps --no-binary :all: --no-build-isolation -d /tmp/kenlm_dl
    mkdir -p /tmp/kenlm_src && tar xzf /tmp/kenlm_dl/kenlm-0.2.0.tar.gz -C /tmp/kenlm_src --strip-components=1
    apt-get install -y libboost-program-options-dev libboost-system-dev libboost-thread-dev libboost-test-dev \\
        zlib1g-dev libbz2-dev liblzma-dev
    cmake -S /tmp/kenlm_src -B /tmp/kenlm_src/build -DCMAKE_BUILD_TYPE=Release
    make -C /tmp/kenlm_src/build -j2 lmplz build_binary      # -> /tmp/kenlm_src/build/bin/lmplz
"""
from __future__ import annotations

import argparse
import hashlib
import shutil
import sys
from pathlib import Path

from ngram_scale import sample_corpus
from ngram_train import LMLAB, find_lmplz, timed

FLAGS = ["--skip-symbols", "--discount-fallback"]


def digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 24):
            h.update(block)
    return h.hexdigest()[:16]


def arpa_counts(path: Path, order: int) -> list[str]:
    with open(path, encoding="utf-8") as f:
        f.readline()
        return [f.readline().strip() for _ in range(order)]


def bench_size(tokens: int, args, lmplz: str | None) -> None:
    corpus = args.workdir / f"sampled_{tokens}.txt"
    if not corpus.exists():
        sample_corpus(corpus, tokens)
    scratch = args.workdir / "scratch"
    scratch.mkdir(exist_ok=True)
    train = [*LMLAB, "ngram", "train", "-o", str(args.order), "--data", str(corpus), "--quiet", *FLAGS]
    runs = [("lmlab in memory", [], "memory.arpa")] if args.in_memory else []
    bounded = ["--memory", args.memory, "--temp-dir", str(scratch)]
    runs += [(f"lmlab --memory {args.memory}", bounded, "bounded.arpa"),
             (f"lmlab --memory {args.memory} --workers {args.workers}", [*bounded, "--workers", str(args.workers)],
              "workers.arpa")]
    print(f"\n## order {args.order}, {tokens:,} sampled tokens ({corpus.stat().st_size / 1e6:.0f} MB), "
          f"budget {args.memory}")
    print("| tool | wall s | peak RSS MB | output |\n|---|---|---|---|", flush=True)
    reference = None
    for name, extra, out in runs:
        arpa = args.workdir / out
        wall, rss = timed([*train, "--out", str(arpa), *extra])
        same = digest(arpa)
        reference = reference or same
        left = list(scratch.iterdir())
        note = "reference" if name == runs[0][0] else "byte-identical" if same == reference else "DIFFERS"
        note += f", {len(left)} files left in --temp-dir" if left else ""
        print(f"| {name} | {wall:.1f} | {rss:,.0f} | {note} |", flush=True)
    if not lmplz:
        print("(lmplz not found: KenLM skipped)")
        return
    kenlm_arpa = args.workdir / "lmplz.arpa"
    with open(corpus) as src, open(kenlm_arpa, "w") as out:
        wall, rss = timed([lmplz, "-o", str(args.order), "-S", args.memory, "-T", str(scratch), "--skip_symbols",
                           "--discount_fallback"], stdin=src, stdout=out)
    same = arpa_counts(kenlm_arpa, args.order) == arpa_counts(args.workdir / runs[0][2], args.order)
    print(f"| KenLM lmplz -S {args.memory} -T | {wall:.1f} | {rss:,.0f} | "
          f"{'same n-gram counts' if same else 'n-gram counts differ'} |", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tokens", type=int, nargs="+", default=[1_000_000, 2_000_000])
    ap.add_argument("--memory", default="64M", help="the budget of both tools (lmplz -S)")
    ap.add_argument("--order", type=int, default=5)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--lmplz", default=None)
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/lmlab_ngram_external"))
    ap.add_argument("--no-in-memory", dest="in_memory", action="store_false", help="skip the in-memory build (it "
                    "needs ~100 bytes per n-gram: too much at 500M words); the --memory runs are then compared "
                    "with each other")
    args = ap.parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)
    lmplz = find_lmplz(args.lmplz) or shutil.which("/tmp/kenlm_src/build/bin/lmplz")
    for tokens in args.tokens:
        bench_size(tokens, args, lmplz)


if __name__ == "__main__":
    sys.exit(main())
