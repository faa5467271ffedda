"""The sync Client against the fake network over a real socket: envelopes, errors, streams, get/wait."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest
from fake_api import KEY, READ_ONLY_KEY, FakeNetwork, build_app, free_port_url
from netutil import serve

from archipelag import errors
from archipelag.sdk import Client, JobFailed, JobRef, JobState, Page, Unreachable, WaitTimeout

NET = FakeNetwork()


@pytest.fixture(scope="module")
def url() -> Iterator[str]:
    with serve(build_app(NET)) as base:
        yield base


@pytest.fixture
def client(url: str) -> Iterator[Client]:
    NET.__init__()  # type: ignore[misc]
    with Client(url, api_key=KEY, timeout_s=5) as c:
        yield c


def finish_later(job_id: str, text: str, after_s: float = 0.1) -> threading.Timer:
    script = [{"type": "token", "content": text}, {"type": "done", "usage": {"completion_tokens": 1}}]
    timer = threading.Timer(after_s, NET.finish, args=(job_id, script))
    timer.start()
    return timer


# --- envelopes and models ---------------------------------------------------------------------------


def test_health_answers_without_a_key(url: str) -> None:
    with Client(url, api_key="") as anonymous:
        assert anonymous.health()["status"] == "ok"


def test_create_job_unwraps_the_data_envelope_into_a_job(client: Client) -> None:
    job = client.create_job("echo", {"text": "hi there"}, priority=3, region="eu-west")
    assert job.status is JobState.COMPLETED and job.is_terminal
    assert job.output == "hi there"
    assert job.usage.total_tokens == 3 and job.usage.credits_used == 0.25
    assert job.created_at is not None and job.created_at.year == 2025
    assert client.get_job(job.id) == job


def test_list_jobs_returns_a_page_with_the_meta(client: Client) -> None:
    ids = [client.create_job("echo", {"text": str(i)}).id for i in range(3)]
    page = client.list_jobs(limit=2, offset=1)
    assert isinstance(page, Page)
    assert (page.total, page.limit, page.offset) == (3, 2, 1)
    assert [job.id for job in page] == [ids[1], ids[0]]
    assert len(page) == 2 and not page.has_more


def test_models_keep_fields_a_newer_server_adds(client: Client) -> None:
    image = client.workload("image")
    assert image.model_extra == {"a_future_field": "kept"}
    assert [w.slug for w in client.workloads()] == ["echo", "image"]


def test_resources_parse_into_typed_models(client: Client) -> None:
    assert client.account().credits == 99.5
    hosts = client.hosts()
    assert [h.id for h in hosts] == ["host-a1", "host-b2"]
    assert hosts.items[1].capabilities.gpu_vram_mb == 24576
    assert client.host("host-a1").capabilities.runtimes == ("docker", "wasm")
    karma = client.host_karma("host-a1")
    assert karma.karma_score == 0.9 and karma.events[0]["kind"] == "job_completed"


def test_api_keys_show_the_full_key_only_when_created(client: Client) -> None:
    created = client.create_api_key("ci", ["read"])
    assert created.key == "ak_new1secret" and created.scopes == ("read",)
    listed = client.api_keys().items
    assert [k.id for k in listed] == [created.id] and listed[0].key is None
    assert client.revoke_api_key(created.id).name == "ci"
    assert len(client.api_keys()) == 0


def test_structured_output_decodes_as_json(client: Client) -> None:
    job = client.create_job("image", {"prompt": "a cat"})
    assert job.output_json()["width"] == 64


def test_cancel_returns_the_cancelled_job(client: Client) -> None:
    job = client.create_job("slow", {})
    assert job.status is JobState.RUNNING
    assert client.cancel_job(job.id).status is JobState.CANCELLED


def test_api_key_defaults_to_the_environment_when_the_client_is_built(
        url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ARCHIPELAG_API_KEY", KEY)
    with Client(url) as from_env:
        assert from_env.account().id == "1"
    monkeypatch.delenv("ARCHIPELAG_API_KEY")
    with Client(url) as without, pytest.raises(errors.Unauthorized):
        without.account()


# --- error mapping ----------------------------------------------------------------------------------


def test_bad_key_is_unauthorized(url: str) -> None:
    with Client(url, api_key="ak_wrong") as bad, pytest.raises(errors.Unauthorized) as caught:
        bad.list_jobs()
    assert caught.value.message == "a valid API key is required"
    assert caught.value.details["status_code"] == 401


def test_short_balance_is_payment_required_with_amounts(client: Client) -> None:
    with pytest.raises(errors.PaymentRequired) as caught:
        client.create_job("pricey", {})
    assert caught.value.details["required"] == 5.0 and caught.value.details["available"] == 1.0


def test_read_only_key_cannot_write(url: str) -> None:
    with Client(url, api_key=READ_ONLY_KEY) as reader, pytest.raises(errors.Forbidden):
        reader.create_job("echo", {})


def test_unknown_things_are_not_found(client: Client) -> None:
    with pytest.raises(errors.NotFound):
        client.get_job("nope")
    with pytest.raises(errors.NotFound):
        client.host("host-zz")
    with pytest.raises(errors.NotFound):
        list(client.stream("nope"))


def test_invalid_request_is_validation_failed_with_the_errors_map(client: Client) -> None:
    with pytest.raises(errors.ValidationFailed) as caught:
        client.list_jobs(limit=0)
    assert "limit" in caught.value.details["errors"]


def test_rate_limit_carries_retry_after(client: Client) -> None:
    NET.rate_limited = True
    with pytest.raises(errors.RateLimited) as caught:
        client.account()
    assert caught.value.details["retry_after"] == 7.0


def test_no_capacity_is_503(client: Client) -> None:
    with pytest.raises(errors.NoCapacity):
        client.submit("nocap", {})


def test_nothing_listening_says_how_to_start_the_network() -> None:
    url = free_port_url()
    with Client(url, api_key=KEY) as lonely, pytest.raises(Unreachable) as caught:
        lonely.health()
    assert str(caught.value) == f"cannot reach the network at {url}: is `make up` running?"
    assert isinstance(caught.value, errors.ArchipelagError)


# --- streams ----------------------------------------------------------------------------------------


def test_stream_replays_a_finished_job_and_stops_at_done(client: Client) -> None:
    job = client.create_job("echo", {"text": "one two three"})
    events = list(client.stream(job.id))
    assert [e["type"] for e in events] == ["status", "token", "token", "token", "done"]
    assert "".join(e["content"] for e in events if e["type"] == "token") == "one two three"
    assert [e["seq"] for e in events] == list(range(5))


def test_stream_follows_a_running_job(client: Client) -> None:
    job = client.create_job("slow", {})
    finish_later(job.id, "late", after_s=0.1)
    events = list(client.stream(job.id))
    assert events[-1]["type"] == "done" and events[0]["content"] == "late"


def test_stream_of_a_failed_job_ends_with_its_error_event(client: Client) -> None:
    events = list(client.submit("broken", {}))
    assert events[-1] == {"type": "error", "error": "the workload crashed", "code": "workload_error",
                          "seq": 1}


# --- wait_job, submit, get, wait ---------------------------------------------------------------------


def test_wait_job_returns_once_the_job_is_terminal(client: Client) -> None:
    job = client.create_job("slow", {})
    finish_later(job.id, "ok")
    finished = client.wait_job(job.id, timeout=5)
    assert finished.status is JobState.COMPLETED and finished.output == "ok"


def test_wait_job_times_out_without_touching_the_job(client: Client) -> None:
    job = client.create_job("slow", {})
    started = time.monotonic()
    with pytest.raises(WaitTimeout) as caught:
        client.wait_job(job.id, timeout=0.2)
    assert time.monotonic() - started < 2
    assert isinstance(caught.value, TimeoutError) and caught.value.details["status"] == "running"
    assert client.get_job(job.id).status is JobState.RUNNING


def test_submit_returns_a_ref_and_get_returns_its_output(client: Client) -> None:
    ref = client.submit("echo", {"text": "hello world"})
    assert isinstance(ref, JobRef) and ref == client.ref(ref.job_id)
    assert client.get(ref) == "hello world"
    assert ref.result() == "hello world"
    assert [e["type"] for e in ref.stream()][-1] == "done"


def test_get_of_a_list_returns_outputs_in_order(client: Client) -> None:
    refs = [client.submit("echo", {"text": word}) for word in ("a", "b", "c")]
    slow = client.submit("slow", {})
    finish_later(slow.job_id, "d")
    assert client.get([*refs, slow], timeout=5) == ["a", "b", "c", "d"]


def test_get_of_a_failed_job_raises_job_failed_with_status_and_error(client: Client) -> None:
    ref = client.submit("broken", {})
    with pytest.raises(JobFailed) as caught:
        client.get(ref)
    assert caught.value.status == "failed" and caught.value.error == "the workload crashed"
    assert caught.value.job_id == ref.job_id


def test_get_of_a_cancelled_job_raises_job_failed(client: Client) -> None:
    ref = client.submit("slow", {})
    ref.cancel()
    with pytest.raises(JobFailed) as caught:
        client.get(ref)
    assert caught.value.status == "cancelled"


def test_wait_splits_ready_from_not_ready_like_ray(client: Client) -> None:
    slow = client.submit("slow", {})
    quick = client.submit("echo", {"text": "x"})
    ready, not_ready = client.wait([slow, quick], num_returns=1, timeout=2)
    assert ready == [quick] and not_ready == [slow]


def test_wait_times_out_with_what_is_ready(client: Client) -> None:
    slow = client.submit("slow", {})
    quick = client.submit("echo", {"text": "x"})
    ready, not_ready = client.wait([slow, quick], num_returns=2, timeout=0.2)
    assert ready == [quick] and not_ready == [slow]


def test_wait_blocks_until_enough_are_ready(client: Client) -> None:
    refs = [client.submit("slow", {}) for _ in range(3)]
    finish_later(refs[2].job_id, "z", after_s=0.05)
    finish_later(refs[0].job_id, "x", after_s=0.15)
    ready, not_ready = client.wait(refs, num_returns=2, timeout=5)
    assert ready == [refs[0], refs[2]] and not_ready == [refs[1]]


def test_wait_rejects_more_returns_than_refs(client: Client) -> None:
    with pytest.raises(ValueError):
        client.wait([client.submit("echo", {})], num_returns=2)
