"""The placement actor on a real local Ray, driven only through PlacementClient; the hosts are enrolled in a real
ledger actor and sign what they report, as hosts in a network do."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from builders import a_host, a_job
from netutil import local_ray

from archipelag import identity
from archipelag.errors import NoCapacity, NotFound
from archipelag.ids import HostId
from archipelag.ledger import Ledger
from archipelag.ledger.karma_rules import DEFAULT_RULES, KarmaState
from archipelag.ledger.records import HostIdentity
from archipelag.lifecycle import HostStatus
from archipelag.nodes import runtime_dir
from archipelag.placement.client import ACTOR_NAME, PlacementClient
from archipelag.settings import Settings

# tests/conftest.py sets RAY_AUTH_MODE=disabled and RAY_TMPDIR before any test imports ray.
pytestmark = [pytest.mark.integration, pytest.mark.ray_driver]

SETTINGS = Settings(ray_namespace="placement-test", heartbeat_interval_s=0.5, missed_heartbeats_offline=3)
KEYS = {host_id: identity.generate_key() for host_id in ("host-eu", "host-us", "host-ap")}


@pytest.fixture(scope="module")
def placement(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PlacementClient]:
    pytest.importorskip("ray")
    from archipelag.ledger.client import LedgerClient

    settings = SETTINGS.model_copy(update={"state_dir": tmp_path_factory.mktemp("placement")})
    ledger = Ledger(settings.effective_database_url())
    ledger.migrate()
    owner = ledger.create_account("owner@example.org", 0)
    for host_id, key in KEYS.items():
        ledger.enrol_host(host_id, identity.public_hex(key), owner.id, host_id, "eu-west")
    try:
        with local_ray(SETTINGS.ray_namespace):
            LedgerClient.start(settings)
            yield PlacementClient.start(settings)
    finally:
        ledger.close()
        shutil.rmtree(runtime_dir(settings.state_dir), ignore_errors=True)  # the actors' sockets (/tmp/ap-…)


def register(placement: PlacementClient, host_id: str, **fields):  # type: ignore[no-untyped-def]
    snapshot = a_host(host_id, last_heartbeat_at=time.time(), **fields)
    placement.register(snapshot, identity.sign(KEYS[host_id], "register", HostId(host_id), time.time(), snapshot))


def heartbeat(placement: PlacementClient, host_id: str, metrics: dict[str, int]) -> None:
    placement.heartbeat(HostId(host_id), metrics,
                        identity.sign(KEYS[host_id], "heartbeat", HostId(host_id), time.time(), metrics))


def test_placement_through_ray(placement: PlacementClient) -> None:
    for host_id, region in (("host-eu", "eu-west"), ("host-us", "us-east"), ("host-ap", "ap-south")):
        register(placement, host_id, region=region, slots=1)

    # the caller's region wins; a full host moves the job elsewhere
    assert placement.rank(a_job(caller_region="eu-west"))[0] == "host-eu"
    placement.job_assigned(HostId("host-eu"))
    assert placement.rank(a_job(caller_region="eu-west"))[0] != "host-eu"
    placement.job_released(HostId("host-eu"))
    assert asyncio.run(placement.rank_async(a_job(caller_region="eu-west")))[0] == "host-eu"

    # errors raised on purpose come back as themselves, not wrapped in Ray's
    with pytest.raises(NoCapacity, match="no online host supports runtime 'container'"):
        placement.rank(a_job(runtime="container"))
    with pytest.raises(NotFound):
        placement.get(HostId("ghost"))

    # the same actor is found by name
    again = PlacementClient.connect(SETTINGS)
    assert again.ping() == 3

    # missed heartbeats → offline; one heartbeat → online again
    time.sleep(1.7)
    for host_id in ("host-us", "host-ap"):
        heartbeat(placement, host_id, {"free_ram_mb": 2048, "active_jobs": 0})
    statuses = {h.host_id: h.status for h in placement.hosts()}
    assert statuses == {"host-eu": HostStatus.OFFLINE, "host-us": HostStatus.ONLINE,
                        "host-ap": HostStatus.ONLINE}
    assert "host-eu" not in placement.rank(a_job(caller_region="eu-west"))


class HangingLedger:
    """A ledger actor that knows the hosts' keys at once but can hang on karma and asks, as a restarting one does."""

    def __init__(self, identities: dict[str, HostIdentity]) -> None:
        self._identities = identities
        self._answering = threading.Event()
        self._answering.set()
        self._hang_identities = False

    def hang(self, identities: bool = False) -> None:
        self._hang_identities = identities
        self._answering.clear()

    def resume(self) -> None:
        self._answering.set()

    def host_identity(self, host_id: str) -> HostIdentity | None:
        if self._hang_identities:
            self._answering.wait(60)
        return self._identities.get(host_id)

    def karma_states(self, host_ids: list[str]) -> dict[str, KarmaState]:
        self._answering.wait(60)
        return {host_id: DEFAULT_RULES.state(0.0) for host_id in host_ids}

    def asking_prices(self, host_id: str | None = None) -> dict[str, dict[str, int]]:
        self._answering.wait(60)
        return {}


