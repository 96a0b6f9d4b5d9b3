"""What every neural causal LM shares (GPT, RNN): the vocabulary check, parameter count and `score`.

Each family adds `loss(batch)`, `logprobs_next(ids, state)` and `token_logprobs(ids)`.
"""
from __future__ import annotations

import torch.nn as nn

from ..errors import LmlabError


class NeuralLM(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        cfg.validate()
        if cfg.vocab_size < 1:
            raise LmlabError("model.vocab_size is not set; prepare data first or set --model.vocab_size.")
        self.cfg = cfg

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def score(self, ids) -> float:
        """Total natural-log probability of the tokens the model predicts (ids[1:] given what precedes)."""
        return float(self.token_logprobs(ids).sum())
