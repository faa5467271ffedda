"""The placement actor on a real local Ray, driven only through PlacementClient."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import pytest
from builders import a_host, a_job

from archipelag.errors import NoCapacity, NotFound
from archipelag.ids import HostId
from archipelag.lifecycle import HostStatus
from archipelag.placement.client import PlacementClient
from archipelag.settings import Settings

# tests/conftest.py sets RAY_AUTH_MODE=disabled and RAY_TMPDIR before any test imports ray.
pytestmark = [pytest.mark.integration, pytest.mark.ray_driver]

SETTINGS = Settings(ray_namespace="placement-test", heartbeat_interval_s=0.5, missed_heartbeats_offline=3)


@pytest.fixture(scope="module")
def placement() -> Iterator[PlacementClient]:
    ray = pytest.importorskip("ray")
    ray.init(address="local", num_cpus=1, include_dashboard=False, namespace=SETTINGS.ray_namespace,
             logging_level="ERROR")
    try:
        yield PlacementClient.start(SETTINGS)
    finally:
        ray.shutdown()


def now_host(host_id: str, **fields):  # type: ignore[no-untyped-def]
    return a_host(host_id, last_heartbeat_at=time.time(), **fields)


def test_placement_through_ray(placement: PlacementClient) -> None:
    for host_id, region in (("host-eu", "eu-west"), ("host-us", "us-east"), ("host-ap", "ap-south")):
        placement.register(now_host(host_id, region=region, slots=1))

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
        placement.heartbeat(HostId(host_id), {"free_ram_mb": 2048, "active_jobs": 0})
    statuses = {h.host_id: h.status for h in placement.hosts()}
    assert statuses == {"host-eu": HostStatus.OFFLINE, "host-us": HostStatus.ONLINE,
                        "host-ap": HostStatus.ONLINE}
    assert "host-eu" not in placement.rank(a_job(caller_region="eu-west"))


def test_a_dead_placement_actor_reads_as_no_capacity(placement: PlacementClient) -> None:
    import ray

    from archipelag.placement.client import ACTOR_NAME

    ray.kill(ray.get_actor(ACTOR_NAME, namespace=SETTINGS.ray_namespace), no_restart=True)
    deadline = time.monotonic() + 10  # the kill is asynchronous: a call may still get through
    with pytest.raises(NoCapacity, match="placement is not answering"):
        while time.monotonic() < deadline:
            placement.ping()
            time.sleep(0.05)
