"""PlacementClient: the typed wrapper around the placement actor; the only code that calls it.

``start`` creates the named detached actor on the head, ``connect`` finds it, ``local`` runs the same actor
class in-process (no Ray) as a stand-in for unit tests. Ray's errors are translated here: an error the actor
raised on purpose comes back as itself; an unreachable actor becomes ``NoCapacity`` (503, retry).
Load updates (heartbeat, job_assigned/released, mark_offline, refresh_karma) are fire-and-forget: they never
block a heartbeat thread or the API's event loop.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable, Collection, Mapping
from pathlib import Path
from typing import Any, Final, Protocol

from archipelag.catalog import Manifest
from archipelag.errors import ArchipelagError, NoCapacity
from archipelag.identity import Proof
from archipelag.ids import HostId, WorkloadSlug
from archipelag.ledger.karma_rules import KarmaState
from archipelag.ledger.records import HostIdentity
from archipelag.lifecycle import HostStatus
from archipelag.nodes import services_dir
from archipelag.placement.actor import Identities, PlacementActor
from archipelag.placement.book import Book
from archipelag.placement.scoring import HostSnapshot, JobRequest
from archipelag.remote import Unreachable, remote_apart
from archipelag.settings import Settings
from archipelag.socket_calls import OrderedCalls, serve_in_thread, take_turns

log = logging.getLogger(__name__)

ACTOR_NAME = "placement"
CALL_TIMEOUT_S = 30.0
# Who a host is, read from the ledger on placement's own thread (a host's first report, an operator's call): a
# ledger that does not answer this soon fails the report, which the host sends again, instead of holding every
# ranking behind it. Karma and asks are read off that thread (placement/book.py).
IDENTITY_TIMEOUT_S = 2.0


class _Calls(Protocol):
    def call(self, method: str, *args: Any) -> Any: ...
    def send(self, method: str, *args: Any) -> None: ...
    async def call_async(self, method: str, *args: Any) -> Any: ...


class _RayCalls:
    """Calls through a Ray actor handle, with Ray's errors translated into ours."""

    def __init__(self, handle: Any) -> None:
        self._handle = handle

    def call(self, method: str, *args: Any) -> Any:
        import ray
        from ray.exceptions import RayError

        try:
            return ray.get(remote_apart(getattr(self._handle, method), *args), timeout=CALL_TIMEOUT_S)
        except RayError as exc:
            raise _translated(exc) from None

    def send(self, method: str, *args: Any) -> None:
        try:
            remote_apart(getattr(self._handle, method), *args)
        except Exception:  # a lost update is repaired by the next heartbeat; never fail the caller for it
            log.warning("placement.%s was not sent", method, exc_info=True)

    async def call_async(self, method: str, *args: Any) -> Any:
        from ray.exceptions import RayError

        try:
            return await asyncio.wait_for(remote_apart(getattr(self._handle, method), *args), timeout=CALL_TIMEOUT_S)
        except (RayError, TimeoutError) as exc:
            raise _translated(exc) from None


def _translated(exc: Exception) -> Exception:
    from ray.exceptions import GetTimeoutError, RayActorError, RayTaskError

    if isinstance(exc, RayTaskError) and isinstance(exc.cause, ArchipelagError):
        return exc.cause
    if isinstance(exc, (RayActorError, GetTimeoutError, TimeoutError)):
        return NoCapacity(f"placement is not answering ({type(exc).__name__}); retry shortly")
    return exc


class _SocketCalls:
    """The jobs service's calls, over placement's socket (``socket_calls.OrderedCalls``): in the order they are
    made, as through Ray, without a Ray hop each way (2.7 ms of a first token's ranking, ``bench llm``). Only
    for one event loop on placement's machine; a blocking call goes through Ray."""

    def __init__(self, path: Path, handle: Any) -> None:
        self._ray = _RayCalls(handle)

        async def wake() -> None:  # a call through Ray returns once the actor (and so its socket) is up
            await self._ray.call_async("ping")

        self._socket = OrderedCalls(path, "placement", wake)

    def call(self, method: str, *args: Any) -> Any:
        return self._ray.call(method, *args)

    def send(self, method: str, *args: Any) -> None:
        self._socket.send(method, *args)  # never raises: a lost update is repaired by the next heartbeat

    async def call_async(self, method: str, *args: Any) -> Any:
        try:
            return await asyncio.wait_for(self._socket.call(method, *args), timeout=CALL_TIMEOUT_S)
        except (Unreachable, TimeoutError) as exc:
            raise NoCapacity(f"placement is not answering ({type(exc).__name__}); retry shortly") from None


