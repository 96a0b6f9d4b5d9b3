"""Out-of-core machinery of the bounded-memory n-gram build (lmplz's -S memory / -T temp dir): the memory budget,
a scratch directory that is removed whatever happens, NumPy arrays spilled as zlib-compressed frames, sorted runs
of (key, count, suffix) and their k-way merge.

Reads: the --memory / --temp-dir values; block and run files it wrote itself. Writes: files under one scratch
directory (a fresh `lmlab-ngram-*` directory inside --temp-dir), deleted on success, on error and on Ctrl-C.

Compression is the standard library's zlib at level 1 (no new dependency), only where it pays: a run's sorted-key
differences shrink ~3x and its counts ~15x; the id stream, the rows and a run's suffix rows shrink only to
0.4-0.6 of their size while zlib reads 20-40 MB/s on this machine, slower than the disk, so they are stored as
they are. A frame is a header (dtype, item count, stored bytes, compressed or not) and the bytes; integers are
stored in the narrowest of uint32 / int64 that holds them.
"""
from __future__ import annotations

import contextlib
import errno
import os
import re
import shutil
import struct
import tempfile
import zlib
from pathlib import Path
from typing import BinaryIO, Iterator

import numpy as np

from ...errors import LmlabError

_HEADER = struct.Struct("<4sQQ?")  # dtype code, number of items, stored bytes, zlib-compressed
_DTYPES = {b"u4": np.dtype("<u4"), b"i8": np.dtype("<i8")}
_UNITS = {"b": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}
MIN_MEMORY = 256 << 10  # the smallest budget: blocks of ~1,600 tokens (bounded.BYTES_PER_TOKEN each)
_DISK_FULL = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)


