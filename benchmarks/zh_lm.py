"""Language models of Chinese text: People's Daily 1998 (../shared/data/zh), bits per character and per byte of the
test split, every model trained on the train split, in one run.

    python benchmarks/zh_lm.py [--gpt-steps 3000] [--lstm-steps 900] [--bpe-steps 3000] [--budget SECONDS]
                               [--parts ...] [--lmplz PATH]

Models:
- char 5-gram (modified Kneser-Ney, `lmlab ngram train -o 5 --tokenizer char`): the KenLM recipe for Chinese;
  scored again by the `kenlm` module (word by word through its state API) to the same total.
- lmplz (`--parts lmplz`, needs KenLM's lmplz): char and jieba-word 5-grams (--discount-fallback on both sides)
  against lmplz's ARPA of the same text written with spaces between our words, entry by entry.
- word 3-gram over the gold segmentation (train.seg.txt -> test.seg.txt) and over jieba's (`--tokenizer jieba` on
  the raw text): what segmentation quality costs.
- char LSTM, char GPT (configs/peoples-daily-char-gpt.yaml) and a byte-level-BPE GPT (the same config on BPE
  tokens, vocabulary 4,000): `lmlab prepare` + `lmlab train`, then `lmlab compare` on test.txt.
- tokenizers: byte-level BPE vs character-alphabet BPE (`--tokenizer char-bpe`), both 8,000 entries from the train
  split (the train split has ~4,600 distinct characters: a char-bpe of 4,000 would have no merges at all): tokens
  per character of test, the share of test tokens that are not whole characters, and <unk> tokens.
- throughput: `lmlab prepare --tokenizer jieba` of the train split, characters/s with 1 and 2 workers (the same
  output), and jieba 0.42.1's own cut of the same lines (pip install jieba==0.42.1) for reference.
Neural models get the same wall-clock budget on 2 cores, about 7 minutes each: 3,000 steps of 16 x 128 tokens for the
GPTs, 900 steps of 32 x 100 for the LSTM (the LSTM's step costs ~3x a GPT step here); their train times are printed.
With --budget SECONDS each gets exactly that much training time instead (train.max_seconds: the run ends after the
step that reaches it, its cosine schedule decaying over the budget).

Every figure divides the total information (-log2 P, each line's end included) by the raw test text's characters
(newlines included) or its UTF-8 bytes, so all models compare. Out-of-vocabulary words and characters are scored
as each model scores them (<unk> for the n-grams, U+FFFD for the char models: their vocabulary keeps characters
seen at least twice); their rates are printed. Results also go to OUT/zh_lm-PARTS.json.
"""
from __future__ import annotations

import argparse
import json
import math
import shutil
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

from ngram_train import _entries

REPO = Path(__file__).resolve().parents[1]
PD = REPO.parent / "shared" / "data" / "zh" / "peoples-daily-1998"
LOG2_10 = math.log2(10)


def run_cli(*args) -> str:
    r = subprocess.run([sys.executable, "-m", "lmlab.cli", *map(str, args)], capture_output=True, text=True)
    if r.returncode:
        sys.exit(f"lmlab {' '.join(map(str, args[:2]))} failed: {(r.stderr or '').strip()[-2000:]}")
    return r.stdout


def lines_of(name: str) -> list[str]:
    return (PD / name).read_text(encoding="utf-8").splitlines()


def per_char(total_log10: float, test: list[str]) -> dict:
    chars = sum(len(line) + 1 for line in test)
    nbytes = sum(len(line.encode("utf-8")) + 1 for line in test)
    bits = -total_log10 * LOG2_10
    return {"bits_per_char": bits / chars, "bits_per_byte": bits / nbytes}


def ngram_row(name: str, model, test_lines: list[str], raw_test: list[str], seconds: float) -> dict:
    total = sum(model.score(line) for line in test_lines)
    words = [w for line in test_lines for w in model.scheme.split(line)]
    oov = sum(1 for w in words if w not in model.vocab.index) / max(len(words), 1)
    return {"model": name, **per_char(total, raw_test), "train_s": seconds, "oov_rate": oov,
            "tokens_per_char": (len(words) + len(test_lines)) / sum(len(line) + 1 for line in raw_test)}


def ngrams(args, out: Path, raw_test: list[str]) -> list[dict]:
    from lmlab.models.ngram import NGramLM

    rows = []
    start = time.perf_counter()
    char5 = NGramLM.train(PD / "train.txt", order=5, tokenizer="char", progress=False)
    rows.append(ngram_row("char 5-gram (MKN)", char5, raw_test, raw_test, time.perf_counter() - start))
    char5.save_arpa(out / "char5.arpa")
    rows[-1].update(kenlm_check(out / "char5.arpa", char5, raw_test[:200]))
    start = time.perf_counter()
    gold = NGramLM.train(PD / "train.seg.txt", order=3, progress=False)
    rows.append(ngram_row("word 3-gram, gold segmentation", gold, lines_of("test.seg.txt"), raw_test,
                          time.perf_counter() - start))
    start = time.perf_counter()
    jieba = NGramLM.train(PD / "train.txt", order=3, tokenizer="jieba", progress=False)
    rows.append(ngram_row("word 3-gram, jieba segmentation", jieba, raw_test, raw_test, time.perf_counter() - start))
    return rows


