"""Time to first visible token in the web app's chat vs the official ``openai`` client, on one network.

Same network (one host, SmolLM2-135M-Instruct warm in its llama.cpp worker), same prompt and parameters (the chat
page sends model, messages and ``stream``; so does the client here), in the same run, alternating. Rows:

- browser: from the chat form's submit (a click on Send) to the first piece of the answer in the page's DOM,
  measured inside the page (``performance.now()`` and a MutationObserver; no Playwright round trip in it);
- ``openai`` client: from ``chat.completions.create(stream=True)`` to its first chunk with content.

The difference is what the page adds: fetch + the ReadableStream reader, SSE parsing in JavaScript, and the DOM.
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from pathlib import Path

import openai

from archipelag.network import start_network
from archipelag.settings import REPO_ROOT, Settings
from bench.bench_network import _free_port

sys.path.insert(0, str(REPO_ROOT / "tests" / "browser"))  # the browser tests' builders: one way to drive chromium
from web_accounts import Network
from web_browser import VIEWPORT, answer_growth, launch, sign_in, watch_answers

Row = tuple[str, str, str]
MODEL = "smollm2-135m-instruct"
PROMPT = "Say hello."
REPEAT = 7


def _openai_ttft_ms(client: openai.OpenAI) -> float:
    start = time.perf_counter()
    stream = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": PROMPT}], stream=True)
    first = None
    for chunk in stream:  # read to the end, as the page does, so both leave the worker idle
        if first is None and chunk.choices and chunk.choices[0].delta.content:
            first = time.perf_counter() - start
    assert first is not None, "the answer was empty"
    return 1000 * first


def measure(network: Network, key: str) -> tuple[list[float], list[float]]:
    """(browser TTFTs, openai TTFTs) in ms, alternating, after one warm-up of each."""
    from playwright.sync_api import expect, sync_playwright

    person = network.person("bench")
    client = openai.OpenAI(base_url=f"{network.url}/v1", api_key=key, max_retries=0, timeout=300)
    browser_ms: list[float] = []
    client_ms: list[float] = []
    with sync_playwright() as playwright:
        browser = launch(playwright)
        page = browser.new_context(viewport=VIEWPORT).new_page()  # type: ignore[arg-type]
        sign_in(page, network.url, person.email, person.password)
        expect(page.get_by_label("Model")).to_have_value(MODEL)
        watch_answers(page)
        for run in range(REPEAT + 1):
            page.get_by_role("button", name="New conversation").click()  # the same single question each time
            page.get_by_label("Message").fill(PROMPT)
            page.get_by_role("button", name="Send").click()
            expect(page.locator('[data-role="cost"]')).to_contain_text("credits", timeout=300_000)
            first = answer_growth(page).first_token_ms
            assert first is not None, "no token appeared"
            other = _openai_ttft_ms(client)
            if run:  # the first of each warms the worker and the page
                browser_ms.append(first)
                client_ms.append(other)
        browser.close()
    return browser_ms, client_ms


def run() -> list[Row]:
    with tempfile.TemporaryDirectory(prefix="archipelag-bench-web-") as state:
        settings = Settings(state_dir=Path(state), api_port=_free_port(), ray_head_port=_free_port(),
                            rate_limit_per_min=0, ray_auth="disabled", signup_policy="open")
        embedded = start_network(settings, hosts=1)
        try:
            browser_ms, client_ms = measure(Network(embedded.url, Path(state)), embedded.api_key)
        finally:
            embedded.stop()
    b, c = statistics.median(browser_ms), statistics.median(client_ms)
    spread = f"p50 of {REPEAT}, warm worker, alternating"
    return [
        ("TTFT openai client, first chunk (baseline)", f"{c:.1f} ms", f"{spread}; min {min(client_ms):.1f} ms"),
        ("TTFT browser chat, Send → first token shown", f"{b:.1f} ms",
         f"{b - c:+.1f} ms vs the client; min {min(browser_ms):.1f} ms"),
    ]


if __name__ == "__main__":
    for name, value, note in run():
        print(f"{name:48} {value:>10}  {note}")
