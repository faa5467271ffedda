"""Jobs API: create, list, get, cancel, and the SSE stream of a job's events."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request, Response
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, ConfigDict, Field

from archipelag.catalog import Manifest, lookup
from archipelag.errors import ValidationFailed
from archipelag.ids import JobId
from archipelag.lifecycle import TERMINAL_JOB_STATES, JobStatus
from archipelag.protocol import Event, to_api_event
from archipelag.serve.auth import Caller, require
from archipelag.serve.responses import data, page
from archipelag.serve.services import Services
from archipelag.serve.views import job_view

router = APIRouter(prefix="/api/v1")


class JobCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    workload: str = Field(min_length=1, max_length=100)
    input: dict[str, Any] = Field(default_factory=dict)
    priority: int | None = Field(default=None, ge=0, le=10)
    region: str | None = Field(default=None, max_length=64)


def services(request: Request) -> Services:
    svc: Services = request.app.state.services
    return svc


Svc = Annotated[Services, Depends(services)]
Reader = Annotated[Caller, Depends(require("read"))]
Writer = Annotated[Caller, Depends(require("write"))]


def validate_input(manifest: Manifest, job_input: dict[str, Any]) -> None:
    missing = {f"input.{name}": "field required" for name in manifest.required_inputs if name not in job_input}
    if missing:
        raise ValidationFailed(f"{manifest.slug} needs {', '.join(sorted(missing))}", errors=missing)


@router.post("/jobs", status_code=201)
async def create_job(body: JobCreate, caller: Writer, svc: Svc) -> Response:
    manifest = lookup(svc.catalog, body.workload)
    validate_input(manifest, body.input)
    job, _ = await svc.submit(caller.account_id, manifest, body.input, body.region or caller.home_region,
                              body.priority or 0)
    return data(job_view(job), status_code=201)


@router.get("/jobs")
async def list_jobs(caller: Reader, svc: Svc, limit: Annotated[int, Query(ge=1, le=200)] = 20,
                    offset: Annotated[int, Query(ge=0)] = 0) -> Response:
    jobs, total = await svc.db("list_jobs", caller.account_id, limit, offset)
    return page([job_view(j) for j in jobs], total, limit, offset)


@router.get("/jobs/{job_id}")
async def get_job(job_id: str, caller: Reader, svc: Svc) -> Response:
    job = await svc.db("get_job", job_id, caller.account_id)
    return data(job_view(job))


@router.delete("/jobs/{job_id}")
async def cancel_job(job_id: str, caller: Writer, svc: Svc) -> Response:
    job = await svc.db("get_job", job_id, caller.account_id)
    if JobStatus(job.status) not in TERMINAL_JOB_STATES:
        if await svc.dispatcher.cancel(JobId(job_id)):
            await svc.dispatcher.wait_done(JobId(job_id), timeout_s=10)
        else:
            await svc.db("finish", job_id, JobStatus.CANCELLED, output=None,
                                    error="cancelled by the user", usage={}, events=[], price_micro=0,
                                    host_id=job.host_id)
        job = await svc.db("get_job", job_id, caller.account_id)
    return data(job_view(job))


def sse(event: Event) -> bytes:
    return b"data: " + json.dumps(to_api_event(event), separators=(",", ":")).encode() + b"\n\n"


@router.get("/jobs/{job_id}/stream")
async def stream_job(job_id: str, caller: Reader, svc: Svc) -> StreamingResponse:
    job = await svc.db("get_job", job_id, caller.account_id)  # 404 before streaming
    live = svc.dispatcher.live(JobId(job_id))

    async def events() -> AsyncIterator[bytes]:
        if live is not None:
            async for batch in live.batches():  # one write per burst of events, not per event
                yield b"".join(sse(event) for event in batch)
            return
        current = job
        deadline = asyncio.get_running_loop().time() + svc.settings.queue_timeout_s + 600
        while JobStatus(current.status) not in TERMINAL_JOB_STATES:  # running, but not from this replica
            if asyncio.get_running_loop().time() > deadline:
                yield sse({"type": "error", "message": "the job's events are not available here; GET the job "
                           "for its result", "code": "stream_unavailable", "seq": 0})
                return
            await asyncio.sleep(0.5)
            current = await svc.db("get_job", job_id, caller.account_id)
        stored = await svc.db("stored_output_events", job_id)
        for event in stored:
            yield sse(event)
        if not stored or stored[-1]["type"] not in {"done", "error"}:
            status = JobStatus(current.status)
            message = current.error or f"the job ended {status.value}"
            yield sse({"type": "error", "message": message, "code": status.value, "seq": len(stored)})

    return StreamingResponse(events(), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
