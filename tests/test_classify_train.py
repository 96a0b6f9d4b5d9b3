"""`lmlab classify train` goes through the same config -> lmlab.train.train path as every model: a run stopped
(at step k, or by SIGINT) and resumed with `--resume` equals the uninterrupted run, loss for loss and weight for
weight; `--nproc 2` trains in two gloo processes (through torchrun) like `lmlab train --nproc 2`; and --resume of
a run that is not a classifier's is one clear sentence (exit 2)."""
import json
import os
import re
import signal
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from lmlab.checkpoint import load_trainer_state
from lmlab.tasks.classify import load_classifier
from lmlab.tasks.labeled import read_labeled, write_tsv

from conftest import ROOT, cli, read_metrics, run_main

TINY = ["--model", "lstm", "--batch-size", "16", "--lr", "3e-2", "--model.n_embd", "16", "--model.n_hidden", "16",
        "--train.tensorboard", "false", "--quiet"]


@pytest.fixture(scope="module")
def reviews(tmp_path_factory) -> dict:
    """128 training and 40 validation reviews of data/rt-polarity (a seeded sample) as TSV files."""
    texts, labels = read_labeled(ROOT / "data" / "rt-polarity")
    order = np.random.default_rng(11).permutation(len(texts))
    out = tmp_path_factory.mktemp("reviews")
    for name, rows in (("train", order[:128]), ("val", order[128:168])):
        write_tsv(out / f"{name}.tsv", [texts[i] for i in rows], [labels[i] for i in rows])
    return {"train": out / "train.tsv", "val": out / "val.tsv"}


def data_flags(reviews) -> list:
    return ["--train", reviews["train"], "--val", reviews["val"]]


