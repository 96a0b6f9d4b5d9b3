"""Text classification on real movie reviews (data/rt-polarity): reading labelled texts, the seeded split,
classification metrics, the LSTM / encoder / GPT classifiers on the shared Trainer, `lmlab classify
train|eval|predict|split` end to end, and every bad input of the issue (exit 2, one sentence)."""
import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch

import lmlab
from lmlab.tasks.classify import collate, train_classifier
from lmlab.tasks.labeled import LabelBatches, read_labeled, split_indices, write_tsv
from lmlab.errors import LmlabError
from lmlab.metrics import classification_report
from lmlab.models.classifier import pool
from lmlab.models.gpt_classifier import GPTClassifier, GPTClassifierConfig
from lmlab.models.rnn import RNNClassifier, RNNClassifierConfig

from conftest import ROOT, read_metrics, run_main

MR = ROOT / "data" / "rt-polarity"


def assert_user_error(code, out, err, *needles):
    """Exit code 2, one line on stderr naming the problem (each needle), no traceback."""
    assert code == 2, (code, out, err)
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("lmlab ") and ": error: " in lines[0]
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])


@pytest.fixture(scope="session")
def mr():
    return read_labeled(MR)


@pytest.fixture(scope="session")
def mr_small(mr, tmp_path_factory) -> Path:
    """400 training and 100 test reviews (a seeded sample of the real data) as TSV files."""
    texts, labels = mr
    order = np.random.default_rng(5).permutation(len(texts))
    out = tmp_path_factory.mktemp("mr-small")
    write_tsv(out / "train.tsv", [texts[i] for i in order[:400]], [labels[i] for i in order[:400]])
    write_tsv(out / "test.tsv", [texts[i] for i in order[400:500]], [labels[i] for i in order[400:500]])
    return out


TINY_LSTM = {"model.n_embd": "32", "model.n_hidden": "32", "train.tensorboard": "false", "train.keep_best": "false"}


@pytest.fixture(scope="session")
def lstm_run(mr_small, tmp_path_factory) -> dict:
    """A tiny BiLSTM classifier trained 4 epochs on the 400 reviews (all of them: --val is the test file)."""
    run = tmp_path_factory.mktemp("lstm-cls") / "run"
    summary = train_classifier(mr_small / "train.tsv", run, kind="lstm", val=mr_small / "test.tsv", epochs=4,
                               batch_size=32, learning_rate=3e-2, overrides=TINY_LSTM, progress=False)
    return {"run": run, "summary": summary}


# ----------------------------------------------------------------------------------- reading data

def test_one_file_per_label_directory_reads_rt_polarity(mr):
    texts, labels = mr
    assert len(texts) == 10662 and labels.count("pos") == 5331 and labels.count("neg") == 5331
    assert texts[labels.index("pos")].startswith("the rock is destined to be the 21st century's new")
    assert all(t == t.strip() and t for t in texts)
    assert any("clichés" in t for t in texts)  # UTF-8 decoded, not mojibake


def test_tsv_and_csv_with_named_columns(tmp_path):
    (tmp_path / "a.tsv").write_text('id\tsentiment\treview\n1\tgood\t"great" film , really\n\n2\tbad\tdull\n')
    texts, labels = read_labeled(tmp_path / "a.tsv", text_column="review", label_column="sentiment")
    assert texts == ['"great" film , really', "dull"] and labels == ["good", "bad"]  # TSV quotes are text
    with open(tmp_path / "b.csv", "w", newline="") as f:
        csv.writer(f).writerows([["text", "label"], ["a film, with commas", "pos"], ['say "no"', "neg"]])
    assert read_labeled(tmp_path / "b.csv") == (["a film, with commas", 'say "no"'], ["pos", "neg"])


def test_label_names_from_file_names(tmp_path):
    (tmp_path / "good.txt").write_text("fine\nlovely\n")
    (tmp_path / "bad.txt").write_text("awful\n")
    (tmp_path / "README.md").write_text("not a label file\n")
    assert read_labeled(tmp_path) == (["awful", "fine", "lovely"], ["bad", "good", "good"])


