"""Text -> token ids on disk (`prepare`), and training batches from them (`TokenBlocks`, `TokenStreams`: ShardedData).

`prepare(source, out_dir)` writes, nanoGPT style:
  train.bin, val.bin   raw NumPy arrays of token ids (uint16 when the vocabulary fits, else uint32)
  tokenizer.json       the tokenizer that made them (see lmlab.tokenizer)
  meta.json            tokenizer kind, vocab_size, eot_id, dtype, source, val_fraction, and per split
                       the number of tokens, characters and UTF-8 bytes (bits per byte divides by bytes)

It streams: the input is read in chunks of about `chunk_chars` characters (64K: the `tokenizers` library
needs ~200 bytes per character while it encodes one string, so 1M-character pieces took ~200 MB) and never
held whole, nor are all the ids. Chunks are cut only just before a newline that is followed by a non-space
character. GPT-2's pre-tokenizer always splits there, so BPE sees exactly the words it would see in
the whole text, and the output is byte-identical for any `chunk_chars`.

The split is by position: the first (1 - val_fraction) of the bytes is train, the rest val, cut at
the end of the line (or file) reaching that point. val_fraction 0 gives an empty val.bin; asking
TokenBlocks for a val batch then says so. The tokenizer is built from the whole text (train + val),
as nanoGPT does, so the char vocabulary covers both splits.
"""
from __future__ import annotations

import contextlib
import copy
import math
import numbers
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Iterator, Protocol, runtime_checkable

import numpy as np
from tqdm import tqdm

from .errors import LmlabError
from .files import CONVERT, atomic_write_json, check_encoding, not_text_error, read_json
from .tokenizer import (SETTINGS_FILE, TOKENIZER_KINDS, WORD_TOKENIZERS, Tokenizer, check_tokenizer_args,
                        load_tokenizer, train_tokenizer)

if TYPE_CHECKING:
    import torch

SPLITS = ("train", "val")
FORMAT_VERSION = 1
NOT_TEXT_FIX = f"{CONVERT} or move it out of the source"  # the end of the sentence for a file that is not UTF-8


# ---------------------------------------------------------------------------------------------
# Reading the source
# ---------------------------------------------------------------------------------------------


def _source_files(source: Path, out_dir: Path) -> list[Path]:
    """The documents: `source` itself, or every non-hidden regular file under it, sorted by path."""
    if not source.exists():
        raise LmlabError(f"{source} does not exist; pass a text file or a directory of text files.")
    if source.is_file():
        return [source]
    files = []
    for path in sorted(source.rglob("*")):
        rel = path.relative_to(source).parts
        hidden = any(part.startswith(".") for part in rel)
        inside_output = out_dir == path or out_dir in path.parents  # never read our own output
        if path.is_file() and not hidden and not inside_output:
            files.append(path)
    return files


def _read_lines(path: Path, encoding: str = "UTF-8") -> Iterator[tuple[str, int]]:
    """Yield (line, its size in bytes) of a text file in `encoding`, keeping line endings exactly as they are."""
    offset, non_ascii = 0, False
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, 1):
            try:
                line = raw.decode(encoding)
            except UnicodeDecodeError as e:
                raise not_text_error(path, raw, e.start, offset + e.start, lineno, encoding, NOT_TEXT_FIX,
                                     non_ascii) from None
            offset += len(raw)
            non_ascii = non_ascii or not line.isascii()
            yield line, len(raw)


def _pieces(files: list[Path], chunk_chars: int, split_at: int, encoding: str = "UTF-8"
            ) -> Iterator[tuple[str, str, bool]]:
    """Yield (split, text, starts_document) pieces of about `chunk_chars` characters, in corpus order.

    A piece ends at a document end, at the train/val cut (the end of the line reaching byte
    `split_at`), or, once it has `chunk_chars` characters, just before a newline followed by a
    non-space character. Only that last kind depends on `chunk_chars`, and it never changes how
    BPE splits the text into words.
    """
    pos = 0  # bytes read so far
    split = "train"
    for path in files:
        buf: list[str] = []
        size, first = 0, True
        for line, nbytes in _read_lines(path, encoding):
            if size >= chunk_chars and size > 1 and not line[:1].isspace():
                # buf ends with the previous line's "\n": cut before it, it starts the next piece.
                yield split, "".join(buf)[:-1], first
                buf, size, first = ["\n"], 1, False
            buf.append(line)
            size += len(line)
            pos += nbytes
            if split == "train" and pos >= split_at:
                yield split, "".join(buf), first
                buf, size, first, split = [], 0, False, "val"
        if buf:
            yield split, "".join(buf), first


