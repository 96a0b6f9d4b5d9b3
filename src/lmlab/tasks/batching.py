"""What the task workflows share between their data and the Trainer: which rows form each batch of a split
(`LengthBatching`, a pure function of the batch index, so a resumed run sees the same batches), each split's rows
loaded once (`SplitRows`), right padding (`pad_rows`), and the ragged rows of a prepared directory on disk
(`write_rows`, `read_rows`).
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from ..errors import LmlabError


class LengthBatching:
    """The rows of each batch of one split of `len(keys)` rows, batch_size at a time.

    shuffle (training): each epoch is a permutation drawn from numpy's default_rng([seed, epoch]). With `window`,
    the permutation is cut into windows of window x batch_size rows, each sorted by `keys` (stable; largest first
    when descending) and cut into batches, so rows of similar length share a batch (little padding); the batches are
    then shuffled with the same generator. `regroup` cuts the shuffled batches' concatenation into batch_size rows
    again (a short last batch then lends its rows to the next ones). Batch `index` is batch index mod
    batches-per-epoch of epoch index // batches-per-epoch.
    Without shuffle (validation): the rows sorted by `keys` (stable), batch i mod the number of batches.
    """

    def __init__(self, keys, batch_size: int, seed: int = 0, shuffle: bool = True, window: int | None = None,
                 descending: bool = False, regroup: bool = False):
        self.keys = np.asarray(keys)
        self.batch_size, self.seed, self.shuffle = batch_size, seed, shuffle
        self.window, self.descending, self.regroup = window, descending, regroup
        self._epoch: tuple[int, list[np.ndarray]] | None = None  # the last epoch asked for

    def __len__(self) -> int:
        """Batches per epoch."""
        return math.ceil(len(self.keys) / self.batch_size)

    def _cut(self, order: np.ndarray) -> list[np.ndarray]:
        return [order[i:i + self.batch_size] for i in range(0, len(order), self.batch_size)]

    def epoch(self, epoch: int) -> list[np.ndarray]:
        """The batches of `epoch` in order (cached: one epoch at a time)."""
        if not self.shuffle:
            epoch = 0
        if self._epoch is None or self._epoch[0] != epoch:
            batches = self._draw(epoch) if self.shuffle else self._cut(np.argsort(self.keys, kind="stable"))
            self._epoch = (epoch, batches)
        return self._epoch[1]

    def _draw(self, epoch: int) -> list[np.ndarray]:
        rng = np.random.default_rng([self.seed, epoch])
        order = rng.permutation(len(self.keys))
        if self.window is None:
            return self._cut(order)
        keys = -self.keys if self.descending else self.keys
        size = self.window * self.batch_size
        batches = []
        for start in range(0, len(order), size):
            chunk = order[start:start + size]
            batches += self._cut(chunk[np.argsort(keys[chunk], kind="stable")])
        batches = [batches[i] for i in rng.permutation(len(batches))]
        return self._cut(np.concatenate(batches)) if self.regroup else batches

    def rows(self, index: int) -> np.ndarray:
        """The row indices of batch `index`."""
        epoch, position = divmod(int(index), len(self))
        return self.epoch(epoch)[position]


class SplitRows:
    """Batches of a prepared directory's train and val splits: each split loaded once, on first use, by the
    subclass's `load(name)` (its columns of rows and the LengthBatching that cuts them into batches); a pickled
    copy (a DataLoader worker's) loads its own."""

    def __init__(self):
        self._splits: dict = {}  # split -> (columns, LengthBatching)

    def __getstate__(self):
        return {**self.__dict__, "_splits": {}}

    def load(self, name: str) -> tuple[tuple, LengthBatching]:
        raise NotImplementedError

    def split(self, name: str) -> tuple:
        """The columns of a split's rows (e.g. source and target ids)."""
        if name not in self._splits:
            if name not in ("train", "val"):
                raise LmlabError(f"unknown split {name!r}; use train or val.")
            self._splits[name] = self.load(name)
        return self._splits[name][0]

    def batches(self, name: str) -> int:
        self.split(name)
        return len(self._splits[name][1])

    def rows(self, name: str, index: int) -> np.ndarray:
        """The row indices of batch `index` of a split."""
        self.split(name)
        return self._splits[name][1].rows(index)


def pad_rows(rows, pad_id: int, mask: bool = False):
    """int64 [len(rows), longest row] of the rows of ids, right-padded with pad_id; with mask, also the bool
    [len(rows), longest row] that is true on the real tokens."""
    import torch

    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    real = torch.zeros((len(rows), width), dtype=torch.bool) if mask else None
    for i, r in enumerate(rows):
        ids[i, :len(r)] = torch.as_tensor(np.asarray(r, dtype=np.int64))
        if mask:
            real[i, :len(r)] = True
    return (ids, real) if mask else ids


def ids_dtype(vocab_size: int) -> str:
    """The smallest NumPy type that holds every token id of a vocabulary, as files of ids store them."""
    return "uint16" if vocab_size <= 1 << 16 else "uint32"


def write_rows(directory: Path, split: str, columns: dict[str, list], dtype: str) -> dict[str, int]:
    """Rows of token ids, several aligned columns of them (e.g. source and target): each column's ids concatenated
    in {split}.{column}.bin, and int64 [rows + 1, columns] in {split}.idx.npy, where each row of each column starts.
    Returns the number of tokens of each column."""
    names = list(columns)
    idx = np.zeros((len(columns[names[0]]) + 1, len(names)), dtype=np.int64)
    for col, name in enumerate(names):
        idx[1:, col] = np.cumsum([len(r) for r in columns[name]])
        flat = np.fromiter((i for r in columns[name] for i in r), dtype=dtype, count=int(idx[-1, col]))
        flat.tofile(directory / f"{split}.{name}.bin")
    np.save(directory / f"{split}.idx.npy", idx)
    return {name: int(idx[-1, col]) for col, name in enumerate(names)}


def read_rows(directory: Path, split: str, names: tuple[str, ...], dtype: str, made_by: str) -> list[list[np.ndarray]]:
    """The columns `write_rows` wrote, each a list of int64 arrays (one per row); a missing or inconsistent file is
    a user error that says to run `made_by` again."""
    idx_path = directory / f"{split}.idx.npy"
    if not idx_path.is_file():
        raise LmlabError(f"{idx_path} is missing; run `{made_by}` again.")
    idx = np.load(idx_path)
    out = []
    for col, name in enumerate(names):
        path = directory / f"{split}.{name}.bin"
        flat = np.fromfile(path, dtype=dtype) if path.is_file() else np.zeros(0, dtype)
        if len(flat) != idx[-1, col]:
            raise LmlabError(f"{path} does not match {idx_path}; run `{made_by}` again.")
        out.append([flat[idx[i, col]:idx[i + 1, col]].astype(np.int64) for i in range(len(idx) - 1)])
    return out
