"""Errors: the one ArchipelagError tree, each class with a stable code and an HTTP status.

Constructors take primitives only, so an error survives pickling through ``ray.get``.
Library errors are translated into this tree in the module that talks to the library.
"""

from __future__ import annotations

from typing import Any


class ArchipelagError(Exception):
    """Root of every error Archipelag raises on purpose."""

    code = "internal_error"
    http_status = 500

    def __init__(self, message: str, **details: Any) -> None:
        super().__init__(message)
        self.message = message
        self.details = details

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild, (type(self), self.message, self.details))

    def to_dict(self) -> dict[str, Any]:
        return {"message": self.message, "code": self.code, **self.details}


def _rebuild(cls: type[ArchipelagError], message: str, details: dict[str, Any]) -> ArchipelagError:
    return cls(message, **details)


# --- request errors (4xx) -------------------------------------------------------------------------


class RequestError(ArchipelagError):
    code = "bad_request"
    http_status = 400


class ValidationFailed(RequestError):
    """The request's shape or values are wrong; ``errors`` maps field → message."""

    code = "validation_error"
    http_status = 422


class Unauthorized(RequestError):
    code = "unauthorized"
    http_status = 401


class PaymentRequired(RequestError):
    code = "insufficient_credits"
    http_status = 402


class Forbidden(RequestError):
    code = "forbidden"
    http_status = 403


class HostRefused(Forbidden):
    """A host placement or enrolment will not believe: unknown, unapproved or revoked, a bad signature, a stale
    or replayed report."""

    code = "host_refused"


class AccountSuspended(Forbidden):
    code = "account_suspended"


class EmailUnverified(Forbidden):
    code = "email_unverified"


class CsrfFailed(Forbidden):
    code = "csrf_failed"


class SignupClosed(Forbidden):
    code = "signup_closed"


class NotFound(RequestError):
    code = "not_found"
    http_status = 404


class Conflict(RequestError):
    code = "conflict"
    http_status = 409


class RateLimited(RequestError):
    code = "rate_limited"
    http_status = 429


class PayloadTooLarge(RequestError):
    """The request body, one string in it, or a job's input is larger than this network accepts."""

    code = "payload_too_large"
    http_status = 413


# --- capacity (503) -------------------------------------------------------------------------------


class NoCapacity(ArchipelagError):
    """No online host can take this job now."""

    code = "no_capacity"
    http_status = 503


class HostBusy(ArchipelagError):
    """This host cannot take the job now (no free slot, no memory for another model): try the next host."""

    code = "host_busy"
    http_status = 503


# --- workloads, hosts, ledger ---------------------------------------------------------------------


class WorkloadError(ArchipelagError):
    """The workload itself misbehaved: bad output, a budget exceeded, a crash."""

    code = "workload_error"
    http_status = 500


class WorkloadRefused(WorkloadError):
    """The host refused to run the artifact (hash or signature mismatch, unknown artifact)."""

    code = "workload_refused"


class TicketRefused(WorkloadError):
    """A host's gate refused to start a container: no ticket, or one the coordinator did not sign for this job,
    this host and this input, an expired one, or one used before (gate/tickets.py)."""

    code = "ticket_refused"


class BudgetExceeded(WorkloadError):
    """The workload ran past its fuel, time, memory or output budget."""

    code = "budget_exceeded"


class ProtocolViolation(WorkloadError):
    """The workload wrote output that is not the JSON-lines event protocol."""

    code = "protocol_violation"


class RuntimeUnavailable(ArchipelagError):
    """The host cannot run this kind of workload now (e.g. its Docker engine does not answer)."""

    code = "runtime_unavailable"
    http_status = 503


class JobCancelled(ArchipelagError):
    code = "cancelled"
    http_status = 409


class HostLost(ArchipelagError):
    """The host running a job vanished (node died, actor unreachable)."""

    code = "host_lost"
    http_status = 503


class BridgeDown(HostLost):
    """No host could be reached: the coordinator's bridge (archipelag/bridge/) is down or starting again. Not the
    host's doing: its job runs again once the bridge is back, with no karma lost and nothing said to readers."""


class BadReceipt(ArchipelagError):
    """A host reported what cannot be true of a job it ran: an event outside the protocol, usage that is no
    count or past what the request allowed, more output than its ticket's budget. The job fails for the host:
    the user is refunded and the host pays in karma."""

    code = "bad_receipt"
    http_status = 502


class LedgerError(ArchipelagError):
    code = "ledger_error"
    http_status = 500


class InvalidTransition(LedgerError):
    """A state move the lifecycle table forbids, or one another writer won first."""

    code = "invalid_transition"
    http_status = 409


class ConfigError(ArchipelagError):
    code = "config_error"


class WorkloadTimedOut(BudgetExceeded):
    """The workload ran past its wall-clock budget (the job ends `timed_out`)."""

    code = "timed_out"