# ---------------------------------------------------------------------------------------------
# prepare
# ---------------------------------------------------------------------------------------------


def _check_encoding(encoding: str) -> None:
    check_encoding(encoding)
    if "\n".encode(encoding) != b"\n":
        raise LmlabError(f"prepare reads files line by line and cannot read {encoding}; convert them to UTF-8 "
                         "first (e.g. `iconv -t UTF-8`).")


def _dtype_for(vocab_size: int) -> str:
    return "uint16" if vocab_size <= 1 << 16 else "uint32"


def _check_args(val_fraction, chunk_chars) -> None:
    if not isinstance(val_fraction, numbers.Real) or not 0 <= val_fraction < 1:
        raise LmlabError(f"val_fraction must be a number in [0, 1), got {val_fraction!r}; 0.1 is the usual choice.")
    if not isinstance(chunk_chars, int) or chunk_chars < 1:
        raise LmlabError(f"chunk_chars must be a positive integer, got {chunk_chars!r}.")


def _bar(progress: bool, total: int, desc: str) -> tqdm:
    return tqdm(total=total, desc=desc, unit="B", unit_scale=True, file=sys.stderr, disable=not progress, leave=False)


def _texts(files, chunk_chars, split_at, bar, encoding) -> Iterator[str]:
    """Just the text of every piece, advancing `bar` by its bytes."""
    for _, text, _ in _pieces(files, chunk_chars, split_at, encoding):
        bar.update(len(text.encode("utf-8")))
        yield text


def _build_tokenizer(tokenizer, vocab_size, files, chunk_chars, split_at, total, progress, encoding) -> Tokenizer:
    """A Tokenizer instance or a path to tokenizer.json is used as is; a kind is trained (first pass)."""
    if isinstance(tokenizer, Tokenizer):
        return tokenizer
    if isinstance(tokenizer, os.PathLike) or (isinstance(tokenizer, str) and tokenizer.endswith(".json")):
        return load_tokenizer(tokenizer)
    if tokenizer not in TOKENIZER_KINDS:
        raise LmlabError(
            f"Unknown tokenizer {tokenizer!r}; use {', '.join(map(repr, TOKENIZER_KINDS))} or the path of a "
            "tokenizer.json."
        )
    if tokenizer == "byte":
        return train_tokenizer("byte", [], vocab_size)  # nothing to learn: skip the first pass
    check_tokenizer_args(tokenizer, vocab_size)  # fail before reading the corpus
    with _bar(progress, total, f"{tokenizer} vocab") as bar:
        return train_tokenizer(tokenizer, _texts(files, chunk_chars, split_at, bar, encoding), vocab_size)


def _encode_to(tmp: Path, tok: Tokenizer, files, chunk_chars, split_at, total, progress, encoding) -> dict:
    """Second pass: encode piece by piece, appending to tmp/train.bin and tmp/val.bin; return counts."""
    dtype = np.dtype(_dtype_for(tok.vocab_size))
    counts = {s: {"tokens": 0, "chars": 0, "bytes": 0} for s in SPLITS}
    first_doc = True
    with _split_files(tmp) as outs, _bar(progress, total, "encode") as bar:
        for split, text, starts_doc in _pieces(files, chunk_chars, split_at, encoding):
            ids = tok.encode(text)
            if starts_doc and tok.eot_id is not None and not first_doc:
                ids = [tok.eot_id] + ids  # documents are separated by end-of-text
            first_doc = False
            np.asarray(ids, dtype=dtype).tofile(outs[split])
            nbytes = len(text.encode("utf-8"))
            c = counts[split]
            c["tokens"] += len(ids)
            c["chars"] += len(text)
            c["bytes"] += nbytes
            bar.update(nbytes)
    return counts


@contextlib.contextmanager
def _split_files(tmp: Path) -> Iterator[dict]:
    """tmp/train.bin and tmp/val.bin open for writing, by split name; synced to disk when the block succeeds,
    closed in any case."""
    outs = {s: open(tmp / f"{s}.bin", "wb") for s in SPLITS}
    try:
        yield outs
        for f in outs.values():
            f.flush()
            os.fsync(f.fileno())
    finally:
        for f in outs.values():
            f.close()


