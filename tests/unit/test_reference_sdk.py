"""The reference network's Python SDK (PyPI ``archipelag``) works unchanged against our server: every public method
of its ``Client`` and ``AsyncClient``, the server-side batch ones included, on the real API app, ledger and jobs
service with scripted hosts, over a real socket.

Two ways. ``test_the_reference_sdk_itself_*`` installs the package in a virtualenv of its own and runs it; the
package index here does not have it, so that test skips saying why (``ARCHIPELAG_REFERENCE_SDK`` can name a
checkout of it). The replays below make the same HTTP exchanges, method by method, and read our answers with
models as strict as its own (``reference_wire``), so they hold wherever the package cannot be installed.
"""

from __future__ import annotations

import asyncio
import base64
from collections.abc import AsyncIterator, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import reference_sdk
from model_network import ModelNetwork, ScriptedHost, a_model_network, serve
from reference_wire import (
    ASYNC_CLIENT_METHODS,
    CLIENT_METHODS,
    LATER_ISSUE_METHODS,
    AsyncClientReplay,
    ClientReplay,
    ImageAsk,
    JobEndedFailed,
    Refused,
    StreamEventRead,
)

from archipelag.protocol import Event
from archipelag.runtimes.base import JobSpec

IMAGE = ImageAsk("a red fox", negative_prompt="blur", width=64, height=96, steps=2, seed=5,
                 workload="sd-diffusers")  # the default, sdxl, needs a GPU no scripted host has


class NativeInputHost(ScriptedHost):
    """The scripted host, reading the inputs the reference SDK sends as the real workload programs do: llm-chat's
    ``{"prompt", "system_prompt"?, "max_tokens"?}`` (the scripted host knows only ``messages``), and an image
    job ends with ``done {seed}``, its picture in the ``image`` event, as sd-diffusers ends one."""

    async def run(self, spec: JobSpec) -> AsyncIterator[Event]:
        job_input = dict(spec.input)
        if spec.workload.slug == "llm-chat" and "messages" not in job_input:
            system = job_input.pop("system_prompt", None)
            job_input["messages"] = ([{"role": "system", "content": system}] if system else []) + [
                {"role": "user", "content": job_input.pop("prompt")}]
            job_input.setdefault("max_tokens", 256)
        async for event in super().run(replace(spec, input=job_input)):
            yield {k: v for k, v in event.items() if k != "output"} if event["type"] == "done" else event


def a_reference_network(tmp_path: Path, credits_micro: int) -> ModelNetwork:
    net = a_model_network(tmp_path, credits_micro=credits_micro)
    # a_model_network builds its scripted host itself and hands that very object to the jobs service
    net.host.__class__ = NativeInputHost
    return net


@pytest.fixture(scope="module")
def network(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ModelNetwork, str]]:
    net = a_reference_network(tmp_path_factory.mktemp("reference-sdk"), credits_micro=100_000_000)
    with serve(net.app) as url:
        yield net, url


@pytest.fixture
def net(network: tuple[ModelNetwork, str]) -> ModelNetwork:
    network[0].host.ran.clear()
    return network[0]


@pytest.fixture
def url(network: tuple[ModelNetwork, str]) -> str:
    return network[1]


@pytest.fixture
def client(net: ModelNetwork, url: str) -> Iterator[ClientReplay]:
    with ClientReplay(url, net.key) as reference:  # its headers on every call: JSON content type on GETs too
        yield reference


def tokens(events: list[StreamEventRead]) -> str:
    return "".join(e.content or "" for e in events if e.type == "token")


def test_every_public_method_of_both_clients_is_replayed() -> None:
    for name in CLIENT_METHODS:
        assert callable(getattr(ClientReplay, name)), name
    for name in ASYNC_CLIENT_METHODS:
        assert callable(getattr(AsyncClientReplay, name)), name
    assert not LATER_ISSUE_METHODS
    assert {"submit_batch", "get_batch_status", "wait_for_batch"} <= set(CLIENT_METHODS) & set(ASYNC_CLIENT_METHODS)


# --- account and workloads -------------------------------------------------------------------------------


def test_get_account_reads_a_string_id_email_credits_and_creation_time(client: ClientReplay, net: ModelNetwork) -> None:
    account = client.get_account()
    assert account.id == str(net.account_id) and account.email == "ada@example.org"
    assert account.credits > 0


