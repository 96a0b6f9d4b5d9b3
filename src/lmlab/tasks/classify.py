"""Text classification: train an encoder / LSTM / GPT classifier on labelled texts through the same config ->
lmlab.train.train path as every model (so a run resumes and trains in several processes like any other), evaluate
it (accuracy, per-class and macro precision / recall / F1, confusion matrix) and predict.

`train_classifier` reads the labelled texts (lmlab.tasks.labeled: TSV / CSV / one file per label), builds the
model and its tokenizer (from scratch, or from an --init run or Hugging Face BERT: lmlab.tasks.classifier_init),
prepares RUN/data (the encoded texts and labels; for --init also RUN/data/init, the classifier it starts from,
removed once the run is trained), writes RUN/config.yaml and trains it with lmlab.train.train; then it fits the
label-LM weights (--label-lms) and writes the validation metrics. `resume_classifier` continues an interrupted run
the same way.

A classifier run directory is a normal run (config.yaml, config.json, model.safetensors, best.safetensors,
tokenizer.json, metrics.csv, loss.png) plus data/ and classify.json: the label names (index order), the columns,
the input format of the texts and the validation metrics. `lmlab.load(run)` loads the model like any other.
"""
from __future__ import annotations

import math
import shutil
import time
from pathlib import Path

import numpy as np

from ..errors import LmlabError
from ..files import atomic_write_json, read_json
from .batching import pad_rows
from .classifier_init import TRAIN_DEFAULTS, from_init, from_scratch, input_format_for, write_start
from .labeled import load_labeled, padding_id, read_labeled, split_indices, write_prepared

KINDS = ("encoder", "lstm", "gpt")
INFO = "classify.json"


# ---------------------------------------------------------------------------------------------
# Texts -> model inputs
# ---------------------------------------------------------------------------------------------


def encode_texts(tokenizer, texts: list[str], max_length: int, input_format: str) -> list[list[int]]:
    """Token ids of each text as the model reads it, at most max_length of them.

    bert: [CLS] text [SEP] (WordPiece). eot: the text then the end-of-text token (GPT's "extract" token).
    plain: the text's ids.
    """
    if input_format == "bert":
        return tokenizer.encode_special(texts, max_length)
    out = []
    for ids in tokenizer.encode_lines(texts):
        if input_format == "eot":
            ids = ids[:max_length - 1] + [tokenizer.eot_id]
        else:
            ids = ids[:max_length] or [0]
        out.append(ids)
    return out


def collate(rows: list[list[int]], pad_id: int):
    """(ids [B, T] int64 right-padded with pad_id, mask [B, T] bool) for lists of ids: a classifier's input."""
    return pad_rows(rows, pad_id, mask=True)


# ---------------------------------------------------------------------------------------------
# Train / resume
# ---------------------------------------------------------------------------------------------


