"""Requests: one API replica's count of the HTTP requests it answered, by method, route template and status —
counted by a small ASGI middleware, handed over in batches (``take``) to the jobs service, where every
replica's counts add up. Nothing per request leaves the process.

Labels stay few whatever clients send: the route is the template that matched (``/api/v1/jobs/{job_id}``, never
the path itself), a path no route matched is ``unmatched``, and a method HTTP does not define is ``other``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from starlette.routing import BaseRoute, Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from archipelag.metrics.network import RequestKey

UNMATCHED = "unmatched"
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


def route_label(scope: Scope, routes: Sequence[BaseRoute] = ()) -> str:
    """The template of the route that answered (a mount's prefix for what is mounted), else ``unmatched``. A
    request answered before routing (a body refused as too large) is matched against ``routes`` here."""
    route: Any = scope.get("route") or _matching(routes, scope)
    template = getattr(route, "path_format", None) or getattr(route, "path", None)
    return template if isinstance(template, str) and template else UNMATCHED


def _matching(routes: Sequence[BaseRoute], scope: Scope) -> BaseRoute | None:
    partial = None
    for route in routes:
        match, _ = route.matches(scope)
        if match is Match.FULL:
            return route
        if match is Match.PARTIAL and partial is None:
            partial = route
    return partial


def method_label(scope: Scope) -> str:
    method = str(scope.get("method", ""))
    return method if method in METHODS else "other"


class RequestTally:
    """Counts since the last ``take``; lives on the replica's event loop (no lock)."""

    def __init__(self) -> None:
        self._counts: dict[RequestKey, int] = {}

    def __bool__(self) -> bool:
        return bool(self._counts)

    def add(self, method: str, route: str, status: int) -> None:
        key = (method, route, str(status))
        self._counts[key] = self._counts.get(key, 0) + 1

    def take(self) -> dict[RequestKey, int]:
        """The counts so far; the tally starts again from nothing."""
        counts, self._counts = self._counts, {}
        return counts


class RequestCounter:
    """ASGI middleware: counts each HTTP request once its answer is over (a stream when it closes). An error
    that escapes the app counts as the 500 the server answers for it."""

    def __init__(self, app: ASGIApp, tally: RequestTally, routes: Sequence[BaseRoute] = (),
                 started: Callable[[], None] | None = None) -> None:
        self.app = app
        self.tally = tally
        self.routes = routes  # the app's, to name a route for what was answered before routing
        self.started = started  # told of each request (the replica's reporter keeps its loop running)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if self.started is not None:
            self.started()
        status = 500

        async def sending(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, sending)
        finally:
            self.tally.add(method_label(scope), route_label(scope, self.routes), status)
