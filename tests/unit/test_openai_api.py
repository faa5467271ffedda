"""The OpenAI-compatible API on the real app, dispatcher, ledger and placement, with scripted hosts:
chat (whole and streamed), models, images, limits, errors, a client that leaves, and the `openai` package."""

from __future__ import annotations

import base64
import inspect
import json
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from fastapi.testclient import TestClient
from model_network import HOST, ModelNetwork, a_model_network, serve

from archipelag.lifecycle import TERMINAL_JOB_STATES, JobStatus


@pytest.fixture
def net(tmp_path: Path) -> ModelNetwork:
    return a_model_network(tmp_path)


@pytest.fixture
def api(net: ModelNetwork) -> Iterator[TestClient]:
    with net.client() as client:
        yield client


def chat(prompt: str, **extra: Any) -> dict[str, Any]:
    return {"model": "smollm2-135m-instruct", "messages": [{"role": "user", "content": prompt}], **extra}


def frames(text: str) -> list[Any]:
    """The `data:` payloads of an SSE body, JSON-decoded except the final `[DONE]`."""
    out: list[Any] = []
    for block in text.split("\n\n"):
        if block.startswith("data: "):
            payload = block[len("data: "):]
            out.append(payload if payload == "[DONE]" else json.loads(payload))
    return out


