"""Run directories: save and load weights (safetensors), trainer state (weights_only torch.load), models.

A run directory holds config.yaml (full config), config.json (model config), tokenizer.json,
model.safetensors (latest weights), best.safetensors (lowest validation loss, if kept),
trainer_state.pt (optimizer, step, RNG), metrics.csv, TensorBoard events and loss.png.

Both checkpoint files carry a SHA-256 checksum and the config they were written with, so a file that was
truncated or damaged, or a config edited into another architecture, is refused with an error naming the file:
- model.safetensors: metadata "sha256" (of the tensor data that follows the header) and "config" (config.json);
- trainer_state.pt: torch.save's zip, then a trailer line "lmlab-sha256 <hex of everything before it>";
  zip readers (torch.load among them) ignore the trailer, and the state holds the whole config under "config".
Files without a checksum (written before it existed, or by other tools) still load, unverified.
"""
from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import struct
from pathlib import Path

import torch
from safetensors.torch import load as load_safetensors_bytes
from safetensors.torch import save as save_safetensors_bytes

from .errors import LmlabError
from .files import atomic_open, atomic_write_json, read_json

WEIGHTS, BEST, STATE, MODEL_CONFIG = "model.safetensors", "best.safetensors", "trainer_state.pt", "config.json"
NGRAM_SUFFIXES = (".arpa", ".npz", ".lmbin")  # n-gram model files, loaded by load() like run directories


def unique_state_dict(model: torch.nn.Module, keep_device: bool = False) -> dict[str, torch.Tensor]:
    """State dict with tied tensors stored once (safetensors refuses shared storage).

    keep_device: leave the tensors where they are (meta or sharded ones included) instead of copying to the CPU.
    """
    seen, out = set(), {}
    for name, tensor in model.state_dict(keep_vars=True).items():
        if tensor.device.type == "meta" or type(tensor.data) is not torch.Tensor:
            key = (id(tensor),)  # no storage to compare (meta, DTensor): tied tensors are the same object
        else:
            key = (tensor.data_ptr(), tensor.shape, tensor.stride())
        if key not in seen:
            seen.add(key)
            out[name] = tensor.detach() if keep_device else tensor.detach().contiguous().cpu()
    return out


def save_weights(model, path: str | Path, step: int, config: dict | None = None) -> None:
    """Write a module's (or a ready state dict's) tensors as safetensors, with the step, a checksum and the config."""
    tensors = model if isinstance(model, dict) else unique_state_dict(model)
    if config is None and not isinstance(model, dict) and dataclasses.is_dataclass(getattr(model, "cfg", None)):
        config = dataclasses.asdict(model.cfg)
    metadata = {"step": str(step), "format": "pt"}
    if config is not None:
        metadata["config"] = json.dumps(config, sort_keys=True)
    raw = save_safetensors_bytes(tensors, metadata=metadata)
    header, data = _with_checksum(raw)
    with atomic_open(path, "wb") as f:
        f.write(header)
        f.write(data)


def _split_safetensors(raw) -> tuple[dict, memoryview]:
    """The JSON header and the tensor data of safetensors bytes (8-byte little-endian header length first)."""
    view = memoryview(raw)
    (n,) = struct.unpack("<Q", view[:8])
    return json.loads(bytes(view[8:8 + n])), view[8 + n:]


def _with_checksum(raw: bytes) -> tuple[bytes, memoryview]:
    """Header (metadata sha256 = SHA-256 of the tensor data added) and data. Tensor offsets are relative to
    the data, so a longer header moves nothing; it stays padded with spaces to 8 bytes, as safetensors does."""
    header, data = _split_safetensors(raw)
    header.setdefault("__metadata__", {})["sha256"] = hashlib.sha256(data).hexdigest()
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text, data


def read_weights(path: str | Path) -> tuple[dict[str, torch.Tensor], dict]:
    """Tensors and metadata of a safetensors file; a corrupt, truncated or checksum-failing file is a user error."""
    path = Path(path)
    if not path.is_file():
        raise LmlabError(f"{path} does not exist.")
    try:
        raw = path.read_bytes()
        header, data = _split_safetensors(raw)
        meta = header.get("__metadata__") or {}
        tensors = load_safetensors_bytes(raw)
    except Exception as e:  # safetensors raises its own error types for bad headers / short files
        raise LmlabError(f"{path} is corrupt or truncated ({type(e).__name__}: {str(e)[:80]}); "
                         "restore it or retrain.") from None
    if "sha256" in meta and hashlib.sha256(data).hexdigest() != meta["sha256"]:
        raise LmlabError(f"{path} fails its checksum: its tensor data changed after it was written (a damaged "
                         "or partly overwritten file); restore it or retrain.")
    return tensors, meta


