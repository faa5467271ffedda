"""Browser tests' wiring: one `archipelag up --hosts 1` and one Playwright for the directory (both stopped after
its last test, not at the end of the whole run), Debian's chromium, a fresh browser context per page, and the
page's screenshot and HTML in test-artifacts/browser/ when a test fails."""

from __future__ import annotations

import contextlib
import os
import re
import signal
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from docker_engine import REPO_ROOT, engine_lease
from netutil import free_port
from playwright.sync_api import Browser, Page, sync_playwright
from up_process import start_up
from web_accounts import Network
from web_browser import CHROMIUM, VIEWPORT, launch

HERE = Path(__file__).parent
ARTIFACTS = REPO_ROOT / "test-artifacts" / "browser"
_network_stack = contextlib.ExitStack()  # closed after this directory's last test
# Playwright's sync API keeps its event loop current while it runs: left running, it would refuse every later
# asyncio.run() of the test process. It too is stopped after this directory's last test.
_browser_stack = contextlib.ExitStack()
_reports = pytest.StashKey[dict[str, pytest.TestReport]]()


@pytest.fixture(scope="session")
def network(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Network]:
    """The network as `make up` starts it, with one host. ARCHIPELAG_TEST_UP_URL and ARCHIPELAG_TEST_UP_STATE_DIR
    name one already running instead (an open network, e.g. `make up`'s: http://127.0.0.1:8000 and .archipelag)."""
    if running := os.environ.get("ARCHIPELAG_TEST_UP_URL"):
        yield Network(running, Path(os.environ.get("ARCHIPELAG_TEST_UP_STATE_DIR", REPO_ROOT / ".archipelag")))
        return
    state_dir = tmp_path_factory.mktemp("browser")
    port = free_port()
    with _network_stack:
        missing = _network_stack.enter_context(engine_lease())
        process, _ = start_up(state_dir, port, free_port(), hosts=1)

        @_network_stack.callback
        def stop() -> None:
            if process.poll() is None:
                process.send_signal(signal.SIGINT)
                process.wait(timeout=120)

        yield Network(f"http://127.0.0.1:{port}", state_dir, docker_missing=missing)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_teardown(item: pytest.Item, nextitem: pytest.Item | None) -> Iterator[None]:
    yield  # the test's own fixtures first: its pages close while the browser is still there
    if nextitem is None or HERE not in nextitem.path.parents:
        _browser_stack.close()
        _network_stack.close()  # the rest of the run does not share two CPUs with an idle network


@pytest.fixture(scope="session")
def browser() -> Iterator[Browser]:
    if not CHROMIUM.exists():
        pytest.skip(f"no {CHROMIUM}: `make browser` installs Debian's chromium")
    playwright = _browser_stack.enter_context(sync_playwright())
    chromium = launch(playwright)
    _browser_stack.callback(chromium.close)
    yield chromium


@pytest.fixture
def new_page(browser: Browser, request: pytest.FixtureRequest) -> Iterator[Callable[..., Page]]:
    """Pages in contexts of their own (each its own cookies: its own person); keywords go to the context."""
    pages: list[Page] = []

    def make(**context: Any) -> Page:
        page = browser.new_context(viewport=VIEWPORT, **context).new_page()  # type: ignore[arg-type]
        pages.append(page)
        return page

    yield make
    report = request.node.stash.get(_reports, {}).get("call")
    if report is not None and report.failed:
        _save_artifacts(request.node.nodeid, pages)
    for page in pages:
        page.context.close()


@pytest.fixture
def page(new_page: Callable[..., Page]) -> Page:
    return new_page()


def _save_artifacts(nodeid: str, pages: list[Page]) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    name = re.sub(r"[^\w.-]+", "_", nodeid.split("::", 1)[-1])[:150]
    for i, page in enumerate(pages):
        with contextlib.suppress(Exception):  # a crashed page has nothing more to give
            page.screenshot(path=str(ARTIFACTS / f"{name}-{i}.png"), full_page=True)
            (ARTIFACTS / f"{name}-{i}.html").write_text(page.content())


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    report: pytest.TestReport = yield
    item.stash.setdefault(_reports, {})[report.when] = report
    return report  # type: ignore[return-value]