def eventually(check: Callable[[], bool], timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError("the condition did not come true in time")
        time.sleep(0.02)


def assert_openai_error(response: httpx.Response, status: int, code: str, param: str | None = None) -> dict[str, Any]:
    assert response.status_code == status, response.text
    error: dict[str, Any] = response.json()["error"]
    assert error["code"] == code
    assert error["type"] == ("invalid_request_error" if status in {404, 422} else error["type"])
    assert isinstance(error["message"], str) and error["message"]
    if param is not None:
        assert error["param"] == param
    return error


# --- chat, whole -------------------------------------------------------------------------------------


def test_chat_completion_answers_the_text_with_usage_and_is_an_ordinary_job(api: TestClient,
                                                                           net: ModelNetwork) -> None:
    response = api.post("/v1/chat/completions", json=chat("hello there world"))
    assert response.status_code == 200, response.text
    body = response.json()
    job_id = response.headers["X-Archipelag-Job-Id"]
    assert body["id"] == f"chatcmpl-{job_id}" and body["object"] == "chat.completion"
    assert body["model"] == "smollm2-135m-instruct" and isinstance(body["created"], int)
    assert body["choices"] == [{"index": 0, "message": {"role": "assistant", "content": "hello there world",
                                                        "refusal": None},
                                "logprobs": None, "finish_reason": "stop"}]
    assert body["usage"] == {"prompt_tokens": 3, "completion_tokens": 3, "total_tokens": 6}
    job = api.get(f"/api/v1/jobs/{job_id}").json()["data"]
    assert job["status"] == "completed" and job["workload_slug"] == "llm-chat" and job["host_id"] == HOST
    assert job["output"] == "hello there world"
    assert job["usage"]["total_tokens"] == 6 and job["usage"]["credits_used"] == 0.01
    assert [j["id"] for j in api.get("/api/v1/jobs").json()["data"]] == [job_id]


def test_finish_reason_is_length_when_the_completion_reaches_max_tokens(api: TestClient) -> None:
    body = api.post("/v1/chat/completions", json=chat("one two three four", max_tokens=2)).json()
    assert body["choices"][0]["message"]["content"] == "one two"
    assert body["choices"][0]["finish_reason"] == "length"
    assert body["usage"]["completion_tokens"] == 2


def test_the_api_v1_path_and_the_workload_slug_work_too(api: TestClient) -> None:
    response = api.post("/api/v1/chat/completions", json={**chat("hi"), "model": "llm-chat"})
    assert response.status_code == 200 and response.json()["model"] == "smollm2-135m-instruct"


def test_openai_parameters_become_the_workload_input_and_extra_fields_are_ignored(
        api: TestClient, net: ModelNetwork) -> None:
    body = {"model": "llm-chat", "user": "u-1", "logit_bias": {}, "frequency_penalty": 0.5, "n": 1,
            "messages": [{"role": "developer", "content": "be brief"},
                         {"role": "user", "content": [{"type": "text", "text": "hi "}, {"type": "text", "text": "you"}]}],
            "max_completion_tokens": 7, "temperature": 0.2, "top_p": 0.9, "stop": "\n", "seed": 5}
    assert api.post("/v1/chat/completions", json=body).status_code == 200
    assert net.host.ran == [{"messages": [{"role": "system", "content": "be brief"},
                                          {"role": "user", "content": "hi you"}],
                             "max_tokens": 7, "temperature": 0.2, "top_p": 0.9, "stop": ["\n"], "seed": 5}]


def test_default_max_tokens_is_sent_so_finish_reason_is_exact(api: TestClient, net: ModelNetwork) -> None:
    api.post("/v1/chat/completions", json=chat("hi"))
    assert net.host.ran[0]["max_tokens"] == 256


def test_a_workload_error_answers_as_an_http_error(api: TestClient, net: ModelNetwork) -> None:
    response = api.post("/v1/chat/completions", json=chat("please refuse"))
    error = assert_openai_error(response, 500, "workload_error")
    assert error["type"] == "server_error" and "refused" in error["message"]
    [job], _ = net.ledger.list_jobs(net.account_id)
    eventually(lambda: net.job(job.id).status == JobStatus.FAILED)


# --- chat, streamed ----------------------------------------------------------------------------------


def test_stream_sends_the_role_one_chunk_per_token_the_finish_usage_and_done(api: TestClient) -> None:
    response = api.post("/v1/chat/completions", json=chat("a b c", stream=True, seed=42,
                                                           stream_options={"include_usage": True}))
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    job_id = response.headers["X-Archipelag-Job-Id"]
    sent = frames(response.text)
    assert sent[-1] == "[DONE]"
    chunks = sent[:-1]
    assert {c["id"] for c in chunks} == {f"chatcmpl-{job_id}"}
    assert {c["object"] for c in chunks} == {"chat.completion.chunk"}
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert [c["choices"][0]["delta"].get("content") for c in chunks[1:4]] == ["a", " b", " c"]
    assert chunks[4]["choices"][0] == {"index": 0, "delta": {}, "logprobs": None, "finish_reason": "stop"}
    assert chunks[4]["seed"] == 42  # an extension: the seed the workload used
    assert chunks[5]["choices"] == [] and chunks[5]["usage"] == {"prompt_tokens": 3, "completion_tokens": 3,
                                                                 "total_tokens": 6}
    assert len(chunks) == 6


def test_stream_without_include_usage_sends_no_usage_chunk(api: TestClient) -> None:
    sent = frames(api.post("/v1/chat/completions", json=chat("a b", stream=True)).text)
    assert sent[-1] == "[DONE]"
    assert all(chunk["choices"] for chunk in sent[:-1])
    assert sent[-2]["choices"][0]["finish_reason"] == "stop"


def test_an_error_mid_stream_is_an_error_frame_then_done(api: TestClient, net: ModelNetwork) -> None:
    response = api.post("/v1/chat/completions", json=chat("x fail", stream=True))
    assert response.status_code == 200
    sent = frames(response.text)
    assert sent[1]["choices"][0]["delta"] == {"content": "x"}
    assert sent[-2]["error"]["message"] == "the model crashed" and sent[-2]["error"]["type"] == "server_error"
    assert sent[-1] == "[DONE]"
    job_id = response.headers["X-Archipelag-Job-Id"]
    eventually(lambda: net.job(job_id).status == JobStatus.FAILED)  # the ledger follows the stream


def test_an_error_before_the_first_token_is_an_http_error_not_a_stream(api: TestClient) -> None:
    response = api.post("/v1/chat/completions", json=chat("refuse", stream=True))
    assert_openai_error(response, 500, "workload_error")
    assert not response.headers["content-type"].startswith("text/event-stream")


# --- limits and errors --------------------------------------------------------------------------------


@pytest.mark.parametrize(("body", "param"), [
    ({"messages": [{"role": "user", "content": "x"}] * 129}, "messages"),
    ({"messages": [{"role": "user", "content": "x" * (32 * 1024 + 1)}]}, "messages.0.content"),
    ({"messages": [{"role": "user", "content": "é" * (16 * 1024 + 1)}]}, "messages.0.content"),  # bytes, not chars
    ({"max_tokens": 4097}, "max_tokens"),
    ({"max_completion_tokens": 0}, "max_completion_tokens"),
    ({"messages": []}, "messages"),
    ({"messages": [{"role": "user", "content": "hi"}, {"role": "robot", "content": "hi"}]}, "messages.1.role"),
    ({"messages": [{"content": "hi"}]}, "messages.0.role"),
    ({"n": 2}, "n"),
    ({"temperature": 2.5}, "temperature"),
    ({"top_p": -0.1}, "top_p"),
    ({"stop": ["a", "b", "c", "d", "e"]}, "stop"),
    ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]},
     "messages.0.content.0"),
    ({"model": None}, "model"),
    ({"max_tokens": "many"}, "max_tokens"),
])
def test_requests_past_a_limit_are_422_in_openai_shape(api: TestClient, net: ModelNetwork, body: dict[str, Any],
                                                       param: str) -> None:
    response = api.post("/v1/chat/completions", json={**chat("hi"), **body})
    error = assert_openai_error(response, 422, "validation_error", param)
    assert param in error["errors"]
    assert net.host.ran == [] and net.ledger.list_jobs(net.account_id)[1] == 0


