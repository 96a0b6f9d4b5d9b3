"""Chinese review sentiment (../shared/data/zh/sentiment: 13,926 train / 1,741 valid / 1,741 test, fixed split):
lmlab's classifiers against snownlp's naive Bayes and a scikit-learn TF-IDF + logistic regression, one run.

    python benchmarks/zh_classify.py [--parts snownlp sklearn lstm-char lstm-jieba encoder gpt] [--gpt-init RUN]

Peers (install them for this benchmark: pip install snownlp==0.12.3 scikit-learn==1.9.1):
- snownlp's `Sentiment` (its own word segmentation, stop words, naive Bayes) retrained on train.tsv: the package's
  shipped model was trained on all of these reviews, test included, so it is not used.
- scikit-learn: character 1-2-gram TF-IDF (sublinear tf) + logistic regression, C chosen on valid.tsv from
  0.25 / 1 / 4 / 16.
lmlab (validation: valid.tsv, keep-best; scored once on test.tsv):
- lstm-char / lstm-jieba: `lmlab classify train --model lstm --tokenizer char|jieba` (BiLSTM, max pooling), 5 epochs.
- encoder: a BERT-style encoder (4 x 128, WordPiece 6,000: BERT's normalizer splits every CJK character) MLM-pretrained
  on People's Daily 1998 train (--mlm-steps of 32 x 128 tokens), then `lmlab classify train --model encoder --init`.
- gpt: `--model gpt --init RUN` from a People's Daily char GPT (benchmarks/zh_lm.py's run-gpt, or --gpt-init), with
  --label-lms (one LM per label).
Accuracy and macro F1 on test.tsv; wall time of each (pretraining included). Results also go to OUT/zh_classify.json.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
ZH = REPO.parent / "shared" / "data" / "zh"
SENT = ZH / "sentiment"


def run_cli(*args) -> str:
    r = subprocess.run([sys.executable, "-m", "lmlab.cli", *map(str, args)], capture_output=True, text=True)
    if r.returncode:
        sys.exit(f"lmlab {' '.join(map(str, args[:2]))} failed: {(r.stderr or '').strip()[-2000:]}")
    return r.stdout


def read_tsv(name: str) -> tuple[list[str], list[str]]:
    rows = [line.split("\t") for line in (SENT / name).read_text(encoding="utf-8").splitlines()[1:]]
    return [r[0] for r in rows], [r[1] for r in rows]


def scores(gold: list[str], pred: list[str]) -> dict:
    from lmlab.metrics import classification_report

    labels = ["neg", "pos"]
    report = classification_report([labels.index(y) for y in gold], [labels.index(y) for y in pred], labels)
    return {"accuracy": report["accuracy"], "macro_f1": report["macro_f1"]}


def snownlp_peer(args, out: Path) -> dict:
    try:
        from snownlp.sentiment import Sentiment
    except ImportError:
        sys.exit("install the peer: pip install snownlp==0.12.3")
    texts, labels = read_tsv("train.tsv")
    test, gold = read_tsv("test.tsv")
    start = time.perf_counter()
    model = Sentiment()
    model.train([t for t, y in zip(texts, labels) if y == "neg"], [t for t, y in zip(texts, labels) if y == "pos"])
    seconds = time.perf_counter() - start
    pred = ["pos" if model.classify(t) >= 0.5 else "neg" for t in test]
    return {"model": "snownlp Sentiment (naive Bayes), retrained", **scores(gold, pred), "wall_s": seconds}


def sklearn_peer(args, out: Path) -> dict:
    try:
        from sklearn.feature_extraction.text import TfidfVectorizer
        from sklearn.linear_model import LogisticRegression
    except ImportError:
        sys.exit("install the peer: pip install scikit-learn==1.9.1")
    texts, labels = read_tsv("train.tsv")
    valid, valid_gold = read_tsv("valid.tsv")
    test, gold = read_tsv("test.tsv")
    start = time.perf_counter()
    vec = TfidfVectorizer(analyzer="char", ngram_range=(1, 2), sublinear_tf=True)
    x = vec.fit_transform(texts)
    fits = {c: LogisticRegression(C=c, max_iter=2000).fit(x, labels) for c in (0.25, 1.0, 4.0, 16.0)}
    best = max(fits, key=lambda c: (fits[c].predict(vec.transform(valid)) == valid_gold).mean())
    seconds = time.perf_counter() - start
    pred = list(fits[best].predict(vec.transform(test)))
    return {"model": f"scikit-learn char 1-2-gram TF-IDF + logistic regression (C={best})", **scores(gold, pred),
            "wall_s": seconds}


def lmlab_eval(run: Path) -> dict:
    result = json.loads(run_cli("classify", "eval", run, "--data", SENT / "test.tsv", "--json"))
    return {"accuracy": result["accuracy"], "macro_f1": result["macro_f1"]}


def lstm(tokenizer: str):
    def part(args, out: Path) -> dict:
        run = out / f"lstm-{tokenizer}"
        start = time.perf_counter()
        run_cli("classify", "train", "--train", SENT / "train.tsv", "--val", SENT / "valid.tsv", "--model", "lstm",
                "--tokenizer", tokenizer, "--quiet", "--out", run)
        return {"model": f"lmlab BiLSTM, {tokenizer} tokens", **lmlab_eval(run), "wall_s": time.perf_counter() - start}
    return part


def encoder(args, out: Path) -> dict:
    import lmlab
    from lmlab.tokenizer import train_wordpiece

    start = time.perf_counter()
    text = (ZH / "peoples-daily-1998" / "train.txt").read_text(encoding="utf-8")
    tok = train_wordpiece(text.splitlines(), 6000)
    lmlab.prepare(ZH / "peoples-daily-1998" / "train.txt", out / "mlm-data", tokenizer=tok, progress=False)
    cfg = lmlab.load_config(None, {
        "model.family": "encoder", "model.n_layer": "4", "model.n_head": "4", "model.n_embd": "128",
        "model.block_size": "128", "model.pooler": "true", "data.dir": str(out / "mlm-data"),
        "train.max_iters": str(args.mlm_steps), "train.batch_size": "32", "train.learning_rate": "1e-3",
        "train.warmup_iters": "100", "train.eval_interval": "250", "train.eval_iters": "10",
        "train.tensorboard": "false"})
    lmlab.train(cfg, out / "mlm", progress=False)
    run = out / "encoder"
    run_cli("classify", "train", "--train", SENT / "train.tsv", "--val", SENT / "valid.tsv", "--model", "encoder",
            "--init", out / "mlm", "--epochs", 3, "--lr", "1e-4", "--quiet", "--out", run)
    return {"model": f"lmlab encoder 4x128, MLM-pretrained on People's Daily ({args.mlm_steps} steps), fine-tuned",
            **lmlab_eval(run), "wall_s": time.perf_counter() - start}


def gpt(args, out: Path) -> dict:
    init = Path(args.gpt_init)
    if not (init / "model.safetensors").exists():
        sys.exit(f"{init} is not a run: train it with benchmarks/zh_lm.py --parts gpt (or give --gpt-init RUN)")
    run = out / "gpt"
    start = time.perf_counter()
    run_cli("classify", "train", "--train", SENT / "train.tsv", "--val", SENT / "valid.tsv", "--model", "gpt",
            "--init", init, "--epochs", 3, "--lr", "1e-3", "--pooling", "max", "--label-lms", "--quiet", "--out", run)
    return {"model": "lmlab char GPT 4x128 pretrained on People's Daily, fine-tuned, --label-lms",
            **lmlab_eval(run), "wall_s": time.perf_counter() - start}


PARTS = {"snownlp": snownlp_peer, "sklearn": sklearn_peer, "lstm-char": lstm("char"), "lstm-jieba": lstm("jieba"),
         "encoder": encoder, "gpt": gpt}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=str(REPO / "runs" / "zh-classify"))
    ap.add_argument("--parts", nargs="+", default=list(PARTS), choices=list(PARTS))
    ap.add_argument("--mlm-steps", type=int, default=1000)
    ap.add_argument("--gpt-init", default=str(REPO / "runs" / "zh-lm" / "run-gpt"))
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for name in args.parts:
        rows.append(PARTS[name](args, out))
        print(f"{rows[-1]['model']}: accuracy {rows[-1]['accuracy']:.4f}, macro F1 {rows[-1]['macro_f1']:.4f}, "
              f"{rows[-1]['wall_s']:.0f} s", flush=True)
        (out / "zh_classify.json").write_text(json.dumps({"date": time.strftime("%Y-%m-%d"), "rows": rows},
                                                         indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    print("\n| model | accuracy | macro F1 | wall time (s) |\n|---|---|---|---|")
    for r in rows:
        print(f"| {r['model']} | {100 * r['accuracy']:.2f}% | {100 * r['macro_f1']:.2f}% | {r['wall_s']:.0f} |")


if __name__ == "__main__":
    main()
