"""LedgerClient: the typed way to reach the LedgerActor; callers never write `.remote()`."""

from __future__ import annotations

from typing import Any

import ray

from archipelag.errors import LedgerError
from archipelag.ledger.actor import LedgerActor
from archipelag.settings import Settings

ACTOR_NAME = "ledger"


class LedgerClient:
    def __init__(self, handle: Any) -> None:
        self._handle = handle

    @classmethod
    def start(cls, settings: Settings, resources: dict[str, float] | None = None) -> LedgerClient:
        actor: Any = ray.remote(LedgerActor)
        handle = actor.options(
            name=ACTOR_NAME, namespace=settings.ray_namespace, lifetime="detached", get_if_exists=True,
            num_cpus=0, max_concurrency=1, max_restarts=-1, resources=resources or {},
        ).remote(settings.effective_database_url())
        ray.get(handle.ping.remote(), timeout=60)
        return cls(handle)

    @classmethod
    def connect(cls, settings: Settings) -> LedgerClient:
        try:
            return cls(ray.get_actor(ACTOR_NAME, namespace=settings.ray_namespace))
        except ValueError:
            raise LedgerError("the ledger actor is not running; start the coordinator first") from None

    async def call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        ok, value = await self._handle.call.remote(method, args, kwargs)
        if not ok:
            raise value
        return value
