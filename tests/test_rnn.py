"""RNN / LSTM / GRU language models: config checks, truncated-BPTT streams with a carried hidden state,
the causal-LM interface (incremental logprobs_next, token_logprobs over the whole history), training and
exact resume on the shared Trainer, generation and eval through the shared commands."""
from pathlib import Path

import numpy as np
import pytest
import torch

import lmlab
from lmlab.config import load_config
from lmlab.data import TokenStreams, load_split
from lmlab.errors import LmlabError
from lmlab.models.rnn import RNNLM, RNNConfig

from conftest import read_metrics, run_main


def small_model(cell="lstm", vocab=13, **kw):
    torch.manual_seed(0)
    cfg = RNNConfig(cell=cell, vocab_size=vocab, n_embd=16, n_hidden=16, n_layer=2, block_size=8, **kw)
    return RNNLM(cfg).eval()


def rnn_cfg(data_dir, cell="lstm", **train):
    overrides = {"model.family": "rnn", "model.cell": cell, "model.n_embd": "32", "model.n_hidden": "32",
                 "model.n_layer": "2", "model.block_size": "32", "model.dropout": "0.1", "data.dir": str(data_dir)}
    base = {"max_iters": 30, "batch_size": 16, "learning_rate": 3e-3, "min_lr": 3e-4, "warmup_iters": 2,
            "eval_interval": 10, "eval_iters": 4, "tensorboard": False, "seed": 7}
    overrides.update({f"train.{k}": str(v) for k, v in {**base, **train}.items()})
    return load_config(None, overrides)


# ----------------------------------------------------------------------------------- config

@pytest.mark.parametrize("overrides, needle", [
    ({"model.cell": "transformer"}, "model.cell must be one of rnn, lstm, gru"),
    ({"model.tie_weights": "true", "model.n_embd": "32", "model.n_hidden": "64"}, "n_embd == model.n_hidden"),
    ({"model.dropout": "1.0"}, "model.dropout"),
    ({"model.n_hidden": "0"}, "model.n_hidden must be a positive integer"),
    ({"model.n_hiden": "8"}, "did you mean 'model.n_hidden'"),
])
def test_bad_rnn_config_is_one_clear_error(overrides, needle):
    with pytest.raises(LmlabError, match=needle):
        load_config(None, {"model.family": "rnn", **overrides})


def test_tied_weights_share_one_matrix():
    model = small_model(tie_weights=True)
    assert model.lm_head.weight is model.wte.weight
    untied = small_model()
    assert model.num_parameters() == untied.num_parameters() - 13 * 16


# ----------------------------------------------------------------------------------- streams

def test_token_streams_are_contiguous_and_reset_at_each_epoch(char_data):
    data = TokenStreams(char_data, block_size=8, batch_size=4)
    ids = np.asarray(load_split(char_data, "train"), dtype=np.int64)
    n, chunks = data.stream_length("train"), data.chunks_per_epoch("train")
    x0, y0, r0 = data.batch("train", 0)
    x1, y1, r1 = data.batch("train", 1)
    assert x0.shape == y0.shape == (4, 8) and bool(r0) and not bool(r1)
    assert torch.equal(x0[:, 1:], y0[:, :-1])
    assert torch.equal(x1[:, 0], y0[:, -1])  # row r of batch 1 continues row r of batch 0
    assert torch.equal(x0[2], torch.from_numpy(ids[2 * n:2 * n + 8]))
    again = data.batch("train", chunks)  # the next epoch starts over, with a reset
    assert torch.equal(again[0], x0) and bool(again[2])
    assert torch.equal(data.batch("val", 3)[0], data.batch("val", 3)[0])


def test_token_streams_refuse_a_split_too_short_for_one_chunk(char_data):
    with pytest.raises(LmlabError, match="fewer than batch_size x"):
        TokenStreams(char_data, block_size=500, batch_size=64).split("val")


