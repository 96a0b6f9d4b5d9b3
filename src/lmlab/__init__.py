"""lmlab: build, train, evaluate, compare, generate from and serve language models.

    import lmlab
    lmlab.prepare("data/tinyshakespeare.txt", "data/shakespeare-char", tokenizer="char")
    cfg = lmlab.load_config("configs/shakespeare-char-baby.yaml", {"train.max_iters": "500"})
    lmlab.train(cfg, "runs/baby")
    model, tokenizer = lmlab.load("runs/baby")
    print(lmlab.evaluate_text(model, tokenizer, open("data/tinyshakespeare.txt").read()[-10000:]).bits_per_byte)
    print(lmlab.generate(model, tokenizer, "ROMEO:", max_new_tokens=100, temperature=0.8, seed=1)[0])
"""
import importlib
import sys
import types

# Public names -> the module that defines them. Imported on first use (PEP 562), so `lmlab --help`
# and `import lmlab` stay fast and do not load torch until a model is touched.
_EXPORTS = {
    "load": "checkpoint", "Config": "config", "DataConfig": "config", "TrainConfig": "config",
    "load_config": "config", "TokenBlocks": "data", "prepare": "data", "LmlabError": "errors",
    "GenerationConfig": "generate", "generate": "generate", "stream": "generate", "EvalResult": "metrics",
    "evaluate_ids": "metrics", "evaluate_text": "metrics", "FAMILIES": "models", "build_model": "models",
    "register_family": "models", "CausalLM": "models.base", "NeuralLM": "models.base", "complete": "generate",
    "GPT": "models.gpt", "GPTConfig": "models.gpt", "RNNLM": "models.rnn", "RNNConfig": "models.rnn",
    "TokenStreams": "data", "compare": "compare", "Tokenizer": "tokenizer", "load_tokenizer": "tokenizer",
    "Trainer": "train", "train": "train",
    "Encoder": "models.encoder", "EncoderConfig": "models.encoder", "train_classifier": "tasks.classify",
    "evaluate_classifier": "tasks.classify", "load_classifier": "tasks.classify", "read_labeled": "tasks.labeled",
    "chat_prompt": "chat", "finetune": "tasks.finetune", "apply_lora": "lora", "merge_lora": "lora",
    "load_adapter": "lora", "save_adapter": "lora",
}
__version__ = "0.1.0"
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module 'lmlab' has no attribute {name!r}")


class _Package(types.ModuleType):
    """`lmlab.train` and `lmlab.generate` are the public functions, not the submodules of the same name.

    Importing a submodule makes the import system bind it on the package (setattr(lmlab, "train", module)),
    which would shadow the function after first use; bind the function of that name instead.
    `from lmlab.train import Trainer` still works (it goes through sys.modules). Same for `lmlab.compare`.
    """

    def __setattr__(self, name, value):
        if isinstance(value, types.ModuleType) and _EXPORTS.get(name) == name:
            value = getattr(value, name)
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package
