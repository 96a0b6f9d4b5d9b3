"""Training throughput of lmlab's LSTM LM vs a PyTorch word_language_model-style loop, same shapes.

    python benchmarks/lstm_throughput.py [--shapes small char medium] [--rounds 5]

The baseline is what PyTorch's examples/word_language_model does: nn.Embedding -> nn.LSTM -> nn.Linear,
the hidden state carried across batches and detached ("repackage_hidden"), cross-entropy, backward, clip,
optimizer step. Both sides use the same fused AdamW (the example's hand-written SGD would only measure a
different optimizer), the same truncated-BPTT batches, dropout 0.2. lmlab's step is the real
`Trainer._train_step` that `lmlab train` runs. Each side lives in its own worker process and the workers
are timed in interleaved rounds; the median is reported (this machine is noisy: same-run ratios matter).
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile

import torch
import torch.nn as nn
import torch.nn.functional as F

from lmlab.config import Config, DataConfig, TrainConfig
from lmlab.models.rnn import RNNLM, RNNConfig
from lmlab.train import Trainer
from train_throughput import RandomBlocks, Worker, time_steps

SHAPES = {  # Zaremba et al. 2014 small / medium (word level, 10k vocabulary), char-rnn-like char model
    "small": dict(n_layer=2, n_hidden=200, vocab=10000, bptt=35, batch_size=20),
    "char": dict(n_layer=2, n_hidden=512, vocab=65, bptt=100, batch_size=32),
    "medium": dict(n_layer=2, n_hidden=650, vocab=10000, bptt=35, batch_size=20),
}
DROPOUT = 0.2


def make_batches(shape, n=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    data = torch.randint(0, shape["vocab"], (n, shape["batch_size"], shape["bptt"] + 1), generator=g)
    return [(d[:, :-1].contiguous(), d[:, 1:].contiguous(), torch.tensor(i == 0)) for i, d in enumerate(data)]


def lmlab_stepper(shape, batches, tmp):
    torch.manual_seed(0)
    model = RNNLM(RNNConfig(cell="lstm", vocab_size=shape["vocab"], n_embd=shape["n_hidden"],
                            n_hidden=shape["n_hidden"], n_layer=shape["n_layer"], block_size=shape["bptt"],
                            dropout=DROPOUT))
    cfg = Config(model=model.cfg, data=DataConfig(dir=tmp),
                 train=TrainConfig(batch_size=shape["batch_size"], max_iters=10**9, tensorboard=False,
                                   grad_clip=0.25, weight_decay=0.0))
    trainer = Trainer(model, RandomBlocks(batches), cfg, tmp, progress=False)

    def step():
        loss = trainer._train_step()
        trainer.step += 1  # next batch: the streams continue, the hidden state is carried
        return loss

    return step


class PlainLSTM(nn.Module):
    """word_language_model's RNNModel (LSTM branch)."""

    def __init__(self, vocab, hidden, layers):
        super().__init__()
        self.drop = nn.Dropout(DROPOUT)
        self.encoder = nn.Embedding(vocab, hidden)
        self.rnn = nn.LSTM(hidden, hidden, layers, dropout=DROPOUT, batch_first=True)
        self.decoder = nn.Linear(hidden, vocab)

    def forward(self, x, hidden):
        out, hidden = self.rnn(self.drop(self.encoder(x)), hidden)
        return self.decoder(self.drop(out)), hidden


def plain_stepper(shape, batches):
    torch.manual_seed(0)
    model = PlainLSTM(shape["vocab"], shape["n_hidden"], shape["n_layer"]).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.0, fused=True)
    state = {"i": 0, "hidden": None}

    def step():
        x, y, reset = batches[state["i"] % len(batches)]
        state["i"] += 1
        hidden = None if bool(reset) else state["hidden"]
        logits, hidden = model(x, hidden)
        state["hidden"] = tuple(h.detach() for h in hidden)  # repackage_hidden
        loss = F.cross_entropy(logits.reshape(-1, logits.size(-1)), y.reshape(-1))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 0.25)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss.item()

    return step


def worker(model, shape_name):
    import warnings

    warnings.filterwarnings("ignore")
    with tempfile.TemporaryDirectory() as tmp:
        shape = SHAPES[shape_name]
        batches = make_batches(shape)
        step = lmlab_stepper(shape, batches, tmp) if model == "lmlab" else plain_stepper(shape, batches)
        time_steps(step, 3)  # warm-up
        print("ready", flush=True)
        for line in sys.stdin:
            print(f"time {time_steps(step, int(line))}", flush=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shapes", nargs="+", default=["small", "char"], choices=list(SHAPES))
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=10, help="steps per round")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(args.worker, args.shapes[0])
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    models = ["lmlab", "nn.LSTM loop"]
    for name in args.shapes:
        shape = SHAPES[name]
        tokens = shape["batch_size"] * shape["bptt"]
        workers = {m: Worker(m, [sys.executable, __file__, "--shapes", name, "--worker", m]) for m in models}
        times = {m: [] for m in models}
        for _ in range(args.rounds):
            for m, w in workers.items():
                times[m].append(w.run(args.steps))
        for w in workers.values():
            w.close()
        print(f"\n## {name}: LSTM {shape['n_layer']}x{shape['n_hidden']}, vocab {shape['vocab']}, BPTT {shape['bptt']}, "
              f"batch {shape['batch_size']}, {args.rounds} rounds x {args.steps} steps, median")
        print("| model | ms/step | tokens/s | lmlab speed-up |")
        print("|---|---|---|---|")
        ours = statistics.median(times["lmlab"])
        for m, values in times.items():
            t = statistics.median(values)
            print(f"| {m} | {t * 1000:.1f} | {tokens / t:,.0f} | {t / ours:.2f}x |")
        sys.stdout.flush()


if __name__ == "__main__":
    main()
