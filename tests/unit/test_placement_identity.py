"""Placement believes only enrolled, unrevoked hosts, and only what their own key signed, lately, once."""

from __future__ import annotations

import asyncio
from dataclasses import replace

import pytest
from builders import NOW, a_host

from archipelag import identity
from archipelag.errors import HostRefused, InvalidTransition
from archipelag.ids import HostId
from archipelag.ledger.records import HostIdentity
from archipelag.lifecycle import HostStatus
from archipelag.placement.client import PlacementClient
from archipelag.settings import Settings

A, B = HostId("h-a"), HostId("h-b")
KEY_A, KEY_B = identity.generate_key(), identity.generate_key()


@pytest.fixture
def enrolled() -> dict[HostId, HostIdentity]:
    return {A: HostIdentity(A, identity.public_hex(KEY_A), 1, revoked=False),
            B: HostIdentity(B, identity.public_hex(KEY_B), 2, revoked=False)}


@pytest.fixture
def placement(enrolled: dict[HostId, HostIdentity]) -> PlacementClient:
    return PlacementClient.local(Settings(report_max_skew_s=60), clock=lambda: NOW, identities=enrolled.get)


def register(placement: PlacementClient, host_id: HostId, key: object, at: float = NOW) -> None:
    snapshot = a_host(host_id)
    placement.register(snapshot, identity.sign(key, "register", host_id, at, snapshot))  # type: ignore[arg-type]


def test_an_enrolled_host_registers_and_heartbeats_with_signed_reports(placement: PlacementClient) -> None:
    register(placement, A, KEY_A)
    metrics = {"free_ram_mb": 100, "active_jobs": 1}
    assert placement.beat(A, metrics, identity.sign(KEY_A, "heartbeat", A, NOW + 1, metrics))
    assert placement.get(A).free_ram_mb == 100


def test_unsigned_unknown_and_forged_registrations_are_refused(placement: PlacementClient) -> None:
    with pytest.raises(HostRefused, match="signed"):
        placement.register(a_host(A))
    with pytest.raises(HostRefused, match="not enrolled"):
        register(placement, HostId("h-stranger"), KEY_A)
    with pytest.raises(HostRefused, match="not by the host's enrolled key"):  # B's key claiming A's id
        register(placement, A, KEY_B)
    assert placement.ping() == 0


def test_forged_stale_and_replayed_heartbeats_are_refused(placement: PlacementClient) -> None:
    register(placement, A, KEY_A)
    metrics: dict[str, object] = {"active_jobs": 0}
    with pytest.raises(HostRefused, match="not by the host's enrolled key"):
        placement.beat(A, metrics, identity.sign(KEY_B, "heartbeat", A, NOW + 1, metrics))
    with pytest.raises(HostRefused, match="off the coordinator's"):
        placement.beat(A, metrics, identity.sign(KEY_A, "heartbeat", A, NOW - 3600, metrics))
    beat = identity.sign(KEY_A, "heartbeat", A, NOW + 1, metrics)
    assert placement.beat(A, metrics, beat)
    with pytest.raises(HostRefused, match="replayed"):
        placement.beat(A, metrics, beat)
    with pytest.raises(HostRefused, match="digest"):  # a signed heartbeat with other numbers put in
        placement.beat(A, {"active_jobs": 0, "free_ram_mb": 10**6},
                       identity.sign(KEY_A, "heartbeat", A, NOW + 2, metrics))


def test_a_revoked_host_is_out_at_once_and_refused_when_it_comes_back(
        placement: PlacementClient, enrolled: dict[HostId, HostIdentity]) -> None:
    register(placement, A, KEY_A)
    register(placement, B, KEY_B)
    enrolled[A] = HostIdentity(A, identity.public_hex(KEY_A), 1, revoked=True)  # the ledger says so first
    asyncio.run(placement.forget_async(A))
    assert [h.host_id for h in placement.hosts()] == [B]
    assert not placement.beat(A, {}, identity.sign(KEY_A, "heartbeat", A, NOW + 1, {}))  # unknown: register again
    with pytest.raises(HostRefused, match="revoked"):
        register(placement, A, KEY_A, NOW + 2)


def test_only_a_hosts_own_key_changes_its_status(placement: PlacementClient) -> None:
    """Pause, drain and leave reach placement signed like any report: another node cannot pause a host here."""
    register(placement, A, KEY_A)
    register(placement, B, KEY_B)
    paused = identity.status_report(HostStatus.PAUSED)
    with pytest.raises(HostRefused, match="signed"):
        placement.set_status(A, HostStatus.PAUSED)
    with pytest.raises(HostRefused, match="not by the host's enrolled key"):  # B signing for A
        placement.set_status(A, HostStatus.PAUSED, identity.sign(KEY_B, "status", A, NOW + 1, paused))
    with pytest.raises(HostRefused, match="does not match"):  # A's signature over another status
        placement.set_status(A, HostStatus.DRAINING, identity.sign(KEY_A, "status", A, NOW + 1, paused))
    assert placement.get(A).status == HostStatus.ONLINE
    placement.set_status(A, HostStatus.PAUSED, identity.sign(KEY_A, "status", A, NOW + 2, paused))
    assert placement.get(A).status == HostStatus.PAUSED


def test_a_host_the_ledger_says_an_operator_suspended_joins_suspended(enrolled: dict[HostId, HostIdentity]) -> None:
    """A new placement (after a restart) knows nothing of suspensions: the host's identity from the ledger says it."""
    enrolled[A] = replace(enrolled[A], suspended_reason="wrong answers (admin account 1)")
    placement = PlacementClient.local(Settings(report_max_skew_s=60), clock=lambda: NOW, identities=enrolled.get)
    register(placement, A, KEY_A)
    register(placement, B, KEY_B)
    assert placement.get(A).status == HostStatus.SUSPENDED and placement.get(B).status == HostStatus.ONLINE
    assert asyncio.run(placement.suspensions_async()) == {A: "wrong answers (admin account 1)"}
    online = identity.status_report(HostStatus.ONLINE)
    with pytest.raises(InvalidTransition, match="suspended"):  # the host cannot lift it by itself
        placement.set_status(A, HostStatus.ONLINE, identity.sign(KEY_A, "status", A, NOW + 1, online))
    with pytest.raises(HostRefused, match="the ledger still holds its suspension"):  # any node could call it
        asyncio.run(placement.reinstate_async(A))
    enrolled[A] = replace(enrolled[A], suspended_reason=None)  # the ledger lifts it first
    asyncio.run(placement.reinstate_async(A))  # the admin API's, after the ledger's
    assert placement.get(A).status == HostStatus.ONLINE
