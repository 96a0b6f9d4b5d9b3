"""What every text classifier shares (encoder, LSTM, GPT + head): the batch it reads, its loss, its checks.

A classification batch is (ids [B, T] int64, mask [B, T] bool: true on real tokens, labels [B] int64), built by
`lmlab.tasks.labeled.LabelBatches` with right padding. A classifier answers `logits(ids, mask) -> [B, num_labels]`;
`loss(batch)` is the mean cross-entropy on the labels (plus whatever auxiliary term the family adds), so the one
Trainer fine-tunes every family. A classifier is not a CausalLM (models/base.py): eval / generate / compare / serve
refuse it by that type, in one sentence.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..errors import LmlabError


def check_classifier(cfg, poolings: tuple[str, ...] | None = None) -> None:
    """Checks shared by every classifier config: num_labels, dropout and (if it has one) pooling."""
    from ..config import check_choice, check_fraction

    if cfg.num_labels < 2:
        raise LmlabError(f"model.num_labels must be at least 2, got {cfg.num_labels}.")
    check_fraction(cfg)
    if poolings is not None:
        check_choice(cfg, "pooling", poolings)


def pool(h: torch.Tensor, mask: torch.Tensor, how: str) -> torch.Tensor:
    """One vector per row of h [B, T, C] over its real positions (mask [B, T]): first, last, mean or max."""
    if how == "cls":
        return h[:, 0]
    if how == "last":
        last = mask.long().sum(1).clamp(min=1) - 1
        return h[torch.arange(h.shape[0], device=h.device), last]
    m = mask.unsqueeze(-1).to(h.dtype)
    if how == "mean":
        return (h * m).sum(1) / m.sum(1).clamp(min=1.0)
    if how == "max":
        return h.masked_fill(~mask.unsqueeze(-1), torch.finfo(h.dtype).min).amax(1)
    raise ValueError(how)


class ClassifierMixin:
    """`loss`, `predict_proba` and the refusals of the causal-LM calls, for an nn.Module with `logits(ids, mask)`."""

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def loss(self, batch) -> torch.Tensor:
        ids, mask, labels = batch
        return F.cross_entropy(self.logits(ids, mask).float(), labels)

    @torch.inference_mode()
    def predict_proba(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.logits(ids, mask).float(), dim=-1)

    def load_backbone(self, tensors: dict, source) -> None:
        """Pretrained weights into the classifier (classify train --init): every tensor must fit; only the new head
        may be missing. A family whose backbone sits elsewhere (GPTClassifier) overrides it."""
        missing, unexpected = self.load_state_dict(tensors, strict=False)
        head = ("classifier.", "pooler.", "head.")
        bad_missing = [k for k in missing if not k.startswith(head)]
        if bad_missing or unexpected:
            raise LmlabError(f"{source} does not fit the classifier (missing {bad_missing[:3]}, unexpected "
                             f"{sorted(unexpected)[:3]}); give a run of the same architecture.")

    @classmethod
    def training_data(cls, cfg):
        """Batches of a directory `lmlab classify train` prepared (labelled texts, encoded)."""
        from ..tasks.labeled import label_batches

        return label_batches(cfg)


def head_init(linear: nn.Linear, std: float = 0.02) -> None:
    nn.init.normal_(linear.weight, mean=0.0, std=std)
    if linear.bias is not None:
        nn.init.zeros_(linear.bias)