@contextlib.contextmanager
def beside_a_hanging_ledger(namespace: str) -> Iterator[tuple[PlacementClient, Any]]:
    """A placement actor of its own, in ``namespace`` and a state folder of its own (its socket must not take the
    place of another placement's), whose ledger is a ``HangingLedger`` actor; both killed after."""
    import ray

    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # workers cannot import this module
    state = Path(tempfile.mkdtemp(prefix="archipelag-placement-"))
    settings = SETTINGS.model_copy(update={"ray_namespace": namespace, "state_dir": state})
    identities = {host_id: HostIdentity(HostId(host_id), identity.public_hex(key), 1, revoked=False)
                  for host_id, key in KEYS.items()}
    ledger = ray.remote(HangingLedger).options(name="ledger", namespace=namespace, num_cpus=0,
                                               max_concurrency=4).remote(identities)
    try:
        yield PlacementClient.start(settings), ledger
    finally:
        ray.get(ledger.resume.remote())
        with contextlib.suppress(ValueError):
            ray.kill(ray.get_actor(ACTOR_NAME, namespace=namespace), no_restart=True)
        ray.kill(ledger, no_restart=True)
        shutil.rmtree(runtime_dir(state), ignore_errors=True)
        shutil.rmtree(state, ignore_errors=True)


def until_online(placement: PlacementClient, host_id: str, what: str) -> None:
    deadline = time.monotonic() + 30
    while placement.get(HostId(host_id)).status != HostStatus.ONLINE:
        assert time.monotonic() < deadline, what
        time.sleep(0.05)


def test_rankings_do_not_wait_on_a_ledger_that_hangs(placement: PlacementClient) -> None:
    """Each of placement's reads of karma and asks would wait for the ledger up to the call timeout (30 s); a ranking
    behind one would time out. They answer now, on what placement holds, and a host that joins meanwhile takes no
    jobs until its karma and asks are read."""
    import ray

    with beside_a_hanging_ledger("placement-stall") as (stalled, ledger):
        register(stalled, "host-eu", region="eu-west")
        register(stalled, "host-us", region="us-east")
        ray.get(ledger.hang.remote())
        stalled.refresh_karma()  # the fleet round's reads hang
        stalled.refresh_asks()
        for _ in range(3):
            assert stalled.rank(a_job(caller_region="eu-west")) == ["host-eu", "host-us"]
        register(stalled, "host-ap", region="ap-south")  # returns while its reads hang
        assert stalled.get(HostId("host-ap")).status == HostStatus.JOINING
        assert "host-ap" not in stalled.rank(a_job(caller_region="ap-south"))
        ray.get(ledger.resume.remote())
        until_online(stalled, "host-ap", "placement did not apply the ledger's answer")
        assert stalled.rank(a_job(caller_region="ap-south"))[0] == "host-ap"


def test_a_host_reporting_first_while_the_ledger_hangs_is_told_to_retry_and_rankings_go_on(
        placement: PlacementClient) -> None:
    """Who a host is, placement reads from the ledger on its own thread at the host's first report: against a
    ledger that hangs, the report fails within IDENTITY_TIMEOUT_S (the host sends it again) instead of holding every
    ranking for the call timeout (30 s); once the ledger answers, the report registers the host."""
    import ray

    with beside_a_hanging_ledger("placement-who") as (stalled, ledger):
        register(stalled, "host-eu", region="eu-west")
        until_online(stalled, "host-eu", "placement did not read the host's karma and asks")
        ray.get(ledger.hang.remote(identities=True))
        with pytest.raises(NoCapacity, match="retry shortly"):
            register(stalled, "host-ap", region="ap-south")
        heartbeat(stalled, "host-eu", {"active_jobs": 0})  # a known host's key is held: no ledger call
        assert stalled.rank(a_job(caller_region="ap-south")) == ["host-eu"]
        ray.get(ledger.resume.remote())
        register(stalled, "host-ap", region="ap-south")
        until_online(stalled, "host-ap", "placement did not take the host's report once the ledger answered")


def test_a_dead_placement_actor_reads_as_no_capacity(placement: PlacementClient) -> None:
    import ray

    ray.kill(ray.get_actor(ACTOR_NAME, namespace=SETTINGS.ray_namespace), no_restart=True)
    deadline = time.monotonic() + 10  # the kill is asynchronous: a call may still get through
    with pytest.raises(NoCapacity, match="placement is not answering"):
        while time.monotonic() < deadline:
            placement.ping()
            time.sleep(0.05)
