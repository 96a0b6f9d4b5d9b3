"""Process-level settings that make PyTorch on CPU faster; applied by the Trainer and the CLI.

PyTorch's CPU allocator calls malloc directly. glibc serves blocks above 128 KB with fresh mmap()
pages and gives them back on free, so every activation tensor of every step page-faults its memory in
again (we measured ~1,300 faults and ~3 ms of kernel time per step for a 4x128 GPT, ~10% of the step).
Keeping large blocks on the heap and never trimming it lets freed activations be reused as they are.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import sys

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
