"""Revocations: notices that a credential stopped working — a key revoked, a session ended, an account
suspended — fanned out to every API replica, so the caches of recently authenticated callers drop it at once.

One ``Revocations`` object lives in a named actor on the head (``RevocationsClient.start``); each replica
follows it with ``watch`` (a Ray streaming generator) and publishes through ``publish``. A replica that loses
the stream forgets everything it had cached before it follows again: it may re-check credentials, never trust
stale ones. Tests without Ray use the same object in process (``RevocationsClient.local``).

``publish`` returns only once every watcher has applied the notice, so a suspension answered to an admin holds
on every replica at once. A watcher acknowledges each batch it applied (``ack``); the stream sends an empty batch
each ``KEEPALIVE_S`` so that it acknowledges even when nothing happens. Each acknowledgement renews the watcher's
lease on its cache for ``LEASE_S``, counted from before it sent it, so the watcher's lease ends before the one this
side counts from receiving it. A replica that hangs or vanishes therefore holds ``publish`` up for at most one
lease, and by then it no longer answers from its cache.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any, Literal

from archipelag.errors import ArchipelagError
from archipelag.remote import Calls, LocalCalls, RayCalls
from archipelag.settings import Settings

log = logging.getLogger(__name__)

ACTOR_NAME = "revocations"
KEEP_NOTICES = 10_000  # a watcher further behind than this starts over (forgets its whole cache)
LEASE_S = 3.0  # how long a watcher's cache may be used after its last acknowledgement
KEEPALIVE_S = 1.0  # an idle stream sends an empty batch this often, for the watcher to acknowledge
FORGET_WATCHER_S = 600.0  # a watcher silent this long is dropped from the table

NoticeKind = Literal["key", "session", "account"]


@dataclass(frozen=True)
class Notice:
    kind: NoticeKind
    id: int


@dataclass(frozen=True)
class Notices:
    """What a watcher gets: notices after its position, or ``reset`` when it must forget its whole cache."""

    position: int
    notices: tuple[Notice, ...] = ()
    reset: bool = False


class Revocations:
    def __init__(self, clock: Callable[[], float] = time.monotonic, lease_s: float = LEASE_S,
                 keepalive_s: float = KEEPALIVE_S) -> None:
        self._clock = clock
        self._lease_s = lease_s
        self._keepalive_s = keepalive_s
        self._position = 0
        self._log: list[tuple[int, Notice]] = []
        self._watchers: dict[str, tuple[int, float]] = {}  # watcher → (position it applied, when it said so)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._changed_in_loop = asyncio.Condition()
        self._acked_in_loop = asyncio.Condition()

    def _conditions(self) -> tuple[asyncio.Condition, asyncio.Condition]:
        """(changed, acked) of the running loop. The actor has one loop; an object in process (tests, one API
        app) may serve one event loop after another, and an asyncio condition belongs to the loop it waited in."""
        loop = asyncio.get_running_loop()
        if self._loop is not loop:
            self._loop, self._changed_in_loop, self._acked_in_loop = loop, asyncio.Condition(), asyncio.Condition()
        return self._changed_in_loop, self._acked_in_loop

    @property
    def _changed(self) -> asyncio.Condition:
        return self._conditions()[0]

    @property
    def _acked(self) -> asyncio.Condition:
        return self._conditions()[1]

    async def publish(self, notice: Notice) -> int:
        """Add ``notice``; return its position once every watcher applied it or its lease ran out."""
        async with self._changed:
            self._position += 1
            position = self._position
            self._log.append((position, notice))
            del self._log[:-KEEP_NOTICES]
            self._changed.notify_all()
        await self._applied(position)
        return position

    async def _applied(self, position: int) -> None:
        async with self._acked:
            while True:
                now = self._clock()
                for gone in [w for w, (_, at) in self._watchers.items() if at + FORGET_WATCHER_S < now]:
                    del self._watchers[gone]  # its stream never closed (its process vanished)
                behind = [at + self._lease_s for applied, at in self._watchers.values()
                          if applied < position and at + self._lease_s > now]
                if not behind:
                    return
                try:
                    await asyncio.wait_for(self._acked.wait(), timeout=min(behind) - now)
                except TimeoutError:
                    pass

    async def ack(self, watcher: str, position: int) -> None:
        """``watcher`` applied every notice up to ``position``."""
        async with self._acked:
            if watcher in self._watchers:
                self._watchers[watcher] = (max(position, self._watchers[watcher][0]), self._clock())
                self._acked.notify_all()

    async def watch(self, after: int = -1, watcher: str | None = None) -> AsyncGenerator[Notices, None]:
        """First the position now (with ``reset``: a new watcher knows nothing it could keep), then each batch of
        notices as they are published, and an empty batch after each ``keepalive_s`` without any. ``after`` ≥ 0
        resumes, or resets when the log no longer reaches back. A named ``watcher`` holds ``publish`` up until it
        acknowledges (``ack``) or its lease runs out."""
        position = self._position
        if watcher is not None:
            async with self._acked:
                self._watchers[watcher] = (position, self._clock())
        try:
            yield Notices(position, reset=after < 0 or after < position - len(self._log))
            while True:
                async with self._changed:
                    if self._position <= position:
                        try:
                            await asyncio.wait_for(self._changed.wait(), timeout=self._keepalive_s)
                        except TimeoutError:
                            pass
                    fresh = tuple(notice for at, notice in self._log if at > position)
                    position = self._position
                yield Notices(position, fresh)
        finally:
            if watcher is not None:
                async with self._acked:
                    self._watchers.pop(watcher, None)
                    self._acked.notify_all()


class RevocationsClient:
    def __init__(self, calls: Calls) -> None:
        self._calls = calls

    @classmethod
    def start(cls, settings: Settings, resources: dict[str, float] | None = None) -> RevocationsClient:
        import ray

        actor: Any = ray.remote(Revocations)
        handle = actor.options(
            name=ACTOR_NAME, namespace=settings.ray_namespace, lifetime="detached", get_if_exists=True,
            num_cpus=0, max_restarts=-1, resources=resources or {}, max_concurrency=1000,
        ).remote()
        return cls(RayCalls(handle, "revocations"))

    @classmethod
    def connect(cls, settings: Settings) -> RevocationsClient:
        import ray

        try:
            return cls(RayCalls(ray.get_actor(ACTOR_NAME, namespace=settings.ray_namespace), "revocations"))
        except ValueError:
            raise ArchipelagError("the revocations service is not running; start the coordinator first") from None

    @classmethod
    def local(cls, revocations: Revocations | None = None) -> RevocationsClient:
        return cls(LocalCalls(revocations or Revocations()))

    async def publish(self, notice: Notice) -> None:
        await self._calls.call("publish", notice)

    async def ack(self, watcher: str, position: int) -> None:
        await self._calls.call("ack", watcher, position)

    async def watch(self, after: int = -1, watcher: str | None = None) -> AsyncIterator[Notices]:
        async for notices in self._calls.stream("watch", after, watcher):
            yield notices
