"""Training throughput (tokens/s) of lmlab's GPT vs Hugging Face GPT2LMHeadModel and nanoGPT, same shapes.

    python benchmarks/train_throughput.py [--nanogpt PATH_TO_NANOGPT_CHECKOUT] [--rounds 5] [--steps 20]

Each model runs a full optimizer step (forward, loss, backward, clip 1.0, AdamW, zero_grad) on the same
random character batches. Each model lives in its own worker process, set up exactly as its own tool
runs (lmlab's step is the real `Trainer._train_step` that `lmlab train` runs, with lmlab's process
settings; nanoGPT's is its train.py inner loop), and the workers are timed in interleaved rounds; the
median step time is reported because this machine is noisy: ratios from the same run are what matter.
"""
from __future__ import annotations

import argparse
import importlib.util
import statistics
import subprocess
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
    # nanoGPT train.py's inner loop, gradient_accumulation_steps = 1
    return peer_stepper(model, optimizer, batches, lambda x, y: model(x, y)[1])


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
    return peer_stepper(model, optimizer, batches, lambda x, y: model(input_ids=x, labels=x).loss)  # HF shifts labels


def peer_stepper(model, optimizer, batches, compute_loss):
    """A peer's optimizer step on the next batch: loss, backward, clip 1.0, AdamW, zero_grad."""
    state = {"i": 0}

    def step():
        x, y = batches[state["i"] % len(batches)]
        state["i"] += 1
        loss = compute_loss(x, y)
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


def make_stepper(model, shape, nanogpt, tmp):
    batches = make_batches(shape)
    if model == "lmlab":
        return lmlab_stepper(shape, batches, tmp)
    if model == "nanoGPT":
        return nanogpt_stepper(shape, batches, nanogpt)
    return hf_stepper(shape, batches)


def worker(model, shape_name, nanogpt):
    """Serve 'N' requests on stdin: run N steps, answer with the seconds per step."""
    import warnings

    warnings.filterwarnings("ignore")
    with tempfile.TemporaryDirectory() as tmp:
        step = make_stepper(model, SHAPES[shape_name], nanogpt, tmp)
        time_steps(step, 3)  # warm-up
        print("ready", flush=True)
        for line in sys.stdin:
            print(f"time {time_steps(step, int(line))}", flush=True)


class Worker:
    """A benchmark worker process (`cmd`: a script run with --worker), answering 'run N steps' requests."""

    def __init__(self, model, cmd):
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                                     stderr=subprocess.DEVNULL)
        for line in self.proc.stdout:  # skip whatever the model prints while it is built
            if line.strip() == "ready":
                break
        else:
            raise RuntimeError(f"{model} worker failed to start")

    def run(self, steps):
        self.proc.stdin.write(f"{steps}\n")
        self.proc.stdin.flush()
        for line in self.proc.stdout:
            if line.startswith("time "):
                return float(line.split()[1])
        raise RuntimeError("worker died")

    def close(self):
        self.proc.stdin.close()
        self.proc.wait()


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--nanogpt", help="path to a nanoGPT checkout (its model.py is imported, never vendored)")
    parser.add_argument("--shapes", nargs="+", default=list(SHAPES), choices=list(SHAPES))
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=None, help="steps per round (default: 20 / 3 by shape)")
    parser.add_argument("--no-hf", action="store_true")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(args.worker, args.shapes[0], args.nanogpt)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    models = ["lmlab"] + (["nanoGPT"] if args.nanogpt else []) + ([] if args.no_hf else ["HF GPT2LMHeadModel"])
    for name in args.shapes:
        shape = SHAPES[name]
        steps = args.steps or (20 if name == "4x128" else 3)
        tokens = shape["batch_size"] * shape["block_size"]
        cmd = [sys.executable, __file__, "--shapes", name] + (["--nanogpt", args.nanogpt] if args.nanogpt else [])
        workers = {m: Worker(m, cmd + ["--worker", m]) for m in models}
        times = {m: [] for m in models}
        for _ in range(args.rounds):
            for m, w in workers.items():
                times[m].append(w.run(steps))
        for w in workers.values():
            w.close()
        print(f"\n## {name}: block {shape['block_size']}, batch {shape['batch_size']}, vocab {VOCAB}, "
              f"{args.rounds} rounds x {steps} steps, median")
        print("| model | ms/step | tokens/s | lmlab speed-up |")
        print("|---|---|---|---|")
        ours = statistics.median(times["lmlab"])
        for m, values in times.items():
            t = statistics.median(values)
            print(f"| {m} | {t * 1000:.1f} | {tokens / t:,.0f} | {t / ours:.2f}x |")
        sys.stdout.flush()


if __name__ == "__main__":
    main()
