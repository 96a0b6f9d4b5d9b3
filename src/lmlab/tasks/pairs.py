"""Sequence-to-sequence data: parallel (or monolingual) text -> a prepared directory of pairs -> batches for the one
Trainer (`PairBatches`). Translating with a trained model is lmlab.tasks.translate.

Prepared directory (`prepare_pairs`, `prepare_denoise`; `lmlab seq2seq prepare`):
  tokenizer.json              one byte-level BPE vocabulary shared by source and target (HF `tokenizers`), with
                              <|endoftext|> (end of sequence, and the decoder's start token), <pad> and <mask>
  {train,val}.{src,tgt}.bin   the token ids of every line, concatenated (uint16 when the vocabulary fits)
  {train,val}.idx.npy         int64 [pairs + 1, 2]: where each pair's source and target start in those files
  meta.json                   task ("pairs" or "denoise"), vocab_size, the special ids, per split the number
                              of pairs and tokens, how many lines were skipped, and the noise of a denoise task

Lines are read as UTF-8, one sentence (or document) per line, and stripped of surrounding whitespace.
- Source and target files must have the same number of lines (the error says both counts).
- Empty lines: a pair where either side is empty is skipped when preparing (the count is in meta.json and is
  printed); when translating, an empty input line gives an empty output line, so line numbers stay aligned.
- Length: pairs are stored whole; batches cut a source or target longer than the model's block_size to its
  first block_size - 1 tokens plus the end token (a note on stderr says how many). `translate` cuts long input
  lines the same way and says so on stderr (the output is the translation of the cut line).
A denoise directory holds monolingual lines (source = target); its batches corrupt each source on the fly,
BART-style (Lewis et al. 2020): local shuffling, token deletion, then spans of Poisson-distributed length
replaced by one <mask> each (text infilling), all on BPE tokens, seeded by (seed, split, batch index).
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from ..data import read_meta
from ..errors import LmlabError
from ..files import atomic_write_json, read_text, staged_dir
from .batching import LengthBatching, SplitRows, ids_dtype, pad_rows, read_rows, write_rows

PAD, MASK = "<pad>", "<mask>"
TASKS = ("pairs", "denoise")
NOISE_DEFAULTS = {"mask_ratio": 0.3, "poisson_lambda": 3.0, "delete": 0.1, "shuffle_window": 3.0}
FORMAT_VERSION = 1
PREPARE = "lmlab seq2seq prepare"


# ---------------------------------------------------------------------------------------------
# Reading text
# ---------------------------------------------------------------------------------------------


def read_lines(path) -> list[str]:
    """The lines of a UTF-8 text file, each stripped of surrounding whitespace (empty lines kept as "")."""
    text = read_text(path, empty_ok=True).removeprefix("\ufeff")
    return [line.strip() for line in text.splitlines()]


def read_parallel(src, tgt) -> tuple[list[str], list[str]]:
    """Aligned source and target lines; different line counts are a user error that names both."""
    a, b = read_lines(src), read_lines(tgt)
    if len(a) != len(b):
        raise LmlabError(f"{src} has {len(a):,} lines but {tgt} has {len(b):,}; parallel files must have one "
                         "line per sentence pair, in the same order.")
    if not a:
        raise LmlabError(f"{src} and {tgt} are empty; give them sentence pairs, one per line.")
    return a, b


# ---------------------------------------------------------------------------------------------
# The shared vocabulary
# ---------------------------------------------------------------------------------------------


def train_shared_bpe(texts, vocab_size: int):
    """A byte-level BPE tokenizer learned from source and target text together, plus <pad> and <mask>."""
    from ..tokenizer import BPETokenizer, train_tokenizer

    if vocab_size is None:
        raise LmlabError("give --vocab-size for the shared BPE vocabulary (e.g. 8000 for Multi30k).")
    tok = train_tokenizer("bpe", texts, vocab_size - 2)  # the two specials added below complete vocab_size
    tok.hf.add_special_tokens([PAD, MASK])
    return BPETokenizer(tok.hf)


def special_ids(tokenizer, source="the tokenizer") -> dict[str, int]:
    """eos_id, pad_id, mask_id of a seq2seq tokenizer (a BPE one with <|endoftext|>, <pad> and <mask>)."""
    hf = getattr(tokenizer, "hf", None)
    ids = {"eos_id": getattr(tokenizer, "eot_id", None),
           "pad_id": hf.token_to_id(PAD) if hf is not None else None,
           "mask_id": hf.token_to_id(MASK) if hf is not None else None}
    if any(v is None for v in ids.values()):
        raise LmlabError(f"{source} is not a seq2seq vocabulary (it needs <|endoftext|>, <pad> and <mask>); use "
                         "one written by `lmlab seq2seq prepare`, or let prepare build one with --vocab-size.")
    return ids


def resolve_tokenizer(tokenizer):
    """A Tokenizer from a Tokenizer, a tokenizer.json, a prepared directory or a run directory."""
    from ..tokenizer import Tokenizer, load_tokenizer

    if tokenizer is None or isinstance(tokenizer, Tokenizer):
        return tokenizer
    path = Path(tokenizer)
    if not path.exists():
        raise LmlabError(f"--tokenizer {path} does not exist; give a tokenizer.json or a directory holding one.")
    return load_tokenizer(path)


# ---------------------------------------------------------------------------------------------
# prepare
# ---------------------------------------------------------------------------------------------


def _write_split(directory: Path, split: str, src: list[list[int]], tgt: list[list[int]], dtype: str) -> dict:
    tokens = write_rows(directory, split, {"src": src, "tgt": tgt}, dtype)
    return {"pairs": len(src), "src_tokens": tokens["src"], "tgt_tokens": tokens["tgt"]}


def _keep_nonempty(src: list[str], tgt: list[str]) -> tuple[list[str], list[str], int]:
    keep = [i for i, (a, b) in enumerate(zip(src, tgt)) if a and b]
    return [src[i] for i in keep], [tgt[i] for i in keep], len(src) - len(keep)


def _write_prepared(out_dir, meta: dict, tokenizer, splits: dict) -> dict:
    """Write every file into a temporary directory, then move them into out_dir (meta.json last)."""
    with staged_dir(out_dir) as tmp:
        dtype = ids_dtype(tokenizer.vocab_size)
        for split, (src_ids, tgt_ids) in splits.items():
            meta[split].update(_write_split(tmp, split, src_ids, tgt_ids, dtype))
        meta["dtype"] = dtype
        tokenizer.save(tmp / "tokenizer.json")
        atomic_write_json(tmp / "meta.json", meta)
    return meta


def _base_meta(task: str, tokenizer) -> dict:
    return {"format_version": FORMAT_VERSION, "task": task, "tokenizer": tokenizer.kind,
            "vocab_size": tokenizer.vocab_size, "eot_id": tokenizer.eot_id, **special_ids(tokenizer)}


def _holdout(n: int, val_fraction: float, what: str) -> int:
    """How many of the last lines become the val split."""
    if not 0 < val_fraction < 1:
        raise LmlabError(f"--val-fraction must be in (0, 1) when no validation files are given, got {val_fraction}.")
    held = max(1, int(round(n * val_fraction)))
    if held >= n:
        raise LmlabError(f"{what} has {n} usable line(s): too few to hold out a validation split; give more "
                         "lines or validation files.")
    return held


def prepare_pairs(src, tgt, out_dir, val_src=None, val_tgt=None, tokenizer=None, vocab_size=None,
                  val_fraction: float = 0.05, progress: bool = True) -> dict:
    """Tokenize parallel files into out_dir (see the module docstring). Without val files, the last
    val_fraction of the (non-empty) pairs is the val split. `tokenizer`: an existing seq2seq tokenizer
    (Tokenizer, tokenizer.json, prepared or run directory), else a shared BPE of vocab_size is learned from
    the training source and target text. Returns meta.json's content."""
    if (val_src is None) != (val_tgt is None):
        raise LmlabError("give both --val-src and --val-tgt, or neither (then a share of the training pairs is held out).")
    a, b = read_parallel(src, tgt)
    a, b, skipped = _keep_nonempty(a, b)
    if not a:
        raise LmlabError(f"every pair of {src} / {tgt} has an empty side; give sentence pairs.")
    if val_src is not None:
        va, vb = read_parallel(val_src, val_tgt)
        va, vb, val_skipped = _keep_nonempty(va, vb)
        if not va:
            raise LmlabError(f"every pair of {val_src} / {val_tgt} has an empty side; give sentence pairs.")
    else:
        held = _holdout(len(a), val_fraction, str(src))
        a, va, b, vb, val_skipped = a[:-held], a[-held:], b[:-held], b[-held:], 0
    tok = resolve_tokenizer(tokenizer)
    if tok is None:
        tok = train_shared_bpe(a + b, vocab_size)
    elif vocab_size is not None:
        raise LmlabError("--vocab-size builds a new vocabulary; leave it out when reusing one with --tokenizer.")
    meta = _base_meta("pairs", tok)
    meta.update(source=str(src), target=str(tgt), val_source=str(val_src) if val_src else f"last {len(va)} pairs",
                train={"skipped_empty": skipped}, val={"skipped_empty": val_skipped})
    splits = {"train": (tok.encode_lines(a), tok.encode_lines(b)), "val": (tok.encode_lines(va), tok.encode_lines(vb))}
    return _write_prepared(out_dir, meta, tok, splits)


