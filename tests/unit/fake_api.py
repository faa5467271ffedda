"""A fake network: a small FastAPI app that speaks the API contract of DESIGN §8, for client tests.

Its jobs run instantly from a script chosen by workload slug (``echo``, ``image``, ``broken``), or stay
running until the test calls ``FakeNetwork.finish`` (``slow``). ``pricey`` answers 402, ``nocap`` 503.
Keys: ``ak_test`` (read, write), ``ak_read`` (read only). ``serve(app)`` runs it on a real socket.
"""

from __future__ import annotations

import asyncio
import json
import socket
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from fastapi import Depends, FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import BaseModel

KEY = "ak_test"
READ_ONLY_KEY = "ak_read"
NOW = "2025-01-01T00:00:00+00:00"

WORKLOADS = [
    {"id": 1, "name": "Echo", "slug": "echo", "description": "Says it back.", "runtime_type": "wasm",
     "required_vram_mb": 0, "required_ram_mb": 64, "price_per_job": 0.5, "trust_level": 0,
     "is_enabled": True},
    {"id": 2, "name": "Tiny image", "slug": "image", "description": "A 64x64 picture.",
     "runtime_type": "container", "required_vram_mb": 0, "required_ram_mb": 512, "price_per_job": 2.0,
     "trust_level": 1, "is_enabled": True, "a_future_field": "kept"},
]
HOSTS = [
    {"id": "host-a1", "name": "attic", "status": "online", "region": "eu-west",
     "capabilities": {"cpu_cores": 8, "ram_mb": 16384, "gpu_model": None, "gpu_vram_mb": None,
                      "runtimes": ["docker", "wasm"]},
     "karma_score": 0.9, "active_jobs": 1, "last_heartbeat_at": NOW},
    {"id": "host-b2", "name": "basement", "status": "paused", "region": "us-east",
     "capabilities": {"cpu_cores": 4, "ram_mb": 8192, "gpu_model": "RTX 4090", "gpu_vram_mb": 24576,
                      "runtimes": ["wasm"]},
     "karma_score": 0.4, "active_jobs": 0, "last_heartbeat_at": NOW},
]


class ApiFailure(Exception):
    def __init__(self, status: int, message: str, code: str, headers: dict[str, str] | None = None,
                 **details: Any) -> None:
        super().__init__(message)
        self.status, self.message, self.code = status, message, code
        self.headers, self.details = headers, details


@dataclass
class FakeNetwork:
    jobs: dict[str, dict[str, Any]] = field(default_factory=dict)
    events: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    keys: list[dict[str, Any]] = field(default_factory=list)
    rate_limited: bool = False
    split_frames: bool = True  # send every SSE frame in two chunks, cut mid-line

    def add_job(self, slug: str, job_input: dict[str, Any]) -> dict[str, Any]:
        job_id = str(uuid.uuid4())
        job = {"id": job_id, "workload_id": 1, "workload_slug": slug, "status": "queued", "input": job_input,
               "output": None, "error": None, "host_id": None, "created_at": NOW, "started_at": None,
               "completed_at": None, "duration_ms": None,
               "usage": {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0, "credits_used": 0}}
        self.jobs[job_id] = job
        self.events[job_id] = []
        if slug == "echo":
            words = str(job_input.get("text", "")).split()
            script = [{"type": "status", "message": "starting"}]
            script += [{"type": "token", "content": (" " if i else "") + w} for i, w in enumerate(words)]
            script.append({"type": "done", "usage": {"prompt_tokens": 1, "completion_tokens": len(words)}})
            self.finish(job_id, script)
        elif slug == "image":
            image = {"image_data": "iVBORw0KGgo=", "format": "png", "width": 64, "height": 64}
            self.finish(job_id, [{"type": "progress", "step": 1, "total": 2},
                                 {"type": "progress", "step": 2, "total": 2}, {"type": "image", **image},
                                 {"type": "done", "usage": {}, "output": {**image, "seed": 7}}])
        elif slug == "broken":
            self.finish(job_id, [{"type": "status", "message": "loading"},
                                 {"type": "error", "error": "the workload crashed",
                                  "code": "workload_error"}])
        else:
            job["status"] = "running"
            job["host_id"] = "host-a1"
        return job

    def finish(self, job_id: str, script: list[dict[str, Any]]) -> None:
        """End a job with these API events (the last one `done` or `error`)."""
        job = self.jobs[job_id]
        events = [{**event, "seq": seq} for seq, event in enumerate(script)]
        final = events[-1]
        tokens = "".join(e["content"] for e in events if e["type"] == "token")
        usage = final.get("usage", {})
        prompt, completion = usage.get("prompt_tokens", 0), usage.get("completion_tokens", 0)
        if final["type"] == "done":
            output = final.get("output")
            if output is not None and not isinstance(output, str):
                output = json.dumps(output)
            job.update(status="completed", output=tokens or output)
        else:
            job.update(status="failed", error=final["error"])
        job.update(host_id="host-a1", started_at=NOW, completed_at=NOW, duration_ms=12,
                   usage={"prompt_tokens": prompt, "completion_tokens": completion,
                          "total_tokens": prompt + completion, "credits_used": 0.25})
        self.events[job_id] = events