def parse_memory(text) -> int:
    """Bytes of a --memory value like lmplz's -S: a number with a unit b, K, M, G, T (powers of 1024) or %
    (of the physical memory)."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d*)?|\.\d+)\s*([bBkKmMgGtT%]?)\s*", str(text))
    if not match or (not match.group(2) and float(match.group(1)) > 0):
        raise LmlabError(f"--memory {text!r} is not a size; give a number with a unit, e.g. 4G, 500M or 80% "
                         f"(of the physical memory), like lmplz -S.")
    value, unit = float(match.group(1)), match.group(2).lower() or "b"
    if unit == "%":
        if value > 100:
            raise LmlabError(f"--memory {text!r} is more than the whole physical memory; give at most 100%.")
        size = value / 100 * os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    else:
        size = value * _UNITS[unit]
    if size < 1:
        raise LmlabError(f"--memory {text!r} leaves no memory to count in; give e.g. 4G or 500M.")
    if size < MIN_MEMORY:
        raise LmlabError(f"--memory {text!r} is too small to count in: the minimum is 256K (blocks of about 1,600 "
                         f"tokens); give e.g. 4G or 500M.")
    return int(size)


@contextlib.contextmanager
def scratch_dir(parent=None) -> Iterator[Path]:
    """A fresh directory inside `parent` (default: the system's temp dir) for the spilled files; it is removed
    when the block ends, by success, an error or KeyboardInterrupt (SIGINT)."""
    parent = Path(parent) if parent is not None else Path(tempfile.gettempdir())
    try:
        parent.mkdir(parents=True, exist_ok=True)
        work = Path(tempfile.mkdtemp(dir=parent, prefix="lmlab-ngram-"))
    except OSError as e:
        raise LmlabError(f"cannot make a scratch directory in --temp-dir {parent} ({e.strerror}); "
                         f"give a writable directory.") from None
    try:
        yield work
    except OSError as e:
        if e.errno not in _DISK_FULL:
            raise
        raise LmlabError(f"writing the build's files failed ({e.strerror}): the disk of the scratch directory "
                         f"({parent}) or of the output is full; the scratch files and the partial output are "
                         f"removed, an earlier output is untouched. Free some space or give --temp-dir on a disk "
                         f"with more room.") from None
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _narrow(a: np.ndarray) -> np.ndarray:
    """The array as uint32 when its values fit (ids, rows, counts usually do), else int64."""
    if len(a) and a.dtype != np.uint32 and (a.min() < 0 or a.max() > 0xFFFFFFFF):
        return a.astype("<i8", copy=False)
    return a.astype("<u4", copy=False)


def write_frame(f: BinaryIO, a: np.ndarray, compress: bool = False) -> int:
    """Append one integer array as a frame (zlib level 1 if `compress`); returns the bytes written."""
    a = _narrow(np.asarray(a))
    data = zlib.compress(a.tobytes(), 1) if compress else a.tobytes()
    f.write(_HEADER.pack(a.dtype.str[1:].encode(), len(a), len(data), compress))
    f.write(data)
    return _HEADER.size + len(data)


def read_frame(f: BinaryIO) -> np.ndarray | None:
    """The next frame's array as int64, or None at the end of the file."""
    head = f.read(_HEADER.size)
    if not head:
        return None
    code, count, size, compressed = _HEADER.unpack(head)
    data = zlib.decompress(f.read(size)) if compressed else f.read(size)
    a = np.frombuffer(data, dtype=_DTYPES[code.rstrip(b"\0")], count=count)
    return a.astype(np.int64)


def save_array(path: Path, a: np.ndarray) -> int:
    """One array in one file (a block of the id stream, a block of rows); returns the bytes written."""
    with open(path, "wb") as f:
        return write_frame(f, a)


def load_array(path: Path) -> np.ndarray:
    with open(path, "rb") as f:
        return read_frame(f)


def write_run(path: Path, keys: np.ndarray, counts: np.ndarray, suffix: np.ndarray, piece: int) -> int:
    """A sorted run (unique keys ascending, their counts and suffix rows) in pieces of `piece` records; the keys
    are stored as differences (small numbers, which compress well). Returns the bytes written."""
    written = 0
    with open(path, "wb") as f:
        for lo in range(0, len(keys), piece):
            written += append_run_piece(f, keys[lo:lo + piece], counts[lo:lo + piece], suffix[lo:lo + piece])
    return written


def append_run_piece(f: BinaryIO, keys: np.ndarray, counts: np.ndarray, suffix: np.ndarray) -> int:
    """One piece of a run (read_run reads it back): key differences and counts compressed, suffix rows as they are."""
    return (write_frame(f, np.diff(keys, prepend=0), compress=True) + write_frame(f, counts, compress=True)
            + write_frame(f, suffix))


def read_run(path: Path) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """The pieces of a run, (keys, counts, suffix) each."""
    with open(path, "rb") as f:
        while (deltas := read_frame(f)) is not None:
            yield np.cumsum(deltas), read_frame(f), read_frame(f)


def merge_runs(paths: list[Path]) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """k-way merge of sorted runs into one sorted stream of unique keys, counts of equal keys summed, in pieces.

    Each step holds one piece of every run, takes from every piece the keys up to the smallest last key among
    them (no run can hold a smaller key further on, so every copy of those keys is in this step), and merges
    those with one sort."""
    readers = [read_run(p) for p in paths]
    heads = [next(r, None) for r in readers]
    live = [i for i, h in enumerate(heads) if h is not None]
    while live:
        bound = min(heads[i][0][-1] for i in live)
        taken = []
        for i in live:
            keys, counts, suffix = heads[i]
            cut = int(np.searchsorted(keys, bound, side="right"))
            taken.append((keys[:cut], counts[:cut], suffix[:cut]))
            heads[i] = (keys[cut:], counts[cut:], suffix[cut:]) if cut < len(keys) else next(readers[i], None)
        live = [i for i in live if heads[i] is not None]
        keys = np.concatenate([t[0] for t in taken])
        counts = np.concatenate([t[1] for t in taken])
        suffix = np.concatenate([t[2] for t in taken])
        order = np.argsort(keys, kind="stable")
        keys, counts, suffix = keys[order], counts[order], suffix[order]
        first = np.flatnonzero(np.concatenate(([True], keys[1:] != keys[:-1])))
        yield keys[first], np.add.reduceat(counts, first), suffix[first]
