"""Wire: the API's envelopes and error bodies, decoded once into data or the ArchipelagError tree.

Success is ``{"data": …}`` (lists add ``"meta"``); failure is ``{"error": {"message", "code", …}}``
with the HTTP status choosing the class (DESIGN §8). httpx's transport errors become ``Unreachable``.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any, TypeVar

import httpx

from archipelag import errors
from archipelag.sdk.errors import Unreachable
from archipelag.sdk.models import Page

T = TypeVar("T")

_BY_STATUS: dict[int, type[errors.ArchipelagError]] = {
    400: errors.RequestError,
    401: errors.Unauthorized,
    402: errors.PaymentRequired,
    403: errors.Forbidden,
    404: errors.NotFound,
    409: errors.Conflict,
    422: errors.ValidationFailed,
    429: errors.RateLimited,
    503: errors.NoCapacity,
}


def _subclasses(cls: type[errors.ArchipelagError]) -> list[type[errors.ArchipelagError]]:
    found = []
    for sub in cls.__subclasses__():
        found.append(sub)
        found.extend(_subclasses(sub))
    return found


def _class_for(status: int, code: object) -> type[errors.ArchipelagError]:
    """The class whose code and status both match (e.g. 503 `host_lost` → HostLost), else by status."""
    if isinstance(code, str):
        for cls in _subclasses(errors.ArchipelagError):
            if cls.code == code and cls.http_status == status and cls.__module__ == errors.__name__:
                return cls
    if status in _BY_STATUS:
        return _BY_STATUS[status]
    return errors.RequestError if 400 <= status < 500 else errors.ArchipelagError


def _retry_after(response: httpx.Response) -> float | None:
    value = response.headers.get("Retry-After")
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None


def error_for(response: httpx.Response) -> errors.ArchipelagError:
    """The error a failed response stands for; the body must already be read."""
    status = response.status_code
    try:
        body = response.json()
    except (ValueError, UnicodeDecodeError):
        body = None
    payload = body.get("error") if isinstance(body, dict) else None
    if not isinstance(payload, dict):
        text = response.text.strip()[:200] or response.reason_phrase
        return _class_for(status, None)(f"HTTP {status} from {response.request.url}: {text}",
                                        status_code=status)
    details = {k: v for k, v in payload.items() if k not in {"message", "code"}}
    details["status_code"] = status
    if status == 429 and "retry_after" not in details:
        details["retry_after"] = _retry_after(response)
    message = str(payload.get("message") or f"HTTP {status}")
    return _class_for(status, payload.get("code"))(message, **details)


def raise_for_error(response: httpx.Response) -> None:
    if response.is_error:
        raise error_for(response)


def body_of(response: httpx.Response) -> Any:
    raise_for_error(response)
    try:
        return response.json()
    except ValueError:
        raise errors.ArchipelagError(
            f"the server at {response.request.url} answered with something that is not JSON; "
            "is the URL an Archipelag network?", status_code=response.status_code) from None


def data_of(response: httpx.Response) -> Any:
    """The ``data`` of a success envelope."""
    body = body_of(response)
    if not isinstance(body, dict) or "data" not in body:
        raise errors.ArchipelagError(f"the answer from {response.request.url} has no `data` envelope")
    return body["data"]


def created_key_of(response: httpx.Response) -> Any:
    """The ``data`` of the answer that created an API key, with the full ``key`` in it. The reference network
    sends the full key beside ``data``; it is taken from there when ``data`` does not carry it."""
    body = body_of(response)
    if not isinstance(body, dict) or not isinstance(body.get("data"), dict):
        raise errors.ArchipelagError(f"the answer from {response.request.url} has no `data` envelope")
    created = dict(body["data"])
    if created.get("key") is None and isinstance(body.get("key"), str):
        created["key"] = body["key"]
    return created


def page_of(response: httpx.Response, parse: Callable[[Any], T]) -> Page[T]:
    body = body_of(response)
    items = body.get("data") if isinstance(body, dict) else None
    if not isinstance(items, list):
        raise errors.ArchipelagError(f"the answer from {response.request.url} is not a list envelope")
    meta = body.get("meta") or {}
    return Page(items=tuple(parse(item) for item in items), total=int(meta.get("total", len(items))),
                limit=int(meta.get("limit", len(items))), offset=int(meta.get("offset", 0)))


def unreachable(exc: httpx.TransportError, base_url: str) -> errors.ArchipelagError:
    """Translate httpx's transport errors, once, into our tree."""
    if isinstance(exc, httpx.TimeoutException):
        return Unreachable(f"the network at {base_url} did not answer in time ({type(exc).__name__}); "
                           "is it overloaded, or is the timeout too short?", url=base_url)
    if isinstance(exc, httpx.ConnectError):
        return Unreachable(f"cannot reach the network at {base_url}: is `make up` running?", url=base_url)
    return Unreachable(f"the connection to {base_url} failed: {exc or type(exc).__name__}", url=base_url)


def parse_event(data: str) -> dict[str, Any]:
    """One SSE ``data:`` payload as an event dict."""
    try:
        event = json.loads(data)
    except ValueError:
        raise errors.ArchipelagError(f"the stream sent an event that is not JSON: {data[:80]!r}") from None
    if not isinstance(event, dict) or not isinstance(event.get("type"), str):
        raise errors.ArchipelagError(f"the stream sent an event without a type: {data[:80]!r}")
    return event


class Resumption:
    """A job stream that dropped before its last event is opened again with ``Last-Event-ID`` (the id of the
    last event received), so it continues where it was — across a restart of the coordinator too — for up to
    ``window_s`` without news; then ``gone`` says to stop."""

    def __init__(self, window_s: float = 90.0, pause_s: float = 0.5) -> None:
        self.window_s = window_s
        self.pause_s = pause_s
        self.last_id: str | None = None
        self._since: float | None = None

    def headers(self) -> dict[str, str]:
        headers = {"Accept": "text/event-stream"}
        if self.last_id is not None:
            headers["Last-Event-ID"] = self.last_id
        return headers

    def retry_on(self, status: int) -> bool:
        """Whether an error answer to a resumed stream is the network coming back rather than a verdict: 5xx,
        and 404 (a proxy up before its routes are)."""
        return self.last_id is not None and (status >= 500 or status == 404)

    def received(self, event_id: str) -> None:
        if event_id:
            self.last_id = event_id
        self._since = None

    def gone(self) -> bool:
        """Called when the stream dropped: True once it has been gone past the window."""
        now = time.monotonic()
        self._since = self._since or now
        return now - self._since > self.window_s
