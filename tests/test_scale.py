"""Training at scale, on CPU: DDP and FSDP over 2 gloo processes give the weights of one process with gradient
accumulation 2 (same global batch); their checkpoints resume with another number of processes or strategy;
`lmlab train --nproc 2` goes through torchrun; gradient accumulation k x b equals one batch of k*b.

The 2-process runs fork this (already imported) test process, which joins them into a gloo process group as
torchrun's environment variables would: a few seconds instead of three fresh interpreters each.
"""
import os
import socket
import sys
import time

import pytest
import torch
import torch.multiprocessing as mp
from safetensors.torch import load_file

import lmlab
from lmlab.checkpoint import load_trainer_state
from lmlab.data import TokenBlocks, TokenStreams, read_meta
from lmlab.models import build_model
from lmlab.runs import resume_config
from lmlab.train import Trainer

from conftest import TINY_LSTM, cli, read_metrics, write_config
from test_train import small_cfg

TOL = 1e-5
# The learning-rate schedule ends at step 6 whatever max_iters is, so a run stopped at step 3 and resumed is
# the same run as one of 6 steps. Dropout 0: the processes' dropout masks would differ from one process's.
RUN = dict(batch_size=4, lr_decay_iters=6, warmup_iters=1, eval_interval=2, eval_iters=3, save_interval=3,
           learning_rate=1e-3, min_lr=1e-4)


def make_cfg(data_dir, model=None, **train):
    """small_cfg's tiny GPT, or the whole `model` section when it names its own family."""
    if model is None or "family" not in model:
        return small_cfg(data_dir, model=model, **train)
    cfg = small_cfg(data_dir, **train)
    return lmlab.load_config(None, {**{f"model.{k}": str(v) for k, v in model.items()},
                                    **{f"train.{k}": str(v) for k, v in vars(cfg.train).items() if v is not None},
                                    "data.dir": str(data_dir)})


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank, world, port, data_dir, run, train, resume, model):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), LOCAL_RANK=str(rank),
                      WORLD_SIZE=str(world), LOCAL_WORLD_SIZE=str(world))
    torch.set_num_threads(1)
    overrides = {f"train.{k}": str(v) for k, v in train.items()}
    cfg = resume_config(run, overrides) if resume else make_cfg(data_dir, model=model, **train)
    lmlab.train(cfg, run, resume=resume, progress=False)


def train_processes(world, data_dir, run, resume=False, model=None, **train):
    """`lmlab.train` in `world` processes (what torchrun --nproc_per_node world would start)."""
    if world == 1:
        cfg = resume_config(run, {f"train.{k}": str(v) for k, v in train.items()}) if resume else \
            make_cfg(data_dir, model=model, **train)
        return lmlab.train(cfg, run, resume=resume, progress=False)
    method = "fork" if sys.platform.startswith("linux") else "spawn"
    context = mp.start_processes(_worker, args=(world, _free_port(), data_dir, run, train, resume, model),
                                 nprocs=world, start_method=method, join=False)
    deadline = time.monotonic() + 300
    while not context.join(timeout=1):  # raises if a process failed
        if time.monotonic() > deadline:
            for p in context.processes:
                p.kill()
            raise AssertionError(f"{world}-process training still running after 300 s (a hang)")


def losses(run):
    return [(int(r["step"]), r["train_loss"], r["val_loss"]) for r in read_metrics(run / "metrics.csv")]


def assert_same_run(run, ref, upto=None):
    """Train losses step by step and (where both evaluated) val losses within TOL; weights within TOL."""
    got = {s: (t, v) for s, t, v in losses(run)}
    want = {s: (t, v) for s, t, v in losses(ref)}
    steps = sorted(s for s in want if upto is None or s <= upto)
    assert sorted(got) == steps  # each step logged once: only rank 0 writes metrics.csv
    for s in steps:
        for a, b in zip(got[s], want[s]):
            if a and b:
                assert float(a) == pytest.approx(float(b), abs=TOL), (s, got[s], want[s])
    a, b = load_file(run / "model.safetensors"), load_file(ref / "model.safetensors")
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=TOL, msg=k)


