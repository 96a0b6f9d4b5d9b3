"""Configs: dataclasses for model / data / train, read from YAML, overridden by dotted CLI flags.

A config file has three sections:

    model: {family: gpt, n_layer: 4, ...}   # fields of the family's config class (models/__init__.py)
    data:  {dir: data/shakespeare-char}
    train: {max_iters: 2000, ...}

and `--model.n_layer 6 --train.learning_rate 3e-4` overrides any field. Unknown keys and values of the
wrong type are user errors (LmlabError) that name the closest valid key.
"""
from __future__ import annotations

import dataclasses
import difflib
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .errors import LmlabError


@dataclass
class DataConfig:
    dir: str = "data/shakespeare-char"  # a directory written by `lmlab prepare`


@dataclass
class TrainConfig:
    max_iters: int = 5000
    batch_size: int = 64
    grad_accum: int = 1  # micro-batches per optimizer step
    learning_rate: float = 1e-3
    min_lr: float = 1e-4  # cosine decay floor
    warmup_iters: int = 100  # linear warmup steps
    lr_decay_iters: int | None = None  # end of the cosine decay; None = max_iters
    # A budget of training seconds (the steps' time, evaluations excluded; kept across --resume): training ends
    # after the first step that reaches it, or at max_iters if that comes first, and the cosine decay follows
    # whichever of the two is nearer. So models compared "at the same CPU budget" each get a full schedule.
    max_seconds: float | None = None
    weight_decay: float = 0.1  # applied to matrices only (embeddings and Linear weights; not biases or norm gains)
    beta1: float = 0.9
    beta2: float = 0.99
    grad_clip: float = 1.0  # max global gradient norm; 0 disables clipping
    eval_interval: int = 250
    eval_iters: int = 20  # validation batches per evaluation
    log_interval: int = 10
    save_interval: int | None = None  # checkpoint every N steps; None = at every evaluation
    keep_best: bool = True  # keep best.safetensors = the weights with the lowest validation loss
    device: str = "cpu"  # cpu | cuda | cuda:N | auto (under torchrun, cuda means each process's own GPU)
    precision: str = "fp32"  # fp32 | bf16 (autocast, CPU or GPU) | fp16 (autocast + gradient scaler, GPU only)
    strategy: str = "auto"  # under torchrun: ddp | fsdp (auto = ddp); single = one process only
    compile: bool = False  # torch.compile the model
    tensorboard: bool = True
    seed: int = 1337
    # LoRA (lmlab.lora, Hu et al. 2021): rank > 0 trains low-rank adapters on these Linear layers, the rest frozen;
    # the base's weights may be held in bf16 / fp16 / int8 to save memory. The run's model.safetensors holds the
    # merged weights, adapter_model.safetensors + adapter_config.json the adapters in PEFT's format.
    lora_rank: int = 0
    lora_alpha: float = 16.0
    lora_dropout: float = 0.05
    lora_targets: str = "q,k,v,o,gate,up,down"
    lora_base_dtype: str = "fp32"
    # Activation checkpointing (Chen et al. 2016) of a Transformer decoder's blocks: their activations are
    # recomputed in the backward pass instead of kept (about one more forward pass of time, far less memory).
    gradient_checkpointing: bool = False


@dataclass
class Config:
    model: Any
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def to_dict(self) -> dict:
        return {"model": dataclasses.asdict(self.model), "data": dataclasses.asdict(self.data),
                "train": dataclasses.asdict(self.train)}


# ----------------------------------------------------------------------------- building

def load_config(path: str | Path | None = None, overrides: dict[str, str] | None = None,
                base: dict | None = None) -> Config:
    """Read a YAML config (or start from `base`), apply dotted overrides, validate, return a Config."""
    raw = dict(base or {})
    if path is not None:
        raw = read_yaml(path)
    raw = {k: dict(v or {}) for k, v in raw.items()} if raw else {}
    for section in raw:
        if section not in ("model", "data", "train"):
            raise LmlabError(unknown_key_message(section, ["model", "data", "train"], "config section"))
    sections = {"model": raw.get("model", {}), "data": raw.get("data", {}), "train": raw.get("train", {})}
    overrides = {("train.precision" if k == "train.dtype" else k): v for k, v in (overrides or {}).items()}
    if "dtype" in sections["train"]:  # the field's name before precision; configs and runs that still use it
        legacy = sections["train"].pop("dtype")
        sections["train"].setdefault("precision", legacy)
    for dotted, value in overrides.items():
        section, _, key = dotted.partition(".")
        if section not in sections or not key:
            raise LmlabError(f"--{dotted} is not a config field; use --model.X, --data.X or --train.X "
                             "(e.g. --model.n_layer 4).")
        sections[section][key] = value
    model_cls = model_config_class(sections["model"].get("family", "gpt"))
    cfg = Config(model=build_dataclass(model_cls, sections["model"], "model"),
                 data=build_dataclass(DataConfig, sections["data"], "data"),
                 train=build_dataclass(TrainConfig, sections["train"], "train"))
    validate_train(cfg.train)
    if hasattr(cfg.model, "validate"):
        cfg.model.validate()
    return cfg


