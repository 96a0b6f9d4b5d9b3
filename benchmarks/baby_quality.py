"""nanoGPT's "CPU baby" run, lmlab vs nanoGPT, same machine, same run: final val loss and wall time.

    python benchmarks/baby_quality.py [--nanogpt PATH_TO_NANOGPT_CHECKOUT] [--out runs/bench-baby]

Settings (nanoGPT README): n_layer 4, n_head 4, n_embd 128, block 64, batch 12, 2000 iters, lr 1e-3,
lr_decay_iters 2000, dropout 0, eval_iters 20, character-level Tiny Shakespeare (first 90% train).
nanoGPT reports ~1.88 val loss. Its val loss is the mean of 20 random validation batches; lmlab's
`best val loss` is the mean of 20 fixed validation batches. Both are noisy (about +-0.02), so we
also score both final models on the whole validation split with the same procedure (`lmlab eval`;
nanoGPT's weights load into lmlab's GPT unchanged, the architectures being the same).
"""
from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TEXT = REPO / "data" / "tinyshakespeare.txt"


def run_lmlab(out: Path) -> dict:
    data_dir, run_dir = out / "data", out / "lmlab"
    lmlab = [sys.executable, "-m", "lmlab.cli"]
    subprocess.run(lmlab + ["prepare", str(TEXT), "--out", str(data_dir), "--quiet"], check=True)
    shutil.rmtree(run_dir, ignore_errors=True)
    start = time.time()
    proc = subprocess.run(lmlab + ["train", "--config", str(REPO / "configs/shakespeare-char-baby.yaml"),
                                   "--data.dir", str(data_dir), "--out", str(run_dir), "--quiet"],
                          check=True, capture_output=True, text=True)
    wall = time.time() - start
    best = float(re.search(r"best val loss ([\d.]+)", proc.stdout).group(1))
    evaluation = subprocess.run(lmlab + ["eval", str(run_dir), "--data", str(data_dir / "val.bin")],
                                check=True, capture_output=True, text=True).stdout
    full = float(re.search(r"cross_entropy\s+([\d.]+)", evaluation).group(1))
    return {"val_loss": best, "full_val": full, "wall_s": wall}


def write_nanogpt_data(path: Path) -> None:
    """What nanoGPT's data/shakespeare_char/prepare.py writes (it would download the text; we give it ours)."""
    import pickle

    import numpy as np

    text = TEXT.read_text(encoding="utf-8")
    chars = sorted(set(text))
    stoi = {c: i for i, c in enumerate(chars)}
    ids = np.array([stoi[c] for c in text], dtype=np.uint16)
    cut = int(len(text) * 0.9)
    data = path / "data" / "shakespeare_char"
    ids[:cut].tofile(data / "train.bin")
    ids[cut:].tofile(data / "val.bin")
    with open(data / "meta.pkl", "wb") as f:  # nanoGPT reads its vocabulary from this pickle
        pickle.dump({"vocab_size": len(chars), "itos": dict(enumerate(chars)), "stoi": stoi}, f)


def nanogpt_full_val_loss(ckpt_path: Path, data_dir: Path) -> float:
    """Load nanoGPT's final weights into lmlab's GPT (same architecture) and score the whole val split
    exactly as `lmlab eval` scores ours."""
    import torch

    from lmlab.data import load_split
    from lmlab.metrics import evaluate_ids
    from lmlab.models.gpt import GPT, GPTConfig
    from lmlab.tokenizer import load_tokenizer

    ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=True)
    args = ckpt["model_args"]
    model = GPT(GPTConfig(vocab_size=args["vocab_size"], block_size=args["block_size"], n_layer=args["n_layer"],
                          n_head=args["n_head"], n_embd=args["n_embd"], bias=args["bias"]))
    rename = {"transformer.": "", "h.": "blocks.", "c_attn": "qkv", "c_proj": "proj", "c_fc": "fc"}
    state = {}
    for name, tensor in ckpt["model"].items():
        for old, new in rename.items():
            name = name.replace(old, new)
        state[name] = tensor
    model.load_state_dict(state)
    model.eval()
    return evaluate_ids(model, load_tokenizer(data_dir / "tokenizer.json"), load_split(data_dir, "val")).cross_entropy


def run_nanogpt(path: Path, data_dir: Path) -> dict:
    write_nanogpt_data(path)
    out = Path("/tmp/nanogpt-baby-out")
    start = time.time()
    proc = subprocess.run([sys.executable, "train.py", "config/train_shakespeare_char.py", "--device=cpu",
                           "--compile=False", "--eval_iters=20", "--log_interval=1", "--block_size=64",
                           "--batch_size=12", "--n_layer=4", "--n_head=4", "--n_embd=128", "--max_iters=2000",
                           "--lr_decay_iters=2000", "--dropout=0.0", f"--out_dir={out}"],
                          cwd=path, check=True, capture_output=True, text=True)
    wall = time.time() - start
    losses = re.findall(r"step (\d+): train loss [\d.]+, val loss ([\d.]+)", proc.stdout)
    # nanoGPT keeps the checkpoint of its best val estimate; with a falling loss that is step 2000.
    return {"val_loss": float(losses[-1][1]), "full_val": nanogpt_full_val_loss(out / "ckpt.pt", data_dir),
            "wall_s": wall}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--nanogpt", type=Path, help="path to a nanoGPT checkout")
    parser.add_argument("--out", type=Path, default=REPO / "runs" / "bench-baby")
    args = parser.parse_args()
    ours = run_lmlab(args.out)
    print("| trainer | val loss (20 batches) | val loss (whole split) | wall time (s) |")
    print("|---|---|---|---|")
    print(f"| lmlab | {ours['val_loss']:.4f} | {ours['full_val']:.4f} | {ours['wall_s']:.1f} |")
    if args.nanogpt:
        peer = run_nanogpt(args.nanogpt, args.out / "data")
        print(f"| nanoGPT | {peer['val_loss']:.4f} | {peer['full_val']:.4f} | {peer['wall_s']:.1f} |")
        print(f"\nlmlab wall-time speed-up: {peer['wall_s'] / ours['wall_s']:.2f}x")


if __name__ == "__main__":
    main()
