"""A small headline-style summarization task built from WikiText-2 (no summarization corpus is available here),
then an encoder-decoder trained and scored with ROUGE-1/2/L (rouge-score) against simple baselines.

Task: the first sentence of each WikiText-2 paragraph -> the heading it sits under (the article title for the
lead paragraphs, else its section or subsection heading); with --target title, -> its article's title. Train/val from valid.txt (last 10% of the pairs =
val), test from test.txt: different articles. Paragraphs under a heading that contains <unk> are left out. WikiText's " @-@ " / " @,@ " / " @.@ " are joined back; its
<unk> tokens stay. It is a proxy for headline generation, not a standard benchmark: headings are short and
often generic ("History", "Reception"), so scores are not comparable with CNN/DM or Gigaword figures.

Usage: .venv/bin/python benchmarks/seq2seq_headlines.py [--steps 800]   (writes runs/headlines/)
"""
from __future__ import annotations

import argparse
import re
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
WIKI = ROOT.parent / "shared" / "data" / "wikitext-2"
HEADING = re.compile(r"^ (= )+.+ (= )*=\s*$")  # " = Title = ", " = = Section = = ", ...


def detok(text: str) -> str:
    return text.replace(" @-@ ", "-").replace(" @,@ ", ",").replace(" @.@ ", ".").strip()


def pairs(path: Path, max_words: int = 60, target: str = "heading") -> list[tuple[str, str]]:
    out, heading = [], None
    for line in path.read_text(encoding="utf-8").splitlines():
        if HEADING.match(line):
            if target == "heading" or line.startswith(" = ") and not line.startswith(" = = "):
                heading = detok(line.strip().strip("= "))
            continue
        if not line.strip() or heading is None or "<unk>" in heading:  # an <unk> heading cannot be predicted
            continue
        first = line.strip().split(" . ")[0]
        words = first.split()[:max_words]
        out.append((detok(" ".join(words)) + ("" if len(words) == max_words else " ."), heading))
    return out


def write(path: Path, lines: list[str]) -> None:
    path.write_text("".join(line.replace("\n", " ") + "\n" for line in lines), encoding="utf-8")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=800)
    ap.add_argument("--out", default=str(ROOT / "runs" / "headlines"))
    ap.add_argument("--target", choices=["heading", "title"], default="heading",
                    help="heading: the paragraph's own (sub)section heading; title: its article's title")
    args = ap.parse_args()
    out = Path(args.out)
    data = out / "text"
    data.mkdir(parents=True, exist_ok=True)
    train, test = pairs(WIKI / "valid.txt", target=args.target), pairs(WIKI / "test.txt", target=args.target)
    n_val = len(train) // 10
    train, val = train[:-n_val], train[-n_val:]
    for name, rows in (("train", train), ("val", val), ("test", test)):
        write(data / f"{name}.src", [s for s, _ in rows])
        write(data / f"{name}.tgt", [t for _, t in rows])
    print(f"pairs: train {len(train)}, val {len(val)}, test {len(test)}")
    lmlab = [str(ROOT / ".venv" / "bin" / "lmlab")]
    run = lambda *a: subprocess.run([*lmlab, *map(str, a)], check=True, capture_output=True, text=True).stdout
    run("seq2seq", "prepare", "--src", data / "train.src", "--tgt", data / "train.tgt", "--val-src", data / "val.src",
        "--val-tgt", data / "val.tgt", "--vocab-size", 4000, "--out", out / "data")
    from lmlab.metrics import text_metric

    refs = [t for _, t in test]
    frequent = Counter(t for _, t in train).most_common(1)[0][0]
    for name, hyps in (("most frequent heading", [frequent] * len(test)),
                       ("first 3 words of the source", [" ".join(s.split()[:3]) for s, _ in test])):
        r = text_metric(hyps, refs, "rouge")
        print(f"| {name} | {r['rouge1']:.2f} | {r['rouge2']:.2f} | {r['rougeL']:.2f} |")
    if not (out / "run" / "model.safetensors").exists():
        start = time.time()
        run("seq2seq", "train", "--config", ROOT / "configs" / "headlines.yaml", "--out", out / "run", "--quiet",
            "--data.dir", out / "data", "--train.max_iters", args.steps,
            "--train.eval_interval", max(1, args.steps // 4), "--train.eval_iters", -(-len(val) // 32))
        print(f"trained {args.steps} steps in {time.time() - start:.0f} s wall")
    for beams in (1, 4):
        text = run("eval", out / "run", "--data", data / "test.src", "--refs", data / "test.tgt", "--metric", "rouge",
                   "--num-beams", beams, "--max-new-tokens", 24, "--hyps", out / f"test.beam{beams}.tgt")
        print(text.strip())
    sys.stdout.flush()


if __name__ == "__main__":
    main()
