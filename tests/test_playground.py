"""The playground page end to end in real headless Chromium (Debian's `chromium`, driven by Playwright for Python):
the server runs on a free loopback port, the test types a prompt, clicks Generate, waits for the streamed text,
checks the probability colouring and the hover tooltip, stops a long generation, and saves a screenshot.
"""
from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import pytest

from lmlab.generate import GenerationConfig, complete

CHROMIUM = "/usr/bin/chromium"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--no-first-run"]


@pytest.fixture(scope="module")
def browser():
    if not Path(CHROMIUM).exists():
        pytest.skip(f"needs Debian's chromium at {CHROMIUM} (apt-get install chromium; .ci/run installs it)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip("needs Playwright for Python (pip install -r requirements-dev.txt)")
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS, headless=True)
        yield b
        b.close()


def set_slider(page, selector: str, value) -> None:
    page.eval_on_selector(selector, "(el, v) => { el.value = v; el.dispatchEvent(new Event('input')); }", str(value))


def test_playground_streams_colours_and_stops(browser, tiny_model, tmp_path):
    from lmlab.serve import Limits, ServerThread, create_app

    app = create_app({"tiny": tiny_model}, Limits(max_tokens=2000))
    engine = app.state.served["tiny"].engine
    with ServerThread(app) as url:
        page = browser.new_page(viewport={"width": 1200, "height": 800})
        errors = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        outside = []
        page.on("request", lambda r: None if r.url.startswith(url) else outside.append(r.url))
        page.goto(url + "/")
        page.wait_for_function("document.querySelectorAll('#model option').length > 0")
        assert page.input_value("#model") == "tiny"
        assert page.get_attribute("#max-tokens", "max") == "2000"

        # type a prompt, sample 60 tokens at temperature 0.9 with a seed; Generate streams them in
        page.fill("#prompt", "ROMEO:")
        set_slider(page, "#temperature", 0.9)
        set_slider(page, "#max-tokens", 60)
        page.fill("#seed", "7")
        assert page.inner_text("#max-tokens-value") == "60"
        page.click("#generate")
        page.wait_for_selector("#output .tok", state="attached")  # the first streamed token
        page.wait_for_function("!document.querySelector('#generate').disabled", timeout=30_000)
        tokens = page.locator("#output .tok")
        generated = "".join(tokens.all_text_contents())
        model, tok = tiny_model
        want = complete(model, tok, "ROMEO:", GenerationConfig(max_new_tokens=60, temperature=0.9, seed=7))[0]
        assert generated == want.text and tokens.count() == len(want.token_ids)
        assert "finish:" in page.inner_text("#status")

        # each token coloured by its probability, red (unlikely) .. green (likely)
        probs = [float(p) for p in page.eval_on_selector_all("#output .tok", "els => els.map(e => e.dataset.p)")]
        assert probs == pytest.approx([2.718281828 ** lp for lp in want.logprobs], abs=1e-4)  # data-p: 4 decimals
        colours = page.eval_on_selector_all("#output .tok", "els => els.map(e => getComputedStyle(e).backgroundColor)")
        assert all(c.startswith("rgb(") and c != "rgba(0, 0, 0, 0)" for c in colours)
        assert len(set(colours)) > 1, "tokens of different probability get different colours"

        # hovering a token shows the top alternatives
        page.hover("#output .tok >> nth=3")
        page.wait_for_selector("#tip", state="visible")
        tip = page.inner_text("#tip")
        assert "p = " in tip and page.locator("#tip tr").count() == 5
        shot = tmp_path / "playground.png"
        page.screenshot(path=str(shot), full_page=True)
        assert shot.stat().st_size > 10_000
        if os.environ.get("LMLAB_SCREENSHOT_DIR"):
            shutil.copy(shot, Path(os.environ["LMLAB_SCREENSHOT_DIR"]) / shot.name)

        # the toggle turns the colouring off
        page.mouse.move(0, 0)
        page.click("#colour")
        assert page.eval_on_selector("#output .tok", "e => getComputedStyle(e).backgroundColor") == "rgba(0, 0, 0, 0)"

        # Stop ends a long generation: the page says so and the server drops the request from its batch
        set_slider(page, "#max-tokens", 2000)
        set_slider(page, "#temperature", 1)
        page.fill("#seed", "")
        page.click("#generate")
        page.wait_for_function("document.querySelectorAll('#output .tok').length >= 5")
        page.click("#stop")
        page.wait_for_function("document.querySelector('#status').textContent.includes('stopped')")
        deadline = time.monotonic() + 10
        while engine.running:
            assert time.monotonic() < deadline, "the stopped request kept running on the server"
            time.sleep(0.02)
        assert page.locator("#output .tok").count() < 2000

        # a bad request shows the server's message
        page.fill("#prompt", "")
        page.click("#generate")
        page.wait_for_selector("#output .error")
        assert "prompt" in page.inner_text("#output .error")
        assert not errors and not outside
        page.close()


# ----------------------------------------------------------------------------------------------- chat mode