def socket_path(settings: Settings) -> Path:
    return services_dir(settings.state_dir) / "placement.sock"


# What the jobs service asks of placement over its socket.
SOCKET_METHODS: Final = ("rank", "quote", "hosts", "job_assigned", "job_released", "mark_offline", "set_queued",
                         "refresh_asks", "refresh_karma", "suspend", "market_rates", "ping")


class _OneAtATime(PlacementActor):
    """The placement Ray runs: ``PlacementActor``, with its socket for the jobs service (served on a thread of its
    own), and every public method under one lock, so a call over the socket and one through Ray's thread run one
    at a time, as Ray alone ran them (``max_concurrency=1``)."""

    def __init__(self, settings: Settings, *args: Any, **kwargs: Any) -> None:
        self._turn = threading.RLock()
        with self._turn:
            super().__init__(settings, *args, **kwargs)
        serve_in_thread(self, SOCKET_METHODS, socket_path(settings), "placement")


take_turns(_OneAtATime)
_OneAtATime.__name__ = "PlacementActor"  # Ray names its process by it (`ray::PlacementActor`)


class _LocalCalls:
    """Direct calls to an in-process PlacementActor: the stand-in with the same behaviour, minus Ray."""

    def __init__(self, actor: PlacementActor) -> None:
        self.actor = actor

    def call(self, method: str, *args: Any) -> Any:
        return getattr(self.actor, method)(*args)

    def send(self, method: str, *args: Any) -> None:
        try:
            getattr(self.actor, method)(*args)
        except ArchipelagError:  # fire-and-forget through Ray drops the error too
            log.warning("placement.%s failed", method, exc_info=True)

    async def call_async(self, method: str, *args: Any) -> Any:
        return self.call(method, *args)


class _LedgerActor:
    """The ledger actor as placement calls it: found by name when first called (so what holds it travels to the
    placement actor as plain data); an error the ledger raised on purpose comes back as itself, an unreachable
    ledger as NoCapacity."""

    def __init__(self, namespace: str, timeout_s: float = CALL_TIMEOUT_S) -> None:
        self._namespace = namespace
        self._timeout_s = timeout_s
        self._handle: Any = None

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_handle": None}

    def call(self, what: str, method: str, *args: Any) -> Any:
        import ray
        from ray.exceptions import RayError, RayTaskError

        try:
            if self._handle is None:
                self._handle = ray.get_actor("ledger", namespace=self._namespace)
            return ray.get(remote_apart(getattr(self._handle, method), *args), timeout=self._timeout_s)
        except RayTaskError as exc:
            if isinstance(exc.cause, ArchipelagError):
                raise exc.cause from None
            self._handle = None
            raise NoCapacity(f"placement could not ask the ledger {what}; retry shortly") from None
        except (RayError, ValueError):
            self._handle = None
            raise NoCapacity(f"placement could not ask the ledger {what}; retry shortly") from None


class LedgerIdentities:
    """Placement's view of who is enrolled: the ledger actor's ``host_identity``."""

    def __init__(self, namespace: str) -> None:
        self._ledger = _LedgerActor(namespace, IDENTITY_TIMEOUT_S)

    def __call__(self, host_id: HostId) -> HostIdentity | None:
        found: HostIdentity | None = self._ledger.call(f"who host {host_id} is", "host_identity", host_id)
        return found


class LedgerBook:
    """Placement's view of hosts' karma and asks (``placement.book.Book``): the ledger actor's own methods."""

    def __init__(self, namespace: str) -> None:
        self._ledger = _LedgerActor(namespace)

    def karma_states(self, host_ids: Collection[str]) -> dict[HostId, KarmaState]:
        return dict(self._ledger.call("for hosts' karma", "karma_states", list(host_ids)))

    def asking_prices(self, host_id: str | None = None) -> dict[HostId, dict[str, int]]:
        what = "what hosts ask" if host_id is None else f"what host {host_id} asks"
        return dict(self._ledger.call(what, "asking_prices", host_id))

    def set_asking_prices(self, host_id: str, asks: Mapping[str, int]) -> dict[str, int]:
        return dict(self._ledger.call(f"to store what host {host_id} asks", "set_asking_prices", host_id,
                                      dict(asks)))


