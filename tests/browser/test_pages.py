"""Every page, signed out and signed in as an admin: the frame every page shares (the main navigation, Sign out,
status and alert lines, <main>), no serious or critical axe-core violation, no script error (the pages' CSP
refuses inline scripts), a keyboard that reaches every control with Tab, and forms that Enter submits."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from playwright.sync_api import Browser, ConsoleMessage, Page, expect
from web_accounts import Network
from web_browser import (
    axe_violations,
    forms_not_submitted_by_enter,
    settle,
    sign_in,
    unreachable_by_tab,
)

pytestmark = [pytest.mark.e2e, pytest.mark.browser, pytest.mark.slow]

SIGNED_OUT = ["/signin", "/signup", "/verify", "/reset", "/reset/confirm", "/status"]
SIGNED_IN = ["/chat", "/images", "/workloads", "/workloads/wasm-hash", "/jobs", "/jobs/{job}", "/account", "/hosts",
             "/hosts/{host}", "/admin", "/status"]
NAV = ["Chat", "Images", "Workloads", "Jobs", "Account", "Hosts", "Status"]
NAV_ADMIN = ["Chat", "Images", "Workloads", "Jobs", "Account", "Hosts", "Admin", "Status"]


@pytest.fixture(scope="module")
def admin_session(browser: Browser, network: Network) -> dict[str, Any]:
    """An admin's signed-in browser state, with one finished job of theirs (for /jobs/{id}) and a host."""
    admin = network.person("pages-admin", admin=True)
    context = browser.new_context()
    page = context.new_page()
    sign_in(page, network.url, admin.email, admin.password)
    csrf = next(c["value"] for c in context.cookies() if c["name"] == "archipelag_csrf")
    made = context.request.post(f"{network.url}/api/v1/jobs", headers={"X-CSRF-Token": csrf},
                                data={"workload": "wasm-hash", "input": {"text": "hello"}})
    assert made.status == 201, made.text()
    with network.http(network.admin_key) as http:
        host = http.get("/api/v1/hosts").json()["data"][0]["id"]
    session = {"storage_state": context.storage_state(), "job": made.json()["data"]["id"], "host": host}
    context.close()
    return session


def check_page(page: Page, url: str, nav: list[str], signed_in: bool) -> None:
    problems: list[str] = []
    page.on("pageerror", lambda error: problems.append(f"script error: {error}"))
    page.on("console", lambda message: _console_error(message, problems))
    page.goto(url)
    settle(page)
    assert page.url.split("?")[0] == url.split("?")[0], f"{url} went to {page.url}"
    expect(page.get_by_role("main")).to_have_count(1)
    links = page.get_by_role("navigation", name="Main").get_by_role("link")
    assert links.all_inner_texts() == nav
    expect(page.get_by_role("button", name="Sign out")).to_have_count(1 if signed_in else 0)
    expect(page.locator('[role="status"]')).to_have_count(1)  # hidden while empty
    expect(page.locator('[role="alert"]')).to_have_count(1)

    problems += [f"axe: {v}" for v in axe_violations(page)]
    problems += [f"Tab never reaches {control}" for control in unreachable_by_tab(page)]
    problems += [f"Enter does not submit {form}" for form in forms_not_submitted_by_enter(page)]
    assert not problems, f"{url}:\n" + "\n".join(problems)


def _console_error(message: ConsoleMessage, problems: list[str]) -> None:
    if message.type == "error" and "favicon" not in message.text + str(message.location.get("url")):
        problems.append(f"console error: {message.text} ({message.location.get('url')})")


@pytest.mark.parametrize("path", SIGNED_OUT)
def test_a_page_signed_out(path: str, page: Page, network: Network) -> None:
    check_page(page, f"{network.url}{path}", NAV, signed_in=False)


@pytest.mark.parametrize("path", SIGNED_IN)
def test_a_page_signed_in_as_an_admin(path: str, new_page: Callable[..., Page], network: Network,
                                      admin_session: dict[str, Any]) -> None:
    page = new_page(storage_state=admin_session["storage_state"])
    check_page(page, f"{network.url}{path.format(job=admin_session['job'], host=admin_session['host'])}", NAV_ADMIN, signed_in=True)


def test_a_page_that_needs_an_account_sends_a_stranger_to_sign_in_and_back(page: Page, network: Network) -> None:
    page.goto(f"{network.url}/jobs")
    assert page.url == f"{network.url}/signin?next=%2Fjobs"
    person = network.person("returning")
    page.get_by_label("Email").fill(person.email)
    page.get_by_label("Password").fill(person.password)
    page.get_by_label("Password").press("Enter")
    page.wait_for_url(f"{network.url}/jobs")


def test_the_admin_page_is_for_admins_only(page: Page, network: Network) -> None:
    person = network.person("not-admin")
    sign_in(page, network.url, person.email, person.password)
    links = page.get_by_role("navigation", name="Main").get_by_role("link")
    assert links.all_inner_texts() == NAV
    page.goto(f"{network.url}/admin")
    expect(page.get_by_role("main")).to_contain_text("Admins only")
    expect(page.get_by_label("Search accounts")).to_have_count(0)
