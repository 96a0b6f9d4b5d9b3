"""Encoder-decoder Transformer: prepared pairs, batches, incremental decoding through lmlab.generate, training,
translation, BLEU / chrF / ROUGE, denoising pretraining + fine-tuning, and the bad inputs of the CLI.

Real data: a 500-pair slice of Multi30k de-en in data/multi30k-mini (see its SOURCE.md). Models are tiny
(2 layers x 64) and train for at most a few hundred steps, so the whole file runs in well under a minute.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

import lmlab
from lmlab.errors import LmlabError
from lmlab.generate import GenerationConfig, beam_search
from lmlab.metrics import text_metric
from lmlab.models.seq2seq import Seq2Seq, Seq2SeqConfig
from lmlab.tasks.pairs import PairBatches, corrupt, load_pairs, prepare_pairs, read_lines, special_ids
from lmlab.tasks.translate import load_seq2seq, translate

from conftest import ROOT, read_metrics, run_main

MINI = ROOT / "data" / "multi30k-mini"
TINY = {"family": "seq2seq", "n_layer": 2, "n_head": 2, "n_embd": 64, "block_size": 48, "dropout": 0.1}
TRAIN = {"batch_size": 32, "learning_rate": 3e-3, "min_lr": 3e-4, "warmup_iters": 10, "eval_interval": 40,
         "eval_iters": 2, "log_interval": 20, "weight_decay": 0.0, "tensorboard": False, "seed": 7}


def write_config(path: Path, data_dir, model=None, train=None) -> Path:
    cfg = {"model": {**TINY, **(model or {})}, "data": {"dir": str(data_dir)}, "train": {**TRAIN, **(train or {})}}
    path.write_text(yaml.safe_dump(cfg, sort_keys=False), encoding="utf-8")
    return path


@pytest.fixture(scope="session")
def pairs(tmp_path_factory) -> Path:
    """The mini Multi30k slice prepared with a shared 1,000-token BPE vocabulary."""
    out = tmp_path_factory.mktemp("s2s") / "pairs"
    prepare_pairs(MINI / "train.de", MINI / "train.en", out, val_src=MINI / "val.de", val_tgt=MINI / "val.en",
                  vocab_size=1000, progress=False)
    return out


@pytest.fixture(scope="session")
def trained(pairs, tmp_path_factory) -> Path:
    """A 2 x 64 encoder-decoder trained 120 steps on the 500 pairs."""
    base = tmp_path_factory.mktemp("s2s-run")
    cfg = lmlab.load_config(write_config(base / "tiny.yaml", pairs, train={"max_iters": 120}))
    lmlab.train(cfg, base / "run", progress=False)
    return base / "run"


@pytest.fixture(scope="session")
def memorized(pairs, tmp_path_factory) -> dict:
    """A model that has learned 24 pairs by heart (train = val = those pairs, no dropout or smoothing)."""
    base = tmp_path_factory.mktemp("s2s-memo")
    src, tgt = read_lines(MINI / "train.de")[:24], read_lines(MINI / "train.en")[:24]
    (base / "m.de").write_text("\n".join(src) + "\n", encoding="utf-8")
    (base / "m.en").write_text("\n".join(tgt) + "\n", encoding="utf-8")
    prepare_pairs(base / "m.de", base / "m.en", base / "data", val_src=base / "m.de", val_tgt=base / "m.en",
                  tokenizer=pairs, progress=False)
    cfg = lmlab.load_config(write_config(base / "memo.yaml", base / "data",
                                         model={"dropout": 0.0, "label_smoothing": 0.0},
                                         train={"max_iters": 150, "batch_size": 24, "learning_rate": 5e-3,
                                                "eval_interval": 150, "eval_iters": 1}))
    lmlab.train(cfg, base / "run", progress=False)
    model, tok = load_seq2seq(base / "run")
    return {"run": base / "run", "model": model, "tokenizer": tok, "src": src, "tgt": tgt}


# ---------------------------------------------------------------------------------------------- prepare


def test_prepare_shares_one_vocabulary_and_keeps_every_pair(pairs):
    from lmlab.files import read_json

    meta = read_json(pairs / "meta.json")
    assert meta["task"] == "pairs" and meta["vocab_size"] == 1000
    assert meta["train"]["pairs"] == 500 and meta["val"]["pairs"] == 50
    tok = lmlab.load_tokenizer(pairs)
    assert special_ids(tok) == {"eos_id": meta["eos_id"], "pad_id": meta["pad_id"], "mask_id": meta["mask_id"]}
    assert len({meta["eos_id"], meta["pad_id"], meta["mask_id"]}) == 3
    src, tgt = load_pairs(pairs, "train")
    de, en = read_lines(MINI / "train.de"), read_lines(MINI / "train.en")
    for i in (0, 1, 250, 499):  # both languages go through the one vocabulary and come back unchanged
        assert tok.decode(src[i]) == de[i] and tok.decode(tgt[i]) == en[i]
    # German and English words share subwords (e.g. names, numbers): one embedding table serves both.
    assert set(np.concatenate(src)) & set(np.concatenate(tgt))


def test_line_count_mismatch_names_both_counts(tmp_path, capsys):
    (tmp_path / "a.de").write_text("eins\nzwei\ndrei\n", encoding="utf-8")
    (tmp_path / "a.en").write_text("one\ntwo\n", encoding="utf-8")
    code, _, err = run_main(["seq2seq", "prepare", "--src", tmp_path / "a.de", "--tgt", tmp_path / "a.en",
                             "--vocab-size", 300, "--out", tmp_path / "out"], capsys)
    assert code == 2
    assert "has 3 lines but" in err and "has 2;" in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()


def test_empty_lines_are_skipped_and_counted(tmp_path, capsys):
    de, en = read_lines(MINI / "train.de")[:40], read_lines(MINI / "train.en")[:40]
    de[3], en[7] = "", ""  # an empty side on each language
    (tmp_path / "a.de").write_text("\n".join(de) + "\n", encoding="utf-8")
    (tmp_path / "a.en").write_text("\n".join(en) + "\n", encoding="utf-8")
    code, out, _ = run_main(["seq2seq", "prepare", "--src", tmp_path / "a.de", "--tgt", tmp_path / "a.en",
                             "--vocab-size", 300, "--val-fraction", 0.1, "--out", tmp_path / "out"], capsys)
    assert code == 0 and "skipped 2 pair(s) with an empty side" in out
    src, tgt = load_pairs(tmp_path / "out", "train")
    val_src, _ = load_pairs(tmp_path / "out", "val")
    assert len(src) + len(val_src) == 38 and all(len(s) and len(t) for s, t in zip(src, tgt))


# ---------------------------------------------------------------------------------------------- model


@pytest.mark.parametrize("norm, pos", [("pre", "sinusoidal"), ("post", "learned")])
def test_cached_decoding_matches_the_full_forward_with_padding_and_reordering(norm, pos):
    torch.manual_seed(0)
    cfg = Seq2SeqConfig(vocab_size=40, block_size=12, n_layer=2, n_decoder_layer=1, n_head=2, n_embd=16,
                        dropout=0.0, eos_id=0, pad_id=1, mask_id=2, norm=norm, pos_encoding=pos)
    model = Seq2Seq(cfg).eval()
    src = torch.tensor([[5, 6, 7, 8, 0], [9, 10, 0, 1, 1]])  # the second source is padded
    tgt = torch.tensor([[0, 11, 12, 13], [0, 14, 15, 16]])

    def reference(s, t):  # no cache: one teacher-forced pass; pad and mask are never produced
        with torch.no_grad():
            logits = model(s, t)
        logits[..., [1, 2]] = float("-inf")
        return torch.log_softmax(logits, -1)

    full = reference(src, tgt)
    bound, alone = model.bind(src), model.bind(src[1:, :3])  # row 1 without its padding
    state = state_alone = None
    for t in range(1, 5):
        lp, state = bound.logprobs_next(tgt[:, :t], state)
        lp_alone, state_alone = alone.logprobs_next(tgt[1:, :t], state_alone)
        torch.testing.assert_close(lp, full[:, t - 1], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(lp_alone[0], full[1, t - 1], atol=1e-5, rtol=1e-5)
    assert state.cache.length == 4
    rows = torch.tensor([1, 1, 0])  # beam search keeps rows of the cache *and* of the encoder memory
    longer = torch.cat([tgt[rows], torch.tensor([[3], [4], [5]])], dim=1)
    lp, _ = bound.logprobs_next(longer, bound.reorder_state(state, rows))
    torch.testing.assert_close(lp, reference(src[rows], longer)[:, -1], atol=1e-5, rtol=1e-5)


def test_loss_ignores_padding_and_smooths_labels_only_in_training(pairs):
    torch.manual_seed(0)
    from lmlab.files import read_json

    meta = read_json(pairs / "meta.json")
    cfg = Seq2SeqConfig(vocab_size=1000, block_size=48, n_layer=1, n_head=2, n_embd=32, dropout=0.0,
                        label_smoothing=0.1, eos_id=meta["eos_id"], pad_id=meta["pad_id"], mask_id=meta["mask_id"])
    model = Seq2Seq(cfg)
    data = PairBatches(pairs, 8, 0, 48, meta["eos_id"], meta["pad_id"])
    x, y_in, y_out = data.batch("val", 0)
    text = (y_out[:, :-1] != -100) & (y_out[:, :-1] != meta["eos_id"])
    assert torch.equal(y_in[:, 1:][text], y_out[:, :-1][text])  # the decoder's input is the target shifted right
    assert ((y_out == meta["eos_id"]).sum(1) == 1).all()  # every target ends with one <eos>
    assert (y_in[:, 0] == meta["eos_id"]).all()
    model.eval()
    with torch.no_grad():
        logp = torch.log_softmax(model(x, y_in), -1)
        real = y_out != -100
        nll = -logp[real].gather(1, y_out[real][:, None]).mean()
        torch.testing.assert_close(model.loss((x, y_in, y_out)), nll)
        # Extra padding on both sides changes nothing.
        pad = torch.full((x.shape[0], 5), meta["pad_id"])
        padded = (torch.cat([x, pad], 1), torch.cat([y_in, pad], 1), torch.cat([y_out, torch.full_like(pad, -100)], 1))
        torch.testing.assert_close(model.loss(padded), nll, atol=1e-5, rtol=1e-5)
        model.train()  # label smoothing (Szegedy et al.): (1 - e) x NLL + e x mean over the vocabulary of -log p
        smoothed = 0.9 * nll + 0.1 * -logp[real].mean()
        torch.testing.assert_close(model.loss((x, y_in, y_out)), smoothed, atol=1e-5, rtol=1e-5)


def test_batches_are_a_pure_function_of_the_index_and_cover_each_epoch(pairs):
    from lmlab.files import read_json

    meta = read_json(pairs / "meta.json")
    a = PairBatches(pairs, 32, 3, 48, meta["eos_id"], meta["pad_id"], warn=False)
    b = PairBatches(pairs, 32, 3, 48, meta["eos_id"], meta["pad_id"], warn=False)
    for i in (0, 5, 17, 40):
        assert all(torch.equal(u, v) for u, v in zip(a.batch("train", i), b.batch("train", i)))
    per_epoch = a.batches("train")
    first = np.concatenate([a.rows("train", i) for i in range(per_epoch)])
    second = np.concatenate([a.rows("train", per_epoch + i) for i in range(per_epoch)])
    assert sorted(first) == list(range(500)) and sorted(second) == list(range(500))
    assert not np.array_equal(first, second)  # each epoch has its own order


# ---------------------------------------------------------------------------------------------- training and decoding


def test_training_lowers_the_validation_loss(trained):
    rows = [r for r in read_metrics(trained / "metrics.csv") if r["val_loss"]]
    first, last = float(rows[0]["val_loss"]), float(rows[-1]["val_loss"])
    assert first > math.log(1000) - 1 and last < first - 2.0


def test_memorized_pairs_come_back_with_greedy_and_beam_search(memorized):
    m, tok, src, tgt = memorized["model"], memorized["tokenizer"], memorized["src"], memorized["tgt"]
    greedy = translate(m, tok, src)
    beam = translate(m, tok, src, GenerationConfig(temperature=0.0, num_beams=4, length_penalty=1.0))
    assert text_metric(greedy, tgt, "bleu")["score"] > 80
    assert text_metric(beam, tgt, "bleu")["score"] > 80
    # Empty lines give empty lines; the output follows the input order whatever the batching.
    mixed = [src[5], "", src[0], src[17]]
    assert translate(m, tok, mixed, batch_size=2) == [greedy[5], "", greedy[0], greedy[17]]
    assert translate(m, tok, mixed, GenerationConfig(temperature=0.0, num_beams=4)) == [beam[5], "", beam[0], beam[17]]


def test_beam_search_finds_sequences_at_least_as_likely_as_greedy(trained):
    m, tok = load_seq2seq(trained)
    src = [line for line in read_lines(MINI / "test.de") if len(tok.encode(line)) < 30][:6]
    cfg = GenerationConfig(temperature=0.0, num_beams=5, length_penalty=0.0, max_new_tokens=40)
    start = [m.cfg.eos_id]
    for line in src:
        ids = tok.encode(line) + [m.cfg.eos_id]
        bound = m.bind(torch.tensor([ids]))
        best = beam_search(bound, tok, start, cfg)[0]
        greedy_ids = []
        state, seq = None, torch.tensor([start])
        for _ in range(40):  # greedy by hand, through the same logprobs_next
            lp, state = bound.logprobs_next(seq, state)
            token = int(lp[0].argmax())
            greedy_ids.append((token, float(lp[0, token])))
            if token == m.cfg.eos_id:
                break
            seq = torch.cat([seq, torch.tensor([[token]])], 1)
        greedy_score = sum(lp for _, lp in greedy_ids)
        beam_score = sum(best.logprobs) + (0.0 if best.finish_reason != "stop" else float(
            bound.logprobs_next(torch.tensor([start + best.token_ids]), None)[0][0, m.cfg.eos_id]))
        assert beam_score >= greedy_score - 1e-4


def test_long_input_is_cut_with_a_note(trained, capsys):
    m, tok = load_seq2seq(trained)
    long = " ".join(read_lines(MINI / "train.de")[:8])  # far more than block_size tokens
    assert len(tok.encode(long)) > m.cfg.block_size
    capsys.readouterr()
    out = translate(m, tok, [long, "Ein Hund."], GenerationConfig(temperature=0.0, max_new_tokens=10))
    err = capsys.readouterr().err
    assert "1 input line(s) have more than block_size - 1 = 47 tokens" in err
    assert len(out) == 2
    cut = tok.decode(tok.encode(long)[:47])
    assert out[0] == translate(m, tok, [cut], GenerationConfig(temperature=0.0, max_new_tokens=10))[0]


# ---------------------------------------------------------------------------------------------- CLI: translate, eval


def test_cli_translate_and_eval_bleu_chrf_rouge(trained, tmp_path, capsys):
    import sacrebleu

    data, refs = MINI / "test.de", MINI / "test.en"
    code, out, _ = run_main(["seq2seq", "translate", trained, "--input", data, "--num-beams", 3,
                             "--max-new-tokens", 30], capsys)
    assert code == 0 and len(out.splitlines()) == 50
    code, out, err = run_main(["eval", trained, "--data", data, "--refs", refs, "--metric", "bleu",
                               "--num-beams", 3, "--max-new-tokens", 30, "--hyps", tmp_path / "hyp.en"], capsys)
    assert code == 0, err
    hyps = (tmp_path / "hyp.en").read_text(encoding="utf-8").splitlines()
    want = sacrebleu.corpus_bleu(hyps, [read_lines(refs)])
    assert f"BLEU = {want.score:.2f}" in out
    assert "signature: nrefs:1|case:mixed|eff:no|tok:13a|smooth:exp|version:" in out
    code, out, _ = run_main(["eval", trained, "--data", data, "--refs", refs, "--metric", "chrf", "--json",
                             "--max-new-tokens", 30], capsys)
    assert code == 0
    import json

    result = json.loads(out)
    assert result["metric"] == "chrf" and 0 < result["score"] < 100 and "chrF2" in result["text"]
    code, out, _ = run_main(["eval", trained, "--data", data, "--refs", refs, "--metric", "rouge",
                             "--max-new-tokens", 30], capsys)
    assert code == 0 and "ROUGE-1" in out and "ROUGE-2" in out and "ROUGE-L" in out


def test_text_metrics_by_the_standard_implementations():
    refs = ["A dog runs on the beach.", "Two men are playing chess."]
    assert text_metric(refs, refs, "bleu")["score"] == pytest.approx(100.0)
    rouge = text_metric(["A dog runs on the grass.", "Two women play chess."], refs, "rouge")
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(["rouge1"], use_stemmer=True)
    want = 50 * sum(scorer.score(r, h)["rouge1"].fmeasure
                    for r, h in zip(refs, ["A dog runs on the grass.", "Two women play chess."]))
    assert rouge["rouge1"] == pytest.approx(want) and rouge["rouge2"] < rouge["rouge1"]
    with pytest.raises(LmlabError, match="unknown metric 'meteor'"):
        text_metric(refs, refs, "meteor")
    with pytest.raises(LmlabError, match="2 hypotheses but 1 references"):
        text_metric(refs, refs[:1], "bleu")


def test_eval_bad_inputs_exit_2_with_one_sentence(trained, tiny_run, tmp_path, capsys):
    data, refs = MINI / "test.de", MINI / "test.en"
    code, _, err = run_main(["eval", trained, "--data", data, "--refs", refs, "--metric", "meteor"], capsys)
    assert code == 2 and "unknown metric 'meteor'; use --metric bleu, chrf, rouge." in err
    short = tmp_path / "short.en"
    short.write_text("\n".join(read_lines(refs)[:49]) + "\n", encoding="utf-8")
    code, _, err = run_main(["eval", trained, "--data", data, "--refs", short], capsys)
    assert code == 2 and "has 50 lines but" in err and "has 49" in err
    code, _, err = run_main(["eval", trained, "--data", data], capsys)
    assert code == 2 and "is a seq2seq run" in err and "--refs" in err
    code, _, err = run_main(["eval", tiny_run["run"], "--data", data, "--refs", refs], capsys)
    assert code == 2 and "not a seq2seq run" in err
    code, _, err = run_main(["seq2seq", "translate", tiny_run["run"], "--input", data], capsys)
    assert code == 2 and "not a seq2seq run" in err
    assert all("Traceback" not in e for e in (err,))


def test_seq2seq_train_refuses_data_that_is_not_pairs(char_data, tmp_path, capsys):
    cfg = write_config(tmp_path / "c.yaml", char_data, train={"max_iters": 2})
    code, _, err = run_main(["seq2seq", "train", "--config", cfg, "--out", tmp_path / "run"], capsys)
    assert code == 2 and "prepare them with `lmlab seq2seq prepare`" in err
    assert not (tmp_path / "run").exists()


def test_resume_gives_the_same_losses(pairs, tmp_path):
    cfg_path = write_config(tmp_path / "c.yaml", pairs, model={"n_embd": 32},
                            train={"max_iters": 6, "eval_interval": 3, "save_interval": 3, "batch_size": 8})
    lmlab.train(lmlab.load_config(cfg_path), tmp_path / "straight", progress=False)
    lmlab.train(lmlab.load_config(cfg_path, {"train.max_iters": "3"}), tmp_path / "resumed", progress=False)
    lmlab.train(lmlab.load_config(cfg_path), tmp_path / "resumed", resume=True, progress=False)
    a, b = read_metrics(tmp_path / "straight" / "metrics.csv"), read_metrics(tmp_path / "resumed" / "metrics.csv")
    assert [r["train_loss"] for r in a] == [r["train_loss"] for r in b]


# ---------------------------------------------------------------------------------------------- denoising


def test_corruption_is_seeded_never_empty_and_keeps_tokens_near_home():
    ids = list(range(10, 60))
    a = corrupt(ids, np.random.default_rng(1), mask_id=3)
    assert a == corrupt(ids, np.random.default_rng(1), mask_id=3) != corrupt(ids, np.random.default_rng(2), mask_id=3)
    assert 3 in a and len(a) < len(ids)  # spans became single <mask> tokens, some tokens were deleted
    assert corrupt(ids, np.random.default_rng(1), 3, mask_ratio=0, delete=0, shuffle_window=0) == ids
    shuffled = corrupt(ids, np.random.default_rng(4), 3, mask_ratio=0, delete=0, shuffle_window=3)
    assert sorted(shuffled) == ids and shuffled != ids
    assert all(abs(pos - (tok - 10)) < 3 for pos, tok in enumerate(shuffled))
    assert corrupt([7], np.random.default_rng(0), 3, mask_ratio=0, delete=0.99, shuffle_window=0) in ([7], [3])


def test_pretrain_then_fine_tune_with_init(pairs, tmp_path, capsys):
    cfg = write_config(tmp_path / "c.yaml", pairs, train={"max_iters": 60, "eval_interval": 60})
    code, out, err = run_main(["seq2seq", "pretrain", "--text", MINI / "train.en", "--tokenizer", pairs,
                               "--config", cfg, "--out", tmp_path / "dae", "--quiet"], capsys)
    assert code == 0, err
    assert "fine-tune it with `lmlab seq2seq train --config CONFIG --init" in out
    dae = read_metrics(tmp_path / "dae" / "metrics.csv")
    assert float(dae[-1]["val_loss"]) < float(dae[0]["val_loss"]) - 1.0  # it learned to rebuild the text
    ft_cfg = write_config(tmp_path / "ft.yaml", pairs, train={"max_iters": 1, "eval_interval": 1})
    code, _, err = run_main(["seq2seq", "train", "--config", ft_cfg, "--init", tmp_path / "dae",
                             "--out", tmp_path / "ft", "--quiet"], capsys)
    assert code == 0, err
    code, _, err = run_main(["seq2seq", "train", "--config", ft_cfg, "--out", tmp_path / "scratch", "--quiet"], capsys)
    assert code == 0, err
    start_ft = float(read_metrics(tmp_path / "ft" / "metrics.csv")[0]["val_loss"])
    start_scratch = float(read_metrics(tmp_path / "scratch" / "metrics.csv")[0]["val_loss"])
    assert start_ft < start_scratch - 1.0  # the pretrained decoder already knows English
    # A pretrained run with another vocabulary cannot be fine-tuned on these pairs.
    other = tmp_path / "other"
    prepare_pairs(MINI / "train.de", MINI / "train.en", other, vocab_size=400, progress=False)
    code, _, err = run_main(["seq2seq", "train", "--config", write_config(tmp_path / "o.yaml", other),
                             "--init", tmp_path / "dae", "--out", tmp_path / "bad", "--quiet"], capsys)
    assert code == 2 and "another tokenizer" in err
