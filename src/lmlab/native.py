"""Compiled helpers: a C++ source next to the Python that calls it, built once for this CPU and loaded by ctypes.

Reads: a .cpp file (plain C++, no Python or torch headers). Writes: its shared library in ~/.cache/lmlab/kernels/
(or $XDG_CACHE_HOME/lmlab/kernels/), named by a hash of the source, the compiler and the CPU's flags, written
atomically (temp file + rename), so a changed source or another machine builds afresh and concurrent first uses
do not see a half-written file. Imports nothing heavy (no torch, no numpy): `lmlab ngram` uses it as well as the
decoding kernels (models/kernels.py). LMLAB_KERNELS=0, no compiler (or $CXX) or a platform other than Linux:
`load_library` returns None and the caller takes its NumPy / torch path.
"""
from __future__ import annotations

import contextlib
import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
from pathlib import Path

# (-fno-trapping-math lets floor() vectorize; no flag that changes what the arithmetic computes)
CXX_FLAGS = ("-O3", "-march=native", "-fno-trapping-math", "-fno-math-errno", "-shared", "-fPIC", "-std=c++17")


def cache_dir() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "lmlab" / "kernels"


def cpu_signature() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return next((line for line in f if line.startswith(("flags", "Features"))), platform.processor())
    except OSError:
        return platform.processor()


def compiler() -> str | None:
    """The C++ compiler to use ($CXX, else c++, else g++), or None where kernels are off or impossible."""
    if os.environ.get("LMLAB_KERNELS", "1") == "0" or platform.system() != "Linux":
        return None
    return shutil.which(os.environ.get("CXX", "c++")) or shutil.which("g++")


def build(source: Path, cxx: str, extra_flags: tuple = ()) -> Path:
    """The compiled library of `source` for this compiler and CPU (built now if not cached); atomic write."""
    text = source.read_bytes()
    key = hashlib.sha256(text + cxx.encode() + cpu_signature().encode() + " ".join(extra_flags).encode()).hexdigest()
    out = cache_dir() / f"{source.stem}-{key[:16]}.so"
    if out.exists():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=".so", dir=out.parent)
    os.close(fd)
    try:
        subprocess.run([cxx, *CXX_FLAGS, *extra_flags, str(source), "-o", tmp], check=True, capture_output=True,
                       timeout=120)
        os.replace(tmp, out)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return out


def load_library(source: Path, extra_flags: tuple = ()) -> ctypes.CDLL | None:
    """`source` built (or found in the cache) and loaded; None where kernels are off or the build fails."""
    cxx = compiler()
    if cxx is None:
        return None
    try:
        return ctypes.CDLL(str(build(source, cxx, extra_flags)))
    except (OSError, subprocess.SubprocessError):
        return None


class Fallback:
    """A nesting switch to the non-compiled path: inside `with switch.forced():` callers take their NumPy / torch
    path (`switch.on` is then True); for comparing the two in tests and benchmarks."""

    def __init__(self):
        self.depth = 0

    @property
    def on(self) -> bool:
        return self.depth > 0

    @contextlib.contextmanager
    def forced(self):
        self.depth += 1
        try:
            yield
        finally:
            self.depth -= 1
