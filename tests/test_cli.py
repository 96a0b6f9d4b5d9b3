"""The `lmlab` command: end to end with kill -9 and resume, and every bad input of the core issue.

End to end runs the installed command in subprocesses. The bad-input cases call `lmlab.cli.main` in
this process (the console script is `sys.exit(main())`), which saves a torch import per case; a few
of them also go through a subprocess to check the real exit status and that no traceback is printed.
"""
import json
import os
import shutil
import signal
import subprocess
import time

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

import lmlab
from lmlab.checkpoint import load_trainer_state
from lmlab.data import load_split

from conftest import ENV, LMLAB, cli, read_metrics, run_main, tree, write_config


def assert_user_error(code, out, err, *needles):
    """Exit code 2, one line on stderr naming the problem (each needle), no traceback, nothing on stdout."""
    assert code == 2, (code, out, err)
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("lmlab ") and ": error: " in lines[0]
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    assert out == ""


def proc_error(r: subprocess.CompletedProcess, *needles):
    assert_user_error(r.returncode, r.stdout, r.stderr, *needles)


# ----------------------------------------------------------------------------------- end to end

KILL_AFTER_SAVES = 3  # checkpoints at steps 5, 10, 15: kill right after the third


def _state_signature(path):
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return st.st_ino, st.st_mtime_ns, st.st_size


