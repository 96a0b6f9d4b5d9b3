"""Data preparation (streaming, exact, atomic) and TokenBlocks batching, on slices of Tiny Shakespeare."""
from pathlib import Path

import numpy as np
import pytest
import torch

from lmlab.data import TokenBlocks, load_split, prepare, read_meta
from lmlab.errors import LmlabError
from lmlab.tokenizer import load_tokenizer

SHAKESPEARE = Path(__file__).resolve().parents[1] / "data" / "tinyshakespeare.txt"
TEXT = SHAKESPEARE.read_text(encoding="utf-8")


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8", newline="")
    return path


def decoded(data_dir) -> dict[str, str]:
    tok = load_tokenizer(data_dir)
    return {s: tok.decode(load_split(data_dir, s)) for s in ("train", "val")}


@pytest.fixture(scope="module")
def char_dir(tmp_path_factory) -> Path:
    """Tiny Shakespeare's first 100 KB plus a few non-ASCII characters, prepared at character level."""
    tmp = tmp_path_factory.mktemp("char")
    src = write(tmp / "input.txt", TEXT[:100_000] + "Naïve café — 🙂\n")
    prepare(src, tmp / "out", progress=False)
    return tmp


def test_prepare_char_counts_and_exact_round_trip(char_dir):
    src, out = char_dir / "input.txt", char_dir / "out"
    text = src.read_text(encoding="utf-8")
    meta = read_meta(out)
    assert meta["tokenizer"] == "char" and meta["dtype"] == "uint16" and meta["eot_id"] is None
    assert meta["vocab_size"] == len(set(text))
    assert meta["source"] == str(src.resolve()) and meta["val_fraction"] == 0.1
    train, val = meta["train"], meta["val"]
    assert train["bytes"] + val["bytes"] == src.stat().st_size
    assert train["chars"] + val["chars"] == len(text)
    assert (train["tokens"], val["tokens"]) == (train["chars"], val["chars"])
    splits = decoded(out)
    assert splits["train"] + splits["val"] == text
    assert splits["train"].endswith("\n")  # cut at a line boundary near 90%
    assert abs(train["bytes"] / src.stat().st_size - 0.9) < 0.01
    assert load_split(out, "train").dtype == np.uint16
    assert sorted(p.name for p in out.iterdir()) == ["meta.json", "tokenizer.json", "train.bin", "val.bin"]


@pytest.mark.parametrize("tokenizer, vocab_size", [("char", None), ("bpe", 300)])
def test_output_does_not_depend_on_chunk_size(tmp_path, tokenizer, vocab_size):
    # Runs of blank lines and indented lines around the cuts are where BPE could see words differently.
    src = write(tmp_path / "in.txt", TEXT[:30_000].replace("\n\n", "\n\n\n  ") + "\r\nend\r\n\r\nx")
    bins = []
    for chunk_chars in (1 << 20, 64, 1):
        out = tmp_path / f"out{chunk_chars}"
        prepare(src, out, tokenizer=tokenizer, vocab_size=vocab_size, chunk_chars=chunk_chars, progress=False)
        bins.append([(out / f).read_bytes() for f in ("train.bin", "val.bin", "tokenizer.json", "meta.json")])
    assert bins[0] == bins[1] == bins[2]
    assert "".join(decoded(out).values()) == src.read_bytes().decode("utf-8")  # "\r\n" kept as is


def test_prepare_bpe_directory_separates_documents_with_eot(tmp_path, capsys):
    write(tmp_path / "src" / "b" / "two.txt", TEXT[60_000:100_000])
    write(tmp_path / "src" / "a.txt", TEXT[:60_000])
    write(tmp_path / "src" / ".hidden.txt", "never read")
    write(tmp_path / "src" / ".git" / "config", "never read")
    meta = prepare(tmp_path / "src", tmp_path / "out", tokenizer="bpe", vocab_size=500)
    err = capsys.readouterr().err
    assert "bpe vocab" in err and "encode" in err  # a progress bar per pass, on stderr
    assert meta["tokenizer"] == "bpe" and meta["vocab_size"] == 500 and meta["files"] == 2
    assert meta["dtype"] == "uint16"
    tok = load_tokenizer(tmp_path / "out")
    ids = np.concatenate([load_split(tmp_path / "out", s) for s in ("train", "val")])
    assert (ids == meta["eot_id"]).sum() == 1  # one separator between the two documents
    assert tok.decode(ids) == TEXT[:60_000] + "<|endoftext|>" + TEXT[60_000:100_000]
    assert meta["train"]["chars"] + meta["val"]["chars"] == 100_000
    assert meta["train"]["tokens"] + meta["val"]["tokens"] < 0.5 * 100_000  # BPE compresses


def test_val_fraction_zero_gives_empty_val(tmp_path):
    src = write(tmp_path / "in.txt", TEXT[:5000])
    meta = prepare(src, tmp_path / "out", tokenizer="byte", val_fraction=0, progress=False)
    assert meta["val"] == {"tokens": 0, "chars": 0, "bytes": 0} and meta["vocab_size"] == 256
    assert len(load_split(tmp_path / "out", "val")) == 0
    blocks = TokenBlocks(tmp_path / "out", block_size=8, batch_size=2, seed=0)
    assert blocks.batch("train", 0)[0].shape == (2, 8)
    with pytest.raises(LmlabError, match="val split .* has 0 tokens.*val_fraction > 0"):
        blocks.batch("val", 0)