def test_latin1_file_needs_its_encoding(tmp_path):
    (tmp_path / "x.tsv").write_bytes("text\tlabel\nun film très beau\tpos\nmauvais\tneg\n".encode("cp1252"))
    with pytest.raises(LmlabError, match="not utf-8 text .* line 2.*--encoding cp1252"):
        read_labeled(tmp_path / "x.tsv")
    assert read_labeled(tmp_path / "x.tsv", encoding="cp1252")[0][0] == "un film très beau"


def test_split_is_seeded_disjoint_and_complete():
    a_train, a_test = split_indices(10662, 0.1, 0)
    b_train, b_test = split_indices(10662, 0.1, 0)
    assert np.array_equal(a_test, b_test) and len(a_test) == 1066 and len(a_train) == 9596
    assert sorted(np.concatenate([a_train, a_test]).tolist()) == list(range(10662))
    assert not np.array_equal(split_indices(10662, 0.1, 1)[1], a_test)


def test_split_command_writes_train_and_test(tmp_path, capsys):
    code, out, err = run_main(["classify", "split", MR, "--out", tmp_path], capsys)
    assert code == 0, err
    train, test = read_labeled(tmp_path / "train.tsv"), read_labeled(tmp_path / "test.tsv")
    assert len(train[0]) == 9596 and len(test[0]) == 1066 and "9,596" in out
    assert not set(train[0]) & set(test[0]) - {t for t in train[0] if train[0].count(t) > 1}
    assert 480 < test[1].count("pos") < 590  # a shuffle, not the files in order


# ----------------------------------------------------------------------------------- metrics

def test_classification_report_by_hand():
    # true:  a a a a b b c ; pred: a a b c b b a
    r = classification_report([0, 0, 0, 0, 1, 1, 2], [0, 0, 1, 2, 1, 1, 0], ["a", "b", "c"])
    assert r["confusion"] == [[2, 1, 1], [0, 2, 0], [1, 0, 0]]
    assert r["accuracy"] == pytest.approx(4 / 7)
    a, b, c = (r["per_class"][k] for k in "abc")
    assert (a["precision"], a["recall"], a["f1"], a["support"]) == pytest.approx((2 / 3, 0.5, 4 / 7, 4))
    assert (b["precision"], b["recall"], b["f1"]) == pytest.approx((2 / 3, 1.0, 0.8))
    assert (c["precision"], c["recall"], c["f1"]) == (0.0, 0.0, 0.0)  # never right: 0, not NaN
    assert r["macro_f1"] == pytest.approx((4 / 7 + 0.8) / 3)
    assert r["macro_precision"] == pytest.approx(4 / 9) and r["macro_recall"] == pytest.approx(0.5)


# ----------------------------------------------------------------------------------- batches and models

def test_label_batches_are_a_pure_function_of_the_index():
    ids = [[1] * (i % 7 + 1) for i in range(50)]
    data = LabelBatches({"train": (ids, [i % 2 for i in range(50)]), "val": (ids[:9], [0] * 9)}, 8, 0, seed=3)
    x1, m1, y1 = data.batch("train", 9)
    x2, m2, y2 = data.batch("train", 9)
    assert torch.equal(x1, x2) and torch.equal(m1, m2) and torch.equal(y1, y2)
    epoch = [data.batch("train", i)[1].sum(1).tolist() for i in range(7)]  # 7 batches = one epoch of 50
    assert sorted(sum(epoch, [])) == sorted(len(r) for r in ids)
    assert torch.equal(m1.sum(1), (x1 == 1).sum(1))  # mask marks exactly the real tokens
    assert data.batch("val", 1)[0].shape[0] == 1 and data.batches("val") == 2


