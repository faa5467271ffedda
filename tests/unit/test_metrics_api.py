"""`GET /metrics` and `GET /api/v1/status` on the real app, dispatcher, relay, ledger and placement with scripted
hosts: after a few jobs the exposition parses and shows them by workload and outcome, their first tokens, the
requests by route template, the fleet and the queue; the status numbers say the same, without a key; and two
replicas of the API show one network."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from model_network import ModelNetwork, a_model_network
from prometheus_client.parser import text_string_to_metric_families

from archipelag.serve.app import build_api

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


@pytest.fixture
def net(tmp_path: Path) -> ModelNetwork:
    return a_model_network(tmp_path)


@pytest.fixture
def api(net: ModelNetwork) -> Iterator[TestClient]:
    with net.client() as client:
        yield client


def chat(prompt: str) -> dict[str, object]:
    return {"model": "smollm2-135m-instruct", "messages": [{"role": "user", "content": prompt}]}


def scrape(client: TestClient) -> Samples:
    response = client.get("/metrics", headers={"Authorization": ""})
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "text/plain; version=0.0.4; charset=utf-8"
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(response.text) for s in family.samples}


def value(found: Samples, name: str, **labels: str) -> float:
    return found.get((name, frozenset(labels.items())), 0.0)


def run_a_few_jobs(api: TestClient) -> str:
    for prompt, answer in (("hello there world", 200), ("tell me more", 200), ("please fail now", 500)):
        assert api.post("/v1/chat/completions", json=chat(prompt)).status_code == answer  # 500: the model crashed
    image = api.post("/v1/images/generations", json={"prompt": "a red fox", "size": "64x64"})
    assert image.status_code == 200, image.text
    job = api.post("/api/v1/jobs", json={"workload": "llm-chat", "input": {
        "messages": [{"role": "user", "content": "one more"}], "max_tokens": 16}})
    assert job.status_code in {200, 201}, job.text
    job_id = str(job.json()["data"]["id"])
    deadline = time.monotonic() + 5
    while api.get(f"/api/v1/jobs/{job_id}").json()["data"]["status"] != "completed":
        assert time.monotonic() < deadline, "the job did not complete"
        time.sleep(0.02)
    assert api.get("/no/such/page").status_code == 404
    return job_id


def test_metrics_show_jobs_first_tokens_requests_fleet_and_queue(api: TestClient) -> None:
    run_a_few_jobs(api)
    found = scrape(api)
    assert value(found, "archipelag_jobs_total", workload="llm-chat", outcome="succeeded") == 3
    assert value(found, "archipelag_jobs_total", workload="llm-chat", outcome="failed") == 1
    assert value(found, "archipelag_jobs_total", workload="sd-diffusers", outcome="succeeded") == 1
    assert value(found, "archipelag_jobs_submitted_total", workload="llm-chat") == 4
    assert value(found, "archipelag_time_to_first_token_seconds_count", workload="llm-chat") == 4
    assert value(found, "archipelag_time_to_first_token_seconds_bucket", workload="llm-chat", le="+Inf") == 4
    assert value(found, "archipelag_time_to_first_token_seconds_count", workload="sd-diffusers") == 0
    assert value(found, "archipelag_time_to_first_event_seconds_count", workload="sd-diffusers") == 1
    assert value(found, "archipelag_placement_decision_seconds_count", outcome="ranked") >= 5
    assert value(found, "archipelag_hosts", status="online", region="eu-west") == 1
    assert value(found, "archipelag_queue_depth") == 0
    assert value(found, "archipelag_ledger_transactions_total", kind="reserve") == 5
    assert value(found, "archipelag_ledger_transactions_total", kind="settle") == 4
    assert value(found, "archipelag_ledger_transactions_total", kind="refund") == 1
    requests = {labels: n for (name, labels), n in found.items() if name == "archipelag_http_requests_total"}
    assert requests[frozenset({("method", "POST"), ("route", "/v1/chat/completions"), ("status", "200")})] == 2
    assert requests[frozenset({("method", "POST"), ("route", "/v1/chat/completions"), ("status", "500")})] == 1
    assert requests[frozenset({("method", "GET"), ("route", "/api/v1/jobs/{job_id}"), ("status", "200")})] >= 1
    assert requests[frozenset({("method", "GET"), ("route", "unmatched"), ("status", "404")})] == 1
    routes = {dict(labels)["route"] for labels in requests}
    assert not any(route.startswith("/api/v1/jobs/") and "{" not in route for route in routes)  # never a raw path


def test_status_gives_the_public_numbers_without_a_key(api: TestClient) -> None:
    run_a_few_jobs(api)
    response = api.get("/api/v1/status", headers={"Authorization": ""})
    assert response.status_code == 200, response.text
    status = response.json()["data"]
    assert set(status) == {"hosts_online", "hosts_online_by_region", "jobs_per_minute", "median_ttft_ms",
                           "queue_depth", "updated_at"}
    assert status["hosts_online"] == 1 and status["hosts_online_by_region"] == {"eu-west": 1}
    assert status["jobs_per_minute"] == pytest.approx(5 / 5)
    assert isinstance(status["median_ttft_ms"], float) and 0 < status["median_ttft_ms"] < 5000
    assert status["queue_depth"] == 0
    assert datetime.fromisoformat(status["updated_at"]).tzinfo is not None


def test_status_before_any_job_has_no_median(net: ModelNetwork) -> None:
    with TestClient(net.app) as client:
        status = client.get("/api/v1/status").json()["data"]
    assert status["jobs_per_minute"] == 0 and status["median_ttft_ms"] is None and status["queue_depth"] == 0


def test_status_is_in_the_schema_and_metrics_is_not(net: ModelNetwork) -> None:
    paths = net.app.openapi()["paths"]
    assert "/api/v1/status" in paths and "/metrics" not in paths


def test_any_replica_shows_the_requests_every_replica_answered(net: ModelNetwork) -> None:
    other = build_api(net.services)  # a second replica of the same network
    with TestClient(net.app) as first, TestClient(other) as second:
        for _ in range(3):
            assert first.get("/health").status_code == 200
        deadline = time.monotonic() + 5
        while True:  # the first replica reports its counts within about a second
            counted = value(scrape(second), "archipelag_http_requests_total", method="GET", route="/health",
                            status="200")
            if counted == 3 or time.monotonic() > deadline:
                break
            time.sleep(0.3)
    assert counted == 3
