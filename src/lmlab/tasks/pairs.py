"""Sequence-to-sequence workflow: parallel (or monolingual) text -> prepared pairs -> batches for the one
Trainer; translation with the one generation engine; BLEU / chrF / ROUGE of the output.

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

import math
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np

from .errors import LmlabError
from .files import atomic_write_json, read_json

PAD, MASK = "<pad>", "<mask>"
TASKS = ("pairs", "denoise")
NOISE_DEFAULTS = {"mask_ratio": 0.3, "poisson_lambda": 3.0, "delete": 0.1, "shuffle_window": 3.0}
FORMAT_VERSION = 1


# ---------------------------------------------------------------------------------------------
# Reading text
# ---------------------------------------------------------------------------------------------


def read_lines(path) -> list[str]:
    """The lines of a UTF-8 text file, each stripped of surrounding whitespace (empty lines kept as "")."""
    path = Path(path)
    if not path.is_file():
        raise LmlabError(f"{path} does not exist; give a text file with one sentence per line.")
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw[:e.start].count(b"\n") + 1
        raise LmlabError(f"{path} is not UTF-8 text (bad byte 0x{raw[e.start]:02x} on line {line}); convert it "
                         "to UTF-8 (e.g. `iconv -t UTF-8`).") from None
    text = text.removeprefix("\ufeff")
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
    from .tokenizer import BPETokenizer, train_tokenizer

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
    from .tokenizer import Tokenizer, load_tokenizer

    if tokenizer is None or isinstance(tokenizer, Tokenizer):
        return tokenizer
    path = Path(tokenizer)
    if not path.exists():
        raise LmlabError(f"--tokenizer {path} does not exist; give a tokenizer.json or a directory holding one.")
    return load_tokenizer(path)


# ---------------------------------------------------------------------------------------------
# prepare
# ---------------------------------------------------------------------------------------------


def _dtype(vocab_size: int) -> str:
    return "uint16" if vocab_size <= 1 << 16 else "uint32"


def _write_split(directory: Path, split: str, src: list[list[int]], tgt: list[list[int]], dtype: str) -> dict:
    idx = np.zeros((len(src) + 1, 2), dtype=np.int64)
    idx[1:, 0] = np.cumsum([len(s) for s in src])
    idx[1:, 1] = np.cumsum([len(t) for t in tgt])
    for side, rows in (("src", src), ("tgt", tgt)):
        flat = np.fromiter((i for r in rows for i in r), dtype=dtype, count=int(idx[-1, 0 if side == "src" else 1]))
        flat.tofile(directory / f"{split}.{side}.bin")
    np.save(directory / f"{split}.idx.npy", idx)
    return {"pairs": len(src), "src_tokens": int(idx[-1, 0]), "tgt_tokens": int(idx[-1, 1])}


def _keep_nonempty(src: list[str], tgt: list[str]) -> tuple[list[str], list[str], int]:
    keep = [i for i, (a, b) in enumerate(zip(src, tgt)) if a and b]
    return [src[i] for i in keep], [tgt[i] for i in keep], len(src) - len(keep)


def _write_prepared(out_dir, meta: dict, tokenizer, splits: dict) -> dict:
    """Write every file into a temporary directory, then move them into out_dir (meta.json last)."""
    import os

    out = Path(out_dir).resolve()
    created = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out, prefix=".prepare-"))
    try:
        dtype = _dtype(tokenizer.vocab_size)
        names = ["tokenizer.json"]
        for split, (src_ids, tgt_ids) in splits.items():
            meta[split].update(_write_split(tmp, split, src_ids, tgt_ids, dtype))
            names += [f"{split}.src.bin", f"{split}.tgt.bin", f"{split}.idx.npy"]
        meta["dtype"] = dtype
        tokenizer.save(tmp / "tokenizer.json")
        atomic_write_json(tmp / "meta.json", meta)
        (out / "meta.json").unlink(missing_ok=True)
        for name in names + ["meta.json"]:
            os.replace(tmp / name, out / name)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        if created:
            shutil.rmtree(out, ignore_errors=True)
        raise
    shutil.rmtree(tmp, ignore_errors=True)
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
    path = Path(data_dir) / "meta.json"
    if not path.is_file():
        raise LmlabError(f"{data_dir} has no meta.json; prepare it with `lmlab seq2seq prepare` first.")
    meta = read_json(path)
    if meta.get("task") not in TASKS:
        raise LmlabError(f"{data_dir} was not prepared by `lmlab seq2seq prepare` (no seq2seq task in its meta.json); "
                         "a seq2seq model trains on sentence pairs: prepare them with `lmlab seq2seq prepare`.")
    return meta


def load_pairs(data_dir, split: str) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """(source ids, target ids) of every pair of a prepared split."""
    data_dir = Path(data_dir)
    meta = read_prepared_meta(data_dir)
    idx_path = data_dir / f"{split}.idx.npy"
    if not idx_path.is_file():
        raise LmlabError(f"{idx_path} is missing; run `lmlab seq2seq prepare` again.")
    idx = np.load(idx_path)
    out = []
    for col, side in enumerate(("src", "tgt")):
        path = data_dir / f"{split}.{side}.bin"
        flat = np.fromfile(path, dtype=meta["dtype"]) if path.is_file() else np.zeros(0, meta["dtype"])
        if len(flat) != idx[-1, col]:
            raise LmlabError(f"{path} does not match {idx_path}; run `lmlab seq2seq prepare` again.")
        out.append([flat[idx[i, col]:idx[i + 1, col]].astype(np.int64) for i in range(len(idx) - 1)])
    return out[0], out[1]


class PairBatches:
    """Padded batches (src [B, S], tgt_in [B, T], tgt_out [B, T]) of a prepared seq2seq directory.

    src = the source ids + <eos>, right-padded with <pad>; tgt_in = <eos> + target ids (the decoder's input,
    shifted right), tgt_out = target ids + <eos>, padded with -100 (ignored by the loss). Sides longer than
    block_size keep their first block_size - 1 tokens.
    train: each epoch is a permutation drawn from (seed, epoch); windows of 100 batches are sorted by length
    and cut into batches (less padding), whose order is then shuffled. Batch `index` is a pure function of the
    index, so a resumed run sees the same batches. val: the pairs sorted by length, batch_size at a time
    (batch i mod the number of batches). A denoise directory corrupts each source (see `corrupt`).
    """

    BUCKET = 100

    def __init__(self, data_dir, batch_size: int, seed: int, block_size: int, eos_id: int, pad_id: int,
                 mask_id: int = -1, warn: bool = True):
        self.data_dir = Path(data_dir)
        self.meta = read_prepared_meta(data_dir)
        self.batch_size, self.seed, self.block_size = batch_size, seed, block_size
        self.eos_id, self.pad_id, self.mask_id = eos_id, pad_id, mask_id
        self.noise = self.meta.get("noise") if self.meta["task"] == "denoise" else None
        self.warn = warn
        self._splits: dict = {}
        self._epoch: tuple[int, list] | None = None

    def __getstate__(self):
        return {**self.__dict__, "_splits": {}, "_epoch": None}

    def split(self, name: str):
        if name not in self._splits:
            if name not in ("train", "val"):
                raise LmlabError(f"unknown split {name!r}; use train or val.")
            src, tgt = load_pairs(self.data_dir, name)
            if not src:
                raise LmlabError(f"the {name} split of {self.data_dir} has no sentence pairs; prepare it with more lines.")
            limit = self.block_size - 1
            long = sum(1 for s, t in zip(src, tgt) if len(s) > limit or len(t) > limit)
            if long and self.warn:
                print(f"note: {long:,} {name} pair(s) of {self.data_dir} have a side longer than block_size - 1 = "
                      f"{limit} tokens; batches keep their first {limit} tokens.", file=sys.stderr)
            self._splits[name] = (src, tgt)
        return self._splits[name]

    def batches(self, name: str) -> int:
        return math.ceil(len(self.split(name)[0]) / self.batch_size)

    def _train_epoch(self, epoch: int) -> list[np.ndarray]:
        if self._epoch is None or self._epoch[0] != epoch:
            src, tgt = self.split("train")
            rng = np.random.default_rng([self.seed, epoch])
            order = rng.permutation(len(src))
            lengths = np.array([len(t) * 1000 + len(s) for s, t in zip(src, tgt)])
            window = self.BUCKET * self.batch_size
            batches = []
            for start in range(0, len(order), window):
                chunk = order[start:start + window]
                chunk = chunk[np.argsort(lengths[chunk], kind="stable")]
                batches += [chunk[i:i + self.batch_size] for i in range(0, len(chunk), self.batch_size)]
            batches = [batches[i] for i in rng.permutation(len(batches))]
            self._epoch = (epoch, batches)
        return self._epoch[1]

    def rows(self, name: str, index: int) -> np.ndarray:
        """The pair indices of batch `index` of a split."""
        index = int(index)
        if name == "train":
            per_epoch = self.batches("train")
            return self._train_epoch(index // per_epoch)[index % per_epoch]
        src, tgt = self.split(name)
        order = np.argsort([len(t) * 1000 + len(s) for s, t in zip(src, tgt)], kind="stable")
        i = index % self.batches(name)
        return order[i * self.batch_size:(i + 1) * self.batch_size]

    def batch(self, name: str, index: int):
        import torch

        src, tgt = self.split(name)
        rows = self.rows(name, index)
        limit = self.block_size - 1
        sources = [src[i][:limit] for i in rows]
        if self.noise is not None:
            rng = np.random.default_rng([self.seed, ("train", "val").index(name), int(index), 7])
            sources = [corrupt(s, rng, self.mask_id, **self.noise)[:limit] for s in sources]
        targets = [tgt[i][:limit] for i in rows]
        S = max(len(s) for s in sources) + 1
        T = max(len(t) for t in targets) + 1
        x = torch.full((len(rows), S), self.pad_id, dtype=torch.long)
        y_in = torch.full((len(rows), T), self.pad_id, dtype=torch.long)
        y_out = torch.full((len(rows), T), -100, dtype=torch.long)
        for r, (s, t) in enumerate(zip(sources, targets)):
            x[r, :len(s)] = torch.as_tensor(np.asarray(s, dtype=np.int64))
            x[r, len(s)] = self.eos_id
            t = torch.as_tensor(np.asarray(t, dtype=np.int64))
            y_in[r, 0] = self.eos_id
            y_in[r, 1:len(t) + 1] = t
            y_out[r, :len(t)] = t
            y_out[r, len(t)] = self.eos_id
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


# ---------------------------------------------------------------------------------------------
# Translation through lmlab.generate
# ---------------------------------------------------------------------------------------------


def load_seq2seq(run, device: str = "cpu"):
    """(model, tokenizer) of a seq2seq run; any other run is a user error."""
    from .checkpoint import load

    model, tokenizer = load(run, device=device)
    if getattr(model, "family", None) != "seq2seq":
        raise LmlabError(f"{run} is a {getattr(model, 'family', 'n-gram')} model, not a seq2seq run; translate and "
                         "--refs evaluation need a run trained with `lmlab seq2seq train`.")
    return model, tokenizer


def encode_sources(model, tokenizer, lines: list[str], warn: bool = True) -> list[list[int] | None]:
    """Each line's source ids + <eos> (None for an empty line), cut to block_size tokens with a note."""
    limit = model.cfg.block_size - 1
    out, cut = [], 0
    encoded = tokenizer.encode_lines([line.strip() for line in lines])
    for line, ids in zip(lines, encoded):
        if not line.strip():
            out.append(None)
            continue
        if len(ids) > limit:
            cut += 1
            ids = ids[:limit]
        out.append(list(ids) + [model.cfg.eos_id])
    if cut and warn:
        print(f"note: {cut:,} input line(s) have more than block_size - 1 = {limit} tokens; only their first "
              f"{limit} tokens are translated.", file=sys.stderr)
    return out