def train_classifier(train, out, kind: str = "encoder", val=None, init=None, text_column: str = "text",
                     label_column: str = "label", encoding: str = "utf-8", val_fraction: float = 0.1,
                     split_seed: int = 0, max_length: int = 128, epochs: int | None = None,
                     batch_size: int | None = None, learning_rate: float | None = None, seed: int = 1337,
                     group_by_length: bool = True, overrides: dict | None = None, progress: bool = True,
                     nproc: int = 1, **options) -> dict:
    """Train a classifier of `kind` on the labelled texts of `train` into the run directory `out`.

    Without `val`, round(val_fraction * n) of the training texts (a split_indices(n, val_fraction, split_seed)
    split) are held out for validation. `init` is an lmlab run (an MLM-pretrained or converted encoder; a GPT)
    or a Hugging Face BERT directory. `options`: pooling, pooler, bidirectional, lm_loss_weight, label_lms, dropout,
    vocab_size (from-scratch tokenizer), tokenizer (lstm: word, char or jieba). `group_by_length`: training batches
    of similar lengths (LabelBatches).
    `overrides`: dotted config fields (model.X, train.X), applied last. `nproc` > 1 trains in that many processes
    (torchrun, like `lmlab train --nproc`). Returns train()'s summary plus the validation metrics.
    """
    from .. import distributed
    from ..checkpoint import STATE
    from ..config import load_config, save_config

    distributed.check_launcher(nproc, "lmlab classify train")
    if kind not in KINDS:
        raise LmlabError(f"unknown classifier {kind!r}; use --model {', '.join(KINDS)}.")
    out = Path(out)
    if (out / STATE).exists():
        raise LmlabError(f"{out} already holds a run; choose another --out.")
    if max_length < 2:
        raise LmlabError(f"--max-length must be at least 2 tokens, got {max_length}.")
    gpt_only = [name for name in ("lm_loss_weight", "label_lms") if options.get(name)]
    if kind != "gpt" and gpt_only:
        raise LmlabError(f"--{gpt_only[0].replace('_', '-')} is for --model gpt, not --model {kind}.")
    if options.get("tokenizer") and (kind != "lstm" or init is not None):
        raise LmlabError(f"--tokenizer is for --model lstm (from scratch); --model {kind} brings its own tokenizer.")
    (train_texts, train_labels), (val_texts, val_labels), names = _read_splits(
        train, val, text_column, label_column, encoding, val_fraction, split_seed)

    if init is not None:
        if TRAIN_DEFAULTS[kind][1] is None:
            raise LmlabError(f"--model {kind} trains from scratch; --init is for --model encoder or gpt.")
        model, tokenizer, tensors = from_init(kind, init, max_length, len(names), options)
    else:
        model, tokenizer, tensors = from_scratch(kind, train_texts, max_length, len(names), options)
    train_cfg = _train_section(TRAIN_DEFAULTS[kind][1 if init is not None else 0], len(train_texts), len(val_texts),
                               epochs, batch_size, learning_rate, seed)
    cfg = load_config(None, overrides, base={"model": model, "data": {"dir": str(out / "data")}, "train": train_cfg})

    fmt = input_format_for(kind, tokenizer)
    length = min(max_length, getattr(cfg.model, "block_size", None) or max_length)
    start = time.perf_counter()
    index = {name: i for i, name in enumerate(names)}
    write_prepared(cfg.data.dir, tokenizer,
                   {"train": (encode_texts(tokenizer, train_texts, length, fmt), [index[l] for l in train_labels]),
                    "val": (encode_texts(tokenizer, val_texts, length, fmt), [index[l] for l in val_labels])},
                   labels=names, input_format=fmt, max_length=length, group_by_length=group_by_length)
    start_run = write_start(Path(cfg.data.dir) / "init", cfg, tensors, init) if tensors is not None else None
    save_config(cfg, out / "config.yaml")  # what the processes of an --nproc run train
    atomic_write_json(out / INFO, {
        "labels": names, "text_column": text_column, "label_column": label_column, "encoding": encoding,
        "max_length": length, "input_format": fmt, "model": kind, "init": None if init is None else str(init),
        "train": str(train), "train_texts": len(train_texts),
        "val": str(val) if val is not None else f"{val_fraction:g} of {train} held out (split seed {split_seed})",
        "val_texts": len(val_texts)})
    if nproc > 1:
        argv = ["train", "--config", str(out / "config.yaml"), "--out", str(out)]
        argv += ["--init", str(start_run)] if start_run else []
        summary = distributed.train_processes(argv, nproc, out, progress)
    else:
        from ..train import train as train_run

        summary = train_run(cfg, out, progress=progress, init=start_run)
    return _finish(out, summary, start)


def resume_classifier(run, overrides: dict | None = None, progress: bool = True, nproc: int = 1) -> dict:
    """Continue an interrupted classifier run from its last checkpoint (its config.yaml, with overrides such as a
    longer train.max_iters), then fit and evaluate it as train_classifier does."""
    from .. import distributed
    from ..runs import resume_config
    from ..train import train

    distributed.check_launcher(nproc, "lmlab classify train")
    run = Path(run)
    if not (run / INFO).is_file():
        what = f"is not a classifier run (no {INFO})" if run.is_dir() else "does not exist"
        raise LmlabError(f"{run} {what}; --resume takes a run directory written by `lmlab classify train`.")
    cfg = resume_config(run, overrides)
    start = time.perf_counter()
    if nproc > 1:
        flags = [str(a) for key, value in (overrides or {}).items() for a in (f"--{key}", value)]
        summary = distributed.train_processes(["train", "--resume", str(run), *flags], nproc, run, progress)
    else:
        summary = train(cfg, run, resume=True, progress=progress)
    return _finish(run, summary, start)


