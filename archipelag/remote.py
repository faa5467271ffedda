"""Remote calls: how a typed client reaches an object that lives in a Ray actor — or, for tests without Ray,
in this process — with Ray's errors translated once, here.

A client (``LedgerClient``, ``JobsClient``) holds a ``Calls`` and writes one typed method per remote method;
callers never see method names as strings or ``.remote()``.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from typing import Any, Protocol

from archipelag.errors import ArchipelagError

log = logging.getLogger(__name__)


def remote_apart(method: Any, *args: Any, **kwargs: Any) -> Any:
    """``method.remote(*args, **kwargs)``, sent as no child of the Ray task running here, so that it ends as the
    actor it goes to decides, never because the task that sent it was cancelled.

    Ray cancels a cancelled task's children with it (``ray.cancel``'s default; Serve cancels a request's task so
    when its client goes away, and our streams cancel theirs when their reader leaves). A child still queued at
    an in-order actor is then dropped before it runs: seen here, a chat's Stop cancelled the ledger's record of
    a job, and the hole it left in the ledger's queue held every later call from the jobs service for 30 s and
    then failed them all, other users' included. What a caller sends must outlive the caller's own cancel: the
    jobs service and the hosts stop work through their own cancel paths."""
    from ray import TaskID
    from ray._raylet import async_task_id  # type: ignore[attr-defined]

    token = async_task_id.set(TaskID.nil())  # no parent (unset, Ray takes the task its thread runs last)
    try:
        return method.remote(*args, **kwargs)
    finally:
        async_task_id.reset(token)


class Calls(Protocol):
    async def call(self, method: str, *args: Any, **kwargs: Any) -> Any: ...

    def send(self, method: str, *args: Any, **kwargs: Any) -> None: ...

    def stream(self, method: str, *args: Any) -> AsyncIterator[Any]: ...


class Unreachable(ArchipelagError):
    """The actor behind a client does not answer (it is restarting, or its node is gone): retry shortly."""

    code = "service_unavailable"
    http_status = 503


class RayCalls:
    """Calls through a Ray actor handle. An error the object raised on purpose comes back as itself."""

    def __init__(self, handle: Any, what: str, timeout_s: float | None = None) -> None:
        self._handle = handle
        self._what = what
        self._timeout_s = timeout_s

    async def call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        from ray.exceptions import RayError

        try:
            ref = remote_apart(getattr(self._handle, method), *args, **kwargs)
            if self._timeout_s is None:
                return await ref
            return await asyncio.wait_for(ref, self._timeout_s)
        except (RayError, TimeoutError) as exc:
            raise translated(exc, self._what) from None

    def send(self, method: str, *args: Any, **kwargs: Any) -> None:
        try:
            remote_apart(getattr(self._handle, method), *args, **kwargs)
        except Exception:  # fire-and-forget: the caller never fails for a lost notice
            log.warning("%s.%s was not sent", self._what, method, exc_info=True)

    async def stream(self, method: str, *args: Any) -> AsyncIterator[Any]:
        """The items a generator method yields, as Ray streams them (no call per item). Leaving early cancels
        the generator in the actor."""
        import ray
        from ray.exceptions import RayError

        generator = remote_apart(getattr(self._handle, method), *args)
        finished = False
        try:
            async for ref in generator:
                yield await ref
            finished = True
        except RayError as exc:
            finished = True
            raise translated(exc, self._what) from None
        finally:
            if not finished:
                try:
                    ray.cancel(generator, recursive=False)  # what the generator sent ends as its callee decides
                except Exception:  # best effort: the actor's generator ends at its next wait anyway
                    log.debug("%s.%s was not cancelled", self._what, method, exc_info=True)


def translated(exc: BaseException, what: str) -> BaseException:
    from ray.exceptions import RayTaskError

    if isinstance(exc, RayTaskError) and isinstance(exc.cause, ArchipelagError):
        return exc.cause
    if isinstance(exc, RayTaskError):
        return ArchipelagError(f"{what} failed: {exc.cause!r}")
    return Unreachable(f"the {what} is not answering ({type(exc).__name__}); retry shortly")


class LocalCalls:
    """Calls to an object in this process: the stand-in with the same behaviour, minus Ray. Synchronous
    methods run in a thread (as in their actor, off the caller's event loop); coroutines are awaited."""

    def __init__(self, target: Any) -> None:
        self.target = target
        self._tasks: set[asyncio.Task[Any]] = set()

    async def call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        function = getattr(self.target, method)
        if asyncio.iscoroutinefunction(function):
            return await function(*args, **kwargs)
        return await asyncio.to_thread(function, *args, **kwargs)

    def send(self, method: str, *args: Any, **kwargs: Any) -> None:
        task = asyncio.get_running_loop().create_task(self.call(method, *args, **kwargs))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def stream(self, method: str, *args: Any) -> AsyncIterator[Any]:
        async for item in getattr(self.target, method)(*args):
            yield item
