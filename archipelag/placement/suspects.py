"""Suspects: hosts someone reported lost, which placement checks with the host itself before it believes it for long.

The dispatcher reports a host lost when its agent dies mid-job, and nothing can prove who sent the report: Ray lets
any joined node call placement. So a report is a suspicion. The host leaves placement at once (a lost host must not
get the next job while it is checked) and is asked to report now (``Witness``); only its signed heartbeat, which no
other node can forge, answers, and it puts the host back within a round trip. A host that proved a report false
lately (it answered within ``answer_within_s``, a round trip) stays in when the next one comes, until its check goes
unanswered: a lie repeated in a loop takes a host out for one round trip per ``doubt_s``, and a real loss in that
window waits for the check. A host that answers later (it hung, then woke) is back, but proved nothing: the next
report of its loss is believed at once.

``Suspects`` is the bookkeeping (pure); ``BridgeWitness`` asks the host's agent on placement's behalf.
"""

from __future__ import annotations

import asyncio
import logging
import math
import secrets
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from archipelag.ids import HostId

log = logging.getLogger(__name__)


class Witness(Protocol):
    """Asks a host to report to placement now, and tells placement (``PlacementActor.checked``) with ``ticket``
    once the host answered or the check timed out."""

    def ask(self, host_id: HostId, ticket: str) -> None: ...


@dataclass(frozen=True)
class Suspicion:
    believed: bool  # take the host out now (else it stays in until its check goes unanswered)
    ticket: str | None  # a new check to start; None while one is under way


class Suspects:
    def __init__(self, doubt_s: float, answer_within_s: float) -> None:
        self._doubt_s = doubt_s
        self._answer_within_s = answer_within_s
        self._checking: dict[HostId, tuple[str, float]] = {}  # the ticket of the check under way, since when
        self._cleared_at: dict[HostId, float] = {}  # when the host last proved a report of its loss false

    def suspect(self, host_id: HostId, now: float) -> Suspicion:
        """A report that ``host_id`` was lost: believed unless the host proved such a report false lately."""
        believed = now - self._cleared_at.get(host_id, -math.inf) >= self._doubt_s
        if host_id in self._checking:
            return Suspicion(believed, None)
        ticket = secrets.token_hex(16)  # never leaves placement's process but to the witness
        self._checking[host_id] = (ticket, now)
        return Suspicion(believed, ticket)

    def heard(self, host_id: HostId, now: float) -> bool:
        """The host reported, signed: True when that proved a report of its loss false (in time)."""
        checking = self._checking.pop(host_id, None)
        if checking is None or now - checking[1] > self._answer_within_s:
            return False
        self._cleared_at[host_id] = now
        return True

    def unanswered(self, host_id: HostId, ticket: str) -> bool:
        """The check with ``ticket`` is over: True when the host did not report meanwhile (it is lost after all).
        A ticket that is not the awaited one (forged, or a check the host already answered) is False."""
        checking = self._checking.get(host_id)
        if checking is None or ticket != checking[0]:
            return False
        del self._checking[host_id]
        self._cleared_at.pop(host_id, None)
        return True

    def forget(self, host_id: HostId) -> None:
        """The host registered again or left placement: what was said of it no longer holds."""
        self._checking.pop(host_id, None)
        self._cleared_at.pop(host_id, None)


class BridgeWitness:
    """Asks the host's agent, through the bridge, for a signed heartbeat now (``HostAgentActor.report``), in a
    thread of placement's process (placement must not wait), then tells placement through its own actor handle, so
    the answer is applied in turn with every other call."""

    def __init__(self, bridge: Path, timeout_s: float) -> None:
        self._bridge = bridge
        self._timeout_s = timeout_s

    def ask(self, host_id: HostId, ticket: str) -> None:
        import ray

        placement = ray.get_runtime_context().current_actor
        threading.Thread(target=self._ask, args=(placement, host_id, ticket), name=f"witness-{host_id}",
                         daemon=True).start()

    def _ask(self, placement: Any, host_id: HostId, ticket: str) -> None:
        from archipelag.bridge.client import BridgedAgent

        try:
            asyncio.run(asyncio.wait_for(BridgedAgent(host_id, self._bridge).report(), self._timeout_s))
        except Exception as exc:  # noqa: BLE001 - any failure is the host's silence; placement judges by heartbeats
            log.info("host %s did not report when asked: %s", host_id, type(exc).__name__)
        placement.checked.remote(host_id, ticket)
