"""Auth: who is calling — a Bearer ``ak_…`` key (programs) or a session cookie (browsers, with CSRF checks) —
what they may do (scopes, the admin role), and how often (a rate limit per account; a limit per client
address on failed authentication).

Recently authenticated credentials are cached per replica; revocation notices (``accounts.revocations``)
drop them from every replica's cache at once, so a revoked key, an ended session or a suspended account
stops working on the next request.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import time
import uuid
from collections.abc import Awaitable, Callable, Hashable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from fastapi import Request

from archipelag.accounts.revocations import LEASE_S, Notice, RevocationsClient
from archipelag.errors import CsrfFailed, Forbidden, RateLimited, Unauthorized

if TYPE_CHECKING:
    from archipelag.serve.services import Services

log = logging.getLogger(__name__)

CACHE_TTL_S = 30.0  # a credential is re-checked against the ledger this often even without a notice
SESSION_COOKIE = "archipelag_session"
CSRF_COOKIE = "archipelag_csrf"
CSRF_HEADER = "x-csrf-token"
SESSION_SCOPES = frozenset({"read", "write", "keys"})  # a signed-in person may do anything their account may
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


@dataclass(frozen=True)
class Caller:
    account_id: int
    key_id: int | None  # the API key used, or None for a session
    scopes: frozenset[str]
    home_region: str | None
    is_admin: bool = False
    session_id: int | None = None
    csrf_token: str | None = None

    @property
    def key_scopes(self) -> frozenset[str] | None:
        """The scopes a key may hand on to a key it creates (None for a session: any)."""
        return self.scopes if self.key_id is not None else None


class RateLimiter:
    """A token bucket per subject (an account, a client address): ``per_min`` a minute, bursting to ``per_min``."""

    def __init__(self, per_min: int, what: str = "requests") -> None:
        self._per_min = per_min
        self._what = what
        self._buckets: dict[Hashable, tuple[float, float]] = {}

    def _tokens(self, subject: Hashable, now: float) -> float:
        tokens, last = self._buckets.get(subject, (float(self._per_min), now))
        return min(float(self._per_min), tokens + (now - last) * self._per_min / 60.0)

    def _refused(self, tokens: float) -> RateLimited:
        retry_after = max(1, int((1.0 - tokens) * 60.0 / self._per_min) + 1)
        return RateLimited(f"rate limit of {self._per_min} {self._what} a minute reached; retry in {retry_after} s",
                           retry_after=retry_after)

    def check(self, subject: Hashable, now: float | None = None) -> None:
        """Spend one token, or raise RateLimited (429 with Retry-After) when there is none."""
        if self._per_min <= 0:
            return
        now = time.monotonic() if now is None else now
        tokens = self._tokens(subject, now)
        if tokens < 1.0:
            self._buckets[subject] = (tokens, now)
            raise self._refused(tokens)
        self._buckets[subject] = (tokens - 1.0, now)
        if len(self._buckets) > 100_000:  # forget full buckets: they hold nothing a new bucket would not
            self._buckets = {s: b for s, b in self._buckets.items() if b[0] < self._per_min - 1}

    def ensure_open(self, subject: Hashable, now: float | None = None) -> None:
        """Raise RateLimited when ``subject`` has no token left, without spending one."""
        if self._per_min <= 0:
            return
        now = time.monotonic() if now is None else now
        tokens = self._tokens(subject, now)
        if tokens < 1.0:
            raise self._refused(tokens)


class CredentialCache:
    """Recently authenticated keys and sessions (by the SHA-256 of the secret), kept up to date by revocation
    notices; ``follow`` runs the subscription for this replica. The cache answers only while its lease on the
    notices holds (``accounts.revocations``): a replica that stopped hearing them checks every credential again."""

    def __init__(self, ttl_s: float = CACHE_TTL_S, clock: Callable[[], float] = time.monotonic) -> None:
        self._ttl_s = ttl_s
        self._clock = clock
        self._entries: dict[str, tuple[float, Caller]] = {}
        self._watching: asyncio.Task[None] | None = None
        self._lease_until = float("-inf")
        self.generation = 0  # counts the notices applied: ``put`` skips a caller looked up before one arrived

    def get(self, digest: str) -> Caller | None:
        entry = self._entries.get(digest)
        now = self._clock()
        if entry is None or entry[0] < now or now >= self._lease_until:
            return None
        return entry[1]

    def put(self, digest: str, caller: Caller, generation: int) -> None:
        """Cache ``caller``, looked up when ``generation`` was current; not when a notice arrived since (the
        lookup may predate the revocation it announced)."""
        if generation == self.generation:
            self._entries[digest] = (self._clock() + self._ttl_s, caller)

    def forget(self, notice: Notice) -> None:
        self.generation += 1
        for digest, (_, caller) in list(self._entries.items()):
            if ((notice.kind == "key" and caller.key_id == notice.id)
                    or (notice.kind == "session" and caller.session_id == notice.id)
                    or (notice.kind == "account" and caller.account_id == notice.id)):
                del self._entries[digest]

    def clear(self) -> None:
        self.generation += 1
        self._entries.clear()
        self._lease_until = float("-inf")

    def follow(self, revocations: RevocationsClient) -> None:
        """Follow revocation notices from now on (once per replica; restarted if it ever stops)."""
        if self._watching is None or self._watching.done():
            self._watching = asyncio.get_running_loop().create_task(self._follow(revocations))

    async def _follow(self, revocations: RevocationsClient) -> None:
        watcher = uuid.uuid4().hex
        position = -1
        while True:
            try:
                async for notices in revocations.watch(position, watcher):
                    if notices.reset:
                        self.clear()
                    for notice in notices.notices:
                        self.forget(notice)
                    position = notices.position
                    sent = self._clock()  # the lease counts from before the acknowledgement left
                    await revocations.ack(watcher, position)
                    self._lease_until = sent + LEASE_S
            except Exception:
                log.warning("revocation notices interrupted; following again", exc_info=True)
            self.clear()  # whatever was missed meanwhile: check everything again
            position = -1
            await asyncio.sleep(0.5)


def digest_of(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def client_address(request: Request) -> str:
    """The address a request came from: the peer, or, when the peer is a proxy the settings trust
    (``trusted_proxies``), the address that proxy appended to ``X-Forwarded-For``. A client cannot choose its
    address by sending the header itself: only the hop added by a trusted proxy counts."""
    peer = request.client.host if request.client else "unknown"
    trusted: list[str] = request.app.state.services.settings.trusted_proxies
    if peer in trusted:
        hops = [hop.strip() for hop in request.headers.get("x-forwarded-for", "").split(",") if hop.strip()]
        if hops:
            return hops[-1][:64]
    return peer


async def authenticate(request: Request, services: Services) -> Caller:
    """The caller of ``request``: by its Bearer key, else by its session cookie (with the CSRF check on a
    state-changing request). Failed attempts count against the client address's limit."""
    services.credentials.follow(services.revocations)
    header = request.headers.get("authorization")
    cookie = request.cookies.get(SESSION_COOKIE)
    if header is None and not cookie:
        raise Unauthorized("missing API key: send `Authorization: Bearer ak_…` (or sign in)")
    address = client_address(request)
    services.auth_failures.ensure_open(address)
    try:
        caller = await (_by_key(header, services) if header is not None else _by_session(cookie or "", services))
    except Unauthorized:
        services.auth_failures.check(address)
        raise
    if caller.session_id is not None and request.method not in SAFE_METHODS:
        sent = request.headers.get(CSRF_HEADER, "")
        if not hmac.compare_digest(sent.encode(), (caller.csrf_token or "").encode()):
            raise CsrfFailed(f"missing or wrong {CSRF_HEADER} header (the `csrf_token` of your session)")
    return caller


