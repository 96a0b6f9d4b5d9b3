"""Supervised fine-tuning (tasks/finetune.py): example formats, assistant-only loss marks under real chat templates,
the prepared batches, and `lmlab finetune` end to end on a tiny Llama run (its loss on answers falls, the run chats,
a killed run resumes)."""
from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest

from lmlab.chat import ChatTemplate, load_template
from lmlab.errors import LmlabError
from lmlab.tasks.finetune import SFTBatches, example_ids, prepare_sft, read_examples
from lmlab.tokenizer import load_tokenizer

from conftest import run_main
from test_chat import LLAMA3
from test_llama_convert import bpe, hf_dirs, imported  # noqa: F401 (fixtures)

# A compact template: the tiny run's context is 32 characters ("u:seven and eight\na:fifteen\n").
SHORT = "{% for m in messages %}{{ m.role[0] }}:{{ m.content }}\n{% endfor %}{% if add_generation_prompt %}a:{% endif %}"
WORDS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven", "twelve",
         "thirteen", "fourteen", "fifteen", "sixteen", "seventeen", "eighteen"]


def write_jsonl(path, records):
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
    return path


def test_the_three_formats_and_their_errors(tmp_path):
    chat = write_jsonl(tmp_path / "c.jsonl", [{"messages": [{"role": "user", "content": "hi"},
                                                           {"role": "assistant", "content": "hello"}]}])
    pc = write_jsonl(tmp_path / "p.jsonl", [{"prompt": "2+2?", "completion": "4"}])
    (tmp_path / "a.json").write_text(json.dumps([{"instruction": "Add.", "input": "2 and 2", "output": "4"},
                                                 {"instruction": "Say hi.", "output": "hi"}]), encoding="utf-8")
    assert read_examples(chat) == [[{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]]
    assert read_examples(pc) == [[{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"}]]
    assert read_examples(tmp_path / "a.json")[0] == [{"role": "user", "content": "Add.\n\n2 and 2"},
                                                     {"role": "assistant", "content": "4"}]
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"prompt": "a", "completion": "b"}) + "\n\n{\"prompt\": \"x\"\n", encoding="utf-8")
    cases = [(bad, "bad.jsonl, line 3: not valid JSON"),
             (write_jsonl(tmp_path / "n.jsonl", [{"messages": [{"role": "user", "content": "hi"}]}]),
              "line 1: the example has no assistant turn"),
             (write_jsonl(tmp_path / "r.jsonl", [{"messages": [{"role": "bot", "content": "hi"}]}]),
              r"line 1: messages\[0\] has role 'bot'"),
             (write_jsonl(tmp_path / "u.jsonl", [{"text": "hi"}]), "cannot tell the data's format")]
    for path, message in cases:
        with pytest.raises(LmlabError, match=message):
            read_examples(path)


def spans_of(ids, target, tok) -> list[str]:
    """The texts of the runs of target tokens."""
    out, run = [], []
    for i, t in zip(ids, target):
        if t:
            run.append(i)
        elif run:
            out.append(tok.decode(run))
            run = []
    return out + ([tok.decode(run)] if run else [])


CONVERSATION = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "你好！2 + 2?"},
                {"role": "assistant", "content": "4 🌟"}, {"role": "user", "content": "And 3 + 3?"},
                {"role": "assistant", "content": "6, café."}]


def test_only_the_answers_and_their_end_of_turn_carry_the_loss(smollm2_run):
    tok = load_tokenizer(smollm2_run)
    chatml = load_template(tok)  # SmolLM2's own ChatML template: <|im_end|> ends a turn
    for messages in (CONVERSATION[:3], CONVERSATION):
        ids, target = example_ids(messages, chatml, tok, chatml.stop_ids)
        assert ids == tok.encode(chatml.render(messages, add_generation_prompt=False))
        answers = [m["content"] for m in messages if m["role"] == "assistant"]
        assert spans_of(ids, target, tok) == [a + "<|im_end|>" for a in answers]  # not the "\n" after it
    llama3 = ChatTemplate(LLAMA3, {"bos_token": "<s>"}, [], "llama3")  # another real template (no stop ids here)
    ids, target = example_ids(CONVERSATION, llama3, tok, [])
    spans = spans_of(ids, target, tok)  # (SmolLM2's BPE has no <|eot_id|> token: a merged piece may cross the end)
    assert len(spans) == 2 and spans[0].startswith("4 🌟<|eot_id|>") and spans[1].startswith("6, café.<|eot_id|>")
    assert all(len(s) <= len(a) + len("<|eot_id|>") + 2 for s, a in zip(spans, ["4 🌟", "6, café."]))
    ids, target = example_ids(CONVERSATION, chatml, tok, chatml.stop_ids, train_on_prompt=True)
    assert all(target)


