"""Protocol: the JSON-lines events a workload writes, their validation, and their API form. Pure.

A workload reads one JSON object on stdin and writes one event per line on stdout (DESIGN §4).
Events stay plain dicts on the hot path (they cross Ray and SSE many thousand times a second);
this module is the one place that knows their shape.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from typing import Any, Final

from archipelag.errors import BadReceipt, ProtocolViolation

Event = dict[str, Any]

# type → {field: (accepted python types, required)}
_NUM = (int, float)
_FIELDS: Final[dict[str, dict[str, tuple[tuple[type, ...], bool]]]] = {
    "status": {"message": ((str,), True)},
    "token": {"content": ((str,), True)},
    "progress": {"step": ((int,), True), "total": ((int,), True)},
    "image": {"data": ((str,), True), "format": ((str,), True), "width": ((int,), True), "height": ((int,), True)},
    "done": {"usage": ((dict,), False), "output": ((object,), False), "seed": ((int,), False),
             "receipt": ((dict,), False)},  # the host's signature over the job's end (receipts.py)
    "error": {"message": ((str,), True)},
}
EVENT_TYPES: Final = frozenset(_FIELDS)
FINAL_TYPES: Final = frozenset({"done", "error"})
OUTPUT_TYPES: Final = frozenset({"token", "progress", "image"})  # what the workload makes (a job is streaming)


def holds_output(events: Iterable[Any]) -> bool:
    """Whether any of ``events`` is output (``OUTPUT_TYPES``); what is not an event (a host may send anything) is
    not."""
    return any(isinstance(e, dict) and e.get("type") in OUTPUT_TYPES for e in events)


def validate(event: Any) -> Event:
    """Check one decoded event; return it unchanged or raise ProtocolViolation saying what is wrong."""
    if not isinstance(event, dict):
        raise ProtocolViolation(f"an event must be a JSON object, got {type(event).__name__}")
    kind = event.get("type")
    fields = _FIELDS.get(kind) if isinstance(kind, str) else None
    if fields is None:
        raise ProtocolViolation(f"unknown event type {kind!r}; expected one of {sorted(EVENT_TYPES)}")
    for name, (types, required) in fields.items():
        if name not in event:
            if required:
                raise ProtocolViolation(f"{kind} event is missing field {name!r}")
            continue
        value = event[name]
        if isinstance(value, bool) and bool not in types and object not in types:
            raise ProtocolViolation(f"{kind} event field {name!r} has the wrong type")
        if not isinstance(value, types):
            raise ProtocolViolation(f"{kind} event field {name!r} has the wrong type")
    if kind == "done" and "usage" in event:
        for key, value in event["usage"].items():
            if not isinstance(value, _NUM) or isinstance(value, bool):
                raise ProtocolViolation(f"done event usage.{key} must be a number")
    if kind == "done" and "receipt" in event:
        _check_receipt_field(event["receipt"])
    return event


# A done event's ``receipt``: when the host signed, the SHA-256 of the output, the Ed25519 signature (base64).
RECEIPT_FIELDS: Final = {"signed_at": _NUM, "output_sha256": (str,), "signature": (str,)}
SIGNATURE_B64_CHARS: Final = 88  # 64 bytes


def _check_receipt_field(receipt: dict[str, Any]) -> None:
    if set(receipt) != set(RECEIPT_FIELDS):
        raise ProtocolViolation(f"done event receipt must have exactly the fields {sorted(RECEIPT_FIELDS)}")
    for name, types in RECEIPT_FIELDS.items():
        value = receipt[name]
        if isinstance(value, bool) or not isinstance(value, types):
            raise ProtocolViolation(f"done event receipt.{name} has the wrong type")
    if not math.isfinite(receipt["signed_at"]):
        raise ProtocolViolation("done event receipt.signed_at must be a finite number")
    sha = receipt["output_sha256"]
    if len(sha) != 64 or not all(c in "0123456789abcdef" for c in sha):
        raise ProtocolViolation("done event receipt.output_sha256 must be 64 lower-case hex characters")
    if len(receipt["signature"]) != SIGNATURE_B64_CHARS:
        raise ProtocolViolation(f"done event receipt.signature must be {SIGNATURE_B64_CHARS} base64 characters")


# --- what a host sends -----------------------------------------------------------------------------
# A host's runtime checks its workload's output against the protocol, so an event that fails here is the host's
# doing (BadReceipt), and the coordinator checks every one: it stores them, and it charges by their usage.

MAX_JSON_INT: Final = 2**53  # the largest whole number every JSON reader keeps exact
# What an event costs beyond its field names and values: its braces and a newline. Each field's quotes, colon and
# comma come on top in JSON, so an event never counts more than the line the workload wrote for it — the line
# its host's runtime counted against the same budget.
EVENT_OVERHEAD_BYTES: Final = 3
USAGE_COUNTS: Final = ("prompt_tokens", "completion_tokens")  # what a done event's usage may say; the rest goes


def received(event: Any) -> tuple[Event, int]:
    """An event as a host sent it, checked, without the ``seq`` the coordinator numbers itself; and the bytes it
    takes stored (its field names, their values as compact JSON, strings as UTF-8 without escapes). BadReceipt
    when it is not the protocol or not plain JSON."""
    try:
        validate(event)
    except ProtocolViolation as exc:
        raise BadReceipt(f"the host sent an event outside the protocol: {exc.message}") from None
    kept = {k: v for k, v in event.items() if k != "seq"}
    size = EVENT_OVERHEAD_BYTES
    for name, value in kept.items():
        if not isinstance(name, str):
            raise BadReceipt(f"the host sent a {kept['type']} event with a field name that is not a string")
        size += len(name) + _value_bytes(kept["type"], name, value)
    return kept, size


def _value_bytes(kind: str, name: str, value: Any) -> int:
    if isinstance(value, str):
        return len(value) if value.isascii() else len(value.encode("utf-8", "surrogatepass"))
    if value is None or isinstance(value, bool):
        return 4
    if isinstance(value, int) and -MAX_JSON_INT <= value <= MAX_JSON_INT:
        return len(str(value))
    if isinstance(value, float) and math.isfinite(value):
        return len(repr(value))
    if isinstance(value, dict | list):
        try:
            return len(json.dumps(value, allow_nan=False, separators=(",", ":")))
        except (TypeError, ValueError, RecursionError):
            pass
    raise BadReceipt(f"the host sent a {kind} event whose {name!r} is not plain JSON: {_shown(value)}")


def checked_usage(usage: Any, max_completion_tokens: int | None = None,
                  max_prompt_tokens: int | None = None) -> dict[str, int]:
    """A done event's usage if it can be true of the job: each count a whole number from 0 to what the request
    allowed (``max_completion_tokens``: the ``max_tokens`` the job reserved for). Entries other than the counts
    are dropped. BadReceipt otherwise: nothing is charged on a count that cannot be."""
    if usage is None:
        return {}
    if not isinstance(usage, dict):
        raise BadReceipt(f"the host reported usage that is not an object: {_shown(usage)}")
    bounds = {"prompt_tokens": max_prompt_tokens, "completion_tokens": max_completion_tokens}
    checked: dict[str, int] = {}
    for name in USAGE_COUNTS:
        if name not in usage:
            continue
        value = usage[name]
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_JSON_INT:
            raise BadReceipt(f"the host reported usage.{name} = {_shown(value)}; a count is a whole number ≥ 0")
        bound = bounds[name]
        if bound is not None and value > bound:
            raise BadReceipt(f"the host reported usage.{name} = {value}, past the {bound} this job allowed")
        checked[name] = value
    return checked


def usage_counts(usage: Any) -> dict[str, Any]:
    """A done event's usage counts, the rest left out: what the coordinator charges by and a receipt signs."""
    if not isinstance(usage, dict):
        return {}
    return {name: usage[name] for name in USAGE_COUNTS if name in usage}


