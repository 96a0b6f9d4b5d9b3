"""Labelled texts: reading them, a fixed seeded split, the prepared directory of a classifier run, and the batches
the Trainer reads from it (`LabelBatches`).

Input formats (`read_labeled`):
- a TSV (any name but .csv) or CSV file with a header row; the text and label columns are named by
  `text_column` / `label_column` (default "text" and "label"). TSV fields are split on tabs as they are (no
  quoting: quotes are part of the text); CSV follows RFC 4180 quoting. Fully blank lines are skipped.
- a directory with one file per label, one text per line (the rt-polarity layout): every non-hidden file not
  ending in .md. The label is the file's extension when all files share one stem (rt-polarity.pos ->
  "pos"), else the file's stem (pos.txt -> "pos").
Files are decoded as UTF-8 unless `encoding` says otherwise (e.g. cp1252 for the original Cornell files).

Prepared directory (`write_prepared`; `lmlab classify train` writes it into RUN/data, atomically like
`lmlab prepare`):
  tokenizer.json          the classifier's tokenizer
  {train,val}.ids.bin     the token ids of every text as the model reads them, concatenated (uint16 when the
  {train,val}.idx.npy     vocabulary fits); int64 [texts + 1, 1]: where each text starts (lmlab.tasks.batching)
  {train,val}.labels.npy  int64 [texts]: each text's label, an index into meta.json's labels
  meta.json               task "classify", tokenizer kind, vocab_size, dtype, the label names, input_format,
                          max_length, group_by_length, and per split the number of texts and tokens
"""
from __future__ import annotations

import csv
import io
from pathlib import Path

import numpy as np

from ..data import read_meta
from ..errors import LmlabError
from ..files import atomic_write_json, atomic_write_text, read_text, staged_dir
from .batching import LengthBatching, ids_dtype, pad_rows, read_rows, write_rows

FORMAT_VERSION = 1
PREPARED_BY = "lmlab classify train"
SPLITS = ("train", "val")

# ---------------------------------------------------------------------------------------------
# Reading labelled texts
# ---------------------------------------------------------------------------------------------


ENCODING_FIX = "pass --encoding cp1252 (or latin-1) if the file is in that encoding"


def _decode(path: Path, encoding: str) -> str:
    return read_text(path, encoding, empty_ok=True, fix=ENCODING_FIX).removeprefix("\ufeff")


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
# The prepared directory and its batches
# ---------------------------------------------------------------------------------------------


def write_prepared(out_dir, tokenizer, splits: dict[str, tuple[list, list[int]]], **about) -> dict:
    """Write the prepared directory (see the module docstring) of splits {name: (token ids of each text, label
    indices)}; `about` goes into meta.json (labels, input_format, max_length, group_by_length). Returns meta.json."""
    dtype = ids_dtype(tokenizer.vocab_size)
    meta = {"format_version": FORMAT_VERSION, "task": "classify", "tokenizer": tokenizer.kind,
            "vocab_size": tokenizer.vocab_size, "dtype": dtype, **about}
    with staged_dir(out_dir) as tmp:
        for split, (ids, labels) in splits.items():
            tokens = write_rows(tmp, split, {"ids": ids}, dtype)["ids"]
            np.save(tmp / f"{split}.labels.npy", np.asarray(labels, dtype=np.int64))
            meta[split] = {"texts": len(ids), "tokens": tokens}
        tokenizer.save(tmp / "tokenizer.json")
        atomic_write_json(tmp / "meta.json", meta)
    return meta


def read_prepared_meta(data_dir) -> dict:
    """meta.json of a directory `lmlab classify train` prepared."""
    return read_meta(data_dir, ("classify",), PREPARED_BY, "labelled texts")


