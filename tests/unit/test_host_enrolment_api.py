"""Enrolment through the API (real app, ledger and placement; scripted hosts): a machine asks with its key and
gets a code, its owner approves it, the machine's signed poll gets credentials only it can read; wrong codes,
forged polls and strangers are refused; the owner or an admin revokes."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from model_network import ModelNetwork, a_model_network, serve
from nacl.signing import SigningKey

from archipelag import identity
from archipelag.ids import HostId
from archipelag.serve.api_hosts import poll_report

TOKEN = "the-ray-token"
SERVICES_TOKEN = "the-services-token"  # the coordinator's own cluster's: never handed out


@pytest.fixture
def net(tmp_path: Path) -> ModelNetwork:
    (tmp_path / "ray_auth_token").write_text(TOKEN)
    (tmp_path / "services_ray_token").write_text(SERVICES_TOKEN)
    return a_model_network(tmp_path, hosts=2, enrolments_per_min=5, pairing_failures_per_min=3,
                           ray_namespace="ns-x", trusted_catalog_keys=["k1"], ray_head_port=7001)


def signed_poll(key: SigningKey, at: float | None = None) -> dict[str, object]:
    public = identity.public_hex(key)
    proof = identity.sign(key, "poll", identity.host_id_for(public), at or time.time(), poll_report(public))
    return {"public_key": public, "at": proof.at, "signature": proof.signature.hex()}


def ask(client: TestClient, key: SigningKey, name: str = "attic") -> dict[str, object]:
    made = client.post("/api/v1/hosts/enrol", json={"public_key": identity.public_hex(key), "name": name,
                                                     "region": "eu-west", "hardware": {"cpu_cores": 4}})
    assert made.status_code == 201, made.text
    return dict(made.json()["data"])


def test_an_approved_machine_gets_its_credentials_sealed_to_its_key(net: ModelNetwork) -> None:
    key = identity.generate_key()
    with TestClient(net.app) as anonymous, net.client() as owner:
        asked = ask(anonymous, key)
        assert anonymous.post("/api/v1/hosts/enrol/poll", json=signed_poll(key)).status_code == 202
        approved = owner.post("/api/v1/hosts/approve", json={"code": str(asked["pairing_code"]).lower()})
        assert approved.status_code == 200, approved.text
        host = approved.json()["data"]
        assert host["id"] == asked["host_id"] == identity.host_id_for(identity.public_hex(key))
        assert host["owner_account_id"] == str(net.account_id)

        answer = anonymous.post("/api/v1/hosts/enrol/poll", json=signed_poll(key))
        assert answer.status_code == 200, answer.text
        assert TOKEN not in answer.text
        credentials = identity.unseal(key, answer.json()["data"]["credentials"])
        assert credentials["ray_token"] == TOKEN and credentials["ray_namespace"] == "ns-x"
        assert SERVICES_TOKEN not in json.dumps(credentials)
        assert credentials["trusted_catalog_keys"] == ["k1"] and credentials["ray_address"] == "127.0.0.1:7001"

        mine = owner.get("/api/v1/account/hosts").json()["data"]
        assert [h["id"] for h in mine] == [host["id"]]


def test_a_poll_not_signed_by_the_key_is_refused(net: ModelNetwork) -> None:
    key, other = identity.generate_key(), identity.generate_key()
    with TestClient(net.app) as anonymous:
        ask(anonymous, key)
        forged = {**signed_poll(other), "public_key": identity.public_hex(key)}
        assert anonymous.post("/api/v1/hosts/enrol/poll", json=forged).status_code == 403
        stale = anonymous.post("/api/v1/hosts/enrol/poll", json=signed_poll(key, time.time() - 3600))
        assert stale.status_code == 403 and "clock" in stale.text
        unknown = anonymous.post("/api/v1/hosts/enrol/poll", json=signed_poll(other))
        assert unknown.status_code == 404


def test_wrong_codes_are_refused_then_limited_per_account(net: ModelNetwork) -> None:
    with net.client() as owner:
        for _ in range(3):
            assert owner.post("/api/v1/hosts/approve", json={"code": "ACDEFG"}).status_code == 404
        assert owner.post("/api/v1/hosts/approve", json={"code": "ACDEFG"}).status_code == 429
        assert owner.post("/api/v1/hosts/approve", json={"code": "x"}).status_code == 422
    with TestClient(net.app) as anonymous:
        assert anonymous.post("/api/v1/hosts/approve", json={"code": "ACDEFG"}).status_code == 401


def test_pairing_requests_are_bounded_and_limited_per_address(net: ModelNetwork) -> None:
    with TestClient(net.app) as anonymous:
        bad = {"public_key": "zz", "name": "a", "region": "eu-west"}
        assert anonymous.post("/api/v1/hosts/enrol", json=bad).status_code == 422
        big = {"public_key": "0" * 64, "name": "a", "region": "eu-west",
               "hardware": {f"k{i}": i for i in range(100)}}
        assert anonymous.post("/api/v1/hosts/enrol", json=big).status_code == 422
        nested = {"public_key": "0" * 64, "name": "a", "region": "eu-west", "hardware": {"gpu": {"a": 1}}}
        assert anonymous.post("/api/v1/hosts/enrol", json=nested).status_code == 422
        for _ in range(2):
            ask(anonymous, identity.generate_key())
        codes = [anonymous.post("/api/v1/hosts/enrol", json={
            "public_key": identity.public_hex(identity.generate_key()), "name": "a", "region": "eu-west"}
        ).status_code for _ in range(4)]
        assert codes == [201, 201, 201, 429]  # 5 a minute from one address (bodies refused as invalid cost none)


def test_the_owner_or_an_admin_revokes_and_placement_drops_the_host(net: ModelNetwork) -> None:
    stranger = net.ledger.create_account("eve@example.org", 0)
    _, stranger_key = net.ledger.create_api_key(stranger.id, "k")
    key = identity.generate_key()
    net.ledger.enrol_host("host-a", identity.public_hex(key), net.account_id, "host-a", "eu-west")
    with net.client(stranger_key) as eve:
        assert eve.post("/api/v1/hosts/host-a/revoke", json={"reason": "mine now"}).status_code == 404
    assert HostId("host-a") in {h.host_id for h in net.placement.hosts()}
    with net.client() as owner:
        revoked = owner.post("/api/v1/hosts/host-a/revoke", json={"reason": "sold the laptop"})
        assert revoked.status_code == 200, revoked.text
        assert revoked.json()["data"]["revoked"] is True
    assert HostId("host-a") not in {h.host_id for h in net.placement.hosts()}
    assert net.ledger.host_identity("host-a").revoked  # type: ignore[union-attr]
    with TestClient(net.app) as anonymous:
        refused = anonymous.post("/api/v1/hosts/enrol/poll", json=signed_poll(key))
        assert refused.status_code == 403 and "revoked" in refused.text


def test_the_owner_approves_lists_and_revokes_from_the_command_line(net: ModelNetwork,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    import typer
    from typer.testing import CliRunner

    from archipelag.cli.jobs import register

    app = typer.Typer()
    register(app)
    key = identity.generate_key()
    with serve(net.app) as url:
        monkeypatch.setenv("ARCHIPELAG_URL", url)
        monkeypatch.setenv("ARCHIPELAG_API_KEY", net.key)
        monkeypatch.setenv("COLUMNS", "200")
        with TestClient(net.app) as anonymous:
            code = str(ask(anonymous, key)["pairing_code"])
        cli = CliRunner()
        host_id = identity.host_id_for(identity.public_hex(key))
        wrong = cli.invoke(app, ["hosts", "approve", "ACDEFG" if code != "ACDEFG" else "ACDEFH"])
        assert wrong.exit_code == 1 and "pairing code" in wrong.output
        approved = cli.invoke(app, ["hosts", "approve", code])
        assert approved.exit_code == 0 and f"host {host_id} (attic, eu-west) is yours" in approved.output
        mine = cli.invoke(app, ["hosts", "mine"])
        assert mine.exit_code == 0 and host_id in mine.output
        revoked = cli.invoke(app, ["hosts", "revoke", host_id, "--json"])
        assert revoked.exit_code == 0 and json.loads(revoked.stdout)["revoked"] is True


@pytest.mark.parametrize("command", ["pause", "resume", "drain"])
def test_a_hosts_owner_controls_it_through_the_api_and_nobody_else_does(net: ModelNetwork, command: str) -> None:
    owner = net.ledger.create_account("olga@example.org", 0)  # not an admin
    _, owner_key = net.ledger.create_api_key(owner.id, "k")
    stranger = net.ledger.create_account("eve@example.org", 0)
    _, stranger_key = net.ledger.create_api_key(stranger.id, "k")
    net.ledger.enrol_host("host-o", identity.public_hex(identity.generate_key()), owner.id, "host-o", "eu-west")
    with net.client(stranger_key) as eve:
        refused = eve.post(f"/api/v1/hosts/host-o/{command}")
        assert refused.status_code == 403 and "only the owner" in refused.text, refused.text
        assert eve.post(f"/api/v1/admin/hosts/host-o/{command}").status_code == 403  # the admin routes: admins
    with net.client(owner_key) as olga:  # allowed; this network has no agent running to reach (no Ray here)
        allowed = olga.post(f"/api/v1/hosts/host-o/{command}")
        assert allowed.status_code == 404 and "not joined" in allowed.text, allowed.text


def test_a_paired_machine_fetches_missing_images_from_the_api_it_paired_with(tmp_path: Path) -> None:
    """Pairing over the real API (served over HTTP): the host's settings name that API as its image source, unless
    the machine's owner named one already."""
    from archipelag.actors.pairing import pair
    from archipelag.settings import Settings

    (tmp_path / "ray_auth_token").write_text(TOKEN)
    net = a_model_network(tmp_path, trusted_catalog_keys=["k1"])
    with serve(net.app) as url, net.client() as owner:
        def approve(code: str, host_id: str, expires_in_s: float) -> None:
            assert owner.post("/api/v1/hosts/approve", json={"code": code}).status_code == 200

        machine = Settings(state_dir=tmp_path / "machine", ray_auth="disabled")
        machine.state_dir.mkdir()
        enrolled = pair(machine, f"{url}/", "attic", "eu-west", {"cpu_cores": 2}, show=approve, poll_s=0.01)
        assert enrolled.settings.image_source == url
        again = pair(machine.model_copy(update={"image_source": "https://mirror.example"}), url, "attic",
                     "eu-west", {"cpu_cores": 2}, show=approve, poll_s=0.01)
        assert again.settings.image_source == "https://mirror.example"