def prepare_denoise(text, out_dir, tokenizer=None, vocab_size=None, val_fraction: float = 0.05,
                    noise: dict | None = None, val_text=None) -> dict:
    """Tokenize monolingual lines for denoising pretraining (source = target; the noise is drawn per batch).
    Empty lines are skipped. `noise` overrides NOISE_DEFAULTS (mask_ratio, poisson_lambda, delete,
    shuffle_window). For fine-tuning with --init afterwards, give the parallel data's tokenizer."""
    noise = {**NOISE_DEFAULTS, **(noise or {})}
    check_noise(noise)
    lines = [line for line in read_lines(text) if line]
    if not lines:
        raise LmlabError(f"{text} has no non-empty line; give it text, one sentence per line.")
    if val_text is not None:
        val = [line for line in read_lines(val_text) if line]
        if not val:
            raise LmlabError(f"{val_text} has no non-empty line.")
    else:
        held = _holdout(len(lines), val_fraction, str(text))
        lines, val = lines[:-held], lines[-held:]
    tok = resolve_tokenizer(tokenizer)
    if tok is None:
        tok = train_shared_bpe(lines, vocab_size)
    elif vocab_size is not None:
        raise LmlabError("--vocab-size builds a new vocabulary; leave it out when reusing one with --tokenizer.")
    meta = _base_meta("denoise", tok)
    meta.update(source=str(text), noise=noise, train={"skipped_empty": 0}, val={"skipped_empty": 0})
    train_ids, val_ids = tok.encode_lines(lines), tok.encode_lines(val)
    return _write_prepared(out_dir, meta, tok, {"train": (train_ids, train_ids), "val": (val_ids, val_ids)})


