"""Text classification: read labelled texts, train an encoder / LSTM / GPT classifier on the one Trainer,
evaluate (accuracy, per-class and macro precision / recall / F1, confusion matrix) and predict.

Input formats (`read_labeled`):
- a TSV (any name but .csv) or CSV file with a header row; the text and label columns are named by
  `text_column` / `label_column` (default "text" and "label"). TSV fields are split on tabs as they are (no
  quoting: quotes are part of the text); CSV follows RFC 4180 quoting. Fully blank lines are skipped.
- a directory with one file per label, one text per line (the rt-polarity layout): every non-hidden file not
  ending in .md. The label is the file's extension when all files share one stem (rt-polarity.pos ->
  "pos"), else the file's stem (pos.txt -> "pos").
Files are decoded as UTF-8 unless `encoding` says otherwise (e.g. cp1252 for the original Cornell files).

A classifier run directory is a normal run (config.yaml, config.json, model.safetensors, best.safetensors,
tokenizer.json, metrics.csv, loss.png) plus classify.json: the label names (index order), the columns, the
input format of the texts and the validation metrics. `lmlab.load(run)` loads the model like any other.
"""
from __future__ import annotations

import csv
import io
import math
import time
from pathlib import Path

import numpy as np

from .errors import LmlabError
from .files import atomic_write_json, read_json

KINDS = ("encoder", "lstm", "gpt")
INFO = "classify.json"

# Per-model defaults: (from scratch, fine-tuning from --init). Any of them can be changed with --train.X.
TRAIN_DEFAULTS = {
    "encoder": ({"learning_rate": 5e-4, "batch_size": 32, "epochs": 5}, {"learning_rate": 1e-4, "batch_size": 32, "epochs": 3}),
    "lstm": ({"learning_rate": 2e-3, "batch_size": 64, "epochs": 5}, None),
    "gpt": ({"learning_rate": 5e-4, "batch_size": 32, "epochs": 5}, {"learning_rate": 1e-4, "batch_size": 32, "epochs": 3}),
}


# ---------------------------------------------------------------------------------------------
# Reading labelled texts
# ---------------------------------------------------------------------------------------------


def _decode(path: Path, encoding: str) -> str:
    raw = path.read_bytes()
    try:
        text = raw.decode(encoding)
    except UnicodeDecodeError as e:
        line = raw[:e.start].count(b"\n") + 1
        raise LmlabError(f"{path} is not {encoding} text (byte 0x{raw[e.start]:02x} on line {line}); pass "
                         "--encoding cp1252 (or latin-1) if the file is in that encoding.") from None
    except LookupError:
        raise LmlabError(f"unknown text encoding {encoding!r}; use utf-8, cp1252 or latin-1.") from None
    return text[1:] if text.startswith("\ufeff") else text


def label_files(directory: Path) -> dict[str, Path]:
    """label -> file of a one-file-per-label directory."""
    files = sorted(p for p in directory.iterdir() if p.is_file() and not p.name.startswith(".") and p.suffix != ".md")
    if len(files) < 2:
        raise LmlabError(f"{directory} holds {len(files)} label file(s); a one-file-per-label directory needs one "
                         "file of texts per label (at least two), e.g. rt-polarity.pos and rt-polarity.neg.")
    stems = {p.stem for p in files}
    if len(stems) == 1 and all(p.suffix for p in files):
        return {p.suffix[1:]: p for p in files}
    names = [p.stem for p in files]
    if len(set(names)) != len(names):
        raise LmlabError(f"{directory} has several files with the same name stem; name them one per label "
                         "(pos.txt, neg.txt, ...).")
    return dict(zip(names, files))


def read_labeled(path, text_column: str = "text", label_column: str = "label",
                 encoding: str = "utf-8") -> tuple[list[str], list[str]]:
    """(texts, labels) of a TSV/CSV file or a one-file-per-label directory; see the module docstring."""
    path = Path(path)
    if not path.exists():
        raise LmlabError(f"{path} does not exist; give a TSV/CSV file or a directory with one file per label.")
    texts, labels = [], []
    if path.is_dir():
        for label, file in label_files(path).items():
            for lineno, line in enumerate(_decode(file, encoding).splitlines(), 1):
                if not line.strip():
                    raise LmlabError(f"{file} line {lineno} is empty; every line of a label file must be a text.")
                texts.append(line.strip())
                labels.append(label)
    else:
        texts, labels = _read_table(path, text_column, label_column, encoding)
    if not texts:
        raise LmlabError(f"{path} holds no texts; give it at least one labelled text.")
    return texts, labels