def test_group_by_length_batches_cover_the_epoch_with_less_padding(mr):
    texts = mr[0][:2000]
    ids = [t.split() for t in texts]  # any lists: only lengths matter here
    ids = [[1] * len(r) for r in ids]
    plain = LabelBatches({"train": (ids, [0] * len(ids))}, 16, 0, seed=3)
    grouped = LabelBatches({"train": (ids, [0] * len(ids))}, 16, 0, seed=3, group_by_length=True)
    per_epoch = grouped.batches("train")
    for data in (plain, grouped):
        seen = np.concatenate([data.order("train", 1)])
        assert sorted(seen.tolist()) == list(range(len(ids)))
    cells = {name: sum(d.batch("train", per_epoch + i)[0].numel() for i in range(per_epoch))
             for name, d in (("plain", plain), ("grouped", grouped))}
    real = sum(len(r) for r in ids)
    assert cells["grouped"] < 1.1 * real < 1.1 * cells["plain"]  # almost no padding left
    assert torch.equal(grouped.batch("train", 130)[0], LabelBatches({"train": (ids, [0] * len(ids))}, 16, 0, seed=3,
                                                                    group_by_length=True).batch("train", 130)[0])
    assert not np.array_equal(grouped.order("train", 0), grouped.order("train", 1))


def _padding_free(model, rows):
    """Each row's logits alone equal its logits in a right-padded batch with longer rows."""
    model.eval()
    x, mask = collate(rows, pad_id=0)
    with torch.no_grad():
        together = model.logits(x, mask)
        alone = torch.cat([model.logits(*collate([r], pad_id=0)) for r in rows])
    assert torch.allclose(together, alone, atol=1e-5), (together, alone)


@pytest.mark.parametrize("pooling", ["max", "mean", "last"])
@pytest.mark.parametrize("bidirectional", [True, False])
def test_lstm_classifier_ignores_padding(pooling, bidirectional):
    torch.manual_seed(0)
    model = RNNClassifier(RNNClassifierConfig(vocab_size=30, n_embd=8, n_hidden=8, n_layer=2, pooling=pooling,
                                              bidirectional=bidirectional, num_labels=3))
    _padding_free(model, [[3, 4, 5, 6, 7, 8, 9], [5, 2], [9, 9, 1, 4]])


@pytest.mark.parametrize("pooling", ["last", "mean", "max"])
def test_gpt_classifier_ignores_padding(pooling):
    torch.manual_seed(0)
    model = GPTClassifier(GPTClassifierConfig(vocab_size=30, n_layer=2, n_head=2, n_embd=16, block_size=16,
                                              pooling=pooling))
    _padding_free(model, [[3, 4, 5, 6, 7, 8, 9], [5, 2], [9, 9, 1, 4]])


def _hybrid(**kw):
    torch.manual_seed(0)
    return GPTClassifier(GPTClassifierConfig(vocab_size=30, n_layer=2, n_head=2, n_embd=16, block_size=16,
                                             pooling="max", num_labels=3, label_lms=True, **kw))


def test_label_lms_score_each_text_under_each_label_and_ignore_padding():
    model = _hybrid(head_scale=0.5, generative_scale=0.3).eval()
    rows = [[3, 4, 5, 6, 7, 8, 9], [5, 2], [9, 9, 1, 4]]
    x, mask = collate(rows, pad_id=0)
    with torch.no_grad():
        scores = model.label_logprobs(x, mask)
        for i, r in enumerate(rows):  # log P(tokens 1.. | token 0) under each label's own GPT, by hand
            ids = torch.tensor([r])
            for c, lm in enumerate(model.label_lms):
                logp = torch.log_softmax(lm(ids)[0, :-1], -1).gather(-1, ids[0, 1:, None]).sum()
                assert abs(scores[i, c] - logp) < 1e-4
        assert torch.allclose(model.logits(x, mask), 0.5 * model.head_logits(x, mask) + 0.3 * scores, atol=1e-5)
    _padding_free(model, rows)


def test_each_text_trains_only_its_own_labels_lm():
    model = _hybrid()
    x, mask = collate([[3, 4, 5, 6], [7, 8, 9]], pad_id=0)
    model.loss((x, mask, torch.tensor([2, 2]))).backward()
    grads = [lm.wte.weight.grad for lm in model.label_lms]
    assert grads[0] is None and grads[1] is None and grads[2].abs().sum() > 0
    assert model.gpt.wte.weight.grad.abs().sum() > 0 and model.head.weight.grad.abs().sum() > 0


