"""Workloads and jobs in the browser: a workload chosen from the catalog runs from its form with its events in a
log; the job is then in the jobs table, and its page shows its events, status, output and its host's receipt."""

from __future__ import annotations

import re

import pytest
from playwright.sync_api import Page, expect
from web_accounts import Network
from web_browser import sign_in

pytestmark = [pytest.mark.e2e, pytest.mark.browser, pytest.mark.slow]


def test_a_workload_runs_from_its_page_and_its_job_shows_its_events(page: Page, network: Network) -> None:
    person = network.person("runner")
    sign_in(page, network.url, person.email, person.password)
    page.get_by_role("navigation", name="Main").get_by_role("link", name="Workloads").click()
    page.get_by_role("link", name="Echo a text as a token stream").click()
    page.wait_for_url(f"{network.url}/workloads/wasm-echo-stream")
    page.get_by_label("text", exact=True).fill("one two three")
    page.get_by_label("Input (JSON)").fill('{"repeat": 2}')
    page.get_by_role("button", name="Run").click()

    events = page.get_by_role("log", name="Job events")
    expect(page.get_by_role("status")).to_contain_text("Done", timeout=60_000)
    assert events.locator("p").count() >= 6  # a token event per word and repeat, then done
    expect(events).to_contain_text("three")
    page.get_by_role("link", name=re.compile(r"^job ")).click()
    job_url = page.url

    page.goto(f"{network.url}/jobs")
    row = page.get_by_role("row").filter(has_text="wasm-echo-stream")
    expect(row).to_have_count(1)
    expect(row).to_contain_text("completed")
    row.get_by_role("link").click()
    assert page.url == job_url
    expect(page.locator("#job-status")).to_have_text("completed")
    expect(page.get_by_role("log", name="Job events")).to_contain_text("three")
    expect(page.get_by_role("button", name="Cancel job")).to_be_hidden()
    expect(page.locator("#receipt-check")).to_contain_text("with the key it enrolled")  # its host's signed receipt
