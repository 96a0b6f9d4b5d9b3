"""nanoGPT's "CPU baby" run, lmlab vs nanoGPT, same machine, same run: final val loss and wall time.

    python benchmarks/baby_quality.py [--nanogpt PATH_TO_NANOGPT_CHECKOUT] [--out runs/bench-baby]

Settings (nanoGPT README): n_layer 4, n_head 4, n_embd 128, block 64, batch 12, 2000 iters, lr 1e-3,
lr_decay_iters 2000, dropout 0, eval_iters 20, character-level Tiny Shakespeare (first 90% train).
nanoGPT reports ~1.88 val loss. Its val loss is the mean of 20 random validation batches; lmlab's
`best val loss` is the mean of 20 fixed validation batches, and we also report lmlab's loss over the
whole validation split (the less noisy figure).
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


def run_nanogpt(path: Path) -> dict:
    data = path / "data" / "shakespeare_char"
    if not (data / "input.txt").exists():  # its prepare.py would download the text; give it ours
        shutil.copyfile(TEXT, data / "input.txt")
    subprocess.run([sys.executable, "prepare.py"], cwd=data, check=True, capture_output=True)
    start = time.time()
    proc = subprocess.run([sys.executable, "train.py", "config/train_shakespeare_char.py", "--device=cpu",
                           "--compile=False", "--eval_iters=20", "--log_interval=1", "--block_size=64",
                           "--batch_size=12", "--n_layer=4", "--n_head=4", "--n_embd=128", "--max_iters=2000",
                           "--lr_decay_iters=2000", "--dropout=0.0", "--out_dir=/tmp/nanogpt-baby-out"],
                          cwd=path, check=True, capture_output=True, text=True)
    wall = time.time() - start
    losses = re.findall(r"step (\d+): train loss [\d.]+, val loss ([\d.]+)", proc.stdout)
    return {"val_loss": float(losses[-1][1]), "best_val": min(float(v) for _, v in losses), "wall_s": wall}


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
        peer = run_nanogpt(args.nanogpt)
        print(f"| nanoGPT | {peer['val_loss']:.4f} (best {peer['best_val']:.4f}) | - | {peer['wall_s']:.1f} |")
        print(f"\nlmlab wall-time speed-up: {peer['wall_s'] / ours['wall_s']:.2f}x")


if __name__ == "__main__":
    main()