def test_gpt_classifier_reads_the_last_real_token():
    h = torch.randn(2, 4, 3)
    assert torch.equal(pool(h, torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1]]).bool(), "last"), h[[0, 1], [1, 3]])


def test_classifier_config_errors():
    with pytest.raises(LmlabError, match="model.pooling must be one of max, mean, last"):
        RNNClassifier(RNNClassifierConfig(vocab_size=10, pooling="cls"))
    with pytest.raises(LmlabError, match="num_labels must be at least 2"):
        GPTClassifier(GPTClassifierConfig(vocab_size=10, num_labels=1))
    with pytest.raises(LmlabError, match="model.pooling must be one of last, mean, max"):
        GPTClassifier(GPTClassifierConfig(vocab_size=10, pooling="cls"))
    with pytest.raises(LmlabError, match="generative_scale >= 0 \\(with model.label_lms\\)"):
        GPTClassifier(GPTClassifierConfig(vocab_size=10, generative_scale=0.5))
    with pytest.raises(LmlabError, match="model.head_scale must be > 0"):
        GPTClassifier(GPTClassifierConfig(vocab_size=10, label_lms=True, head_scale=0.0))


# ----------------------------------------------------------------------------------- end to end

def test_lstm_learns_the_reviews_it_is_trained_on(lstm_run, mr_small, capsys):
    run = lstm_run["run"]
    rows = read_metrics(run / "metrics.csv")
    losses = [float(r["train_loss"]) for r in rows if r["train_loss"]]
    assert np.mean(losses[-10:]) < 0.5 * np.mean(losses[:10])
    code, out, err = run_main(["classify", "eval", run, "--data", mr_small / "train.tsv", "--json"], capsys)
    assert code == 0, err
    fit = json.loads(out)
    assert fit["accuracy"] > 0.9 and fit["examples"] == 400  # memorised its training reviews
    info = json.loads((run / "classify.json").read_text())
    assert info["labels"] == ["neg", "pos"] and info["val_texts"] == 100 and info["train_texts"] == 400
    assert (run / "model.safetensors").is_file() and (run / "tokenizer.json").is_file()


def test_eval_prints_metrics_and_draws_the_confusion_matrix(lstm_run, mr_small, tmp_path, capsys):
    png = tmp_path / "cm.png"
    code, out, err = run_main(["classify", "eval", lstm_run["run"], "--data", mr_small / "test.tsv",
                               "--png", png], capsys)
    assert code == 0, err
    code, js, _ = run_main(["classify", "eval", lstm_run["run"], "--data", mr_small / "test.tsv", "--json",
                            "--png", tmp_path / "cm2.png"], capsys)
    r = json.loads(js)
    assert f"accuracy {r['accuracy']:.4f} on 100 texts" in out
    assert "| macro avg" in out and "| neg " in out and "| pos " in out and "confusion matrix" in out
    neg_row = next(line for line in out.splitlines() if line.startswith("| neg ") and line.count("|") == 4)
    assert [int(v) for v in neg_row.strip("|").split("|")[1:]] == r["confusion"][0]
    assert sum(map(sum, r["confusion"])) == 100
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_predict_prints_label_and_probabilities(lstm_run, capsys):
    code, out, err = run_main(["classify", "predict", lstm_run["run"], "a gorgeous , witty , seductive movie .",
                               "dull , lifeless and boring", "--json"], capsys)
    assert code == 0, err
    rows = [json.loads(line) for line in out.splitlines()]
    assert len(rows) == 2
    for r in rows:
        assert set(r["probabilities"]) == {"neg", "pos"} and sum(r["probabilities"].values()) == pytest.approx(1)
        assert r["label"] == max(r["probabilities"], key=r["probabilities"].get)
    code, out, _ = run_main(["classify", "predict", lstm_run["run"], "dull , lifeless and boring"], capsys)
    label, probs, text = out.strip().split("\t")
    assert label == rows[1]["label"] and text == "dull , lifeless and boring" and "neg 0." in probs


