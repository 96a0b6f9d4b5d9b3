"""Model families: name -> (config dataclass, model class). Trainer, eval and generate never branch on it.

A trainable model class also says what it trains on: `training_data(cfg)` returns the batch source
(TokenBlocks: random windows for GPT; TokenStreams: contiguous streams for truncated BPTT in RNNs).
"""
from .gpt import GPT, GPTConfig
from .rnn import RNNLM, RNNConfig

FAMILIES = {
    "gpt": (GPTConfig, GPT),
    "rnn": (RNNConfig, RNNLM),
}


def model_class(family: str):
    return FAMILIES[family][1]


def build_model(model_cfg):
    """Instantiate the model of `model_cfg.family` from its config."""
    return model_class(model_cfg.family)(model_cfg)
