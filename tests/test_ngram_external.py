"""The bounded-memory n-gram build (`lmlab ngram train --memory M --temp-dir D --workers N`, models/ngram/bounded.py):
with a budget small enough to force many spilled runs, the ARPA file is byte for byte the in-memory build's (orders
3 and 5, pruning, a limited vocabulary, --skip-symbols, characters, two workers); the scratch directory is removed
on success, on error and on SIGINT, and no half-written model is left; bad --memory values are one sentence."""
from __future__ import annotations

import os
import resource
import signal
import subprocess
import time
from pathlib import Path

import pytest

from conftest import ENV, LMLAB
from lmlab.cli import main
from lmlab.errors import LmlabError
from lmlab.models.ngram.bounded import train_bounded, write_bounded_arpa
from lmlab.models.ngram.external import merge_runs, parse_memory, write_run
from lmlab.models.ngram.verbs import train_file

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
WIKI = SHARED / "wikitext-2" / "valid.txt"
MULTI30K = SHARED / "multi30k" / "train.en"
pytestmark = pytest.mark.skipif(not (WIKI.is_file() and MULTI30K.is_file()),
                                reason="../shared/data (wikitext-2, multi30k) is absent")
TINY = "2M"  # ~13k tokens a block: WikiText-2 valid (0.25M tokens) makes 17 blocks, one run per block and order


def build_both(tmp_path: Path, data: Path, **options) -> tuple[bytes, bytes, dict]:
    """The ARPA bytes of the in-memory build and of the bounded one, the highest order streamed into the file as
    `ngram train --memory` does (scratch dir checked empty), and its info."""
    scratch = tmp_path / "scratch"
    bounded_only = {"memory": options.pop("memory", TINY), "workers": options.pop("workers", 1)}
    train_file(data, tmp_path / "memory.arpa", progress=False, **options)
    built = write_bounded_arpa(data, tmp_path / "bounded.arpa", progress=False, temp_dir=scratch, **bounded_only,
                               **options)
    assert list(scratch.iterdir()) == []
    return (tmp_path / "memory.arpa").read_bytes(), (tmp_path / "bounded.arpa").read_bytes(), built.info


@pytest.mark.parametrize("order", [3, 5])
def test_byte_identical_with_many_spills(tmp_path, order):
    data = tmp_path / "train.txt"  # WikiText-2 valid, and lines with words longer than 24 bytes (written apart)
    val = (SHARED / "multi30k" / "val.en").read_text(encoding="utf-8").splitlines()[:300]
    data.write_text(WIKI.read_text(encoding="utf-8") + "".join("-".join(l.split()[:4]) + f" {l}\n" for l in val),
                    encoding="utf-8")
    memory, bounded, info = build_both(tmp_path, data, order=order, skip_symbols=True)
    assert info["external"]["blocks"] >= 10 and info["external"]["spills"] == (order - 1) * info["external"]["blocks"]
    assert info["external"]["top_order_streamed"]
    assert memory == bounded
    assert len([w for w in memory.split() if len(w) > 24]) > 100


def test_counting_out_of_core_alone_gives_the_same_model(tmp_path):
    """train_bounded (the model in memory, counted out of core; what .npz / .lmbin outputs use), Witten-Bell."""
    train_file(WIKI, tmp_path / "memory.arpa", order=3, smoothing="witten-bell", skip_symbols=True, progress=False)
    model = train_bounded(WIKI, order=3, smoothing="witten-bell", skip_symbols=True, progress=False, memory=TINY,
                          temp_dir=tmp_path / "scratch")
    model.save_arpa(tmp_path / "bounded.arpa")
    assert model.info["external"]["spills"] >= 10 and not model.info["external"]["top_order_streamed"]
    assert (tmp_path / "memory.arpa").read_bytes() == (tmp_path / "bounded.arpa").read_bytes()


def test_pruned_limited_vocab_identical(tmp_path):
    words = tmp_path / "words.txt"
    words.write_text((SHARED / "multi30k" / "val.en").read_text(encoding="utf-8"), encoding="utf-8")
    memory, bounded, info = build_both(tmp_path, MULTI30K, order=4, prune=[0, 0, 1], limit_vocab=words)
    assert info["external"]["spills"] >= 10
    assert memory == bounded and b"ngram 4=" in memory


def test_char_tokenizer_identical(tmp_path):
    data = tmp_path / "chars.txt"
    data.write_text("".join(MULTI30K.read_text(encoding="utf-8").splitlines(keepends=True)[:1500]), encoding="utf-8")
    memory, bounded, info = build_both(tmp_path, data, order=5, tokenizer="char", memory="512K",
                                        discount_fallback=True)
    assert info["external"]["spills"] >= 10
    assert memory == bounded
    note = (tmp_path / "memory.tokenizer.json").read_text(encoding="utf-8")  # the char scheme's note beside it
    assert (tmp_path / "bounded.tokenizer.json").read_text(encoding="utf-8") == note


def test_two_workers_identical(tmp_path):
    memory, bounded, info = build_both(tmp_path, WIKI, order=4, skip_symbols=True, workers=2)
    assert info["external"]["workers"] == 2 and info["external"]["spills"] >= 10
    assert memory == bounded