def test_prepared_batches_mask_the_prompt_and_the_padding(smollm2_run, tmp_path):
    tok = load_tokenizer(smollm2_run)
    chatml = load_template(tok)
    data = write_jsonl(tmp_path / "t.jsonl", [{"messages": CONVERSATION}] * 3 + [
        {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello " * 80}]}])
    meta = prepare_sft(data, tmp_path / "d", tok, chatml, val_path=data)
    assert meta["train"]["examples"] == meta["val"]["examples"] == 4 and 0 < meta["train"]["target_tokens"] < meta["train"]["tokens"]
    batches = SFTBatches(tmp_path / "d", batch_size=4, seed=0, block_size=64, pad_id=tok.eot_id)
    x, y = batches.batch("val", 0)
    assert x.shape == y.shape and x.shape[1] <= 64
    ids, target = example_ids(CONVERSATION, chatml, tok, chatml.stop_ids)
    row = next(r for r in range(4) if x[r, 0] == ids[0] and (y[r] != -100).sum() == sum(target[1:]))
    want = np.where(np.array(target[1:]), ids[1:], -100)
    assert y[row, :len(want)].tolist() == want.tolist() and (y[row, len(want):] == -100).all()


def test_lmlab_finetune_end_to_end(tiny_llama_run, tmp_path, capsys):
    import random

    rng = random.Random(0)
    records = []
    for _ in range(120):
        a, b = rng.randrange(10), rng.randrange(9)
        records.append({"messages": [{"role": "user", "content": f"{WORDS[a]} and {WORDS[b]}"},
                                     {"role": "assistant", "content": WORDS[a + b]}]})
    data = write_jsonl(tmp_path / "train.jsonl", records)
    (tmp_path / "play.jinja").write_text(SHORT, encoding="utf-8")
    out = tmp_path / "ft"
    argv = ["finetune", str(tiny_llama_run["run"]), "--data", str(data), "--out", str(out), "--chat-template",
            str(tmp_path / "play.jinja"), "--full", "--quiet", "--train.max_iters", "150", "--train.learning_rate", "1e-2",
            "--train.batch_size", "16", "--train.eval_interval", "20"]
    code, stdout, err = run_main(argv, capsys)
    assert code == 0, err
    import csv

    rows = [r for r in csv.DictReader(open(out / "metrics.csv")) if r["val_loss"]]
    assert float(rows[-1]["val_loss"]) < 0.7 * float(rows[0]["val_loss"])  # the answers are learned
    assert load_template(load_tokenizer(out)).source == SHORT  # the run keeps the template it was tuned with
    code, _, err = run_main(argv, capsys)
    assert code == 2 and "already holds a fine-tuning run" in err
    code, _, err = run_main(["finetune", str(out), "--resume", "--train.max_iters", "160", "--quiet"], capsys)
    assert code == 0, err


# ----------------------------------------------------------------------------------- LoRA runs

def lora_examples(tmp_path):
    """Chat examples in the words of Tiny Shakespeare (the BPE of test_llama_convert knows them)."""
    import random

    rng = random.Random(1)
    lines = [l for l in (Path(__file__).resolve().parents[1] / "data" / "tinyshakespeare.txt").read_text(
        encoding="utf-8").splitlines() if 10 < len(l) < 40][:200]
    records = [{"messages": [{"role": "user", "content": lines[i]}, {"role": "assistant", "content": lines[i + 1]}]}
               for i in rng.sample(range(len(lines) - 1), 60)]
    return write_jsonl(tmp_path / "lora.jsonl", records)


def test_a_lora_run_is_a_plain_run_with_peft_adapter_files(imported, hf_dirs, tmp_path, capsys):
    """The run's model.safetensors holds the merged weights (every verb loads it); its adapter files load with
    peft onto the HF base and give the same logits; a run stopped and resumed equals one uninterrupted."""
    import csv

    import torch
    from safetensors.torch import load_file

    import lmlab

    peft = pytest.importorskip("peft")
    data = lora_examples(tmp_path)
    common = ["--data", str(data), "--quiet", "--lora-rank", "4", "--lora-targets", "q,v,down",
              "--train.learning_rate", "5e-3", "--train.eval_interval", "10", "--train.batch_size", "4",
              "--train.lora_dropout", "0.1"]
    whole = tmp_path / "whole"
    code, _, err = run_main(["finetune", str(imported["llama"]), "--out", str(whole), *common,
                             "--train.max_iters", "20"], capsys)
    assert code == 0, err
    # a run that stopped at step 10 and is resumed to 20 (warmup is 10 steps: its schedule is the whole run's)
    code, _, err = run_main(["finetune", str(imported["llama"]), "--out", str(tmp_path / "ten"), *common,
                             "--train.max_iters", "10"], capsys)
    assert code == 0, err
    code, _, err = run_main(["finetune", str(tmp_path / "ten"), "--resume", "--train.max_iters", "20", "--quiet"],
                            capsys)
    assert code == 0, err
    losses = lambda run: [r["train_loss"] for r in csv.DictReader(open(run / "metrics.csv")) if r["train_loss"]]  # noqa
    assert losses(tmp_path / "ten") == losses(whole)
    a, b = load_file(whole / "adapter_model.safetensors"), load_file(tmp_path / "ten" / "adapter_model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert any(k.endswith("mlp.down_proj.lora_B.weight") for k in a) and not any("k_proj" in k for k in a)
    model, tok = lmlab.load(whole)  # a plain Llama: the adapters folded in
    base, _ = lmlab.load(imported["llama"])
    ids = torch.tensor([tok.encode("ROMEO: what light")])
    with torch.no_grad():
        ours, before = model(ids), base(ids)
        hf = peft.PeftModel.from_pretrained(copy.deepcopy(hf_dirs["llama"][1]), str(whole)).eval()  # (peft adapts in place)
        theirs = hf(ids).logits
    assert (ours - before).abs().max() > 1e-3  # the adapters changed the model
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-5)


def test_a_bare_adapter_directory_loads_onto_the_base_it_names(imported, tmp_path, capsys):
    """The adapter files alone (copied out of a LoRA run) load in every verb: lmlab.load finds the base run in
    base_model_name_or_path and merges them in; lmlab.load(base, adapter=DIR) does the same; a base that is not
    there is one sentence."""
    import shutil

    import torch

    import lmlab

    run = tmp_path / "lora"
    code, _, err = run_main(["finetune", str(imported["llama"]), "--data", str(lora_examples(tmp_path)), "--out",
                             str(run), "--quiet", "--lora-rank", "4", "--train.max_iters", "6",
                             "--train.learning_rate", "1e-2"], capsys)
    assert code == 0, err
    bare = tmp_path / "bare"
    bare.mkdir()
    for name in ("adapter_config.json", "adapter_model.safetensors"):
        shutil.copy(run / name, bare / name)
    assert json.loads((bare / "adapter_config.json").read_text())["base_model_name_or_path"] == \
        str(Path(imported["llama"]).resolve())
    ids = torch.tensor([[5, 17, 42, 9, 100]])
    with torch.no_grad():
        merged = lmlab.load(run)[0](ids)
        assert lmlab.finetune is not None
        for model, _ in (lmlab.load(bare), lmlab.load(imported["llama"], adapter=bare)):
            torch.testing.assert_close(model(ids), merged, rtol=0, atol=1e-5)
            assert all(p.requires_grad for p in model.parameters())  # a plain model again
    code, out, err = run_main(["generate", str(bare), "--prompt", "ROMEO:", "--max-new-tokens", "5", "--seed", "1"],
                              capsys)
    assert code == 0 and out.startswith("ROMEO:"), err
    config = json.loads((bare / "adapter_config.json").read_text())
    (bare / "adapter_config.json").write_text(json.dumps({**config, "base_model_name_or_path": "HuggingFaceTB/x"}))
    code, _, err = run_main(["generate", str(bare), "--prompt", "a"], capsys)
    assert code == 2 and "holds an adapter for 'HuggingFaceTB/x', which is not an lmlab run here" in err, err


def test_lora_settings_that_do_not_fit_the_model_are_refused_before_anything_is_written(imported, tmp_path, capsys):
    data = lora_examples(tmp_path)
    for args, message in [(["--lora-targets", "q,attn"], "is named 'attn'; its Linear layers are q_proj (q), k_proj"),
                          (["--lora-rank", "500"], "rank 500 is larger than layers.0.self_attn."),
                          (["--full", "--lora-rank", "4"], "--full trains every weight")]:
        out = tmp_path / "out"
        code, _, err = run_main(["finetune", str(imported["llama"]), "--data", str(data), "--out", str(out),
                                 "--quiet", *args], capsys)
        assert code == 2 and message in err and not out.exists() and "Traceback" not in err, err


def test_the_loss_runs_the_head_only_where_there_are_targets_and_means_the_same():
    import torch
    import torch.nn.functional as F

    from lmlab.models.llama import Llama, LlamaConfig

    torch.manual_seed(0)
    model = Llama(LlamaConfig(vocab_size=50, n_embd=32, n_layer=2, n_head=2, block_size=16))
    x, y = torch.randint(0, 50, (3, 16)), torch.randint(0, 50, (3, 16))
    y[:, :9] = -100  # a prompt
    y[2, 12:] = -100  # padding
    full = F.cross_entropy(model(x).reshape(-1, 50), y.reshape(-1))  # (ignore_index -100)
    torch.testing.assert_close(model.loss((x, y)), full, rtol=0, atol=1e-6)


def test_lmlab_merge_folds_a_peft_adapter_into_a_plain_run(imported, hf_dirs, tmp_path, capsys):
    import torch

    import lmlab

    peft = pytest.importorskip("peft")
    hf = copy.deepcopy(hf_dirs["llama"][1])  # (peft adapts the model in place; the fixture's is shared)
    torch.manual_seed(3)
    tuned = peft.get_peft_model(hf, peft.LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "down_proj"]))
    with torch.no_grad():
        for name, p in tuned.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.1)
    tuned.save_pretrained(tmp_path / "adapter")
    code, stdout, err = run_main(["merge", str(imported["llama"]), "--adapter", str(tmp_path / "adapter"),
                                  "--out", str(tmp_path / "merged")], capsys)
    assert code == 0 and "merged into 4 layers" in stdout, err
    model, tok = lmlab.load(tmp_path / "merged")
    ids = torch.tensor([tok.encode("ROMEO: what light")])
    with torch.no_grad():
        theirs = tuned.eval()(ids).logits
        torch.testing.assert_close(model(ids), theirs, rtol=0, atol=1e-5)
    # an adapter that names its base (lmlab writes its SHA-256) on another base: refused, nothing written
    config = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    (tmp_path / "adapter" / "adapter_config.json").write_text(json.dumps({**config, "lmlab_base_sha256": "0" * 64}))
    code, _, err = run_main(["merge", str(imported["llama"]), "--adapter", str(tmp_path / "adapter"),
                             "--out", str(tmp_path / "other")], capsys)
    assert code == 2 and "was made for other base weights" in err and not (tmp_path / "other").exists(), err