def test_list_workloads_and_get_workload_read_integer_ids_and_a_runtime_type(client: ClientReplay) -> None:
    workloads = {w.slug: w for w in client.list_workloads()}
    assert {"llm-chat", "sd-diffusers", "sdxl"} <= set(workloads)
    chat = client.get_workload("llm-chat")
    assert chat == workloads["llm-chat"] and chat.runtime_type == "container" and chat.price_per_job == 0.01


# --- jobs ----------------------------------------------------------------------------------------------------


def test_create_job_answers_a_job_with_a_string_id_and_a_public_status(client: ClientReplay, net: ModelNetwork) -> None:
    job = client.create_job("llm-chat", {"prompt": "hello there"})
    assert job.status in {"pending", "queued", "running", "completed"} and job.input == {"prompt": "hello there"}
    assert client.get_job(job.id).id == job.id
    assert client.wait_for_job(job.id).output == "hello there"


def test_wait_for_job_ends_with_usage_and_times(client: ClientReplay) -> None:
    job = client.wait_for_job(client.create_job("llm-chat", {"prompt": "a b c"}).id)
    assert job.status == "completed" and job.usage is not None
    assert (job.usage.prompt_tokens, job.usage.completion_tokens, job.usage.total_tokens) == (3, 3, 6)
    assert job.usage.credits_used == 0.01 and job.started_at and job.completed_at and job.duration_ms is not None


def test_wait_for_job_raises_for_a_failed_job_with_its_error_string(client: ClientReplay) -> None:
    job = client.create_job("llm-chat", {"prompt": "please fail"})
    with pytest.raises(JobEndedFailed) as failed:
        client.wait_for_job(job.id)
    assert failed.value.job_id == job.id and "crashed" in str(failed.value)


def test_list_jobs_sends_limit_and_offset_and_reads_the_data_list(client: ClientReplay) -> None:
    job = client.wait_for_job(client.create_job("llm-chat", {"prompt": "listed"}).id)
    assert job.id in [j.id for j in client.list_jobs()]
    assert len(client.list_jobs(limit=1)) == 1
    assert client.sent[-1].url.params["limit"] == "1" and client.sent[-1].url.params["offset"] == "0"


def test_cancel_job_answers_the_job(client: ClientReplay, net: ModelNetwork) -> None:
    job = client.create_job("llm-chat", {"prompt": "park"})
    cancelled = client.cancel_job(job.id)
    assert cancelled.id == job.id
    assert client.wait_for_job(job.id).status == "cancelled"


def test_stream_job_reads_tokens_then_done_with_usage(client: ClientReplay) -> None:
    job = client.create_job("llm-chat", {"prompt": "streamed words here"})
    events = client.stream_job(job.id)
    assert tokens(events) == "streamed words here"
    assert events[-1].type == "done" and events[-1].usage is not None
    assert events[-1].usage.completion_tokens == 3
    assert client.sent[-1].headers["Accept"] == "text/event-stream"


def test_stream_job_reads_an_error_event_as_a_string(client: ClientReplay) -> None:
    events = client.stream_job(client.create_job("llm-chat", {"prompt": "refuse"}).id)
    assert events[-1].type == "error" and events[-1].error == "the model refused the input"


# --- the helpers over jobs -------------------------------------------------------------------------------------


def test_chat_sends_prompt_system_prompt_max_tokens_and_temperature(client: ClientReplay, net: ModelNetwork) -> None:
    result = client.chat("one two three four", system_prompt="be brief", max_tokens=2, temperature=0.5)
    assert result.content == "one two" and result.finish_reason == "stop"
    assert result.usage.completion_tokens == 2
    [ran] = net.host.ran
    assert ran["max_tokens"] == 2 and ran["temperature"] == 0.5
    assert ran["messages"][0] == {"role": "system", "content": "be brief"}


def test_chat_stream_creates_a_job_and_streams_it(client: ClientReplay) -> None:
    events = client.chat_stream("four five")
    assert tokens(events) == "four five" and events[-1].type == "done"


def test_generate_image_reads_a_png_from_the_output_json(client: ClientReplay, net: ModelNetwork) -> None:
    image = client.generate_image(IMAGE)
    assert base64.b64decode(image.image_data).startswith(b"\x89PNG")
    assert (image.image_format, image.width, image.height, image.seed) == ("png", 64, 96, 5)
    assert net.host.ran == [{"prompt": "a red fox", "width": 64, "height": 96, "steps": 2, "guidance_scale": 7.5,
                             "negative_prompt": "blur", "seed": 5}]


