"""The classifier a run starts from: its model config and tokenizer, from scratch (a tokenizer learned from the
training texts) or from --init (an lmlab encoder / GPT run, or a Hugging Face BERT directory, whose weights become
the backbone), the training defaults of each kind, and RUN/data/init: the classifier an --init run starts from,
written as a run directory that lmlab.train.train(init=...) loads.
"""
from __future__ import annotations

from pathlib import Path

from ..errors import LmlabError
from ..files import read_json

# Per-model defaults: (from scratch, fine-tuning from --init). Any of them can be changed with --train.X.
TRAIN_DEFAULTS = {
    "encoder": ({"learning_rate": 5e-4, "batch_size": 32, "epochs": 5}, {"learning_rate": 1e-4, "batch_size": 32, "epochs": 3}),
    "lstm": ({"learning_rate": 2e-3, "batch_size": 64, "epochs": 5}, None),
    "gpt": ({"learning_rate": 5e-4, "batch_size": 32, "epochs": 5}, {"learning_rate": 1e-4, "batch_size": 32, "epochs": 3}),
}


def _hf_config(path: Path) -> dict | None:
    """config.json of a Hugging Face model directory, or None if `path` is not one."""
    if (path / "config.json").is_file() and not (path / "config.yaml").is_file():
        raw = read_json(path / "config.json")
        if "model_type" in raw or "architectures" in raw:
            return raw
    return None


def _init_source(init) -> tuple[str, Path]:
    """("run", path) for an lmlab run, ("hf", path) for a Hugging Face directory."""
    from ..checkpoint import is_run_dir

    path = Path(init)
    if not path.exists():
        raise LmlabError(f"--init {path} does not exist; give an lmlab run directory or a Hugging Face model directory.")
    if _hf_config(path) is not None:
        return "hf", path
    if is_run_dir(path):
        return "run", path
    raise LmlabError(f"--init {path} is neither an lmlab run (config.json + model.safetensors) nor a Hugging Face "
                     "model directory (config.json with model_type).")


def from_init(kind: str, init, max_length: int, num_labels: int, options: dict):
    """(model config dict, tokenizer, init tensors) for --init; the tensors go into the new model's backbone."""
    from ..checkpoint import BEST, WEIGHTS, load_model_config, read_weights
    from ..tokenizer import WordPieceTokenizer, load_tokenizer

    source, path = _init_source(init)
    if source == "hf":
        if kind != "encoder":
            raise LmlabError(f"--init {path} is a Hugging Face model; it initialises --model encoder (a BERT); for "
                             "GPT-2 convert it first with `lmlab convert` and give --model gpt the run.")
        from ..convert import hf_bert as hf

        cfg, tensors, tokenizer = hf.load_hf_bert(path)
        base = cfg
    else:
        base = load_model_config(path)
        weights = path / BEST if (path / BEST).is_file() else path / WEIGHTS
        tensors, _ = read_weights(weights)
        tokenizer = load_tokenizer(path)
        want = {"encoder": ("encoder",), "gpt": ("gpt",)}.get(kind, ())
        if base.family not in want:
            raise LmlabError(f"--init {path} is a {base.family} run; --model {kind} starts from "
                             + (f"a {' or '.join(want)} run." if want else "scratch (no --init)."))
    import dataclasses

    model = dataclasses.asdict(base)
    if kind == "encoder":
        if not isinstance(tokenizer, WordPieceTokenizer):
            raise LmlabError(f"--init {path} has a {tokenizer.kind} tokenizer; an encoder needs a WordPiece one.")
        model.update(num_labels=num_labels, pooling=options.get("pooling") or "cls", mlm_head=False,
                     pad_id=tokenizer.pad_id)
        model["pooler"] = any(k.startswith("pooler.") for k in tensors) if options.get("pooler") is None \
            else bool(options["pooler"])
        tensors = {k: v for k, v in tensors.items() if not k.startswith(("mlm.", "classifier."))
                   and (model["pooler"] or not k.startswith("pooler."))}
    else:  # gpt
        model.update(family="gpt_classifier", num_labels=num_labels, block_size=min(base.block_size, max_length),
                     lm_loss_weight=options.get("lm_loss_weight") or 0.0, pooling=options.get("pooling") or "last",
                     label_lms=bool(options.get("label_lms")))
    if options.get("dropout") is not None:
        model["dropout"] = options["dropout"]
    return model, tokenizer, tensors


