"""lmlab's binary n-gram format (.lmbin) and the compiled query path over it (query_kernels.cpp).

An .lmbin file is a fixed little-endian header and plain arrays, each at an offset aligned to 64 bytes: the token
scheme's note, the vocabulary (its words joined by newlines, their byte offsets, a linear-probing hash of their
bytes) and per order the sorted tables of tables.py (keys, log10 prob, log10 backoff) and a linear-probing hash of
the keys. Loading memory-maps the file and checks the header (magic, version, header CRC-32, file size, every
array's offset and size), never the payload: milliseconds for any size, nothing unpickled. The CRC-32 of the payload
is checked in full after `write` (`lmlab ngram build-binary`) and by `load(..., verify=True)` (`--verify`). The
layout is the table in docs/ngram.md ("Binary format").

Reads: an NGramLM (from ARPA or .npz) / an .lmbin file. Writes: the .lmbin file (atomically) / an NGramLM whose
arrays are views of the mapped file, and whose queries (`QueryIndex`) run in the compiled kernel; without a compiler
(or LMLAB_KERNELS=0) queries take the NumPy path of tables.py.
"""
from __future__ import annotations

import ctypes
import functools
import mmap
import struct
import zlib
from pathlib import Path

import numpy as np

from ...errors import LmlabError
from ...files import atomic_open
from ... import native
from .arpa import ngram_word_ids_range
from .tables import NGramTables, rows_of
from .vocab import Vocab

MAGIC = b"LMLABNGM"
VERSION = 1
ALIGN = 64
_HEAD = struct.Struct("<8sIIIIQQII")  # magic, version, header size, order, flags, vocab size, file size, CRCs
MAX_ORDER = 64  # query_kernels.cpp's MAX_ORDER
FLAG_SUFFIX_CLOSED = 1  # header flags bit 0: every n-gram's suffix is in the model (see suffix_closed)
LOAD_FACTOR = 1.5  # hash slots per entry at least (KenLM's probing default); a power of two, so 1.5 .. 3
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)  # Fibonacci hashing (2**64 / golden ratio)
_FNV_OFFSET, _FNV_PRIME = np.uint64(0xCBF29CE484222325), np.uint64(0x100000001B3)  # FNV-1a 64 of a word's bytes
_EMPTY_WORD = np.uint64(0xFFFFFFFFFFFFFFFF)


def is_lmbin(path) -> bool:
    """Whether `path` is a file that starts with the .lmbin magic bytes (whatever its suffix)."""
    try:
        with open(path, "rb") as f:
            return f.read(len(MAGIC)) == MAGIC
    except OSError:
        return False


# --------------------------------------------------------------------------- hash tables (NumPy, deterministic)

def _bits_for(count: int) -> int:
    return max(1, int(np.ceil(np.log2(max(count * LOAD_FACTOR, 2)))))


def _n_slots(count: int) -> int:
    return max(2, int(np.ceil(count * LOAD_FACTOR)) + 1)


def _key_homes(keys: np.ndarray, n_slots: int) -> np.ndarray:
    """Home slot of each key: ((key * GOLDEN) >> 32) * n_slots >> 32 (Fibonacci hashing, then Lemire's
    multiply-shift range reduction; query_kernels.cpp's home)."""
    with np.errstate(over="ignore"):
        h = (keys.astype(np.uint64) * _GOLDEN) >> np.uint64(32)
        return (h * np.uint64(n_slots)) >> np.uint64(32)


def _probing_insert(home: np.ndarray, n_slots: int) -> np.ndarray:
    """The slot of each entry in a linear-probing table of n_slots slots: every entry probes home, home+1, ...
    (wrapping) and all entries move at once; per slot the lowest entry index wins. Every slot between an entry's
    home and its slot ends up taken, so a lookup scanning from home to the first empty slot finds it."""
    taken = np.zeros(n_slots, dtype=bool)
    where = np.empty(len(home), dtype=np.int64)
    pending, slot = np.arange(len(home)), home.astype(np.int64)
    while len(pending):
        cand = np.flatnonzero(~taken[slot])
        _, first = np.unique(slot[cand], return_index=True)
        won = cand[first]
        where[pending[won]] = slot[won]
        taken[slot[won]] = True
        keep = np.ones(len(pending), dtype=bool)
        keep[won] = False
        pending, slot = pending[keep], slot[keep] + 1
        slot[slot == n_slots] = 0
    return where


