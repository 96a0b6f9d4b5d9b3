"""Files: atomic writes (a temporary file in the same directory, fsync, then rename: a crash or kill -9 at any
moment leaves either the old file or the new one, never half of one), a prepared directory published in one
step (`staged_dir`), and reading a user's text file (`read_text`) with one sentence for each way it can be wrong.
"""
from __future__ import annotations

import codecs
import contextlib
import json
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import IO, Iterator

from .errors import LmlabError


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "wb") -> Iterator[IO]:
    """Open a temporary sibling of `path` for writing; rename it over `path` only on success."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.chmod(tmp, 0o666 & ~_umask())  # mkstemp creates 0600; give the file the usual permissions
    try:
        encoding = None if "b" in mode else "utf-8"
        with os.fdopen(fd, mode, encoding=encoding) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def remove_stale_temp_files(directory: str | os.PathLike) -> None:
    """Delete temporary files that a killed atomic_open left behind in `directory` (the targets are intact)."""
    for tmp in Path(directory).glob(".*.tmp"):
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_open(path, "w") as f:
        f.write(text)


def atomic_write_json(path: str | os.PathLike, obj) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2) + "\n")


def read_json(path: str | os.PathLike) -> dict:
    """Read a JSON file, turning a missing or malformed file into a user error."""
    path = Path(path)
    if not path.is_file():
        raise LmlabError(f"{path} does not exist.")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise LmlabError(f"{path} is not valid JSON ({e}); restore or regenerate it.") from None


@contextlib.contextmanager
def staged_dir(out_dir: str | os.PathLike) -> Iterator[Path]:
    """A temporary directory inside out_dir to write a prepared directory's files into. When the block succeeds
    they are moved into out_dir, meta.json last (the old one is removed first), so meta.json only ever describes a
    full set; when it fails they are deleted, and so is out_dir if this created it."""
    out = Path(out_dir).resolve()
    created = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out, prefix=".prepare-"))
    try:
        yield tmp
        (out / "meta.json").unlink(missing_ok=True)
        names = sorted(p.name for p in tmp.iterdir() if p.name != "meta.json") + ["meta.json"]
        for name in names:
            os.replace(tmp / name, out / name)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        if created:
            shutil.rmtree(out, ignore_errors=True)
        raise
    shutil.rmtree(tmp, ignore_errors=True)


CONVERT = "convert it to UTF-8 (e.g. `iconv -t UTF-8`)"


def check_encoding(encoding: str) -> None:
    """An LmlabError (one sentence) for a text encoding Python does not know."""
    try:
        codecs.lookup(encoding)
    except LookupError:
        raise LmlabError(f"unknown text encoding {encoding!r}; use utf-8, gb18030, cp1252 or latin-1.") from None


def not_text_error(path, raw: bytes, pos: int, offset: int, line: int, encoding: str = "UTF-8",
                   fix: str = CONVERT, earlier_non_ascii: bool | None = None) -> LmlabError:
    """The one sentence for a file that does not decode: where the first bad byte is (raw[pos], at byte `offset`
    of the file, on `line`), and what to do. A UTF-8 failure on a line that reads as GB18030 / GBK Chinese says
    so: pass --encoding gb18030, or, when earlier lines held UTF-8 beyond ASCII (`earlier_non_ascii`; None: look
    in raw before the line), the file mixes encodings and that line is the one to convert."""
    start = raw.rfind(b"\n", 0, pos) + 1
    end = raw.find(b"\n", pos)
    hint = ""
    if codecs.lookup(encoding).name in ("utf-8", "utf-8-sig") and _reads_as_chinese(
            raw[start:end if end >= 0 else len(raw)], "gb18030"):
        if earlier_non_ascii is None:
            earlier_non_ascii = any(b > 127 for b in raw[:start])
        hint = (f"; line {line} reads as GB18030 / GBK Chinese while the lines before it are UTF-8: the file mixes "
                f"encodings, convert that line (e.g. `iconv -f gb18030 -t UTF-8`)" if earlier_non_ascii else
                "; it reads as GB18030 / GBK Chinese text: pass --encoding gb18030")
    return LmlabError(f"{path} is not {encoding} text (bad byte 0x{raw[pos]:02x} at byte offset {offset}, "
                      f"line {line}){hint or '; ' + fix}.")


def _reads_as_chinese(data: bytes, encoding: str) -> bool:
    """Whether `data` decodes strictly as `encoding` (GB18030) into Chinese: CJK ideographs, and high bytes in pairs
    (common GBK characters have both bytes >= 0x80; a Latin-1 or cp1252 letter is one high byte before ASCII)."""
    try:
        text = data.decode(encoding)
    except UnicodeDecodeError:
        return False
    paired = len(re.findall(rb"[\x81-\xfe][\x80-\xfe]", data))
    lone = len(re.findall(rb"[\x80-\xff](?![\x80-\xff])", data))  # high bytes followed by ASCII
    return paired >= 2 and paired >= 4 * lone and any("\u4e00" <= c <= "\u9fff" for c in text)


def read_text(path: str | os.PathLike, encoding: str = "UTF-8", *, empty_ok: bool = False,
              fix: str = CONVERT) -> str:
    """The whole text of a user's file, exactly as it is (a byte-order mark is kept). A missing file, an empty one
    (unless empty_ok) and one that is not `encoding` text are user errors, each one sentence naming the file;
    `fix` ends the last one (what to do about the encoding). The encoding is named in it as the caller spells it."""
    path = Path(path)
    if not path.is_file():
        what = "is not a file" if path.exists() else "does not exist"
        raise LmlabError(f"{path} {what}; give a text file.")
    check_encoding(encoding)
    raw = path.read_bytes()
    try:
        text = raw.decode(encoding)
    except UnicodeDecodeError as e:
        raise not_text_error(path, raw, e.start, e.start, raw.count(b"\n", 0, e.start) + 1, encoding, fix) from None
    if not text and not empty_ok:
        raise LmlabError(f"{path} is empty; give a file with some text.")
    return text