async def _by_key(header: str, services: Services) -> Caller:
    scheme, _, key = header.partition(" ")
    key = key.strip()
    if scheme.lower() != "bearer" or not key:
        raise Unauthorized("missing API key: send `Authorization: Bearer ak_…`")
    digest = digest_of(key)
    caller = services.credentials.get(digest)
    if caller is None:
        generation = services.credentials.generation
        account, api_key = await services.ledger.authenticate(key)
        caller = Caller(account_id=account.id, key_id=api_key.id, scopes=frozenset(api_key.scopes),
                        home_region=account.home_region, is_admin=account.is_admin)
        services.credentials.put(digest, caller, generation)
    return caller


async def _by_session(token: str, services: Services) -> Caller:
    digest = digest_of(token)
    caller = services.credentials.get(digest)
    if caller is None:
        generation = services.credentials.generation
        account, session = await services.ledger.authenticate_session(token)
        caller = Caller(account_id=account.id, key_id=None, scopes=SESSION_SCOPES, home_region=account.home_region,
                        is_admin=account.is_admin, session_id=session.id, csrf_token=session.csrf_token)
        services.credentials.put(digest, caller, generation)
    return caller


def require(scope: str, *, admin: bool = False) -> Callable[[Request], Awaitable[Caller]]:
    """A FastAPI dependency: the authenticated caller, holding ``scope`` (and the admin role with ``admin``),
    within its account's rate limit."""

    async def dependency(request: Request) -> Caller:
        services: Any = request.app.state.services
        caller = await authenticate(request, services)
        if scope not in caller.scopes:
            raise Forbidden(f"this API key lacks the `{scope}` scope")
        if admin and not caller.is_admin:
            raise Forbidden("this needs an admin account")
        services.limiter.check(caller.account_id)
        return caller

    return dependency
