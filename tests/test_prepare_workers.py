"""`prepare(..., workers=N)` / `lmlab prepare --workers N`: byte-identical output to one worker, bounded work in
flight, the same errors. Ranges are made tiny (2 KB) so that a small corpus is cut in many places: inside
documents, around blank and indented lines, at the train/val cut and at file ends."""
from multiprocessing.pool import ThreadPool

import pytest

from lmlab import prepare_workers as pw
from lmlab.data import prepare
from lmlab.errors import LmlabError

from conftest import SHAKESPEARE, run_main

TEXT = SHAKESPEARE.read_text(encoding="utf-8")


def wikitext_like(text: str) -> str:
    """WikiText's layout: headings " = Title = ", and every line starting with a space (" The ...")."""
    lines = [" = Act %d = " % i if i % 40 == 0 else " " + line for i, line in enumerate(text.split("\n"))]
    return "\n".join(lines) + "\n"
FILES = ("train.bin", "val.bin", "tokenizer.json", "meta.json")


def write(path, text):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8", newline="")
    return path


@pytest.fixture
def corpus(tmp_path, monkeypatch):
    monkeypatch.setattr(pw, "RANGE_BYTES", 2048)
    monkeypatch.setattr(pw, "FALLBACK_AFTER", 300)  # cuts at spaces between letters everywhere, not only in f.txt
    src = tmp_path / "src"
    write(src / "a.txt", TEXT[:12_000].replace("\n\n", "\n\n\n  "))
    write(src / "b" / "de.txt", "Zwei Männer stehen am Herd und bereiten Essen zu.\n Übergrößen: ÄÖÜ ß\n" * 150)
    write(src / "c.txt", "")  # an empty document
    write(src / "d.txt", TEXT[40_000:47_000] + "\r\nno newline at the end")
    write(src / "e.txt", "\u3000indented by an ideographic space\n\u00a0nbsp\nlast\n" * 60)
    # WikiText: every line starts with a space, so only the fallback cut (a space between letters) applies;
    # then one long line, and separators that str.isspace() calls whitespace.
    wiki = wikitext_like(TEXT[60_000:75_000])
    write(src / "f.txt", wiki + "x" + " ".join(["Café naïve déjà-vu 12 3.5"] * 400) + "\n\x1cy\n\x85z\n")
    return src


def outputs(out):
    return {name: (out / name).read_bytes() for name in FILES}


@pytest.mark.parametrize("tokenizer, vocab_size", [("char", None), ("byte", None), ("word", 300), ("bpe", 400)])
def test_workers_give_the_one_worker_output(corpus, tmp_path, tokenizer, vocab_size):
    results = []
    for workers in (1, 3):
        out = tmp_path / f"out{workers}"
        meta = prepare(corpus, out, tokenizer=tokenizer, vocab_size=vocab_size, val_fraction=0.3, workers=workers,
                       chunk_chars=500, progress=False)
        results.append(outputs(out))
    assert results[0] == results[1]
    assert len(pw.plan(sorted(p for p in corpus.rglob("*") if p.is_file()), 10_000)) > 15  # really cut up
    assert meta["val"]["tokens"] > 0 and meta["train"]["tokens"] > 0


@pytest.mark.parametrize("val_fraction", [0.0, 0.5, 0.77])
def test_the_train_val_cut_matches_at_any_point(corpus, tmp_path, val_fraction):
    outs = [prepare(corpus, tmp_path / f"o{w}", tokenizer="char", val_fraction=val_fraction, workers=w,
                    progress=False) for w in (1, 2)]
    assert outs[0] == outs[1]
    assert outputs(tmp_path / "o1") == outputs(tmp_path / "o2")


def test_pieces_stay_small_where_no_line_can_be_cut():
    """WikiText has no newline followed by a non-space: pieces are cut at spaces between letters instead, so
    `tokenizers` never gets one huge string (it needs ~200 bytes per character while it encodes one)."""
    wiki = wikitext_like(TEXT[:400_000])
    assert not pw.NEWLINE_CUT.search(wiki)
    pieces = list(pw._pieces(wiki, 4096))
    assert "".join(pieces) == wiki and len(pieces) > 50
    assert max(map(len, pieces)) < 4096 + 200
    assert all(a[-1].isalpha() and b[0] == " " and b[1].isalpha() for a, b in zip(pieces, pieces[1:]))


def test_bad_utf8_is_reported_as_with_one_worker(tmp_path, monkeypatch):
    monkeypatch.setattr(pw, "RANGE_BYTES", 512)
    src = tmp_path / "src"
    write(src / "a.txt", TEXT[:5000])
    (src / "b.txt").write_bytes(TEXT[:3000].encode() + b"\nbad \xff byte\n")
    messages = []
    for workers in (1, 2):
        with pytest.raises(LmlabError) as e:
            prepare(src, tmp_path / f"out{workers}", tokenizer="byte", workers=workers, progress=False)
        messages.append(str(e.value))
        assert not (tmp_path / f"out{workers}").exists()
    assert messages[0] == messages[1] and "byte offset 3005, line 113" in messages[0]


def test_work_in_flight_is_bounded():
    """The main process never holds more than `window` submitted, unconsumed ranges: memory does not grow with
    the size of the text."""
    produced = 0

    def tasks():
        nonlocal produced
        for i in range(200):
            produced += 1
            yield i

    def square(x):
        return x * x

    worst = 0
    with ThreadPool(3) as pool:
        for i, result in enumerate(pw._ordered(pool, square, tasks(), window=4)):
            assert result == i * i  # in order
            worst = max(worst, produced - (i + 1))  # taken from the tasks, not yet handed out
    assert produced == 200 and worst == 4


def test_cli_workers_flag(tmp_path, capsys):
    src = write(tmp_path / "in.txt", TEXT[:20_000])
    code, out, _ = run_main(["prepare", src, "--out", tmp_path / "w2", "--workers", "2", "--quiet"], capsys)
    assert code == 0 and "wrote" in out
    prepare(src, tmp_path / "w1", progress=False)
    assert outputs(tmp_path / "w1") == outputs(tmp_path / "w2")
    code, _, err = run_main(["prepare", src, "--out", tmp_path / "w0", "--workers", "0"], capsys)
    assert code == 2 and "workers must be a positive integer" in err