def read_yaml(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise LmlabError(f"config file {path} does not exist.")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        raise LmlabError(f"config file {path} is not valid YAML: {str(e).splitlines()[0]}") from None
    if raw is None:
        return {}
    if not isinstance(raw, dict) or not all(isinstance(v, (dict, type(None))) for v in raw.values()):
        raise LmlabError(f"config file {path} must be a mapping with sections model:, data:, train:.")
    return raw


def model_config_class(family: str):
    from .models import config_class  # local import: models import config

    return config_class(family)


def build_dataclass(cls, values: dict, section: str):
    """Make `cls(**values)` with every value checked and converted to the field's declared type."""
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in values.items():
        if key not in hints:
            raise LmlabError(unknown_key_message(f"{section}.{key}", [f"{section}.{n}" for n in names],
                                                 "config key"))
        kwargs[key] = coerce(value, hints[key], f"{section}.{key}")
    return cls(**kwargs)


def unknown_key_message(key: str, valid: list[str], what: str) -> str:
    close = difflib.get_close_matches(key, valid, n=1, cutoff=0.5)
    hint = f"did you mean '{close[0]}'?" if close else f"valid: {', '.join(valid)}."
    return f"unknown {what} '{key}'; {hint}"


def coerce(value, annotation, name: str):
    """Convert a YAML value or a CLI string to `annotation` (int, float, bool, str, or X | None)."""
    args = typing.get_args(annotation)
    if type(None) in args:  # Optional[X]
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null", "")):
            return None
        annotation = next(a for a in args if a is not type(None))
    if annotation is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "yes", "1", "on", "false", "no", "0", "off"):
            return value.lower() in ("true", "yes", "1", "on")
        raise LmlabError(f"{name} must be true or false, got {value!r}.")
    if annotation in (int, float):  # a float field takes an int too; a string is parsed; a bool is neither
        accepted = (int,) if annotation is int else (int, float)
        if isinstance(value, accepted) and not isinstance(value, bool):
            return annotation(value)
        if isinstance(value, str):
            try:
                return annotation(value)
            except ValueError:
                pass
        raise LmlabError(f"{name} must be {'an integer' if annotation is int else 'a number'}, got {value!r}.")
    if annotation is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
        raise LmlabError(f"{name} must be a string, got {value!r}.")
    return value


# --------------------------------------------------------------------------- checks a model config's validate() uses

def check_positive(cfg, *names: str) -> None:
    for name in names:
        if getattr(cfg, name) < 1:
            raise LmlabError(f"model.{name} must be a positive integer, got {getattr(cfg, name)}.")


def check_choice(cfg, name: str, choices) -> None:
    choices = list(choices)
    if getattr(cfg, name) not in choices:
        allowed = " or ".join(choices) if len(choices) == 2 else "one of " + ", ".join(choices)
        raise LmlabError(f"model.{name} must be {allowed}, got {getattr(cfg, name)!r}.")


def check_fraction(cfg, name: str = "dropout") -> None:
    if not 0 <= getattr(cfg, name) < 1:
        raise LmlabError(f"model.{name} must be in [0, 1), got {getattr(cfg, name)}.")


def require(condition: bool, message: str) -> None:
    if not condition:
        raise LmlabError(message)


PRECISION_NAMES = {"float32": "fp32", "bfloat16": "bf16", "float16": "fp16"}  # torch's names work too


def validate_train(t: TrainConfig) -> None:
    for name in ("batch_size", "grad_accum", "eval_interval", "eval_iters", "log_interval"):
        require(getattr(t, name) >= 1, f"train.{name} must be a positive integer, got {getattr(t, name)}.")
    for name in ("max_iters", "warmup_iters"):
        require(getattr(t, name) >= 0, f"train.{name} must be >= 0, got {getattr(t, name)}.")
    require(t.save_interval is None or t.save_interval >= 1, "train.save_interval must be >= 1 or none.")
    require(t.lr_decay_iters is None or t.lr_decay_iters >= 1, "train.lr_decay_iters must be >= 1 or none.")
    require(t.max_seconds is None or t.max_seconds > 0, "train.max_seconds must be > 0 or none.")
    require(t.learning_rate > 0, f"train.learning_rate must be > 0, got {t.learning_rate}.")
    require(0 <= t.min_lr <= t.learning_rate, "train.min_lr must be between 0 and train.learning_rate.")
    require(t.weight_decay >= 0 and t.grad_clip >= 0, "train.weight_decay and train.grad_clip must be >= 0.")
    require(0 <= t.beta1 < 1 and 0 <= t.beta2 < 1, "train.beta1 and train.beta2 must be in [0, 1).")
    t.precision = PRECISION_NAMES.get(t.precision, t.precision)
    require(t.precision in ("fp32", "bf16", "fp16"),
            f"train.precision must be fp32, bf16 or fp16, got {t.precision!r}.")
    require(t.strategy in ("auto", "single", "ddp", "fsdp"),
            f"train.strategy must be auto, single, ddp or fsdp, got {t.strategy!r}.")


def save_config(cfg: Config, path: str | Path) -> None:
    from .files import atomic_write_text

    atomic_write_text(path, yaml.safe_dump(cfg.to_dict(), sort_keys=False))


def parse_overrides(args: list[str]) -> dict[str, str]:
    """Turn ['--model.n_layer', '4', '--train.seed=3'] into {'model.n_layer': '4', 'train.seed': '3'}."""
    overrides, i = {}, 0
    while i < len(args):
        arg = args[i]
        if not arg.startswith("--") or "." not in arg:
            raise LmlabError(f"unexpected argument {arg!r}; config overrides look like --model.n_layer 4.")
        key, eq, value = arg[2:].partition("=")
        if not eq:
            if i + 1 >= len(args):
                raise LmlabError(f"--{key} needs a value, e.g. --{key} 4.")
            value, i = args[i + 1], i + 1
        overrides[key] = value
        i += 1
    return overrides
