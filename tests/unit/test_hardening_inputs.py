"""Inputs are what they claim (issue 10): numbers on the OpenAI routes and in job inputs are strict — a float,
a boolean, 1e308, NaN or a number out of range is a 422, never rounded, never read as a default — a job's input
is bounded per workload (413), and query parameters, headers and path ids are bounded (422, never a 500). Each
refused request leaves no job and no hold on credits."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from model_network import CHAT, ModelNetwork, a_model_network

from archipelag.catalog import DEFAULT_MAX_TOKENS, Manifest, ModelSpec, max_price_micro
from archipelag.errors import PayloadTooLarge, ValidationFailed
from archipelag.ids import WorkloadSlug
from archipelag.jobs.admission import admit, validate_input

CREDITS = 1_000_000


@pytest.fixture
def net(tmp_path: Path) -> ModelNetwork:
    return a_model_network(tmp_path, credits_micro=CREDITS)


@pytest.fixture
def api(net: ModelNetwork) -> Iterator[TestClient]:
    with net.client() as client:
        yield client


def refused(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    error: dict[str, Any] = response.json()["error"]
    assert error["code"] == code and isinstance(error["message"], str) and error["message"]
    return error


def untouched(net: ModelNetwork) -> bool:
    return (net.ledger.list_jobs(net.account_id)[1] == 0 and net.host.ran == []
            and net.ledger.balance_micro(net.account_id) == CREDITS)


def a_chat_job(**extra: Any) -> dict[str, Any]:
    return {"workload": "llm-chat", "input": {"messages": [{"role": "user", "content": "hello"}], **extra}}


def an_image_job(**extra: Any) -> dict[str, Any]:
    return {"workload": "sd-diffusers", "input": {"prompt": "a fox", "width": 64, "height": 64, "steps": 2,
                                                   "guidance_scale": 7.5, **extra}}


# --- max_tokens: the undercharge ---------------------------------------------------------------------

PER_TOKEN = Manifest(slug=WorkloadSlug("llm-chat"), name="chat", description="", runtime="container",
                     trust_level=1, price_micro=2_000, token_price_micro=20_000,
                     model=ModelSpec("m", "gguf", "m.gguf", "0" * 64))


def test_a_float_max_tokens_reserved_only_the_default_and_is_now_refused() -> None:
    # What the reservation made of it: 2000.0 is no int, so only the default 256 tokens were held, while the
    # workload (int_field accepts a whole float) went on to make 2000: the user was charged at most the hold.
    assert max_price_micro(PER_TOKEN, {"max_tokens": 2000.0}) == 2_000 + DEFAULT_MAX_TOKENS * 20
    with pytest.raises(ValidationFailed) as refusal:
        admit({PER_TOKEN.slug: PER_TOKEN}, "llm-chat", {"prompt": "hi", "max_tokens": 2000.0}, 10**6)
    assert refusal.value.details["errors"] == {"input.max_tokens": "Input should be a valid integer"}
    assert admit({PER_TOKEN.slug: PER_TOKEN}, "llm-chat", {"prompt": "hi", "max_tokens": 2000}, 10**6)[1] \
        == 2_000 + 2000 * 20  # an int reserves for every token it allows


def test_the_jobs_api_answers_a_float_max_tokens_with_422_and_holds_nothing(api: TestClient,
                                                                            net: ModelNetwork) -> None:
    error = refused(api.post("/api/v1/jobs", json=a_chat_job(max_tokens=2000.0)), 422, "validation_error")
    assert error["errors"] == {"input.max_tokens": "Input should be a valid integer"}
    assert untouched(net)


# --- numbers in job inputs -----------------------------------------------------------------------------


@pytest.mark.parametrize(("extra", "field"), [
    ({"max_tokens": 1e308}, "input.max_tokens"),
    ({"max_tokens": True}, "input.max_tokens"),
    ({"max_tokens": "2000"}, "input.max_tokens"),
    ({"max_tokens": -5}, "input.max_tokens"),
    ({"max_tokens": 0}, "input.max_tokens"),
    ({"max_tokens": 4097}, "input.max_tokens"),
    ({"max_tokens": 10**30}, "input.max_tokens"),
    ({"temperature": True}, "input.temperature"),
    ({"temperature": 1e308}, "input.temperature"),
    ({"temperature": "hot"}, "input.temperature"),
    ({"top_p": -0.5}, "input.top_p"),
    ({"seed": 1.5}, "input.seed"),
    ({"seed": -1}, "input.seed"),
    ({"stop": ["a", "b", "c", "d", "e"]}, "input.stop"),
])
def test_a_chat_job_with_a_number_that_is_not_what_it_claims_is_422(api: TestClient, net: ModelNetwork,
                                                                   extra: dict[str, Any], field: str) -> None:
    error = refused(api.post("/api/v1/jobs", json=a_chat_job(**extra)), 422, "validation_error")
    assert field in error["errors"]
    assert untouched(net)


@pytest.mark.parametrize(("extra", "field"), [
    ({"width": 512.0}, "input.width"),
    ({"width": 100}, "input.width"),  # not a multiple of 8
    ({"height": 4096}, "input.height"),
    ({"steps": True}, "input.steps"),
    ({"steps": 1e308}, "input.steps"),
    ({"guidance_scale": 1e308}, "input.guidance_scale"),
    ({"guidance_scale": False}, "input.guidance_scale"),
    ({"seed": -1}, "input.seed"),
    ({"seed": 2**32}, "input.seed"),
])
def test_an_image_job_with_a_number_that_is_not_what_it_claims_is_422(api: TestClient, net: ModelNetwork,
                                                                     extra: dict[str, Any], field: str) -> None:
    error = refused(api.post("/api/v1/jobs", json=an_image_job(**extra)), 422, "validation_error")
    assert field in error["errors"]
    assert untouched(net)


@pytest.mark.parametrize("literal", [b"NaN", b"Infinity", b"-Infinity"])
def test_nan_in_a_job_input_is_422(api: TestClient, net: ModelNetwork, literal: bytes) -> None:
    body = b'{"workload": "llm-chat", "input": {"messages": [{"role": "user", "content": "hi"}], ' \
           b'"temperature": ' + literal + b"}}"
    refused(api.post("/api/v1/jobs", content=body, headers={"Content-Type": "application/json"}),
            422, "validation_error")
    assert untouched(net)


def test_nan_in_a_job_input_is_refused_by_admission_itself() -> None:
    with pytest.raises(ValidationFailed, match="NaN"):
        validate_input(CHAT, {"messages": [{"role": "user", "content": "hi"}], "x": float("nan")}, 10**6)


@pytest.mark.parametrize("priority", [1.0, True, "3", 101, -1])
def test_a_priority_that_is_no_whole_number_in_range_is_422(api: TestClient, net: ModelNetwork,
                                                            priority: Any) -> None:
    error = refused(api.post("/api/v1/jobs", json={**a_chat_job(), "priority": priority}), 422, "validation_error")
    assert "priority" in error["errors"]
    assert untouched(net)


def test_good_numbers_still_make_jobs(api: TestClient, net: ModelNetwork) -> None:
    for body in (a_chat_job(max_tokens=3, temperature=1, top_p=0.5, seed=7, stop="x"),
                 an_image_job(seed=2**32 - 1, guidance_scale=0)):
        assert api.post("/api/v1/jobs", json=body).status_code == 201
    assert net.ledger.list_jobs(net.account_id)[1] == 2


# --- numbers on the OpenAI routes ----------------------------------------------------------------------


def chat(**extra: Any) -> dict[str, Any]:
    return {"model": "smollm2-135m-instruct", "messages": [{"role": "user", "content": "hi"}], **extra}


@pytest.mark.parametrize(("extra", "param"), [
    ({"max_tokens": 2000.0}, "max_tokens"),
    ({"max_tokens": 1e308}, "max_tokens"),
    ({"max_tokens": True}, "max_tokens"),
    ({"max_tokens": -5}, "max_tokens"),
    ({"max_tokens": 10**40}, "max_tokens"),
    ({"max_completion_tokens": 2.5}, "max_completion_tokens"),
    ({"temperature": True}, "temperature"),
    ({"temperature": 1e308}, "temperature"),
    ({"seed": 1.5}, "seed"),
    ({"n": 1.0}, "n"),
    ({"stream": "yes"}, "stream"),
    ({"stream_options": {"include_usage": 1}}, "stream_options.include_usage"),
])
def test_openai_chat_numbers_are_strict(api: TestClient, net: ModelNetwork, extra: dict[str, Any],
                                        param: str) -> None:
    error = refused(api.post("/v1/chat/completions", json=chat(**extra)), 422, "validation_error")
    assert error["param"] == param and error["type"] == "invalid_request_error"
    assert untouched(net)


def test_openai_chat_nan_is_422_in_openai_shape(api: TestClient, net: ModelNetwork) -> None:
    body = b'{"model": "llm-chat", "messages": [{"role": "user", "content": "hi"}], "temperature": NaN}'
    error = refused(api.post("/v1/chat/completions", content=body, headers={"Content-Type": "application/json"}),
                    422, "validation_error")
    assert error["type"] == "invalid_request_error"
    assert untouched(net)


@pytest.mark.parametrize(("extra", "param"), [
    ({"steps": 3.0}, "steps"),
    ({"steps": 101}, "steps"),
    ({"guidance_scale": True}, "guidance_scale"),
    ({"guidance_scale": 25}, "guidance_scale"),
    ({"seed": 1e308}, "seed"),
    ({"size": "2048x2048"}, "size"),  # past what the diffusers workloads draw
    ({"size": "²x64"}, "size"),  # a digit to str.isdigit, not to int()
    ({"size": "9" * 5000 + "x64"}, "size"),  # past the digits int() reads
])
def test_openai_image_numbers_are_strict(api: TestClient, net: ModelNetwork, extra: dict[str, Any],
                                         param: str) -> None:
    error = refused(api.post("/v1/images/generations", json={"prompt": "fox", **extra}), 422, "validation_error")
    assert error["param"] == param
    assert untouched(net)


# --- the size of a job's input ---------------------------------------------------------------------------


def test_a_job_input_past_its_workloads_limit_is_413() -> None:
    narrow = Manifest(slug=WorkloadSlug("text-stats"), name="t", description="", runtime="container",
                      trust_level=0, price_micro=1, limits={"input_bytes": 100})
    validate_input(narrow, {"text": "x" * 80}, 10**6)
    with pytest.raises(PayloadTooLarge, match="at most 100") as refusal:
        validate_input(narrow, {"text": "x" * 100}, 10**6)
    assert refusal.value.http_status == 413 and refusal.value.details["limit_bytes"] == 100
    with pytest.raises(PayloadTooLarge, match="at most 50"):  # the network's limit, when it is the smaller
        validate_input(narrow, {"text": "x" * 60}, 50)
    with pytest.raises(PayloadTooLarge):  # bytes, not characters
        validate_input(narrow, {"text": "é" * 50}, 10**6)


def test_the_jobs_api_refuses_an_input_past_the_networks_limit_with_413(api: TestClient, net: ModelNetwork) -> None:
    net.services.settings.max_job_input_bytes = 4096  # the jobs service reads the same settings
    error = refused(api.post("/api/v1/jobs", json=a_chat_job(pad="x" * 4096)), 413, "payload_too_large")
    assert error["limit_bytes"] == 4096 and "llm-chat" in error["message"]
    assert untouched(net)
    assert api.post("/api/v1/jobs", json=a_chat_job(pad="x" * 3000)).status_code == 201


# --- query parameters, headers, path ids -----------------------------------------------------------------


@pytest.mark.parametrize("query", ["offset=100000000000000000000", "offset=2147483648", "offset=-1", "limit=0",
                                   "limit=201", "limit=2.5", "offset=1e3"])
def test_job_list_paging_out_of_bounds_is_422_never_500(api: TestClient, query: str) -> None:
    refused(api.get(f"/api/v1/jobs?{query}"), 422, "validation_error")


def test_job_list_paging_at_its_bounds_answers(api: TestClient) -> None:
    assert api.get("/api/v1/jobs?offset=2147483647&limit=200").status_code == 200


@pytest.mark.parametrize("method", ["GET", "DELETE"])
def test_a_job_id_longer_than_any_id_is_422(api: TestClient, method: str) -> None:
    refused(api.request(method, "/api/v1/jobs/" + "a" * 65), 422, "validation_error")
    refused(api.get("/api/v1/jobs/" + "a" * 65 + "/stream"), 422, "validation_error")


@pytest.mark.parametrize("value", ["1" * 21, "99999999999999999999999999", "-5", "abc"])
def test_a_last_event_id_that_is_no_event_id_is_422(api: TestClient, net: ModelNetwork, value: str) -> None:
    job_id = api.post("/api/v1/jobs", json=a_chat_job()).json()["data"]["id"]
    refused(api.get(f"/api/v1/jobs/{job_id}/stream", headers={"Last-Event-ID": value}), 422, "validation_error")
