"""Host controls: what the owner of a lent machine (or an admin) may tell it — pause, resume, drain, leave — and
what it shares. The rules here are pure; ``HostControls`` applies them from the host's `host join` process.

Who holds what:
- The host's agent holds its control state (``ControlState``): it refuses new jobs while paused or draining and
  reports the state to placement, so one owner decides and placement follows (DESIGN §3 host states).
- The `host join` process holds what only the machine knows: the owner's schedule (local hours), a leave's
  deadline, and the decision to leave once a drain has emptied the host. It polls the agent (``tick``).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime
from enum import StrEnum
from typing import Any, Protocol

from archipelag.actors.hardware import Hardware
from archipelag.actors.schedule import Schedule
from archipelag.catalog import Manifest
from archipelag.errors import ArchipelagError, Conflict, HostLost, ValidationFailed
from archipelag.ids import HostId, JobId
from archipelag.lifecycle import HostStatus
from archipelag.placement.scoring import accepts

log = logging.getLogger(__name__)

MAX_LEAVE_TIMEOUT_S = 7 * 24 * 3600.0


class Command(StrEnum):
    PAUSE = "pause"  # no new jobs; running ones continue
    RESUME = "resume"  # take jobs again
    DRAIN = "drain"  # no new jobs; running ones finish; then the host leaves
    LEAVE = "leave"  # drain, but leave after a deadline even if jobs still run (they fail over)
    STATUS = "status"  # change nothing; say where the host stands


class Controller(StrEnum):
    OWNER = "owner"  # on the host's machine, through its control socket
    ADMIN = "admin"  # through the API
    SCHEDULE = "schedule"  # the owner's hours, applied by `host join`


@dataclass(frozen=True)
class ControlState:
    """Whether a host takes new jobs, who decided, and why (said by `host status` and the admin API)."""

    status: HostStatus  # ONLINE, PAUSED or DRAINING
    by: Controller | None = None
    reason: str = ""
    since: float = 0.0  # epoch seconds

    def as_dict(self) -> dict[str, Any]:
        return {"status": str(self.status), "by": None if self.by is None else str(self.by),
                "reason": self.reason, "since": self.since}


ONLINE = ControlState(HostStatus.ONLINE)


def next_state(current: ControlState, command: Command, by: Controller, reason: str, now: float) -> ControlState:
    """The state after ``command``; Conflict when the host cannot go there (a draining host only leaves)."""
    if command == Command.STATUS:
        return current
    if current.status == HostStatus.DRAINING:
        if command in (Command.DRAIN, Command.LEAVE):
            return current
        raise Conflict(f"the host is draining ({current.reason}); it takes no more jobs and leaves when its "
                       "running ones finish. Join it again to take work", status=str(current.status))
    if command == Command.PAUSE:
        since = current.since if current.status == HostStatus.PAUSED else now
        return ControlState(HostStatus.PAUSED, by, reason or f"paused by its {by}", since)
    if command == Command.RESUME:
        return current if current.status == HostStatus.ONLINE else ControlState(HostStatus.ONLINE, None, "", now)
    return ControlState(HostStatus.DRAINING, by, reason or f"draining, asked by its {by}", now)


@dataclass(frozen=True)
class ShareLimits:
    """What the owner lends: checked by the host's agent on every job, whatever placement decided."""

    ram_mb: int
    vram_mb: int  # 0: no GPU lent
    gpu: bool
    accepts: tuple[str, ...]  # fnmatch patterns of workload slugs; empty: all

    def as_dict(self) -> dict[str, Any]:
        return {"ram_mb": self.ram_mb, "gpu": self.gpu, "gpu_memory_mb": self.vram_mb,
                "accepts": list(self.accepts) or ["*"]}


