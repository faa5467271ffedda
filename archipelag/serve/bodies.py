"""Bodies: how large and how deep a request body may be, checked before any route reads it (DESIGN §8, §10).

``BodyLimit`` is a pure ASGI middleware in front of every route, authenticated or not:

- a ``Content-Length`` past ``max_body_bytes`` is refused (413) before a byte of the body is read; a chunked
  body is counted as it arrives and refused once past the limit, the rest left unread;
- a JSON body is scanned once, at C speed, before the route parses it (FastAPI parses a body before it
  checks the caller's key): more than ``max_json_items`` values or a string longer than
  ``max_json_string_bytes`` is refused (413); nesting deeper than ``max_json_depth`` and the non-JSON number
  literals ``NaN`` and ``Infinity`` (which Python's parser would accept) are refused (422).

A body that passes is handed on whole, as one message. The refusals render in the API's error shape, and in
OpenAI's on the OpenAI-compatible routes, like every other error of those routes.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from fastapi import FastAPI
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from archipelag.errors import ArchipelagError, PayloadTooLarge, ValidationFailed
from archipelag.serve import api_openai, openai_wire
from archipelag.serve.responses import FastJSON, error_body
from archipelag.settings import Settings

_OPEN, _CLOSE = b"[", b"]"
# Every byte but the brackets goes; braces become brackets (depth does not care which kind).
_BRACKETS = bytes.maketrans(b"{}", b"[]")
_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")


@dataclass(frozen=True)
class BodyLimits:
    max_body_bytes: int
    max_json_depth: int
    max_json_string_bytes: int
    max_json_items: int

    @classmethod
    def of(cls, settings: Settings) -> BodyLimits:
        return cls(settings.max_body_bytes, settings.max_json_depth, settings.max_json_string_bytes,
                   settings.max_json_items)


def too_large(limits: BodyLimits) -> PayloadTooLarge:
    return PayloadTooLarge(f"the request body is larger than {limits.max_body_bytes} bytes; send less",
                           limit_bytes=limits.max_body_bytes)


def _too_many(count: int, limits: BodyLimits) -> PayloadTooLarge:
    return PayloadTooLarge(f"the request body holds {count} JSON values or more; at most {limits.max_json_items}",
                           limit_items=limits.max_json_items)


def check_json(body: bytes, limits: BodyLimits) -> None:
    """Refuse a JSON body with too many values, a string too long, nesting too deep, or ``NaN`` / ``Infinity``.
    Malformed JSON passes: the route's parser says what is wrong with it.

    Every step is a bytes method (C speed, a few ms for 8 MiB), and the ones whose cost grows with the number of
    values run only once that number is known to be bounded: parsing 8 MiB of ``[]`` takes Python's parser
    seconds, this refuses it in milliseconds."""
    if body.lstrip()[:1] not in (b"{", b"["):
        return
    # With escaped backslashes and quotes masked, every quote left opens or closes a string: the odd parts of
    # a split on quotes are the strings, the even ones everything else.
    masked = body.replace(b"\\\\", b"__").replace(b'\\"', b"__")
    quotes = masked.count(b'"')
    if quotes % 2:
        return  # a string never closes: not JSON
    if quotes // 2 > limits.max_json_items:
        raise _too_many(quotes // 2, limits)
    parts = masked.split(b'"')
    if len(body) > limits.max_json_string_bytes:
        longest = max(map(len, parts[1::2]), default=0)
        if longest > limits.max_json_string_bytes:
            raise PayloadTooLarge(f"a string in the request body is {longest} bytes long; at most "
                                  f"{limits.max_json_string_bytes} bytes each", limit_bytes=limits.max_json_string_bytes)
    bare = b"".join(parts[0::2])
    brackets = bare.translate(_BRACKETS, _NOT_BRACKETS)
    values = bare.count(b",") + len(brackets) // 2 + 1  # commas part values; each container is one too
    if values > limits.max_json_items:
        raise _too_many(values, limits)
    if b"NaN" in bare or b"Infinity" in bare:
        raise ValidationFailed("the request body holds NaN or Infinity, which are not JSON numbers",
                               errors={"body": "NaN and Infinity are not JSON numbers"})
    if _nesting_exceeds(brackets, limits.max_json_depth):
        raise ValidationFailed(f"the request body is nested deeper than {limits.max_json_depth} levels",
                               errors={"body": f"nested deeper than {limits.max_json_depth} levels"})


def _nesting_exceeds(brackets: bytes, depth: int) -> bool:
    """Whether ``brackets`` (a JSON text's brackets outside strings, braces made brackets) nest deeper than
    ``depth``. Each pass takes away the innermost pairs, one level; what is still paired after ``depth`` passes
    is deeper. ``brackets`` is bounded by ``max_json_items``, so the passes are."""
    if brackets.count(_OPEN) <= depth:
        return False
    if _OPEN * (depth + 1) in brackets:
        return True
    for _ in range(depth):
        shorter = brackets.replace(b"[]", b"")
        if len(shorter) == len(brackets):
            return False  # nothing paired is left (unbalanced leftovers are the parser's to report)
        brackets = shorter
    return b"[]" in brackets


def _declared_length(scope: Scope) -> int | None:
    for name, value in scope.get("headers", ()):
        if name == b"content-length":
            return int(value) if value.isdigit() else None
    return None


class _Gone(Exception):
    """The client went away before its body was whole."""


class BodyLimit:
    """The middleware; ``openai_path`` tells which paths answer errors in OpenAI's shape."""

    def __init__(self, app: ASGIApp, limits: BodyLimits, openai_path: Callable[[str], bool]) -> None:
        self.app = app
        self.limits = limits
        self.openai_path = openai_path

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        try:
            body = await self._read(scope, receive)
            check_json(body, self.limits)
        except _Gone:
            return
        except (PayloadTooLarge, ValidationFailed) as exc:
            await self._refuse(exc, scope, receive, send)
            return
        await self.app(scope, _replaying(body, receive), send)

    async def _read(self, scope: Scope, receive: Receive) -> bytes:
        declared = _declared_length(scope)
        if declared is not None and declared > self.limits.max_body_bytes:
            raise too_large(self.limits)
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise _Gone
            chunk: bytes = message.get("body", b"")
            size += len(chunk)
            if size > self.limits.max_body_bytes:
                raise too_large(self.limits)
            chunks.append(chunk)
            if not message.get("more_body", False):
                return chunks[0] if len(chunks) == 1 else b"".join(chunks)

    async def _refuse(self, exc: ArchipelagError, scope: Scope, receive: Receive, send: Send) -> None:
        if self.openai_path(scope.get("path", "")):
            response = openai_wire.error_response(exc)
        else:
            response = FastJSON(error_body(exc.message, exc.code, **exc.details), status_code=exc.http_status)
        if exc.http_status == 413:
            response.headers["Connection"] = "close"  # the rest of the body is not read
        await response(scope, receive, send)


def install_body_limits(app: FastAPI, settings: Settings) -> None:
    """Put ``BodyLimit`` in front of every route of ``app``."""
    app.add_middleware(BodyLimit, limits=BodyLimits.of(settings), openai_path=api_openai.is_openai_path)


def _replaying(body: bytes, receive: Receive) -> Receive:
    """A ``receive`` that hands the route the body read already, then passes on what the server says next (a
    disconnect)."""
    pending: list[Message] = [{"type": "http.request", "body": body, "more_body": False}]

    async def replay() -> Message:
        return pending.pop() if pending else await receive()

    return replay