@pytest.fixture(scope="session")
def review_gpt(mr, tmp_path_factory) -> Path:
    """A small GPT LM-pretrained (20 steps) on 1,000 of the reviews, with a BPE vocabulary of 400."""
    texts, _ = mr
    out = tmp_path_factory.mktemp("review-gpt")
    (out / "reviews.txt").write_text("\n".join(texts[:3000:3]) + "\n", encoding="utf-8")
    lmlab.prepare(out / "reviews.txt", out / "lm", tokenizer="bpe", vocab_size=400, progress=False)
    cfg = lmlab.load_config(None, {"model.n_layer": "2", "model.n_head": "2", "model.n_embd": "32",
                                   "model.block_size": "48", "data.dir": str(out / "lm"),
                                   "train.max_iters": "20", "train.eval_interval": "20", "train.eval_iters": "2",
                                   "train.batch_size": "16", "train.tensorboard": "false"})
    lmlab.train(cfg, out / "gpt", progress=False)
    return out / "gpt"


def test_gpt_pretrain_then_fine_tune(mr, review_gpt, tmp_path, capsys):
    """GPT-1's recipe in miniature: LM-pretrain a GPT on review text, then fine-tune it with a classifier head."""
    texts, labels = mr
    write_tsv(tmp_path / "train.tsv", texts[5000:5100] + texts[5400:5500], labels[5000:5100] + labels[5400:5500])
    code, out, err = run_main(["classify", "train", "--train", tmp_path / "train.tsv", "--model", "gpt", "--init",
                               review_gpt, "--out", tmp_path / "cls", "--epochs", "1", "--max-length", "32",
                               "--lm-loss-weight", "0.5", "--quiet", "--train.tensorboard", "false"], capsys)
    assert code == 0, err
    assert "gpt classifier" in out and "validation accuracy" in out
    cfg = json.loads((tmp_path / "cls" / "config.json").read_text())
    assert cfg["family"] == "gpt_classifier" and cfg["block_size"] == 32 and cfg["lm_loss_weight"] == 0.5
    assert (tmp_path / "cls" / "tokenizer.json").read_text() == (review_gpt / "tokenizer.json").read_text()
    # The backbone starts as the pretrained GPT: with no steps it computes the GPT's own hidden states.
    from lmlab.tasks.classifier_init import from_init as _from_init
    from lmlab.models import build_model
    from lmlab.config import load_config

    model_cfg, tok, tensors = _from_init("gpt", review_gpt, 32, 2, {})
    clf = build_model(load_config(None, None, base={"model": model_cfg}).model)
    clf.load_backbone(tensors, "init")
    gpt, _ = lmlab.load(review_gpt)
    ids = torch.tensor([tok.encode(texts[7])[:30]])
    with torch.no_grad():
        assert torch.allclose(clf.eval().gpt.hidden(ids), gpt.hidden(ids), atol=1e-6)