def lent(hardware: Hardware, max_gpu_memory_mb: int | None = None, no_gpu: bool = False) -> Hardware:
    """What the owner lends of a machine's GPU (``--no-gpu``, ``--max-gpu-memory-mb``); only ever lower. A GPU
    not lent is not reported at all: placement sends it no GPU job and its containers get no GPU device."""
    if no_gpu or hardware.gpu_model is None or max_gpu_memory_mb == 0:
        return replace(hardware, gpu_model=None, gpu_vram_mb=0)
    if max_gpu_memory_mb is None:
        return hardware
    return replace(hardware, gpu_vram_mb=min(hardware.gpu_vram_mb, max_gpu_memory_mb))


def share_of(hardware: Hardware, patterns: tuple[str, ...]) -> ShareLimits:
    return ShareLimits(hardware.ram_mb, hardware.gpu_vram_mb, hardware.gpu_model is not None, patterns)


def declines(share: ShareLimits, workload: Manifest) -> str | None:
    """Why a host lending ``share`` turns ``workload`` away; None when it takes it."""
    if not accepts(share.accepts, workload.slug):
        return f"its owner accepts only {', '.join(share.accepts)}, not {workload.slug}"
    if workload.required_ram_mb > share.ram_mb:
        return f"{workload.slug} needs {workload.required_ram_mb} MB of RAM; its owner lends {share.ram_mb} MB"
    if workload.requires_gpu and not share.gpu:
        return f"{workload.slug} needs a GPU; its owner lends none"
    if workload.required_vram_mb > share.vram_mb:
        return f"{workload.slug} needs {workload.required_vram_mb} MB of GPU memory; its owner lends {share.vram_mb} MB"
    return None


@dataclass(frozen=True)
class AgentView:
    """The agent's answer to the join process: its control state and the jobs running on it."""

    state: ControlState
    running: tuple[JobId, ...]


class ControlledAgent(Protocol):
    """What ``HostControls`` needs of the host's agent (``HostAgentClient``)."""

    def control(self, command: Command, by: Controller, reason: str) -> AgentView: ...
    def view(self) -> AgentView: ...


