"""Entropy pruning (Stolcke 1998, `lmlab ngram prune`) against count pruning (lmplz's --prune), size vs perplexity.

    python benchmarks/ngram_prune.py [--order 5] [--train FILE --test FILE] [--png docs/ngram_prune.png]

One modified Kneser-Ney model is trained on WikiText-2 valid (the train split is not available offline; literal
`<unk>` skipped as in benchmarks/ngram_perplexity.py) and scored on WikiText-2 test (perplexity including OOVs, as
KenLM's query). Three families of smaller models, each point one model:
- entropy pruning at several thresholds, P(h) from the model itself (SRILM's default);
- the same with P(h) from a Witten-Bell model of order N-1 on the same text (SRILM's -prune-history-lm);
- count pruning: `ngram train --prune 0 T T ...` (lmplz), trained again for each threshold T.
Prints a markdown table (n-grams of every order, perplexity, seconds), then each count-pruned model beside the
largest entropy-pruned ones not bigger than it (threshold found by bisection), and draws perplexity against the
number of n-grams into the PNG.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

from lmlab.files import atomic_open
from lmlab.models.ngram import NGramLM
from lmlab.models.ngram.entropy_prune import entropy_prune, threshold_for_size

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
THRESHOLDS = [1e-8, 3e-8, 1e-7, 3e-7, 1e-6, 3e-6, 1e-5, 3e-5]
OWN, HISTORY = "entropy, the model's own P(h)", "entropy, P(h) of a Witten-Bell (N-1)-gram"
COUNT = "count (lmplz --prune)"
COUNT_PRUNES = [[0, 0, 1], [0, 1, 1], [0, 0, 2], [0, 1, 2], [0, 2, 2], [0, 3, 3], [0, 5, 5], [0, 10, 10]]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--order", type=int, default=5)
    ap.add_argument("--train", type=Path, default=DATA / "wikitext-2" / "valid.txt")
    ap.add_argument("--test", type=Path, default=DATA / "wikitext-2" / "test.txt")
    ap.add_argument("--thresholds", type=float, nargs="+", default=THRESHOLDS)
    ap.add_argument("--png", type=Path, default=Path(__file__).resolve().parents[1] / "docs" / "ngram_prune.png")
    args = ap.parse_args()
    test = args.test.read_text(encoding="utf-8").split("\n")[:-1]
    options = dict(skip_symbols=True, progress=False)

    start = time.perf_counter()
    full = NGramLM.train(args.train, order=args.order, **options)
    history = NGramLM.train(args.train, order=max(args.order - 1, 1), smoothing="witten-bell", **options)
    rows = [("full model", "-", full, time.perf_counter() - start)]
    for label, hist in ((OWN, None), (HISTORY, history)):
        for threshold in args.thresholds:
            start = time.perf_counter()
            rows.append((label, f"{threshold:g}", entropy_prune(full, threshold, history=hist),
                         time.perf_counter() - start))
    for prune in COUNT_PRUNES:
        prune = prune + [prune[-1]] * (args.order - len(prune))
        start = time.perf_counter()
        model = NGramLM.train(args.train, order=args.order, prune=prune, **options)
        rows.append((COUNT, " ".join(map(str, prune)), model, time.perf_counter() - start))

    orders = " | ".join(f"{n}-grams" for n in range(1, args.order + 1))
    print(f"| pruning | threshold | {orders} | n-grams | test ppl | seconds |")
    print("|---|---|" + "---|" * args.order + "---|---|---|")
    points = {}
    for label, threshold, model, seconds in rows:
        ppl = model.perplexity(test)
        sizes = " | ".join(f"{len(t.keys):,}" for t in model.tables)
        print(f"| {label} | {threshold} | {sizes} | {model.num_parameters():,} | {ppl:.2f} | {seconds:.2f} |",
              flush=True)
        points.setdefault(label, []).append((model.num_parameters(), ppl))
    plot(points, args)
    equal_size_table(full, history, [model for label, _, model, _ in rows if label == COUNT], test)


def equal_size_table(full: NGramLM, history: NGramLM, counted: list, test: list[str]) -> None:
    """Each count-pruned model beside the largest entropy-pruned model (each P(h)) with no more n-grams."""
    print(f"\n| count-pruned n-grams | ppl | {OWN}: threshold | n-grams | ppl | {HISTORY}: threshold | n-grams | ppl |")
    print("|---|---|---|---|---|---|---|---|")
    for model in sorted(counted, key=NGramLM.num_parameters, reverse=True):
        size = model.num_parameters()
        cells = [f"{size:,}", f"{model.perplexity(test):.2f}"]
        for hist in (None, history):
            threshold = threshold_for_size(full, size, history=hist)
            small = entropy_prune(full, threshold, history=hist)
            cells += [f"{threshold:.3g}", f"{small.num_parameters():,}", f"{small.perplexity(test):.2f}"]
        print("| " + " | ".join(cells) + " |", flush=True)


def plot(points: dict, args) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter, NullFormatter

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for label, marker in ((OWN, "o"), (HISTORY, "s"), (COUNT, "^")):
        xs, ys = zip(*sorted(points[label]))
        ax.plot(xs, ys, marker=marker, label=label)
    (size, ppl), = points["full model"]
    ax.plot([size], [ppl], "k*", markersize=12, label="unpruned")
    ax.set_xscale("log")
    ax.xaxis.set_major_formatter(FuncFormatter(lambda x, _: f"{x / 1000:g}k"))
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xticks([1e4, 2e4, 5e4, 1e5, 2e5, 5e5, 1e6])
    ax.set_xlim(min(x for pts in points.values() for x, _ in pts) * 0.9, size * 1.15)
    ax.set_xlabel("n-grams in the model (all orders)")
    ax.set_ylabel("test perplexity (incl. OOVs)")
    ax.set_title(f"{args.order}-gram MKN on {args.train.parent.name}/{args.train.name} -> {args.test.name}")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    with atomic_open(args.png, "wb") as f:
        fig.savefig(f, format="png", dpi=110)
    print(f"wrote {args.png}")


if __name__ == "__main__":
    main()