class JobCreate(BaseModel):
    workload: str
    input: dict[str, Any]
    priority: int | None = None
    region: str | None = None


class KeyCreate(BaseModel):
    name: str
    scopes: list[str] = ["read", "write"]


def build_app(net: FakeNetwork) -> FastAPI:
    app = FastAPI()

    @app.exception_handler(ApiFailure)
    async def failure(_: Request, exc: ApiFailure) -> Response:
        body = {"error": {"message": exc.message, "code": exc.code, **exc.details}}
        return JSONResponse(body, status_code=exc.status, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def invalid(_: Request, exc: RequestValidationError) -> Response:
        errors = {".".join(str(p) for p in e["loc"][1:]): e["msg"] for e in exc.errors()}
        body = {"error": {"message": "the request is invalid", "code": "validation_error", "errors": errors}}
        return JSONResponse(body, status_code=422)

    def caller(request: Request) -> set[str]:
        if net.rate_limited:
            raise ApiFailure(429, "slow down", "rate_limited", headers={"Retry-After": "7"})
        auth = request.headers.get("Authorization", "")
        scopes = {f"Bearer {KEY}": {"read", "write"}, f"Bearer {READ_ONLY_KEY}": {"read"}}.get(auth)
        if scopes is None:
            raise ApiFailure(401, "a valid API key is required", "unauthorized")
        if request.method != "GET" and "write" not in scopes:
            raise ApiFailure(403, "this key lacks the write scope", "forbidden")
        return scopes

    def job_of(job_id: str) -> dict[str, Any]:
        if job_id not in net.jobs:
            raise ApiFailure(404, f"no job {job_id!r}", "not_found")
        return net.jobs[job_id]

    auth = [Depends(caller)]

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {"status": "ok", "version": "fake"}

    @app.post("/api/v1/jobs", status_code=201, dependencies=auth)
    async def create_job(body: JobCreate) -> dict[str, Any]:
        if body.workload == "pricey":
            raise ApiFailure(402, "not enough credits", "insufficient_credits", required=5.0, available=1.0)
        if body.workload == "nocap":
            raise ApiFailure(503, "no online host can take this job", "no_capacity")
        if body.workload == "gone":
            raise ApiFailure(404, "no workload 'gone'", "not_found")
        return {"data": net.add_job(body.workload, body.input)}

    @app.get("/api/v1/jobs", dependencies=auth)
    async def list_jobs(limit: int = Query(20, ge=1, le=200), offset: int = Query(0, ge=0)) -> dict[str, Any]:
        jobs = list(reversed(net.jobs.values()))
        meta = {"total": len(jobs), "limit": limit, "offset": offset}
        return {"data": jobs[offset:offset + limit], "meta": meta}

    @app.get("/api/v1/jobs/{job_id}", dependencies=auth)
    async def get_job(job_id: str) -> dict[str, Any]:
        return {"data": job_of(job_id)}

    @app.delete("/api/v1/jobs/{job_id}", dependencies=auth)
    async def cancel_job(job_id: str) -> dict[str, Any]:
        job = job_of(job_id)
        if job["status"] in {"pending", "queued", "running"}:
            net.finish(job_id, [{"type": "error", "error": "cancelled by the user", "code": "cancelled"}])
            job["status"] = "cancelled"
        return {"data": job}

    @app.get("/api/v1/jobs/{job_id}/stream", dependencies=auth)
    async def stream_job(job_id: str) -> StreamingResponse:
        job_of(job_id)

        async def frames() -> AsyncIterator[bytes]:
            sent = 0
            while True:
                events = net.events[job_id]
                for event in events[sent:]:
                    frame = b"data: " + json.dumps(event).encode() + b"\n\n"
                    if net.split_frames:
                        yield frame[:9]
                        await asyncio.sleep(0)
                        yield frame[9:]
                    else:
                        yield frame
                sent = len(events)
                if events and events[-1]["type"] in {"done", "error"}:
                    return
                await asyncio.sleep(0.01)

        return StreamingResponse(frames(), media_type="text/event-stream")

    @app.get("/api/v1/workloads", dependencies=auth)
    async def workloads() -> dict[str, Any]:
        return {"data": WORKLOADS, "meta": {"total": len(WORKLOADS), "limit": len(WORKLOADS), "offset": 0}}

    @app.get("/api/v1/workloads/{slug}", dependencies=auth)
    async def workload(slug: str) -> dict[str, Any]:
        for item in WORKLOADS:
            if item["slug"] == slug:
                return {"data": item}
        raise ApiFailure(404, f"no workload {slug!r}", "not_found")

    @app.get("/api/v1/account", dependencies=auth)
    async def account() -> dict[str, Any]:
        return {"data": {"id": "1", "email": "ada@example.org", "credits": 99.5, "created_at": NOW}}

    @app.get("/api/v1/api-keys", dependencies=auth)
    async def api_keys() -> dict[str, Any]:
        keys = [{k: v for k, v in key.items() if k != "key"} for key in net.keys]
        return {"data": keys, "meta": {"total": len(keys), "limit": len(keys), "offset": 0}}

    @app.post("/api/v1/api-keys", status_code=201, dependencies=auth)
    async def create_key(body: KeyCreate) -> dict[str, Any]:
        key = {"id": str(len(net.keys) + 1), "name": body.name, "prefix": "ak_new1", "scopes": body.scopes,
               "created_at": NOW, "last_used_at": None, "expires_at": None, "key": "ak_new1secret"}
        net.keys.append(key)
        return {"data": key, "key": key["key"]}  # the full key also beside `data`, where the reference SDK reads it

    @app.delete("/api/v1/api-keys/{key_id}", dependencies=auth)
    async def revoke_key(key_id: str) -> dict[str, Any]:
        for key in net.keys:
            if key["id"] == key_id:
                net.keys.remove(key)
                return {"data": {k: v for k, v in key.items() if k != "key"}}
        raise ApiFailure(404, f"no key {key_id}", "not_found")

    @app.get("/api/v1/hosts", dependencies=auth)
    async def hosts() -> dict[str, Any]:
        return {"data": HOSTS, "meta": {"total": len(HOSTS), "limit": len(HOSTS), "offset": 0}}

    @app.get("/api/v1/hosts/{host_id}", dependencies=auth)
    async def host(host_id: str) -> dict[str, Any]:
        for item in HOSTS:
            if item["id"] == host_id:
                return {"data": item}
        raise ApiFailure(404, f"no host {host_id!r}", "not_found")

    @app.get("/api/v1/hosts/{host_id}/karma", dependencies=auth)
    async def karma(host_id: str) -> dict[str, Any]:
        await host(host_id)
        return {"data": {"host_id": host_id, "karma_score": 0.9,
                         "events": [{"kind": "job_completed", "points": 1.0}]}}

    return app


def free_port_url() -> str:
    """A local URL where nothing listens."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    return f"http://127.0.0.1:{port}"
