"""The gate's wire: the JSON lines between a host's Ray agent (gate/client.py) and its gate (gate/server.py).

One request per connection, each message one line of compact JSON:

- ``{"op": "run", "job_id", "attempt", "workload" (a slug), "input", "limits" (optional, may only narrow),
  "ticket" ({"body", "signature"} or null)}``. The gate answers ``{"gate": "started"}`` once the container is about to
  start, then each of the workload's events as the workload wrote it, and closes. An error the gate or its
  runtime raised is the protocol's error event (``protocol.error_event``: ``message``, ``code``) marked
  ``"gate": "error"`` with the error's ``details``; it comes instead of ``started`` when the job is refused, or
  last when the job fails. While the job runs the client may send ``{"op": "cancel", "reason"}``; closing the
  connection cancels too.
- ``{"op": "warm"}`` → ``{"gate": "warm", "warm": [slug, …]}``.
- ``{"op": "sign", "purpose", "digest"}`` → ``{"gate": "signed", "host_id", "at", "digest", "signature"}``: the
  host's signature over the SHA-256 of a report (``identity.digest``), stamped with the gate's clock, for one of
  ``identity.NODE_PURPOSES`` only (base64 signature). A job's receipt is asked for by its fields instead of a
  digest, ``"receipt": {"job_id", "attempt", "usage", "output_sha256"}``: the gate signs none for a job it ran
  itself (it signed that receipt when the job ended: the done event it sends carries it).

A workload's own events never carry the ``gate`` key (the gate drops it), so the client can tell the gate's
lines from what the workload wrote. Pure: sockets are only read and written here, never opened.
"""

from __future__ import annotations

import dataclasses
import json
import math
import select
import socket
import time
from dataclasses import dataclass
from typing import Any, Final

from archipelag import errors, identity, receipts
from archipelag.errors import ArchipelagError, PayloadTooLarge, ValidationFailed
from archipelag.gate.tickets import SignedTicket
from archipelag.identity import NODE_PURPOSES
from archipelag.ids import JobId, WorkloadSlug
from archipelag.protocol import Event, error_event
from archipelag.runtimes.base import JobSpec
from archipelag.sandbox import Limits

MARK: Final = "gate"  # the key of the gate's own lines
RECEIPT: Final = receipts.PURPOSE
STARTED: Final[Event] = {MARK: "started"}
CONTROL_BYTES: Final = 4096  # a warm or cancel request, and what a line may hold beyond a job's input
TICKET_BYTES: Final = 16 * 1024  # a run request's fields besides its input: ids, limits, the ticket
MAX_ID_CHARS: Final = 200


@dataclass(frozen=True)
class RunRequest:
    job_id: JobId
    attempt: int
    workload: WorkloadSlug
    input: dict[str, Any]
    limits: Limits | None  # the agent's, which may only narrow the ticket's
    ticket: SignedTicket | None


@dataclass(frozen=True)
class WarmRequest:
    pass


@dataclass(frozen=True)
class CancelRequest:
    reason: str


@dataclass(frozen=True)
class SignRequest:
    purpose: str
    digest: str  # sha256 hex of the report
    receipt: dict[str, Any] | None = None  # a receipt's fields (receipts.report), whose digest ``digest`` is


Request = RunRequest | WarmRequest | CancelRequest | SignRequest


def encode(message: dict[str, Any]) -> bytes:
    """One compact line; a string JSON allowed but UTF-8 cannot carry (a lone surrogate) goes escaped."""
    try:
        return json.dumps(message, separators=(",", ":"), ensure_ascii=False, default=str).encode() + b"\n"
    except UnicodeEncodeError:
        return json.dumps(message, separators=(",", ":"), default=str).encode() + b"\n"


def run_request(spec: JobSpec) -> bytes:
    ticket = dataclasses.asdict(spec.ticket) if spec.ticket is not None else None
    return encode({"op": "run", "job_id": spec.job_id, "attempt": spec.attempt, "workload": spec.workload.slug,
                   "input": spec.input, "limits": dataclasses.asdict(spec.limits), "ticket": ticket})


def cancel_request(reason: str) -> bytes:
    return encode({"op": "cancel", "reason": reason[:1000]})


