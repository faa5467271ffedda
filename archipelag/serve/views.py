"""Views: ledger and placement records rendered as the API's objects (DESIGN §8).

Ids of jobs, accounts, API keys and hosts are strings in the API whatever the ledger stores: the reference
network's clients validate them as ``str`` and refuse a number. Workload ids stay integers, as they expect.
"""

from __future__ import annotations

import dataclasses
from datetime import datetime
from typing import Any

from archipelag.catalog import MICRO
from archipelag.lifecycle import JobStatus, public_status
from archipelag.receipts import Receipt


def iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def api_id(value: object) -> str:
    return str(value)


def optional_id(value: object | None) -> str | None:
    return None if value is None else str(value)


def _count(value: Any) -> int:
    """A usage count as stored; 0 for one that is no whole number ≥ 0 (rows written before usage was checked)."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value < 2**53:
        return 0
    return int(value)


def job_view(job: Any) -> dict[str, Any]:
    usage = job.usage if isinstance(job.usage, dict) else {}
    prompt = _count(usage.get("prompt_tokens", 0))
    completion = _count(usage.get("completion_tokens", 0))
    duration_ms = None
    if job.started_at is not None and job.completed_at is not None:
        duration_ms = int((job.completed_at - job.started_at).total_seconds() * 1000)
    return {
        "id": api_id(job.id),
        "workload_id": job.workload_id,
        "workload_slug": job.workload_slug,
        "status": public_status(JobStatus(job.status)),
        "input": job.input,
        "output": job.output,
        "error": job.error,
        "usage": {
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "total_tokens": prompt + completion,
            "credits_used": (job.credits_used_micro or 0) / MICRO,
        },
        "host_id": optional_id(job.host_id),
        "region": job.region,
        "attempt": job.attempt,
        "created_at": iso(job.created_at),
        "started_at": iso(job.started_at),
        "completed_at": iso(job.completed_at),
        "duration_ms": duration_ms,
        "bid_price": _micro_credits(getattr(job, "bid_price_micro", None)),  # the most it pays per job
        "clearing_price": _micro_credits(getattr(job, "clearing_price_micro", None)),  # its host's ask
        "receipt": receipt_view(getattr(job, "receipt", None)),
    }


def receipt_view(receipt: Receipt | None) -> dict[str, Any] | None:
    """A succeeded job's receipt, signed by its host (receipts.py): what ``archipelag jobs verify`` checks."""
    return dataclasses.asdict(receipt) if receipt is not None else None


def _micro_credits(value: int | None) -> float | None:
    return value / MICRO if value is not None else None


def workload_view(row: Any) -> dict[str, Any]:
    return {
        "id": row.id,
        "name": row.name,
        "slug": row.slug,
        "description": row.description,
        "runtime_type": "wasm" if row.runtime == "wasm" else "container",
        "required_vram_mb": row.required_vram_mb,
        "required_ram_mb": row.required_ram_mb,
        "price_per_job": row.price_micro / MICRO,
        "trust_level": row.trust_level,
        "is_enabled": row.is_enabled,
    }


def account_view(account: Any, balance_micro: int) -> dict[str, Any]:
    return {
        "id": api_id(account.id),
        "email": account.email,
        "credits": balance_micro / MICRO,
        "home_region": account.home_region,
        "created_at": iso(account.created_at),
    }


def api_key_view(key: Any, full_key: str | None = None) -> dict[str, Any]:
    view = {
        "id": api_id(key.id),
        "name": key.name,
        "prefix": key.prefix,
        "scopes": sorted(key.scopes),
        "created_at": iso(key.created_at),
        "last_used_at": iso(key.last_used_at),
        "expires_at": iso(key.expires_at),
    }
    if full_key is not None:
        view["key"] = full_key
    return view


def host_view(snapshot: Any, karma_score: float) -> dict[str, Any]:
    last = datetime.fromtimestamp(snapshot.last_heartbeat_at).astimezone() if snapshot.last_heartbeat_at else None
    return {
        "id": api_id(snapshot.host_id),
        "name": snapshot.name,
        "status": str(snapshot.status),  # placement reports a host with stale heartbeats as offline
        "region": snapshot.region,
        "capabilities": {
            "cpu_cores": snapshot.cpu_cores,
            "ram_mb": snapshot.ram_mb,
            "gpu_model": snapshot.gpu_model,
            "gpu_vram_mb": snapshot.vram_mb,
            "runtimes": sorted(snapshot.runtimes),
        },
        "karma_score": karma_score,
        "active_jobs": snapshot.active_jobs,
        "warm_workloads": sorted(snapshot.warm),
        "last_heartbeat_at": iso(last),
        # the join benchmark: what the host claimed, what was measured, which claims were capped (flags)
        "measured": snapshot.hardware.view() if snapshot.hardware is not None else None,
    }


def karma_event_view(event: Any) -> dict[str, Any]:
    return {"id": event.id, "kind": str(event.kind), "points": event.points, "job_id": event.job_id,
            "reason": event.reason, "at": iso(event.at)}
