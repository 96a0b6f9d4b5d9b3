"""Training under faults: SIGKILL at random moments (checkpoint writes included) then resume, SIGINT / SIGTERM,
damaged checkpoints, a config edited into another architecture, a full disk, a run directory we may not write.

Killed trainings run in forked copies of this test process (no interpreter start-up per attempt); the SIGTERM,
disk-full and interrupted-CLI cases run the real `lmlab` command.
"""
import json
import os
import random
import re
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback

import pytest
import torch
import yaml

import lmlab
from lmlab.checkpoint import load_trainer_state, read_weights
from lmlab.errors import LmlabError
from lmlab.runs import resume_config

from conftest import ENV, LMLAB, read_metrics, run_main, tree, write_config
from test_train import no_temp_files, small_cfg

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="the fault tests fork the test process")


def fork(fn) -> int:
    """Run fn() in a forked child; its exit status is 0 when fn returns, SystemExit's code, or 1 on an error."""
    pid = os.fork()
    if pid == 0:  # the child: never return into pytest
        code = 1
        try:
            fn()
            code = 0
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else 1
        except BaseException:
            traceback.print_exc()
        finally:
            os._exit(code)
    return pid


def wait(pid) -> int:
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


def curve(run):
    return [(r["step"], r["train_loss"], r["val_loss"]) for r in read_metrics(run / "metrics.csv")]


def checkpoint_temp_files(run) -> set[str]:
    """Temp files of trainer_state.pt / model.safetensors writes in progress (or left by a kill)."""
    if not run.is_dir():
        return set()
    return {e.name for e in os.scandir(run) if e.name.endswith(".tmp")
            and e.name.startswith((".trainer_state.pt.", ".model.safetensors."))}


def kill_during_a_checkpoint_write(pid, run, limit=10.0) -> bool:
    """SIGKILL `pid` while it writes a checkpoint file: on seeing a new temp file, stop the process, check the
    file is still there (the rename has not happened), then kill it. True if that happened within `limit` s."""
    stale = checkpoint_temp_files(run)  # left by an earlier kill; the resuming child deletes them
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        if checkpoint_temp_files(run) - stale:
            os.kill(pid, signal.SIGSTOP)
            done, status = os.waitpid(pid, os.WUNTRACED)
            if done and not os.WIFSTOPPED(status):
                raise AssertionError(f"the training ended before it could be killed (status {status})")
            if checkpoint_temp_files(run) - stale:
                os.kill(pid, signal.SIGKILL)
                return True
            os.kill(pid, signal.SIGCONT)
        time.sleep(0.0005)
    os.kill(pid, signal.SIGKILL)
    return False


def kill_after_checkpoints(pid, run, n: int, jitter: float, limit=30.0) -> None:
    """SIGKILL `pid` `jitter` seconds after it has written `n` more checkpoints (each one a rename of a new
    trainer_state.pt). Counting steps, not seconds, bounds the progress one attempt makes on a fast machine."""
    def inode():
        try:
            return os.stat(run / "trainer_state.pt").st_ino
        except FileNotFoundError:
            return None

    seen, count = inode(), 0
    deadline = time.monotonic() + limit
    while count < n and time.monotonic() < deadline:
        now = inode()
        if now != seen:
            seen, count = now, count + 1
        time.sleep(0.0005)
    time.sleep(jitter)
    os.kill(pid, signal.SIGKILL)


def test_sigkill_at_random_moments_then_resume_equals_the_uninterrupted_run(char_data, tmp_path):
    kw = dict(model={"dropout": 0.1}, max_iters=50, lr_decay_iters=50, eval_interval=5, save_interval=1,
              eval_iters=2, batch_size=4)
    lmlab.train(small_cfg(char_data, **{**kw, "save_interval": 50}), tmp_path / "clean", progress=False)
    run = tmp_path / "killed"

    def attempt():
        resume = (run / "trainer_state.pt").exists()
        cfg = resume_config(run) if resume else small_cfg(char_data, **kw)
        lmlab.train(cfg, run, resume=resume, progress=False)

    rng = random.Random(10)
    kills, mid_write = 0, 0
    while kills < 10:
        pid = fork(attempt)
        if kills % 2:  # every other kill lands inside a checkpoint write
            mid_write += kill_during_a_checkpoint_write(pid, run)
        else:  # 1 to 3 steps on, somewhere in the step after
            kill_after_checkpoints(pid, run, rng.randint(1, 3), rng.uniform(0.0, 0.01))
        assert wait(pid) == -signal.SIGKILL, "the training finished before all ten kills"
        kills += 1
        if (run / "trainer_state.pt").exists():  # never a torn or unreadable checkpoint
            step = load_trainer_state(run / "trainer_state.pt")["step"]  # checksum verified
            _, meta = read_weights(run / "model.safetensors")
            assert int(meta["step"]) in (step - 1, step)  # weights are renamed in after the state
            if (run / "best.safetensors").exists():
                read_weights(run / "best.safetensors")
    assert mid_write >= 4  # the checkpoint-write kills did land mid-write
    assert wait(fork(attempt)) == 0
    assert curve(run) == curve(tmp_path / "clean")  # step by step, train and val
    clean, _ = read_weights(tmp_path / "clean" / "model.safetensors")
    killed, _ = read_weights(run / "model.safetensors")
    assert all(torch.equal(clean[k], killed[k]) for k in clean)
    assert no_temp_files(run)