def test_a_body_that_is_not_json_is_422(api: TestClient) -> None:
    response = api.post("/v1/chat/completions", content=b"{not json", headers={"Content-Type": "application/json"})
    assert_openai_error(response, 422, "validation_error")


def test_exactly_at_the_limits_is_accepted(api: TestClient) -> None:
    body = {"model": "llm-chat", "max_tokens": 4096,
            "messages": [{"role": "user", "content": "x" * (32 * 1024)}] * 128}
    assert api.post("/v1/chat/completions", json=body).status_code == 200


@pytest.mark.parametrize("model", ["gpt-4o", "sd-tiny", "text-stats"])
def test_an_unknown_chat_model_is_404_model_not_found(api: TestClient, model: str) -> None:
    response = api.post("/v1/chat/completions", json={**chat("hi"), "model": model})
    error = assert_openai_error(response, 404, "model_not_found", "model")
    assert "smollm2-135m-instruct" in error["message"]


def test_a_model_no_online_host_can_run_is_503_with_placements_reason(tmp_path: Path) -> None:
    net = a_model_network(tmp_path, runtimes=frozenset({"wasm"}))
    with net.client() as api:
        response = api.post("/v1/chat/completions", json=chat("hi", stream=True))
    error = assert_openai_error(response, 503, "no_capacity")
    assert error["type"] == "server_error"
    assert error["message"] == ("no online host can serve the model 'smollm2-135m-instruct' now: "
                                "no online host supports runtime 'container'")
    assert net.ledger.list_jobs(net.account_id)[1] == 0


def test_when_every_able_host_is_busy_the_request_queues_until_a_slot_frees(tmp_path: Path) -> None:
    net = a_model_network(tmp_path, slots=1, active_jobs=1)
    threading.Timer(0.3, net.placement.job_released, args=(HOST,)).start()
    with net.client() as api:
        response = api.post("/v1/chat/completions", json=chat("at last"))
    assert response.status_code == 200 and response.json()["choices"][0]["message"]["content"] == "at last"


def test_a_request_that_waits_past_the_queue_timeout_is_a_503_with_retry_after_never_a_500(
        tmp_path: Path) -> None:
    net = a_model_network(tmp_path, slots=1, active_jobs=1, queue_timeout_s=0.3)
    with net.client() as api:
        for body in (chat("never", stream=True), chat("never")):
            response = api.post("/v1/chat/completions", json=body)
            assert_openai_error(response, 503, "no_capacity")
            assert int(response.headers["Retry-After"]) > 0
    assert all(job.status == JobStatus.FAILED for job in net.ledger.list_jobs(net.account_id)[0])
    assert net.ledger.balance_micro(net.account_id) == 1_000_000  # refunded


def test_past_the_queue_limit_a_request_is_a_503_with_retry_after(tmp_path: Path) -> None:
    net = a_model_network(tmp_path, slots=1, active_jobs=1, queue_max_jobs=0)
    with net.client() as api:
        response = api.post("/v1/chat/completions", json=chat("later"))
        jobs_api = api.post("/api/v1/jobs", json={"workload": "llm-chat", "input": {"prompt": "later"}})
    assert_openai_error(response, 503, "queue_full")
    assert int(response.headers["Retry-After"]) > 0
    assert jobs_api.status_code == 503 and jobs_api.json()["error"]["code"] == "queue_full"
    assert "Retry-After" in jobs_api.headers and net.ledger.list_jobs(net.account_id)[1] == 0


