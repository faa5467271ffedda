"""Jobs API: create, list, get, cancel, and the SSE stream of a job's events."""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Header, Path, Query, Request, Response
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, StrictInt

from archipelag.errors import ValidationFailed
from archipelag.ids import JobId
from archipelag.jobs.admission import BidPrice, bid_micro
from archipelag.jobs.queue import MAX_PRIORITY
from archipelag.jobs.relay import Batch
from archipelag.lifecycle import TERMINAL_JOB_STATES
from archipelag.metrics.trace import TRACE
from archipelag.protocol import Event, holds_output, to_api_event
from archipelag.remote import Unreachable
from archipelag.serve.auth import Caller, require
from archipelag.serve.responses import data, page
from archipelag.serve.services import Services
from archipelag.serve.views import job_view

router = APIRouter(prefix="/api/v1")


class JobCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    workload: str = Field(min_length=1, max_length=100)
    input: dict[str, Any] = Field(default_factory=dict)  # sized and typed by admission, per workload
    priority: StrictInt | None = Field(default=None, ge=0, le=MAX_PRIORITY)
    region: str | None = Field(default=None, max_length=64)
    bid_price: BidPrice | None = None  # credits per job; None: the saved preference, else the market rate


async def services(request: Request) -> Services:
    """A coroutine, so FastAPI calls it on the event loop: a plain function dependency runs in its thread pool, a
    thread hop each request (0.2-0.7 ms of a first token)."""
    svc: Services = request.app.state.services
    return svc


Svc = Annotated[Services, Depends(services)]
Reader = Annotated[Caller, Depends(require("read"))]
Writer = Annotated[Caller, Depends(require("write"))]
MAX_OFFSET = 2**31 - 1  # past any page there is; a larger one overflows the database's integer
MAX_ID_CHARS = 64  # a job id is a UUID; a longer one is no id
JobIdPath = Annotated[str, Path(max_length=MAX_ID_CHARS)]


@router.post("/jobs", status_code=201)
async def create_job(body: JobCreate, caller: Writer, svc: Svc, request: Request) -> Response:
    handled = time.time()
    job = await svc.jobs.submit(caller.account_id, body.workload, body.input, body.region or caller.home_region,
                                body.priority or 0, bid_micro(body.bid_price))
    if TRACE.on:
        TRACE.stamp(job.id, "arrived", getattr(request.state, "arrived", handled))
        TRACE.stamp(job.id, "handler", handled)
    return data(job_view(job), status_code=201)


@router.get("/jobs")
async def list_jobs(caller: Reader, svc: Svc, limit: Annotated[int, Query(ge=1, le=200)] = 20,
                    offset: Annotated[int, Query(ge=0, le=MAX_OFFSET)] = 0) -> Response:
    jobs, total = await svc.ledger.list_jobs(caller.account_id, limit, offset)
    return page([job_view(j) for j in jobs], total, limit, offset)


@router.get("/jobs/{job_id}")
async def get_job(job_id: JobIdPath, caller: Reader, svc: Svc) -> Response:
    return data(job_view(await svc.ledger.get_job(job_id, caller.account_id)))


@router.delete("/jobs/{job_id}")
async def cancel_job(job_id: JobIdPath, caller: Writer, svc: Svc) -> Response:
    job = await svc.ledger.get_job(job_id, caller.account_id)
    if job.status not in TERMINAL_JOB_STATES:
        await svc.jobs.cancel(JobId(job_id))
        job = await svc.ledger.get_job(job_id, caller.account_id)
    return data(job_view(job))


def sse(event: Event) -> bytes:
    """One SSE frame; its ``id`` is the event's ``seq``, what a reconnecting client sends as Last-Event-ID."""
    body = json.dumps(to_api_event(event), separators=(",", ":")).encode()
    return b"id: %d\ndata: %s\n\n" % (event["seq"], body)


KEEP_ALIVE = b": keep-alive\n\n"
REPLICA_HEADER = "X-Archipelag-Replica"  # which ingress process serves a stream (any may: they hold no job state)
UNREACHABLE_GRACE_S = 30.0  # a stream outlives a jobs-service restart this long


def resume_after(last_event_id: str | None) -> int:
    """The ``seq`` a stream continues after: the Last-Event-ID a reconnecting client sends, else -1."""
    if last_event_id is None or not last_event_id.strip():
        return -1
    try:
        value = int(last_event_id.strip())
    except ValueError:
        value = -2
    if value < -1:
        raise ValidationFailed("Last-Event-ID must be the id of an event this stream sent (an integer ≥ 0)",
                               errors={"Last-Event-ID": "not an event id"})
    return value


async def follow_job(svc: Services, job_id: JobId, after: int, account_id: int | None = None,
                     stream: AsyncIterator[Batch] | None = None) -> AsyncIterator[list[Event]]:
    """The job's events after ``after``, a batch at a time, until they end; an empty batch now and then while
    nothing happens. With ``account_id`` the first batch raises NotFound for another account's job. Rides out a
    short restart of the jobs service, continuing after the last event it had. ``stream``: the job's batches
    from the start, already flowing (``JobsClient.submit_and_follow``)."""
    lost_since: float | None = None
    while True:
        try:
            async for batch in stream or svc.jobs.follow(job_id, after, account_id):
                lost_since, account_id = None, None
                if batch.events:
                    after = batch.events[-1]["seq"]
                yield batch.events
                if batch.ended:
                    return
            return
        except Unreachable:
            stream = None
            now = asyncio.get_running_loop().time()
            lost_since = lost_since or now
            if now - lost_since > UNREACHABLE_GRACE_S:
                raise
            await asyncio.sleep(0.5)


@router.get("/jobs/{job_id}/stream")
async def stream_job(job_id: JobIdPath, caller: Reader, svc: Svc,
                     last_event_id: Annotated[str | None, Header(max_length=20)] = None) -> StreamingResponse:
    batches = follow_job(svc, JobId(job_id), resume_after(last_event_id), caller.account_id)
    first = await anext(batches)  # 404 before streaming for another account's job; usually the first events

    async def frames() -> AsyncIterator[bytes]:
        batch: list[Event] | None = first
        traced = not TRACE.on
        while batch is not None:  # one write per burst of events
            if not traced and holds_output(batch):
                TRACE.stamp(job_id, "replica")
                traced = True
            yield b"".join(sse(event) for event in batch) if batch else KEEP_ALIVE
            batch = await anext(batches, None)

    return StreamingResponse(frames(), media_type="text/event-stream", headers={
        "Cache-Control": "no-cache", "X-Accel-Buffering": "no", REPLICA_HEADER: f"{os.getpid()}"})
