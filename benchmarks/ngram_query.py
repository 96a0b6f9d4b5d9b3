"""Query speed and load time: lmlab's .lmbin (compiled kernel) next to the kenlm module on the same model.

    python benchmarks/ngram_query.py [--order 5] [--repeat 20] [--runs 5] [--build-binary PATH]

The model: an lmlab `-o ORDER` MKN model of WikiText-2 valid (literal <unk> skipped) written as ARPA, then
`lmlab ngram build-binary` -> .lmbin. Scored text: WikiText-2 test, and the same text repeated --repeat times (a
bigger run). Throughput is end to end from the text (a Python str): lmlab `NGramLM.score_text(text)` (bytes -> words
-> ids -> log10 in one kernel call; also `query_lines(lines)`, which returns every token's log10, and the NumPy
fallback), kenlm `sum(Model.score(line) for line in text.split("\\n"))` (its Cython loop per line; also
`full_scores`). Best of --runs. Load: lmlab .lmbin (memory-mapped; header checked) and the ARPA reader; kenlm from the
ARPA, and from KenLM's own binaries (probing and trie) when --build-binary names KenLM's build_binary. Also lmlab's
two lookups (probing hash vs binary search in the sorted keys, the measurement behind the format's choice).
Prints a side-by-side table with ratios (lmlab / kenlm: > 1 means lmlab is faster; for load, < 1).
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "wikitext-2"


def best_of(runs: int, fn):
    """(best wall time, last result) of `runs` calls."""
    best, out = float("inf"), None
    for _ in range(runs):
        start = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - start)
    return best, out


def race(runs: int, *fns) -> list:
    """[(best wall time, last result)] of each function, timed in turn `runs` times (A B A B ...: on a shared
    machine both see the same load)."""
    best, out = [float("inf")] * len(fns), [None] * len(fns)
    for _ in range(runs):
        for i, fn in enumerate(fns):
            start = time.perf_counter()
            out[i] = fn()
            best[i] = min(best[i], time.perf_counter() - start)
    return list(zip(best, out))


def kenlm_score(model, text: str) -> float:
    return sum(model.score(line) for line in text.rstrip("\n").split("\n"))


def kenlm_full_scores(model, text: str) -> float:
    return sum(p for line in text.rstrip("\n").split("\n") for p, _, _ in model.full_scores(line))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--order", type=int, default=5)
    ap.add_argument("--train", type=Path, default=DATA / "valid.txt")
    ap.add_argument("--test", type=Path, default=DATA / "test.txt")
    ap.add_argument("--repeat", type=int, default=20, help="the bigger run: the test text this many times")
    ap.add_argument("--runs", type=int, default=5, help="best of this many timings")
    ap.add_argument("--build-binary", default=None, metavar="PATH", help="KenLM's build_binary: also its probing "
                    "and trie binaries")
    ap.add_argument("--workdir", type=Path, default=None)
    args = ap.parse_args()

    import kenlm

    from lmlab.models.ngram import NGramLM, binary, load_ngram

    work = args.workdir or Path(tempfile.mkdtemp(prefix="ngram_query_"))
    work.mkdir(parents=True, exist_ok=True)
    arpa, lmbin = work / f"wt{args.order}.arpa", work / f"wt{args.order}.lmbin"
    if not arpa.is_file():
        NGramLM.train(args.train, order=args.order, skip_symbols=True, progress=False).save_arpa(arpa)
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "lmlab", "ngram", "build-binary", str(arpa), str(lmbin)], check=True)
    build_s = time.perf_counter() - start
    print(f"model: {arpa} ({arpa.stat().st_size / 1e6:.1f} MB); lmlab build-binary {build_s:.2f} s -> "
          f"{lmbin.stat().st_size / 1e6:.1f} MB", flush=True)

    rows = []  # (what, lmlab value, kenlm value, unit)
    load_lmbin, lm = best_of(args.runs, lambda: load_ngram(lmbin))
    load_lmbin_verify, _ = best_of(1, lambda: load_ngram(lmbin, verify=True))
    load_arpa_lmlab, _ = best_of(1, lambda: load_ngram(arpa))
    load_arpa_kenlm, ken = best_of(1, lambda: kenlm.Model(str(arpa)))
    rows.append(("load: lmlab .lmbin vs kenlm ARPA", load_lmbin, load_arpa_kenlm, "s"))
    rows.append(("load: lmlab ARPA vs kenlm ARPA", load_arpa_lmlab, load_arpa_kenlm, "s"))
    print(f"lmlab .lmbin load with --verify (whole-file CRC-32): {load_lmbin_verify:.3f} s")
    kenlm_bins = {}
    if args.build_binary:
        for kind in ("probing", "trie"):
            path = work / f"wt{args.order}.kenlm.{kind}"
            subprocess.run([args.build_binary, kind, str(arpa), str(path)], check=True, capture_output=True)
            load_s, kenlm_bins[kind] = best_of(args.runs, lambda p=path: kenlm.Model(str(p)))
            rows.append((f"load: lmlab .lmbin vs kenlm {kind} binary", load_lmbin, load_s, "s"))

    test = args.test.read_text(encoding="utf-8")
    texts = {"WikiText-2 test": test, f"test x{args.repeat}": test * args.repeat}
    probing, sorted_ = binary.QueryIndex(lm), binary.QueryIndex(lm, lookup="sorted")
    for name, text in texts.items():
        data = text.encode("utf-8")
        (t_lm, r), (t_ken, ken_total) = race(args.runs, lambda: lm.score_text(text), lambda: kenlm_score(ken, text))
        tokens = r["tokens"]
        print(f"{name}: {tokens:,} tokens; totals lmlab {r['total']:.4f}, kenlm {ken_total:.4f}")
        rows.append((f"{name}: lmlab score_text vs kenlm score (ARPA)", tokens / t_lm, tokens / t_ken, "tok/s"))
        for kind, model in kenlm_bins.items():
            (t_lm_again, _), (t_bin, _) = race(args.runs, lambda: lm.score_text(text),
                                               lambda m=model: kenlm_score(m, text))
            t_lm = min(t_lm, t_lm_again)
            rows.append((f"{name}: lmlab score_text vs kenlm score ({kind} binary)", tokens / t_lm, tokens / t_bin,
                         "tok/s"))
        lines = text.rstrip("\n").split("\n")
        (t_lines, _), (t_full, _) = race(args.runs, lambda: lm.query_lines(lines),
                                         lambda: kenlm_full_scores(ken, text))
        rows.append((f"{name}: lmlab query_lines (every token) vs kenlm full_scores", tokens / t_lines,
                     tokens / t_full, "tok/s"))
        (t_probe, _), (t_sort, _) = race(args.runs, lambda: probing.score_text(data, per_token=False),
                                         lambda: sorted_.score_text(data, per_token=False))
        rows.append((f"{name}: lmlab lookups, probing hash vs sorted keys", tokens / t_probe, tokens / t_sort,
                     "tok/s"))
        if name == "WikiText-2 test":
            with binary.disabled():
                t_np, _ = best_of(max(1, args.runs // 2), lambda: lm.query_lines(lines))
            rows.append((f"{name}: lmlab NumPy fallback vs kenlm score", tokens / t_np, tokens / t_ken, "tok/s"))

    print()
    width = max(len(r[0]) for r in rows)
    print(f"{'':{width}}  {'lmlab':>12}  {'other':>12}  ratio")
    for what, ours, theirs, unit in rows:
        fmt = (lambda v: f"{v:10.4f} s") if unit == "s" else (lambda v: f"{v / 1e6:7.2f}M t/s")
        print(f"{what:{width}}  {fmt(ours):>12}  {fmt(theirs):>12}  {ours / theirs:5.2f}x")


if __name__ == "__main__":
    main()