def from_scratch(kind: str, texts: list[str], max_length: int, num_labels: int, options: dict):
    from ..tokenizer import train_tokenizer, train_wordpiece

    vocab = options.get("vocab_size")
    dropout = options.get("dropout")
    if kind == "encoder":
        tokenizer = train_wordpiece(texts, vocab or 8000)
        model = {"family": "encoder", "vocab_size": tokenizer.vocab_size, "block_size": max_length, "n_layer": 4,
                 "n_head": 4, "n_embd": 256, "num_labels": num_labels, "pad_id": tokenizer.pad_id,
                 "pooling": options.get("pooling") or "cls", "pooler": options.get("pooler", True) is not False,
                 "dropout": 0.1 if dropout is None else dropout}
    elif kind == "lstm":
        words = options.get("tokenizer") or "word"
        if words not in ("word", "char", "jieba"):
            raise LmlabError(f"--tokenizer {words!r}: an lstm classifier reads word, char or jieba tokens.")
        # char: the 6,000 most frequent characters (more than a Chinese text of this size uses) and U+FFFD for
        # any other one, so that unseen characters of new texts still encode
        tokenizer = train_tokenizer(words, texts, vocab or (6000 if words == "char" else 20000))
        # The word tokenizer has no padding token: the model gets one more embedding row for it.
        model = {"family": "rnn_classifier", "vocab_size": tokenizer.vocab_size + 1, "pad_id": tokenizer.vocab_size,
                 "num_labels": num_labels, "pooling": options.get("pooling") or "max",
                 "bidirectional": options.get("bidirectional", True) is not False,
                 "dropout": 0.3 if dropout is None else dropout}
    else:
        tokenizer = train_tokenizer("bpe", texts, vocab or 4096)
        model = {"family": "gpt_classifier", "vocab_size": tokenizer.vocab_size, "block_size": max_length,
                 "n_layer": 4, "n_head": 4, "n_embd": 256, "num_labels": num_labels,
                 "lm_loss_weight": options.get("lm_loss_weight") or 0.0, "pooling": options.get("pooling") or "last",
                 "label_lms": bool(options.get("label_lms")), "dropout": 0.1 if dropout is None else dropout}
    return model, tokenizer, None


def input_format_for(kind: str, tokenizer) -> str:
    if kind == "encoder":
        return "bert"
    if kind == "gpt" and tokenizer.eot_id is not None:
        return "eot"
    return "plain"


def write_start(directory: Path, cfg, tensors: dict, init) -> Path:
    """RUN/data/init: the classifier of `cfg` built with the run's seed (so its new head is the one an uninterrupted
    build would draw) with the --init tensors as its backbone, as a run directory (config.json, model.safetensors,
    the data's tokenizer.json) for lmlab.train.train(init=...) to start from."""
    import dataclasses

    import torch

    from ..checkpoint import WEIGHTS, save_model_config, save_weights
    from ..files import atomic_open
    from ..models import build_model

    torch.manual_seed(cfg.train.seed)
    net = build_model(cfg.model)
    net.load_backbone(tensors, init)
    directory.mkdir(parents=True, exist_ok=True)
    save_weights(net, directory / WEIGHTS, 0, dataclasses.asdict(cfg.model))
    save_model_config(cfg.model, directory)
    with atomic_open(directory / "tokenizer.json") as f:
        f.write((directory.parent / "tokenizer.json").read_bytes())
    return directory
