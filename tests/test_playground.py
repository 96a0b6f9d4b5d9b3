"""The playground page end to end in real headless Chromium (Debian's `chromium`, driven by Playwright for Python):
the server runs on a free loopback port, the test types a prompt, clicks Generate, waits for the streamed text,
checks the probability colouring and the hover tooltip, stops a long generation, and saves a screenshot.
"""
from __future__ import annotations

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
