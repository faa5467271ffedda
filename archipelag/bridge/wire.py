"""The bridge's wire: JSON lines between the coordinator's services (bridge/client.py) and the bridge
(bridge/server.py), one request per connection.

Requests, each naming its ``host``:

- ``{"op": "run", "host", …}`` with the fields of the gate's run request (``gate.wire.run_request``: job, attempt,
  workload slug, input, limits, ticket). The answer is a line per batch the host sends, ``{"batch": [event, …]}``
  (an empty one: alive, the job quiet), then one last line: ``{"end": true}`` (the host closed the stream),
  ``{"lost": why}`` (its agent is gone), ``{"cancelled": why}`` or ``{"error": {"code", "message"}}``. Closing the
  connection cancels the run.
- ``{"op": "cancel", "host", "job_id", "reason"}`` → ``{"ok": true|false}``.
- ``{"op": "control", "host", "command", "by", "reason"}`` and ``{"op": "view", "host"}`` → ``{"ok": view}``
  (``actors.driver.read_view`` reads it).
- ``{"op": "report", "host"}`` (a signed heartbeat now) and ``{"op": "kill", "host"}`` → ``{"ok": null}``.
- ``{"op": "measure", "host", "node_id", "claims"}`` → ``{"ok": measurement}``: the join benchmark, run on the
  host's node (``placement/prober.py``).

Any answer may be ``{"error": {"code", "message"}}``; a host that is not joined is ``host_lost``. Pure.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass
from typing import Any, Final

from archipelag.actors.controls import Command, Controller
from archipelag.errors import ArchipelagError, HostLost, ValidationFailed
from archipelag.gate import wire as gate_wire
from archipelag.ids import HostId, JobId
from archipelag.placement.measured import Claims, Measurement
from archipelag.runtimes.base import JobSpec

MAX_TEXT: Final = 1000  # characters of a reason or an error message
MAX_ID: Final = 200
CONTROL_OPS: Final = frozenset({"cancel", "control", "view", "report", "kill", "measure"})
encode = gate_wire.encode


@dataclass(frozen=True)
class Run:
    host: HostId
    job: gate_wire.RunRequest


@dataclass(frozen=True)
class Ask:
    """Any request but a run: ``op`` and its fields, checked."""

    op: str
    host: HostId
    job_id: JobId | None = None
    command: Command | None = None
    by: Controller | None = None
    reason: str = ""
    node_id: str = ""
    claims: Claims | None = None


def run_request(host_id: HostId, spec: JobSpec) -> bytes:
    fields = json.loads(gate_wire.run_request(spec))
    return encode({**fields, "host": host_id})


def ask(op: str, host_id: HostId, **fields: Any) -> bytes:
    return encode({"op": op, "host": host_id, **{k: str(v) for k, v in fields.items()}})


def measure_request(host_id: HostId, node_id: str, claims: Claims) -> bytes:
    return encode({"op": "measure", "host": host_id, "node_id": node_id, "claims": dataclasses.asdict(claims)})


def parse_request(line: bytes, max_bytes: int) -> Run | Ask:
    """A request, every field checked; ValidationFailed for anything else."""
    if len(line) > max_bytes:
        raise ValidationFailed(f"a bridge request is at most {max_bytes} bytes", errors={"request": "too long"})
    raw = gate_wire.json_object(line, "a bridge request")
    host = HostId(_text(raw, "host", MAX_ID))
    op = raw.get("op")
    if op == "run":
        return Run(host, gate_wire.run_of(raw))
    if op not in CONTROL_OPS:
        raise ValidationFailed(f"unknown bridge op {str(op)[:40]!r}", errors={"op": "unknown"})
    if op == "cancel":
        return Ask(op, host, job_id=JobId(_text(raw, "job_id", MAX_ID)), reason=_text(raw, "reason", MAX_TEXT))
    if op == "control":
        try:
            command, by = Command(str(raw.get("command"))), Controller(str(raw.get("by")))
        except ValueError:
            raise ValidationFailed("control names a command and who gives it", errors={"control": "invalid"}) from None
        return Ask(op, host, command=command, by=by, reason=_text(raw, "reason", MAX_TEXT, allow_empty=True))
    if op == "measure":
        claims = raw.get("claims")
        return Ask(op, host, node_id=_text(raw, "node_id", MAX_ID),
                   claims=Claims(**_fields(Claims, claims if isinstance(claims, dict) else {}, ValidationFailed)))
    return Ask(str(op), host)


def measurement(raw: Any, host_id: HostId) -> Measurement:
    """A join benchmark's answer, every field of its type; HostLost for anything else."""
    return Measurement(**_fields(Measurement, raw if isinstance(raw, dict) else {}, HostLost))


def _fields(cls: Any, raw: dict[str, Any], error: type[ArchipelagError]) -> dict[str, Any]:
    """``raw`` as ``cls``'s fields: each one there, numbers finite and ≥ 0, texts short, None where allowed."""
    fields = {f.name: str(f.type) for f in dataclasses.fields(cls)}
    if set(raw) != set(fields):
        raise error(f"a {cls.__name__.lower()} names exactly its fields")
    for name, kind in fields.items():
        value = raw[name]
        if value is None and "None" in kind:
            continue
        if "str" in kind:
            ok = isinstance(value, str) and len(value) <= MAX_ID
        else:
            ok = (isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
                  and value >= 0 and ("float" in kind or isinstance(value, int)))
        if not ok:
            raise error(f"{cls.__name__.lower()}.{name} is not a {kind}")
    return raw


def error_answer(exc: ArchipelagError) -> dict[str, Any]:
    return {"error": {"code": exc.code, "message": exc.message[:MAX_TEXT]}}


def parse_answer(line: bytes, host_id: HostId) -> dict[str, Any]:
    """One answer as an object; HostLost when it is not one (a bridge may say anything)."""
    try:
        answer = json.loads(line)
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise HostLost(f"the bridge answered what is not JSON for host {host_id}", host_id=host_id) from None
    if not isinstance(answer, dict):
        raise HostLost(f"the bridge answered what is not an object for host {host_id}", host_id=host_id)
    return answer


def raised(error: Any, host_id: HostId) -> ArchipelagError:
    """The error an ``{"error": …}`` answer stands for: its code's class, HostLost for what is not one."""
    if not isinstance(error, dict):
        return HostLost(f"the bridge failed a request for host {host_id} without saying why", host_id=host_id)
    exc = gate_wire.raised({"code": str(error.get("code"))[:MAX_ID],
                            "message": str(error.get("message", ""))[:MAX_TEXT] or "no reason given"})
    return exc if type(exc) is not ArchipelagError else HostLost(exc.message, host_id=host_id)


def _text(raw: dict[str, Any], name: str, max_chars: int, allow_empty: bool = False) -> str:
    value = raw.get(name, "" if allow_empty else None)
    if not isinstance(value, str) or len(value) > max_chars or not (value or allow_empty):
        raise ValidationFailed(f"{name} must be a string of at most {max_chars} characters", errors={name: "invalid"})
    return value
