"""The SDK's chat and images (sync and async) against the real API app with scripted hosts, over a socket."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from model_network import ModelNetwork, a_model_network, serve

from archipelag import errors
from archipelag.lifecycle import JobStatus
from archipelag.sdk import AsyncClient, ChatResult, Client, JobFailed, Usage


@pytest.fixture
def net(tmp_path: Path) -> ModelNetwork:
    return a_model_network(tmp_path)


@pytest.fixture
def url(net: ModelNetwork) -> Iterator[str]:
    with serve(net.app) as base:
        yield base


@pytest.fixture
def client(url: str, net: ModelNetwork) -> Iterator[Client]:
    with Client(url, api_key=net.key, timeout_s=5) as c:
        yield c


def eventually(check: Callable[[], bool], timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, "the condition did not come true in time"
        time.sleep(0.02)


def test_chat_returns_the_whole_answer_with_usage_and_its_job(client: Client, net: ModelNetwork) -> None:
    result = client.chat("hello from the sdk", system="be kind", max_tokens=10, seed=3)
    assert isinstance(result, ChatResult)
    assert result.content == "hello from the sdk" and result.finish_reason == "stop" and result.seed == 3
    assert result.usage == Usage(prompt_tokens=6, completion_tokens=4, total_tokens=10)
    assert result.model == "smollm2-135m-instruct"
    assert client.get_job(str(result.job_id)).output == "hello from the sdk"
    assert net.host.ran[0]["messages"] == [{"role": "system", "content": "be kind"},
                                           {"role": "user", "content": "hello from the sdk"}]
    assert net.host.ran[0]["max_tokens"] == 10 and net.host.ran[0]["seed"] == 3


def test_chat_takes_a_conversation_and_more_openai_parameters(client: Client, net: ModelNetwork) -> None:
    conversation = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"},
                    {"role": "user", "content": "one two three"}]
    result = client.chat(conversation, model="smollm2-135m-instruct", max_tokens=2, top_p=0.5, stop=["x"])
    assert result.content == "one two" and result.finish_reason == "length"
    assert net.host.ran[0]["messages"] == conversation
    assert (net.host.ran[0]["top_p"], net.host.ran[0]["stop"]) == (0.5, ["x"])


def test_chat_stream_yields_pieces_then_knows_the_usage(client: Client) -> None:
    stream = client.chat_stream("a b c")
    assert stream.usage is None
    assert list(stream) == ["a", " b", " c"]
    assert stream.content == "a b c" and stream.finish_reason == "stop"
    assert stream.usage == Usage(prompt_tokens=3, completion_tokens=3, total_tokens=6)
    assert stream.job_id is not None and client.get_job(stream.job_id).workload_slug == "llm-chat"
    assert stream.result().content == "a b c"


def test_closing_a_chat_stream_early_cancels_its_job(client: Client, net: ModelNetwork) -> None:
    with client.chat_stream("x hang") as stream:
        assert next(stream) == "x"
    job_id = stream.job_id
    assert job_id is not None
    eventually(lambda: net.job(job_id).status == JobStatus.CANCELLED)
    # Its host is told to stop it, maybe twice: a cancel that reaches the host while it is still admitting the job
    # is sent again once the host starts it (jobs/dispatcher.py), as the first may have come before the host knew it.
    assert set(net.host.cancelled) == {job_id}


def test_a_failure_mid_stream_raises_job_failed_after_the_first_pieces(client: Client) -> None:
    stream = client.chat_stream("x fail")
    assert next(stream) == "x"
    with pytest.raises(JobFailed, match="the model crashed") as failed:
        next(stream)
    assert failed.value.job_id == stream.job_id and failed.value.status == "failed"


def test_server_errors_raise_the_sdk_error_tree(client: Client, tmp_path: Path) -> None:
    with pytest.raises(errors.NotFound, match="gpt-4o"):
        client.chat("hi", model="gpt-4o")
    with pytest.raises(errors.ValidationFailed) as invalid:
        list(client.chat_stream("hi", max_tokens=5000))
    assert invalid.value.details["errors"] == {"max_tokens": "must be between 1 and 4096, not 5000"}
    with pytest.raises(errors.WorkloadError, match="refused"):
        client.chat("refuse")
    with pytest.raises(errors.NoCapacity, match="GPU memory"):
        client.generate_image("x", model="sdxl")


def test_generate_image_reports_progress_and_saves_the_png(client: Client, net: ModelNetwork,
                                                           tmp_path: Path) -> None:
    steps: list[tuple[int, int]] = []
    out = tmp_path / "fox.png"
    image = client.generate_image("a fox", out=out, on_progress=lambda s, t: steps.append((s, t)), steps=3,
                                  seed=9, size="64x64")
    assert steps == [(1, 3), (2, 3), (3, 3)]
    assert image.png.startswith(b"\x89PNG") and out.read_bytes() == image.png and image.path == out
    assert (image.seed, image.width, image.height) == (9, 64, 64)
    assert image.job_id is not None and net.job(image.job_id).workload_slug == "sd-diffusers"


def test_generate_image_without_out_keeps_the_bytes_only(client: Client) -> None:
    image = client.generate_image("a fox", model="sd-tiny")
    assert image.path is None and image.png.startswith(b"\x89PNG") and image.seed == 7


def test_the_async_client_chats_streams_and_draws(url: str, net: ModelNetwork, tmp_path: Path) -> None:
    async def scenario() -> None:
        async with AsyncClient(url, api_key=net.key, timeout_s=5) as client:
            assert (await client.chat("async hello")).content == "async hello"
            stream = client.chat_stream("p q")
            assert [piece async for piece in stream] == ["p", " q"]
            assert stream.usage is not None and stream.usage.completion_tokens == 2
            steps: list[int] = []
            image = await client.generate_image("fox", out=tmp_path / "a.png", steps=2,
                                                on_progress=lambda s, _: steps.append(s))
            assert steps == [1, 2] and (tmp_path / "a.png").read_bytes() == image.png
            async with client.chat_stream("y hang") as early:
                assert await anext(early) == "y"
            assert early.job_id is not None
            with pytest.raises(errors.NotFound):
                await client.chat("hi", model="nope")

    asyncio.run(scenario())
    eventually(lambda: bool(net.host.cancelled))