def kenlm_check(arpa: Path, model, test: list[str]) -> dict:
    """The kenlm module's total for the same lines (its Python score() splits on Unicode blanks, so words go one
    by one through BaseScore)."""
    try:
        import kenlm
    except ImportError:
        return {"kenlm": "not installed"}
    k = kenlm.Model(str(arpa))
    ours = theirs = 0.0
    for line in test:
        state = kenlm.State()
        k.BeginSentenceWrite(state)
        for w in model.scheme.split(line) + ["</s>"]:
            nxt = kenlm.State()
            theirs += k.BaseScore(state, w, nxt)
            state = nxt
        ours += model.score(line)
    return {"kenlm_log10_total": theirs, "lmlab_log10_total": ours}


def lmplz_checks(lmplz: str, out: Path) -> dict:
    """lmplz -o 5 on the training text written as our words with spaces between them (the char scheme's words; jieba's
    words), against lmlab's 5-gram of the raw text with --tokenizer char / jieba: every entry's log10 probability and
    backoff, and wall times."""
    from lmlab.models.ngram import NGramLM

    result = {}
    for scheme in ("char", "jieba"):
        start = time.perf_counter()
        model = NGramLM.train(PD / "train.txt", order=5, tokenizer=scheme, discount_fallback=True, progress=False)
        ours_s = time.perf_counter() - start
        spaced = out / f"train.{scheme}.txt"
        spaced.write_text("".join(" ".join(model.scheme.split(line)) + "\n" for line in lines_of("train.txt")),
                          encoding="utf-8")
        ref = out / f"lmplz-{scheme}5.arpa"
        start = time.perf_counter()
        with open(spaced, "rb") as src, open(ref, "wb") as dst:
            subprocess.run([lmplz, "-o", "5", "-S", "1G", "--discount_fallback"], stdin=src, stdout=dst,
                           stderr=subprocess.DEVNULL, check=True)
        lmplz_s = time.perf_counter() - start
        theirs = NGramLM.from_arpa(ref, tokenizer="word")
        worst, entries, missing = 0.0, 0, 0
        for n in range(len(model.tables)):
            ours, ref_entries = _entries(model, n), _entries(theirs, n)
            missing += len(ours.keys() ^ ref_entries.keys())
            for key, (prob, backoff) in ref_entries.items():
                if key in ours:
                    worst = max(worst, abs(ours[key][0] - prob), abs(ours[key][1] - backoff))
                    entries += 1
        result[scheme] = {"entries": entries, "entries_not_in_both": missing, "max_abs_diff": worst,
                          "lmlab_s": ours_s, "lmplz_s": lmplz_s}
    return result


def char_vocab_size(train: str) -> int:
    counts = Counter(train)
    return sum(1 for c in counts.values() if c >= 2) + 1  # + U+FFFD for the characters seen once


def neural(args, out: Path, raw_test: list[str]) -> list[dict]:
    train_file = PD / "train.txt"
    vocab = char_vocab_size(train_file.read_text(encoding="utf-8"))
    runs = []
    if "char" in args.parts:
        run_cli("prepare", train_file, "--tokenizer", "char", "--vocab-size", vocab, "--out", out / "pd-char",
                "--quiet")
    if "bpe" in args.parts:
        run_cli("prepare", train_file, "--tokenizer", "bpe", "--vocab-size", 4000, "--out", out / "pd-bpe", "--quiet")
    plan = {"gpt": ("char GPT 4x128", "pd-char", "peoples-daily-char-gpt.yaml", args.gpt_steps),
            "lstm": ("char LSTM 2x512", "pd-char", "peoples-daily-char-lstm.yaml", args.lstm_steps),
            "bpe": ("byte-level-BPE GPT 4x128", "pd-bpe", "peoples-daily-char-gpt.yaml", args.bpe_steps)}
    names = {}
    for part, (name, data, config, steps) in plan.items():
        if part not in args.parts:
            continue
        run = out / f"run-{part}"
        shutil.rmtree(run, ignore_errors=True)
        # --budget: every model the same seconds of training (train.max_seconds; max_iters out of the way, the
        # cosine decay following the budget), else the fixed step counts.
        limit = (["--train.max_seconds", args.budget, "--train.max_iters", 10_000_000, "--train.lr_decay_iters",
                  "none"] if args.budget else ["--train.max_iters", steps, "--train.lr_decay_iters", steps])
        run_cli("train", "--config", REPO / "configs" / config, "--data.dir", out / data, *limit, "--out", run,
                "--quiet")
        runs.append(run)
        names[str(run)] = name
    if not runs:
        return []
    test = out / "test.txt"
    test.write_text("\n".join(raw_test) + "\n", encoding="utf-8")
    run_cli("compare", *runs, "--data", test, "--out", out / "compare")
    import csv

    rows = []
    with open(out / "compare" / "compare.csv", newline="", encoding="utf-8") as f:
        for r in csv.DictReader(f):
            rows.append({"model": names[r["path"]], "bits_per_char": float(r["bits_per_char"]),
                         "bits_per_byte": float(r["bits_per_byte"]), "train_s": float(r["train_seconds"]),
                         "parameters": int(r["parameters"]),
                         "tokens_per_char": int(r["tokens"]) / sum(len(line) + 1 for line in raw_test)})
    return rows