# ----------------------------------------------------------------------------------- packing, checkpointing, --nproc

def tiny_gpt(vocab_size: int):
    import torch

    from lmlab.models import build_model
    from lmlab.models.gpt import GPTConfig

    torch.manual_seed(0)
    return build_model(GPTConfig(vocab_size=vocab_size, block_size=128, n_layer=2, n_head=2, n_embd=32, dropout=0.0))


@pytest.mark.parametrize("family", ["llama", "gpt"])
def test_a_packed_batch_gives_the_loss_and_gradients_of_the_same_examples_unpacked(family, imported, tmp_path):
    import torch

    import lmlab

    model, tok = lmlab.load(imported["llama"])
    model = model if family == "llama" else tiny_gpt(tok.vocab_size)
    data = tmp_path / "data"
    meta = prepare_sft(lora_examples(tmp_path), data, tok)
    n = meta["train"]["examples"]
    plain, packed = (SFTBatches(data, n, 0, model.block_size, 0, pack=pack) for pack in (False, True))
    assert plain.batches("train") == packed.batches("train") == 1  # every example in one batch, both ways
    x, y = plain.batch("train", 0)
    px, py, segments = packed.batch("train", 0)
    assert x.shape[0] == n and px.shape[0] < n / 3 and px.shape[1] <= model.block_size
    assert int((py != -100).sum()) == int((y != -100).sum()) > 0
    real = segments >= 0
    assert int(real.sum()) == int(sum(len(r) for r in plain.split("train")[0]))  # every input token, once
    assert (py[~real] == -100).all() and int(segments.max()) >= 2  # padding carries no loss; rows hold 3+ examples

    def loss_and_grads(batch):
        model.zero_grad()
        loss = model.loss(batch)
        loss.backward()
        return loss.detach(), {k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None}

    (a, ga), (b, gb) = loss_and_grads((x, y)), loss_and_grads((px, py, segments))
    torch.testing.assert_close(a, b, rtol=0, atol=1e-5)
    assert ga.keys() == gb.keys()
    for k in ga:
        torch.testing.assert_close(ga[k], gb[k], rtol=1e-4, atol=1e-6, msg=k)


