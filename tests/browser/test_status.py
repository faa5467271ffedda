"""The public status page: anyone, signed in or not, sees the hosts online, by region."""

from __future__ import annotations

import pytest
from playwright.sync_api import Page, expect
from web_accounts import Network

pytestmark = [pytest.mark.e2e, pytest.mark.browser, pytest.mark.slow]


def test_the_status_page_shows_the_hosts_online_to_a_stranger(page: Page, network: Network) -> None:
    page.goto(f"{network.url}/status")
    assert page.url == f"{network.url}/status"  # no account needed
    expect(page.locator("#hosts-online")).to_have_text("1", timeout=20_000)
    expect(page.get_by_role("row").filter(has_text="eu-west")).to_contain_text("1")
    expect(page.locator('[role="alert"]')).to_be_empty()
    expect(page.get_by_role("button", name="Sign out")).to_have_count(0)
