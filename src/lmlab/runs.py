"""A training's run directory: starting one (its config and tokenizer files), the config of a run to continue
(resume_config), and a new run that starts from another one's weights (init_config, check_same_tokenizer,
load_init_weights: `lmlab train --init`).
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

import torch

from .checkpoint import (BEST, STATE, WEIGHTS, is_run_dir, load_model_config, load_state_into, read_weights,
                         save_model_config)
from .config import Config, build_dataclass, load_config, read_yaml, save_config
from .errors import LmlabError
from .files import atomic_open, read_json
from .tokenizer import SETTINGS_FILE


def start_run_dir(run_dir: Path, cfg: Config, tokenizer_path: str | Path | None) -> None:
    """config.yaml (the whole config), config.json (the model's) and a copy of the data's tokenizer.json (with
    the tokenizer_config.json beside it, if any: a converted model's chat template and special tokens)."""
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        save_config(cfg, run_dir / "config.yaml")
        save_model_config(cfg.model, run_dir)
        tokenizer = run_dir / "tokenizer.json"
        if tokenizer_path is not None and Path(tokenizer_path).resolve() != tokenizer.resolve():
            for name in ("tokenizer.json", SETTINGS_FILE):
                source = Path(tokenizer_path).with_name(name)
                if source.is_file():
                    with atomic_open(run_dir / name, "wb") as f:
                        f.write(source.read_bytes())
    except OSError as e:
        raise LmlabError(f"cannot write in the run directory {run_dir} ({e.strerror}); make it "
                         "writable, free some disk space or choose another --out.") from None


def command_config(config=None, out=None, resume=None, init=None,
                   overrides: dict[str, str] | None = None) -> tuple[Config, Path]:
    """The config and run directory that `lmlab train`'s options name: --resume RUN, or --config FILE (with --init
    RUN to fine-tune; --out, default runs/<config name>). Every check runs here, before anything is written."""
    from .config import load_config

    if resume and init:
        raise LmlabError("--init starts a new run and --resume continues one; give only one of them.")
    if resume:  # train() refuses a corrupt or mismatched checkpoint before the run is touched
        return resume_config(resume, overrides), Path(resume)
    if not config:
        raise LmlabError("lmlab train needs --config FILE (see configs/) or --resume RUN_DIR.")
    cfg = init_config(init, config, overrides) if init else load_config(config, overrides)
    return cfg, Path(out or Path("runs") / Path(config).stem)


def resume_config(run_dir: str | Path, overrides: dict[str, str] | None = None) -> Config:
    """The config a run was started with (config.yaml), with optional overrides such as a longer max_iters."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise LmlabError(f"{run_dir} does not exist; --resume takes a run directory written by `lmlab train`.")
    if not (run_dir / "config.yaml").is_file() or not (run_dir / STATE).is_file():
        raise LmlabError(f"{run_dir} is not a resumable run (no config.yaml and {STATE}); "
                         "--resume takes a run directory written by `lmlab train`.")
    return load_config(run_dir / "config.yaml", overrides)


# ---------------------------------------------------------------------------------- --init (fine-tuning)

INIT_FREE = ("dropout",)  # model settings a fine-tune may change; everything else is the init run's architecture


def init_config(init_run: str | Path, config_path: str | Path | None = None,
                overrides: dict[str, str] | None = None) -> Config:
    """The config of a new run that starts from `init_run`: its model config, the data and train sections of
    `config_path` and the overrides. Model values that contradict the run's architecture are refused; dropout
    may change, and block_size may shrink (learned positions are cropped)."""
    run = Path(init_run)
    if not is_run_dir(run):
        raise LmlabError(f"{run} is not a run directory (no config.json and model.safetensors); --init takes a run "
                         "written by `lmlab train` or `lmlab convert`.")
    base = load_model_config(run)
    raw = read_yaml(config_path) if config_path is not None else {}
    asked = dict(raw.get("model") or {})
    asked.update({k.removeprefix("model."): v for k, v in (overrides or {}).items() if k.startswith("model.")})
    requested = build_dataclass(type(base), asked, "model")  # unknown keys and bad types fail here
    model = dataclasses.asdict(base)
    for key in asked:
        value, have = getattr(requested, key), model[key]
        if key in INIT_FREE or (key == "block_size" and (value <= have or base.family != "gpt")):
            model[key] = value
        elif value != have and not (key == "vocab_size" and value == 0):
            show = lambda v: str(v).lower() if isinstance(v, bool) else v  # noqa: E731 (as YAML writes it)
            raise LmlabError(f"model.{key} {show(value)} conflicts with {run}, whose model has {key} {show(have)}; "
                             f"--init takes the architecture from the run, so drop model.{key} from the config "
                             "and overrides.")
    rest = {k: v for k, v in (overrides or {}).items() if not k.startswith("model.")}
    sections = {"model": model, "data": raw.get("data") or {}, "train": raw.get("train") or {}}
    return load_config(None, rest, base=sections)


def check_same_tokenizer(data_dir: str | Path, init_run: str | Path) -> None:
    """The data must be token ids of the init run's tokenizer."""
    data_tok, run_tok = Path(data_dir) / "tokenizer.json", Path(init_run) / "tokenizer.json"
    for path in (data_tok, run_tok):
        if not path.is_file():
            raise LmlabError(f"{path} does not exist; --init needs the run's tokenizer and data prepared with it.")
    if read_json(data_tok) != read_json(run_tok):
        raise LmlabError(f"{data_dir} was prepared with another tokenizer than {init_run}'s; prepare the text "
                         f"again with `lmlab prepare SOURCE --tokenizer {init_run} --out DIR`.")


def load_init_weights(model: torch.nn.Module, init_run: str | Path) -> None:
    """The init run's best weights (else its latest) into `model`; learned positions cropped to its block_size."""
    run = Path(init_run)
    path = run / BEST if (run / BEST).is_file() else run / WEIGHTS
    tensors, _ = read_weights(path)
    block = getattr(model.cfg, "block_size", None)
    if "wpe.weight" in tensors and block is not None and tensors["wpe.weight"].shape[0] > block:
        tensors["wpe.weight"] = tensors["wpe.weight"][:block].contiguous()
    load_state_into(model, tensors, path)