def test_gpt_with_one_lm_per_label(mr, review_gpt, tmp_path, capsys):
    """--label-lms: each label's LM learns its own texts, and the head + generative weights fitted on the
    validation texts fit them at least as well as the head alone."""
    from lmlab.tasks.classify import batched_outputs, load_classifier

    texts, labels = mr
    pick = list(range(5000, 5150)) + list(range(5400, 5550))
    write_tsv(tmp_path / "train.tsv", [texts[i] for i in pick], [labels[i] for i in pick])
    val = list(range(6000, 6100)) + list(range(300, 400))  # 100 neg + 100 pos (neg.txt is read first)
    write_tsv(tmp_path / "val.tsv", [texts[i] for i in val], [labels[i] for i in val])
    code, out, err = run_main(["classify", "train", "--train", tmp_path / "train.tsv", "--val", tmp_path / "val.tsv",
                               "--model", "gpt", "--init", review_gpt, "--out", tmp_path / "cls", "--epochs", "3",
                               "--max-length", "32", "--lr", "3e-3", "--lm-loss-weight", "0.5", "--label-lms",
                               "--pooling", "max", "--quiet", "--train.tensorboard", "false"], capsys)
    assert code == 0, err
    assert "label LMs: logits = " in out and "x log P(text | label)" in out
    model, tok, info = load_classifier(tmp_path / "cls")
    assert model.cfg.label_lms and model.cfg.head_scale > 0 and model.cfg.generative_scale >= 0
    assert len(model.label_lms) == 2 and info["labels"] == ["neg", "pos"]
    # Trained on its label's texts, each LM gives them a higher likelihood than the other label's LM does.
    scores = batched_outputs(model, tok, info, [texts[i] for i in pick], model.label_logprobs)
    own = np.array([info["labels"].index(labels[i]) for i in pick])
    assert (scores.argmax(1) == own).mean() > 0.7
    # The fitted weights are the validation cross-entropy's minimum: no worse than the head alone.
    vx, vy = [texts[i] for i in val], torch.tensor([info["labels"].index(labels[i]) for i in val])
    head = torch.as_tensor(batched_outputs(model, tok, info, vx, model.head_logits))
    generative = torch.as_tensor(batched_outputs(model, tok, info, vx, model.label_logprobs))
    ce = lambda a, b: torch.nn.functional.cross_entropy(a * head + b * generative, vy).item()  # noqa: E731
    fitted = ce(model.cfg.head_scale, model.cfg.generative_scale)
    assert fitted <= ce(1.0, 0.0) + 1e-6 and fitted <= ce(model.cfg.head_scale * 1.2, model.cfg.generative_scale) + 1e-6
    # Predictions use that combination.
    from lmlab.tasks.classify import predict

    shown = predict(tmp_path / "cls", vx[:5])
    want = torch.softmax(model.cfg.head_scale * head[:5] + model.cfg.generative_scale * generative[:5], dim=-1)
    got = torch.tensor([[p["probabilities"][name] for name in info["labels"]] for p in shown], dtype=want.dtype)
    assert torch.allclose(got, want, atol=1e-5)


def test_label_lms_is_for_gpt(mr_small, tmp_path, capsys):
    code, out, err = run_main(["classify", "train", "--train", mr_small / "train.tsv", "--model", "lstm",
                               "--label-lms", "--out", tmp_path / "x"], capsys)
    assert_user_error(code, out, err, "--label-lms is for --model gpt, not --model lstm")


def test_encoder_from_scratch_trains(mr_small, tmp_path, capsys):
    code, out, err = run_main(["classify", "train", "--train", mr_small / "train.tsv", "--model", "encoder",
                               "--out", tmp_path / "enc", "--epochs", "1", "--vocab-size", "800",
                               "--model.n_layer", "1", "--model.n_embd", "32", "--model.n_head", "2",
                               "--pooling", "mean", "--quiet", "--train.tensorboard", "false"], capsys)
    assert code == 0, err
    model, tok = lmlab.load(tmp_path / "enc")
    assert tok.kind == "wordpiece" and model.cfg.pooling == "mean" and model.cfg.num_labels == 2
    assert tok.encode_special(["a film"], 8)[0][0] == tok.cls_id


# ----------------------------------------------------------------------------------- bad input (exit 2)

