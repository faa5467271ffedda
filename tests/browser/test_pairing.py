"""Pairing a host in the browser: a stranger's machine asks to enrol (as `archipelag host join --coordinator …`
does, with its own key), its owner types the code it shows on the Hosts page, and the machine is theirs."""

from __future__ import annotations

import pytest
from playwright.sync_api import Page, expect
from web_accounts import Network
from web_browser import sign_in

from archipelag import identity

pytestmark = [pytest.mark.e2e, pytest.mark.browser, pytest.mark.slow]


def a_machine_asks(network: Network, name: str) -> tuple[str, str]:
    """A new machine's enrolment request; its pairing code and the host id its key gives it."""
    public = identity.public_hex(identity.generate_key())
    with network.http() as http:
        asked = http.post("/api/v1/hosts/enrol", json={"public_key": public, "name": name, "region": "eu-west",
                                                       "hardware": {"cpu_cores": 2}})
        assert asked.status_code == 201, asked.text
    return str(asked.json()["data"]["pairing_code"]), identity.host_id_for(public)


def test_an_owner_approves_a_machine_by_its_code_and_sees_it_among_their_hosts(page: Page,
                                                                               network: Network) -> None:
    person = network.person("lender")
    sign_in(page, network.url, person.email, person.password)
    page.goto(f"{network.url}/hosts")
    expect(page.locator("#my-hosts")).to_contain_text("You lend no machine yet.")
    code, host_id = a_machine_asks(network, "attic-pc")

    page.get_by_label("Pairing code").fill("ZZZZZZ" if code != "ZZZZZZ" else "YYYYYY")
    page.get_by_label("Pairing code").press("Enter")
    expect(page.locator('[role="alert"]')).to_contain_text("pairing code")  # a wrong code: said, nothing changes

    page.get_by_label("Pairing code").fill(code.lower())  # typed as people type it
    page.get_by_role("button", name="Approve").click()
    expect(page.locator("#status")).to_contain_text(f"Approved: attic-pc ({host_id}) is yours")
    expect(page.locator("#my-hosts")).to_contain_text(host_id)
    expect(page.get_by_label("Pairing code")).to_have_value("")
    page.reload()  # the page itself lists it too, not only the script
    expect(page.locator("#my-hosts")).to_contain_text("attic-pc")
