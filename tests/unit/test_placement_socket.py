"""Placement as Ray runs it (placement/client.py's ``_OneAtATime``): the jobs service's calls come over its socket,
on a thread of their own, and still run one at a time with the calls Ray's thread runs, in the order made."""

from __future__ import annotations

import asyncio
import inspect
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from builders import NOW, a_host

from archipelag.ids import HostId, WorkloadSlug
from archipelag.nodes import runtime_dir
from archipelag.placement import client as placement_client
from archipelag.placement.actor import PlacementActor
from archipelag.placement.scoring import JobRequest
from archipelag.settings import Settings
from archipelag.socket_calls import OrderedCalls


@pytest.fixture
def settings(tmp_path: Path) -> Iterator[Settings]:
    yield Settings(state_dir=tmp_path)
    shutil.rmtree(runtime_dir(tmp_path), ignore_errors=True)  # where the socket was (/tmp/ap-…)


def test_every_public_method_of_placement_runs_in_turn() -> None:
    public = [name for name, _ in inspect.getmembers(PlacementActor, inspect.isfunction) if not name.startswith("_")]
    assert "rank" in public and "heartbeat" in public
    for name in public:
        assert getattr(placement_client._OneAtATime, name) is not getattr(PlacementActor, name), name
    assert placement_client._OneAtATime.__name__ == "PlacementActor"  # Ray's name for its process


def test_a_call_over_the_socket_waits_while_rays_thread_holds_placement(settings: Settings) -> None:
    served = placement_client._OneAtATime(settings, lambda: NOW)
    served.register(a_host("h1"))
    request = JobRequest(workload=WorkloadSlug("text-stats"), runtime="wasm")
    answers: list[list[HostId]] = []

    def jobs_service() -> None:
        async def rank() -> None:
            calls = OrderedCalls(placement_client.socket_path(settings), "placement")
            calls.send("job_assigned", HostId("h1"))
            answers.append(await calls.call("rank", request))
        asyncio.run(rank())

    with served._turn:  # as a call through Ray holds it
        caller = threading.Thread(target=jobs_service)
        caller.start()
        caller.join(0.5)
        assert caller.is_alive() and not answers  # waiting its turn
    caller.join(10)
    assert answers == [[HostId("h1")]]
    assert served.get(HostId("h1")).active_jobs == 1  # the notice before it ran first