def _prepare_with_workers(tmp, tokenizer, vocab_size, files, chunk_chars, split_at, total, progress, workers,
                          encoding):
    """Both passes with `workers` processes over byte ranges of the text (BPE's vocabulary is still learned in
    this process: the `tokenizers` trainer runs its own threads)."""
    from . import prepare_workers as pw

    ranges = pw.plan(files, split_at)
    if tokenizer in ("char", *WORD_TOKENIZERS):
        check_tokenizer_args(tokenizer, vocab_size)
        with _bar(progress, total, f"{tokenizer} vocab") as bar:
            tok = pw.train_vocab(tokenizer, ranges, workers, vocab_size, bar, encoding)
    else:
        tok = _build_tokenizer(tokenizer, vocab_size, files, chunk_chars, split_at, total, progress, encoding)
    counts = {s: {"tokens": 0, "chars": 0, "bytes": 0} for s in SPLITS}
    with _split_files(tmp) as outs, _bar(progress, total, "encode") as bar:
        pw.encode(tok, ranges, outs, counts, chunk_chars, np.dtype(_dtype_for(tok.vocab_size)), workers, bar,
                  encoding)
    return tok, counts


def prepare(
    source,
    out_dir,
    tokenizer="char",
    vocab_size=None,
    val_fraction=0.1,
    chunk_chars=1 << 16,
    progress=True,
    workers=1,
    encoding="UTF-8",
) -> dict:
    """Tokenize a text file or a directory of them into out_dir (train.bin, val.bin, tokenizer.json, meta.json).

    `tokenizer` is a kind ("char", "byte", "word", "jieba", "bpe", "char-bpe": built from this text; the BPEs
    need `vocab_size`, for char, word and jieba it is an optional maximum), a path to an existing tokenizer.json,
    or a Tokenizer. `encoding`: the files' text encoding (gb18030 for GBK Chinese text, say); bytes per token
    count UTF-8 bytes whatever it is. Each file of a directory is one document;
    documents are separated by the tokenizer's end-of-text id when it has one (bpe), else simply
    concatenated. Output appears all at once: files are written to a temporary directory and moved
    into place at the end (meta.json last), so a failure leaves any previous output untouched.
    `workers` > 1 reads and encodes the text in that many processes (and builds a char or word vocabulary
    with them too), in bounded memory; the output is byte-identical to one worker's (lmlab.prepare_workers).
    Returns the meta dict (also written to meta.json).
    """
    _check_args(val_fraction, chunk_chars)
    _check_encoding(encoding)
    if not isinstance(workers, int) or isinstance(workers, bool) or workers < 1:
        raise LmlabError(f"workers must be a positive integer, got {workers!r}.")
    source, out_dir = Path(source).resolve(), Path(out_dir).resolve()
    files = _source_files(source, out_dir)
    total = sum(f.stat().st_size for f in files)
    if total == 0:
        raise LmlabError(f"{source} has no text (empty file, or no non-hidden non-empty files); give it some text.")
    split_at = math.ceil(total * (1 - val_fraction))  # bytes of train, rounded up to a line end

    created = not out_dir.exists()
    out_dir.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out_dir, prefix=".prepare-"))
    try:
        if workers > 1:
            tok, counts = _prepare_with_workers(tmp, tokenizer, vocab_size, files, chunk_chars, split_at, total,
                                                progress, workers, encoding)
        else:
            tok = _build_tokenizer(tokenizer, vocab_size, files, chunk_chars, split_at, total, progress, encoding)
            counts = _encode_to(tmp, tok, files, chunk_chars, split_at, total, progress, encoding)
        if val_fraction > 0 and counts["val"]["tokens"] == 0:
            raise LmlabError(
                f"{source} has no line break after {1 - val_fraction:.0%} of its text, so the val split would be "
                "empty; add line breaks, split it into several files, or use val_fraction 0."
            )
        meta = {
            "format_version": FORMAT_VERSION,
            "tokenizer": tok.kind,
            "vocab_size": tok.vocab_size,
            "eot_id": tok.eot_id,
            "dtype": _dtype_for(tok.vocab_size),
            "source": str(source),
            "files": len(files),
            "val_fraction": float(val_fraction),
            **counts,
        }
        tok.save(tmp / "tokenizer.json")
        atomic_write_json(tmp / "meta.json", meta)
        _move_into_place(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        if created:
            shutil.rmtree(out_dir, ignore_errors=True)  # we made it: leave no trace
        raise
    shutil.rmtree(tmp, ignore_errors=True)
    return meta


def _move_into_place(tmp: Path, out_dir: Path) -> None:
    """Rename the finished files over the old ones; meta.json goes last, so it only ever describes a full set."""
    (out_dir / "meta.json").unlink(missing_ok=True)
    for name in ("train.bin", "val.bin", "tokenizer.json", SETTINGS_FILE, "meta.json"):
        if name == SETTINGS_FILE and not (tmp / name).is_file():
            (out_dir / name).unlink(missing_ok=True)  # an older preparation's, from another tokenizer
            continue
        os.replace(tmp / name, out_dir / name)


# ---------------------------------------------------------------------------------------------
# Reading prepared data
# ---------------------------------------------------------------------------------------------


def read_meta(data_dir, tasks: tuple[str, ...] | None = None, made_by: str = "lmlab prepare",
              holds: str = "text") -> dict:
    """meta.json of a prepared data directory, which the command `made_by` writes. With `tasks`, its "task" must be
    one of them: a task workflow's directory (of `holds`, e.g. sentence pairs) names its task; `lmlab prepare`'s
    have none."""
    path = Path(data_dir) / "meta.json"
    if not path.is_file():
        raise LmlabError(f"{data_dir} has no meta.json; run `{made_by}` on your text into that directory first.")
    meta = read_json(path)
    if tasks is not None and meta.get("task") not in tasks:
        raise LmlabError(f"{data_dir} was not prepared by `{made_by}` (no {' or '.join(tasks)} task in its "
                         f"meta.json); the model trains on {holds}: prepare them with `{made_by}`.")
    return meta


def load_split(data_dir, split: str) -> np.ndarray:
    """The token ids of one split as a read-only np.memmap (an empty array for an empty split)."""
    if split not in SPLITS:
        raise LmlabError(f"Unknown split {split!r}; use 'train' or 'val'.")
    meta = read_meta(data_dir)
    path = Path(data_dir) / f"{split}.bin"
    dtype = np.dtype(meta["dtype"])
    expected = meta[split]["tokens"]
    size = path.stat().st_size if path.is_file() else -1
    if size != expected * dtype.itemsize:
        raise LmlabError(
            f"{path} is missing or does not match meta.json ({expected} tokens); run `lmlab prepare` again."
        )
    if expected == 0:
        return np.zeros(0, dtype=dtype)  # mmap cannot map an empty file
    return np.memmap(path, dtype=dtype, mode="r")


def _seed_for(seed: int, split: str, index: int) -> int:
    """A well-mixed 63-bit seed from (seed, split, index), so batch() is a pure function of them."""
    words = [seed & (2**64 - 1), SPLITS.index(split), index]
    return int(np.random.SeedSequence(words).generate_state(1, dtype=np.uint64)[0] >> 1)


class _SplitBatches:
    """What TokenBlocks and TokenStreams share: the prepared splits of data_dir, opened once as memmaps."""

    def __init__(self, data_dir, block_size: int, batch_size: int, seed: int = 0):
        if block_size < 1 or batch_size < 1:
            raise LmlabError(f"block_size and batch_size must be >= 1, got {block_size} and {batch_size}.")
        self.data_dir = Path(data_dir)
        self.meta = read_meta(data_dir)
        self.vocab_size = self.meta["vocab_size"]
        self.block_size, self.batch_size, self.seed = block_size, batch_size, seed
        self._splits: dict[str, np.ndarray] = {}

    def __getstate__(self):  # a memmap would pickle as its whole content: reopen it in the new process
        return {**self.__dict__, "_splits": {}}

    def _needed(self) -> tuple[int, str]:
        """The fewest tokens a split must hold, and the end of the error sentence when it holds fewer."""
        raise NotImplementedError

    def split(self, split: str) -> np.ndarray:
        """The ids of one split, opened once and checked to hold at least one batch."""
        if split not in self._splits:
            data = load_split(self.data_dir, split)
            need, what = self._needed()
            if len(data) < need:
                raise LmlabError(
                    f"The {split} split of {self.data_dir} has {len(data)} tokens, fewer than {what}"
                    + (" (or a val_fraction > 0 in prepare)." if split == "val" and len(data) == 0 else ".")
                )
            self._splits[split] = data
        return self._splits[split]


class TokenBlocks(_SplitBatches):
    """Random windows of block_size + 1 tokens, nanoGPT style: x = window[:-1], y = window[1:].

    `batch(split, index)` depends only on (seed, split, index): training resumes exactly at any step,
    and val batch `index` is the same fixed eval batch on every call.
    """

    def _needed(self) -> tuple[int, str]:
        need = self.block_size + 1
        return need, f"block_size + 1 = {need}; use a smaller block_size or more data"

    def batch(self, split: str, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        """x, y: int64 [batch_size, block_size], y is x shifted left by one token."""
        import torch  # here, not at the top: `lmlab prepare` and its workers never load torch

        data = self.split(split)
        gen = torch.Generator().manual_seed(_seed_for(self.seed, split, int(index)))
        starts = torch.randint(len(data) - self.block_size, (self.batch_size,), generator=gen).numpy()
        rows = data[starts[:, None] + np.arange(self.block_size + 1)]  # one gather from the memmap
        rows = torch.from_numpy(rows.astype(np.int64))
        return rows[:, :-1].contiguous(), rows[:, 1:].contiguous()


@runtime_checkable
class ShardedData(Protocol):
    """Training data that several processes split between them (TokenStreams: each process its own streams, whose
    state its model carries) rather than each reading every world-th batch of the whole."""

    def shard(self, rank: int, world: int) -> "ShardedData":
        """Process `rank`'s part of the data of a run with `world` processes."""


class TokenStreams(_SplitBatches):
    """Contiguous chunks for truncated BPTT (PyTorch's word_language_model `batchify` + `get_batch`).

    Each split is cut into batch_size parallel streams of equal length; batch `index` is the chunk of
    block_size tokens at position index mod chunks-per-epoch in every stream, so row r of batch i + 1
    continues row r of batch i and a recurrent model can carry its hidden state across them.
    `batch(split, index)` returns (x, y, reset): reset is true on the first chunk of an epoch, where the
    streams start over and the carried state must be zeroed. A pure function of the index (the seed is
    unused: nothing is random), so training resumes exactly at any step. It is ShardedData.
    """

    rank, world = 0, 1  # a shard of a several-process run reads streams rank*batch_size ... (see shard)

    def shard(self, rank: int, world: int) -> "TokenStreams":
        """Process `rank`'s part of a run with `world` processes (torchrun): the split is cut into
        world x batch_size streams and this process reads its batch_size of them, so the processes together see
        the batches of one process with batch_size x world, and each still carries its own streams' state."""
        part = copy.copy(self)
        part.rank, part.world, part._splits = rank, world, {}
        return part

    def _needed(self) -> tuple[int, str]:
        streams = self.batch_size * self.world
        need = streams * (self.block_size + 1)
        return need, (f"batch_size x processes x (block_size + 1) = {need} needed for one chunk per stream; "
                      "use a smaller batch_size or block_size, or more data")

    def stream_length(self, split: str) -> int:
        return len(self.split(split)) // (self.batch_size * self.world)

    def chunks_per_epoch(self, split: str) -> int:
        """Whole chunks per stream (the last target of a chunk is the first input of the next)."""
        return (self.stream_length(split) - 1) // self.block_size

    def batch(self, split: str, index: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """x, y: int64 [batch_size, block_size] (y is x shifted left by one); reset: bool scalar tensor."""
        import torch

        data = self.split(split)
        position = int(index) % self.chunks_per_epoch(split)
        first = self.rank * self.batch_size
        starts = np.arange(first, first + self.batch_size) * self.stream_length(split) + position * self.block_size
        rows = torch.from_numpy(data[starts[:, None] + np.arange(self.block_size + 1)].astype(np.int64))
        return rows[:, :-1].contiguous(), rows[:, 1:].contiguous(), torch.tensor(position == 0)


def prepare_command(source, out, tokenizer: str = "char", vocab_size: int | None = None, val_fraction: float = 0.1,
                    workers: int = 1, quiet: bool = False, encoding: str | None = None) -> None:
    """`lmlab prepare`: `tokenizer` is a kind to build from the text (char, byte, word, jieba, bpe) or an existing
    tokenizer.json / run directory to reuse; prints what was written."""
    if tokenizer not in TOKENIZER_KINDS:
        if not Path(tokenizer).exists():
            raise LmlabError(f"--tokenizer {tokenizer!r} is neither {', '.join(TOKENIZER_KINDS)} nor an existing "
                             "tokenizer.json or run directory.")
        if vocab_size is not None:
            raise LmlabError("--vocab-size builds a new tokenizer; leave it out when reusing one with "
                             "--tokenizer PATH.")
        tokenizer = load_tokenizer(tokenizer)
    meta = prepare(source, out, tokenizer=tokenizer, vocab_size=vocab_size, val_fraction=val_fraction,
                   progress=not quiet, workers=workers, encoding=encoding or "UTF-8")
    print(f"wrote {out}: vocab {meta['vocab_size']}, train {meta['train']['tokens']:,} tokens, "
          f"val {meta['val']['tokens']:,} tokens ({meta['dtype']})")