def _rows(path: Path, encoding: str):
    """(line number, fields) of each non-blank line of a TSV or CSV file."""
    text = _decode(path, encoding)
    if path.suffix.lower() == ".csv":
        reader = csv.reader(io.StringIO(text, newline=""))
        try:
            for fields in reader:
                if fields:
                    yield reader.line_num, fields
        except csv.Error as e:
            raise LmlabError(f"{path} line {reader.line_num} is not valid CSV ({e}).") from None
        return
    for lineno, line in enumerate(text.splitlines(), 1):
        if line:
            yield lineno, line.split("\t")


def _read_table(path: Path, text_column: str, label_column: str, encoding: str):
    rows = _rows(path, encoding)
    first = next(rows, None)
    if first is None:
        raise LmlabError(f"{path} is empty; it needs a header row ({text_column}, {label_column}) and texts.")
    header = [h.strip() for h in first[1]]
    kind = "CSV" if path.suffix.lower() == ".csv" else "TSV"
    for column, flag in ((text_column, "--text-column"), (label_column, "--label-column")):
        if column not in header:
            raise LmlabError(f"{path} has no column {column!r} (its header has {', '.join(map(repr, header))}); "
                             f"name the right one with {flag}.")
    ti, li = header.index(text_column), header.index(label_column)
    texts, labels = [], []
    for lineno, fields in rows:
        if len(fields) != len(header):
            raise LmlabError(f"{path} line {lineno} has {len(fields)} fields but the header has {len(header)}; "
                             f"fix that row (a {kind} field must not contain the separator"
                             f"{' unquoted' if kind == 'CSV' else ''}).")
        text, label = fields[ti].strip(), fields[li].strip()
        if not text:
            raise LmlabError(f"{path} line {lineno} has an empty text; remove the row or give it a text.")
        if not label:
            raise LmlabError(f"{path} line {lineno} has an empty label; remove the row or give it a label.")
        texts.append(text)
        labels.append(label)
    return texts, labels


