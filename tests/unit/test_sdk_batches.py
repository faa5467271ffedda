"""Our SDK's batches (both clients) against the real API app, ledger and jobs service with a scripted host, over a
real socket: submit_batch, get_batch_status, wait_for_batch, and batch refs in ``get``/``wait`` like Ray's."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest
from model_network import ModelNetwork, a_model_network, serve

from archipelag.sdk import AsyncClient, BatchJob, Client, JobFailed, WaitTimeout


def chats(*prompts: str) -> list[dict[str, Any]]:
    return [{"messages": [{"role": "user", "content": p}], "max_tokens": 8} for p in prompts]


@pytest.fixture(scope="module")
def network(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ModelNetwork, str]]:
    net = a_model_network(tmp_path_factory.mktemp("sdk-batches"), credits_micro=100_000_000)
    with serve(net.app) as url:
        yield net, url


@pytest.fixture
def client(network: tuple[ModelNetwork, str]) -> Iterator[Client]:
    net, url = network
    with Client(url, api_key=net.key, timeout_s=10) as c:
        yield c


def test_submit_batch_then_wait_for_batch_reports_progress_and_the_end(client: Client) -> None:
    batch = client.submit_batch("llm-chat", chats("a b", "c"), max_parallelism=1, bid_price=0.02, priority=3)
    assert isinstance(batch, BatchJob) and batch.batch.chunk_count == 2 and not batch.is_complete
    assert batch.batch.bid_price == 0.02 and [c.batch_index for c in batch.children] == [0, 1]
    seen: list[tuple[int, int, int]] = []
    ended = client.wait_for_batch(batch.id, poll_interval=0.05, timeout=20,
                                  on_progress=lambda *counts: seen.append(counts))
    assert ended.state == "succeeded" and ended.is_complete and ended.progress == 1.0
    assert ended.workload == "llm-chat" and seen[-1] == (2, 0, 2)
    assert client.get_batch_status(batch.id).child_states == {"succeeded": 2}


def test_a_batch_ref_gets_the_merged_outputs_like_ray_get(client: Client) -> None:
    ref = client.batch_ref(client.submit_batch("llm-chat", chats("one", "two three")).id)
    single = client.submit("llm-chat", chats("four")[0])
    assert client.get(ref, timeout=20) == ["one", "two three"]
    assert client.get([single, ref], timeout=20) == ["four", ["one", "two three"]]
    ready, rest = client.wait([ref, single], num_returns=2, timeout=20)
    assert ready == [ref, single] and rest == []
    assert ref.status().parent_state == "succeeded"


def test_a_failed_batch_raises_job_failed_and_a_slow_one_wait_timeout(client: Client) -> None:
    failed = client.submit_batch("llm-chat", chats("please fail", "fine"), fail_mode="fail_fast")
    with pytest.raises(JobFailed) as raised:
        client.wait_for_batch(failed.id, poll_interval=0.05, timeout=20)
    assert "fail_fast" in str(raised.value)
    with pytest.raises(JobFailed):
        client.get(client.batch_ref(failed.id), timeout=20)
    parked = client.batch_ref(client.submit_batch("llm-chat", chats("park")).id)
    with pytest.raises(WaitTimeout):
        client.wait_for_batch(parked.job_id, poll_interval=0.05, timeout=0.3)
    with pytest.raises(WaitTimeout):
        client.get(parked, timeout=0.3)
    assert client.wait([parked], timeout=0.2) == ([], [parked])
    assert parked.cancel().status.value == "cancelled"


def test_the_async_client_does_the_same(network: tuple[ModelNetwork, str]) -> None:
    net, url = network

    async def calls() -> tuple[str, list[Any], dict[str, int]]:
        async with AsyncClient(url, api_key=net.key, timeout_s=10) as client:
            batch = await client.submit_batch("llm-chat", chats("five", "six"), merge_strategy="flatten")
            ended = await client.wait_for_batch(batch.id, poll_interval=0.05, timeout=20)
            ref = client.batch_ref(batch.id)
            merged = await client.get(ref, timeout=20)
            ready, _ = await client.wait([ref], timeout=5)
            assert ready == [ref]
            return ended.state, merged, (await ref.status()).child_states

    assert asyncio.run(calls()) == ("succeeded", ["five", "six"], {"succeeded": 2})