def test_token_blocks(char_dir):
    out = char_dir / "out"
    blocks = TokenBlocks(out, block_size=32, batch_size=4, seed=1)
    assert blocks.vocab_size == read_meta(out)["vocab_size"]
    x, y = blocks.batch("train", 0)
    assert x.shape == y.shape == (4, 32) and x.dtype == y.dtype == torch.int64
    assert torch.equal(x[:, 1:], y[:, :-1])  # y is x shifted by one
    train = torch.from_numpy(load_split(out, "train").astype(np.int64))
    for row_x, row_y in zip(x, y):  # each row is a real window of the data
        starts = (train[: len(train) - 32] == row_x[0]).nonzero().flatten()
        assert any(torch.equal(train[s : s + 33], torch.cat([row_x, row_y[-1:]])) for s in starts)
    # A pure function of (seed, split, index): a new object gives the same batches.
    again = TokenBlocks(out, block_size=32, batch_size=4, seed=1)
    assert torch.equal(again.batch("train", 0)[0], x)
    assert torch.equal(again.batch("val", 3)[0], blocks.batch("val", 3)[0])
    assert not torch.equal(blocks.batch("train", 1)[0], x)
    assert not torch.equal(TokenBlocks(out, 32, 4, seed=2).batch("train", 0)[0], x)
    assert not torch.equal(blocks.batch("val", 0)[0], blocks.batch("val", 1)[0])


def test_token_blocks_split_too_short(tmp_path):
    src = write(tmp_path / "in.txt", "a short line\nand another one\nthe end\n")
    prepare(src, tmp_path / "out", val_fraction=0.5, progress=False)
    with pytest.raises(LmlabError, match=r"train split .* has 29 tokens, fewer than block_size \+ 1 = 65; use a smaller"):
        TokenBlocks(tmp_path / "out", block_size=64, batch_size=2, seed=0).batch("train", 0)


def test_failing_prepare_leaves_nothing_behind(tmp_path):
    write(tmp_path / "src" / "a.txt", TEXT[:20_000])
    (tmp_path / "src" / "b.txt").write_bytes(b"good line\nbad \xff byte\n")
    out = tmp_path / "out"
    # byte tokenizer: no first pass, so a.txt is already written to train.bin when b.txt fails.
    with pytest.raises(LmlabError, match=r"b\.txt is not UTF-8 text .*byte offset 14, line 2"):
        prepare(tmp_path / "src", out, tokenizer="byte", progress=False)
    assert not out.exists()  # prepare created it, so it removed it
    # Earlier output survives a failed run untouched.
    prepare(tmp_path / "src" / "a.txt", out, progress=False)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    with pytest.raises(LmlabError, match="not UTF-8"):
        prepare(tmp_path / "src", out, progress=False)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


def test_bad_inputs(tmp_path):
    src = write(tmp_path / "in.txt", TEXT[:2000])
    out = tmp_path / "out"
    cases = [
        (dict(source=tmp_path / "nope.txt"), r"nope\.txt does not exist"),
        (dict(source=write(tmp_path / "empty.txt", "")), r"empty\.txt has no text"),
        (dict(source=tmp_path / "emptydir"), r"emptydir has no text"),
        (dict(val_fraction=1.0), r"val_fraction must be a number in \[0, 1\)"),
        (dict(val_fraction=-0.1), r"val_fraction must be"),
        (dict(tokenizer="words"), r"Unknown tokenizer 'words'"),
        (dict(tokenizer="bpe"), r"bpe tokenizer needs vocab_size >= 257.*got no vocab_size"),
        (dict(tokenizer="bpe", vocab_size=100), r"got vocab_size 100"),
        (dict(tokenizer="byte", vocab_size=100), r"does not apply to the byte tokenizer"),
        (dict(source=write(tmp_path / "one.txt", "a single line without a break")), r"no line break after 90%"),
    ]
    (tmp_path / "emptydir").mkdir()
    for kwargs, message in cases:
        with pytest.raises(LmlabError, match=message):
            prepare(**{"source": src, "out_dir": out, "progress": False, **kwargs})
    assert not (out / "train.bin").exists()
    with pytest.raises(LmlabError, match="has no meta.json; run `lmlab prepare`"):
        TokenBlocks(tmp_path, block_size=8, batch_size=2, seed=0)
    with pytest.raises(LmlabError, match="Unknown split 'test'"):
        load_split(tmp_path, "test")


def test_load_split_detects_mismatch(tmp_path):
    prepare(write(tmp_path / "in.txt", TEXT[:3000]), tmp_path, progress=False)
    with open(tmp_path / "train.bin", "ab") as f:
        f.write(b"\0\0")
    with pytest.raises(LmlabError, match="does not match meta.json"):
        load_split(tmp_path, "train")
