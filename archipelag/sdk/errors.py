"""Client errors: what only a client can see, added to the one ArchipelagError tree.

The server's own errors arrive as ``{"error": …}`` bodies and are raised as the classes of
``archipelag.errors`` (see ``archipelag.sdk.wire``); these are the few a client adds.
"""

from __future__ import annotations

from typing import Any

from archipelag.errors import ArchipelagError


class Unreachable(ArchipelagError):
    """The network's API did not answer: nothing listening, a DNS failure, or a timeout."""

    code = "unreachable"
    http_status = 503


class JobFailed(ArchipelagError):
    """A job ended without a result (failed, cancelled or timed out); ``status`` and ``error`` say how."""

    code = "job_failed"
    http_status = 500

    def __init__(self, message: str, **details: Any) -> None:
        super().__init__(message, **details)
        self.job_id: str | None = details.get("job_id")
        self.status: str | None = details.get("status")
        self.error: str | None = details.get("error")


class ReceiptInvalid(ArchipelagError):
    """A job's receipt does not check out: it is missing, or does not match the job's output, usage or host key."""

    code = "receipt_invalid"
    http_status = 502


class WaitTimeout(ArchipelagError, TimeoutError):
    """A wait for a job ran past its timeout; the job itself goes on."""

    code = "wait_timeout"
    http_status = 504
