"""Request bodies are bounded before any route reads them (issue 10): a body past ``max_body_bytes`` is a 413
before it is read whole — declared or chunked, on every route, with a key or without — and a JSON body with a
string past ``max_json_string_bytes``, nesting past ``max_json_depth``, or NaN/Infinity is refused before it
is parsed. Each refusal is a 4xx in the documented shape and leaves nothing behind."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from model_network import ModelNetwork, a_model_network, serve
from starlette.types import Message, Receive, Scope, Send

from archipelag.errors import PayloadTooLarge, ValidationFailed
from archipelag.serve.app import build_api
from archipelag.serve.bodies import BodyLimit, BodyLimits, check_json

LIMIT = 64 * 1024
LIMITS = BodyLimits(max_body_bytes=LIMIT, max_json_depth=8, max_json_string_bytes=1024, max_json_items=1000)


@pytest.fixture
def net(tmp_path: Path) -> ModelNetwork:
    network = a_model_network(tmp_path)
    settings = network.services.settings.model_copy(update={
        "max_body_bytes": LIMIT, "max_json_depth": 8, "max_json_string_bytes": 1024,
        "max_json_items": 1000})
    network.app = build_api(replace(network.services, settings=settings))
    return network


@pytest.fixture
def api(net: ModelNetwork) -> Iterator[TestClient]:
    with net.client() as client:
        yield client


def assert_refused(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    error: dict[str, Any] = response.json()["error"]
    assert error["code"] == code and isinstance(error["message"], str) and error["message"]
    return error


def nothing_was_created(net: ModelNetwork) -> bool:
    return net.ledger.list_jobs(net.account_id)[1] == 0 and net.host.ran == []


# --- the size of a body ------------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/api/v1/jobs", "/api/v1/api-keys", "/v1/chat/completions", "/health",
                                  "/no/such/route"])
def test_a_body_past_the_limit_is_413_on_every_route(api: TestClient, net: ModelNetwork, path: str) -> None:
    response = api.post(path, content=b"x" * (LIMIT + 1), headers={"Content-Type": "application/json"})
    error = assert_refused(response, 413, "payload_too_large")
    assert str(LIMIT) in error["message"] and error["limit_bytes"] == LIMIT
    assert nothing_was_created(net)


def test_a_body_past_the_limit_is_413_without_a_key_too(net: ModelNetwork) -> None:
    with TestClient(net.app) as anonymous:
        response = anonymous.post("/api/v1/jobs", content=b"x" * (LIMIT + 1))
    assert_refused(response, 413, "payload_too_large")


def test_an_openai_route_answers_413_in_openais_shape(api: TestClient) -> None:
    error = assert_refused(api.post("/v1/chat/completions", content=b"x" * (LIMIT + 1)), 413, "payload_too_large")
    assert error["type"] == "invalid_request_error" and "param" in error


def test_a_body_at_the_limit_reaches_its_route(api: TestClient) -> None:
    body = json.dumps({"workload": "llm-chat", "input": {"messages": [{"role": "user", "content": "hi"}]}}).encode()
    body += b" " * (LIMIT - len(body))
    response = api.post("/api/v1/jobs", content=body, headers={"Content-Type": "application/json"})
    assert response.status_code == 201, response.text


class Chunks:
    """An ASGI ``receive`` that hands out ``chunk``-byte pieces of a body that never ends, counting them."""

    def __init__(self, chunk: int) -> None:
        self.chunk = chunk
        self.pulled = 0

    async def __call__(self) -> Message:
        self.pulled += 1
        return {"type": "http.request", "body": b"[" * self.chunk, "more_body": True}


async def run_middleware(headers: list[tuple[bytes, bytes]], receive: Receive) -> tuple[list[Message], bool]:
    reached = False

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        nonlocal reached
        reached = True

    sent: list[Message] = []

    async def send(message: Message) -> None:
        sent.append(message)

    middleware = BodyLimit(app, LIMITS, lambda _: False)
    scope = {"type": "http", "method": "POST", "path": "/api/v1/jobs", "headers": headers}
    await middleware(scope, receive, send)
    return sent, reached


def test_a_declared_length_past_the_limit_is_refused_before_a_byte_is_read() -> None:
    receive = Chunks(1024)
    sent, reached = asyncio.run(run_middleware([(b"content-length", str(10 * LIMIT).encode())], receive))
    assert receive.pulled == 0 and not reached
    assert sent[0]["status"] == 413
    assert json.loads(sent[1]["body"])["error"]["code"] == "payload_too_large"


def test_a_chunked_body_is_refused_once_it_passes_the_limit_and_the_rest_is_left_unread() -> None:
    receive = Chunks(1024)
    sent, reached = asyncio.run(run_middleware([(b"transfer-encoding", b"chunked")], receive))
    assert receive.pulled == LIMIT // 1024 + 1 and not reached
    assert sent[0]["status"] == 413


def test_a_body_that_passes_reaches_the_route_whole_then_the_servers_next_message() -> None:
    messages: list[Message] = [{"type": "http.request", "body": b'{"a":', "more_body": True},
                               {"type": "http.request", "body": b" 1}", "more_body": False},
                               {"type": "http.disconnect"}]
    seen: list[Message] = []

    async def receive() -> Message:
        return messages.pop(0)

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        seen.extend([await receive(), await receive()])

    async def send(message: Message) -> None:
        raise AssertionError("nothing is sent for a body that passes")

    asyncio.run(BodyLimit(app, LIMITS, lambda _: False)({"type": "http", "path": "/", "headers": []}, receive, send))
    assert seen == [{"type": "http.request", "body": b'{"a": 1}', "more_body": False}, {"type": "http.disconnect"}]


def test_over_a_real_server_a_large_declared_body_gets_its_413(net: ModelNetwork) -> None:
    with serve(net.app) as url:
        response = httpx.post(f"{url}/api/v1/jobs", content=b"x" * (4 * LIMIT),
                              headers={"Authorization": f"Bearer {net.key}", "Content-Type": "application/json"})
        assert_refused(response, 413, "payload_too_large")
        assert response.headers["connection"] == "close"

        def endless() -> Iterator[bytes]:
            for _ in range(64):
                yield b" " * 4096

        chunked = httpx.post(f"{url}/api/v1/jobs", content=endless(),
                             headers={"Authorization": f"Bearer {net.key}", "Content-Type": "application/json"})
        assert_refused(chunked, 413, "payload_too_large")
        assert httpx.get(f"{url}/health").status_code == 200  # and the server serves on
    assert nothing_was_created(net)


# --- JSON: strings, depth, NaN -------------------------------------------------------------------------


def nested(depth: int) -> bytes:
    return b'{"a":' * depth + b"1" + b"}" * depth


@pytest.mark.parametrize("body", [
    nested(8), b'{"a": [[[[[[[1]]]]]]]}', b'[' * 8 + b']' * 8, b'{"s": "' + b"[" * 100 + b'"}',
    b'{"s": "' + b"x" * 1024 + b'"}', b'{"s": "\\"' + b"x" * 1000 + b'\\\\"}', b'{"NaN": "Infinity"}',
    b'{"a": 1e308, "b": -0.5, "c": [true, false, null]}', b"not json at all", b'{"a": "never closed',
    b"",
])
def test_json_within_the_limits_passes_the_scan(body: bytes) -> None:
    check_json(body, LIMITS)  # malformed JSON passes: the route's parser reports it


@pytest.mark.parametrize("body", [nested(9), b"[" * 9 + b"]" * 9, b"[" * 9, b"[[[[[[[[[1],2],3],4],5],6],7],8],9]",
                                  b'[{"a": [{"b": [{"c": [{"d": [{"e": 1}]}]}]}]}]'])
def test_json_nested_past_the_depth_is_refused(body: bytes) -> None:
    with pytest.raises(ValidationFailed, match="nested deeper than 8"):
        check_json(body, LIMITS)


def test_a_deep_body_in_a_long_document_is_found(api: TestClient) -> None:
    body = b'{"pad": [' + b"[1]," * 300 + nested(9) + b"]}"
    assert_refused(api.post("/api/v1/jobs", content=body, headers={"Content-Type": "application/json"}),
                   422, "validation_error")


@pytest.mark.parametrize("body", [b'{"s": "' + b"x" * 1025 + b'"}',
                                  b'{"s": "' + b'x\\"' * 400 + b'"}',  # escaped quotes do not end a string
                                  b'["' + "é".encode() * 513 + b'"]'])
def test_a_string_past_the_limit_is_refused(body: bytes) -> None:
    with pytest.raises(PayloadTooLarge, match="at most 1024 bytes"):
        check_json(body + b" " * 1024, LIMITS)


@pytest.mark.parametrize("body", [b"[" + b"[]," * 1000 + b"1]", b"[" + b"1," * 1000 + b"1]",
                                  b"[" + b'"a",' * 1001 + b'"b"]', b'{"a": [' + b"{}," * 600 + b"{}]}"])
def test_a_body_of_too_many_values_is_refused_before_it_is_parsed(body: bytes) -> None:
    with pytest.raises(PayloadTooLarge, match="at most 1000"):
        check_json(body, LIMITS)


def test_many_brackets_commas_and_quotes_inside_strings_are_no_values() -> None:
    check_json(json.dumps({"code": '[{"a": 1}, ' * 5000}).encode(), replace(LIMITS, max_json_string_bytes=10**6))


@pytest.mark.parametrize("literal", [b"NaN", b"Infinity", b"-Infinity"])
def test_nan_and_infinity_are_refused(literal: bytes) -> None:
    with pytest.raises(ValidationFailed, match="NaN or Infinity"):
        check_json(b'{"temperature": ' + literal + b"}", LIMITS)


@pytest.mark.parametrize(("body", "status", "code"), [
    (nested(9), 422, "validation_error"),
    (b'{"workload": "llm-chat", "input": {"text": "' + b"x" * 2048 + b'"}}', 413, "payload_too_large"),
    (b'{"workload": "llm-chat", "input": {"messages": [{"role": "user", "content": "hi"}], "temperature": NaN}}',
     422, "validation_error"),
])
def test_the_api_refuses_such_json_in_its_shape_and_creates_nothing(api: TestClient, net: ModelNetwork,
                                                                    body: bytes, status: int, code: str) -> None:
    response = api.post("/api/v1/jobs", content=body, headers={"Content-Type": "application/json"})
    assert_refused(response, status, code)
    assert nothing_was_created(net)


def test_the_openai_routes_work_through_the_scan(api: TestClient) -> None:
    body = {"model": "smollm2-135m-instruct", "messages": [{"role": "user", "content": "hello there"}],
            "temperature": 0.5, "stop": ["\n"]}
    response = api.post("/v1/chat/completions", json=body)
    assert response.status_code == 200, response.text
    assert response.json()["choices"][0]["message"]["content"] == "hello there"