def _tsv(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def test_missing_label_column(tmp_path, lstm_run, capsys):
    data = _tsv(tmp_path / "d.tsv", "text\tsentiment\ngreat film\tpos\nbad film\tneg\n")
    code, out, err = run_main(["classify", "train", "--train", data, "--model", "lstm", "--out", tmp_path / "r"],
                              capsys)
    assert_user_error(code, out, err, "has no column 'label'", "'sentiment'", "--label-column")
    assert not (tmp_path / "r").exists()
    code, out, err = run_main(["classify", "eval", lstm_run["run"], "--data", data], capsys)
    assert_user_error(code, out, err, "has no column 'label'")


def test_labels_not_seen_in_training(tmp_path, lstm_run, capsys):
    data = _tsv(tmp_path / "d.tsv", "text\tlabel\ngreat film\tpos\nso-so film\tneutral\nmeh\tmixed\n")
    code, out, err = run_main(["classify", "eval", lstm_run["run"], "--data", data], capsys)
    assert_user_error(code, out, err, "'mixed', 'neutral'", "not trained on", "knows neg, pos")
    val = _tsv(tmp_path / "v.tsv", "text\tlabel\nfine\tpos\nhm\tneutral\n")
    code, out, err = run_main(["classify", "train", "--train", MR, "--val", val, "--model", "lstm",
                               "--out", tmp_path / "r"], capsys)
    assert_user_error(code, out, err, "'neutral'")


def test_empty_text(tmp_path, capsys):
    data = _tsv(tmp_path / "d.tsv", "text\tlabel\ngreat film\tpos\n  \tneg\n")
    code, out, err = run_main(["classify", "train", "--train", data, "--model", "lstm", "--out", tmp_path / "r"],
                              capsys)
    assert_user_error(code, out, err, "line 3 has an empty text")
    (tmp_path / "dir").mkdir()
    (tmp_path / "dir" / "x.pos").write_text("good\n\nfine\n")
    (tmp_path / "dir" / "x.neg").write_text("bad\n")
    code, out, err = run_main(["classify", "train", "--train", tmp_path / "dir", "--out", tmp_path / "r"], capsys)
    assert_user_error(code, out, err, "x.pos line 2 is empty")
    code, out, err = run_main(["classify", "predict", tmp_path, ""], capsys)
    assert_user_error(code, out, err, "non-empty texts")


def test_ragged_tsv_row(tmp_path, capsys):
    data = _tsv(tmp_path / "d.tsv", "text\tlabel\ngreat film\tpos\nbad\tfilm\tneg\nok\tpos\n")
    code, out, err = run_main(["classify", "train", "--train", data, "--out", tmp_path / "r"], capsys)
    assert_user_error(code, out, err, "line 3 has 3 fields but the header has 2")


def test_not_utf8_through_the_command(tmp_path, capsys):
    (tmp_path / "d.tsv").write_bytes("text\tlabel\ntrès bon\tpos\n".encode("latin-1"))
    code, out, err = run_main(["classify", "train", "--train", tmp_path / "d.tsv", "--out", tmp_path / "r"], capsys)
    assert_user_error(code, out, err, "not utf-8 text", "--encoding cp1252")


def test_init_of_the_wrong_family(tmp_path, lstm_run, mr_small, capsys):
    code, out, err = run_main(["classify", "train", "--train", mr_small / "train.tsv", "--model", "encoder",
                               "--init", lstm_run["run"], "--out", tmp_path / "r"], capsys)
    assert_user_error(code, out, err, "is a rnn_classifier run", "--model encoder starts from a encoder run")
    code, out, err = run_main(["classify", "train", "--train", mr_small / "train.tsv", "--model", "lstm",
                               "--init", lstm_run["run"], "--out", tmp_path / "r"], capsys)
    assert_user_error(code, out, err, "--init is for --model encoder or gpt")


def test_hf_directory_of_another_architecture(tmp_path, mr_small, capsys):
    hf = tmp_path / "gpt2"
    hf.mkdir()
    (hf / "config.json").write_text(json.dumps({"model_type": "gpt2", "architectures": ["GPT2LMHeadModel"],
                                                "n_layer": 2, "n_embd": 16, "n_head": 2}))
    code, out, err = run_main(["classify", "train", "--train", mr_small / "train.tsv", "--model", "encoder",
                               "--init", hf, "--out", tmp_path / "r"], capsys)
    assert_user_error(code, out, err, "holds a gpt2 model (GPT2LMHeadModel)", "BERT")
    assert not (tmp_path / "r").exists()


def test_classifier_runs_refuse_lm_commands_and_lm_runs_refuse_classify(lstm_run, tiny_run, mr_small, capsys):
    code, out, err = run_main(["eval", lstm_run["run"], "--data", mr_small / "test.tsv"], capsys)
    assert_user_error(code, out, err, "text classifier, not a language model", "lmlab classify eval")
    code, out, err = run_main(["classify", "predict", tiny_run["run"], "some text"], capsys)
    assert_user_error(code, out, err, "is not a classifier run")