def test_pack_examples_fills_rows_best_fit_and_places_each_example_once():
    from lmlab.tasks.finetune import pack_examples

    lengths = [int(v) for v in np.random.default_rng(0).integers(1, 60, 500)]
    rows = pack_examples(lengths, 64)
    assert sorted(i for r in rows for i in r) == list(range(500))
    assert all(sum(lengths[i] for i in r) <= 64 for r in rows)
    assert len(rows) <= 1.1 * sum(lengths) / 64 + 1  # near the fewest rows possible
    assert pack_examples(lengths, 64) == rows  # a pure function of the lengths


def test_gradient_checkpointing_gives_the_same_loss_and_adapter_gradients(imported):
    import torch

    import lmlab
    from lmlab.lora import apply_lora

    model, tok = lmlab.load(imported["llama"])
    apply_lora(model, ["q", "v", "down"], rank=4)
    torch.manual_seed(0)
    for layer in model.modules():
        if hasattr(layer, "lora_B"):
            torch.nn.init.normal_(layer.lora_B.weight, std=0.1)
    ids = torch.tensor([tok.encode("ROMEO: what light through yonder window breaks")])
    model.train()

    def run(checkpoint):
        model.checkpoint_blocks = checkpoint
        model.zero_grad()
        loss = model.loss((ids[:, :-1], ids[:, 1:]))
        loss.backward()
        return loss.detach(), {k: p.grad.clone() for k, p in model.named_parameters() if p.requires_grad}

    (a, ga), (b, gb) = run(False), run(True)
    torch.testing.assert_close(a, b, rtol=0, atol=1e-6)
    assert ga.keys() == gb.keys() and all(k.endswith(("lora_A.weight", "lora_B.weight")) for k in ga)
    for k in ga:
        torch.testing.assert_close(ga[k], gb[k], rtol=1e-5, atol=1e-7, msg=k)


