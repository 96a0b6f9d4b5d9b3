"""Model families: name -> (config dataclass, model class). Trainer, eval and generate never branch on it."""
from .gpt import GPT, GPTConfig

FAMILIES = {
    "gpt": (GPTConfig, GPT),
}


def build_model(model_cfg):
    """Instantiate the model of `model_cfg.family` from its config."""
    return FAMILIES[model_cfg.family][1](model_cfg)