def _read_splits(train, val, text_column, label_column, encoding, val_fraction, split_seed):
    """((train texts, labels), (val texts, labels), the label names): `val`'s texts, or a held-out share of
    `train`'s."""
    texts, labels = read_labeled(train, text_column, label_column, encoding)
    if val is not None:
        val_texts, val_labels = read_labeled(val, text_column, label_column, encoding)
        train_texts, train_labels = texts, labels
    else:
        tr, va = split_indices(len(texts), val_fraction, split_seed)
        train_texts, train_labels = [texts[i] for i in tr], [labels[i] for i in tr]
        val_texts, val_labels = [texts[i] for i in va], [labels[i] for i in va]
    names = sorted(set(train_labels))
    if len(names) < 2:
        raise LmlabError(f"{train} has a single label ({names[0]!r}); a classifier needs at least two.")
    check_known_labels(val_labels, names, val if val is not None else train)
    return (train_texts, train_labels), (val_texts, val_labels), names


def _train_section(defaults: dict, train_texts: int, val_texts: int, epochs, batch_size, learning_rate,
                   seed: int) -> dict:
    """The config's train section: the model's defaults, an evaluation and a checkpoint every epoch."""
    batch_size = batch_size or defaults["batch_size"]
    steps_per_epoch = math.ceil(train_texts / batch_size)
    max_iters = (epochs or defaults["epochs"]) * steps_per_epoch
    lr = learning_rate or defaults["learning_rate"]
    return {"max_iters": max_iters, "batch_size": batch_size, "learning_rate": lr, "min_lr": 0.0,
            "warmup_iters": max(1, round(0.06 * max_iters)), "weight_decay": 0.01, "beta2": 0.999,
            "eval_interval": steps_per_epoch, "eval_iters": math.ceil(val_texts / batch_size),
            "save_interval": steps_per_epoch, "log_interval": 10, "seed": seed}


def _finish(run: Path, summary: dict, start: float) -> dict:
    """After training: fit the label-LM weights (label_lms) and write the validation metrics into classify.json."""
    from ..checkpoint import save_model_config
    from ..config import load_config
    from ..runtime import resolve_device

    cfg = load_config(run / "config.yaml")
    shutil.rmtree(Path(cfg.data.dir) / "init", ignore_errors=True)  # the trained run no longer needs its start
    model, _, info = load_classifier(run, device=str(resolve_device(cfg.train.device)))
    val_ids, val_labels = load_labeled(cfg.data.dir, "val")
    if getattr(model.cfg, "label_lms", False):
        summary["head_scale"], summary["generative_scale"] = fit_generative_scales(model, val_ids, val_labels)
        save_model_config(model.cfg, run)
    probs = label_outputs(model, val_ids, len(info["labels"]), model.predict_proba)
    report = _report(np.asarray(val_labels), probs.argmax(1), info["labels"])
    info["val_metrics"] = {k: report[k] for k in ("accuracy", "macro_precision", "macro_recall", "macro_f1")}
    info["train_seconds"] = time.perf_counter() - start
    atomic_write_json(run / INFO, info)
    summary.update(val_metrics=info["val_metrics"], wall_seconds=info["train_seconds"], labels=info["labels"],
                   parameters=model.num_parameters(), model=info["model"])
    return summary


