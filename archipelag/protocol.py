"""Protocol: the JSON-lines events a workload writes, their validation, and their API form. Pure.

A workload reads one JSON object on stdin and writes one event per line on stdout (DESIGN §4).
Events stay plain dicts on the hot path (they cross Ray and SSE many thousand times a second);
this module is the one place that knows their shape.
"""

from __future__ import annotations

import json
from typing import Any, Final

from archipelag.errors import ProtocolViolation

Event = dict[str, Any]

# type → {field: (accepted python types, required)}
_NUM = (int, float)
_FIELDS: Final[dict[str, dict[str, tuple[tuple[type, ...], bool]]]] = {
    "status": {"message": ((str,), True)},
    "token": {"content": ((str,), True)},
    "progress": {"step": ((int,), True), "total": ((int,), True)},
    "image": {"data": ((str,), True), "format": ((str,), True), "width": ((int,), True), "height": ((int,), True)},
    "done": {"usage": ((dict,), False), "output": ((object,), False), "seed": ((int,), False)},
    "error": {"message": ((str,), True)},
}
EVENT_TYPES: Final = frozenset(_FIELDS)
FINAL_TYPES: Final = frozenset({"done", "error"})


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
    return event


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