def sign_request(purpose: str, report: Any) -> bytes:
    """A receipt goes as its fields (the gate checks which job it is for), any other report as its digest."""
    if purpose == RECEIPT:
        return encode({"op": "sign", "purpose": purpose, "receipt": report})
    return encode({"op": "sign", "purpose": purpose, "digest": identity.digest(report)})


def json_object(line: bytes, what: str) -> dict[str, Any]:
    """One line of JSON that is an object; ValidationFailed naming ``what`` otherwise."""
    try:
        raw = json.loads(line)
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise ValidationFailed(f"{what} is one line of JSON", errors={"request": "not JSON"}) from None
    if not isinstance(raw, dict):
        raise ValidationFailed(f"{what} is a JSON object", errors={"request": "not an object"})
    return raw


def parse_request(line: bytes) -> Request:
    """A client's request; ValidationFailed when it is not one of the ops with its fields of the right types."""
    raw = json_object(line, "a gate request")
    op = raw.get("op")
    if op == "warm":
        return WarmRequest()
    if op == "cancel":
        return CancelRequest(_text(raw, "reason", 1000, allow_empty=True))
    if op == "sign":
        purpose = _text(raw, "purpose", 40)
        if purpose not in NODE_PURPOSES:
            raise ValidationFailed(f"the gate signs only {', '.join(sorted(NODE_PURPOSES))} for the node, not "
                                   f"{purpose!r}", errors={"purpose": "not one the node may ask for"})
        if purpose == RECEIPT:
            fields = _receipt_fields(raw.get("receipt"))
            return SignRequest(purpose, identity.digest(fields), fields)
        report_digest = _text(raw, "digest", 64)
        if len(report_digest) != 64 or any(c not in "0123456789abcdef" for c in report_digest):
            raise ValidationFailed("digest is a SHA-256, 64 lowercase hex digits", errors={"digest": "invalid"})
        return SignRequest(purpose, report_digest)
    if op != "run":
        raise ValidationFailed(f"unknown gate op {str(op)[:40]!r}; expected run, warm, cancel or sign",
                               errors={"op": "unknown"})
    return run_of(raw)


def run_of(raw: dict[str, Any]) -> RunRequest:
    """A run request's fields, each of its type (a request already read as JSON)."""
    job_input = raw.get("input")
    if not isinstance(job_input, dict):
        raise ValidationFailed("a job's input is a JSON object", errors={"input": "not an object"})
    attempt = raw.get("attempt", 1)
    if isinstance(attempt, bool) or not isinstance(attempt, int) or not 1 <= attempt <= 1000:
        raise ValidationFailed("attempt is a whole number from 1", errors={"attempt": "invalid"})
    return RunRequest(JobId(_text(raw, "job_id", MAX_ID_CHARS)), attempt,
                      WorkloadSlug(_text(raw, "workload", MAX_ID_CHARS)), job_input, _limits(raw.get("limits")),
                      _ticket(raw.get("ticket")))


def _receipt_fields(raw: Any) -> dict[str, Any]:
    """A receipt's fields as ``receipts.report`` makes them, each of its type."""
    if not isinstance(raw, dict) or set(raw) != {"job_id", "attempt", "usage", "output_sha256"}:
        raise ValidationFailed("a receipt is {job_id, attempt, usage, output_sha256}", errors={"receipt": "invalid"})
    usage, attempt = raw["usage"], raw["attempt"]
    if isinstance(attempt, bool) or not isinstance(attempt, int) or not isinstance(usage, dict) or len(usage) > 16 \
            or not all(isinstance(k, str) and isinstance(v, int) and not isinstance(v, bool) for k, v in usage.items()):
        raise ValidationFailed("a receipt's attempt is a number and its usage counts", errors={"receipt": "invalid"})
    digest = _text(raw, "output_sha256", 64)
    return receipts.report(_text(raw, "job_id", MAX_ID_CHARS), attempt, usage, digest)


def _text(raw: dict[str, Any], name: str, max_chars: int, allow_empty: bool = False) -> str:
    value = raw.get(name, "" if allow_empty else None)
    if not isinstance(value, str) or len(value) > max_chars or not (value or allow_empty) \
            or not value.isprintable():
        raise ValidationFailed(f"{name} must be a printable string of at most {max_chars} characters",
                               errors={name: "invalid"})
    return value


