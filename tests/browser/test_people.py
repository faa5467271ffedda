"""People in the browser: a stranger signs up, verifies by the mailed link and signs in; a key is shown once and
stops working when revoked; an admin grants credits and suspends an account, whose session stops at once."""

from __future__ import annotations

import re
from collections.abc import Callable

import pytest
from playwright.sync_api import Page, expect
from web_accounts import PASSWORD, Network
from web_browser import sign_in

pytestmark = [pytest.mark.e2e, pytest.mark.browser, pytest.mark.slow]


def test_a_stranger_signs_up_verifies_by_the_mailed_link_and_signs_in(page: Page, network: Network) -> None:
    email = "stranger@example.org"
    page.goto(f"{network.url}/signup")
    page.get_by_label("Email").fill(email)
    page.get_by_label("Password").fill(PASSWORD)
    expect(page.get_by_label("Invite code")).to_be_empty()  # optional on an open network
    page.get_by_role("button", name="Sign up").click()
    expect(page.get_by_role("status")).to_contain_text("Check your mail")

    link = network.mailed_link(email)
    assert link.startswith(f"{network.url}/verify?token="), link
    page.goto(link)
    expect(page.get_by_role("status")).to_contain_text("10,000 credits")

    sign_in(page, network.url, email, PASSWORD)
    expect(page.get_by_role("navigation", name="Main").get_by_role("link", name="Chat")).to_be_visible()
    expect(page.get_by_role("button", name="Sign out")).to_be_visible()
    expect(page.get_by_role("navigation", name="Main").get_by_role("link", name="Admin")).to_have_count(0)


def test_a_wrong_password_is_an_alert_and_signs_nobody_in(page: Page, network: Network) -> None:
    person = network.person("forgetful")
    page.goto(f"{network.url}/signin")
    page.get_by_label("Email").fill(person.email)
    page.get_by_label("Password").fill("not the password at all")
    page.get_by_label("Password").press("Enter")
    expect(page.get_by_role("alert")).to_contain_text("wrong email or password")
    assert page.url.startswith(f"{network.url}/signin")


def test_a_key_is_shown_once_and_stops_working_when_revoked(page: Page, network: Network) -> None:
    person = network.person("keymaker")
    sign_in(page, network.url, person.email, person.password)
    page.goto(f"{network.url}/account")
    page.get_by_label("Key name").fill("my laptop")
    page.get_by_role("button", name="Create key").click()
    shown = page.locator('[data-role="new-key"]')
    expect(shown).to_have_text(re.compile(r"^ak_\S{20,}$"))
    key = shown.inner_text()
    with network.http(key) as http:
        assert http.get("/api/v1/account").status_code == 200

    page.reload()
    expect(page.locator('[data-role="new-key"]')).to_be_hidden()  # shown once
    assert key not in page.content()
    row = page.get_by_role("row").filter(has_text="my laptop")
    expect(row).to_have_count(1)
    row.get_by_role("button", name="Revoke").click()
    expect(page.get_by_role("status")).to_contain_text("revoked")
    expect(page.get_by_role("row").filter(has_text="my laptop")).to_have_count(0)
    with network.http(key) as http:
        assert http.get("/api/v1/account").status_code == 401


def test_an_admin_grants_credits_and_suspends_an_account_whose_session_stops_at_once(
        new_page: Callable[[], Page], network: Network) -> None:
    admin, victim = network.person("admin", admin=True), network.person("victim")
    theirs = new_page()
    sign_in(theirs, network.url, victim.email, victim.password)
    theirs.goto(f"{network.url}/account")
    expect(theirs.locator("#credits")).to_contain_text("10,000")

    mine = new_page()
    sign_in(mine, network.url, admin.email, admin.password)
    mine.get_by_role("navigation", name="Main").get_by_role("link", name="Admin").click()
    # Typing searches (300 ms after the last key); Enter on the search form is covered by test_pages.
    mine.get_by_label("Search accounts").fill(victim.email)
    expect(mine.locator("#accounts-caption")).to_contain_text(f"1 accounts matching “{victim.email}”")
    row = mine.get_by_role("row").filter(has_text=victim.email)
    expect(row).to_have_count(1)
    row.get_by_label("Credits").fill("5")
    row.get_by_role("button", name="Grant credits").click()
    expect(mine.get_by_role("status")).to_contain_text(f"Granted 5 credits to {victim.email}")
    theirs.reload()
    expect(theirs.locator("#credits")).to_contain_text("10,005")

    row.get_by_label("Reason").fill("a test of suspension")
    row.get_by_role("button", name="Suspend").click()
    expect(mine.get_by_role("status")).to_contain_text("suspended")
    expect(row).to_contain_text("suspended (a test of suspension)")
    expect(row.get_by_role("button", name="Reinstate")).to_be_visible()

    # The victim's open page: its next API call is refused, and its next page is the sign-in page.
    refused = theirs.evaluate("async () => (await fetch('/api/v1/auth/session')).status")
    assert refused == 403  # the account is suspended (its session ended too)
    theirs.goto(f"{network.url}/account")
    assert theirs.url.startswith(f"{network.url}/signin")


def test_an_admin_suspends_a_host_which_then_takes_no_jobs_and_reinstates_it(
        new_page: Callable[[], Page], network: Network) -> None:
    admin = network.person("host-admin", admin=True)
    with network.http(network.admin_key) as http:
        host = http.get("/api/v1/hosts").json()["data"][0]
    page = new_page()
    sign_in(page, network.url, admin.email, admin.password)
    page.goto(f"{network.url}/admin")
    row = page.locator(f'tr[data-host="{host["id"]}"]')
    expect(row).to_have_count(1)
    row.get_by_label("Reason").fill("a test of host suspension")
    row.get_by_role("button", name="Suspend").click()
    expect(page.get_by_role("status")).to_contain_text("is suspended")
    expect(row).to_contain_text("suspended (a test of host suspension")
    try:
        with network.http(network.admin_key) as http:  # the only host: a new job finds none to run it
            refused = http.post("/api/v1/jobs", json={"workload": "wasm-hash", "input": {"text": "x"}})
            assert refused.status_code == 503, refused.text
    finally:
        row.get_by_role("button", name="Reinstate").click()
        expect(page.get_by_role("status")).to_contain_text("is reinstated")
    with network.http(network.admin_key) as http:
        assert http.post("/api/v1/jobs", json={"workload": "wasm-hash", "input": {"text": "x"}}).status_code == 201
