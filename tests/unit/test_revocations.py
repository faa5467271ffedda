"""Revocation notices reach every replica before the revoking request is answered (accounts/revocations.py), and
a replica's credential cache answers only while it hears them (serve/auth.py). In process, without Ray: the same
objects the actor and the replicas run."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import AsyncGenerator, Callable, Coroutine
from typing import Any

import pytest

from archipelag.accounts.revocations import Notice, Notices, Revocations, RevocationsClient
from archipelag.serve.auth import Caller, CredentialCache

KEY = Notice("key", 7)


def in_a_loop(body: Callable[[], Coroutine[Any, Any, None]]) -> Callable[[], None]:
    """A test of its own event loop (``asyncio.run`` also cancels the follow tasks it leaves)."""

    @functools.wraps(body)
    def test() -> None:
        asyncio.run(body())

    return test


def a_caller(key_id: int = 7) -> Caller:
    return Caller(account_id=1, key_id=key_id, scopes=frozenset({"jobs:write"}), home_region=None, is_admin=False)


async def first(stream: AsyncGenerator[Notices, None]) -> Notices:
    return await anext(stream)


@in_a_loop
async def test_publish_waits_until_every_watcher_applied_the_notice() -> None:
    revocations = Revocations(lease_s=30.0)
    stream = revocations.watch(-1, "replica-a")
    await first(stream)
    publishing = asyncio.ensure_future(revocations.publish(KEY))
    batch = await asyncio.wait_for(anext(stream), 5)
    assert batch.notices == (KEY,)
    await asyncio.sleep(0.05)
    assert not publishing.done(), "answered before replica-a applied the notice"
    await revocations.ack("replica-a", batch.position)
    assert await asyncio.wait_for(publishing, 5) == batch.position
    await stream.aclose()


@in_a_loop
async def test_a_silent_watcher_holds_publish_up_for_one_lease_at_most() -> None:
    revocations = Revocations(lease_s=0.3)
    stream = revocations.watch(-1, "hung-replica")
    await first(stream)
    loop = asyncio.get_running_loop()
    started = loop.time()
    await asyncio.wait_for(revocations.publish(KEY), 5)
    assert 0.2 < loop.time() - started < 3.0
    await stream.aclose()


@in_a_loop
async def test_a_closed_stream_no_longer_holds_publish() -> None:
    revocations = Revocations(lease_s=60.0)
    stream = revocations.watch(-1, "gone-replica")
    await first(stream)
    await stream.aclose()
    await asyncio.wait_for(revocations.publish(KEY), 1)


@in_a_loop
async def test_an_idle_stream_sends_empty_batches_to_acknowledge() -> None:
    revocations = Revocations(keepalive_s=0.05)
    stream = revocations.watch(-1, "idle")
    opening = await first(stream)
    beat = await asyncio.wait_for(anext(stream), 2)
    assert beat == Notices(opening.position)
    await stream.aclose()


def test_the_cache_answers_only_under_a_lease() -> None:
    cache = CredentialCache()
    cache.put("digest", a_caller(), cache.generation)
    assert cache.get("digest") is None  # it has never heard the notices: every credential is checked again


@in_a_loop
async def test_a_lookup_that_predates_a_notice_is_not_cached() -> None:
    revocations = Revocations()
    client = RevocationsClient.local(revocations)
    cache = CredentialCache()
    cache.follow(client)
    await wait_for_lease(cache)
    generation = cache.generation  # a request starts checking key 7 in the ledger …
    await client.publish(KEY)  # … and the key is revoked before the answer comes back
    cache.put("digest", a_caller(), generation)
    assert cache.get("digest") is None


@in_a_loop
async def test_after_publish_returns_the_following_replica_has_forgotten_the_credential() -> None:
    revocations = Revocations()
    client = RevocationsClient.local(revocations)
    replicas = [CredentialCache(), CredentialCache()]
    for cache in replicas:
        cache.follow(client)
        await wait_for_lease(cache)
        cache.put("digest", a_caller(), cache.generation)
        assert cache.get("digest") is not None
    await client.publish(KEY)
    assert [cache.get("digest") for cache in replicas] == [None, None]


async def wait_for_lease(cache: CredentialCache) -> None:
    for _ in range(200):
        cache.put("probe", a_caller(key_id=-1), cache.generation)
        if cache.get("probe") is not None:
            return
        await asyncio.sleep(0.01)
    pytest.fail("the cache never got a lease")


def test_an_object_in_process_serves_one_event_loop_after_another() -> None:
    revocations = Revocations(lease_s=30.0)  # as an API app's own, across test clients that each run a loop

    async def publish_to_a_watcher() -> None:
        stream = revocations.watch(-1, "replica")
        await first(stream)
        publishing = asyncio.ensure_future(revocations.publish(KEY))
        batch = await asyncio.wait_for(anext(stream), 5)
        await revocations.ack("replica", batch.position)
        await asyncio.wait_for(publishing, 5)
        await stream.aclose()

    asyncio.run(publish_to_a_watcher())
    asyncio.run(publish_to_a_watcher())
