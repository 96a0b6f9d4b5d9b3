"""Supervised fine-tuning (tasks/finetune.py): example formats, assistant-only loss marks under real chat templates,
the prepared batches, and `lmlab finetune` end to end on a tiny Llama run (its loss on answers falls, the run chats,
a killed run resumes)."""
from __future__ import annotations

import json

import numpy as np
import pytest

from lmlab.chat import ChatTemplate, load_template
from lmlab.errors import LmlabError
from lmlab.tasks.finetune import SFTBatches, example_ids, prepare_sft, read_examples
from lmlab.tokenizer import load_tokenizer

from conftest import run_main
from test_chat import LLAMA3

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
            str(tmp_path / "play.jinja"), "--quiet", "--train.max_iters", "150", "--train.learning_rate", "1e-2",
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