def load_weights(model: torch.nn.Module, path: str | Path, assign: bool = False) -> int:
    """Load weights into `model`; return the training step stored with them (assign: see load_state_into)."""
    tensors, meta = read_weights(path)
    saved = json.loads(meta["config"]) if "config" in meta else None
    load_state_into(model, tensors, path, saved_config=saved, config_name="config.json", assign=assign)
    return int(meta.get("step", 0))


def weights_step(path: Path) -> int | None:
    """The step stored in a safetensors file's metadata (None if it is missing or unreadable)."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            return int((f.metadata() or {}).get("step", -1))
    except Exception:
        return None


def _shared_parameters(model) -> list[list[str]]:
    """The names of each parameter that several modules hold (a tied LM head and embedding)."""
    groups: dict[int, list[str]] = {}
    for name, param in model.named_parameters(remove_duplicate=False):
        groups.setdefault(id(param), []).append(name)
    return [names for names in groups.values() if len(names) > 1]


def _tie_again(model, groups: list[list[str]], loaded: dict) -> None:
    """After load_state_dict(assign=True) replaced the loaded name's parameter, point the others at it too."""
    for names in groups:
        param = model.get_parameter(next(n for n in names if n in loaded))
        for name in names:
            owner, _, attr = name.rpartition(".")
            setattr(model.get_submodule(owner), attr, param)


CHECKSUM_TAG = b"\nlmlab-sha256 "
TRAILER_LEN = len(CHECKSUM_TAG) + 64 + 1  # tag, hex digest, newline