def test_carried_state_continues_and_resets():
    model = small_model().train()
    model.drop.p = 0.0
    model.rnn.dropout = 0.0
    g = torch.Generator().manual_seed(1)
    x = torch.randint(13, (3, 16), generator=g)
    y = torch.roll(x, -1, 1)
    first, second = (x[:, :8], y[:, :8]), (x[:, 8:], y[:, 8:])
    model.loss((*first, torch.tensor(True)))
    carried = model.loss((*second, torch.tensor(False)))
    logits, _ = model(x)  # one pass over both chunks: the same predictions for the second chunk
    whole = torch.nn.functional.cross_entropy(logits[:, 8:].reshape(-1, 13), second[1].reshape(-1))
    assert carried.item() == pytest.approx(whole.item(), abs=1e-5)
    fresh = model.loss((*second, torch.tensor(True)))  # reset: zeros, whatever was carried
    alone = torch.nn.functional.cross_entropy(model(second[0])[0].reshape(-1, 13), second[1].reshape(-1))
    assert fresh.item() == pytest.approx(alone.item(), abs=1e-6) and abs(fresh.item() - carried.item()) > 1e-4
    model.eval()
    model.loss((*second, torch.tensor(True)))  # evaluation carries its own state, not the training one
    assert model._carried[True] is not model._carried[False]


# ----------------------------------------------------------------------------------- causal-LM interface

@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru"])
def test_incremental_logprobs_next_equals_a_full_run(cell):
    model = small_model(cell)
    ids = torch.randint(13, (2, 12), generator=torch.Generator().manual_seed(2))
    state, steps = None, []
    for t in range(5, 13):
        lp, state = model.logprobs_next(ids[:, :t], state)
        steps.append(lp)
        full, _ = model.logprobs_next(ids[:, :t], None)
        assert torch.allclose(lp, full, atol=1e-5)
    assert state.length == 12
    logits, _ = model(ids)
    assert torch.allclose(steps[-1], torch.log_softmax(logits[:, -1], -1), atol=1e-5)


def test_token_logprobs_equals_a_token_by_token_loop():
    model = small_model("gru")
    ids = np.random.default_rng(3).integers(0, 13, 50)
    fast = model.token_logprobs(ids, chunk=7)  # chunks carry the hidden state: full history everywhere
    hidden, slow = None, []
    with torch.no_grad():
        for t in range(len(ids) - 1):
            logits, hidden = model(torch.tensor([[ids[t]]]), hidden)
            slow.append(torch.log_softmax(logits[0, -1], -1)[ids[t + 1]].item())
    assert fast.shape == (49,)
    np.testing.assert_allclose(fast, slow, atol=1e-5)
    assert model.score(ids) == pytest.approx(sum(slow), abs=1e-4)


@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru"])
def test_state_resets_at_each_document_start(cell):
    """With an end-of-text id, a document after one (or two) others is scored exactly as if it came first,
    in every row of a batch independently, and training gradients flow through the pieces."""
    EOT = 12
    model = small_model(cell, eot_id=EOT)
    rng = np.random.default_rng(4)
    doc_a, doc_b, doc_c = (rng.integers(0, EOT, n).tolist() for n in (9, 7, 11))
    alone = model.token_logprobs([EOT] + doc_c)
    after = model.token_logprobs(doc_a + [EOT] + doc_b + [EOT] + doc_c)
    np.testing.assert_allclose(after[-len(alone):], alone, atol=1e-5)
    before = model.token_logprobs(doc_a)  # the first document is untouched
    np.testing.assert_allclose(after[:len(before)], before, atol=1e-6)
    rows = torch.tensor([doc_a[:4] + [EOT] + doc_c[:6], doc_b[:7] + [EOT] + doc_c[:3]])
    logits, _ = model(rows)
    fresh, _ = model(torch.tensor([[EOT] + doc_c[:6]]))
    assert torch.allclose(logits[0, 4:], fresh[0], atol=1e-5)
    assert not torch.allclose(logits[1, 4:8], fresh[0, :4], atol=1e-3)  # row 1 has no reset at column 4
    model.train()
    model.loss((rows[:, :-1], rows[:, 1:])).backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
    without = small_model(cell)  # no end-of-text id: the history flows through
    assert not np.allclose(without.token_logprobs(doc_a + [EOT] + doc_c)[-len(doc_c):], alone[-len(doc_c):],
                           atol=1e-3)


