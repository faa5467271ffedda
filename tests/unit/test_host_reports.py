"""A host's signed reports reach placement through the API (actors/reports.py → POST /api/v1/hosts/{id}/reports),
on the real API app, placement and ledger: what the host's key signed is believed; a report signed by another key,
replayed, sent for another host, or not a report at all is refused and changes nothing."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import httpx
import pytest
from builders import a_host
from model_network import CATALOG, serve

from archipelag import identity
from archipelag.actors.reports import Reports, report_body
from archipelag.errors import HostRefused, NoCapacity, NotFound
from archipelag.ids import HostId
from archipelag.jobs.client import JobsClient
from archipelag.jobs.service import JobService
from archipelag.ledger import Ledger
from archipelag.ledger.client import LedgerClient
from archipelag.lifecycle import HostStatus
from archipelag.placement.client import PlacementClient
from archipelag.serve.app import build_api
from archipelag.serve.services import Services
from archipelag.settings import Settings

HOST = HostId("host-a")


class Network:
    def __init__(self, tmp_path: Path, reports_per_min: int = 600) -> None:
        settings = Settings(state_dir=tmp_path, rate_limit_per_min=6000, host_reports_per_min=reports_per_min)
        self.ledger = Ledger(f"sqlite:///{tmp_path / 'ledger.db'}")
        self.ledger.migrate()
        self.ledger.sync_catalog(CATALOG.values())
        owner = self.ledger.create_account("owner@example.org", 0)
        self.key = identity.generate_key()
        self.ledger.enrol_host(HOST, identity.public_hex(self.key), owner.id, HOST, "eu-west")
        self.placement = PlacementClient.local(settings, identities=self.ledger.host_identity, catalog=CATALOG,
                                               book=self.ledger)
        jobs = JobService(settings, dict(CATALOG), LedgerClient.local(self.ledger), self.placement,
                          lambda _: None)  # type: ignore[arg-type,return-value]
        self.app = build_api(Services(settings=settings, ledger=LedgerClient.local(self.ledger),
                                      jobs=JobsClient.local(jobs), placement=self.placement, catalog=dict(CATALOG)))

    def sign(self, purpose: str, report: object, key: identity.SigningKey | None = None,
             host_id: HostId = HOST, at: float | None = None) -> identity.Proof:
        return identity.sign(key or self.key, purpose, host_id, time.time() if at is None else at, report)


@pytest.fixture
def net(tmp_path: Path) -> Network:
    return Network(tmp_path)


@pytest.fixture
def api(net: Network) -> Iterator[str]:
    with serve(net.app) as url:
        yield url


def a_snapshot() -> object:
    return a_host(HOST, last_heartbeat_at=time.time(), asks={})


def test_a_hosts_registration_heartbeats_and_status_reach_placement(net: Network, api: str) -> None:
    reports = Reports(api)
    snapshot = a_snapshot()
    reports.register(snapshot, net.sign("register", snapshot))  # type: ignore[arg-type]
    assert net.placement.get(HOST).status == HostStatus.ONLINE
    beat = {"free_ram_mb": 1234, "free_vram_mb": 0, "active_jobs": 1, "warm": ["wasm-hash"]}
    assert reports.beat(HOST, beat, net.sign("heartbeat", beat)) is True
    assert net.placement.get(HOST).free_ram_mb == 1234
    reports.set_status(HOST, HostStatus.PAUSED, net.sign("status", identity.status_report(HostStatus.PAUSED)))
    assert net.placement.get(HOST).status == HostStatus.PAUSED


def test_a_heartbeat_before_registering_says_placement_does_not_know_the_host(net: Network, api: str) -> None:
    beat = {"free_ram_mb": 1, "free_vram_mb": 0, "active_jobs": 0, "warm": []}
    assert Reports(api).beat(HOST, beat, net.sign("heartbeat", beat)) is False


def test_reports_signed_by_another_key_or_for_another_host_are_refused(net: Network, api: str) -> None:
    reports = Reports(api)
    snapshot = a_snapshot()
    with pytest.raises(HostRefused):
        reports.register(snapshot, net.sign("register", snapshot, key=identity.generate_key()))  # type: ignore[arg-type]
    with pytest.raises(HostRefused):  # the proof names another host than the path
        reports.register(snapshot, net.sign("register", snapshot, host_id=HostId("host-b")))  # type: ignore[arg-type]
    changed = replace(snapshot, cpu_cores=64)  # type: ignore[type-var]
    with pytest.raises(HostRefused):  # signed, then changed on the way
        reports.register(changed, net.sign("register", snapshot))
    with pytest.raises(NotFound):
        net.placement.get(HOST)


def test_a_replayed_report_is_refused(net: Network, api: str) -> None:
    reports = Reports(api)
    snapshot = a_snapshot()
    proof = net.sign("register", snapshot)
    reports.register(snapshot, proof)  # type: ignore[arg-type]
    beat = {"free_ram_mb": 1, "free_vram_mb": 0, "active_jobs": 0, "warm": []}
    signed = net.sign("heartbeat", beat)
    assert reports.beat(HOST, beat, signed)
    with pytest.raises(HostRefused):
        reports.beat(HOST, beat, signed)


@pytest.mark.parametrize("body", [
    {"purpose": "mint", "report": {}, "proof": {}},
    {"purpose": "register", "report": {"host_id": "host-a"}, "proof": None},
    {"purpose": "heartbeat", "report": {"free_ram_mb": "lots"}, "proof": {"host_id": "host-a", "at": 1.0,
                                                                           "digest": "0" * 64,
                                                                           "signature": "0" * 128}},
    {"purpose": "status", "report": {"status": "revoked"}, "proof": {"host_id": "host-a", "at": 1.0,
                                                                      "digest": "0" * 64, "signature": "0" * 128}},
    {"purpose": "heartbeat", "report": {"warm": ["x"] * 5000}, "proof": {"host_id": "host-a", "at": 1.0,
                                                                          "digest": "0" * 64,
                                                                          "signature": "0" * 128}},
])
def test_what_is_not_a_report_is_a_4xx_and_changes_nothing(net: Network, api: str, body: dict[str, object]) -> None:
    answer = httpx.post(f"{api}/api/v1/hosts/{HOST}/reports", json=body)
    assert 400 <= answer.status_code < 500, answer.text
    with pytest.raises(NotFound):
        net.placement.get(HOST)


def test_a_hosts_reports_from_one_address_are_rate_limited(tmp_path: Path) -> None:
    net = Network(tmp_path, reports_per_min=3)
    beat = {"free_ram_mb": 1, "free_vram_mb": 0, "active_jobs": 0, "warm": []}
    with serve(net.app) as api:
        for _ in range(3):
            assert Reports(api).beat(HOST, beat, net.sign("heartbeat", beat)) is False
        answer = httpx.post(f"{api}/api/v1/hosts/{HOST}/reports",
                            json=report_body("heartbeat", beat, net.sign("heartbeat", beat)))
        assert answer.status_code == 429, answer.text
        other = HostId("host-b")  # another host's budget is its own
        assert Reports(api).beat(other, beat, net.sign("heartbeat", beat, host_id=other)) is False


def test_an_api_that_is_not_there_is_no_capacity_for_now(tmp_path: Path) -> None:
    snapshot = a_snapshot()
    with pytest.raises(NoCapacity):
        Reports("http://127.0.0.1:9", timeout_s=2).register(  # type: ignore[arg-type]
            snapshot, identity.sign(identity.generate_key(), "register", HOST, time.time(), snapshot))


def test_the_body_carries_the_report_as_it_was_signed() -> None:
    snapshot = a_snapshot()
    key = identity.generate_key()
    proof = identity.sign(key, "register", HOST, 5.0, snapshot)
    body = report_body("register", snapshot, proof)
    assert identity.digest(body["report"]) == proof.digest
    assert body["proof"] == {"host_id": HOST, "at": 5.0, "digest": proof.digest, "signature": proof.signature.hex()}
