"""Model families: name -> (config dataclass, model class). Trainer, eval and generate never branch on it.

A trainable model class also says what it trains on: `training_data(cfg)` returns the batch source
(TokenBlocks: random windows for GPT; TokenStreams: contiguous streams for truncated BPTT in RNNs).
Families are imported on first use, so the n-gram module (NumPy only) loads without torch.
"""
from importlib import import_module

# family -> (module, config dataclass, model class)
FAMILIES = {
    "gpt": ("gpt", "GPTConfig", "GPT"),
    "rnn": ("rnn", "RNNConfig", "RNNLM"),
    "seq2seq": ("seq2seq", "Seq2SeqConfig", "Seq2Seq"),  # encoder-decoder (translation, summarization, denoising)
    # BERT-style encoder (masked-LM pretraining; with num_labels a classifier) and the other text classifiers
    "encoder": ("encoder", "EncoderConfig", "Encoder"),
    "rnn_classifier": ("rnn", "RNNClassifierConfig", "RNNClassifier"),
    "gpt_classifier": ("gpt_classifier", "GPTClassifierConfig", "GPTClassifier"),
}


def _family(family: str):
    module, config_name, class_name = FAMILIES[family]
    module = import_module(f"{__name__}.{module}")
    return getattr(module, config_name), getattr(module, class_name)


def config_class(family: str):
    return _family(family)[0]


def model_class(family: str):
    return _family(family)[1]


def build_model(model_cfg):
    """Instantiate the model of `model_cfg.family` from its config."""
    return model_class(model_cfg.family)(model_cfg)
