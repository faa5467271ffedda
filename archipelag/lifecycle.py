"""Lifecycle: job and host states, their transition tables, and the public status names. Pure."""

from __future__ import annotations

from enum import StrEnum


class JobStatus(StrEnum):
    SUBMITTED = "submitted"  # accepted over the API, credits reserved, not yet handed to placement
    QUEUED = "queued"  # waiting for a host (first try, or again after its host was lost)
    ASSIGNED = "assigned"  # placement chose a host; the host has not started it yet
    STARTED = "started"  # the host's runtime is running it
    STREAMING = "streaming"  # output events are flowing back
    SUCCEEDED = "succeeded"  # ended with a `done` event
    FAILED = "failed"  # ended with an error: workload, host refusal, or attempts exhausted
    CANCELLED = "cancelled"  # the user cancelled it
    TIMED_OUT = "timed_out"  # ran past its wall-clock budget


TERMINAL_JOB_STATES: frozenset[JobStatus] = frozenset(
    {JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED, JobStatus.TIMED_OUT}
)

_ENDINGS = {JobStatus.FAILED, JobStatus.CANCELLED}
_RUNNING_ENDINGS = {JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED, JobStatus.TIMED_OUT}

JOB_TRANSITIONS: dict[JobStatus, frozenset[JobStatus]] = {
    JobStatus.SUBMITTED: frozenset({JobStatus.QUEUED, *_ENDINGS}),
    JobStatus.QUEUED: frozenset({JobStatus.ASSIGNED, *_ENDINGS}),
    # A lost host sends assigned/started/streaming back to queued (attempt + 1).
    JobStatus.ASSIGNED: frozenset({JobStatus.STARTED, JobStatus.QUEUED, *_RUNNING_ENDINGS}),
    JobStatus.STARTED: frozenset({JobStatus.STREAMING, JobStatus.QUEUED, *_RUNNING_ENDINGS}),
    JobStatus.STREAMING: frozenset({JobStatus.QUEUED, *_RUNNING_ENDINGS}),
    JobStatus.SUCCEEDED: frozenset(),
    JobStatus.FAILED: frozenset(),
    JobStatus.CANCELLED: frozenset(),
    JobStatus.TIMED_OUT: frozenset(),
}


def can_move(source: JobStatus, target: JobStatus) -> bool:
    return target in JOB_TRANSITIONS[source]


def sources_of(target: JobStatus) -> frozenset[JobStatus]:
    """Every state from which ``target`` may be entered (the guarded update's IN list)."""
    return frozenset(s for s, targets in JOB_TRANSITIONS.items() if target in targets)


PUBLIC_JOB_STATUS: dict[JobStatus, str] = {
    JobStatus.SUBMITTED: "pending",
    JobStatus.QUEUED: "queued",
    JobStatus.ASSIGNED: "running",
    JobStatus.STARTED: "running",
    JobStatus.STREAMING: "running",
    JobStatus.SUCCEEDED: "completed",
    JobStatus.FAILED: "failed",
    JobStatus.CANCELLED: "cancelled",
    JobStatus.TIMED_OUT: "timeout",
}


def public_status(status: JobStatus) -> str:
    return PUBLIC_JOB_STATUS[status]


class HostStatus(StrEnum):
    JOINING = "joining"  # ray node started, agent not yet reporting
    ONLINE = "online"  # heartbeating and taking jobs
    PAUSED = "paused"  # heartbeating, owner paused it: no new jobs
    DRAINING = "draining"  # finishing its jobs, then leaving
    OFFLINE = "offline"  # missed heartbeats or left
    SUSPENDED = "suspended"  # set by karma or an operator: no jobs


HOST_TRANSITIONS: dict[HostStatus, frozenset[HostStatus]] = {
    HostStatus.JOINING: frozenset({HostStatus.ONLINE, HostStatus.OFFLINE, HostStatus.SUSPENDED}),
    HostStatus.ONLINE: frozenset(
        {HostStatus.PAUSED, HostStatus.DRAINING, HostStatus.OFFLINE, HostStatus.SUSPENDED}
    ),
    HostStatus.PAUSED: frozenset({HostStatus.ONLINE, HostStatus.DRAINING, HostStatus.OFFLINE, HostStatus.SUSPENDED}),
    HostStatus.DRAINING: frozenset({HostStatus.OFFLINE, HostStatus.SUSPENDED}),
    # A host that comes back after being marked offline rejoins.
    HostStatus.OFFLINE: frozenset({HostStatus.JOINING, HostStatus.ONLINE, HostStatus.SUSPENDED}),
    HostStatus.SUSPENDED: frozenset({HostStatus.OFFLINE, HostStatus.ONLINE}),
}


def host_can_move(source: HostStatus, target: HostStatus) -> bool:
    return target in HOST_TRANSITIONS[source]