def check_noise(noise: dict) -> None:
    unknown = set(noise) - set(NOISE_DEFAULTS)
    if unknown:
        raise LmlabError(f"unknown noise setting(s) {', '.join(sorted(unknown))}; use {', '.join(NOISE_DEFAULTS)}.")
    if not 0 <= noise["mask_ratio"] < 1 or not 0 <= noise["delete"] < 1:
        raise LmlabError("--mask-ratio and --delete must be in [0, 1).")
    if noise["poisson_lambda"] < 0 or noise["shuffle_window"] < 0:
        raise LmlabError("--poisson-lambda and --shuffle-window must be >= 0.")


# ---------------------------------------------------------------------------------------------
# Noise (denoising autoencoder)
# ---------------------------------------------------------------------------------------------


def corrupt(ids, rng: np.random.Generator, mask_id: int, mask_ratio: float = 0.3, poisson_lambda: float = 3.0,
            delete: float = 0.1, shuffle_window: float = 3.0) -> list[int]:
    """A noisy copy of ids: local shuffle (each token moves by less than shuffle_window places; Lample et al.
    2018), deletion of each token with probability `delete`, then text infilling (BART): spans with
    Poisson(poisson_lambda) lengths, covering about mask_ratio of the tokens, each become a single <mask>
    (a span of length 0 inserts one). Never empty."""
    ids = [int(i) for i in ids]
    if shuffle_window > 0 and len(ids) > 1:
        keys = np.arange(len(ids)) + rng.uniform(0, shuffle_window, len(ids))
        ids = [ids[i] for i in np.argsort(keys, kind="stable")]
    if delete > 0 and ids:
        keep = rng.random(len(ids)) >= delete
        ids = [t for t, k in zip(ids, keep) if k]
    budget = int(round(len(ids) * mask_ratio))
    while budget > 0 and ids:
        span = min(int(rng.poisson(poisson_lambda)), budget, len(ids))
        start = int(rng.integers(0, len(ids) - span + 1))
        ids[start:start + span] = [mask_id]
        budget -= max(span, 1)
    return ids or [mask_id]


