"""A model family defined here, outside lmlab, and registered with `lmlab.register_family`, goes through every verb
with no change to lmlab: `lmlab train` (a config naming `model.family: test_register_family:bigram`), eval,
compare, generate and serve; a fresh `lmlab generate` process finds it by importing this module by that name."""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

import lmlab
from lmlab.models.base import NeuralLM

FAMILY = "test_register_family:bigram"


@dataclass
class BigramConfig:
    family: str = FAMILY
    vocab_size: int = 0  # 0 = from the prepared data
    block_size: int = 16  # tokens per training window


class Bigram(NeuralLM):
    """p(next token | this token): one table of logits, the smallest causal LM."""

    block_size = None  # it reads only the last token: no context limit

    def __init__(self, cfg: BigramConfig):
        super().__init__(cfg)
        self.logits = nn.Embedding(cfg.vocab_size, cfg.vocab_size)

    @classmethod
    def training_data(cls, cfg):
        return lmlab.TokenBlocks(cfg.data.dir, cfg.model.block_size, cfg.train.batch_size, cfg.train.seed)

    def loss(self, batch):
        x, y = batch
        return F.cross_entropy(self.logits(x).flatten(0, 1), y.flatten())

    @torch.inference_mode()
    def logprobs_next(self, ids, state=None, pad=None):
        return self.logits(ids[:, -1]).log_softmax(-1), None

    @torch.inference_mode()
    def token_logprobs(self, ids, **_):
        ids = torch.as_tensor(ids, dtype=torch.long)
        return self.logits(ids[:-1]).log_softmax(-1).gather(1, ids[1:, None])[:, 0].double().numpy()


lmlab.register_family(FAMILY, BigramConfig, Bigram)

# ------------------------------------------------------------------------------------------------- the tests

import json  # noqa: E402
import subprocess  # noqa: E402

import httpx  # noqa: E402
import pytest  # noqa: E402
import yaml  # noqa: E402

from conftest import ENV, LMLAB, run_main  # noqa: E402


@pytest.fixture(scope="module")
def bigram_run(char_data, tmp_path_factory):
    work = tmp_path_factory.mktemp("bigram")
    config = work / "bigram.yaml"
    config.write_text(yaml.safe_dump({
        "model": {"family": FAMILY}, "data": {"dir": str(char_data)},
        "train": {"max_iters": 120, "batch_size": 16, "learning_rate": 0.1, "warmup_iters": 5, "eval_interval": 40,
                  "eval_iters": 4, "tensorboard": False}}), encoding="utf-8")
    return work / "run", config


@pytest.fixture(scope="module")
def heldout(corpus, tmp_path_factory):
    """The corpus's last 5,000 characters (in its validation split: never trained on)."""
    path = tmp_path_factory.mktemp("heldout") / "test.txt"
    path.write_text(corpus.read_text(encoding="utf-8")[-5000:], encoding="utf-8")
    return path


def test_a_registered_family_trains_evaluates_compares_and_generates(bigram_run, tiny_run, heldout, capsys):
    run, config = bigram_run
    code, out, err = run_main(["train", "--config", config, "--out", run, "--quiet"], capsys)
    assert code == 0, err
    model, tok = lmlab.load(run)
    assert isinstance(model, Bigram) and model.family == FAMILY and model.cfg.vocab_size == tok.vocab_size
    code, out, err = run_main(["eval", run, "--data", heldout, "--json"], capsys)
    assert code == 0, err
    bits = json.loads(out)["bits_per_byte"]
    assert 2.0 < bits < 4.5  # a bigram model of characters learns something (uniform over ~60 chars: ~5.9)
    code, out, err = run_main(["compare", run, tiny_run["run"], "--data", heldout, "--out", run.parent], capsys)
    assert code == 0, err
    assert FAMILY in out and (run.parent / "compare.png").is_file()
    code, out, err = run_main(["generate", run, "--prompt", "KING", "--max-new-tokens", "30", "--seed", "1"], capsys)
    assert code == 0, err
    assert out.startswith("KING") and len(out) > len("KING\n")
    greedy = lmlab.generate(model, tok, "KING", max_new_tokens=20, temperature=0)[0]
    ids = tok.encode("KING")  # greedy bigram decoding: each token is the argmax after the one before it
    for _ in range(20):
        ids.append(int(model.logprobs_next(torch.tensor([ids]))[0].argmax()))
    assert greedy == tok.decode(ids[4:])


def test_a_registered_family_is_served_and_found_by_a_fresh_process(bigram_run, capsys):
    from lmlab.serve import ServerThread, create_app, load_models

    run, config = bigram_run
    if not run.exists():
        assert run_main(["train", "--config", config, "--out", run, "--quiet"], capsys)[0] == 0
    with ServerThread(create_app(load_models([f"bigram={run}"]))) as url:
        card = httpx.get(url + "/v1/models", timeout=30).json()["data"][0]
        assert card["family"] == FAMILY and card["context_length"] is None
        body = {"model": "bigram", "prompt": "KING", "max_tokens": 12, "temperature": 0}
        reply = httpx.post(url + "/v1/completions", json=body, timeout=30).json()
    model, tok = lmlab.load(run)
    assert reply["choices"][0]["text"] == lmlab.generate(model, tok, "KING", max_new_tokens=12, temperature=0)[0]
    # A new process: the config names the family "test_register_family:bigram", so lmlab imports this module.
    env = {**ENV, "PYTHONPATH": os.pathsep.join([os.path.dirname(__file__), ENV.get("PYTHONPATH", "")])}
    r = subprocess.run([*LMLAB, "generate", str(run), "--prompt", "KING", "--max-new-tokens", "12", "--temperature",
                        "0"], capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout == "KING" + reply["choices"][0]["text"] + "\n"