def test_a_short_balance_is_402_before_anything_runs(tmp_path: Path) -> None:
    net = a_model_network(tmp_path, credits_micro=1)
    with net.client() as api:
        response = api.post("/v1/chat/completions", json=chat("hi"))
    error = assert_openai_error(response, 402, "insufficient_credits")
    assert error["type"] == "insufficient_quota" and "required" in error


def test_keys_are_checked_as_the_jobs_api_does(net: ModelNetwork) -> None:
    _, read_only = net.ledger.create_api_key(net.account_id, "ro", scopes=("read",))
    with TestClient(net.app) as api:
        missing = api.post("/v1/chat/completions", json=chat("hi"))
        assert_openai_error(missing, 401, "unauthorized")
        assert missing.json()["error"]["type"] == "authentication_error"
        wrong = api.post("/v1/chat/completions", json=chat("hi"), headers={"Authorization": "Bearer ak_nope"})
        assert_openai_error(wrong, 401, "unauthorized")
        headers = {"Authorization": f"Bearer {read_only}"}
        assert_openai_error(api.post("/v1/chat/completions", json=chat("hi"), headers=headers), 403, "forbidden")
        assert api.get("/v1/models", headers=headers).status_code == 200


# --- models -------------------------------------------------------------------------------------------


def test_models_lists_the_chat_and_image_models_a_host_can_serve_now(api: TestClient) -> None:
    body = api.get("/v1/models").json()
    assert body["object"] == "list"
    assert [(m["id"], m["object"], m["owned_by"], m["kind"], m["workload"]) for m in body["data"]] == [
        ("smollm2-135m-instruct", "model", "archipelag", "chat", "llm-chat"),
        ("sd-tiny", "model", "archipelag", "image", "sd-diffusers"),
    ]  # not sdxl: no host has its GPU memory; not text-stats: no model
    assert all(isinstance(m["created"], int) for m in body["data"])
    assert api.get("/api/v1/models").json() == body


def test_models_served_by_busy_hosts_still_count(tmp_path: Path) -> None:
    net = a_model_network(tmp_path, slots=1, active_jobs=1)
    with net.client() as api:
        assert len(api.get("/v1/models").json()["data"]) == 2


def test_models_is_empty_when_no_host_can_serve_any(tmp_path: Path) -> None:
    net = a_model_network(tmp_path, runtimes=frozenset({"wasm"}))
    with net.client() as api:
        assert api.get("/v1/models").json() == {"object": "list", "data": []}


def test_one_model_by_id_or_slug_and_404_for_the_unknown_or_unservable(api: TestClient) -> None:
    assert api.get("/v1/models/sd-tiny").json()["id"] == "sd-tiny"
    assert api.get("/api/v1/models/llm-chat").json()["id"] == "smollm2-135m-instruct"
    assert_openai_error(api.get("/v1/models/gpt-4o"), 404, "model_not_found")
    error = assert_openai_error(api.get("/v1/models/sdxl"), 404, "model_not_found")
    assert "8192 MB of GPU memory" in error["message"]


# --- images -------------------------------------------------------------------------------------------


def test_an_image_defaults_to_sd_tiny_at_64x64_and_answers_b64_json(api: TestClient, net: ModelNetwork) -> None:
    response = api.post("/v1/images/generations", json={"prompt": "a red fox", "quality": "hd", "style": "vivid"})
    assert response.status_code == 200, response.text
    body = response.json()
    assert isinstance(body["created"], int) and body["size"] == "64x64" and body["output_format"] == "png"
    [item] = body["data"]
    assert base64.b64decode(item["b64_json"]).startswith(b"\x89PNG")
    assert (item["width"], item["height"], item["seed"]) == (64, 64, 7)
    assert net.host.ran == [{"prompt": "a red fox", "width": 64, "height": 64, "steps": 10, "guidance_scale": 7.5}]
    job = net.job(response.headers["X-Archipelag-Job-Id"])
    assert job.status == JobStatus.SUCCEEDED and job.workload_slug == "sd-diffusers"


