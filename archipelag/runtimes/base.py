"""The Runtime seam: how a host agent runs one job in a sandbox and gets its events back."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from archipelag.catalog import Manifest
from archipelag.ids import JobId
from archipelag.protocol import Event
from archipelag.sandbox import Limits

if TYPE_CHECKING:
    from archipelag.gate.tickets import SignedTicket


@dataclass(frozen=True)
class JobSpec:
    """Everything a runtime needs to run one job; picklable, travels host-ward over Ray."""

    job_id: JobId
    workload: Manifest
    input: dict[str, Any]
    limits: Limits
    ticket: SignedTicket | None = None  # the coordinator's permission to start it (containers: gate/tickets.py)
    attempt: int = 1  # which run of the job this is: the host's receipt names it (receipts.py)


@dataclass
class CancelToken:
    """Set once to stop a running job; runtimes register callbacks to interrupt their sandbox."""

    _event: threading.Event = field(default_factory=threading.Event)
    _callbacks: list[Callable[[], None]] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    reason: str = ""

    @property
    def cancelled(self) -> bool:
        return self._event.is_set()

    def cancel(self, reason: str = "cancelled by the user") -> None:
        with self._lock:
            if self._event.is_set():
                return
            self.reason = reason
            self._event.set()
            callbacks = list(self._callbacks)
        for callback in callbacks:
            callback()

    def on_cancel(self, callback: Callable[[], None]) -> None:
        with self._lock:
            if not self._event.is_set():
                self._callbacks.append(callback)
                return
        callback()

    def wait(self, timeout_s: float) -> bool:
        return self._event.wait(timeout_s)


class Runtime(Protocol):
    """Runs a job's workload in a sandbox.

    ``run`` yields validated protocol events (without ``seq``) as the workload produces them and
    returns after the final ``done`` (or the workload's own ``error`` event). It raises
    ``WorkloadRefused`` before running an artifact that fails its checks, ``BudgetExceeded`` /
    ``WorkloadTimedOut`` / ``ProtocolViolation`` when the workload misbehaves, and ``JobCancelled``
    when ``cancel`` fired. It never lets a workload crash the calling process.
    """

    name: str

    def run(self, spec: JobSpec, cancel: CancelToken) -> Iterator[Event]: ...

    def warm(self, now: float) -> frozenset[str]:
        """Workload slugs this runtime can start without a build or load (placement prefers them)."""

    def close(self) -> None:
        """Release the runtime's threads and handles; the host is leaving."""