class PlacementClient:
    def __init__(self, calls: _Calls) -> None:
        self._calls = calls

    @classmethod
    def start(cls, settings: Settings, resources: dict[str, float] | None = None) -> PlacementClient:
        """Create the named, detached placement actor (or find the running one) and return at once: calls wait
        for it to be up."""
        import ray

        from archipelag.bridge.client import socket_path
        from archipelag.placement.prober import BridgeProber
        from archipelag.placement.suspects import BridgeWitness

        prober = BridgeProber(settings.benchmark, socket_path(settings)) if settings.benchmark.enabled else None
        witness = BridgeWitness(socket_path(settings), settings.placement.loss_check_timeout_s)
        handle = ray.remote(_OneAtATime).options(
            name=ACTOR_NAME, namespace=settings.ray_namespace, lifetime="detached", get_if_exists=True,
            num_cpus=0, resources=resources or {}, max_restarts=-1,
            max_concurrency=1,  # one call at a time, in each caller's order: see actor.py
        ).remote(settings, time.time, prober, identities=LedgerIdentities(settings.ray_namespace), witness=witness,
                 book=LedgerBook(settings.ray_namespace), book_thread=True)
        return cls(_RayCalls(handle))

    @classmethod
    def connect(cls, settings: Settings) -> PlacementClient:
        import ray

        try:
            handle = ray.get_actor(ACTOR_NAME, namespace=settings.ray_namespace)
        except ValueError:
            raise NoCapacity(f"placement is not running in namespace {settings.ray_namespace!r}; "
                             "start the coordinator (`archipelag up`) first") from None
        return cls(_RayCalls(handle))

    @classmethod
    def nearby(cls, settings: Settings) -> PlacementClient:
        """The running placement actor, over its socket, for a caller on its machine that calls it from one event
        loop (the jobs service): its calls keep their order, as through Ray."""
        import ray

        try:
            handle = ray.get_actor(ACTOR_NAME, namespace=settings.ray_namespace)
        except ValueError:
            raise NoCapacity(f"placement is not running in namespace {settings.ray_namespace!r}; "
                             "start the coordinator (`archipelag up`) first") from None
        return cls(_SocketCalls(socket_path(settings), handle))

    @classmethod
    def local(cls, settings: Settings, clock: Callable[[], float] = time.time,
              identities: Identities | None = None,
              catalog: Mapping[WorkloadSlug, Manifest] | None = None, book: Book | None = None) -> PlacementClient:
        """An in-process placement with the same behaviour, for tests that do not start Ray. Without
        ``identities`` it takes unsigned reports (scripted hosts have no keys); ``catalog`` (else the settings'
        workloads) bounds hosts' asks; ``book`` (an in-process ``Ledger``) is the ledger's word on karma and asks,
        without which hosts keep the neutral score and the asks they register with. A report that a host was
        lost is believed: there is no host to ask."""
        return cls(_LocalCalls(PlacementActor(settings, clock, identities=identities, catalog=catalog, book=book)))

    # --- hosts reporting ----------------------------------------------------------------------------

    def register(self, snapshot: HostSnapshot, proof: Proof | None = None) -> None:
        """HostRefused unless ``proof`` is the enrolled host's signature over ``snapshot`` (identity.sign)."""
        self._calls.call("register", snapshot, proof)

    def heartbeat(self, host_id: HostId, metrics: dict[str, Any], proof: Proof | None = None) -> None:
        """Fire-and-forget: free_ram_mb, free_vram_mb, active_jobs, warm; other keys are ignored."""
        self._calls.send("heartbeat", host_id, metrics, proof)

    def beat(self, host_id: HostId, metrics: dict[str, Any], proof: Proof | None = None) -> bool:
        """A heartbeat that waits for the answer: False when placement does not know the host
        (it restarted), so the host registers again; HostRefused for a revoked host or a forged report."""
        return bool(self._calls.call("heartbeat", host_id, metrics, proof))

    async def register_async(self, snapshot: HostSnapshot, proof: Proof | None) -> None:
        await self._calls.call_async("register", snapshot, proof)

    async def beat_async(self, host_id: HostId, metrics: dict[str, Any], proof: Proof | None) -> bool:
        return bool(await self._calls.call_async("heartbeat", host_id, metrics, proof))

    async def set_status_async(self, host_id: HostId, status: HostStatus, proof: Proof | None) -> None:
        await self._calls.call_async("set_status", host_id, status, proof)

    async def forget_async(self, host_id: HostId) -> None:
        """A revoked host: out of placement at once; its next report is refused."""
        await self._calls.call_async("forget", host_id)

    def set_status(self, host_id: HostId, status: HostStatus, proof: Proof | None = None) -> None:
        self._calls.call("set_status", host_id, status, proof)

    def mark_offline(self, host_id: HostId, reason: str) -> None:
        """Fire-and-forget: the host was lost; out of placement at once, until it answers a check with a signed
        heartbeat (placement/suspects.py)."""
        self._calls.send("mark_offline", host_id, reason)

    def refresh_karma(self, host_ids: list[HostId] | None = None) -> None:
        """Fire-and-forget: placement reads these hosts' karma from the ledger (None: every host it knows) and acts
        on it: the score, the placement share, a suspension and why."""
        self._calls.send("refresh_karma", host_ids)

    async def suspend_async(self, host_id: HostId, reason: str) -> None:
        await self._calls.call_async("suspend", host_id, reason)

    async def reinstate_async(self, host_id: HostId) -> None:
        await self._calls.call_async("reinstate", host_id)

    async def suspensions_async(self) -> dict[HostId, str]:
        return dict(await self._calls.call_async("suspensions"))

    # --- live load between heartbeats ---------------------------------------------------------------

    def job_assigned(self, host_id: HostId) -> None:
        self._calls.send("job_assigned", host_id)

    def job_released(self, host_id: HostId) -> None:
        self._calls.send("job_released", host_id)

    # --- the exchange -------------------------------------------------------------------------------

    def refresh_asks(self) -> None:
        """Fire-and-forget: placement applies what the ledger holds of every host's asks now."""
        self._calls.send("refresh_asks", None)

    async def refresh_asks_async(self, host_id: HostId) -> None:
        """Placement applies what the ledger holds of the host's asks now (a host it does not know reads them
        when it registers)."""
        await self._calls.call_async("refresh_asks", host_id)

    def set_queued(self, queued: int) -> None:
        """Fire-and-forget: the jobs waiting in the queue now (the surge weighs them against free slots)."""
        self._calls.send("set_queued", queued)

    async def quote_async(self, host_id: HostId, request: JobRequest) -> int | None:
        """The host's effective ask for ``request`` now (None: placement does not know the host)."""
        quoted: int | None = await self._calls.call_async("quote", host_id, request)
        return quoted

    def market_rates(self, catalog_prices: dict[str, int]) -> dict[str, dict[str, Any]]:
        """Per slug: ``rate_micro``, ``hosts``, ``lowest_micro``, ``highest_micro`` (None without hosts), ``surge``."""
        return dict(self._calls.call("market_rates", catalog_prices))

    async def market_rates_async(self, catalog_prices: dict[str, int]) -> dict[str, dict[str, Any]]:
        return dict(await self._calls.call_async("market_rates", catalog_prices))

    # --- questions ----------------------------------------------------------------------------------

    def rank(self, request: JobRequest) -> list[HostId]:
        """Hosts for ``request``, best first; NoCapacity (with the reason) when none can take it."""
        return list(self._calls.call("rank", request))

    async def rank_async(self, request: JobRequest) -> list[HostId]:
        return list(await self._calls.call_async("rank", request))

    def hosts(self) -> list[HostSnapshot]:
        return list(self._calls.call("hosts"))

    async def hosts_async(self) -> list[HostSnapshot]:
        return list(await self._calls.call_async("hosts"))

    def get(self, host_id: HostId) -> HostSnapshot:
        """One host; NotFound if placement does not know it."""
        snapshot: HostSnapshot = self._calls.call("get", host_id)
        return snapshot

    async def get_async(self, host_id: HostId) -> HostSnapshot:
        snapshot: HostSnapshot = await self._calls.call_async("get", host_id)
        return snapshot

    def ping(self) -> int:
        """The number of known hosts; NoCapacity if placement does not answer."""
        return int(self._calls.call("ping"))
