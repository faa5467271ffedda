"""Auth: Bearer ``ak_…`` keys, their scopes, and the per-key rate limit."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from fastapi import Request

from archipelag.errors import Forbidden, RateLimited, Unauthorized

_CACHE_TTL_S = 5.0  # a revoked key stops working here within this long (at once when revoked via the API)


@dataclass(frozen=True)
class Caller:
    account_id: int
    key_id: int
    scopes: frozenset[str]
    home_region: str | None


class RateLimiter:
    """A token bucket per key: ``per_min`` requests a minute, bursting up to ``per_min``."""

    def __init__(self, per_min: int) -> None:
        self._per_min = per_min
        self._buckets: dict[int, tuple[float, float]] = {}

    def check(self, key_id: int, now: float | None = None) -> None:
        if self._per_min <= 0:
            return
        now = time.monotonic() if now is None else now
        tokens, last = self._buckets.get(key_id, (float(self._per_min), now))
        tokens = min(float(self._per_min), tokens + (now - last) * self._per_min / 60.0)
        if tokens < 1.0:
            self._buckets[key_id] = (tokens, now)
            retry_after = max(1, int((1.0 - tokens) * 60.0 / self._per_min) + 1)
            raise RateLimited(f"rate limit of {self._per_min} requests a minute reached; retry in {retry_after} s",
                              retry_after=retry_after)
        self._buckets[key_id] = (tokens - 1.0, now)


class KeyCache:
    """Recently authenticated keys, so each request does not cost a database read."""

    def __init__(self) -> None:
        self._entries: dict[str, tuple[float, Caller]] = {}

    def get(self, digest: str) -> Caller | None:
        entry = self._entries.get(digest)
        if entry is None or entry[0] < time.monotonic():
            return None
        return entry[1]

    def put(self, digest: str, caller: Caller) -> None:
        self._entries[digest] = (time.monotonic() + _CACHE_TTL_S, caller)

    def forget_key(self, key_id: int) -> None:
        for digest, (_, caller) in list(self._entries.items()):
            if caller.key_id == key_id:
                del self._entries[digest]


def bearer_key(request: Request) -> str:
    header = request.headers.get("authorization", "")
    scheme, _, key = header.partition(" ")
    if scheme.lower() != "bearer" or not key.strip():
        raise Unauthorized("missing API key: send `Authorization: Bearer ak_…`")
    return key.strip()


def require(scope: str) -> Callable[[Request], Awaitable[Caller]]:
    """A FastAPI dependency: the authenticated caller, holding ``scope``, within its rate limit."""

    async def dependency(request: Request) -> Caller:
        services: Any = request.app.state.services
        key = bearer_key(request)
        digest = hashlib.sha256(key.encode()).hexdigest()
        caller: Caller | None = services.keys.get(digest)
        if caller is None:
            account, api_key = await services.ledger.authenticate(key)
            caller = Caller(account_id=account.id, key_id=api_key.id, scopes=frozenset(api_key.scopes),
                            home_region=account.home_region)
            services.keys.put(digest, caller)
        if scope not in caller.scopes:
            raise Forbidden(f"this API key lacks the `{scope}` scope")
        services.limiter.check(caller.key_id)
        return caller

    return dependency