def test_training_takes_the_end_of_text_id_from_the_data(tmp_path):
    """BPE data has <|endoftext|> between documents (one per file): the trained model resets there."""
    docs = tmp_path / "docs"
    docs.mkdir()
    text = (Path(__file__).resolve().parents[1] / "data" / "tinyshakespeare.txt").read_text(encoding="utf-8")
    for i in range(6):
        (docs / f"{i}.txt").write_text(text[i * 10000:(i + 1) * 10000], encoding="utf-8")
    lmlab.prepare(docs, tmp_path / "bpe", tokenizer="bpe", vocab_size=300, progress=False)
    cfg = rnn_cfg(tmp_path / "bpe", max_iters=2, batch_size=4)
    lmlab.train(cfg, tmp_path / "run", progress=False)
    model, tok = lmlab.load(tmp_path / "run")
    assert tok.eot_id is not None and model.cfg.eot_id == tok.eot_id


# ----------------------------------------------------------------------------------- training

@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru"])
def test_each_cell_learns_on_the_shared_trainer(cell, char_data, tmp_path):
    summary = lmlab.train(rnn_cfg(char_data, cell), tmp_path / cell, progress=False)
    vals = [float(r["val_loss"]) for r in read_metrics(tmp_path / cell / "metrics.csv") if r["val_loss"]]
    assert vals[-1] < vals[0] - 0.3, vals
    assert summary["step"] == 30 and (tmp_path / cell / "model.safetensors").is_file()


def test_stop_and_resume_equals_uninterrupted(char_data, tmp_path):
    """The carried hidden state is part of trainer_state.pt, so a resumed run continues its streams exactly."""
    from lmlab.runs import resume_config

    kw = dict(lr_decay_iters=12, save_interval=3, eval_interval=4)
    lmlab.train(rnn_cfg(char_data, max_iters=12, **kw), tmp_path / "a", progress=False)
    lmlab.train(rnn_cfg(char_data, max_iters=8, **kw), tmp_path / "b", progress=False)
    lmlab.train(resume_config(tmp_path / "b", {"train.max_iters": "12"}), tmp_path / "b", resume=True, progress=False)
    rows = lambda run: [(r["step"], r["train_loss"], r["val_loss"]) for r in read_metrics(run / "metrics.csv")]
    assert rows(tmp_path / "a") == rows(tmp_path / "b")


def test_generate_and_eval_an_rnn_run_through_the_shared_commands(tiny_lstm_run, corpus, capsys):
    run = tiny_lstm_run["run"]
    code, out, err = run_main(["generate", run, "--prompt", "ROMEO:", "--max-new-tokens", "30", "--seed", "1",
                               "--temperature", "0"], capsys)
    assert code == 0, err
    model, tok = lmlab.load(run)
    assert out == "ROMEO:" + lmlab.generate(model, tok, "ROMEO:", max_new_tokens=30, temperature=0)[0] + "\n"
    code, out, err = run_main(["eval", run, "--data", corpus, "--json"], capsys)
    assert code == 0, err
    import json

    result = json.loads(out)
    text = corpus.read_text(encoding="utf-8")
    assert result["tokens"] == len(text) - 1 and result["bits_per_byte"] < 5.0  # uniform over 65 chars: 6.02


def test_long_texts_are_scored_in_parallel_streams():
    """streams=k equals scoring each contiguous piece on its own; the default uses one stream per 4,096 tokens."""
    model = small_model("lstm")
    ids = np.random.default_rng(5).integers(0, 13, 9001)
    one = model.token_logprobs(ids, streams=1, chunk=500)
    four = model.token_logprobs(ids, streams=4, chunk=300)
    assert four.shape == one.shape == (9000,)
    bounds = np.linspace(0, 9000, 5).astype(int)
    for a, b in zip(bounds[:-1], bounds[1:]):
        np.testing.assert_allclose(four[a:b], model.token_logprobs(ids[a:b + 1], streams=1), atol=1e-5)
    np.testing.assert_allclose(four[:bounds[1]], one[:bounds[1]], atol=1e-5)  # the first piece is untouched
    np.testing.assert_allclose(model.token_logprobs(ids), model.token_logprobs(ids, streams=2), atol=1e-6)
