"""The network's metrics without Ray or the app: what the jobs service records (first event, first token, ends,
placement, the fleet, replicas' request counts), the status numbers over their windows, the request counter
middleware's labels, and a replica's shared answers."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
from builders import a_host
from fastapi import FastAPI, Request
from prometheus_client.parser import text_string_to_metric_families
from starlette.responses import PlainTextResponse

from archipelag.errors import NoCapacity
from archipelag.ids import HostId, JobId
from archipelag.lifecycle import HostStatus, JobStatus
from archipelag.metrics.network import TTFT_SAMPLES, NetworkMetrics
from archipelag.metrics.placement import MeteredPlacement
from archipelag.metrics.requests import RequestCounter, RequestTally
from archipelag.placement.scoring import HostSnapshot, JobRequest
from archipelag.serve.api_metrics import _Shared

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]
WHEN = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def samples(text: str) -> Samples:
    """Every sample of an exposition, by name and labels (the text must parse as Prometheus' format)."""
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def value(found: Samples, name: str, **labels: str) -> float:
    return found.get((name, frozenset(labels.items())), 0.0)


async def created_ok() -> asyncio.Future[Any]:
    future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
    future.set_result(object())
    await asyncio.sleep(0)
    return future


def admit(metrics: NetworkMetrics, job_id: str, workload: str = "llm-chat",
          refused: bool = False) -> None:
    async def go() -> None:
        created: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        metrics.admitted(JobId(job_id), workload, created)
        if refused:
            created.set_exception(RuntimeError("402"))
        else:
            created.set_result(object())
        await asyncio.sleep(0)  # the done callback runs
    asyncio.run(go())


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def metrics(clock: Clock) -> NetworkMetrics:
    return NetworkMetrics(clock=clock, wall_clock=lambda: WHEN)


# --- jobs --------------------------------------------------------------------------------------------


def test_first_event_and_first_token_are_timed_from_admission(metrics: NetworkMetrics, clock: Clock) -> None:
    admit(metrics, "j1")
    clock.now += 0.2
    metrics.heard(JobId("j1"), [{"type": "status", "message": "loading model"}])
    clock.now += 0.3
    metrics.heard(JobId("j1"), [{"type": "token", "content": "hi"}, {"type": "token", "content": "!"}])
    clock.now += 1.0
    metrics.heard(JobId("j1"), [{"type": "token", "content": "again"}])  # not a first token
    found = samples(metrics.exposition(queue_depth=0))
    assert value(found, "archipelag_time_to_first_event_seconds_count", workload="llm-chat") == 1
    assert value(found, "archipelag_time_to_first_event_seconds_sum", workload="llm-chat") == pytest.approx(0.2)
    assert value(found, "archipelag_time_to_first_token_seconds_count", workload="llm-chat") == 1
    assert value(found, "archipelag_time_to_first_token_seconds_sum", workload="llm-chat") == pytest.approx(0.5)
    assert value(found, "archipelag_time_to_first_token_seconds_bucket", workload="llm-chat", le="0.5") == 1
    assert value(found, "archipelag_time_to_first_token_seconds_bucket", workload="llm-chat", le="0.25") == 0
    assert metrics.status(0).median_ttft_ms == pytest.approx(500.0)


def test_a_job_whose_first_event_is_a_token_counts_for_both(metrics: NetworkMetrics, clock: Clock) -> None:
    admit(metrics, "j1")
    clock.now += 0.05
    metrics.heard(JobId("j1"), [{"type": "token", "content": "hi"}])
    found = samples(metrics.exposition(0))
    assert value(found, "archipelag_time_to_first_event_seconds_count", workload="llm-chat") == 1
    assert value(found, "archipelag_time_to_first_token_seconds_count", workload="llm-chat") == 1


def test_jobs_without_tokens_or_not_admitted_here_have_no_first_token(metrics: NetworkMetrics) -> None:
    admit(metrics, "image", workload="sd-diffusers")
    metrics.heard(JobId("image"), [{"type": "progress", "step": 1, "total": 2}])
    metrics.heard(JobId("image"), [{"type": "image", "data": "", "format": "png", "width": 8, "height": 8}])
    metrics.heard(JobId("resumed"), [{"type": "token", "content": "x"}])  # resumed after a restart: not timed
    metrics.heard(JobId("image"), [])
    found = samples(metrics.exposition(0))
    assert value(found, "archipelag_time_to_first_event_seconds_count", workload="sd-diffusers") == 1
    assert not any(name == "archipelag_time_to_first_token_seconds_count" for name, _ in found)
    assert metrics.status(0).median_ttft_ms is None


def test_a_job_the_ledger_refused_is_not_counted_and_not_timed(metrics: NetworkMetrics) -> None:
    admit(metrics, "broke", refused=True)
    metrics.heard(JobId("broke"), [{"type": "token", "content": "x"}])
    admit(metrics, "paid")
    found = samples(metrics.exposition(0))
    assert value(found, "archipelag_jobs_submitted_total", workload="llm-chat") == 1
    assert value(found, "archipelag_ledger_transactions_total", kind="reserve") == 1
    assert value(found, "archipelag_time_to_first_token_seconds_count", workload="llm-chat") == 0


def test_timed_jobs_are_bounded() -> None:
    metrics = NetworkMetrics(max_timed_jobs=10)

    async def go() -> None:
        created = await created_ok()
        for i in range(15):
            metrics.admitted(JobId(f"j{i}"), "llm-chat", created)
    asyncio.run(go())
    assert list(metrics._timings) == [JobId(f"j{i}") for i in range(5, 15)]  # the oldest went first


def test_ends_count_by_workload_and_outcome_with_their_ledger_transfers(metrics: NetworkMetrics) -> None:
    admit(metrics, "j1")
    metrics.ended("llm-chat", JobStatus.SUCCEEDED, JobId("j1"))
    metrics.ended("llm-chat", JobStatus.FAILED)
    metrics.ended("llm-chat", JobStatus.FAILED)
    metrics.ended("sd-diffusers", JobStatus.CANCELLED)
    found = samples(metrics.exposition(0))
    assert value(found, "archipelag_jobs_total", workload="llm-chat", outcome="succeeded") == 1
    assert value(found, "archipelag_jobs_total", workload="llm-chat", outcome="failed") == 2
    assert value(found, "archipelag_jobs_total", workload="sd-diffusers", outcome="cancelled") == 1
    assert value(found, "archipelag_ledger_transactions_total", kind="reserve") == 1
    assert value(found, "archipelag_ledger_transactions_total", kind="settle") == 1
    assert value(found, "archipelag_ledger_transactions_total", kind="refund") == 3
    assert JobId("j1") not in metrics._timings


def test_jobs_per_minute_counts_the_last_five_minutes(metrics: NetworkMetrics, clock: Clock) -> None:
    for _ in range(10):
        metrics.ended("llm-chat", JobStatus.SUCCEEDED)
    clock.now += 120
    for _ in range(5):
        metrics.ended("llm-chat", JobStatus.FAILED)
    assert metrics.status(0).jobs_per_minute == pytest.approx(15 / 5)
    clock.now += 181  # the first ten are more than five minutes old
    assert metrics.status(0).jobs_per_minute == pytest.approx(5 / 5)
    clock.now += 300
    assert metrics.status(0).jobs_per_minute == 0.0


def test_median_ttft_takes_the_latest_hundred_within_fifteen_minutes(metrics: NetworkMetrics,
                                                                     clock: Clock) -> None:
    def first_token_after(seconds: float, job_id: str) -> None:
        admit(metrics, job_id)
        clock.now += seconds
        metrics.heard(JobId(job_id), [{"type": "token", "content": "x"}])

    first_token_after(9.0, "slow")
    for i in range(TTFT_SAMPLES):
        first_token_after(0.1, f"fast{i}")
    assert metrics.status(0).median_ttft_ms == pytest.approx(100.0)  # the slow one fell out of the last 100
    first_token_after(1.0, "later")
    clock.now += 900
    assert metrics.status(0).median_ttft_ms is None  # none in the last 15 minutes


def test_placement_decisions_are_timed_by_outcome() -> None:
    class Placement:
        def __init__(self) -> None:
            self.answers: list[list[HostId] | NoCapacity] = [
                [HostId("host-a")], NoCapacity("no host runs it"), []]

        async def rank_async(self, request: JobRequest) -> list[HostId]:
            answer = self.answers.pop(0)
            if isinstance(answer, NoCapacity):
                raise answer
            return answer

        async def hosts_async(self) -> list[HostSnapshot]:
            return [a_host("host-a", region="eu-west"), a_host("host-b", region="us-east"),
                    a_host("host-c", region="us-east", status=HostStatus.PAUSED)]

        def job_assigned(self, host_id: HostId) -> None: ...
        def job_released(self, host_id: HostId) -> None: ...
        def mark_offline(self, host_id: HostId, reason: str) -> None: ...
        def refresh_karma(self, host_ids: list[HostId] | None = None) -> None: ...

    metrics = NetworkMetrics()
    ticks = iter([0.0, 0.002, 1.0, 1.5, 2.0, 2.25])
    placement = MeteredPlacement(Placement(), metrics, clock=lambda: next(ticks))
    request = JobRequest(workload="llm-chat", runtime="container")  # type: ignore[arg-type]

    async def go() -> None:
        assert await placement.rank_async(request) == ["host-a"]
        with pytest.raises(NoCapacity):
            await placement.rank_async(request)
        assert await placement.rank_async(request) == []
        assert len(await placement.hosts_async()) == 3
    asyncio.run(go())
    found = samples(metrics.exposition(0))
    assert value(found, "archipelag_placement_decision_seconds_count", outcome="ranked") == 1
    assert value(found, "archipelag_placement_decision_seconds_sum", outcome="ranked") == pytest.approx(0.002)
    assert value(found, "archipelag_placement_decision_seconds_count", outcome="no_capacity") == 2
    assert value(found, "archipelag_placement_decision_seconds_sum", outcome="no_capacity") == pytest.approx(0.75)
    assert value(found, "archipelag_hosts", status="online", region="us-east") == 1
    assert value(found, "archipelag_hosts", status="paused", region="us-east") == 1
    assert metrics.status(0).hosts_online_by_region == {"eu-west": 1, "us-east": 1}


# --- the fleet, the queue, the replicas --------------------------------------------------------------


def test_hosts_by_status_and_region_follow_the_latest_fleet(metrics: NetworkMetrics) -> None:
    metrics.fleet([a_host("a", region="eu-west"), a_host("b", region="eu-west"),
                   a_host("c", region="ap-south", status=HostStatus.OFFLINE)])
    found = samples(metrics.exposition(0))
    assert value(found, "archipelag_hosts", status="online", region="eu-west") == 2
    assert value(found, "archipelag_hosts", status="offline", region="ap-south") == 1
    metrics.fleet([a_host("a", region="eu-west")])
    found = samples(metrics.exposition(0))
    assert value(found, "archipelag_hosts", status="online", region="eu-west") == 1
    assert ("archipelag_hosts", frozenset({("status", "offline"), ("region", "ap-south")})) not in found
    status = metrics.status(queue_depth=7)
    assert (status.hosts_online, status.hosts_online_by_region, status.queue_depth) == (1, {"eu-west": 1}, 7)
    assert status.updated_at == WHEN


def test_queue_depth_is_read_when_rendered(metrics: NetworkMetrics) -> None:
    assert value(samples(metrics.exposition(queue_depth=3)), "archipelag_queue_depth") == 3
    assert value(samples(metrics.exposition(queue_depth=0)), "archipelag_queue_depth") == 0


def test_request_counts_from_every_replica_add_up(metrics: NetworkMetrics) -> None:
    metrics.requests({("GET", "/api/v1/jobs/{job_id}", "200"): 3, ("POST", "/api/v1/jobs", "201"): 1})
    metrics.requests({("GET", "/api/v1/jobs/{job_id}", "200"): 2, ("GET", "unmatched", "404"): 4})
    found = samples(metrics.exposition(0))
    assert value(found, "archipelag_http_requests_total", method="GET", route="/api/v1/jobs/{job_id}",
                 status="200") == 5
    assert value(found, "archipelag_http_requests_total", method="POST", route="/api/v1/jobs", status="201") == 1
    assert value(found, "archipelag_http_requests_total", method="GET", route="unmatched", status="404") == 4


def test_every_metric_is_described_even_before_anything_happened(metrics: NetworkMetrics) -> None:
    families = {f.name: f for f in text_string_to_metric_families(metrics.exposition(0))}
    assert {"archipelag_jobs_submitted", "archipelag_jobs", "archipelag_queue_depth",
            "archipelag_time_to_first_event_seconds", "archipelag_time_to_first_token_seconds",
            "archipelag_placement_decision_seconds", "archipelag_hosts", "archipelag_ledger_transactions",
            "archipelag_http_requests"} <= families.keys()
    assert all(f.documentation for f in families.values())
    assert NetworkMetrics().exposition(0) != "" and NetworkMetrics().instruments.registry is not \
        metrics.instruments.registry  # no shared, process-wide registry


# --- the request counter -----------------------------------------------------------------------------


def counted_app(tally: RequestTally) -> FastAPI:
    app = FastAPI()

    @app.get("/api/v1/jobs/{job_id}")
    async def job(job_id: str) -> dict[str, str]:
        return {"id": job_id}

    @app.get("/boom")
    async def boom() -> None:
        raise RuntimeError("a bug")

    @app.post("/refused")
    async def refused() -> None: ...

    async def refuse_before_routing(request: Request, call_next: Any) -> Any:
        if request.url.path == "/refused":
            return PlainTextResponse("too large", status_code=413)
        return await call_next(request)

    app.middleware("http")(refuse_before_routing)
    app.add_middleware(RequestCounter, tally=tally, routes=app.router.routes)
    return app


def test_requests_are_counted_by_route_template_never_by_path() -> None:
    tally = RequestTally()

    async def go() -> None:
        transport = httpx.ASGITransport(app=counted_app(tally), raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://api") as client:
            for job_id in ("a", "b", "c"):
                assert (await client.get(f"/api/v1/jobs/{job_id}")).status_code == 200
            assert (await client.delete("/api/v1/jobs/a")).status_code == 405
            for path in ("/nope", "/admin.php", "/x" * 50):
                assert (await client.get(path)).status_code == 404
            assert (await client.request("BREW", "/api/v1/jobs/a")).status_code == 405
            assert (await client.get("/boom")).status_code == 500
            assert (await client.post("/refused", content=b"x")).status_code == 413
    asyncio.run(go())
    assert tally.take() == {
        ("GET", "/api/v1/jobs/{job_id}", "200"): 3,
        ("DELETE", "/api/v1/jobs/{job_id}", "405"): 1,
        ("GET", "unmatched", "404"): 3,
        ("other", "/api/v1/jobs/{job_id}", "405"): 1,
        ("GET", "/boom", "500"): 1,
        ("POST", "/refused", "413"): 1,  # answered before routing, still named by its route
    }
    assert not tally and tally.take() == {}


def test_shared_answers_fetch_once_per_ttl_for_every_caller() -> None:
    fetched = 0

    async def fetch() -> int:
        nonlocal fetched
        fetched += 1
        await asyncio.sleep(0.01)
        return fetched

    async def go() -> None:
        shared = _Shared(fetch, ttl_s=60)
        assert await asyncio.gather(*(shared.get() for _ in range(20))) == [1] * 20
        assert await shared.get() == 1
        expired = _Shared(fetch, ttl_s=0)
        assert await expired.get() == 2 and await expired.get() == 3
    asyncio.run(go())
    assert fetched == 3
