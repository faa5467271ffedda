"""Screenshots of every page of a running network, for docs/screenshots/ (1280×800 PNGs):

    make up                                          # in one terminal; then, in another:
    .venv/bin/python tests/browser/screenshots.py    # --url http://127.0.0.1:8000 --state-dir .archipelag

It needs an open network (`make up` runs one) and its state dir (the admin key and the mail log): it signs up a
person, makes them an admin with the network's first account, signs in with chromium, chats, makes an image and
runs a job so the pages have something to show, and saves each page.
"""

from __future__ import annotations

import argparse
import io
import re
import sys
from pathlib import Path

from PIL import Image
from playwright.sync_api import Page, expect, sync_playwright
from web_accounts import Network
from web_browser import VIEWPORT, launch, settle, sign_in

REPO_ROOT = Path(__file__).resolve().parents[2]
SIGNED_OUT = {"signin": "/signin", "signup": "/signup", "status": "/status"}
SIGNED_IN = {"workloads": "/workloads", "jobs": "/jobs", "account": "/account", "hosts": "/hosts", "admin": "/admin"}


def save(page: Page, out: Path, name: str) -> None:
    """The viewport as a PNG of at most 256 colours (a few tens of KB instead of a few hundred)."""
    shot = Image.open(io.BytesIO(page.screenshot()))
    shot.convert("RGB").quantize(colors=256).save(out / f"{name}.png", optimize=True)
    print(f"{out / name}.png")


def pages_at_work(page: Page, url: str, out: Path) -> None:
    """The signed-in person chats, makes an image and runs a job, each page saved once it has its answer (a
    conversation and a fresh image live in their page's memory)."""
    page.goto(f"{url}/chat")
    page.get_by_label("Message").fill("Say hello.")
    page.get_by_role("button", name="Send").click()
    expect(page.locator('[data-role="cost"]').last).to_contain_text("credits", timeout=240_000)
    save(page, out, "chat")
    page.goto(f"{url}/images")
    page.get_by_label("Prompt").fill("a red boat at dawn")
    page.get_by_label("Steps").fill("8")
    page.get_by_role("button", name="Generate").click()
    expect(page.get_by_role("status")).to_contain_text("Done", timeout=240_000)
    save(page, out, "images")
    page.goto(f"{url}/workloads/wasm-echo-stream")
    page.get_by_label("text", exact=True).fill("islands of compute")
    page.get_by_role("button", name="Run").click()
    expect(page.get_by_role("status")).to_contain_text("Done", timeout=60_000)
    save(page, out, "workload")
    page.get_by_role("link", name=re.compile(r"^job ")).click()
    settle(page)
    save(page, out, "job")


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", default="http://127.0.0.1:8000")
    parser.add_argument("--state-dir", type=Path, default=REPO_ROOT / ".archipelag")
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "docs" / "screenshots")
    args = parser.parse_args(argv)
    network = Network(args.url.rstrip("/"), args.state_dir)
    args.out.mkdir(parents=True, exist_ok=True)
    person = network.person("screenshots", admin=True)
    with sync_playwright() as playwright:
        browser = launch(playwright)
        page = browser.new_context(viewport=VIEWPORT).new_page()  # type: ignore[arg-type]
        for name, path in SIGNED_OUT.items():
            page.goto(f"{network.url}{path}")
            settle(page)
            save(page, args.out, name)
        sign_in(page, network.url, person.email, person.password)
        pages_at_work(page, network.url, args.out)
        for name, path in SIGNED_IN.items():
            page.goto(f"{network.url}{path}")
            settle(page)
            save(page, args.out, name)
        page.goto(f"{network.url}/hosts")
        page.get_by_role("main").get_by_role("link").first.click()  # the host that ran the jobs above
        settle(page)
        save(page, args.out, "host")
        browser.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
