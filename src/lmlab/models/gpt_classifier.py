"""GPT backbone + classification head on the last token (Radford et al. 2018, "Improving Language
Understanding by Generative Pre-Training"): pretrain with the LM objective (`lmlab train`), then fine-tune
with cross-entropy on the labels, optionally keeping the LM loss as an auxiliary term:
    L = CE(labels) + lm_loss_weight * LM(text)      (the paper uses 0.5).

The backbone is an unchanged `GPT` (models/gpt.py) under `gpt.`, so an lmlab GPT run initialises it as is. A
text is read left to right with causal attention, so right padding never reaches the real tokens and the
head reads the hidden state of the last real token (the end-of-text token appended to every text when the
tokenizer has one, GPT's "extract" token). `pooling: mean | max` reads every real position instead (as the LSTM
classifier does): with causal attention position t has seen tokens 0..t, so these pool over prefixes.

`label_lms`: one copy of the pretrained LM per label, each fine-tuned (with the head, in the same steps) on its
label's texts, so that they give log P(text | label): a generative classifier, a neural naive Bayes. The
prediction combines both, `head_scale * logits_y + generative_scale * log P(text | y)`, the two scales fitted on
the validation texts after training (a two-feature logistic regression: stacking, Wolpert 1992; both terms are
overconfident on the texts they were trained on). The discriminative/generative hybrid is the NBSVM idea (Wang &
Manning 2012, whose best results are on these movie reviews); Yogatama et al. 2017 find generative text
classifiers better with little data. It costs one more forward pass per training text and one per label at
prediction, and num_labels more copies of the backbone's weights.
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
    label_lms: bool = False  # one LM per label, fine-tuned on that label's texts: log P(text | label)
    head_scale: float = 1.0  # logits = head_scale * head logits + generative_scale * log P(text | label):
    generative_scale: float = 0.0  # (label_lms) both fitted on the validation texts after training

    def validate(self) -> None:
        super().validate()
        check_classifier(self, ("last", "mean", "max"))
        if self.lm_loss_weight < 0:
            from ..errors import LmlabError

            raise LmlabError(f"model.lm_loss_weight must be >= 0, got {self.lm_loss_weight}.")
        if self.head_scale <= 0 or self.generative_scale < 0 or (self.generative_scale > 0 and not self.label_lms):
            from ..errors import LmlabError

            raise LmlabError(f"model.head_scale must be > 0 and model.generative_scale >= 0 (with model.label_lms), "
                             f"got {self.head_scale} and {self.generative_scale}.")

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
        if cfg.label_lms:  # one copy of the pretrained LM per label, each fine-tuned on that label's texts
            self.label_lms = nn.ModuleList(GPT(cfg.gpt_config()) for _ in range(cfg.num_labels))

    def logits(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        logits = self.head_logits(ids, mask)
        if self.cfg.head_scale != 1.0:
            logits = self.cfg.head_scale * logits
        if self.cfg.generative_scale > 0:
            logits = logits + self.cfg.generative_scale * self.label_logprobs(ids, mask)
        return logits

    def head_logits(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """The head's logits alone (unscaled, without the generative term)."""
        return self._logits(self.gpt.hidden(ids), mask)

    def label_logprobs(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """[B, num_labels]: log P(text | label) of each row under each label's LM (label_lms), summed over its
        tokens after the first (which has no context to be predicted from)."""
        return torch.stack([-self._token_nll(lm, lm.hidden(ids[:, :-1]), ids, mask).sum(1)
                            for lm in self.label_lms], dim=1)

    @staticmethod
    def _token_nll(lm: GPT, h: torch.Tensor, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """[B, T - 1]: -log P(token t | tokens < t) under `lm` for t >= 1 from its hidden states h [B, T - 1, C]
        at positions 0..T-2; 0 at padding."""
        keep = mask[:, 1:]  # the LM head only at real positions (a vocabulary of 50k makes the rest costly)
        logits = lm.lm_head(h[keep]).float()
        nll = torch.zeros(keep.shape, device=ids.device)
        nll[keep] = F.cross_entropy(logits, ids[:, 1:][keep], reduction="none")
        return nll

    def _logits(self, h, mask):
        return self.head(self.drop(pool(h, mask, self.cfg.pooling)))

    def loss(self, batch) -> torch.Tensor:
        ids, mask, labels = batch
        h = self.gpt.hidden(ids)
        loss = F.cross_entropy(self._logits(h, mask).float(), labels)
        tokens = mask[:, 1:].sum().clamp(min=1)  # predicted tokens: every real one after the first
        for c, lm in enumerate(self.label_lms if self.cfg.label_lms else ()):
            rows = labels == c  # each text trains its own label's LM (mean over all texts' predicted tokens)
            if rows.any():
                loss = loss + self._token_nll(lm, lm.hidden(ids[rows, :-1]), ids[rows], mask[rows]).sum() / tokens
        if self.cfg.lm_loss_weight > 0:  # GPT-1's auxiliary LM loss, from the head's own forward pass
            loss = loss + self.cfg.lm_loss_weight * self._token_nll(self.gpt, h[:, :-1], ids, mask).sum() / tokens
        return loss

    def load_backbone(self, tensors: dict, source) -> None:
        """GPT weights (an lmlab GPT run's model.safetensors) into the backbone; learned positions cropped."""
        from ..checkpoint import load_state_into

        if "wpe.weight" in tensors and tensors["wpe.weight"].shape[0] > self.cfg.block_size:
            tensors = {**tensors, "wpe.weight": tensors["wpe.weight"][:self.cfg.block_size]}
        load_state_into(self.gpt, tensors, source)
        for lm in self.label_lms if self.cfg.label_lms else ():
            load_state_into(lm, tensors, source)