def test_sigterm_saves_a_checkpoint_and_exits_cleanly(char_data, tmp_path):
    cfg = write_config(tmp_path / "c.yaml", char_data,
                       train={"max_iters": 100000, "save_interval": 5, "eval_interval": 100000, "eval_iters": 2,
                              "tensorboard": False})
    run = tmp_path / "run"
    proc = subprocess.Popen([*LMLAB, "train", "--config", str(cfg), "--out", str(run), "--quiet"], env=ENV,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while not (run / "trainer_state.pt").exists() and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 128 + signal.SIGTERM, err
    assert "Traceback" not in err and "SIGTERM received: stopped after step" in err
    assert f"--resume {run}" in err
    step = int(re.search(r"after step (\d+)", err)[1])
    assert step >= 5 and load_trainer_state(run / "trainer_state.pt")["step"] == step
    assert int(read_weights(run / "model.safetensors")[1]["step"]) == step
    assert int(read_metrics(run / "metrics.csv")[-1]["step"]) == step
    lmlab.train(resume_config(run, {"train.max_iters": str(step + 2)}), run, resume=True, progress=False)
    assert [int(x["step"]) for x in read_metrics(run / "metrics.csv")][-3:] == [step, step + 1, step + 2]


def test_sigint_saves_a_checkpoint_and_exits_with_130(char_data, tmp_path):
    cfg = write_config(tmp_path / "c.yaml", char_data,
                       train={"max_iters": 100000, "save_interval": 5, "eval_interval": 100000, "eval_iters": 2,
                              "tensorboard": False})
    run = tmp_path / "run"
    err_r, err_w = os.pipe()

    def child():
        os.close(err_r)
        sys.stderr = os.fdopen(err_w, "w", buffering=1)
        from lmlab.cli import main

        sys.exit(main(["train", "--config", str(cfg), "--out", str(run), "--quiet"]))

    pid = fork(child)
    os.close(err_w)
    deadline = time.monotonic() + 60
    while not (run / "trainer_state.pt").exists() and time.monotonic() < deadline:
        time.sleep(0.02)
    os.kill(pid, signal.SIGINT)
    code = wait(pid)
    with os.fdopen(err_r) as f:
        err = f.read()
    assert code == 130, err
    assert "SIGINT received: stopped after step" in err and "Traceback" not in err
    step = int(re.search(r"after step (\d+)", err)[1])
    assert load_trainer_state(run / "trainer_state.pt")["step"] == step
    assert int(read_metrics(run / "metrics.csv")[-1]["step"]) == step


# ----------------------------------------------------------------------------------- damaged checkpoints

def test_checkpoints_carry_a_checksum_and_the_config(tiny_run):
    run = tiny_run["run"]
    state = load_trainer_state(run / "trainer_state.pt")
    assert state["config"] == yaml.safe_load((run / "config.yaml").read_text())
    assert (run / "trainer_state.pt").read_bytes()[-79:].startswith(b"\nlmlab-sha256 ")
    _, meta = read_weights(run / "model.safetensors")
    assert len(meta["sha256"]) == 64 and yaml.safe_load(meta["config"])["n_embd"] == 32
    assert torch.load(run / "trainer_state.pt", weights_only=True)["step"] == 60  # still a plain torch.save file


@pytest.mark.parametrize("damage", ["truncate", "flip"])
def test_a_damaged_trainer_state_is_refused_naming_the_file(copy_run, capsys, damage):
    run = copy_run()
    path = run / "trainer_state.pt"
    data = bytearray(path.read_bytes())
    if damage == "truncate":
        del data[len(data) // 2:]
    else:
        data[len(data) // 2] ^= 0x01  # one bit in the middle of a tensor: the zip still opens
    path.write_bytes(bytes(data))
    before = tree(run)
    code, _, err = run_main(["train", "--resume", run, "--train.max_iters", "70", "--quiet"], capsys)
    assert code == 2 and str(path) in err and "Traceback" not in err
    assert ("corrupt or truncated" if damage == "truncate" else "fails its checksum") in err
    assert tree(run) == before


@pytest.mark.parametrize("damage", ["truncate", "flip"])
def test_damaged_weights_are_refused_naming_the_file(copy_run, damage):
    run = copy_run()
    path = run / "best.safetensors"
    data = bytearray(path.read_bytes())
    if damage == "truncate":
        del data[-100:]
    else:
        data[-100] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(LmlabError, match="corrupt or truncated" if damage == "truncate" else "fails its checksum") as e:
        lmlab.load(run)
    assert str(path) in str(e.value)


def test_a_config_edited_into_another_shape_is_refused_naming_the_file(copy_run, capsys):
    run = copy_run()
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    cfg["model"]["n_embd"] = 64
    (run / "config.yaml").write_text(yaml.safe_dump(cfg))
    before = tree(run)
    code, _, err = run_main(["train", "--resume", run, "--train.max_iters", "70", "--quiet"], capsys)
    assert code == 2 and "Traceback" not in err
    assert str(run / "trainer_state.pt") in err and "model.n_embd is 32 there and 64" in err
    assert tree(run) == before
    # the same through an override, and through an edited config.json when loading the weights
    code, _, err = run_main(["train", "--resume", copy_run("b"), "--model.n_layer", "3"], capsys)
    assert code == 2 and "model.n_layer is 2 there and 3" in err
    other = copy_run("c")
    model_cfg = json.loads((other / "config.json").read_text())
    model_cfg["n_embd"] = 48
    (other / "config.json").write_text(json.dumps(model_cfg))
    with pytest.raises(LmlabError, match="model.n_embd is 32 there and 48 in config.json") as e:
        lmlab.load(other)
    assert str(other / "best.safetensors") in str(e.value)


# ----------------------------------------------------------------------------------- full disk, no permission

def test_a_full_disk_keeps_the_previous_checkpoint(char_data, tmp_path):
    run = tmp_path / "run"
    lmlab.train(small_cfg(char_data, max_iters=4, save_interval=2, eval_interval=2), run, progress=False)
    state_size = (run / "trainer_state.pt").stat().st_size
    limit = state_size // 2  # every other file of the run is smaller; the next trainer_state.pt cannot be written
    assert (run / "model.safetensors").stat().st_size < limit
    before = {n: (run / n).read_bytes() for n in ("trainer_state.pt", "model.safetensors")}

    def small_disk():  # in the child, before exec: files may not grow past `limit` bytes (EFBIG)
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))

    r = subprocess.run([*LMLAB, "train", "--resume", str(run), "--train.max_iters", "8", "--quiet"], env=ENV,
                       capture_output=True, text=True, timeout=120, preexec_fn=small_disk)
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    assert f"could not write {run / 'trainer_state.pt'}" in r.stderr
    assert "the previous checkpoint (step 4) is kept" in r.stderr and f"--resume {run}" in r.stderr
    assert load_trainer_state(run / "trainer_state.pt")["step"] == 4
    assert (run / "trainer_state.pt").read_bytes() == before["trainer_state.pt"]
    assert no_temp_files(run)
    lmlab.train(resume_config(run, {"train.max_iters": "6"}), run, resume=True, progress=False)  # space again
    assert load_trainer_state(run / "trainer_state.pt")["step"] == 6


def test_an_unwritable_run_directory_is_a_clear_error(char_data):
    base = tempfile.mkdtemp(prefix="lmlab-readonly-")  # our own directory: its mode is ours to change
    try:
        os.chmod(base, 0o755)
        from pathlib import Path

        base = Path(base)
        shutil.copytree(char_data, base / "data")
        run = base / "run"
        lmlab.train(small_cfg(base / "data", max_iters=2, save_interval=2, eval_interval=2, tensorboard=False), run,
                    progress=False)
        os.chmod(run, 0o555)
        before = tree(run)
        err_r, err_w = os.pipe()

        def child():
            os.close(err_r)
            sys.stderr = os.fdopen(err_w, "w", buffering=1)
            if os.geteuid() == 0:  # root writes anywhere: drop to nobody, for whom 0o555 means read-only
                os.setgid(65534)
                os.setuid(65534)
            from lmlab.cli import main

            sys.exit(main(["train", "--resume", str(run), "--train.max_iters", "4", "--quiet"]))

        pid = fork(child)
        os.close(err_w)
        code = wait(pid)
        with os.fdopen(err_r) as f:
            err = f.read()
        assert code == 2, err
        assert f"cannot write in the run directory {run} (Permission denied)" in err and "Traceback" not in err
        assert tree(run) == before
    finally:
        os.chmod(base / "run", 0o755) if (Path(base) / "run").exists() else None
        shutil.rmtree(base, ignore_errors=True)
