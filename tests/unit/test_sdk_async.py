"""AsyncClient against the fake network: in-process (ASGI transport) and over a real socket."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine, Iterator
from typing import Any, TypeVar

import httpx
import pytest
from fake_api import KEY, FakeNetwork, build_app
from netutil import serve

from archipelag import errors
from archipelag.sdk import AsyncClient, AsyncJobRef, JobFailed, JobState, WaitTimeout

T = TypeVar("T")
NET = FakeNetwork()
APP = build_app(NET)


@pytest.fixture(scope="module")
def url() -> Iterator[str]:
    with serve(APP) as base:
        yield base


@pytest.fixture(autouse=True)
def fresh() -> None:
    NET.__init__()  # type: ignore[misc]


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


def in_process() -> AsyncClient:
    return AsyncClient("http://fake", api_key=KEY, transport=httpx.ASGITransport(app=APP))


def test_resources_through_an_asgi_transport() -> None:
    async def scenario() -> None:
        async with in_process() as client:
            assert (await client.health())["status"] == "ok"
            job = await client.create_job("echo", {"text": "a b"})
            assert (await client.get_job(job.id)).output == "a b"
            assert (await client.list_jobs()).total == 1
            assert [w.slug for w in await client.workloads()] == ["echo", "image"]
            assert (await client.workload("echo")).runtime_type == "wasm"
            assert (await client.account()).email == "ada@example.org"
            assert len(await client.hosts()) == 2
            assert (await client.host("host-b2")).status == "paused"
            assert (await client.host_karma("host-a1")).karma_score == 0.9
            key = await client.create_api_key("ci")
            assert key.key and len(await client.api_keys()) == 1
            await client.revoke_api_key(key.id)
            with pytest.raises(errors.NotFound):
                await client.workload("nope")
    run(scenario())


def test_submit_get_and_cancel() -> None:
    async def scenario() -> None:
        async with in_process() as client:
            refs = [await client.submit("echo", {"text": t}) for t in ("x", "y")]
            assert isinstance(refs[0], AsyncJobRef)
            assert await client.get(refs) == ["x", "y"]
            assert await refs[0].result() == "x"
            slow = await client.submit("slow", {})
            assert (await slow.cancel()).status is JobState.CANCELLED
            with pytest.raises(JobFailed):
                await client.get(slow)
    run(scenario())


def test_async_stream_follows_a_running_job(url: str) -> None:
    async def scenario() -> list[dict[str, Any]]:
        async with AsyncClient(url, api_key=KEY) as client:
            ref = await client.submit("slow", {})
            loop = asyncio.get_running_loop()
            loop.call_later(0.05, NET.finish, ref.job_id,
                            [{"type": "token", "content": "hi"}, {"type": "done", "usage": {}}])
            return [event async for event in ref]
    assert [e["type"] for e in run(scenario())] == ["token", "done"]


def test_async_wait_and_wait_job(url: str) -> None:
    async def scenario() -> None:
        async with AsyncClient(url, api_key=KEY) as client:
            slow = await client.submit("slow", {})
            quick = await client.submit("echo", {"text": "q"})
            ready, not_ready = await client.wait([slow, quick], num_returns=1, timeout=2)
            assert ready == [quick] and not_ready == [slow]
            with pytest.raises(WaitTimeout):
                await client.wait_job(slow.job_id, timeout=0.1)
            asyncio.get_running_loop().call_later(0.05, NET.finish, slow.job_id,
                                                  [{"type": "done", "output": "fin"}])
            assert (await client.wait_job(slow.job_id, timeout=5)).output == "fin"
            assert await client.get(slow, timeout=5) == "fin"
    run(scenario())
