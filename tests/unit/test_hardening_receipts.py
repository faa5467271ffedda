"""What hosts report is checked before anything is charged or stored (issue 10): usage must be whole counts
within what the request allowed, events must be the protocol and plain JSON, and a job's events are bounded by
its output budget. A host that reports what cannot be true fails the job with ``bad_receipt``: the user is
refunded, the host loses karma, and the user's job list still renders. The attacks run as scripted hosts behind
the real API, JobService and ledger."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from model_network import HOST, ModelNetwork, a_model_network
from netutil import eventually

from archipelag.errors import BadReceipt
from archipelag.ids import JobId
from archipelag.jobs.relay import Budget, JobLog
from archipelag.ledger.karma_rules import KarmaKind
from archipelag.lifecycle import TERMINAL_JOB_STATES, JobStatus
from archipelag.protocol import checked_usage, received
from archipelag.runtimes.base import JobSpec

CREDITS = 1_000_000
PRICE = 10_000  # the model network's price per job


@pytest.fixture
def net(tmp_path: Path) -> ModelNetwork:
    return a_model_network(tmp_path, credits_micro=CREDITS)


@pytest.fixture
def api(net: ModelNetwork) -> Iterator[TestClient]:
    with net.client() as client:
        yield client


def host_says(net: ModelNetwork, monkeypatch: pytest.MonkeyPatch, events: list[Any]) -> None:
    """The scripted host answers every job with ``events``, one batch each, whatever they are."""
    async def run_batches(spec: JobSpec) -> AsyncIterator[list[Any]]:
        net.host.ran.append(dict(spec.input))
        yield [{"type": "status", "message": "loading model"}]
        for event in events:
            yield [event]

    monkeypatch.setattr(net.host, "run_batches", run_batches)


def run_chat(api: TestClient, net: ModelNetwork, max_tokens: int = 8) -> Any:
    response = api.post("/api/v1/jobs", json={"workload": "llm-chat", "input": {
        "messages": [{"role": "user", "content": "one two three"}], "max_tokens": max_tokens}})
    assert response.status_code == 201, response.text
    job_id = response.json()["data"]["id"]
    eventually(lambda: net.job(job_id).status in TERMINAL_JOB_STATES, timeout_s=5, interval_s=0.02)
    return net.job(job_id)


def failed_for_the_host(api: TestClient, net: ModelNetwork, job: Any) -> None:
    """The job failed with bad_receipt, the user paid nothing, the host lost karma, the job list renders."""
    assert job.status is JobStatus.FAILED
    stored = net.ledger.stored_output_events(job.id)
    assert stored[-1]["type"] == "error" and stored[-1]["code"] == "bad_receipt"
    assert job.credits_used_micro == 0 and job.usage in (None, {})
    assert net.ledger.balance_micro(net.account_id) == CREDITS
    assert [e.kind for e in net.ledger.karma_events(HOST)] == [KarmaKind.BAD_RECEIPT]
    listing = api.get("/api/v1/jobs")
    assert listing.status_code == 200, listing.text
    view = next(j for j in listing.json()["data"] if j["id"] == job.id)
    assert view["status"] == "failed" and view["usage"]["credits_used"] == 0
    assert api.get(f"/api/v1/jobs/{job.id}").status_code == 200
    stream = api.get(f"/api/v1/jobs/{job.id}/stream")
    assert stream.status_code == 200 and '"code":"bad_receipt"' in stream.text


def tokens(*pieces: str) -> list[dict[str, Any]]:
    return [{"type": "token", "content": p} for p in pieces]


# --- the attack: usage that cannot be true ------------------------------------------------------------


@pytest.mark.parametrize("completion_tokens", ["lots", -5, 1e9, 2.5, 3.0, True, None, [1], 10**9, 9, 10**400])
def test_a_host_that_reports_impossible_usage_fails_the_job_and_the_user_pays_nothing(
        api: TestClient, net: ModelNetwork, monkeypatch: pytest.MonkeyPatch, completion_tokens: Any) -> None:
    host_says(net, monkeypatch, [*tokens("one", " two"), {"type": "done", "usage": {
        "prompt_tokens": 3, "completion_tokens": completion_tokens}}])
    failed_for_the_host(api, net, run_chat(api, net, max_tokens=8))  # 9 and 10**9 are past max_tokens


@pytest.mark.parametrize("usage", [{"prompt_tokens": 10**12, "completion_tokens": 2}, "lots", [1, 2],
                                   {"prompt_tokens": -1}])
def test_prompt_tokens_and_the_shape_of_usage_are_checked_too(api: TestClient, net: ModelNetwork,
                                                              monkeypatch: pytest.MonkeyPatch, usage: Any) -> None:
    host_says(net, monkeypatch, [*tokens("one"), {"type": "done", "usage": usage}])
    failed_for_the_host(api, net, run_chat(api, net))


def test_believable_usage_is_charged_and_stored_as_counts(api: TestClient, net: ModelNetwork,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    host_says(net, monkeypatch, [*tokens("one", " two"), {"type": "done", "usage": {
        "prompt_tokens": 3, "completion_tokens": 8, "total_tokens": 11, "gpu_joules": 5.5}}])
    job = run_chat(api, net, max_tokens=8)
    assert job.status is JobStatus.SUCCEEDED and job.output == "one two"
    assert job.usage == {"prompt_tokens": 3, "completion_tokens": 8}  # what is not a count is not kept
    assert net.ledger.balance_micro(net.account_id) == CREDITS - PRICE
    view = api.get(f"/api/v1/jobs/{job.id}").json()["data"]
    assert view["usage"] == {"prompt_tokens": 3, "completion_tokens": 8, "total_tokens": 11,
                             "credits_used": PRICE / 1_000_000}


# --- the attack: events that are not the protocol -------------------------------------------------------


@pytest.mark.parametrize("event", [
    "not an event", {"content": "no type"}, {"type": "token", "content": 5}, {"type": "telepathy"},
    {"type": "token", "content": "x", 7: "a key that is no string"},
    {"type": "token", "content": "x", "extra": float("nan")},
    {"type": "token", "content": "x", "extra": 10**400},
    {"type": "done", "seed": 2**80},
    {"type": "done", "output": {"a": float("inf")}},
    {"type": "done", "output": {1, 2}},
    {"type": "progress", "step": 1.5, "total": 2},
])
def test_a_host_that_sends_what_is_not_the_protocol_fails_the_job_for_itself(
        api: TestClient, net: ModelNetwork, monkeypatch: pytest.MonkeyPatch, event: Any) -> None:
    host_says(net, monkeypatch, [*tokens("one"), event, {"type": "done"}])
    failed_for_the_host(api, net, run_chat(api, net))


# --- the attack: more output than the budget ------------------------------------------------------------


def test_a_host_that_sends_more_than_the_output_budget_fails_the_job_and_storage_stays_bounded(
        api: TestClient, net: ModelNetwork, monkeypatch: pytest.MonkeyPatch) -> None:
    budget = 2_000
    for tier in (net.services.settings.tiers.restricted, net.services.settings.tiers.standard,
                 net.services.settings.tiers.elevated):
        tier.output_bytes = budget  # the jobs service reads the same settings
    host_says(net, monkeypatch, [*tokens(*["x" * 1000] * 100), {"type": "done"}])
    job = run_chat(api, net)
    failed_for_the_host(api, net, job)
    stored = net.ledger.stored_output_events(job.id)
    held = sum(len(e.get("content", "")) for e in stored)
    assert 0 < held <= budget + 4096  # the ticket's budget and the room for the host's own events
    assert job.output is None or len(job.output) <= budget + 4096


def test_output_within_the_budget_is_all_kept(api: TestClient, net: ModelNetwork,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    host_says(net, monkeypatch, [*tokens(*["x" * 1000] * 100), {"type": "done"}])
    job = run_chat(api, net)
    assert job.status is JobStatus.SUCCEEDED and job.output == "x" * 100_000


# --- a row stored before usage was checked ----------------------------------------------------------------


def test_the_job_list_renders_a_row_whose_stored_usage_is_garbage(api: TestClient, net: ModelNetwork) -> None:
    job = net.ledger.create_job(net.account_id, "llm-chat", {"prompt": "hi"}, None, 0, 0)
    net.ledger.finish(job.id, JobStatus.FAILED, usage={"prompt_tokens": "lots", "completion_tokens": -5})
    listing = api.get("/api/v1/jobs")
    assert listing.status_code == 200, listing.text
    assert listing.json()["data"][0]["usage"] == {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0,
                                                  "credits_used": 0}


# --- the rules on their own -------------------------------------------------------------------------------


@pytest.mark.parametrize("value", ["lots", -5, 1e9, 2.5, 2.0, True, None, 2**53 + 1])
def test_a_usage_count_must_be_a_whole_number_of_at_least_zero(value: Any) -> None:
    with pytest.raises(BadReceipt, match="completion_tokens"):
        checked_usage({"completion_tokens": value})


def test_usage_within_the_requests_limits_is_kept_as_counts() -> None:
    assert checked_usage({"prompt_tokens": 0, "completion_tokens": 8, "x": "y"}, 8, 100) == {
        "prompt_tokens": 0, "completion_tokens": 8}
    assert checked_usage(None) == {}
    with pytest.raises(BadReceipt, match="past the 8"):
        checked_usage({"completion_tokens": 9}, 8)
    with pytest.raises(BadReceipt, match="past the 100"):
        checked_usage({"prompt_tokens": 101}, 8, 100)


def test_a_received_event_loses_its_seq_and_is_sized_by_its_strings() -> None:
    event, size = received({"type": "token", "content": "é" * 10, "seq": 99})
    assert event == {"type": "token", "content": "é" * 10}
    assert size >= 20  # UTF-8 bytes, not characters


def test_a_log_takes_events_up_to_its_budget_then_refuses() -> None:
    log = JobLog(JobId("j"))
    log.begin(1, Budget(output_bytes=200, events=1000))
    log.publish(1, tokens("a" * 50))
    with pytest.raises(BadReceipt, match="200 bytes"):
        log.publish(1, tokens("b" * 50, "c" * 50, "d" * 50))
    assert [e["content"][0] for e in log.events] == ["a", "b"]  # what came before the breach is kept
    assert log.size <= 200


def test_a_resumed_log_counts_its_checkpoint_against_the_budget() -> None:
    first = JobLog(JobId("j"))
    first.begin(1, Budget(output_bytes=300, events=1000))
    first.publish(1, tokens("a" * 100, "b" * 100))
    resumed = JobLog(JobId("j"), first.events)
    assert resumed.size == first.size
    resumed.begin(2, Budget(output_bytes=300, events=1000))
    resumed.publish(2, tokens("a" * 100, "b" * 100))  # said again by the retry: not counted twice
    with pytest.raises(BadReceipt):
        resumed.publish(2, tokens("c" * 100))


def test_a_log_refuses_more_events_than_its_budget_however_small_each_is() -> None:
    log = JobLog(JobId("j"))
    log.begin(1, Budget(output_bytes=1_000_000, events=5))
    with pytest.raises(BadReceipt, match="5 events"):
        log.publish(1, tokens(*"abcdefgh"))
    assert len(log.events) == 5  # what came before the breach is kept


def test_a_chat_budget_allows_a_token_per_event_and_no_flood() -> None:
    from model_network import CHAT

    from archipelag.jobs.dispatcher import Ticket
    from archipelag.settings import Settings

    ticket = Ticket(JobId("j"), CHAT, {"prompt": "hi", "max_tokens": 100}, Settings().limits_for(CHAT.tier),
                    region=None, priority=0, attempt=1, log=JobLog(JobId("j")))
    assert 100 < ticket.budget.events < 1000
