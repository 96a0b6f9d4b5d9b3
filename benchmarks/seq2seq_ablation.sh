#!/usr/bin/env bash
# Does denoising-autoencoder pretraining on target-side (English) monolingual text help de->en BLEU at equal
# fine-tuning steps? Three runs of configs/multi30k-de-en-ablation.yaml (3 + 3 layers x 128):
#   dae      lmlab seq2seq pretrain on the English side of Multi30k train (29,000 lines; BART-style noise)
#   ft       fine-tuned from dae with --init, max_iters steps on the pairs
#   scratch  the same steps on the pairs from random weights
# then detokenized BLEU (sacrebleu) of ft and scratch on test_2016_flickr, greedy.
# Needs runs/data/multi30k-de-en (see configs/multi30k-de-en.yaml). Usage: bash benchmarks/seq2seq_ablation.sh
set -euo pipefail
cd "$(dirname "$0")/.."
LMLAB=${LMLAB:-.venv/bin/lmlab}
M30K=${M30K:-../shared/data/multi30k}
CFG=configs/multi30k-de-en-ablation.yaml
OUT=${OUT:-runs/ablation}
STEPS=${STEPS:-500}
mkdir -p "$OUT"
time_it() { local start=$SECONDS; "$@"; echo "  ($((SECONDS - start)) s wall)"; }
[ -f "$OUT/dae/model.safetensors" ] || time_it $LMLAB seq2seq pretrain --text "$M30K/train.en" --val-text "$M30K/val.en" \
    --tokenizer runs/data/multi30k-de-en --config $CFG --out "$OUT/dae" --quiet --train.max_iters "$STEPS"
[ -f "$OUT/ft/model.safetensors" ] || time_it $LMLAB seq2seq train --config $CFG --init "$OUT/dae" --out "$OUT/ft" --quiet \
    --train.max_iters "$STEPS"
[ -f "$OUT/scratch/model.safetensors" ] || time_it $LMLAB seq2seq train --config $CFG --out "$OUT/scratch" --quiet \
    --train.max_iters "$STEPS"
for run in ft scratch; do
  echo "== $run"
  $LMLAB eval "$OUT/$run" --data "$M30K/test_2016_flickr.de" --refs "$M30K/test_2016_flickr.en" --metric bleu \
      --hyps "$OUT/$run.test2016.greedy.en"
done