def _pad(rows: list[list[int]], pad_id: int):
    import torch

    x = torch.full((len(rows), max(len(r) for r in rows)), pad_id, dtype=torch.long)
    for i, r in enumerate(rows):
        x[i, :len(r)] = torch.as_tensor(r, dtype=torch.long)
    return x


def translate(model, tokenizer, lines: list[str], cfg=None, batch_size: int = 64, progress: bool = False,
              warn: bool = True) -> list[str]:
    """The model's output for each input line (a translation, a summary, a reconstruction), in input order.

    Decoding is lmlab.generate's: greedy (temperature 0, the default here) or sampling through `sample_steps`
    on a batch of sources, beam search (num_beams > 1, with length_penalty) through `beam_search` one source at
    a time. Outputs end at <eos>, or after min(max_new_tokens, block_size) tokens.
    """
    from dataclasses import replace

    from tqdm import tqdm

    from .generate import GenerationConfig, beam_search, sample_steps

    cfg = cfg or GenerationConfig(temperature=0.0)
    cfg = replace(cfg, num_return_sequences=1, max_new_tokens=min(cfg.max_new_tokens, model.cfg.block_size))
    cfg.validate()
    model.eval()
    sources = encode_sources(model, tokenizer, lines, warn=warn)
    out = [""] * len(lines)
    todo = sorted((i for i, s in enumerate(sources) if s is not None), key=lambda i: len(sources[i]))
    eos, start = model.cfg.eos_id, [model.cfg.eos_id]
    bar = tqdm(total=len(todo), disable=not progress, file=sys.stderr, desc="translate", unit="line", leave=False)
    step = 1 if cfg.num_beams > 1 else batch_size
    for first in range(0, len(todo), step):
        rows = todo[first:first + step]
        bound = model.bind(_pad([sources[i] for i in rows], model.cfg.pad_id))
        if cfg.num_beams > 1:
            out[rows[0]] = beam_search(bound, tokenizer, start, cfg)[0].text.strip()
        else:
            ids: list[list[int]] = [[] for _ in rows]
            done = [False] * len(rows)
            for next_ids, _ in sample_steps(bound, start, cfg, first_sequence=first, batch=len(rows)):
                for r, token in enumerate(next_ids.tolist()):
                    if done[r]:
                        continue
                    if token == eos:
                        done[r] = True
                    else:
                        ids[r].append(token)
                if all(done):
                    break
            for i, row_ids in zip(rows, ids):
                out[i] = tokenizer.decode(row_ids).strip()
        bar.update(len(rows))
    bar.close()
    return out