def _start(args):
    return subprocess.Popen([*LMLAB, *map(str, args)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=ENV)


def _train_and_kill(cfg, run) -> int:
    """Start a run, SIGKILL it just after its KILL_AFTER_SAVES-th checkpoint; return the checkpointed step."""
    proc = _start(["train", "--config", cfg, "--out", run, "--quiet"])
    state, seen = run / "trainer_state.pt", []
    deadline = time.monotonic() + 60
    while proc.poll() is None and time.monotonic() < deadline:
        sig = _state_signature(state)
        if sig is not None and sig not in seen:
            seen.append(sig)
            if len(seen) >= KILL_AFTER_SAVES:
                os.kill(proc.pid, signal.SIGKILL)
                break
        time.sleep(0.0005)
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL, f"run ended before the kill: {proc.returncode} {proc.stderr.read()}"
    proc.stderr.close(), proc.stdout.close()
    return load_trainer_state(state)["step"]


def _weights_step(path) -> int:
    with safe_open(str(path), framework="pt") as f:
        return int(f.metadata()["step"])


def test_end_to_end_prepare_train_kill_resume_eval_generate(corpus, tmp_path):
    data = tmp_path / "data"
    r = cli("prepare", corpus, "--out", data, "--quiet")
    assert r.returncode == 0, r.stderr
    assert "vocab" in r.stdout and {p.name for p in data.iterdir()} == {"train.bin", "val.bin", "tokenizer.json",
                                                                        "meta.json"}
    max_iters = 150  # ~1 s of training: the kill (after step 15) has a wide margin on a busy machine
    cfg = write_config(tmp_path / "tiny.yaml", data, train={
        "max_iters": max_iters, "batch_size": 16, "save_interval": 5, "eval_interval": 10, "eval_iters": 2})

    # A: uninterrupted (runs while B is started, killed and checked).
    run_a, run_b = tmp_path / "a", tmp_path / "b"
    proc_a = _start(["train", "--config", cfg, "--out", run_a, "--quiet"])
    killed_at = _train_and_kill(cfg, run_b)  # any kill is resumable: trainer_state.pt is self-contained
    assert 5 * KILL_AFTER_SAVES <= killed_at < max_iters  # after >= 1 checkpoint, before the end
    rows_b = read_metrics(run_b / "metrics.csv")
    assert int(rows_b[-1]["step"]) < max_iters and not (run_b / "loss.png").exists()

    out_a, err_a = proc_a.communicate(timeout=120)
    assert proc_a.returncode == 0, err_a
    assert f"done: step {max_iters}" in out_a

    r = cli("train", "--resume", run_b, "--quiet")
    assert r.returncode == 0, r.stderr
    assert f"done: step {max_iters}" in r.stdout
    rows_a, rows_b = read_metrics(run_a / "metrics.csv"), read_metrics(run_b / "metrics.csv")
    assert [int(x["step"]) for x in rows_b] == list(range(max_iters + 1))
    assert [(x["step"], x["train_loss"], x["val_loss"]) for x in rows_a] == \
           [(x["step"], x["train_loss"], x["val_loss"]) for x in rows_b]
    for name in ("model.safetensors", "best.safetensors"):
        wa, wb = load_file(run_a / name), load_file(run_b / name)
        assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa), name
    assert not [p for p in run_b.rglob("*") if p.name.endswith(".tmp")]
    assert (run_b / "loss.png").is_file()

    # eval on val.bin: the numbers a user gets equal a hand computation from token_logprobs.
    r = cli("eval", run_b, "--data", data / "val.bin", "--json")
    assert r.returncode == 0, r.stderr
    result = json.loads(r.stdout)
    model, tok = lmlab.load(run_b)
    val = load_split(data, "val")
    lp = model.token_logprobs(val, stride=model.block_size // 2)
    assert result["tokens"] == len(val) - 1
    assert result["cross_entropy"] == pytest.approx(-lp.mean(), rel=1e-6)
    assert result["bits_per_byte"] == pytest.approx(-lp.sum() / 0.6931471805599453 / (len(val) - 1), rel=1e-6)

    # generate: what the command streams equals the batched API's samples for the same seed.
    args = dict(max_new_tokens=30, temperature=0.8, top_k=10, top_p=0.95, num_return_sequences=2, seed=1)
    r = cli("generate", run_b, "--prompt", "ROMEO:", *[x for k, v in args.items()
                                                      for x in (f"--{k.replace('_', '-')}", v)])
    assert r.returncode == 0, r.stderr
    samples = lmlab.generate(model, tok, "ROMEO:", **args)
    assert r.stdout == "".join(f"--- sample {i + 1} ---\nROMEO:{s}\n" for i, s in enumerate(samples))


# ----------------------------------------------------------------------------------- bad input: subprocess

def test_prepare_missing_input_file(tmp_path):
    r = cli("prepare", tmp_path / "nope.txt", "--out", tmp_path / "out", "--quiet")
    proc_error(r, "nope.txt", "does not exist")
    assert not (tmp_path / "out").exists()


def test_unknown_config_key_names_the_closest(tiny_run, tmp_path):
    r = cli("train", "--config", tiny_run["config"], "--out", tmp_path / "run", "--model.n_layers", "4")
    proc_error(r, "model.n_layers", "'model.n_layer'")
    assert not (tmp_path / "run").exists()


def test_truncated_weights_through_the_command(copy_run, corpus):
    run = copy_run()
    for name in ("model.safetensors", "best.safetensors"):
        data = (run / name).read_bytes()
        (run / name).write_bytes(data[: len(data) // 2])
    proc_error(cli("eval", run, "--data", corpus), "best.safetensors", "corrupt or truncated")


# ----------------------------------------------------------------------------------- bad input: in process

def test_prepare_empty_input_file(tmp_path, capsys):
    (tmp_path / "empty.txt").write_text("")
    assert_user_error(*run_main(["prepare", tmp_path / "empty.txt", "--out", tmp_path / "out", "--quiet"], capsys),
                      "empty.txt", "no text")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("content, needle", [(None, "does not exist"), ("", "is empty")])
def test_eval_missing_or_empty_text(tiny_run, tmp_path, content, needle, capsys):
    path = tmp_path / "text.txt"
    if content is not None:
        path.write_text(content)
    assert_user_error(*run_main(["eval", tiny_run["run"], "--data", path], capsys), "text.txt", needle)


@pytest.mark.parametrize("flags, needles", [
    (["--model.n_layer", "abc"], ["model.n_layer must be an integer", "'abc'"]),
    (["--model.n_layer=-2"], ["model.n_layer must be a positive integer", "-2"]),
    (["--train.batch_size", "-1"], ["train.batch_size must be a positive integer", "-1"]),
    (["--train.learning_rate", "x"], ["train.learning_rate must be a number"]),
    (["--train.max_iters"], ["--train.max_iters needs a value"]),
    (["--model.family", "transformer"], ["unknown model family 'transformer'", "gpt", "rnn"]),
    (["--train.lr", "1"], ["'train.lr'"]),
    (["--dropout", "0.1"], ["--model.n_layer 4"]),
])
def test_bad_training_flags(tiny_run, tmp_path, flags, needles, capsys):
    run = tmp_path / "run"
    assert_user_error(*run_main(["train", "--config", tiny_run["config"], "--out", run, *flags], capsys), *needles)
    assert not run.exists()


def test_config_file_missing_or_invalid(tmp_path, capsys):
    assert_user_error(*run_main(["train", "--config", tmp_path / "nope.yaml", "--out", tmp_path / "r"], capsys),
                      "nope.yaml", "does not exist")
    bad = tmp_path / "bad.yaml"
    bad.write_text("model:\n  n_layer: [2\ntrain: {\n")
    assert_user_error(*run_main(["train", "--config", bad, "--out", tmp_path / "r"], capsys),
                      "bad.yaml", "not valid YAML")
    assert_user_error(*run_main(["train", "--out", tmp_path / "r"], capsys), "--config")
    assert not (tmp_path / "r").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_cuda_device_without_a_gpu(tiny_run, tmp_path, capsys):
    run = tmp_path / "run"
    assert_user_error(*run_main(["train", "--config", tiny_run["config"], "--out", run, "--quiet",
                                 "--train.device", "cuda"], capsys), "'cuda'", "no CUDA GPU", "--train.device cpu")
    assert not run.exists()
    assert_user_error(*run_main(["train", "--config", tiny_run["config"], "--out", run, "--quiet",
                                 "--train.device", "tpu"], capsys), "unknown device 'tpu'")
    assert not run.exists()


def test_training_into_an_existing_run_says_resume(tiny_run, capsys):
    before = tree(tiny_run["run"])
    assert_user_error(*run_main(["train", "--config", tiny_run["config"], "--out", tiny_run["run"]], capsys),
                      "already holds a run", f"--resume {tiny_run['run']}")
    assert tree(tiny_run["run"]) == before


def test_resume_from_a_dir_that_is_not_a_run(tiny_run, tmp_path, capsys):
    assert_user_error(*run_main(["train", "--resume", tmp_path / "missing"], capsys), "missing", "does not exist")
    assert not (tmp_path / "missing").exists()
    before = tree(tiny_run["data"])
    assert_user_error(*run_main(["train", "--resume", tiny_run["data"]], capsys), "not a resumable run")
    assert tree(tiny_run["data"]) == before
    for verb in (["eval", tiny_run["data"], "--data", tiny_run["data"] / "val.bin"], ["generate", tiny_run["data"]]):
        assert_user_error(*run_main(verb, capsys), "is not a run directory")
    assert tree(tiny_run["data"]) == before


@pytest.mark.parametrize("how", ["half", "empty", "garbage"])
def test_corrupt_weights_are_reported_by_eval_generate_and_resume(copy_run, how, capsys):
    run = copy_run()
    for name in ("model.safetensors", "best.safetensors"):
        data = (run / name).read_bytes()
        (run / name).write_bytes({"half": data[: len(data) // 2], "empty": b"",
                                  "garbage": b"\x10\x00\x00\x00\x00\x00\x00\x00{not json" + data[100:]}[how])
    before = tree(run)
    val = run.parent / "val.txt"
    val.write_text("ROMEO:\nAnd so it goes.\n")
    assert_user_error(*run_main(["eval", run, "--data", val], capsys), "best.safetensors", "corrupt or truncated")
    assert_user_error(*run_main(["generate", run, "--max-new-tokens", "5"], capsys), "corrupt or truncated")
    (run / "best.safetensors").unlink()  # now eval / generate use model.safetensors
    before.pop("best.safetensors")
    assert_user_error(*run_main(["eval", run, "--data", val], capsys), "model.safetensors", "corrupt or truncated")
    assert tree(run) == before
    # Resuming needs only trainer_state.pt (weights included), so it still works and rewrites the export.
    code = run_main(["train", "--resume", run, "--quiet", "--train.max_iters", "70"], capsys)[0]
    assert code == 0
    assert lmlab.load(run, which="last")[0] is not None


@pytest.mark.parametrize("how", ["half", "empty", "garbage"])
def test_corrupt_trainer_state_is_reported_by_resume(copy_run, how, capsys):
    run = copy_run()
    data = (run / "trainer_state.pt").read_bytes()
    (run / "trainer_state.pt").write_bytes({"half": data[: len(data) // 2], "empty": b"",
                                            "garbage": b"PK\x03\x04" + bytes(range(256)) * 4}[how])
    before = tree(run)
    assert_user_error(*run_main(["train", "--resume", run, "--quiet", "--train.max_iters", "80"], capsys),
                      "trainer_state.pt", "corrupt or truncated")
    assert tree(run) == before  # not even config.yaml rewritten with the new max_iters


def test_prompt_longer_than_block_size_is_cropped_with_a_note(tiny_model, tiny_run, capsys):
    model, tok = tiny_model
    prompt = "First Citizen:\nBefore we proceed any further, hear me speak."
    assert len(prompt) > model.block_size
    code, out, err = run_main(["generate", tiny_run["run"], "--prompt", prompt, "--max-new-tokens", "12",
                               "--temperature", "0"], capsys)
    assert code == 0
    assert f"only its last {model.block_size} tokens are used" in err and "Traceback" not in err
    assert out == prompt + lmlab.generate(model, tok, prompt[-model.block_size:], max_new_tokens=12,
                                          temperature=0)[0] + "\n"


@pytest.mark.parametrize("flags, needle", [
    (["--temperature", "-1"], "temperature must be >= 0"),
    (["--top-k", "0"], "top_k must be >= 1"),
    (["--top-p", "1.5"], "top_p must be in (0, 1]"),
    (["--num-return-sequences", "0"], "num_return_sequences must be >= 1"),
    (["--prompt", "ROMEO: \u00e9t\u00e9"], "not in this char tokenizer's vocabulary"),
])
def test_bad_generate_arguments(tiny_run, flags, needle, capsys):
    assert_user_error(*run_main(["generate", tiny_run["run"], *flags], capsys), needle)


def test_eval_on_data_from_another_tokenizer(tiny_run, tmp_path, capsys):
    other = tmp_path / "other"
    (tmp_path / "t.txt").write_text("abcdefghij\n" * 200)
    lmlab.prepare(tmp_path / "t.txt", other, tokenizer="char", progress=False)
    assert_user_error(*run_main(["eval", tiny_run["run"], "--data", other / "val.bin"], capsys),
                      "another tokenizer")


def test_output_path_that_is_a_file(corpus, tiny_run, tmp_path, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("keep me")
    assert_user_error(*run_main(["prepare", corpus, "--out", blocker, "--quiet"], capsys), "a-file")
    assert_user_error(*run_main(["train", "--config", tiny_run["config"], "--out", blocker, "--quiet"], capsys),
                      "a-file")
    assert blocker.read_text() == "keep me"


def test_data_dir_that_was_not_prepared(tiny_run, tmp_path, capsys):
    assert_user_error(*run_main(["train", "--config", tiny_run["config"], "--out", tmp_path / "run",
                                 "--data.dir", tmp_path / "nowhere"], capsys), "nowhere", "lmlab prepare")
    assert not (tmp_path / "run").exists()


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="this machine has a GPU")
@pytest.mark.parametrize("verb", ["eval", "generate"])
def test_eval_and_generate_refuse_cuda_without_a_gpu(tiny_run, verb, capsys, tmp_path):
    val = tmp_path / "val.txt"
    val.write_text("ROMEO:\nAnd so it goes.\n")
    extra = ["--data", val] if verb == "eval" else ["--max-new-tokens", "3"]
    code, out, err = run_main([verb, tiny_run["run"], *extra, "--device", "cuda"], capsys)
    assert code == 2 and "no CUDA GPU" in err and "Traceback" not in err and out == ""