def _limits(raw: Any) -> Limits | None:
    """Limits as the agent sent them, every field present and of its type; they only ever narrow the ticket's."""
    if raw is None:
        return None
    fields = {f.name: f.type for f in dataclasses.fields(Limits)}
    if not isinstance(raw, dict) or set(raw) != set(fields):
        raise ValidationFailed("limits must name every budget", errors={"limits": "wrong fields"})
    for name, kind in fields.items():
        value = raw[name]
        ok = isinstance(value, bool) if kind == "bool" else (
            isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value) and value >= 0
            and (kind != "int" or isinstance(value, int)))
        if not ok:
            raise ValidationFailed(f"limits.{name} must be a {kind} ≥ 0", errors={f"limits.{name}": "invalid"})
    return Limits(**raw)


def _ticket(raw: Any) -> SignedTicket | None:
    if raw is None:
        return None
    if not isinstance(raw, dict) or not isinstance(raw.get("body"), str) or not isinstance(raw.get("signature"), str):
        raise ValidationFailed("a ticket is {body, signature}, both strings", errors={"ticket": "invalid"})
    return SignedTicket(raw["body"], raw["signature"])


# --- errors across the wire ---------------------------------------------------------------------------------


def error_line(exc: ArchipelagError) -> Event:
    return {**error_event(exc.message, exc.code), MARK: "error", "details": _plain(exc.details)}


def _plain(details: dict[str, Any]) -> dict[str, Any]:
    return {str(k): v if isinstance(v, str | int | float | bool) or v is None else str(v) for k, v in details.items()}


def _by_code() -> dict[str, type[ArchipelagError]]:
    """Each code's class: the most general one that owns it (CatalogRefused shares WorkloadRefused's code)."""
    found: dict[str, type[ArchipelagError]] = {}
    todo: list[type[ArchipelagError]] = [ArchipelagError]
    while todo:
        cls = todo.pop(0)
        found.setdefault(cls.code, cls)
        todo.extend(cls.__subclasses__())
    return found


def raised(line: Event) -> ArchipelagError:
    """The error a gate's error line stands for, as the class of its code (the root class for one unknown here)."""
    cls = _by_code().get(str(line.get("code")), errors.ArchipelagError)
    details = line.get("details")
    exc = cls(str(line.get("message", "the host's gate failed the job")),
              **({k: v for k, v in details.items() if k != "message"} if isinstance(details, dict) else {}))
    if cls is errors.ArchipelagError:
        exc.code = str(line.get("code", exc.code))  # keep the code the dispatcher keys on
    return exc


# --- reading lines ------------------------------------------------------------------------------------------


class LineReader:
    """Lines from a socket, each bounded in size and waited for until a deadline (never forever unless asked).

    It waits with poll(2), not the socket's timeout: that one is left for writes (another thread may send on the
    same socket meanwhile, e.g. a cancel), so a reader and a writer never change each other's waits."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self._buffer = b""
        self._poll = select.poll()
        self._poll.register(sock.fileno(), select.POLLIN)

    def line(self, max_bytes: int, deadline: float | None) -> bytes | None:
        """The next line without its newline; None at the end of the stream (a last line without a newline
        counts). PayloadTooLarge past ``max_bytes``; TimeoutError once ``deadline`` (monotonic) passed."""
        while True:
            end = self._buffer.find(b"\n")
            if end >= 0:
                line, self._buffer = self._buffer[:end], self._buffer[end + 1:]
                if len(line) > max_bytes:
                    raise PayloadTooLarge(f"a line of {len(line)} bytes is past the {max_bytes} allowed",
                                          limit_bytes=max_bytes)
                return line
            if len(self._buffer) > max_bytes:
                raise PayloadTooLarge(f"a line is longer than the {max_bytes} bytes allowed", limit_bytes=max_bytes)
            wait_ms = None if deadline is None else max(0, math.ceil((deadline - time.monotonic()) * 1000))
            if not self._poll.poll(wait_ms):
                raise TimeoutError("no complete line before the deadline")
            try:
                chunk = self._sock.recv(min(1 << 20, max_bytes + 2 - len(self._buffer)))
            except (BlockingIOError, InterruptedError):
                continue
            if not chunk:
                rest, self._buffer = self._buffer, b""
                return rest or None
            self._buffer += chunk