# ---------------------------------------------------------------------------------------------
# Batches for the Trainer
# ---------------------------------------------------------------------------------------------


def read_prepared_meta(data_dir) -> dict:
    """meta.json of a directory `lmlab seq2seq prepare` wrote."""
    return read_meta(data_dir, TASKS, PREPARE, "sentence pairs")


def load_pairs(data_dir, split: str) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """(source ids, target ids) of every pair of a prepared split."""
    meta = read_prepared_meta(data_dir)
    src, tgt = read_rows(Path(data_dir), split, ("src", "tgt"), meta["dtype"], PREPARE)
    return src, tgt


class PairBatches(SplitRows):
    """Padded batches (src [B, S], tgt_in [B, T], tgt_out [B, T]) of a prepared seq2seq directory.

    src = the source ids + <eos>, right-padded with <pad>; tgt_in = <eos> + target ids (the decoder's input,
    shifted right), tgt_out = target ids + <eos>, padded with -100 (ignored by the loss). Sides longer than
    block_size keep their first block_size - 1 tokens.
    train: each epoch is a permutation drawn from (seed, epoch); windows of 100 batches are sorted by length
    and cut into batches (less padding), whose order is then shuffled. Batch `index` is a pure function of the
    index, so a resumed run sees the same batches. val: the pairs sorted by length, batch_size at a time
    (batch i mod the number of batches). A denoise directory corrupts each source (see `corrupt`).
    """

    BUCKET = 100  # batches per length-sorted window

    def __init__(self, data_dir, batch_size: int, seed: int, block_size: int, eos_id: int, pad_id: int,
                 mask_id: int = -1, warn: bool = True):
        self.data_dir = Path(data_dir)
        self.meta = read_prepared_meta(data_dir)
        self.batch_size, self.seed, self.block_size = batch_size, seed, block_size
        self.eos_id, self.pad_id, self.mask_id = eos_id, pad_id, mask_id
        self.noise = self.meta.get("noise") if self.meta["task"] == "denoise" else None
        self.warn = warn
        super().__init__()

    def load(self, name: str):
        """(source ids, target ids) of a split, and its batching."""
        src, tgt = load_pairs(self.data_dir, name)
        if not src:
            raise LmlabError(f"the {name} split of {self.data_dir} has no sentence pairs; prepare it with more lines.")
        limit = self.block_size - 1
        long = sum(1 for s, t in zip(src, tgt) if len(s) > limit or len(t) > limit)
        if long and self.warn:
            print(f"note: {long:,} {name} pair(s) of {self.data_dir} have a side longer than block_size - 1 = "
                  f"{limit} tokens; batches keep their first {limit} tokens.", file=sys.stderr)
        keys = np.array([len(t) * 1000 + len(s) for s, t in zip(src, tgt)])
        return (src, tgt), LengthBatching(keys, self.batch_size, self.seed, shuffle=name == "train",
                                          window=self.BUCKET)

    def batch(self, name: str, index: int):
        src, tgt = self.split(name)
        rows = self.rows(name, index)
        limit = self.block_size - 1
        sources = [src[i][:limit] for i in rows]
        if self.noise is not None:
            rng = np.random.default_rng([self.seed, ("train", "val").index(name), int(index), 7])
            sources = [corrupt(s, rng, self.mask_id, **self.noise)[:limit] for s in sources]
        targets = [tgt[i][:limit] for i in rows]
        eos = [self.eos_id]
        x = pad_rows([np.concatenate([s, eos]) for s in sources], self.pad_id)
        y_in = pad_rows([np.concatenate([eos, t]) for t in targets], self.pad_id)
        y_out = pad_rows([np.concatenate([t, eos]) for t in targets], -100)
        return x, y_in, y_out