def save_trainer_state(state: dict, path: str | Path) -> None:
    """torch.save(state) followed by a checksum trailer, written atomically."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    data = buffer.getbuffer()
    with atomic_open(path, "wb") as f:
        f.write(data)
        f.write(CHECKSUM_TAG + hashlib.sha256(data).hexdigest().encode() + b"\n")


def _verify_trailer(path: Path) -> None:
    """Check the checksum trailer of a trainer_state.pt (a file without one is read unverified)."""
    size = path.stat().st_size
    if size < TRAILER_LEN:
        return
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        f.seek(size - TRAILER_LEN)
        trailer = f.read()
        if not trailer.startswith(CHECKSUM_TAG):
            return
        f.seek(0)
        left = size - TRAILER_LEN
        while left:
            chunk = f.read(min(left, 1 << 22))
            if not chunk:
                break
            digest.update(chunk)
            left -= len(chunk)
    if digest.hexdigest().encode() != trailer[len(CHECKSUM_TAG):-1]:
        raise LmlabError(f"{path} fails its checksum: the file changed after it was written (damaged or "
                         "partly overwritten); it cannot be resumed — restore it or start a new run.")


def load_trainer_state(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise LmlabError(f"{path} does not exist; the run has no checkpoint to resume from.")
    _verify_trailer(path)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise LmlabError(f"{path} is corrupt or truncated ({type(e).__name__}); "
                         "it cannot be resumed — start a new run.") from None


def check_resumable(run_dir: str | Path, cfg=None) -> int:
    """Read a run's trainer_state.pt as a resume will; return its step.

    Lets `lmlab train --resume` refuse a corrupt checkpoint, or a config whose model no longer fits the
    checkpoint's tensors (config.yaml edited, or --model overrides), before anything in the run is rewritten.
    """
    path = Path(run_dir) / STATE
    state = load_trainer_state(path)
    if not isinstance(state, dict) or not {"step", "model", "optimizer"} <= state.keys():
        raise LmlabError(f"{path} is not an lmlab trainer state; start a new run.")
    if cfg is not None and not cfg.train.lora_rank:  # (a LoRA run's tensors are checked as they load)
        check_shapes(state["model"], cfg.model, path, state.get("config", {}).get("model"),
                     "the run's config.yaml and overrides")
    return state["step"]


def _shapes(tensors: dict) -> dict[str, tuple]:
    return {k: tuple(v.shape) for k, v in tensors.items()}


def check_shapes(tensors: dict, model_cfg, source, saved_model_cfg: dict | None, config_name: str) -> None:
    """Refuse tensors that do not fit the model `model_cfg` describes, naming `source` and the config keys that
    differ from `saved_model_cfg` (the config the tensors were written with). The model is built on the meta
    device: no memory, no time."""
    from .models import build_model

    try:
        with torch.device("meta"):
            expected = unique_state_dict(build_model(model_cfg), keep_device=True)
    except Exception:  # a family that cannot be built on the meta device is checked when loading instead
        return
    have, want = _shapes(tensors), _shapes(expected)
    if have == want:
        return
    raise LmlabError(_mismatch_message(source, have, want, saved_model_cfg, dataclasses.asdict(model_cfg),
                                       config_name))


def _mismatch_message(source, have: dict, want: dict, saved_cfg: dict | None, cfg: dict, config_name: str) -> str:
    diffs = [f"model.{k} is {saved_cfg[k]!r} there and {cfg.get(k)!r} in {config_name}"
             for k in sorted(saved_cfg or {}) if k in cfg and saved_cfg[k] != cfg[k]]
    if not diffs:
        wrong = [f"{k} {have[k]} vs {want[k]}" for k in want if k in have and have[k] != want[k]]
        missing = [k for k in want if k not in have] + [k for k in have if k not in want]
        diffs = [f"tensor {w}" for w in wrong[:2]] + [f"tensor {m} missing or unexpected" for m in missing[:2]]
    return (f"{source} was written for a different model than {config_name} describes ({'; '.join(diffs[:4])}); "
            f"restore {config_name} (or drop the --model overrides), or start a new run.")


def load_state_into(model: torch.nn.Module, tensors: dict, source, saved_config: dict | None = None,
                    config_name: str = "config.json", assign: bool = False) -> None:
    """Load a (tie-deduplicated) state dict into `model`, naming `source` if it does not fit.

    assign: the model takes the tensors themselves instead of copying them into its own (a model built only to
    be loaded: no second copy of the weights in memory, no copying time; 1.6 s of SmolLM2's 4 s load). Only
    where every dtype already matches, so the model's precision never changes; an optimizer made before would
    hold the old parameters, so the trainer copies."""
    want = _shapes(unique_state_dict(model, keep_device=True))
    have = _shapes(tensors)
    if any(k in have and have[k] != shape for k, shape in want.items()):
        cfg = dataclasses.asdict(model.cfg) if dataclasses.is_dataclass(getattr(model, "cfg", None)) else {}
        raise LmlabError(_mismatch_message(source, have, want, saved_config, cfg, config_name))
    own = model.state_dict()
    assign = assign and all(k not in own or own[k].dtype == t.dtype for k, t in tensors.items())
    shared = _shared_parameters(model)
    missing, unexpected = model.load_state_dict(tensors, strict=False, assign=assign)
    tied = {n for names in shared if any(m in tensors for m in names) for n in names}
    if assign:
        _tie_again(model, [names for names in shared if any(m in tensors for m in names)], tensors)
    if set(missing) - tied or unexpected:
        raise LmlabError(f"{source} does not match the model in {config_name} "
                         f"(missing {sorted(set(missing) - tied)[:3]}, unexpected {sorted(unexpected)[:3]}).")


def save_model_config(model_cfg, run_dir: str | Path) -> None:
    atomic_write_json(Path(run_dir) / MODEL_CONFIG, dataclasses.asdict(model_cfg))


def is_run_dir(path: str | Path) -> bool:
    path = Path(path)
    return (path / MODEL_CONFIG).is_file() and (path / WEIGHTS).is_file()


def is_ngram_file(path: str | Path) -> bool:
    """An n-gram model file: by its suffix, or an .lmbin file by its magic bytes whatever its name."""
    if not Path(path).is_file():
        return False
    from .models.ngram.binary import is_lmbin

    return Path(path).suffix in NGRAM_SUFFIXES or is_lmbin(path)


def load_model_config(run_dir: str | Path):
    from .config import build_dataclass, model_config_class

    raw = read_json(Path(run_dir) / MODEL_CONFIG)
    return build_dataclass(model_config_class(raw.get("family", "gpt")), raw, "model")


def load(path: str | Path, which: str = "best", device: str = "cpu", adapter: str | Path | None = None):
    """Load a trained model and its tokenizer from a run directory: `model, tokenizer = lmlab.load(run)`.

    which = "best" uses best.safetensors when the run kept one, else the latest weights; "last" the latest.
    An n-gram model file (.arpa, .npz or .lmbin) loads too: the NGramLM is its own tokenizer (encode / decode).
    `adapter`: a LoRA adapter directory (PEFT's files) merged into the weights at load; a bare adapter directory
    given as `path` loads onto the base run its adapter_config.json names (lmlab.lora.load_adapted).
    """
    from .models import build_model
    from .tokenizer import load_tokenizer

    run = Path(path)
    if not run.exists():
        raise LmlabError(f"{run} does not exist; give a run directory written by `lmlab train` "
                         "or an n-gram model (.arpa / .npz / .lmbin).")
    if is_ngram_file(run):
        from .models.ngram import load_ngram

        model = load_ngram(run)
        return model, model
    if not is_run_dir(run):
        if (run / "adapter_config.json").is_file() and adapter is None:
            from .lora import load_adapted

            return load_adapted(run, which, device)
        raise LmlabError(f"{run} is not a run directory (no {MODEL_CONFIG} and {WEIGHTS}); "
                         "give a directory written by `lmlab train` or an n-gram model (.arpa / .npz / .lmbin).")
    model = build_model(load_model_config(run))
    weights = run / BEST if which == "best" and (run / BEST).is_file() else run / WEIGHTS
    load_weights(model, weights, assign=True)
    if adapter is not None:
        from .lora import load_adapter, merge_lora

        load_adapter(model, adapter)
        merge_lora(model)
        model.requires_grad_(True)
    model.to(device).eval()
    return model, load_tokenizer(run / "tokenizer.json")