def test_finetune_packs_and_checkpoints_end_to_end_and_refuses_gradient_checkpointing_without_blocks(
        imported, tiny_lstm_run, tmp_path, capsys):
    data = lora_examples(tmp_path)
    out = tmp_path / "packed"
    code, _, err = run_main(["finetune", str(imported["llama"]), "--data", str(data), "--out", str(out), "--quiet",
                             "--pack", "--gradient-checkpointing", "--lora-rank", "4", "--train.max_iters", "4",
                             "--train.batch_size", "2"], capsys)
    assert code == 0, err
    assert json.loads((out / "data" / "meta.json").read_text())["pack"] is True
    assert (out / "adapter_model.safetensors").is_file()
    code, _, err = run_main(["train", "--config", str(tiny_lstm_run["config"]), "--out", str(tmp_path / "rnn"),
                             "--train.gradient_checkpointing", "true"], capsys)
    assert code == 2 and "a rnn model has none" in err and "Traceback" not in err, err


def test_two_gloo_processes_train_the_adapters_one_process_trains_with_grad_accum(imported, tmp_path, capsys):
    """lmlab finetune --nproc 2 (DDP over gloo, no dropout) prepares once and trains what one process with
    grad_accum 2 trains; --resume --nproc 2 continues it."""
    import torch
    from safetensors.torch import load_file

    from lmlab.checkpoint import load_trainer_state
    from conftest import cli

    data = lora_examples(tmp_path)
    flags = ["--data", str(data), "--quiet", "--lora-rank", "4", "--lora-targets", "q,v", "--lora-dropout", "0",
             "--train.max_iters", "4", "--train.batch_size", "4", "--train.learning_rate", "5e-3",
             "--train.eval_interval", "4", "--train.tensorboard", "false"]
    two, one = tmp_path / "two", tmp_path / "one"
    r = cli("finetune", imported["llama"], "--out", two, *flags, "--nproc", "2", "--train.strategy", "ddp",
            timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.count("done: step 4") == 1
    state = load_trainer_state(two / "trainer_state.pt")
    assert state["world_size"] == 2 and state["global_batch"] == 8
    code, _, err = run_main(["finetune", str(imported["llama"]), "--out", str(one), *flags, "--train.grad_accum", "2"],
                            capsys)
    assert code == 0, err
    a, b = load_file(two / "adapter_model.safetensors"), load_file(one / "adapter_model.safetensors")
    assert a.keys() == b.keys() and len(a) == 8
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=1e-5, msg=k)
    r = cli("finetune", two, "--resume", "--nproc", "2", "--train.max_iters", "6", "--quiet", timeout=300)
    assert r.returncode == 0 and "done: step 6" in r.stdout, r.stderr[-3000:]