def key_slots(keys: np.ndarray, prob: np.ndarray, backoff: np.ndarray, last: bool = False) -> np.ndarray:
    """[n_slots, 4] int64: (key, row, prob, backoff) of every n-gram of an order in a linear-probing table (prob and
    backoff: float64 bits), query_kernels.cpp's Slot; for the highest order (last) [n_slots, 2] (key, prob), its
    LastSlot. Key -1 marks an empty slot."""
    n_slots = _n_slots(len(keys))
    slots = np.zeros((n_slots, 2 if last else 4), dtype=np.int64)
    slots[:, 0] = -1
    where = _probing_insert(_key_homes(keys, n_slots), n_slots)
    slots[where, 0] = keys
    prob = np.ascontiguousarray(prob, dtype=np.float64).view(np.int64)
    if last:
        slots[where, 1] = prob
    else:
        slots[where, 1] = np.arange(len(keys))
        slots[where, 2] = prob
        slots[where, 3] = np.ascontiguousarray(backoff, dtype=np.float64).view(np.int64)
    return slots


def word_hashes(blob: np.ndarray, starts: np.ndarray) -> np.ndarray:
    """FNV-1a 64 of each word's bytes (word i = blob[starts[i]:starts[i+1]-1]), vectorised over words: one step
    per byte position, over the words that long (longest first)."""
    lengths = np.diff(starts).astype(np.int64) - 1
    order = np.argsort(-lengths, kind="stable")
    sorted_len = lengths[order]
    h = np.full(len(lengths), _FNV_OFFSET, dtype=np.uint64)
    with np.errstate(over="ignore"):
        for c in range(int(sorted_len[0]) if len(sorted_len) else 0):
            active = order[:int(np.searchsorted(-sorted_len, -c, side="left"))]
            h[active] = (h[active] ^ blob[starts[active].astype(np.int64) + c].astype(np.uint64)) * _FNV_PRIME
    return h


def word_slots(blob: np.ndarray, starts: np.ndarray) -> np.ndarray:
    """uint64 [2**bits]: (hash >> 32) << 32 | id of every word in a linear-probing table; all ones = empty."""
    V = len(starts) - 1
    h = word_hashes(blob, starts)
    bits = _bits_for(V)
    slots = np.full(1 << bits, _EMPTY_WORD, dtype=np.uint64)
    with np.errstate(over="ignore"):
        home = (h * _GOLDEN) >> np.uint64(64 - bits)
    slots[_probing_insert(home, 1 << bits)] = \
        ((h >> np.uint64(32)) << np.uint64(32)) | np.arange(V, dtype=np.uint64)
    return slots


def vocab_arrays(vocab: Vocab) -> tuple[np.ndarray, np.ndarray]:
    """The words as UTF-8 bytes joined by newlines (no word holds one) and each word's start (V + 1 entries)."""
    encoded = [w.encode("utf-8") for w in vocab.words]
    blob = np.frombuffer(b"\n".join(encoded), dtype=np.uint8)
    starts = np.zeros(len(encoded) + 1, dtype=np.uint64)
    np.cumsum(np.fromiter((len(e) + 1 for e in encoded), dtype=np.uint64, count=len(encoded)), out=starts[1:])
    return blob, starts


def suffix_closed(tables: list[NGramTables], chunk: int = 1 << 20) -> bool:
    """Whether every n-gram's suffix (its first word dropped) is in the model too, as in lmplz's models (SRILM's
    pruned ones may lack some): then no n-gram is found where a shorter one ending at the same word is not, and the
    kernel stops a position's lookups at the first miss."""
    V = len(tables[0].keys)
    for n in range(3, len(tables) + 1):
        for lo in range(0, len(tables[n - 1].keys), chunk):
            ids = ngram_word_ids_range(tables, n, V, lo, min(lo + chunk, len(tables[n - 1].keys)))
            if (rows_of(tables, ids[:, 1:]) < 0).any():
                return False
    return True


# --------------------------------------------------------------------------- the file

@functools.lru_cache(maxsize=None)
def _array_names(order: int) -> tuple[str, ...]:
    names = ["note", "words", "word_starts", "word_slots"]
    for n in range(1, order + 1):
        names += [f"keys{n}", f"prob{n}", f"backoff{n}", f"slots{n}"]
    return tuple(names)