def test_image_size_steps_seed_and_negative_prompt_reach_the_workload(api: TestClient, net: ModelNetwork) -> None:
    body = {"prompt": "fox", "model": "sd-tiny", "size": "128x96", "steps": 3, "seed": 11, "guidance_scale": 2,
            "negative_prompt": "blur", "n": 1, "response_format": "b64_json"}
    item = api.post("/api/v1/images/generations", json=body).json()["data"][0]
    assert (item["width"], item["height"], item["seed"]) == (128, 96, 11)
    assert net.host.ran == [{"prompt": "fox", "width": 128, "height": 96, "steps": 3, "guidance_scale": 2,
                             "negative_prompt": "blur", "seed": 11}]


@pytest.mark.parametrize(("body", "param"), [
    ({"response_format": "url"}, "response_format"),
    ({"n": 2}, "n"),
    ({"size": "big"}, "size"),
    ({"size": "63x64"}, "size"),
    ({"size": "4096x4096"}, "size"),
    ({"steps": 0}, "steps"),
    ({"prompt": ""}, "prompt"),
])
def test_image_requests_past_a_limit_are_422(api: TestClient, body: dict[str, Any], param: str) -> None:
    response = api.post("/v1/images/generations", json={"prompt": "fox", **body})
    assert_openai_error(response, 422, "validation_error", param)


def test_an_image_model_no_host_can_run_is_503_and_a_chat_model_is_404(api: TestClient) -> None:
    error = assert_openai_error(api.post("/v1/images/generations", json={"prompt": "x", "model": "sdxl"}),
                                503, "no_capacity")
    assert "'sdxl'" in error["message"] and "GPU memory" in error["message"]
    assert_openai_error(api.post("/v1/images/generations", json={"prompt": "x", "model": "llm-chat"}),
                        404, "model_not_found")


def test_an_image_stream_sends_progress_then_the_image_then_done(api: TestClient) -> None:
    response = api.post("/v1/images/generations", json={"prompt": "fox", "steps": 3, "stream": True})
    sent = frames(response.text)
    assert [f["type"] for f in sent[:-1]] == ["image_generation.progress"] * 3 + ["image_generation.completed"]
    assert [(f["step"], f["total"]) for f in sent[:3]] == [(1, 3), (2, 3), (3, 3)]
    assert base64.b64decode(sent[3]["b64_json"]).startswith(b"\x89PNG") and sent[3]["size"] == "64x64"
    assert sent[-1] == "[DONE]"


# --- a client that goes away ---------------------------------------------------------------------------


def wait_cancelled(net: ModelNetwork) -> str:
    eventually(lambda: bool(net.host.cancelled))
    job_id = net.host.cancelled[0]
    eventually(lambda: net.job(job_id).status == JobStatus.CANCELLED)
    return job_id


def test_closing_a_stream_mid_answer_cancels_the_job_and_frees_the_host(net: ModelNetwork) -> None:
    with serve(net.app) as url, httpx.Client(base_url=url, timeout=5) as client:
        headers = {"Authorization": f"Bearer {net.key}"}
        with client.stream("POST", "/v1/chat/completions", json=chat("x hang", stream=True),
                           headers=headers) as response:
            lines = response.iter_lines()
            assert next(line for line in lines if '"content":"x"' in line)
        job_id = wait_cancelled(net)
        assert response.headers["X-Archipelag-Job-Id"] == job_id
        assert net.job(job_id).status in TERMINAL_JOB_STATES


def test_leaving_while_the_job_has_not_answered_yet_cancels_it(net: ModelNetwork) -> None:
    with serve(net.app) as url:
        headers = {"Authorization": f"Bearer {net.key}"}
        for body in (chat("park", stream=True), chat("park")):  # stream: waiting for the first token
            net.host.cancelled.clear()
            with pytest.raises(httpx.ReadTimeout):
                httpx.post(f"{url}/v1/chat/completions", json=body, headers=headers, timeout=0.5)
            wait_cancelled(net)


def test_leaving_an_image_stream_cancels_it(net: ModelNetwork) -> None:
    with serve(net.app) as url, httpx.Client(base_url=url, timeout=5) as client:
        with client.stream("POST", "/v1/images/generations", json={"prompt": "park", "stream": True},
                           headers={"Authorization": f"Bearer {net.key}"}) as response:
            assert next(line for line in response.iter_lines() if "progress" in line)
        wait_cancelled(net)


# --- the official openai client -----------------------------------------------------------------------