@pytest.fixture(scope="module")
def reference(char_data, tmp_path_factory):
    """One process, grad_accum 2: 3 steps and 6 steps (the first 3 of which are the 3-step run)."""
    base = tmp_path_factory.mktemp("reference")
    for steps in (3, 6):
        lmlab.train(small_cfg(char_data, max_iters=steps, grad_accum=2, **RUN), base / f"ref{steps}", progress=False)
    return base


def test_ddp_two_processes_equal_one_process_with_grad_accum_2_and_resume(char_data, reference, tmp_path):
    run = tmp_path / "ddp"
    train_processes(2, char_data, run, strategy="ddp", max_iters=3, **RUN)
    assert_same_run(run, reference / "ref3")
    state = load_trainer_state(run / "trainer_state.pt")
    assert state["world_size"] == 2 and state["strategy"] == "ddp" and state["global_batch"] == 8
    assert len(state["rng_cpu_ranks"]) == 2
    train_processes(2, char_data, run, resume=True, max_iters=6)  # resume the 2-process run with 2 processes
    assert_same_run(run, reference / "ref6")
    assert not [p for p in run.iterdir() if p.name.startswith(".")]  # no temp files from any rank


def test_fsdp_two_processes_equal_one_process_and_resume_with_one(char_data, reference, tmp_path):
    run = tmp_path / "fsdp"
    train_processes(2, char_data, run, strategy="fsdp", max_iters=3, **RUN)
    assert_same_run(run, reference / "ref3")
    state = load_trainer_state(run / "trainer_state.pt")
    assert state["strategy"] == "fsdp" and isinstance(next(iter(state["optimizer"]["state"])), int)
    # The full-state checkpoint of 2 FSDP processes resumes in one process (grad_accum 2 keeps the global batch).
    train_processes(1, char_data, run, resume=True, max_iters=6, grad_accum=2)
    assert_same_run(run, reference / "ref6")


def test_fsdp_resumes_a_one_process_checkpoint(char_data, reference, tmp_path):
    import shutil

    run = tmp_path / "grow"
    shutil.copytree(reference / "ref3", run)
    train_processes(2, char_data, run, resume=True, max_iters=6, grad_accum=1, strategy="fsdp")
    assert_same_run(run, reference / "ref6")
    assert load_trainer_state(run / "trainer_state.pt")["world_size"] == 2


def test_recurrent_model_under_ddp_reads_its_own_streams(char_data, tmp_path):
    """TokenStreams are cut per process: 2 processes x batch 4 = one process with batch 8 (8 streams), and the
    hidden state each process carries survives a resume."""
    model = {**TINY_LSTM, "dropout": 0.0}
    kw = dict(lr_decay_iters=4, warmup_iters=1, eval_interval=2, eval_iters=2, save_interval=2,
              learning_rate=3e-3, min_lr=3e-4)
    lmlab.train(make_cfg(char_data, model=model, max_iters=4, batch_size=8, **kw), tmp_path / "one", progress=False)
    run = tmp_path / "two"
    train_processes(2, char_data, run, model=model, strategy="ddp", max_iters=2, batch_size=4, **kw)
    state = load_trainer_state(run / "trainer_state.pt")
    assert len(state["carried_ranks"]) == 2 and state["carried_ranks"][0]
    train_processes(2, char_data, run, resume=True, max_iters=4)
    assert_same_run(run, tmp_path / "one")

    full = TokenStreams(char_data, 32, 8)
    halves = [TokenStreams(char_data, 32, 4).shard(r, 2) for r in range(2)]
    for index in (0, 1, 7):
        x, y, reset = full.batch("train", index)
        parts = [h.batch("train", index) for h in halves]
        assert torch.equal(torch.cat([p[0] for p in parts]), x) and torch.equal(torch.cat([p[1] for p in parts]), y)
        assert all(bool(p[2]) == bool(reset) for p in parts)