_DTYPES = {"note": np.dtype(np.uint8), "words": np.dtype(np.uint8), "word_starts": np.dtype(np.uint64),
           "word_slots": np.dtype(np.uint64), "keys": np.dtype(np.int64), "prob": np.dtype(np.float64),
           "backoff": np.dtype(np.float64), "slots": np.dtype(np.int64)}


def _dtype_of(name: str) -> np.dtype:
    return _DTYPES.get(name) or _DTYPES[name.rstrip("0123456789")]


@functools.lru_cache(maxsize=None)
def _header_size(order: int) -> int:
    raw = _HEAD.size + 8 * order + 16 * len(_array_names(order))
    return -(-raw // ALIGN) * ALIGN


def write(model, path) -> None:
    """The model as an .lmbin file (atomic), then its checksum checked by reading the file back. Each order's hash
    is built just before it is written, so the memory on top of the model is one order's hash."""
    order, V = model.order, model.vocab_size
    if order > MAX_ORDER:
        raise LmlabError(f"the .lmbin format holds orders up to {MAX_ORDER} (this model is of order {order}).")
    if V >= 2 ** 31:
        raise LmlabError(f"the .lmbin format holds up to 2**31 words (this model has {V:,}).")
    blob, starts = vocab_arrays(model.vocab)
    note = np.frombuffer(model.scheme.note().encode("utf-8"), dtype=np.uint8)
    pieces = [(a.nbytes, lambda a=a: a) for a in (note, blob, starts, word_slots(blob, starts))]  # (size, array)
    for n, t in enumerate(model.tables, start=1):
        keys = np.ascontiguousarray(t.keys, dtype=np.int64)
        prob, bo = np.ascontiguousarray(t.prob, dtype=np.float64), np.ascontiguousarray(t.backoff, dtype=np.float64)
        last = n == order
        slots = (lambda k=keys, p=prob, b=bo, z=last: key_slots(k, p, b, z))
        pieces += [(keys.nbytes, lambda a=keys: a), (prob.nbytes, lambda a=prob: a), (bo.nbytes, lambda a=bo: a),
                   (0, lambda: np.zeros(0, np.int64)) if n == 1
                   else (_n_slots(len(keys)) * (16 if last else 32), slots)]
    head = _header_size(order)
    table, offset = [], head
    for nbytes, _ in pieces:
        table.append((offset, nbytes))
        offset = -(-(offset + nbytes) // ALIGN) * ALIGN
    file_size = table[-1][0] + table[-1][1]
    crc = 0
    with atomic_open(path, "wb") as f:
        f.write(b"\0" * head)
        for (off, nbytes), (_, make) in zip(table, pieces):
            pad = b"\0" * (off - f.tell())
            data = np.ascontiguousarray(make()).reshape(-1).view(np.uint8).data
            assert data.nbytes == nbytes
            f.write(pad)
            f.write(data)
            crc = zlib.crc32(data, zlib.crc32(pad, crc))
            del data
        flags = FLAG_SUFFIX_CLOSED if suffix_closed(model.tables) else 0
        header = _pack_header(order, V, flags, file_size, crc, [len(t.keys) for t in model.tables], table, head)
        f.seek(0)
        f.write(header)
    load(path, verify=True)


def _pack_header(order, V, flags, file_size, crc, counts, table, head) -> bytes:
    """The header bytes; its own CRC-32 is over the header with that field zero."""
    def pack(header_crc: int) -> bytes:
        body = _HEAD.pack(MAGIC, VERSION, head, order, flags, V, file_size, crc, header_crc)
        body += struct.pack(f"<{order}Q", *counts) + b"".join(struct.pack("<QQ", o, s) for o, s in table)
        return body.ljust(head, b"\0")

    return pack(zlib.crc32(pack(0)))


def _bad(path, what: str) -> LmlabError:
    return LmlabError(f"{path} is not a usable .lmbin n-gram model: {what}; rebuild it with "
                      f"`lmlab ngram build-binary MODEL.arpa {Path(path).name}`.")


def _read_header(path: Path, data) -> tuple[int, int, int, int, list[int], list[tuple[int, int]]]:
    """(order, vocab size, flags, payload CRC, counts, array table), every field checked against the file."""
    size = len(data)
    if bytes(data[:8]) != MAGIC:
        raise _bad(path, "it does not start with the .lmbin magic bytes")
    if size < _HEAD.size:
        raise _bad(path, "the file is truncated")
    magic, version, head, order, flags, V, file_size, crc, header_crc = _HEAD.unpack_from(data, 0)
    if version != VERSION:
        raise LmlabError(f"{path} is an .lmbin file of format version {version}, but this lmlab reads version "
                         f"{VERSION}; rebuild it with `lmlab ngram build-binary`.")
    if not 1 <= order <= MAX_ORDER or head != _header_size(order) or size < head:
        raise _bad(path, "the header is damaged (order or header size out of range)" if size >= head
                   else "the file is truncated")
    raw = bytearray(data[:head])
    raw[_HEAD.size - 4:_HEAD.size] = b"\0\0\0\0"
    if zlib.crc32(raw) != header_crc:
        raise _bad(path, "the header's checksum does not match (the header is damaged)")
    if size != file_size:
        raise _bad(path, f"the file is {size:,} bytes but its header says {file_size:,} "
                   f"({'truncated' if size < file_size else 'extra bytes at the end'})")
    counts = list(struct.unpack_from(f"<{order}Q", data, _HEAD.size))
    names = _array_names(order)
    flat = struct.unpack_from(f"<{2 * len(names)}Q", data, _HEAD.size + 8 * order)
    table = list(zip(flat[0::2], flat[1::2]))
    expected = {"word_starts": 8 * (V + 1)}
    for n, c in enumerate(counts, start=1):
        expected.update({f"keys{n}": 8 * c, f"prob{n}": 8 * c, f"backoff{n}": 8 * c})
    for name, (off, nbytes) in zip(names, table):
        if off % ALIGN or off < head or off + nbytes > size or expected.get(name, nbytes) != nbytes:
            raise _bad(path, f"the array {name} lies outside the file or has the wrong size")
    if counts[0] != V:
        raise _bad(path, "the unigram count differs from the vocabulary size")
    return order, V, flags, crc, counts, table


def _payload_crc(data, head: int) -> int:
    crc, view = 0, memoryview(data)
    for lo in range(head, len(data), 1 << 24):
        crc = zlib.crc32(view[lo:lo + (1 << 24)], crc)
    return crc


def load(path, verify: bool = False):
    """The NGramLM of an .lmbin file, its arrays mapped from the file (read-only); verify: check the payload's
    CRC-32 too (reads the whole file)."""
    from .model import NGramLM
    from ...splitting import scheme_from_note

    path = Path(path)
    if not path.is_file():
        raise LmlabError(f"{path} does not exist.")
    with open(path, "rb") as f:
        if path.stat().st_size == 0:
            raise _bad(path, "the file is empty")
        data = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    order, V, flags, crc, counts, table = _read_header(path, data)
    if verify and _payload_crc(data, _header_size(order)) != crc:
        raise _bad(path, "the checksum of its arrays does not match (the file is damaged)")
    # Views of one uint8 view of the map, and their addresses as the map's plus the offset: reading a ctypes
    # address off each array (ndarray.ctypes) is ~10 us, half of a load's time before this.
    whole = np.frombuffer(data, dtype=np.uint8)
    base, arrays, addresses = whole.ctypes.data, {}, {}
    for name, (off, nbytes) in zip(_array_names(order), table):
        dtype = _dtype_of(name)
        if nbytes % dtype.itemsize:
            raise _bad(path, f"the array {name} has the wrong size")
        arrays[name] = whole[off:off + nbytes].view(dtype)
        addresses[id(arrays[name])] = base + off
    words = len(arrays["word_slots"])
    if words < 2 or words & (words - 1) or words <= V:
        raise _bad(path, "the hash table word_slots has the wrong size")
    for n in range(2, order + 1):
        width = 2 if n == order else 4
        if len(arrays[f"slots{n}"]) % width or not counts[n - 1] < len(arrays[f"slots{n}"]) // width < 2 ** 32:
            raise _bad(path, f"the hash table slots{n} has the wrong size")
    note = arrays["note"].tobytes().decode("utf-8", errors="replace")
    tables = [NGramTables(arrays[f"keys{n}"], arrays[f"prob{n}"], arrays[f"backoff{n}"]) for n in range(1, order + 1)]
    vocab = MappedVocab(arrays["words"], arrays["word_starts"])
    scheme = note if not note.startswith("{") else scheme_from_note(note, f"the tokenizer inside {path}")
    model = NGramLM(vocab, tables, scheme, {"counts": counts, "binary": str(path)})
    arrays["suffix_closed"] = bool(flags & FLAG_SUFFIX_CLOSED)
    model.query_index = QueryIndex(model, arrays, addresses=addresses)
    return model


class MappedVocab(Vocab):
    """A Vocab whose words stay in the mapped file until Python needs them (the kernel reads the file's copy): a
    model loads in milliseconds whatever its vocabulary size."""

    def __init__(self, blob: np.ndarray, starts: np.ndarray):
        self.blob, self.starts = blob, starts
        self._words: list[str] | None = None
        self._index: dict | None = None

    def __len__(self) -> int:
        return len(self.starts) - 1

    @property
    def words(self) -> list[str]:
        if self._words is None:
            self._words = self.blob.tobytes().decode("utf-8", errors="replace").split("\n") if len(self) else []
        return self._words

    @property
    def index(self) -> dict:
        if self._index is None:
            self._index = {w: i for i, w in enumerate(self.words)}
        return self._index


# --------------------------------------------------------------------------- the compiled queries

class _Order(ctypes.Structure):  # query_kernels.cpp's Order
    _fields_ = [("keys", ctypes.c_void_p), ("prob", ctypes.c_void_p), ("backoff", ctypes.c_void_p),
                ("count", ctypes.c_int64), ("slots", ctypes.c_void_p), ("n_slots", ctypes.c_int64)]


class _Model(ctypes.Structure):  # query_kernels.cpp's Model
    _fields_ = [("order", ctypes.c_int64), ("V", ctypes.c_int64), ("orders", ctypes.POINTER(_Order)),
                ("word_starts", ctypes.c_void_p), ("words", ctypes.c_void_p), ("word_slots", ctypes.c_void_p),
                ("word_bits", ctypes.c_int64), ("words_bytes", ctypes.c_int64), ("suffix_closed", ctypes.c_int64)]


_SOURCE = Path(__file__).with_name("query_kernels.cpp")
_lib: ctypes.CDLL | None | bool = None


_fallback = native.Fallback()
disabled = _fallback.forced  # `with disabled():` queries take the NumPy path of tables.py, to compare the two


def kernel():
    """The compiled query kernel (lmlab.native), or None (LMLAB_KERNELS=0, no compiler, inside `disabled()`)."""
    global _lib
    if _fallback.on:
        return None
    if _lib is None:
        lib = native.load_library(_SOURCE)
        if lib is not None:
            p = ctypes.c_void_p
            lib.lmlab_ngram_score_stream.restype = None
            lib.lmlab_ngram_score_stream.argtypes = [p, p, p, ctypes.c_int64, p, p]
            lib.lmlab_ngram_score_text.restype = ctypes.c_int64
            lib.lmlab_ngram_score_text.argtypes = [p, p, ctypes.c_int64, p, p, p, p, p, p]
        _lib = lib or False
    return _lib or None


def index_of(model) -> QueryIndex | None:
    """The model's QueryIndex: an .lmbin file's, else (a model read from ARPA / .npz, or one whose tables were
    replaced) one made in memory on first use that binary-searches the sorted keys, so that no work proportional to
    the model is done before a first small query (only the vocabulary hash); None where the kernel is unavailable."""
    if kernel() is None or model.order > MAX_ORDER or model.vocab_size >= 2 ** 31:
        return None
    index = getattr(model, "query_index", None)
    if index is None or index.tables_id != _tables_id(model):
        index = model.query_index = QueryIndex(model, {"suffix_closed": False}, lookup="sorted")
    return index


def _tables_id(model) -> tuple:
    return tuple((id(t.keys), id(t.prob), id(t.backoff)) for t in model.tables)


class QueryIndex:
    """A model's arrays as the kernel reads them: the tables, and the hashes of words and keys (from the .lmbin
    file, or built in memory for a model read from ARPA / .npz). lookup="sorted": binary search in the sorted keys
    instead of the key hashes (to measure one against the other)."""

    def __init__(self, model, arrays: dict | None = None, lookup: str = "probing", addresses: dict | None = None):
        """addresses: id(array) -> its data address, for arrays of `arrays` whose address is known (load)."""
        self.tables_id = _tables_id(model)
        arrays = dict(arrays) if arrays is not None else {}
        known = addresses or {}

        def pointer(a):
            return None if a is None or len(a) == 0 else known.get(id(a)) or a.ctypes.data

        if "word_slots" not in arrays:
            blob, starts = vocab_arrays(model.vocab)
            arrays.update(words=blob, word_starts=starts, word_slots=word_slots(blob, starts))
        self.arrays = arrays  # keeps every array the struct points to alive
        orders = (_Order * model.order)()
        for n, (o, t) in enumerate(zip(orders, model.tables), start=1):
            keys, prob, bo = (np.ascontiguousarray(a, dtype=d) for a, d in
                              ((t.keys, np.int64), (t.prob, np.float64), (t.backoff, np.float64)))
            slots = None
            if n > 1 and lookup == "probing":
                slots = arrays.get(f"slots{n}")
                if slots is None or len(slots) == 0:
                    slots = key_slots(keys, prob, bo, last=n == model.order)
            slots = slots if slots is None or slots.ndim == 1 else slots.reshape(-1)
            arrays.update({f"k{n}": keys, f"p{n}": prob, f"b{n}": bo, f"s{n}": slots})
            o.keys, o.prob, o.backoff, o.count = pointer(keys), pointer(prob), pointer(bo), len(keys)
            o.slots = pointer(slots)
            o.n_slots = 0 if slots is None else len(slots) // (2 if n == model.order else 4)
        self.orders = orders
        ws = arrays["word_slots"]
        closed = arrays["suffix_closed"] if "suffix_closed" in arrays else suffix_closed(model.tables)
        self.model = _Model(model.order, model.vocab_size, orders, pointer(arrays["word_starts"]),
                            pointer(arrays["words"]), pointer(ws), int(np.log2(len(ws))), len(arrays["words"]),
                            int(closed))

    def log10_stream(self, stream: np.ndarray, dist: np.ndarray):
        """tables.log10_stream in the kernel: log10 p of every position and the n-gram length used."""
        stream = np.ascontiguousarray(stream, dtype=np.int64)
        dist = np.ascontiguousarray(dist, dtype=np.int64)
        logp, length = np.empty(len(stream)), np.empty(len(stream), dtype=np.int64)
        if len(stream):
            kernel().lmlab_ngram_score_stream(ctypes.byref(self.model), stream.ctypes.data, dist.ctypes.data,
                                              len(stream), logp.ctypes.data, length.ctypes.data)
        return logp, length

    def score_text(self, data: bytes, per_token: bool = True, chunk: int = 1 << 20) -> dict:
        """Score UTF-8 text, each line a sentence (the word scheme: ASCII space, tab, CR, NUL separate words).
        totals: "total", "tokens", "oov", "excl" (log10 sums, counts); per_token: also the stream ids, log10,
        n-gram lengths (every position, <s> included) and the words of each line, as NGramLM.query_lines has them."""
        lib, totals = kernel(), np.zeros(4)
        if not per_token:
            lib.lmlab_ngram_score_text(ctypes.byref(self.model), data, len(data), None, None, None, None, None,
                                       totals.ctypes.data)
            return _totals(totals)
        parts = []
        for lo, hi in _line_chunks(data, chunk):
            piece = data[lo:hi]
            lines = piece.count(b"\n") + (0 if piece.endswith(b"\n") else 1)
            cap = len(piece) + 2 * lines + 2  # words <= bytes; + <s> and </s> per line
            ids, logp, length = np.empty(cap, np.int32), np.empty(cap), np.empty(cap, np.int8)
            words = np.empty(lines, np.int64)
            n = lib.lmlab_ngram_score_text(ctypes.byref(self.model), piece, len(piece), ids.ctypes.data,
                                           logp.ctypes.data, length.ctypes.data, words.ctypes.data, None,
                                           totals.ctypes.data)
            parts.append((ids[:n], logp[:n], length[:n], words))
        out = _totals(totals)
        cat = (lambda i, d: np.concatenate([p[i] for p in parts]) if parts else np.zeros(0, d))
        out.update(stream=cat(0, np.int64).astype(np.int64), log10=cat(1, np.float64),
                   length=cat(2, np.int64).astype(np.int64), line_words=cat(3, np.int64))
        return out


def _totals(t: np.ndarray) -> dict:
    return {"total": float(t[0]), "tokens": int(t[1]), "oov": int(t[2]), "excl": float(t[3])}


def _line_chunks(data: bytes, size: int):
    """(lo, hi) pieces of about `size` bytes, each ending after a newline (or at the end)."""
    lo = 0
    while lo < len(data):
        hi = data.find(b"\n", min(lo + size, len(data) - 1))
        hi = len(data) if hi < 0 else hi + 1
        yield lo, hi
        lo = hi