def test_batch_creates_one_job_each_and_wait_all_waits_for_them(client: ClientReplay) -> None:
    jobs = client.batch([{"workload": "llm-chat", "input": {"prompt": "six"}},
                         {"workload": "llm-chat", "input": {"prompt": "seven"}}])
    assert [j.output for j in client.wait_all(jobs)] == ["six", "seven"]


# --- server-side batches: the answer itself is the BatchJob / BatchProgress ------------------------------------


def test_submit_batch_reads_a_batch_job_and_wait_for_batch_its_end(client: ClientReplay) -> None:
    batch = client.submit_batch("llm-chat", [{"prompt": "six"}, {"prompt": "seven eight"}], max_parallelism=1,
                                bid_price=0.02)
    assert batch.workload == "llm-chat" and batch.batch.chunk_count == 2 and len(batch.children) == 2
    assert client.sent[-1].content and b'"bid_price":"0.02"' in client.sent[-1].content.replace(b" ", b"")
    ended = client.wait_for_batch(batch.id)
    assert ended.state == "succeeded" and [c.state for c in ended.children] == ["succeeded", "succeeded"]
    progress = client.get_batch_status(batch.id)
    assert progress.child_states == {"succeeded": 2} and progress.merge_strategy == "concat"
    assert client.get_job(batch.id).output == '["six","seven eight"]'


def test_wait_for_batch_raises_for_a_batch_that_failed(client: ClientReplay) -> None:
    batch = client.submit_batch("llm-chat", [{"prompt": "please fail"}, {"prompt": "fine"}], fail_mode="fail_fast")
    with pytest.raises(JobEndedFailed) as failed:
        client.wait_for_batch(batch.id)
    assert failed.value.job_id == batch.id and "fail_fast" in str(failed.value)


def test_the_async_client_batch_methods_make_the_same_exchanges(net: ModelNetwork, url: str) -> None:
    async def calls() -> tuple[str, dict[str, int]]:
        async with AsyncClientReplay(url, net.key) as client:
            batch = await client.submit_batch("llm-chat", [{"prompt": "nine"}], merge_strategy="flatten")
            ended = await client.wait_for_batch(batch.id)
            return ended.state, (await client.get_batch_status(batch.id)).child_states

    assert asyncio.run(calls()) == ("succeeded", {"succeeded": 1})


# --- API keys: string ids, the full key beside `data` when created, 200 with JSON when deleted ------------


def test_list_api_keys_reads_string_ids(client: ClientReplay) -> None:
    keys = client.list_api_keys()
    assert keys and all(isinstance(k.id, str) for k in keys)


def test_create_api_key_answers_the_full_key_beside_data_and_it_works(client: ClientReplay, url: str) -> None:
    key, full = client.create_api_key("reference")
    assert key.name == "reference" and full.startswith(key.prefix)
    with ClientReplay(url, full) as other:
        assert other.get_account().email == "ada@example.org"


def test_delete_api_key_takes_the_string_id_answers_200_with_json_and_the_key_stops_working(
        client: ClientReplay, url: str) -> None:
    key, full = client.create_api_key("short-lived")
    response = client.http.delete(f"/api/v1/api-keys/{key.id}")
    assert response.status_code == 200 and isinstance(response.json(), dict)
    assert key.id not in [k.id for k in client.list_api_keys()]
    with ClientReplay(url, full) as other, pytest.raises(Refused) as refused:
        other.get_account()
    assert refused.value.status == 401


# --- errors, as its clients read them --------------------------------------------------------------------------


def test_errors_carry_a_message_where_it_reads_one(client: ClientReplay, url: str) -> None:
    with pytest.raises(Refused) as missing:
        client.get_job("no-such-job")
    assert missing.value.status == 404 and "no-such-job" in missing.value.message
    with ClientReplay(url, "ak_wrong") as stranger, pytest.raises(Refused) as unauthorized:
        stranger.get_account()
    assert unauthorized.value.status == 401 and unauthorized.value.message
    with pytest.raises(Refused) as invalid:
        client.create_job("", {})
    assert invalid.value.status == 422 and invalid.value.message
    assert invalid.value.errors and "workload" in invalid.value.errors  # its ValidationError.errors, field by field


