"""Wire-level behaviour through an injected transport: SSE framing, error bodies, odd servers."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import pytest

from archipelag import errors
from archipelag.sdk import AsyncClient, Client, Unreachable

EVENTS: list[dict[str, Any]] = [
    {"type": "status", "message": "loading model", "seq": 0},
    {"type": "token", "content": "héllo ✓", "seq": 1},
    {"type": "progress", "step": 1, "total": 2, "seq": 2},
    {"type": "image", "image_data": "AAAA", "format": "png", "width": 8, "height": 8, "seq": 3},
    {"type": "done", "usage": {"prompt_tokens": 1, "completion_tokens": 2}, "output": {"a": 1}, "seq": 4},
]


def sse_bytes(events: list[dict[str, Any]], newline: bytes = b"\n") -> bytes:
    body = b": keep-alive" + newline + newline
    for event in events:
        body += b"event: message" + newline + b"data: " + json.dumps(event).encode() + newline + newline
    return body


def chunks(body: bytes, size: int) -> list[bytes]:
    return [body[i:i + size] for i in range(0, len(body), size)]


def sse_transport(parts: list[bytes], seen: list[httpx.Request] | None = None,
                  content_type: str = "text/event-stream") -> httpx.MockTransport:
    def handler(request: httpx.Request) -> httpx.Response:
        if seen is not None:
            seen.append(request)
        return httpx.Response(200, headers={"content-type": content_type}, content=iter(parts))
    return httpx.MockTransport(handler)


def answering(status: int, body: Any, headers: dict[str, str] | None = None) -> httpx.MockTransport:
    def handler(request: httpx.Request) -> httpx.Response:
        if isinstance(body, str):
            return httpx.Response(status, text=body, headers=headers)
        return httpx.Response(status, json=body, headers=headers)
    return httpx.MockTransport(handler)


@pytest.mark.parametrize("size", [1, 2, 7, 64, 100_000])
@pytest.mark.parametrize("newline", [b"\n", b"\r\n"])
def test_events_split_across_chunks_parse_whole(size: int, newline: bytes) -> None:
    parts = chunks(sse_bytes(EVENTS, newline), size)
    with Client(transport=sse_transport(parts)) as client:
        assert list(client.stream("j1")) == EVENTS


def test_stream_stops_at_the_final_event_even_if_more_bytes_follow() -> None:
    after = [{"type": "token", "content": "never", "seq": 9}]
    parts = chunks(sse_bytes(EVENTS[:2] + [{"type": "error", "error": "boom", "seq": 2}] + after), 5)
    with Client(transport=sse_transport(parts)) as client:
        events = list(client.stream("j1"))
    assert events[-1]["type"] == "error" and len(events) == 3


def test_a_stream_cut_before_its_final_event_is_an_error() -> None:
    with Client(transport=sse_transport([sse_bytes(EVENTS[:2])])) as client:
        stream = client.stream("j1")
        assert next(stream)["type"] == "status"
        with pytest.raises(Unreachable, match="closed before its last event"):
            list(stream)


def test_a_stream_that_is_not_sse_is_a_clear_error() -> None:
    with (
        Client(transport=sse_transport([b"<html>"], content_type="text/html")) as client,
        pytest.raises(errors.ArchipelagError, match="not answer with an event stream"),
    ):
        list(client.stream("j1"))


def test_transport_is_injectable_and_sends_the_key_and_path() -> None:
    seen: list[httpx.Request] = []
    transport = sse_transport([sse_bytes(EVENTS)], seen)
    with Client("http://net.example/", api_key="ak_x", transport=transport) as c:
        list(c.stream("j7"))
    assert str(seen[0].url) == "http://net.example/api/v1/jobs/j7/stream"
    assert seen[0].headers["Authorization"] == "Bearer ak_x"
    assert seen[0].headers["Accept"] == "text/event-stream"


@pytest.mark.parametrize(("status", "code", "expected"), [
    (400, "bad_request", errors.RequestError),
    (401, "unauthorized", errors.Unauthorized),
    (402, "insufficient_credits", errors.PaymentRequired),
    (403, "forbidden", errors.Forbidden),
    (404, "not_found", errors.NotFound),
    (409, "conflict", errors.Conflict),
    (422, "validation_error", errors.ValidationFailed),
    (429, "rate_limited", errors.RateLimited),
    (503, "no_capacity", errors.NoCapacity),
    (503, "host_lost", errors.HostLost),
    (500, "internal_error", errors.ArchipelagError),
    (418, "teapot", errors.RequestError),
])
def test_each_error_status_maps_to_its_class(status: int, code: str, expected: type[Exception]) -> None:
    body = {"error": {"message": "it went wrong", "code": code, "errors": {"input.prompt": "required"}}}
    with (
        Client(transport=answering(status, body, {"Retry-After": "3"})) as client,
        pytest.raises(expected) as caught,
    ):
        client.get_job("j1")
    assert type(caught.value) is expected
    assert caught.value.message == "it went wrong"  # type: ignore[attr-defined]
    assert caught.value.details["errors"] == {"input.prompt": "required"}  # type: ignore[attr-defined]
    if status == 429:
        assert caught.value.details["retry_after"] == 3.0  # type: ignore[attr-defined]


def test_an_error_without_our_envelope_still_says_what_happened() -> None:
    with (
        Client(transport=answering(502, "<html>Bad Gateway</html>")) as client,
        pytest.raises(errors.ArchipelagError, match="HTTP 502 from .*Bad Gateway"),
    ):
        client.account()


def test_a_success_without_the_data_envelope_is_an_error() -> None:
    with (
        Client(transport=answering(200, {"id": 1})) as client,
        pytest.raises(errors.ArchipelagError, match="no `data` envelope"),
    ):
        client.account()


def test_a_timeout_is_unreachable_with_a_hint() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise httpx.ReadTimeout("slow", request=request)
    with (
        Client(transport=httpx.MockTransport(handler)) as client,
        pytest.raises(Unreachable, match="did not answer in time"),
    ):
        client.health()


# --- the async twin over the same wire --------------------------------------------------------------


def async_sse_transport(parts: list[bytes]) -> httpx.MockTransport:
    async def body() -> AsyncIterator[bytes]:
        for part in parts:
            yield part

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, headers={"content-type": "text/event-stream"}, content=body())
    return httpx.MockTransport(handler)


def run(make: Callable[[], Any]) -> Any:
    return asyncio.run(make())


def test_async_stream_parses_split_chunks() -> None:
    async def scenario() -> list[dict[str, Any]]:
        async with AsyncClient(transport=async_sse_transport(chunks(sse_bytes(EVENTS), 3))) as client:
            return [event async for event in client.stream("j1")]
    assert run(scenario) == EVENTS


def test_async_errors_map_the_same_way() -> None:
    body = {"error": {"message": "nope", "code": "forbidden"}}

    async def scenario() -> None:
        async with AsyncClient(transport=answering(403, body)) as client:
            await client.account()
    with pytest.raises(errors.Forbidden):
        run(scenario)


def test_a_created_key_given_beside_data_is_read_from_there() -> None:
    created = {"id": "7", "name": "ci", "prefix": "ak_x", "created_at": "2025-01-01T00:00:00+00:00"}
    with Client(transport=answering(201, {"data": created, "key": "ak_xsecret"})) as client:
        key = client.create_api_key("ci")
    assert (key.id, key.key) == ("7", "ak_xsecret")
