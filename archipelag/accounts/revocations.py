"""Revocations: notices that a credential stopped working — a key revoked, a session ended, an account
suspended — fanned out to every API replica, so the caches of recently authenticated callers drop it at once.

One ``Revocations`` object lives in a named actor on the head (``RevocationsClient.start``); each replica
follows it with ``watch`` (a Ray streaming generator) and publishes through ``publish``. A replica that loses
the stream forgets everything it had cached before it follows again: it may re-check credentials, never trust
stale ones. Tests without Ray use the same object in process (``RevocationsClient.local``).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any, Literal

from archipelag.errors import ArchipelagError
from archipelag.remote import Calls, LocalCalls, RayCalls
from archipelag.settings import Settings

log = logging.getLogger(__name__)

ACTOR_NAME = "revocations"
KEEP_NOTICES = 10_000  # a watcher further behind than this starts over (forgets its whole cache)

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
    def __init__(self) -> None:
        self._position = 0
        self._log: list[tuple[int, Notice]] = []
        self._changed = asyncio.Condition()

    async def publish(self, notice: Notice) -> int:
        async with self._changed:
            self._position += 1
            self._log.append((self._position, notice))
            del self._log[:-KEEP_NOTICES]
            self._changed.notify_all()
            return self._position

    async def watch(self, after: int = -1) -> AsyncIterator[Notices]:
        """First the position now (with ``reset``: a new watcher knows nothing it could keep), then each batch of
        notices as they are published. ``after`` ≥ 0 resumes, or resets when the log no longer reaches back."""
        position = self._position
        yield Notices(position, reset=after < 0 or after < position - len(self._log))
        while True:
            async with self._changed:
                while self._position <= position:
                    await self._changed.wait()
                fresh = tuple(notice for at, notice in self._log if at > position)
                position = self._position
            yield Notices(position, fresh)


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

    async def watch(self, after: int = -1) -> AsyncIterator[Notices]:
        async for notices in self._calls.stream("watch", after):
            yield notices
