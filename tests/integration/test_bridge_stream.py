"""The bridge's reader of a host's Ray stream (bridge/server.py: ``_Pump``), on a real local Ray: the batches in
order and then the end, the host's failure or loss raised as Ray raises them, and a thread that does not outlive
its run when the host hangs."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from netutil import local_ray

from archipelag.bridge.server import _Pump

# tests/conftest.py sets RAY_AUTH_MODE=disabled and RAY_TMPDIR before any test imports ray.
pytestmark = [pytest.mark.integration, pytest.mark.ray_driver]


@pytest.fixture(scope="module")
def ray() -> Iterator[Any]:
    ray = pytest.importorskip("ray")
    with local_ray("bridge-stream-test", num_cpus=2):
        yield ray


@pytest.fixture(scope="module")
def host(ray: Any) -> Any:
    """A host's agent as the bridge sees it: a streaming method (defined here, so Ray ships it by value)."""

    @ray.remote
    class Host:
        def run(self, batches: int, then: str = "end") -> Any:
            for n in range(batches):
                yield [{"type": "token", "content": f"t{n}", "seq": n}]
            if then == "raise":
                raise ValueError("the runtime broke")
            if then == "hang":
                time.sleep(3600)

    return Host.remote()


def readers() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "bridge-stream"]


def test_the_batches_come_in_order_then_the_end(host: Any) -> None:
    async def read() -> list[Any]:
        pump = _Pump(host.run.options(num_returns="streaming").remote(50))
        got = []
        while (batch := await pump.next()) is not None:
            got.extend(batch)
        return got

    got = asyncio.run(read())
    assert [e["content"] for e in got] == [f"t{n}" for n in range(50)]


def test_a_run_that_raises_raises_its_error_after_what_it_sent(ray: Any, host: Any) -> None:
    from ray.exceptions import RayTaskError

    async def read() -> tuple[int, BaseException]:
        pump = _Pump(host.run.options(num_returns="streaming").remote(3, "raise"))
        got = 0
        try:
            while (batch := await pump.next()) is not None:
                got += len(batch)
        except RayTaskError as exc:
            return got, exc
        raise AssertionError("the run's error was not raised")

    got, error = asyncio.run(read())
    assert got == 3 and "the runtime broke" in str(error)


def test_a_host_killed_mid_run_is_raised_as_ray_raises_a_lost_actor(ray: Any) -> None:
    from archipelag.actors.client import LOST

    @ray.remote
    class Doomed:
        def run(self) -> Any:
            yield [{"type": "token", "content": "t0", "seq": 0}]
            time.sleep(3600)

    doomed = Doomed.remote()

    async def read() -> BaseException:
        pump = _Pump(doomed.run.options(num_returns="streaming").remote())
        assert await pump.next() is not None
        ray.kill(doomed)
        try:
            await asyncio.wait_for(pump.next(), 60)
        except LOST as exc:
            return exc
        raise AssertionError("the lost host was not raised")

    assert isinstance(asyncio.run(read()), LOST)


def test_the_reader_of_a_hung_host_ends_soon_after_its_run_is_stopped(host: Any,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_Pump, "POLL_S", 0.1)
    before = set(readers())  # an earlier test's reader may still be on its way out
    ours: set[threading.Thread] = set()

    async def read_then_leave() -> None:
        pump = _Pump(host.run.options(num_returns="streaming").remote(1, "hang"))
        ours.update(set(readers()) - before)
        assert await pump.next() is not None
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(pump.next(), 0.5)  # the host says nothing more
        pump.stop()

    asyncio.run(read_then_leave())
    (reader,) = ours
    reader.join(10)
    assert not reader.is_alive()