def _shown(value: Any) -> str:
    try:
        text = repr(value)
    except ValueError:  # an int of more digits than Python prints
        return f"a {type(value).__name__} too large to show"
    return text if len(text) <= 40 else f"{text[:36]}…"


def parse_line(line: str | bytes) -> Event:
    """Decode and validate one line of workload output."""
    try:
        decoded = json.loads(line)
    except (ValueError, UnicodeDecodeError):
        shown = line[:80] if isinstance(line, str) else line[:80].decode("utf-8", "replace")
        raise ProtocolViolation(f"workload wrote a line that is not valid JSON: {shown!r}") from None
    return validate(decoded)


def is_final(event: Event) -> bool:
    return event.get("type") in FINAL_TYPES


def error_event(message: str, code: str = "workload_error") -> Event:
    return {"type": "error", "message": message, "code": code}


def to_api_event(event: Event) -> Event:
    """The form API clients see on the SSE stream (DESIGN §8): image `data`→`image_data`,
    error `message`→`error`; `seq` is kept so a client can resume."""
    kind = event["type"]
    if kind == "image":
        out = {k: v for k, v in event.items() if k != "data"}
        out["image_data"] = event["data"]
        return out
    if kind == "error":
        out = {k: v for k, v in event.items() if k != "message"}
        out["error"] = event["message"]
        return out
    return event


def collect_output(events: list[Event]) -> str | None:
    """The job's `output` string: concatenated tokens for text workloads, else `done.output`
    (a string as-is, any other JSON value encoded), else the last image as JSON."""
    done = next((e for e in reversed(events) if e["type"] == "done"), None)
    if done is not None and "output" in done:
        value = done["output"]
        return value if isinstance(value, str) else json.dumps(value)
    tokens = [e["content"] for e in events if e["type"] == "token"]
    if tokens:
        return "".join(tokens)
    image = next((e for e in reversed(events) if e["type"] == "image"), None)
    if image is not None:
        payload = {"image_data": image["data"], "format": image["format"], "width": image["width"],
                   "height": image["height"], "seed": done.get("seed") if done else None}
        return json.dumps(payload)
    return None
