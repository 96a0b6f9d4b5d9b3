"""N-best rescoring on Multi30k de->en: 10-best lists of lmlab's seq2seq (beam 10) on test_2016_flickr, rescored with
an English 5-gram, an LSTM and their mixture (all trained on Multi30k English train); BLEU before / after, lambda and
beta tuned on the val 10-best list.

    python benchmarks/rescore_multi30k.py [--run RUNS/multi30k-de-en] [--seq2seq-steps 5000] [--lstm-steps 1500]
                                          [--limit N] [--out runs/rescore-multi30k]

- seq2seq: --run an existing run (the README's 41.5-BLEU model is `lmlab seq2seq train --config
  configs/multi30k-de-en.yaml`, 5,000 steps, ~27 min on the 2-core CPU), or one trained here with
  --seq2seq-steps steps of that config (its data prepared as in the config's header, 8k shared BPE).
- n-best: `lmlab seq2seq translate RUN --num-beams 10 --n-best 10` of val (for tuning) and test_2016_flickr.
- LMs: `lmlab ngram train -o 5` on train.en (words, modified Kneser-Ney); an LSTM of
  configs/wikitext2-lstm-medium.yaml (2 x 650, dropout 0.5, tied) on train.en prepared with `--tokenizer word
  --vocab-size 6000`, --lstm-steps steps (README's Multi30k LSTM: 1,500); their mixture (`--lm 5gram --lm lstm`:
  linear per token when both cut the hypotheses into the same words, log-linear otherwise; rescore says which).
- rescore: `lmlab rescore TEST --lm ... --dev VAL --refs val.en --test-refs test_2016_flickr.en` (BLEU, sacrebleu).
  "first" is the beam's own 1-best (BLEU of `translate --num-beams 10`), "given" the best model log p alone.

Time on the quiet 2-core CPU (estimates from the README's runs): seq2seq 5,000 steps ~27 min, LSTM 1,500 steps
~20 min, the two 10-best lists ~4 min (beam 5 decodes 1,000 lines in 48 s), rescoring ~3 min (the LSTM scores
~21k sentences in batches; the mixture reuses both models' scores): ~55 min in all, ~8 min with --run and --lstm.
Everything is cached in --out (delete a file to redo its step). --limit N keeps the first N lines of val and test
(a quick check of the pipeline, not a result). Results: OUT/results.json and OUT/results.md.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
M30K = REPO.parent / "shared" / "data" / "multi30k"
sys.path.insert(0, str(REPO / "src"))


def lmlab(*args) -> float:
    """Run the lmlab CLI (this interpreter); exit with its message if it fails; return its wall time."""
    start = time.time()
    r = subprocess.run([sys.executable, "-m", "lmlab.cli", *map(str, args)], capture_output=True, text=True,
                       cwd=REPO)
    if r.returncode:
        sys.exit(f"lmlab {' '.join(map(str, args[:3]))} failed: {(r.stderr or '').strip()[-2000:]}")
    return time.time() - start


def step(what: str, target: Path, *args) -> None:
    if target.exists():
        print(f"{what}: {target} (cached)", flush=True)
        return
    print(f"{what} ...", flush=True)
    print(f"{what}: {lmlab(*args):.0f} s", flush=True)


def first_lines(src: Path, dst: Path, limit: int | None) -> Path:
    if limit is None:
        return src
    if not dst.exists():
        dst.write_text("".join(src.read_text(encoding="utf-8").splitlines(keepends=True)[:limit]), encoding="utf-8")
    return dst


def seq2seq_run(args, out: Path) -> Path:
    if args.run:
        return Path(args.run)
    data, run = out / "data-de-en", out / "seq2seq"
    step("prepare de-en pairs", data, "seq2seq", "prepare", "--src", M30K / "train.de", "--tgt", M30K / "train.en",
         "--val-src", M30K / "val.de", "--val-tgt", M30K / "val.en", "--vocab-size", 8000, "--out", data)
    step(f"train seq2seq ({args.seq2seq_steps} steps)", run / "model.safetensors", "seq2seq", "train", "--config",
         REPO / "configs" / "multi30k-de-en.yaml", "--out", run, "--quiet", "--data.dir", data,
         "--train.max_iters", args.seq2seq_steps, "--train.eval_interval", min(500, args.seq2seq_steps))
    return run


def language_models(args, out: Path) -> dict[str, list[Path]]:
    ngram, words, lstm = out / "en5.arpa", out / "en-word6k", out / "lstm"
    step("5-gram", ngram, "ngram", "train", "-o", 5, "--data", M30K / "train.en", "--out", ngram, "--quiet")
    if args.lstm:
        lstm = Path(args.lstm)
    else:
        step("prepare English words", words, "prepare", M30K / "train.en", "--tokenizer", "word", "--vocab-size", 6000,
             "--out", words, "--quiet")
        step(f"train LSTM ({args.lstm_steps} steps)", lstm / "model.safetensors", "train", "--config",
             REPO / "configs" / "wikitext2-lstm-medium.yaml", "--out", lstm, "--quiet", "--data.dir", words,
             "--train.max_iters", args.lstm_steps, "--train.eval_interval", min(250, args.lstm_steps),
             "--train.device", "cpu")
    return {"5-gram": [ngram], "LSTM": [lstm], "5-gram + LSTM": [ngram, lstm]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--run", help="an existing seq2seq run (else one is trained here)")
    p.add_argument("--seq2seq-steps", type=int, default=5000)
    p.add_argument("--lstm", help="an existing LSTM run on Multi30k English words (else one is trained here)")
    p.add_argument("--lstm-steps", type=int, default=1500)
    p.add_argument("--beams", type=int, default=10)
    p.add_argument("--limit", type=int, help="only the first N lines of val and test (a pipeline check)")
    p.add_argument("--out", default="runs/rescore-multi30k")
    args = p.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "2")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    run = seq2seq_run(args, out)
    lms = language_models(args, out)
    splits = {}
    for split, name in (("val", "val"), ("test", "test_2016_flickr")):
        src = first_lines(M30K / f"{name}.de", out / f"{name}.{args.limit}.de", args.limit)
        ref = first_lines(M30K / f"{name}.en", out / f"{name}.{args.limit}.en", args.limit)
        nbest = out / f"{split}.{args.beams}best{'' if args.limit is None else f'.{args.limit}'}.tsv"
        step(f"{args.beams}-best of {name}", nbest, "seq2seq", "translate", run, "--input", src, "--num-beams",
             args.beams, "--n-best", args.beams, "--out", nbest)
        splits[split] = (nbest, ref)
    from lmlab.rescore import rescore

    results, cache = {}, {}  # the mixture reuses the scores of its two models
    for name, paths in lms.items():
        start = time.time()
        r = rescore(splits["test"][0], paths, dev=splits["val"][0], refs=splits["val"][1],
                    test_refs=splits["test"][1], metric="bleu", cache=cache)
        results[name] = {"lambda": [float(x) for x in r["params"].lm_weights], "beta": r["params"].length_bonus,
                         "mix": r["mix"], "mixture_weights": [float(x) for x in r["mixture_weights"]],
                         "val": r["dev"], "test": r["test"], "seconds": time.time() - start}
        print(f"\n== {name} ({results[name]['seconds']:.0f} s)\n{r['report']}", flush=True)
    rows = ["| LM | lambda | beta | val BLEU first -> rescored | test_2016 BLEU first | given log p only | "
            "rescored | gain |", "|---|---|---|---|---|---|---|---|"]
    for name, r in results.items():
        lam = " / ".join(f"{x:.3g}" for x in r["lambda"])
        rows.append(f"| {name} | {lam} | {r['beta']:.3g} | {r['val']['before']:.2f} -> {r['val']['after']:.2f} | "
                    f"{r['test']['before']:.2f} | {r['test']['given_scores']:.2f} | {r['test']['after']:.2f} | "
                    f"{r['test']['after'] - r['test']['before']:+.2f} |")
    table = "\n".join(rows)
    (out / "results.json").write_text(json.dumps({"run": str(run), "limit": args.limit, "beams": args.beams,
                                                  "results": results}, indent=2) + "\n", encoding="utf-8")
    (out / "results.md").write_text(table + "\n", encoding="utf-8")
    print("\n" + table)


if __name__ == "__main__":
    main()