# A compact chat template in characters the tiny char-level model knows (ChatML's <|im_start|> is not in its
# vocabulary), short enough that two turns fit its 32-token context: "S:...\nU:...\nA:...\nU:...\nA:".
CHAT_TEMPLATE = ("{% for m in messages %}{{ m.role[0] | upper }}:{{ m.content }}\n{% endfor %}"
                 "{% if add_generation_prompt %}A:{% endif %}")


class Recorder:
    """ASGI wrapper around the app that keeps the JSON body of each chat request, as the server received it."""

    def __init__(self, app):
        self.app, self.bodies = app, []

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["path"] != "/v1/chat/completions":
            return await self.app(scope, receive, send)
        chunks = []

        async def recording():
            message = await receive()
            if message["type"] == "http.request":
                chunks.append(message.get("body", b""))
                if not message.get("more_body"):
                    self.bodies.append(json.loads(b"".join(chunks)))
            return message

        await self.app(scope, recording, send)


@pytest.fixture(scope="module")
def chat_server(tiny_run, tmp_path_factory):
    """The server with the tiny run twice: 'tiny' with CHAT_TEMPLATE, 'plain' without a chat template. Yields
    (url, recorder, slow): the chat bodies received are in recorder.bodies; slow["delay"] seconds are added to
    each decoding step of 'tiny' (its own copy of the model), so that Stop lands in the middle of a reply."""
    import lmlab
    from lmlab.serve import Limits, ServerThread, create_app

    template = tmp_path_factory.mktemp("chat") / "compact.jinja"
    template.write_text(CHAT_TEMPLATE, encoding="utf-8")
    model, tok = lmlab.load(tiny_run["run"])
    slow = {"delay": 0.0}
    step = model.logprobs_next
    model.logprobs_next = lambda *a, **k: (time.sleep(slow["delay"]), step(*a, **k))[1]
    app = create_app({"tiny": (model, tok), "plain": lmlab.load(tiny_run["run"])}, Limits(max_tokens=2000),
                     chat_templates={"tiny": template})
    recorder = Recorder(app)
    with ServerThread(recorder) as url:
        yield url, recorder, slow


@pytest.fixture
def chat_page(browser, chat_server):
    """A fresh playground page in chat mode; fails the test on any page error or request leaving the server."""
    url, recorder, _ = chat_server
    recorder.bodies.clear()
    page = browser.new_page(viewport={"width": 1200, "height": 800})
    errors, outside = [], []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.on("request", lambda r: None if r.url.startswith(url) else outside.append(r.url))
    page.goto(url + "/")
    page.wait_for_function("document.querySelectorAll('#model option').length == 2")
    page.check("#mode-chat")
    assert page.is_visible("#conversation") and page.is_visible("#system") and not page.is_visible("#prompt")
    set_slider(page, "#temperature", 0.9)
    yield page
    page.close()
    assert not errors and not outside


def assistant_replies(page) -> list[str]:
    return page.eval_on_selector_all(".msg.assistant", "els => els.map(e => e.textContent)")


def send(page, text: str) -> None:
    page.fill("#message", text)
    page.press("#message", "Enter")


def wait_idle(page) -> None:
    page.wait_for_function("!document.querySelector('#send').disabled", timeout=30_000)


