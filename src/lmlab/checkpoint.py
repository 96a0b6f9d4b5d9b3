"""Run directories: save and load weights (safetensors), trainer state (weights_only torch.load), models.

A run directory holds config.yaml (full config), config.json (model config), tokenizer.json,
model.safetensors (latest weights), best.safetensors (lowest validation loss, if kept),
trainer_state.pt (optimizer, step, RNG), metrics.csv, TensorBoard events and loss.png.
"""
from __future__ import annotations

import dataclasses
import io
from pathlib import Path

import torch
from safetensors.torch import load as load_safetensors_bytes
from safetensors.torch import save as save_safetensors_bytes

from .errors import LmlabError
from .files import atomic_open, atomic_write_json, read_json

WEIGHTS, BEST, STATE, MODEL_CONFIG = "model.safetensors", "best.safetensors", "trainer_state.pt", "config.json"
NGRAM_SUFFIXES = (".arpa", ".npz")  # n-gram model files, loaded by load() like run directories


def unique_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """State dict with tied tensors stored once (safetensors refuses shared storage)."""
    seen, out = set(), {}
    for name, tensor in model.state_dict().items():
        key = (tensor.data_ptr(), tensor.shape, tensor.stride())
        if key not in seen:
            seen.add(key)
            out[name] = tensor.detach().contiguous().cpu()
    return out


def save_weights(model: torch.nn.Module, path: str | Path, step: int) -> None:
    data = save_safetensors_bytes(unique_state_dict(model), metadata={"step": str(step), "format": "pt"})
    with atomic_open(path, "wb") as f:
        f.write(data)


def read_weights(path: str | Path) -> tuple[dict[str, torch.Tensor], dict]:
    """Tensors and metadata of a safetensors file; a corrupt or truncated file is a user error."""
    path = Path(path)
    if not path.is_file():
        raise LmlabError(f"{path} does not exist.")
    try:
        raw = path.read_bytes()
        tensors = load_safetensors_bytes(raw)
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
    except Exception as e:  # safetensors raises its own error types for bad headers / short files
        raise LmlabError(f"{path} is corrupt or truncated ({type(e).__name__}: {str(e)[:80]}); "
                         "restore it or retrain.") from None
    return tensors, meta


def load_weights(model: torch.nn.Module, path: str | Path) -> int:
    """Load weights into `model`; return the training step stored with them."""
    tensors, meta = read_weights(path)
    load_state_into(model, tensors, path)
    return int(meta.get("step", 0))


def _is_tied(model, name: str) -> bool:
    target = model.state_dict()[name]
    return any(t.data_ptr() == target.data_ptr() for n, t in model.state_dict().items() if n != name)


def save_trainer_state(state: dict, path: str | Path) -> None:
    buffer = io.BytesIO()
    torch.save(state, buffer)
    with atomic_open(path, "wb") as f:
        f.write(buffer.getvalue())


def load_trainer_state(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise LmlabError(f"{path} does not exist; the run has no checkpoint to resume from.")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise LmlabError(f"{path} is corrupt or truncated ({type(e).__name__}); "
                         "it cannot be resumed — start a new run.") from None


def check_resumable(run_dir: str | Path) -> int:
    """Read a run's trainer_state.pt as a resume will; return its step.

    Lets `lmlab train --resume` refuse a corrupt checkpoint before anything in the run is rewritten.
    """
    state = load_trainer_state(Path(run_dir) / STATE)
    if not isinstance(state, dict) or not {"step", "model", "optimizer"} <= state.keys():
        raise LmlabError(f"{Path(run_dir) / STATE} is not an lmlab trainer state; start a new run.")
    return state["step"]


def load_state_into(model: torch.nn.Module, tensors: dict, source) -> None:
    """Load a (tie-deduplicated) state dict into `model`, naming `source` if it does not fit."""
    missing, unexpected = model.load_state_dict(tensors, strict=False)
    tied = {n for n in missing if _is_tied(model, n)}
    if set(missing) - tied or unexpected:
        raise LmlabError(f"{source} does not match the model in config.json "
                         f"(missing {sorted(set(missing) - tied)[:3]}, unexpected {sorted(unexpected)[:3]}).")


def save_model_config(model_cfg, run_dir: str | Path) -> None:
    atomic_write_json(Path(run_dir) / MODEL_CONFIG, dataclasses.asdict(model_cfg))


def is_run_dir(path: str | Path) -> bool:
    path = Path(path)
    return (path / MODEL_CONFIG).is_file() and (path / WEIGHTS).is_file()


def is_ngram_file(path: str | Path) -> bool:
    return Path(path).suffix in NGRAM_SUFFIXES and Path(path).is_file()


def load_model_config(run_dir: str | Path):
    from .config import build_dataclass, model_config_class

    raw = read_json(Path(run_dir) / MODEL_CONFIG)
    return build_dataclass(model_config_class(raw.get("family", "gpt")), raw, "model")


def load(path: str | Path, which: str = "best", device: str = "cpu"):
    """Load a trained model and its tokenizer from a run directory: `model, tokenizer = lmlab.load(run)`.

    which = "best" uses best.safetensors when the run kept one, else the latest weights; "last" the latest.
    An n-gram model file (.arpa or .npz) loads too: the NGramLM is its own tokenizer (encode / decode).
    """
    from .models import build_model
    from .tokenizer import load_tokenizer

    run = Path(path)
    if not run.exists():
        raise LmlabError(f"{run} does not exist; give a run directory written by `lmlab train` "
                         "or an n-gram model (.arpa / .npz).")
    if is_ngram_file(run):
        from .models.ngram import load_ngram

        model = load_ngram(run)
        return model, model
    if not is_run_dir(run):
        raise LmlabError(f"{run} is not a run directory (no {MODEL_CONFIG} and {WEIGHTS}); "
                         "give a directory written by `lmlab train` or an n-gram model (.arpa / .npz).")
    model = build_model(load_model_config(run))
    weights = run / BEST if which == "best" and (run / BEST).is_file() else run / WEIGHTS
    load_weights(model, weights)
    model.to(device).eval()
    return model, load_tokenizer(run / "tokenizer.json")