@dataclass
class HostControls:
    """The owner's controls, served by `host join` (control socket, Ctrl-C, schedule). ``agent`` is looked up at
    each use: the host's agent is a new one after the host rejoined its coordinator."""

    host_id: HostId
    agent: Callable[[], ControlledAgent]
    info: Mapping[str, Any]  # coordinator, limits: shown by `host status`
    drain_timeout_s: float
    schedule: Schedule | None = None
    clock: Callable[[], float] = time.time
    local_now: Callable[[], datetime] = datetime.now
    _deadline: float | None = None
    _last_warning: str = ""
    _last: AgentView = field(default_factory=lambda: AgentView(ONLINE, ()))
    _lock: threading.RLock = field(default_factory=threading.RLock)

    # --- requests from the owner ------------------------------------------------------------------

    def handle(self, request: Mapping[str, Any]) -> dict[str, Any]:
        """One control request (``{"command": …, "timeout_s"?: …}``); the host's status after it."""
        command, timeout_s = parse_request(request)
        with self._lock:
            if command == Command.RESUME and self._closed_now():
                assert self.schedule is not None
                raise Conflict(f"outside its schedule ({self.schedule}): it takes work again at "
                               f"{self._next_change()}", status=str(self._last.state.status))
            if command == Command.LEAVE:
                self.leave(self.drain_timeout_s if timeout_s is None else timeout_s)
            elif command == Command.DRAIN:
                self._apply(Command.DRAIN, Controller.OWNER, "draining: leaves when its running jobs finish")
            elif command != Command.STATUS:
                self._apply(command, Controller.OWNER, "")
            else:
                self._refresh()
            return self.status()

    def leave(self, timeout_s: float) -> None:
        """Drain, then leave at the latest ``timeout_s`` from now (Ctrl-C on `host join`, `host leave`)."""
        with self._lock:
            deadline = self.clock() + timeout_s
            self._deadline = deadline if self._deadline is None else min(self._deadline, deadline)
            self._apply(Command.LEAVE, Controller.OWNER,
                        f"leaving: running jobs have until {_local(self._deadline)} to finish")

    def status(self) -> dict[str, Any]:
        with self._lock:
            view = self._last
            return {
                "host_id": self.host_id, **view.state.as_dict(), "running_jobs": list(view.running),
                "schedule": None if self.schedule is None else str(self.schedule),
                "schedule_open": None if self.schedule is None else not self._closed_now(),
                "leaves_by": None if self._deadline is None else _local(self._deadline), **self.info,
            }

    # --- the join process's loop --------------------------------------------------------------------

    def tick(self) -> bool:
        """Apply the schedule; True when the host should leave now (its drain is done or past its deadline)."""
        with self._lock:
            try:
                view = self._refresh()
                if self.schedule is not None:
                    view = self._follow_schedule(view)
            except HostLost:
                return False  # the node is gone; `stay` rejoins and then ``restore``s
            except ArchipelagError as exc:  # e.g. placement refuses to pause a suspended host: say so once
                if exc.message != self._last_warning:
                    log.warning("host %s: the schedule could not be applied: %s", self.host_id, exc.message)
                    self._last_warning = exc.message
                view = self._last
            if view.state.status != HostStatus.DRAINING:
                return False
            if not view.running:
                return True
            return self._deadline is not None and self.clock() >= self._deadline

    def restore(self) -> None:
        """After a rejoin the agent is new (online): give it the state the old one had."""
        with self._lock:
            state = self._last.state
            if state.status == HostStatus.ONLINE or state.by is None:
                return
            command = Command.PAUSE if state.status == HostStatus.PAUSED else Command.DRAIN
            try:
                self._last = self.agent().control(command, state.by, state.reason)
            except ArchipelagError as exc:
                log.warning("host %s: could not restore its %s state: %s", self.host_id, state.status, exc.message)

    def _follow_schedule(self, view: AgentView) -> AgentView:
        assert self.schedule is not None
        state = view.state
        if self._closed_now() and state.status == HostStatus.ONLINE:
            return self._apply(Command.PAUSE, Controller.SCHEDULE,
                               f"outside its schedule ({self.schedule}); takes work again at {self._next_change()}")
        if not self._closed_now() and state.status == HostStatus.PAUSED and state.by == Controller.SCHEDULE:
            return self._apply(Command.RESUME, Controller.SCHEDULE, "")
        return view

    def _apply(self, command: Command, by: Controller, reason: str) -> AgentView:
        self._last = self.agent().control(command, by, reason)
        return self._last

    def _refresh(self) -> AgentView:
        self._last = self.agent().view()
        return self._last

    def _closed_now(self) -> bool:
        return self.schedule is not None and not self.schedule.open_at(self.local_now())

    def _next_change(self) -> str:
        assert self.schedule is not None
        return self.schedule.next_change(self.local_now()).strftime("%H:%M")


def parse_request(request: Mapping[str, Any]) -> tuple[Command, float | None]:
    """A control request's command and leave timeout; ValidationFailed that says what is wrong."""
    if not isinstance(request, Mapping):
        raise ValidationFailed("a control request is a JSON object", errors={"request": "not an object"})
    extra = set(request) - {"command", "timeout_s"}
    if extra:
        raise ValidationFailed(f"unknown fields {sorted(extra)}", errors={k: "unknown field" for k in sorted(extra)})
    try:
        command = Command(str(request.get("command")))
    except ValueError:
        raise ValidationFailed(f"command must be one of {', '.join(c.value for c in Command)}",
                               errors={"command": "unknown command"}) from None
    timeout_s = request.get("timeout_s")
    if timeout_s is None:
        return command, None
    if command != Command.LEAVE or isinstance(timeout_s, bool) or not isinstance(timeout_s, (int, float)) \
            or not 0 <= timeout_s <= MAX_LEAVE_TIMEOUT_S:
        raise ValidationFailed(f"timeout_s is seconds from 0 to {MAX_LEAVE_TIMEOUT_S:.0f}, for leave only",
                               errors={"timeout_s": "not a leave timeout"})
    return command, float(timeout_s)


def _local(epoch_s: float) -> str:
    return datetime.fromtimestamp(epoch_s).strftime("%H:%M:%S")