def load_labeled(data_dir, split: str) -> tuple[list[np.ndarray], np.ndarray]:
    """(token ids of each text, label indices) of a prepared split."""
    meta = read_prepared_meta(data_dir)
    (ids,) = read_rows(Path(data_dir), split, ("ids",), meta["dtype"], PREPARED_BY)
    path = Path(data_dir) / f"{split}.labels.npy"
    labels = np.load(path) if path.is_file() else np.zeros(0, np.int64)
    if len(labels) != len(ids):
        raise LmlabError(f"{path} does not match the {split} texts of {data_dir}; run `{PREPARED_BY}` again.")
    return ids, labels


def padding_id(model_cfg) -> int:
    """The id a classifier's batches are padded with."""
    return getattr(model_cfg, "pad_id", 0)


def label_batches(cfg) -> LabelBatches:
    """The Trainer's data for a classifier config (ClassifierMixin.training_data): the prepared directory
    cfg.data.dir, batched as it says (group_by_length)."""
    meta = read_prepared_meta(cfg.data.dir)
    splits = {split: load_labeled(cfg.data.dir, split) for split in SPLITS}
    return LabelBatches(splits, cfg.train.batch_size, padding_id(cfg.model), cfg.train.seed, meta["group_by_length"])


class LabelBatches:
    """Batches of (ids, mask, labels) for the Trainer, each padded to its longest text.

    train: each epoch is an order of the training texts drawn from (seed, epoch); batch `index` is the slice
    index mod batches-per-epoch of epoch index // batches-per-epoch, so `batch` is a pure function of the index
    (exact resume). With group_by_length (HF Trainer's option of that name), the shuffled texts are cut into
    mega-batches of 50 batches, each sorted by length (longest first), and the resulting batches are shuffled:
    texts of similar length share a batch, so little of it is padding. Without it the order is a plain
    permutation. val: the texts sorted by length, batch_size at a time (batch i mod the count).
    (lmlab.tasks.batching.LengthBatching with window 50, descending, regroup.)
    """

    MEGA = 50  # batches per length-sorted mega-batch

    def __init__(self, splits: dict[str, tuple[list, list[int]]], batch_size: int, pad_id: int, seed: int,
                 group_by_length: bool = False):
        self.splits, self.batch_size, self.pad_id, self.seed = splits, batch_size, pad_id, seed
        self.group_by_length = group_by_length
        self._orders: dict[str, LengthBatching] = {}

    def _batching(self, name: str) -> LengthBatching:
        if name not in self._orders:
            lengths = np.array([len(r) for r in self.split(name)[0]])
            self._orders[name] = LengthBatching(lengths, self.batch_size, self.seed, shuffle=name == "train",
                                                window=self.MEGA if self.group_by_length else None,
                                                descending=True, regroup=True)
        return self._orders[name]

    def order(self, name: str, epoch: int) -> np.ndarray:
        """The order of the texts of split `name` in `epoch`."""
        return np.concatenate(self._batching(name).epoch(epoch))

    def split(self, name: str):
        if not self.splits.get(name) or not len(self.splits[name][0]):
            raise LmlabError(f"there are no {name} texts.")
        return self.splits[name]

    def batches(self, name: str) -> int:
        return len(self._batching(name))

    def batch(self, name: str, index: int):
        import torch

        ids, labels = self.split(name)
        rows = self._batching(name).rows(index)
        x, mask = pad_rows([ids[i] for i in rows], self.pad_id, mask=True)
        return x, mask, torch.as_tensor(np.asarray([labels[i] for i in rows], dtype=np.int64))


def split_command(source, out, fraction: float = 0.1, seed: int = 0, **read) -> None:
    """`lmlab classify split`: train.tsv and test.tsv in `out`, and what they hold."""
    info = split_file(source, out, fraction=fraction, seed=seed, **read)
    print(f"wrote {Path(out) / 'train.tsv'} ({info['train']:,} texts) and {Path(out) / 'test.tsv'} "
          f"({info['test']:,} texts); labels {', '.join(info['labels'])}")