def test_ddp_processes_stop_together_at_a_time_budget(char_data, tmp_path):
    """train.max_seconds under DDP: the steps' time is all-reduced, so both processes stop after the same step
    (a process that stopped alone would leave the other waiting in an all-reduce: the deadline would fail it)."""
    run = tmp_path / "budget"
    train_processes(2, char_data, run, strategy="ddp", max_iters=1_000_000, max_seconds=1.5, eval_interval=100_000,
                    batch_size=4, warmup_iters=1, eval_iters=2)
    state = load_trainer_state(run / "trainer_state.pt")
    steps = [s for s, t, v in losses(run) if t]
    assert 1 < state["step"] == steps[-1] < 1_000_000 and state["elapsed"] >= 1.5
    assert losses(run)[-1][2]  # evaluated at the last step


def test_cli_nproc_runs_torchrun_with_rank_0_writing(char_data, tmp_path):
    cfg = write_config(tmp_path / "c.yaml", char_data, model={"dropout": 0.0},
                       train={"max_iters": 2, "eval_interval": 2, "eval_iters": 2, "batch_size": 4,
                              "tensorboard": False})
    run = tmp_path / "run"
    r = cli("train", "--config", cfg, "--out", run, "--nproc", "2", "--train.strategy", "ddp", timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.count("done: step 2") == 1  # one summary, from rank 0
    assert r.stderr.count("step 2: val loss") == 1  # one progress bar
    assert [int(row["step"]) for row in read_metrics(run / "metrics.csv")] == [0, 1, 2]
    state = load_trainer_state(run / "trainer_state.pt")
    assert state["world_size"] == 2 and state["global_batch"] == 8


def test_nproc_must_be_positive(tmp_path, capsys):
    from conftest import run_main

    code, _, err = run_main(["train", "--config", "x.yaml", "--nproc", "0"], capsys)
    assert code == 2 and "--nproc must be >= 1" in err


def test_strategy_single_under_torchrun_is_refused(monkeypatch):
    from lmlab import distributed
    from lmlab.errors import LmlabError

    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(LmlabError, match="strategy is single"):
        distributed.setup("single", "cpu")
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert distributed.setup("fsdp", "cpu").world == 1  # one process: the same config runs, unwrapped


# ----------------------------------------------------------------------------------- gradient accumulation

class Micro:
    """Micro-batch i of step s = the i-th of k slices of full batch s: grad_accum k sees exactly the full batches."""

    def __init__(self, full: TokenBlocks, k: int):
        self.full, self.k = full, k

    def batch(self, split, index):
        if split == "val":
            return self.full.batch(split, index)
        x, y = self.full.batch(split, index // self.k)
        n, i = len(x) // self.k, index % self.k
        return x[i * n:(i + 1) * n].contiguous(), y[i * n:(i + 1) * n].contiguous()


@pytest.mark.parametrize("k", [2, 4])
def test_grad_accumulation_k_micro_batches_equal_one_batch_of_k_times_b(char_data, tmp_path, k):
    """k x micro-batch 16/k and one batch of 16 give the same updates (fp32, 5 AdamW steps, weights within 1e-5)."""
    weights, curves = {}, {}
    for accum in (1, k):
        cfg = small_cfg(char_data, max_iters=5, batch_size=16 // accum, grad_accum=accum, keep_best=False,
                        learning_rate=1e-3, min_lr=1e-4, eval_interval=5)
        cfg.model.vocab_size = read_meta(char_data)["vocab_size"]
        torch.manual_seed(3)
        model = build_model(cfg.model)
        init = {n: p.detach().clone() for n, p in model.named_parameters()}
        full = TokenBlocks(char_data, cfg.model.block_size, 16, cfg.train.seed)
        Trainer(model, full if accum == 1 else Micro(full, accum), cfg, tmp_path / str(accum), progress=False).fit()
        weights[accum] = {n: p.detach().clone() for n, p in model.named_parameters()}
        curves[accum] = [float(r["train_loss"]) for r in read_metrics(tmp_path / str(accum) / "metrics.csv")
                         if r["train_loss"]]
    assert curves[k] == pytest.approx(curves[1], abs=TOL)
    for name, w in weights[1].items():
        assert (w - init[name]).abs().max() > 1e-4, name  # the steps moved every weight: a real comparison
        torch.testing.assert_close(weights[k][name], w, rtol=0, atol=TOL, msg=name)