def fit_generative_scales(model, ids: list, labels) -> tuple[float, float]:
    """For a GPT classifier with one LM per label (model.label_lms): the weights of its two scores,
    logits = head_scale * head logits + generative_scale * log P(text | label), that minimise the cross-entropy on
    the validation texts (their token `ids` and label indices; a two-feature logistic regression, fitted with
    L-BFGS), set in model.cfg (the caller saves it). Fitted on held-out texts because both scores are overconfident
    on the texts they learned from."""
    import torch

    width = model.cfg.num_labels
    head = torch.as_tensor(label_outputs(model, ids, width, model.head_logits))
    generative = torch.as_tensor(label_outputs(model, ids, width, model.label_logprobs))
    y = torch.as_tensor(np.asarray(labels, dtype=np.int64))
    scales = torch.tensor([1.0, 0.0], dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([scales], max_iter=100, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(scales[0] * head + scales[1] * generative, y)
        loss.backward()
        return loss

    opt.step(closure)
    head_scale, generative_scale = scales.detach().tolist()
    model.cfg.head_scale = max(head_scale, 1e-3)  # kept positive: <= 0 would mean the head hurts on validation
    model.cfg.generative_scale = max(generative_scale, 0.0)
    return model.cfg.head_scale, model.cfg.generative_scale


# ---------------------------------------------------------------------------------------------
# Load / predict / evaluate
# ---------------------------------------------------------------------------------------------


def check_known_labels(labels: list[str], known: list[str], source) -> None:
    unknown = sorted(set(labels) - set(known))
    if unknown:
        count = sum(1 for l in labels if l in set(unknown))
        shown = ", ".join(repr(u) for u in unknown[:5]) + (", ..." if len(unknown) > 5 else "")
        raise LmlabError(f"{source} has label(s) the model was not trained on: {shown} ({count} text(s)); "
                         f"it knows {', '.join(known)}.")


def load_classifier(run, which: str = "best", device: str = "cpu"):
    """(model, tokenizer, classify.json info) of a classifier run."""
    from ..checkpoint import load

    run = Path(run)
    if not (run / INFO).is_file():
        raise LmlabError(f"{run} is not a classifier run (no {INFO}); give a run written by `lmlab classify train`.")
    model, tokenizer = load(run, which=which, device=device)
    return model, tokenizer, read_json(run / INFO)


def predict_proba(model, tokenizer, info: dict, texts: list[str], batch_size: int = 64) -> np.ndarray:
    """Class probabilities [N, num_labels] of the texts (batched by length, returned in input order)."""
    return batched_outputs(model, tokenizer, info, texts, model.predict_proba, batch_size)


def batched_outputs(model, tokenizer, info: dict, texts: list[str], fn, batch_size: int = 64) -> np.ndarray:
    """fn(ids, mask) -> [B, num_labels] over the texts, batched by length, returned in input order."""
    ids = encode_texts(tokenizer, texts, info["max_length"], info["input_format"])
    return label_outputs(model, ids, len(info["labels"]), fn, batch_size)


def label_outputs(model, ids: list, width: int, fn, batch_size: int = 64) -> np.ndarray:
    """fn(ids, mask) -> [B, width] over the rows of token ids, batched by length, returned in input order."""
    import torch

    order = np.argsort([len(r) for r in ids], kind="stable")
    out = np.zeros((len(ids), width), dtype=np.float64)
    device = next(model.parameters()).device
    model.eval()
    pad = padding_id(model.cfg)
    for start in range(0, len(ids), batch_size):
        rows = order[start:start + batch_size]
        x, mask = collate([ids[i] for i in rows], pad)
        with torch.inference_mode():
            out[rows] = fn(x.to(device), mask.to(device)).double().cpu().numpy()
    return out


def _report(y_true, y_pred, labels):
    from ..metrics import classification_report

    return classification_report(y_true, y_pred, labels)


def evaluate_classifier(run, data, text_column: str | None = None, label_column: str | None = None,
                        encoding: str | None = None, png=None, device: str = "cpu") -> dict:
    """Accuracy, per-class and macro P/R/F1 and the confusion matrix of a classifier run on labelled texts;
    the matrix is also drawn to `png` (default RUN/confusion.png)."""
    from ..report import plot_confusion

    model, tokenizer, info = load_classifier(run, device=device)
    texts, labels = read_labeled(data, text_column or info["text_column"], label_column or info["label_column"],
                                 encoding or info.get("encoding", "utf-8"))
    names = info["labels"]
    check_known_labels(labels, names, data)
    index = {name: i for i, name in enumerate(names)}
    start = time.perf_counter()
    probs = predict_proba(model, tokenizer, info, texts)
    report = _report(np.array([index[l] for l in labels]), probs.argmax(1), names)
    report["seconds"] = time.perf_counter() - start
    png = Path(png) if png is not None else Path(run) / "confusion.png"
    plot_confusion(report["confusion"], names, png, title=f"{Path(run).name} on {Path(data).name}")
    report["png"] = str(png)
    return report


def predict(run, texts: list[str], device: str = "cpu") -> list[dict]:
    """For each text: {"text", "label", "probabilities": {label: p}}."""
    if not texts or any(not t.strip() for t in texts):
        raise LmlabError("give non-empty texts to classify.")
    model, tokenizer, info = load_classifier(run, device=device)
    probs = predict_proba(model, tokenizer, info, texts)
    names = info["labels"]
    return [{"text": t, "label": names[int(p.argmax())], "probabilities": dict(zip(names, map(float, p)))}
            for t, p in zip(texts, probs)]


def format_report(report: dict) -> str:
    """The evaluation as text: accuracy, per-class table with macro average, confusion matrix."""
    from ..report import markdown_table

    labels = report["labels"]
    lines = [f"accuracy {report['accuracy']:.4f} on {report['examples']:,} texts", ""]
    rows = [[l, c["precision"], c["recall"], c["f1"], c["support"]] for l, c in report["per_class"].items()]
    rows.append(["macro avg", report["macro_precision"], report["macro_recall"], report["macro_f1"],
                 report["examples"]])
    lines.append(markdown_table(["label", "precision", "recall", "f1", "support"], rows))
    lines += ["", "confusion matrix (rows: true label, columns: predicted)"]
    lines.append(markdown_table(["true \\ predicted", *labels],
                                [[l, *row] for l, row in zip(labels, report["confusion"])]))
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# The `lmlab classify` verbs
# ---------------------------------------------------------------------------------------------


def train_command(train=None, out=None, resume=None, model: str = "encoder", init=None, device: str | None = None,
                  nproc: int = 1, quiet: bool = False, overrides: dict | None = None, lr: float | None = None,
                  **settings) -> None:
    """`lmlab classify train` (or --resume): train, then print the validation result. `settings`: the keyword
    arguments of train_classifier (columns, split, lengths, epochs, model options). SIGINT / SIGTERM save a
    checkpoint and exit with 128 + signal, saying how to continue."""
    import signal
    import sys

    from ..train import Interrupted

    overrides = dict(overrides or {})
    if device is not None:
        overrides.setdefault("train.device", device)
    try:
        if resume:
            if train or out or init:
                raise LmlabError("--resume continues a run with its own data and settings; leave out --train, --out "
                                 "and --init (change settings with overrides such as --train.max_iters N).")
            s = resume_classifier(resume, overrides, progress=not quiet, nproc=nproc)
        elif not train or not out:
            raise LmlabError("lmlab classify train needs --train DATA and --out RUN_DIR (or --resume RUN_DIR).")
        else:
            s = train_classifier(train, out, kind=model, init=init, learning_rate=lr, overrides=overrides,
                                 progress=not quiet, nproc=nproc, **settings)
    except Interrupted as e:
        print(f"lmlab classify train: {signal.Signals(e.signum).name} received: stopped after step {e.step} and saved "
              f"a checkpoint in {e.run_dir}; continue with `lmlab classify train --resume {e.run_dir}`.",
              file=sys.stderr)
        raise SystemExit(128 + e.signum) from None
    except SystemExit as e:  # --nproc: the processes were stopped (each saved a checkpoint) or failed
        if isinstance(e.code, int) and e.code > 128 and (resume or out):
            print(f"lmlab classify train: continue with `lmlab classify train --resume {resume or out} "
                  f"--nproc {nproc}`.", file=sys.stderr)
        raise
    m = s["val_metrics"]
    if "generative_scale" in s:
        print(f"label LMs: logits = {s['head_scale']:.3g} x head + {s['generative_scale']:.3g} x log P(text | label), "
              "fitted on the validation texts")
    print(f"done: {s['model']} classifier, {s['parameters']:,} parameters, {s['step']} steps in {s['wall_seconds']:.1f} s; "
          f"validation accuracy {m['accuracy']:.4f}, macro F1 {m['macro_f1']:.4f}; run saved in {resume or out}")


def eval_command(run, data, text_column=None, label_column=None, encoding=None, png=None, json_output: bool = False,
                 device: str = "cpu") -> None:
    """`lmlab classify eval`: the report (or its JSON) and the confusion matrix drawn."""
    import json

    from ..runtime import resolve_device

    report = evaluate_classifier(run, data, text_column, label_column, encoding, png=png,
                                 device=str(resolve_device(device)))
    if json_output:
        print(json.dumps(report, indent=2))
        return
    print(f"{run} on {data}")
    print(format_report(report))
    print(f"\nconfusion matrix drawn in {report['png']}")


def predict_command(run, texts: list[str], json_output: bool = False, device: str = "cpu") -> None:
    """`lmlab classify predict`: each text's label and class probabilities ('-': one text per line of stdin)."""
    import json
    import sys

    from ..runtime import resolve_device

    texts = [line.rstrip("\n") for line in sys.stdin if line.strip()] if texts == ["-"] else texts
    for r in predict(run, texts, device=str(resolve_device(device))):
        if json_output:
            print(json.dumps(r))
        else:
            probs = "  ".join(f"{label} {p:.4f}" for label, p in r["probabilities"].items())
            print(f"{r['label']}\t{probs}\t{r['text']}")
