"""Model families: name -> (config dataclass, model class). Trainer, eval, generate and serve never branch on it.

A family's model class declares what it is through the protocols of models/base.py (a CausalLM, a Classifier, an
EncoderDecoder; Trainable: `loss(batch)` and the classmethod `training_data(cfg)`, the batches it trains on).
The built-in families are imported on first use, so the n-gram module (NumPy only) loads without torch.

A user's own family, from their own file: `lmlab.register_family("my_models:bigram", BigramConfig, Bigram)`.
A name of the form "module:name" lets any lmlab process find it: looking it up imports `module` (which
registers it) when it is not registered yet, so `model.family: my_models:bigram` in a config works with every
verb as long as `my_models` is importable. A plain name works in the process that registered it.
"""
from __future__ import annotations

import dataclasses
from importlib import import_module

from ..errors import LmlabError

# family -> (module under lmlab.models, config dataclass, model class)
BUILTIN = {
    "gpt": ("gpt", "GPTConfig", "GPT"),
    "llama": ("llama", "LlamaConfig", "Llama"),  # Llama / Qwen2 / Mistral / SmolLM decoder (RoPE, GQA, SwiGLU)
    "rnn": ("rnn", "RNNConfig", "RNNLM"),
    "seq2seq": ("seq2seq", "Seq2SeqConfig", "Seq2Seq"),  # encoder-decoder (translation, summarization, denoising)
    # BERT-style encoder (masked-LM pretraining; with num_labels a classifier) and the other text classifiers
    "encoder": ("encoder", "EncoderConfig", "Encoder"),
    "rnn_classifier": ("rnn", "RNNClassifierConfig", "RNNClassifier"),
    "gpt_classifier": ("gpt_classifier", "GPTClassifierConfig", "GPTClassifier"),
}
FAMILIES = dict.fromkeys(BUILTIN)  # every known family name (registered ones are added)
_REGISTERED: dict[str, tuple[type, type]] = {}


def register_family(name: str, config_cls: type, model_cls: type) -> None:
    """Make a model class trainable, loadable and servable by every lmlab verb under `model.family: name`.

    `config_cls` is a dataclass with a `family` field (its default: `name`) and the model's settings, `model_cls`
    is built as `model_cls(config)` and follows the protocols of lmlab.models.base (a torch causal LM can subclass
    lmlab.models.base.NeuralLM). Registering a name again replaces the earlier classes.
    """
    if not isinstance(name, str) or not name or name in BUILTIN:
        raise LmlabError(f"a family name must be a non-empty string other than the built-in ones "
                         f"({', '.join(BUILTIN)}); got {name!r}.")
    if not dataclasses.is_dataclass(config_cls) or "family" not in {f.name for f in dataclasses.fields(config_cls)}:
        raise LmlabError(f"the config class of family {name!r} must be a dataclass with a 'family' field.")
    if not hasattr(model_cls, "family"):
        model_cls.family = name
    _REGISTERED[name] = (config_cls, model_cls)
    FAMILIES[name] = None


def family_classes(family: str) -> tuple[type, type]:
    """(config dataclass, model class) of a family name (importing the module of a "module:name" family)."""
    if family in BUILTIN:
        module, config_name, class_name = BUILTIN[family]
        module = import_module(f"{__name__}.{module}")
        return getattr(module, config_name), getattr(module, class_name)
    if family not in _REGISTERED and isinstance(family, str) and ":" in family:
        module = family.split(":", 1)[0]
        try:
            import_module(module)
        except ImportError as e:
            raise LmlabError(f"model family {family!r}: cannot import its module {module!r} ({e}); make it "
                             "importable (PYTHONPATH or pip install), or fix model.family.") from None
    if family not in _REGISTERED:
        from ..config import unknown_key_message

        raise LmlabError(unknown_key_message(str(family), list(FAMILIES), "model family"))
    return _REGISTERED[family]


def config_class(family: str) -> type:
    return family_classes(family)[0]


def model_class(family: str) -> type:
    return family_classes(family)[1]


def build_model(model_cfg):
    """Instantiate the model of `model_cfg.family` from its config."""
    return model_class(model_cfg.family)(model_cfg)