def test_merge_sums_equal_keys_across_runs(tmp_path):
    import numpy as np

    runs = []
    for i, keys in enumerate([[1, 5, 9, 20], [5, 6, 20, 30, 31], [0, 9]]):
        runs.append(tmp_path / f"run{i}")
        keys = np.array(keys, np.int64)
        write_run(runs[-1], keys, np.full(len(keys), i + 1), keys % 7, piece=2)
    keys, counts, suffix = (np.concatenate(c) for c in zip(*merge_runs(runs)))
    assert keys.tolist() == [0, 1, 5, 6, 9, 20, 30, 31]
    assert counts.tolist() == [3, 1, 3, 2, 4, 3, 2, 2]
    assert suffix.tolist() == (keys % 7).tolist()


@pytest.mark.parametrize("workers", [1, 2])
def test_scratch_removed_on_error_and_no_output(tmp_path, workers):
    data = tmp_path / "bad.txt"
    data.write_bytes(MULTI30K.read_bytes() + b"a line with <s> inside\n")
    lines = data.read_bytes().count(b"\n")
    scratch = tmp_path / "scratch"
    with pytest.raises(LmlabError, match=rf"bad.txt:{lines}: the special word <s>"):
        train_file(data, tmp_path / "m.arpa", order=3, progress=False, memory="1M", temp_dir=scratch, workers=workers)
    data.write_bytes(MULTI30K.read_bytes() + b"caf\xe9\n")
    with pytest.raises(LmlabError, match=rf"not utf-8 text \(bad byte 0xe9 .*line {lines}\)"):
        train_file(data, tmp_path / "m.arpa", order=3, progress=False, memory="1M", temp_dir=scratch, workers=workers)
    assert list(scratch.iterdir()) == [] and list(tmp_path.glob("m.*")) == []


@pytest.mark.parametrize("workers", [1, 2])
def test_sigint_cleans_scratch_and_leaves_no_output(tmp_path, workers):
    scratch, out = tmp_path / "scratch", tmp_path / "out" / "m.arpa"
    proc = subprocess.Popen([*LMLAB, "ngram", "train", "-o", "5", "--data", str(WIKI), "--out", str(out),
                             "--skip-symbols", "--memory", "1M", "--temp-dir", str(scratch), "--workers",
                             str(workers), "--quiet"], env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 60
    while not list(scratch.glob("*/runs3/*")):  # mid-build: order 3 is being counted
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.01)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130 and b"interrupted" in err and b"Traceback" not in err, err
    assert list(scratch.iterdir()) == []
    assert not out.exists() and not (out.parent.exists() and list(out.parent.iterdir()))


@pytest.mark.parametrize("value, message", [("4X", "is not a size"), ("0", "leaves no memory"),
                                             ("200%", "more than the whole physical memory"),
                                             ("100K", "the minimum is 256K")])
def test_bad_memory_is_one_sentence(tmp_path, capsys, value, message):
    code = main(["ngram", "train", "-o", "3", "--data", str(MULTI30K), "--out", str(tmp_path / "m.arpa"),
                 "--memory", value])
    err = capsys.readouterr().err.strip()
    assert code == 2 and message in err and err.count("\n") == 0 and err.endswith(".")
    assert parse_memory("1.5M") == 3 << 19 and parse_memory("4G") == 4 << 30 and parse_memory("256K") == 1 << 18


def test_options_that_need_memory_and_unsupported_encodings(tmp_path, capsys):
    code = main(["ngram", "train", "--data", str(MULTI30K), "--out", str(tmp_path / "m.arpa"), "--workers", "2"])
    assert code == 2 and "--workers works with --memory" in capsys.readouterr().err
    data = tmp_path / "utf16.txt"
    data.write_text("two words\n", encoding="utf-16")
    with pytest.raises(LmlabError, match="newline is the byte 0x0a"):
        train_bounded(data, order=2, memory="1M", temp_dir=tmp_path, progress=False, encoding="utf-16")
    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n", encoding="utf-8")
    with pytest.raises(LmlabError, match="is empty"):
        train_bounded(empty, order=2, memory="1M", temp_dir=tmp_path / "s", progress=False)
    assert not os.listdir(tmp_path / "s")
    with pytest.raises(LmlabError, match="cannot make a scratch directory in --temp-dir"):
        train_bounded(MULTI30K, order=2, memory="1M", temp_dir=data, progress=False)  # a file, not a directory


def _files_at_most_100k():
    """In the child: no file may grow past 100 KB (a disk that fills up mid-build: the write fails with EFBIG
    instead of the signal)."""
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (100_000, 100_000))


def test_a_full_disk_is_one_sentence_and_leaves_the_old_output(tmp_path):
    """The block files fit under the limit, a merged run does not: the build stops with one sentence, the scratch
    directory is emptied and the model file written before is untouched."""
    scratch, out = tmp_path / "scratch", tmp_path / "m.arpa"
    out.write_text("the previous model\n", encoding="utf-8")
    proc = subprocess.run([*LMLAB, "ngram", "train", "-o", "3", "--data", str(WIKI), "--out", str(out),
                           "--skip-symbols", "--memory", "2M", "--temp-dir", str(scratch), "--quiet"],
                          env={**ENV, "PYTHONDONTWRITEBYTECODE": "1"}, capture_output=True, text=True, timeout=120,
                          preexec_fn=_files_at_most_100k)
    err = proc.stderr.strip()
    assert proc.returncode == 2 and "is full" in err and err.count("\n") == 0 and "Traceback" not in err, err
    assert list(scratch.iterdir()) == [] and out.read_text(encoding="utf-8") == "the previous model\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.arpa", "scratch"]  # no partial output beside it
