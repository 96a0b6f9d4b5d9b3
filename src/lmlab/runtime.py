"""Where and how this process computes: the device (resolve_device), the precision (autocast_context), the
allocator setting that makes PyTorch on CPU faster (tune_allocator), and SIGINT / SIGTERM during training
(StopSignals).

PyTorch's CPU allocator calls malloc directly. glibc serves blocks above 128 KB with fresh mmap()
pages and gives them back on free, so every activation tensor of every step page-faults its memory in
again (we measured ~1,300 faults and ~3 ms of kernel time per step for a 4x128 GPT, ~10% of the step).
Keeping large blocks on the heap and never trimming it lets freed activations be reused as they are.
"""
from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import os
import signal
import sys
import threading

import torch

from .distributed import launched_world
from .errors import LmlabError

_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_THRESHOLD = -1, -2, -3
_tuned = False


def tune_allocator() -> bool:
    """Ask glibc malloc to keep freed memory for reuse (mallopt); a no-op elsewhere. Returns True if applied."""
    global _tuned
    if _tuned or not sys.platform.startswith("linux"):
        return _tuned
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        ok = (libc.mallopt(_M_MMAP_THRESHOLD, 32 * 1024 * 1024)  # glibc's maximum: blocks up to 32 MB from the heap
              and libc.mallopt(_M_TRIM_THRESHOLD, 2**31 - 1)  # never shrink the heap
              and libc.mallopt(_M_TOP_PAD, 256 * 1024 * 1024))  # grow it in large steps
    except (OSError, AttributeError):  # not glibc (musl, macOS)
        return False
    _tuned = bool(ok)
    return _tuned


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise LmlabError(f"device {name!r} was requested but this machine has no CUDA GPU; "
                         "use --train.device cpu.")
    try:
        return torch.device(name)
    except RuntimeError:
        raise LmlabError(f"unknown device {name!r}; use cpu, cuda, cuda:N or auto.") from None


PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def autocast_context(device: torch.device, precision: str):
    """fp32: nothing; bf16: autocast on CPU or GPU; fp16: autocast on a GPU (with a GradScaler, see Trainer)."""
    if precision == "fp32":
        return contextlib.nullcontext()
    if precision == "fp16" and device.type != "cuda":
        raise LmlabError("train.precision fp16 needs a CUDA GPU (with a gradient scaler); use bf16 or fp32 on CPU.")
    return torch.autocast(device.type, dtype=PRECISIONS[precision])


class StopSignals:
    """Inside `with`, SIGINT and SIGTERM only set `received` (the training loop saves a checkpoint after the step in
    progress and stops); `announce` says so on stderr. A second Ctrl-C quits at once, except under torchrun, which
    passes the terminal's Ctrl-C on once more (and kills its workers itself if they take too long). Outside the
    main thread, where Python cannot catch signals, nothing changes."""

    def __init__(self, announce: bool):
        self.announce = announce
        self.received: int | None = None
        self._previous: dict = {}

    def __enter__(self) -> "StopSignals":
        if threading.current_thread() is threading.main_thread():
            self._previous = {s: signal.signal(s, self._on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
        return self

    def __exit__(self, *exc) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)
        self._previous = {}

    def _on_signal(self, signum, frame) -> None:
        if self.received is not None and signum == signal.SIGINT and launched_world() == 1 \
                and "LOCAL_RANK" not in os.environ:
            raise KeyboardInterrupt
        self.received = signum
        if self.announce:
            print(f"\n{signal.Signals(signum).name}: saving a checkpoint after this step, then stopping "
                  "(Ctrl-C again to quit without saving)", file=sys.stderr)