def test_chat_streams_a_reply_and_sends_the_whole_history(chat_page, chat_server):
    page, (_, recorder, _) = chat_page, chat_server
    page.select_option("#model", "tiny")
    assert not page.is_visible("#no-chat")
    page.fill("#system", "Be")
    set_slider(page, "#max-tokens", 5)
    page.fill("#seed", "3")

    # Shift+Enter is a new line in the message box; Enter sends the message
    page.fill("#message", "Hi")
    page.press("#message", "Shift+Enter")
    assert page.input_value("#message") == "Hi\n" and not recorder.bodies
    send(page, "Hi")
    page.wait_for_selector(".msg.assistant .tok", state="attached")
    wait_idle(page)
    assert page.eval_on_selector_all(".msg.user", "els => els.map(e => e.textContent)") == ["Hi"]
    first = assistant_replies(page)[0]
    assert len(first) == 5 and page.input_value("#message") == ""
    assert page.get_attribute(".msg.assistant", "data-note") == "max tokens reached"
    assert "finish: length" in page.inner_text("#status")
    # the reply's tokens are coloured by probability, with their alternatives, as in completion mode
    probs = page.eval_on_selector_all(".msg.assistant .tok", "els => els.map(e => +e.dataset.p)")
    assert len(probs) == 5 and all(0 < p <= 1 for p in probs)
    page.hover(".msg.assistant .tok >> nth=0")
    page.wait_for_selector("#tip", state="visible")
    assert page.locator("#tip tr").count() == 5
    page.mouse.move(0, 0)

    # the server got the system prompt, the message and the sampling controls
    body = recorder.bodies[0]
    assert body["messages"] == [{"role": "system", "content": "Be"}, {"role": "user", "content": "Hi"}]
    assert (body["model"], body["stream"], body["logprobs"]) == ("tiny", True, True)
    assert (body["max_tokens"], body["temperature"], body["top_p"], body["seed"]) == (5, 0.9, 1, 3)

    # the second turn sends the whole conversation so far
    send(page, "Go")
    page.wait_for_function("document.querySelectorAll('.msg.assistant').length == 2")
    wait_idle(page)
    assert recorder.bodies[1]["messages"] == [
        {"role": "system", "content": "Be"}, {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": first}, {"role": "user", "content": "Go"}]
    assert len(assistant_replies(page)[1]) == 5 and not page.locator(".msg.error").count()

    # New chat starts over: the next request has only the system prompt and the new message
    page.click("#new-chat")
    assert page.locator(".msg").count() == 0
    send(page, "Yo")
    wait_idle(page)
    page.wait_for_selector(".msg.assistant")
    assert recorder.bodies[2]["messages"] == [{"role": "system", "content": "Be"}, {"role": "user", "content": "Yo"}]

    # the server's error is shown in the conversation; the refused message goes back to the message box
    send(page, "<|>")
    page.wait_for_selector(".msg.error")
    wait_idle(page)
    assert "vocabulary" in page.inner_text(".msg.error")
    assert page.input_value("#message") == "<|>" and page.locator(".msg.user").count() == 1


def test_chat_stop_keeps_the_partial_reply(chat_page, chat_server):
    page, (_, recorder, slow) = chat_page, chat_server
    set_slider(page, "#max-tokens", 12)
    slow["delay"] = 0.25  # seconds per decoding step: the 12-token reply takes 3 s
    try:
        send(page, "Hi")
        page.wait_for_function("document.querySelectorAll('.msg.assistant .tok').length >= 2")
        page.click("#stop")
        page.wait_for_function("document.querySelector('#status').textContent.includes('stopped')")
    finally:
        slow["delay"] = 0.0
    partial = assistant_replies(page)[0]
    assert 2 <= len(partial) < 12
    assert page.get_attribute(".msg.assistant", "data-note") == "stopped"
    # the partial reply is part of the history the next turn sends
    set_slider(page, "#max-tokens", 2)
    send(page, "Go")
    page.wait_for_function("document.querySelectorAll('.msg.assistant').length == 2")
    wait_idle(page)
    assert recorder.bodies[-1]["messages"] == [{"role": "user", "content": "Hi"},
                                               {"role": "assistant", "content": partial},
                                               {"role": "user", "content": "Go"}]


def test_chat_mode_refuses_a_model_without_chat_template(chat_page, chat_server):
    page, (_, recorder, _) = chat_page, chat_server
    page.select_option("#model", "plain")
    page.wait_for_selector("#no-chat", state="visible")
    assert "no chat template" in page.inner_text("#no-chat")
    assert page.is_disabled("#send") and page.is_disabled("#message")
    assert "(no chat)" in page.inner_text("#model option[value=plain]")
    assert "(no chat)" not in page.inner_text("#model option[value=tiny]")
    page.select_option("#model", "tiny")
    assert not page.is_visible("#no-chat") and page.is_enabled("#send")
    # back in completion mode the model can complete, and no chat request was sent
    page.check("#mode-completion")
    assert page.is_visible("#prompt") and not page.is_visible("#conversation")
    assert "(no chat)" not in page.inner_text("#model option[value=plain]")
    assert not recorder.bodies


# ----------------------------------------------------------------------------------------------- Chinese text

def test_playground_shows_chinese_of_byte_level_tokens_as_whole_characters(browser):
    """A model whose tokens are byte-level BPE pieces of Chinese characters (an n-gram of BPE ids trained on People's
    Daily): the page shows the prompt and then the same text as the non-streamed completion, every character whole (no U+FFFD, no
    mojibake), even where one character is spread over several streamed tokens."""
    from lmlab.models.ngram import NGramLM
    from lmlab.serve import Limits, ServerThread, create_app
    from lmlab.tokenizer import train_tokenizer

    lines = (Path(__file__).parents[1] / "data" / "zh" / "peoples-daily-1998.txt").read_text("utf-8").splitlines()
    bpe = train_tokenizer("bpe", ["\n".join(lines[:300])], vocab_size=300)  # few merges: a character is 2-3 tokens
    model = NGramLM.train(lines[:300], order=8, tokenizer=bpe, discount_fallback=True, progress=False)
    want = complete(model, model, "新华社", GenerationConfig(max_new_tokens=60, temperature=0))[0]
    assert any("\ufffd" in bpe.decode([i]) for i in want.token_ids)  # the tokens do split characters
    with ServerThread(create_app({"zh": (model, model)}, Limits(max_tokens=200))) as url:
        page = browser.new_page()
        errors = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(url + "/")
        page.wait_for_function("document.querySelectorAll('#model option').length > 0")
        page.fill("#prompt", "新华社")
        set_slider(page, "#temperature", 0)
        set_slider(page, "#max-tokens", 60)
        page.click("#generate")
        page.wait_for_function("!document.querySelector('#generate').disabled", timeout=30_000)
        shown = page.inner_text("#output")
        page.close()
    assert not errors
    assert shown.rstrip("\n") == ("新华社" + want.text).rstrip("\n") and "\ufffd" not in shown  # prompt, then output
    assert sum(1 for c in shown if "\u4e00" <= c <= "\u9fff") > 10