def test_a_job_beyond_the_credits_is_a_402_with_a_message(tmp_path: Path) -> None:
    broke = a_reference_network(tmp_path, credits_micro=0)
    with serve(broke.app) as url, ClientReplay(url, broke.key) as client, pytest.raises(Refused) as refused:
        client.create_job("llm-chat", {"prompt": "hello"})
    assert refused.value.status == 402 and "credit" in refused.value.message


# --- the AsyncClient ------------------------------------------------------------------------------------------


def test_the_async_client_methods_make_the_same_exchanges(net: ModelNetwork, url: str) -> None:
    async def calls() -> dict[str, Any]:
        async with AsyncClientReplay(url, net.key) as client:
            job = await client.create_job("llm-chat", {"prompt": "async hello"})
            same = (await client.get_job(job.id)).id == job.id
            done = await client.wait_for_job(job.id)
            streamed = await client.stream_job(job.id)
            chat = await client.chat("eight nine", system_prompt="terse", max_tokens=8, temperature=0.0)
            chat_events = await client.chat_stream("ten")
            image = await client.generate_image(IMAGE)
        return {"same": same, "output": done.output, "streamed": tokens(streamed), "chat": chat.content,
                "chat_stream": tokens(chat_events), "png": base64.b64decode(image.image_data)[:4]}

    result = asyncio.run(calls())
    assert result == {"same": True, "output": "async hello", "streamed": "async hello", "chat": "eight nine",
                      "chat_stream": "ten", "png": b"\x89PNG"}


# --- the package itself, where it can be installed -------------------------------------------------------------


@pytest.fixture(scope="module")
def reference_report(network: tuple[ModelNetwork, str],
                     tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    python, why = reference_sdk.reference_python()
    if python is None:
        pytest.skip(why)
    net, url = network
    return reference_sdk.drive(python, url, net.key, tmp_path_factory.mktemp("reference-drive"))


EXPECTED: dict[str, Any] = {
    "get_account": lambda v: isinstance(v["id"], str) and v["email"] == "ada@example.org",
    "list_workloads": lambda v: {"llm-chat", "sd-diffusers"} <= set(v),
    "get_workload": lambda v: v == "container",
    "create_job": lambda v: isinstance(v["id"], str),
    "get_job": lambda v: v is True,
    "wait_for_job": lambda v: v == "hello reference sdk",
    "list_jobs": lambda v: v is True,
    "stream_job": lambda v: [e[0] for e in v][-1] == "done" and "".join(e[1] or "" for e in v[:-1])
    == "hello reference sdk",
    "cancel_job": lambda v: v in {"cancelled", "running", "queued", "pending"},
    "chat": lambda v: v == "one two three",
    "chat_stream": lambda v: v[-1][0] == "done",
    "generate_image": lambda v: v == {"png": True, "format": "png", "width": 64, "height": 96, "seed": 5,
                                      "job_id": "str"},
    "batch": lambda v: v == 2,
    "wait_all": lambda v: v == ["six", "seven"],
    "list_api_keys": lambda v: v and set(v) == {"str"},
    "create_api_key": lambda v: v == {"name": "reference", "full_key_works": True},
    "delete_api_key": lambda v: v == [None, False],
    "errors": lambda v: v == ["NotFoundError", "AuthenticationError"],
    "close": lambda v: v is None,
    "async create_job": lambda v: isinstance(v["id"], str),
    "async get_job": lambda v: v is True,
    "async wait_for_job": lambda v: v == "async hi",
    "async stream_job": lambda v: v[-1][0] == "done",
    "async chat": lambda v: v == "eight nine",
    "async chat_stream": lambda v: v[-1][0] == "done",
    "async generate_image": lambda v: v["png"] is True,
    "async close": lambda v: v is None,
    "submit_batch": lambda v: v["chunk_count"] == 2 and v["children"] == 2 and isinstance(v["id"], str),
    "get_batch_status": lambda v: v == 2,
    "wait_for_batch": lambda v: v == {"state": "succeeded", "output": ["ten", "eleven"]},
    "async submit_batch": lambda v: isinstance(v, str),
    "async get_batch_status": lambda v: v == 1,
    "async wait_for_batch": lambda v: v == "succeeded",
}


@pytest.mark.parametrize("method", list(EXPECTED))
def test_the_reference_sdk_itself_runs_each_method(reference_report: dict[str, Any], method: str) -> None:
    outcome = reference_report.get(method)
    assert outcome is not None, f"{method} was not reached"
    assert "ok" in outcome, outcome["raised"]
    assert EXPECTED[method](outcome["ok"]), outcome["ok"]