def training_batches(cfg) -> PairBatches:
    """The Trainer's data for a seq2seq config (Seq2Seq.training_data): fills the model's special ids from
    meta.json, and refuses a model whose ids contradict the data."""
    meta = read_prepared_meta(cfg.data.dir)
    m = cfg.model
    for name in ("eos_id", "pad_id", "mask_id"):
        have = getattr(m, name)
        if have == -1:
            setattr(m, name, meta[name])
        elif have != meta[name]:
            raise LmlabError(f"model.{name} is {have} but {cfg.data.dir} has {name} {meta[name]}; the data must be "
                             "prepared with the model's tokenizer (--tokenizer RUN).")
    return PairBatches(cfg.data.dir, cfg.train.batch_size, cfg.train.seed, m.block_size, m.eos_id, m.pad_id,
                       m.mask_id)


def prepare_command(out, src=None, tgt=None, val_src=None, val_tgt=None, text=None, val_text=None, tokenizer=None,
                    vocab_size=None, val_fraction: float = 0.05, noise: dict | None = None) -> None:
    """`lmlab seq2seq prepare`: pairs (--src/--tgt) or monolingual lines for denoising (--text), and a summary."""
    if text is not None:
        if src or tgt or val_src or val_tgt:
            raise LmlabError("give either --text (monolingual, for denoising) or --src and --tgt (pairs), not both.")
        meta = prepare_denoise(text, out, tokenizer=tokenizer, vocab_size=vocab_size, val_fraction=val_fraction,
                               noise=noise, val_text=val_text)
        what = "lines"
    else:
        if not src or not tgt:
            raise LmlabError("lmlab seq2seq prepare needs --src and --tgt (parallel files), or --text.")
        meta = prepare_pairs(src, tgt, out, val_src=val_src, val_tgt=val_tgt, tokenizer=tokenizer,
                             vocab_size=vocab_size, val_fraction=val_fraction)
        what = "pairs"
    tr, va = meta["train"], meta["val"]
    skipped = tr["skipped_empty"] + va["skipped_empty"]
    note = f"; skipped {skipped:,} pair(s) with an empty side" if skipped else ""
    print(f"wrote {out}: {meta['task']}, shared vocab {meta['vocab_size']:,}, train {tr['pairs']:,} {what} "
          f"({tr['src_tokens']:,} + {tr['tgt_tokens']:,} tokens), val {va['pairs']:,} {what}{note}")