@pytest.fixture
def openai_client(net: ModelNetwork) -> Iterator[openai.OpenAI]:
    with serve(net.app) as url:
        client = openai.OpenAI(base_url=f"{url}/v1", api_key=net.key, max_retries=0, timeout=10)
        yield client
        client.close()


def test_the_openai_client_chats_whole_and_streamed(openai_client: openai.OpenAI) -> None:
    whole = openai_client.chat.completions.create(
        model="smollm2-135m-instruct", messages=[{"role": "user", "content": "hello open world"}], max_tokens=8)
    assert whole.choices[0].message.content == "hello open world"
    assert whole.choices[0].finish_reason == "stop"
    assert whole.usage is not None and whole.usage.total_tokens == 6
    stream = openai_client.chat.completions.create(
        model="llm-chat", messages=[{"role": "user", "content": "one two three"}], stream=True,
        stream_options={"include_usage": True})
    pieces, usage, finish = [], None, None
    for part in stream:
        if part.choices:
            pieces.append(part.choices[0].delta.content or "")
            finish = part.choices[0].finish_reason or finish
        if part.usage is not None:
            usage = part.usage
    assert "".join(pieces) == "one two three" and finish == "stop"
    assert usage is not None and usage.completion_tokens == 3


def test_the_openai_client_lists_models_and_makes_images(openai_client: openai.OpenAI) -> None:
    assert [m.id for m in openai_client.models.list()] == ["smollm2-135m-instruct", "sd-tiny"]
    assert openai_client.models.retrieve("sd-tiny").owned_by == "archipelag"
    image = openai_client.images.generate(prompt="a fox", size="64x64", response_format="b64_json")  # type: ignore[arg-type]
    assert image.data is not None and base64.b64decode(image.data[0].b64_json or "").startswith(b"\x89PNG")


def test_the_openai_client_raises_its_own_errors(openai_client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as missing:
        openai_client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "hi"}])
    assert missing.value.code == "model_not_found"
    with pytest.raises(openai.UnprocessableEntityError) as invalid:
        openai_client.chat.completions.create(model="llm-chat", messages=[{"role": "user", "content": "hi"}],
                                              max_tokens=5000)
    assert invalid.value.param == "max_tokens"
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=str(openai_client.base_url), api_key="ak_wrong", max_retries=0).models.list()
    with pytest.raises(openai.APIError, match="the model crashed"):
        for _ in openai_client.chat.completions.create(
                model="llm-chat", messages=[{"role": "user", "content": "x fail"}], stream=True):
            pass


# --- a stream that survives its host -------------------------------------------------------------------


def test_a_chat_without_a_seed_gets_one_at_the_ingress_so_a_retry_replays_the_same_tokens() -> None:
    from archipelag.serve.openai_requests import ChatRequest, chat_input

    first = chat_input(ChatRequest.model_validate(chat("hi")))
    assert isinstance(first["seed"], int) and 0 <= first["seed"] <= 2**31 - 1
    assert chat_input(ChatRequest.model_validate(chat("hi", seed=5)))["seed"] == 5


def test_no_route_runs_its_endpoint_or_a_dependency_in_the_thread_pool(net: ModelNetwork) -> None:
    """FastAPI calls a plain function, endpoint or dependency, in its thread pool: a hop to a thread and back on
    every request (0.5 ms of a first token, `bench llm`). Every one the API's routes use is a coroutine."""
    from fastapi.dependencies.models import Dependant
    from fastapi.routing import APIRoute

    def calls(dependant: Dependant) -> Iterator[Any]:
        if dependant.call is not None:
            yield dependant.call
        for inner in dependant.dependencies:
            yield from calls(inner)

    def routes(of: list[Any]) -> Iterator[APIRoute]:
        for route in of:
            if isinstance(route, APIRoute):
                yield route
            elif hasattr(route, "original_router"):  # an included router (FastAPI 0.165)
                yield from routes(route.original_router.routes)

    found = list(routes(net.app.router.routes))
    assert any(r.path == "/v1/chat/completions" for r in found) and len(found) > 50
    plain = {f"{r.path}: {getattr(c, '__qualname__', c)}" for r in found for c in calls(r.dependant)
             if not inspect.iscoroutinefunction(c) and not inspect.isasyncgenfunction(c)}
    assert not plain, sorted(plain)