def split_indices(n: int, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A fixed split: the indices 0..n-1 shuffled by numpy's default_rng(seed); the last round(n * fraction)
    of that order are held out, the rest are the training texts (both in the shuffled order)."""
    if not 0 < fraction < 1:
        raise LmlabError(f"the held-out fraction must be in (0, 1), got {fraction}.")
    held = int(round(n * fraction))
    if held < 1 or held >= n:
        raise LmlabError(f"{n} texts cannot be split {1 - fraction:.0%}/{fraction:.0%}; give more texts.")
    order = np.random.default_rng(seed).permutation(n)
    return order[:n - held], order[n - held:]


def write_tsv(path, texts: list[str], labels: list[str]) -> None:
    """A TSV with header text<TAB>label; tabs and line breaks inside a text become spaces."""
    from .files import atomic_write_text

    clean = (" ".join(t.replace("\t", " ").split()) for t in texts)
    atomic_write_text(path, "text\tlabel\n" + "".join(f"{t}\t{l}\n" for t, l in zip(clean, labels)))


def split_file(source, out_dir, fraction: float = 0.1, seed: int = 0, **read) -> dict:
    """Write out_dir/train.tsv and out_dir/test.tsv: a fixed seeded split of `source` (see split_indices)."""
    texts, labels = read_labeled(source, **read)
    train, test = split_indices(len(texts), fraction, seed)
    out = Path(out_dir)
    write_tsv(out / "train.tsv", [texts[i] for i in train], [labels[i] for i in train])
    write_tsv(out / "test.tsv", [texts[i] for i in test], [labels[i] for i in test])
    return {"train": len(train), "test": len(test), "labels": sorted(set(labels))}


# ---------------------------------------------------------------------------------------------
# Texts -> padded batches
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
    """(ids [B, T] int64 right-padded with pad_id, mask [B, T] bool) for lists of ids."""
    import torch

    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.bool)
    for i, r in enumerate(rows):
        ids[i, :len(r)] = torch.as_tensor(r, dtype=torch.long)
        mask[i, :len(r)] = True
    return ids, mask


class LabelBatches:
    """Batches of (ids, mask, labels) for the Trainer, each padded to its longest text.

    train: each epoch is an order of the training texts drawn from (seed, epoch); batch `index` is the slice
    index mod batches-per-epoch of epoch index // batches-per-epoch, so `batch` is a pure function of the index
    (exact resume). With group_by_length (HF Trainer's option of that name), the shuffled texts are cut into
    mega-batches of 50 batches, each sorted by length, and the resulting batches are shuffled: texts of similar
    length share a batch, so little of it is padding. Without it the order is a plain permutation.
    val: the texts sorted by length, batch_size at a time (batch i mod the count).
    """

    MEGA = 50  # batches per length-sorted mega-batch

    def __init__(self, splits: dict[str, tuple[list[list[int]], list[int]]], batch_size: int, pad_id: int, seed: int,
                 group_by_length: bool = False):
        self.splits, self.batch_size, self.pad_id, self.seed = splits, batch_size, pad_id, seed
        self.group_by_length = group_by_length
        self._orders: dict = {}

    def order(self, name: str, epoch: int) -> np.ndarray:
        """The order of the texts of split `name` in `epoch` (cached)."""
        key = (name, epoch if name == "train" else 0)
        if key not in self._orders:
            ids = self.split(name)[0]
            lengths = np.array([len(r) for r in ids])
            if name != "train":
                order = np.argsort(lengths, kind="stable")
            else:
                rng = np.random.default_rng([self.seed, epoch])
                order = rng.permutation(len(ids))
                if self.group_by_length:
                    mega = self.batch_size * self.MEGA
                    order = np.concatenate([c[np.argsort(-lengths[c], kind="stable")]
                                            for c in (order[i:i + mega] for i in range(0, len(order), mega))])
                    batches = [order[i:i + self.batch_size] for i in range(0, len(order), self.batch_size)]
                    order = np.concatenate([batches[b] for b in rng.permutation(len(batches))])
            self._orders = {k: v for k, v in self._orders.items() if k[0] != name}  # keep one epoch per split
            self._orders[key] = order
        return self._orders[key]

    def split(self, name: str):
        if not self.splits.get(name) or not self.splits[name][0]:
            raise LmlabError(f"there are no {name} texts.")
        return self.splits[name]

    def batches(self, name: str) -> int:
        return math.ceil(len(self.split(name)[0]) / self.batch_size)

    def batch(self, name: str, index: int):
        import torch

        ids, labels = self.split(name)
        epoch, pos = divmod(int(index), self.batches(name))
        rows = self.order(name, epoch)[pos * self.batch_size:(pos + 1) * self.batch_size]
        x, mask = collate([ids[i] for i in rows], self.pad_id)
        return x, mask, torch.as_tensor([labels[i] for i in rows], dtype=torch.long)


# ---------------------------------------------------------------------------------------------
# Building a classifier
# ---------------------------------------------------------------------------------------------


def _hf_config(path: Path) -> dict | None:
    """config.json of a Hugging Face model directory, or None if `path` is not one."""
    if (path / "config.json").is_file() and not (path / "config.yaml").is_file():
        raw = read_json(path / "config.json")
        if "model_type" in raw or "architectures" in raw:
            return raw
    return None


def _init_source(init) -> tuple[str, Path]:
    """("run", path) for an lmlab run, ("hf", path) for a Hugging Face directory."""
    from .checkpoint import is_run_dir

    path = Path(init)
    if not path.exists():
        raise LmlabError(f"--init {path} does not exist; give an lmlab run directory or a Hugging Face model directory.")
    if _hf_config(path) is not None:
        return "hf", path
    if is_run_dir(path):
        return "run", path
    raise LmlabError(f"--init {path} is neither an lmlab run (config.json + model.safetensors) nor a Hugging Face "
                     "model directory (config.json with model_type).")


def _from_init(kind: str, init, max_length: int, num_labels: int, options: dict):
    """(model config dict, tokenizer, init tensors) for --init; the tensors go into the new model's backbone."""
    from .checkpoint import BEST, WEIGHTS, load_model_config, read_weights
    from .tokenizer import WordPieceTokenizer, load_tokenizer

    source, path = _init_source(init)
    if source == "hf":
        if kind != "encoder":
            raise LmlabError(f"--init {path} is a Hugging Face model; it initialises --model encoder (a BERT); for "
                             "GPT-2 convert it first with `lmlab convert` and give --model gpt the run.")
        from . import hf

        cfg, tensors, tokenizer = hf.load_hf_bert(path)
        base = cfg
    else:
        base = load_model_config(path)
        weights = path / BEST if (path / BEST).is_file() else path / WEIGHTS
        tensors, _ = read_weights(weights)
        tokenizer = load_tokenizer(path)
        want = {"encoder": ("encoder",), "gpt": ("gpt",)}.get(kind, ())
        if base.family not in want:
            raise LmlabError(f"--init {path} is a {base.family} run; --model {kind} starts from "
                             + (f"a {' or '.join(want)} run." if want else "scratch (no --init)."))
    import dataclasses

    model = dataclasses.asdict(base)
    if kind == "encoder":
        if not isinstance(tokenizer, WordPieceTokenizer):
            raise LmlabError(f"--init {path} has a {tokenizer.kind} tokenizer; an encoder needs a WordPiece one.")
        model.update(num_labels=num_labels, pooling=options.get("pooling") or "cls", mlm_head=False,
                     pad_id=tokenizer.pad_id)
        model["pooler"] = any(k.startswith("pooler.") for k in tensors) if options.get("pooler") is None \
            else bool(options["pooler"])
        tensors = {k: v for k, v in tensors.items() if not k.startswith(("mlm.", "classifier."))
                   and (model["pooler"] or not k.startswith("pooler."))}
    else:  # gpt
        model.update(family="gpt_classifier", num_labels=num_labels, block_size=min(base.block_size, max_length),
                     lm_loss_weight=options.get("lm_loss_weight") or 0.0, pooling=options.get("pooling") or "last",
                     label_lms=bool(options.get("label_lms")))
    if options.get("dropout") is not None:
        model["dropout"] = options["dropout"]
    return model, tokenizer, tensors


def _from_scratch(kind: str, texts: list[str], max_length: int, num_labels: int, options: dict):
    from .tokenizer import train_tokenizer, train_wordpiece

    vocab = options.get("vocab_size")
    dropout = options.get("dropout")
    if kind == "encoder":
        tokenizer = train_wordpiece(texts, vocab or 8000)
        model = {"family": "encoder", "vocab_size": tokenizer.vocab_size, "block_size": max_length, "n_layer": 4,
                 "n_head": 4, "n_embd": 256, "num_labels": num_labels, "pad_id": tokenizer.pad_id,
                 "pooling": options.get("pooling") or "cls", "pooler": options.get("pooler", True) is not False,
                 "dropout": 0.1 if dropout is None else dropout}
    elif kind == "lstm":
        tokenizer = train_tokenizer("word", texts, vocab or 20000)
        # The word tokenizer has no padding token: the model gets one more embedding row for it.
        model = {"family": "rnn_classifier", "vocab_size": tokenizer.vocab_size + 1, "pad_id": tokenizer.vocab_size,
                 "num_labels": num_labels, "pooling": options.get("pooling") or "max",
                 "bidirectional": options.get("bidirectional", True) is not False,
                 "dropout": 0.3 if dropout is None else dropout}
    else:
        tokenizer = train_tokenizer("bpe", texts, vocab or 4096)
        model = {"family": "gpt_classifier", "vocab_size": tokenizer.vocab_size, "block_size": max_length,
                 "n_layer": 4, "n_head": 4, "n_embd": 256, "num_labels": num_labels,
                 "lm_loss_weight": options.get("lm_loss_weight") or 0.0, "pooling": options.get("pooling") or "last",
                 "label_lms": bool(options.get("label_lms")), "dropout": 0.1 if dropout is None else dropout}
    return model, tokenizer, None


def _input_format(kind: str, tokenizer) -> str:
    if kind == "encoder":
        return "bert"
    if kind == "gpt" and tokenizer.eot_id is not None:
        return "eot"
    return "plain"


def _pad_id(model_cfg) -> int:
    return getattr(model_cfg, "pad_id", 0)


# ---------------------------------------------------------------------------------------------
# Train / load / predict / evaluate
# ---------------------------------------------------------------------------------------------


def train_classifier(train, out, kind: str = "encoder", val=None, init=None, text_column: str = "text",
                     label_column: str = "label", encoding: str = "utf-8", val_fraction: float = 0.1,
                     split_seed: int = 0, max_length: int = 128, epochs: int | None = None,
                     batch_size: int | None = None, learning_rate: float | None = None, seed: int = 1337,
                     group_by_length: bool = True, overrides: dict | None = None, progress: bool = True,
                     **options) -> dict:
    """Train a classifier of `kind` on the labelled texts of `train` into the run directory `out`.

    Without `val`, round(val_fraction * n) of the training texts (a split_indices(n, val_fraction, split_seed)
    split) are held out for validation. `init` is an lmlab run (an MLM-pretrained or converted encoder; a GPT)
    or a Hugging Face BERT directory. `options`: pooling, pooler, bidirectional, lm_loss_weight, label_lms, dropout,
    vocab_size (from-scratch tokenizer). `group_by_length`: training batches of similar lengths (LabelBatches).
    `overrides`: dotted config fields (model.X, train.X), applied last.
    Returns the Trainer's summary plus the validation metrics.
    """
    import torch

    from .checkpoint import STATE, save_model_config
    from .config import load_config
    from .models import build_model
    from .train import Trainer

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
    index = {name: i for i, name in enumerate(names)}

    if init is not None:
        if TRAIN_DEFAULTS[kind][1] is None:
            raise LmlabError(f"--model {kind} trains from scratch; --init is for --model encoder or gpt.")
        model, tokenizer, tensors = _from_init(kind, init, max_length, len(names), options)
    else:
        model, tokenizer, tensors = _from_scratch(kind, train_texts, max_length, len(names), options)
    defaults = TRAIN_DEFAULTS[kind][1 if init is not None else 0]
    batch_size = batch_size or defaults["batch_size"]
    epochs = epochs or defaults["epochs"]
    steps_per_epoch = math.ceil(len(train_texts) / batch_size)
    max_iters = epochs * steps_per_epoch
    val_batches = math.ceil(len(val_texts) / batch_size)
    lr = learning_rate or defaults["learning_rate"]
    train_cfg = {"max_iters": max_iters, "batch_size": batch_size, "learning_rate": lr, "min_lr": 0.0,
                 "warmup_iters": max(1, round(0.06 * max_iters)), "weight_decay": 0.01, "beta2": 0.999,
                 "eval_interval": steps_per_epoch, "eval_iters": val_batches, "save_interval": steps_per_epoch,
                 "log_interval": 10, "seed": seed}
    cfg = load_config(None, overrides, base={"model": model, "data": {"dir": str(train)}, "train": train_cfg})

    fmt = _input_format(kind, tokenizer)
    length = min(max_length, getattr(cfg.model, "block_size", None) or max_length)
    encoded = {"train": (encode_texts(tokenizer, train_texts, length, fmt), [index[l] for l in train_labels]),
               "val": (encode_texts(tokenizer, val_texts, length, fmt), [index[l] for l in val_labels])}
    data = LabelBatches(encoded, cfg.train.batch_size, _pad_id(cfg.model), cfg.train.seed, group_by_length)

    torch.manual_seed(cfg.train.seed)
    net = build_model(cfg.model)
    if tensors is not None:
        if hasattr(net, "load_backbone"):
            net.load_backbone(tensors, init)
        else:
            load_backbone_into(net, tensors, init)
    start = time.perf_counter()
    trainer = Trainer(net, data, cfg, out, progress=progress)
    tokenizer.save(out / "tokenizer.json")
    info = {"labels": names, "text_column": text_column, "label_column": label_column, "encoding": encoding,
            "max_length": length, "input_format": fmt, "model": kind, "init": None if init is None else str(init),
            "train": str(train), "train_texts": len(train_texts),
            "val": str(val) if val is not None else f"{val_fraction:g} of {train} held out (split seed {split_seed})",
            "val_texts": len(val_texts)}
    atomic_write_json(out / INFO, info)
    summary = trainer.fit()
    model_, tok_, info_ = load_classifier(out, device=str(trainer.device))
    if getattr(cfg.model, "label_lms", False):
        summary["head_scale"], summary["generative_scale"] = fit_generative_scales(
            model_, tok_, info_, val_texts, [index[l] for l in val_labels])
        save_model_config(model_.cfg, out)
    probs = predict_proba(model_, tok_, info_, val_texts)
    report = _report(np.array([index[l] for l in val_labels]), probs.argmax(1), names)
    info["val_metrics"] = {k: report[k] for k in ("accuracy", "macro_precision", "macro_recall", "macro_f1")}
    info["train_seconds"] = time.perf_counter() - start
    atomic_write_json(out / INFO, info)
    summary.update(val_metrics=info["val_metrics"], wall_seconds=info["train_seconds"], labels=names,
                   parameters=net.num_parameters())
    return summary


def fit_generative_scales(model, tokenizer, info: dict, texts: list[str], labels: list[int]) -> tuple[float, float]:
    """For a GPT classifier with one LM per label (model.label_lms): the weights of its two scores,
    logits = head_scale * head logits + generative_scale * log P(text | label), that minimise the cross-entropy on
    the validation texts (a two-feature logistic regression, fitted with L-BFGS), set in model.cfg (the caller
    saves it). Fitted on held-out texts because both scores are overconfident on the texts they learned from."""
    import torch

    head = torch.as_tensor(batched_outputs(model, tokenizer, info, texts, model.head_logits))
    generative = torch.as_tensor(batched_outputs(model, tokenizer, info, texts, model.label_logprobs))
    y = torch.as_tensor(labels)
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


def load_backbone_into(model, tensors: dict, source) -> None:
    """Pretrained weights into a classifier: every tensor must fit; only the new head may be missing."""
    missing, unexpected = model.load_state_dict(tensors, strict=False)
    head = ("classifier.", "pooler.", "head.")
    bad_missing = [k for k in missing if not k.startswith(head)]
    if bad_missing or unexpected:
        raise LmlabError(f"{source} does not fit the classifier (missing {bad_missing[:3]}, unexpected "
                         f"{sorted(unexpected)[:3]}); give a run of the same architecture.")


def check_known_labels(labels: list[str], known: list[str], source) -> None:
    unknown = sorted(set(labels) - set(known))
    if unknown:
        count = sum(1 for l in labels if l in set(unknown))
        shown = ", ".join(repr(u) for u in unknown[:5]) + (", ..." if len(unknown) > 5 else "")
        raise LmlabError(f"{source} has label(s) the model was not trained on: {shown} ({count} text(s)); "
                         f"it knows {', '.join(known)}.")


def load_classifier(run, which: str = "best", device: str = "cpu"):
    """(model, tokenizer, classify.json info) of a classifier run."""
    from .checkpoint import load

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
    import torch

    ids = encode_texts(tokenizer, texts, info["max_length"], info["input_format"])
    order = np.argsort([len(r) for r in ids], kind="stable")
    out = np.zeros((len(texts), len(info["labels"])), dtype=np.float64)
    device = next(model.parameters()).device
    model.eval()
    pad = _pad_id(model.cfg)
    for start in range(0, len(ids), batch_size):
        rows = order[start:start + batch_size]
        x, mask = collate([ids[i] for i in rows], pad)
        with torch.inference_mode():
            out[rows] = fn(x.to(device), mask.to(device)).double().cpu().numpy()
    return out


def _report(y_true, y_pred, labels):
    from .metrics import classification_report

    return classification_report(y_true, y_pred, labels)


def evaluate_classifier(run, data, text_column: str | None = None, label_column: str | None = None,
                        encoding: str | None = None, png=None, device: str = "cpu") -> dict:
    """Accuracy, per-class and macro P/R/F1 and the confusion matrix of a classifier run on labelled texts;
    the matrix is also drawn to `png` (default RUN/confusion.png)."""
    from .report import plot_confusion

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
    from .report import markdown_table

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
