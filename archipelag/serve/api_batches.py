"""Batches API: ``POST /api/v1/jobs/batch`` fans one request out to child jobs, ``GET /api/v1/jobs/{id}/batch-status``
reports their progress (the reference network's shapes). The parent is a job too: ``GET /api/v1/jobs/{id}``
shows it, ``DELETE`` cancels it with its children, and its ``output`` is the children's merged outputs.

The reference SDK builds its ``BatchJob`` and ``BatchProgress`` from the whole answer, not from ``data``; so the
object is given both ways, under ``data`` as every answer here and beside it at the top level.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from fastapi import APIRouter, Response
from pydantic import BaseModel, ConfigDict, Field, StrictInt

from archipelag.catalog import MICRO
from archipelag.ids import JobId
from archipelag.jobs.admission import BidPrice, bid_micro
from archipelag.jobs.batches import FailMode, MergeStrategy
from archipelag.jobs.queue import MAX_PRIORITY
from archipelag.ledger.records import BatchChild, JobBatch
from archipelag.serve.api_jobs import JobIdPath, Reader, Svc, Writer
from archipelag.serve.responses import FastJSON
from archipelag.serve.views import iso, optional_id

router = APIRouter(prefix="/api/v1")
MAX_PARALLELISM = 10_000


class BatchCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    workload: str = Field(min_length=1, max_length=100)
    inputs: list[dict[str, Any]] = Field(min_length=1)  # how many: the network's setting, checked by admission
    merge_strategy: MergeStrategy = MergeStrategy.CONCAT
    fail_mode: FailMode = FailMode.BEST_EFFORT
    max_parallelism: StrictInt | None = Field(default=None, ge=1, le=MAX_PARALLELISM)
    region: str | None = Field(default=None, max_length=64)
    # Credits per child, each child's bid (the bid chain's when absent); the reference SDK sends it as a string.
    bid_price: BidPrice | None = None
    priority: StrictInt | None = Field(default=None, ge=0, le=MAX_PRIORITY)


def child_view(child: BatchChild) -> dict[str, Any]:
    return {"id": str(child.id), "batch_index": child.batch_index, "state": str(child.status),
            "error": child.error, "host_id": optional_id(child.host_id)}


def batch_view(batch: JobBatch) -> dict[str, Any]:
    """The reference network's ``BatchJob``: states in the internal vocabulary (``succeeded``, …), as its SDK
    compares them."""
    states = Counter(str(c.status) for c in batch.children)
    return {
        "id": str(batch.parent.id),
        "state": str(batch.parent.status),
        "workload": batch.parent.workload_slug,
        "batch": {"chunk_count": len(batch.children), "merge_strategy": batch.merge_strategy,
                  "fail_mode": batch.fail_mode, "completed": states.get("succeeded", 0),
                  "failed": sum(n for s, n in states.items() if s in {"failed", "timed_out"}),
                  "max_parallelism": batch.max_parallelism,
                  "bid_price": batch.bid_price_micro / MICRO if batch.bid_price_micro is not None else None},
        "children": [child_view(c) for c in batch.children],
        "created_at": iso(batch.parent.created_at),
    }


def progress_view(batch: JobBatch) -> dict[str, Any]:
    """The reference network's ``BatchProgress``: how many children are in each state, and each child."""
    return {
        "parent_id": str(batch.parent.id),
        "parent_state": str(batch.parent.status),
        "chunk_count": len(batch.children),
        "merge_strategy": batch.merge_strategy,
        "fail_mode": batch.fail_mode,
        "child_states": dict(Counter(str(c.status) for c in batch.children)),
        "children": [child_view(c) for c in batch.children],
    }


def both_ways(view: dict[str, Any], status_code: int = 200) -> Response:
    return FastJSON({"data": view, **view}, status_code=status_code)


@router.post("/jobs/batch", status_code=201)
async def create_batch(body: BatchCreate, caller: Writer, svc: Svc) -> Response:
    batch = await svc.jobs.submit_batch(caller.account_id, body.workload, body.inputs,
                                        body.region or caller.home_region, body.priority or 0,
                                        merge_strategy=str(body.merge_strategy), fail_mode=str(body.fail_mode),
                                        max_parallelism=body.max_parallelism,
                                        bid_price_micro=bid_micro(body.bid_price))
    return both_ways(batch_view(batch), status_code=201)


@router.get("/jobs/{job_id}/batch-status")
async def batch_status(job_id: JobIdPath, caller: Reader, svc: Svc) -> Response:
    return both_ways(progress_view(await svc.ledger.get_batch(JobId(job_id), caller.account_id)))
