"""GPT backbone + classification head on the last token (Radford et al. 2018, "Improving Language
Understanding by Generative Pre-Training"): pretrain with the LM objective (`lmlab train`), then fine-tune
with cross-entropy on the labels, optionally keeping the LM loss as an auxiliary term:
    L = CE(labels) + lm_loss_weight * LM(text)      (the paper uses 0.5).

The backbone is an unchanged `GPT` (models/gpt.py) under `gpt.`, so an lmlab GPT run initialises it as is. A
text is read left to right with causal attention, so right padding never reaches the real tokens and the
head reads the hidden state of the last real token (the end-of-text token appended to every text when the
tokenizer has one, GPT's "extract" token). `pooling: mean | max` reads every real position instead (as the LSTM
classifier does): with causal attention position t has seen tokens 0..t, so these pool over prefixes.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from .classifier import ClassifierMixin, check_classifier, head_init, pool
from .gpt import GPT, GPTConfig


@dataclass
class GPTClassifierConfig(GPTConfig):
    family: str = "gpt_classifier"
    num_labels: int = 2
    lm_loss_weight: float = 0.0  # auxiliary next-token loss on the text (GPT-1: 0.5); 0 = labels only
    pooling: str = "last"  # last (GPT-1) | mean | max over the real positions

    def validate(self) -> None:
        super().validate()
        check_classifier(self, ("last", "mean", "max"))
        if self.lm_loss_weight < 0:
            from ..errors import LmlabError

            raise LmlabError(f"model.lm_loss_weight must be >= 0, got {self.lm_loss_weight}.")

    def gpt_config(self) -> GPTConfig:
        values = {f.name: getattr(self, f.name) for f in dataclasses.fields(GPTConfig)}
        return GPTConfig(**{**values, "family": "gpt"})


class GPTClassifier(ClassifierMixin, nn.Module):
    family = "gpt_classifier"

    def __init__(self, cfg: GPTClassifierConfig):
        super().__init__()
        cfg.validate()
        self.cfg = cfg
        self.gpt = GPT(cfg.gpt_config())
        self.drop = nn.Dropout(cfg.dropout)
        self.head = nn.Linear(cfg.n_embd, cfg.num_labels)
        head_init(self.head)

    def logits(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self._logits(self.gpt.hidden(ids), mask)

    def _logits(self, h, mask):
        return self.head(self.drop(pool(h, mask, self.cfg.pooling)))

    def loss(self, batch) -> torch.Tensor:
        ids, mask, labels = batch
        h = self.gpt.hidden(ids)
        loss = F.cross_entropy(self._logits(h, mask).float(), labels)
        if self.cfg.lm_loss_weight > 0:
            keep = mask[:, 1:]  # predict every real token from the ones before it
            lm = self.gpt.lm_head(h[:, :-1][keep]).float()
            loss = loss + self.cfg.lm_loss_weight * F.cross_entropy(lm, ids[:, 1:][keep])
        return loss

    def load_backbone(self, tensors: dict, source) -> None:
        """GPT weights (an lmlab GPT run's model.safetensors) into the backbone; learned positions cropped."""
        from ..checkpoint import load_state_into

        if "wpe.weight" in tensors and tensors["wpe.weight"].shape[0] > self.cfg.block_size:
            tensors = {**tensors, "wpe.weight": tensors["wpe.weight"][:self.cfg.block_size]}
        load_state_into(self.gpt, tensors, source)
