"""Training throughput (tokens/s) of lmlab's GPT vs Hugging Face GPT2LMHeadModel and nanoGPT, same shapes.

    python benchmarks/train_throughput.py [--nanogpt PATH_TO_NANOGPT_CHECKOUT] [--rounds 5] [--steps 20]

Each model runs a full optimizer step (forward, loss, backward, clip 1.0, AdamW, zero_grad) on the same
random character batches. Models are measured in interleaved rounds and the median step time is
reported, because this machine is noisy; ratios from the same run are what matter.
lmlab's step is the real Trainer step (`Trainer._train_step`), the one `lmlab train` runs.
"""
from __future__ import annotations

import argparse
import importlib.util
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from lmlab.config import Config, DataConfig, TrainConfig
from lmlab.models.gpt import GPT, GPTConfig
from lmlab.train import Trainer

SHAPES = {"4x128": dict(n_layer=4, n_head=4, n_embd=128, block_size=64, batch_size=12),
          "6x384": dict(n_layer=6, n_head=6, n_embd=384, block_size=256, batch_size=12)}
VOCAB = 65


class RandomBlocks:
    """Stands in for TokenBlocks: fixed random batches, so every model sees the same tokens."""

    def __init__(self, batches):
        self.batches = batches

    def batch(self, split, index):
        return self.batches[index % len(self.batches)]


def make_batches(shape, n=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    data = torch.randint(0, VOCAB, (n, shape["batch_size"], shape["block_size"] + 1), generator=g)
    return [(d[:, :-1].contiguous(), d[:, 1:].contiguous()) for d in data]


def lmlab_stepper(shape, batches, tmp):
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=VOCAB, block_size=shape["block_size"], n_layer=shape["n_layer"],
                          n_head=shape["n_head"], n_embd=shape["n_embd"], dropout=0.0, bias=False))
    cfg = Config(model=model.cfg, data=DataConfig(dir=tmp),
                 train=TrainConfig(batch_size=shape["batch_size"], max_iters=10**9, tensorboard=False))
    trainer = Trainer(model, RandomBlocks(batches), cfg, tmp, progress=False)
    return lambda: trainer._train_step()


def nanogpt_stepper(shape, batches, path):
    spec = importlib.util.spec_from_file_location("nanogpt_model", Path(path) / "model.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    torch.manual_seed(0)
    model = module.GPT(module.GPTConfig(vocab_size=VOCAB, block_size=shape["block_size"], n_layer=shape["n_layer"],
                                        n_head=shape["n_head"], n_embd=shape["n_embd"], dropout=0.0, bias=False))
    optimizer = model.configure_optimizers(0.1, 1e-3, (0.9, 0.99), "cpu")
    state = {"i": 0}

    def step():  # nanoGPT train.py's inner loop, gradient_accumulation_steps = 1
        x, y = batches[state["i"] % len(batches)]
        state["i"] += 1
        _, loss = model(x, y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss.item()

    return step


def hf_stepper(shape, batches):
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    config = GPT2Config(vocab_size=VOCAB, n_positions=shape["block_size"], n_embd=shape["n_embd"],
                        n_layer=shape["n_layer"], n_head=shape["n_head"], resid_pdrop=0.0, embd_pdrop=0.0,
                        attn_pdrop=0.0)
    model = GPT2LMHeadModel(config)
    model.config._attn_implementation = "sdpa"
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, betas=(0.9, 0.99), weight_decay=0.1)
    state = {"i": 0}

    def step():
        x, _ = batches[state["i"] % len(batches)]
        state["i"] += 1
        loss = model(input_ids=x, labels=x).loss  # HF shifts the labels inside
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss.item()

    return step


def time_steps(step, n):
    start = time.perf_counter()
    for _ in range(n):
        step()
    return (time.perf_counter() - start) / n


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--nanogpt", help="path to a nanoGPT checkout (its model.py is imported, never vendored)")
    parser.add_argument("--shapes", nargs="+", default=list(SHAPES), choices=list(SHAPES))
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=None, help="steps per round (default: 20 / 3 by shape)")
    parser.add_argument("--no-hf", action="store_true")
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    for name in args.shapes:
        shape = SHAPES[name]
        steps = args.steps or (20 if name == "4x128" else 3)
        batches = make_batches(shape)
        tokens = shape["batch_size"] * shape["block_size"]
        with tempfile.TemporaryDirectory() as tmp:
            steppers = {"lmlab": lmlab_stepper(shape, batches, tmp)}
            if args.nanogpt:
                steppers["nanoGPT"] = nanogpt_stepper(shape, batches, args.nanogpt)
            if not args.no_hf:
                steppers["HF GPT2LMHeadModel"] = hf_stepper(shape, batches)
            for step in steppers.values():  # warm-up
                time_steps(step, 3)
            times = {k: [] for k in steppers}
            for _ in range(args.rounds):
                for key, step in steppers.items():
                    times[key].append(time_steps(step, steps))
        print(f"\n## {name}: block {shape['block_size']}, batch {shape['batch_size']}, vocab {VOCAB}, "
              f"{args.rounds} rounds x {steps} steps, median")
        print("| model | ms/step | tokens/s | lmlab speed-up |")
        print("|---|---|---|---|")
        ours = statistics.median(times["lmlab"])
        for key, values in times.items():
            t = statistics.median(values)
            print(f"| {key} | {t * 1000:.1f} | {tokens / t:,.0f} | {t / ours:.2f}x |")
        sys.stdout.flush()


if __name__ == "__main__":
    main()