def tokenizers(out: Path, raw_test: list[str]) -> dict:
    from lmlab.tokenizer import train_tokenizer

    train = (PD / "train.txt").read_text(encoding="utf-8")
    test = "\n".join(raw_test) + "\n"
    result = {}
    for kind in ("bpe", "char-bpe"):
        tok = train_tokenizer(kind, [train], vocab_size=8000)
        ids = tok.encode(test)
        broken = sum(1 for i in ids if "\ufffd" in tok.decode([i]))
        unk = sum(1 for i in ids if tok.decode([i]) == "<unk>")
        result[kind] = {"tokens_per_char": len(ids) / len(test), "partial_character_tokens": broken / len(ids),
                        "unk_tokens": unk, "round_trip": tok.decode(ids) == test}
    return result


def throughput(out: Path) -> dict:
    """`lmlab prepare --tokenizer jieba` of the train split with 1 and 2 workers (characters/s, identical output),
    next to jieba 0.42.1's own cut of the same lines in this process when jieba is installed."""
    train = PD / "train.txt"
    chars = len(train.read_text(encoding="utf-8"))
    result = {"characters": chars}
    for workers in (1, 2):
        start = time.perf_counter()
        run_cli("prepare", train, "--tokenizer", "jieba", "--workers", workers, "--quiet", "--out",
                out / f"pd-jieba-w{workers}")
        result[f"prepare_workers{workers}_chars_per_s"] = chars / (time.perf_counter() - start)
    result["identical"] = all((out / "pd-jieba-w1" / f).read_bytes() == (out / "pd-jieba-w2" / f).read_bytes()
                              for f in ("train.bin", "val.bin", "tokenizer.json"))
    try:
        import jieba
    except ImportError:
        return result
    import logging

    jieba.setLogLevel(logging.WARNING)
    jieba.initialize()
    lines = train.read_text(encoding="utf-8").splitlines()
    start = time.perf_counter()
    for line in lines:
        list(jieba.cut(line))
    result["jieba_0.42.1_cut_chars_per_s"] = chars / (time.perf_counter() - start)
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=str(REPO / "runs" / "zh-lm"))
    ap.add_argument("--parts", nargs="+", default=["ngram", "char", "gpt", "lstm", "bpe", "tokenizers", "throughput"])
    ap.add_argument("--gpt-steps", type=int, default=3000)
    ap.add_argument("--lstm-steps", type=int, default=900)  # ~ the GPTs' 3,000 steps of wall time on 2 cores
    ap.add_argument("--bpe-steps", type=int, default=3000)
    ap.add_argument("--budget", type=float, help="seconds of training per neural model (train.max_seconds), "
                    "instead of the step counts")
    ap.add_argument("--lmplz", default=shutil.which("lmplz"), help="KenLM's lmplz for the entry-by-entry check")
    args = ap.parse_args()
    if "gpt" in args.parts or "lstm" in args.parts:
        args.parts.append("char")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    raw_test = lines_of("test.txt")
    result: dict = {"date": time.strftime("%Y-%m-%d"), "rows": []}
    if "ngram" in args.parts:
        result["rows"] += ngrams(args, out, raw_test)
    result["rows"] += neural(args, out, raw_test)
    if "tokenizers" in args.parts:
        result["tokenizers"] = tokenizers(out, raw_test)
    if "throughput" in args.parts:
        result["throughput"] = throughput(out)
    if "lmplz" in args.parts:
        if not args.lmplz:
            sys.exit("--parts lmplz needs KenLM's lmplz (on PATH or --lmplz PATH)")
        result["lmplz"] = lmplz_checks(args.lmplz, out)
    (out / f"zh_lm-{'-'.join(args.parts)}.json").write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    print("| model | bits/char | bits/byte | tokens/char | train time (s) |\n|---|---|---|---|---|")
    for r in result["rows"]:
        print(f"| {r['model']} | {r['bits_per_char']:.3f} | {r['bits_per_byte']:.4f} | {r['tokens_per_char']:.3f} | "
              f"{r['train_s']:.0f} |")
    for key in ("kenlm_log10_total", "lmplz_max_abs_diff", "oov_rate"):
        for r in result["rows"]:
            if key in r:
                print(f"{r['model']}: {key} = {r[key]}")
    for key in ("tokenizers", "throughput", "lmplz"):
        if key in result:
            print(json.dumps(result[key], indent=2))


if __name__ == "__main__":
    main()