def assert_same_run(run, ref):
    """Every logged train / val loss and every weight are the same; so are the validation metrics."""
    def losses(path):
        return [(r["step"], r["train_loss"], r["val_loss"]) for r in read_metrics(path / "metrics.csv")]

    assert losses(run) == losses(ref)
    a, b = load_file(run / "model.safetensors"), load_file(ref / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    info = lambda path: json.loads((path / "classify.json").read_text())["val_metrics"]  # noqa: E731
    assert info(run) == info(ref)


def test_stopped_then_resumed_equals_the_uninterrupted_run(reviews, tmp_path, capsys):
    # 8 steps an epoch; the schedule ends at step 16 whatever max_iters is, so 8 steps then 8 more are one run.
    schedule = ["--epochs", "2", "--train.lr_decay_iters", "16", "--train.warmup_iters", "1"]
    code, out, err = run_main(["classify", "train", *data_flags(reviews), *TINY, *schedule, "--out", tmp_path / "full"],
                              capsys)
    assert code == 0, err
    code, out, err = run_main(["classify", "train", *data_flags(reviews), *TINY, *schedule, "--train.max_iters", "8",
                               "--out", tmp_path / "part"], capsys)
    assert code == 0 and "8 steps" in out, err
    cfg = (tmp_path / "part" / "config.yaml").read_text()
    assert f"dir: {tmp_path / 'part' / 'data'}" in cfg  # the run's config points at its prepared data
    code, out, err = run_main(["classify", "train", "--resume", tmp_path / "part", "--train.max_iters", "16",
                               "--quiet"], capsys)
    assert code == 0, err
    assert "done: lstm classifier" in out and "16 steps" in out and f"run saved in {tmp_path / 'part'}" in out
    assert_same_run(tmp_path / "part", tmp_path / "full")


@pytest.mark.skipif(not hasattr(os, "fork"), reason="the interrupted run is a forked copy of this process")
def test_sigint_saves_a_checkpoint_and_the_resumed_run_equals_the_uninterrupted_one(reviews, tmp_path, capsys):
    run, flags = tmp_path / "run", [*data_flags(reviews), *TINY, "--train.lr_decay_iters", "400",
                                    "--train.warmup_iters", "1", "--train.save_interval", "2"]
    err_r, err_w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: train "forever" until SIGINT, never return into pytest
        code = 1
        try:
            os.close(err_r)
            sys.stderr = os.fdopen(err_w, "w", buffering=1)
            from lmlab.cli import main

            code = main(["classify", "train", *map(str, flags), "--epochs", "50", "--out", str(run)])
        except SystemExit as e:
            code = e.code
        finally:
            os._exit(code)
    os.close(err_w)
    deadline = time.monotonic() + 60
    while not (run / "trainer_state.pt").exists() and time.monotonic() < deadline:
        time.sleep(0.02)
    os.kill(pid, signal.SIGINT)
    _, status = os.waitpid(pid, 0)
    with os.fdopen(err_r) as f:
        err = f.read()
    assert os.waitstatus_to_exitcode(status) == 130, err
    assert "Traceback" not in err and "SIGINT received: stopped after step" in err
    assert f"continue with `lmlab classify train --resume {run}`" in err
    step = int(re.search(r"after step (\d+)", err)[1])
    assert load_trainer_state(run / "trainer_state.pt")["step"] == step

    more = ["--train.max_iters", str(step + 3)]
    code, _, err = run_main(["classify", "train", "--resume", run, *more, "--quiet"], capsys)
    assert code == 0, err
    code, _, err = run_main(["classify", "train", *flags, "--epochs", "50", *more, "--out", tmp_path / "ref"], capsys)
    assert code == 0, err
    assert_same_run(run, tmp_path / "ref")


def test_two_gloo_processes_train_a_classifier_that_loads(reviews, tmp_path, capsys):
    """--nproc 2 (DDP over gloo, no dropout) trains what one process with grad_accum 2 trains."""
    run = tmp_path / "run"
    flags = [*data_flags(reviews), *TINY, "--epochs", "1", "--dropout", "0"]
    r = cli("classify", "train", *flags, "--out", run, "--nproc", "2", "--train.strategy", "ddp", timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.count("done: lstm classifier") == 1 and "validation accuracy" in r.stdout
    state = load_trainer_state(run / "trainer_state.pt")
    assert state["world_size"] == 2 and state["global_batch"] == 32
    assert [int(row["step"]) for row in read_metrics(run / "metrics.csv")] == list(range(9))  # rank 0 alone logs
    model, tokenizer, info = load_classifier(run)
    assert info["labels"] == ["neg", "pos"] and set(info["val_metrics"]) >= {"accuracy", "macro_f1"}
    code, _, err = run_main(["classify", "train", *flags, "--train.grad_accum", "2", "--out", tmp_path / "one"], capsys)
    assert code == 0, err
    a, b = load_file(run / "model.safetensors"), load_file(tmp_path / "one" / "model.safetensors")
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=1e-5, msg=k)


def test_resume_of_a_run_that_is_not_a_classifier(tiny_run, reviews, tmp_path, capsys):
    def one_sentence(code, out, err, *needles):
        assert code == 2 and "Traceback" not in err and len(err.strip().splitlines()) == 1, err
        for needle in needles:
            assert needle in err, (needle, err)

    one_sentence(*run_main(["classify", "train", "--resume", tiny_run["run"]], capsys),
                 "is not a classifier run (no classify.json)", "--resume takes a run directory written by "
                 "`lmlab classify train`")
    one_sentence(*run_main(["classify", "train", "--resume", tmp_path / "nope"], capsys), "does not exist")
    one_sentence(*run_main(["classify", "train", "--resume", tmp_path, *data_flags(reviews)], capsys),
                 "leave out --train")
    one_sentence(*run_main(["classify", "train", "--model", "lstm", "--out", tmp_path / "r"], capsys),
                 "needs --train DATA and --out RUN_DIR")
    one_sentence(*run_main(["classify", "train", *data_flags(reviews), "--out", tmp_path / "r", "--nproc", "0"],
                           capsys), "--nproc must be >= 1")
    assert not (tmp_path / "r").exists()
