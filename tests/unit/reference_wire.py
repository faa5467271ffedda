"""The reference network's Python SDK (PyPI ``archipelag``, module ``archipelag``) as our server sees it: the HTTP
exchange each public method of its ``Client`` and ``AsyncClient`` makes, and what it demands of each answer.
Written in our own words from reading that SDK, so a test can replay it where the package cannot be installed.

What it sends, on every request: ``Authorization: Bearer <key>``, ``Content-Type: application/json`` (on GETs
and DELETEs too, with no body) and ``User-Agent: archipelag-python/0.1.0``; a stream adds
``Accept: text/event-stream`` and ``Cache-Control: no-store``. What it accepts: status 200 or 201 with a JSON
body (a 204 is an error to it). Other statuses become its errors, read from ``error.message``, a 422's
top-level ``errors`` and a 429's integer ``Retry-After``. A stream must answer ``text/event-stream``; its status
is not looked at, and it reads ``data:`` lines until the server closes the connection.

Its models are pydantic v2 in the default (lax) mode: a ``str`` field refuses a number, an ``int`` field takes
``"5"``, a ``datetime`` field takes ISO 8601 text, unknown fields are ignored. The ``*Read`` models below ask
the same of our answers, field by field; ``ClientReplay`` and ``AsyncClientReplay`` make the same requests.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal, Self

import httpx
from httpx_sse import aconnect_sse, connect_sse
from pydantic import BaseModel

USER_AGENT = "archipelag-python/0.1.0"

# The public methods of the reference SDK's two clients, every one replayed here (the server-side batch ones,
# POST /api/v1/jobs/batch and GET /api/v1/jobs/{id}/batch-status, too).
CLIENT_METHODS = ("close", "get_account", "create_job", "get_job", "list_jobs", "cancel_job", "wait_for_job",
                  "stream_job", "list_workloads", "get_workload", "list_api_keys", "create_api_key",
                  "delete_api_key", "chat", "chat_stream", "generate_image", "batch", "wait_all", "submit_batch",
                  "get_batch_status", "wait_for_batch")
ASYNC_CLIENT_METHODS = ("close", "create_job", "get_job", "wait_for_job", "stream_job", "chat", "chat_stream",
                        "generate_image", "submit_batch", "get_batch_status", "wait_for_batch")
LATER_ISSUE_METHODS: tuple[str, ...] = ()  # both clients: none left
BATCH_ENDED = frozenset({"succeeded", "failed", "cancelled"})  # a parent's states, as its wait_for_batch reads them

JobStatusRead = Literal["pending", "queued", "running", "completed", "failed", "cancelled", "timeout"]
ENDED = frozenset({"completed", "failed", "cancelled", "timeout"})


class UsageRead(BaseModel):
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    total_tokens: int | None = None
    credits_used: float = 0.0  # not optional: a null here fails


class JobRead(BaseModel):
    id: str
    workload_id: int
    workload_slug: str | None = None
    status: JobStatusRead
    input: dict[str, Any]
    output: str | None = None  # a JSON-encoded string for images, which it decodes itself
    error: str | None = None
    created_at: datetime
    started_at: datetime | None = None
    completed_at: datetime | None = None
    duration_ms: int | None = None
    usage: UsageRead | None = None


class WorkloadRead(BaseModel):
    id: int
    name: str
    slug: str
    description: str | None = None
    runtime_type: Literal["container", "wasm"]
    required_vram_mb: int | None = None
    required_ram_mb: int | None = None
    price_per_job: float
    is_enabled: bool = True


class ApiKeyRead(BaseModel):
    id: str
    name: str
    prefix: str
    created_at: datetime
    last_used_at: datetime | None = None
    expires_at: datetime | None = None


class AccountRead(BaseModel):
    id: str
    email: str
    credits: float
    created_at: datetime


class StreamEventRead(BaseModel):
    type: Literal["token", "status", "progress", "image", "error", "done"]
    content: str | None = None
    step: int | None = None
    total: int | None = None
    image_data: str | None = None
    image_format: str | None = None
    error: str | None = None
    usage: UsageRead | None = None


class ChatResultRead(BaseModel):
    content: str
    job_id: str
    usage: UsageRead
    finish_reason: str | None = None


class ImageResultRead(BaseModel):
    image_data: str
    image_format: str
    width: int
    height: int
    seed: int | None = None
    job_id: str
    usage: UsageRead


class BatchChildRead(BaseModel):
    id: str
    batch_index: int
    state: str
    error: str | None = None
    host_id: str | None = None


class BatchConfigRead(BaseModel):
    chunk_count: int
    merge_strategy: str = "concat"
    fail_mode: str = "best_effort"
    completed: int = 0
    failed: int = 0


class BatchJobRead(BaseModel):
    """Built from the whole answer, not from ``data``: the SDK calls ``BatchJob(**answer)``."""

    id: str
    state: str
    workload: str
    batch: BatchConfigRead
    children: list[BatchChildRead] = []
    created_at: datetime


class BatchProgressRead(BaseModel):
    """Also built from the whole answer (``BatchProgress(**answer)``)."""

    parent_id: str
    parent_state: str
    chunk_count: int
    merge_strategy: str
    fail_mode: str
    child_states: dict[str, int] = {}
    children: list[BatchChildRead] = []


def batch_body(workload: str, inputs: list[dict[str, Any]], merge_strategy: str, fail_mode: str,
               max_parallelism: int | None, region: str | None, bid_price: float | None) -> dict[str, Any]:
    """What its ``submit_batch`` sends: the bid as a string (``str(bid_price)``), optional fields only when set."""
    body: dict[str, Any] = {"workload": workload, "inputs": inputs, "merge_strategy": merge_strategy,
                            "fail_mode": fail_mode}
    if max_parallelism is not None:
        body["max_parallelism"] = max_parallelism
    if region is not None:
        body["region"] = region
    if bid_price is not None:
        body["bid_price"] = str(bid_price)
    return body


def batch_ended(progress: BatchProgressRead, job: JobRead) -> BatchJobRead:
    """What its ``wait_for_batch`` returns once the parent has ended (it reads the parent as a job, and raises
    for a failed one)."""
    if job.status == "failed":
        raise JobEndedFailed(job.error or "Batch failed", job.id)
    return BatchJobRead(id=progress.parent_id, state=progress.parent_state, workload="",
                        batch=BatchConfigRead(chunk_count=progress.chunk_count,
                                              merge_strategy=progress.merge_strategy, fail_mode=progress.fail_mode),
                        children=progress.children, created_at=datetime.min)


class Refused(Exception):
    """An answer the reference SDK turns into one of its errors (any status but 200 and 201)."""

    def __init__(self, status: int, message: str, errors: Any = None, retry_after: int | None = None) -> None:
        super().__init__(f"[{status}] {message}")
        self.status, self.message, self.errors, self.retry_after = status, message, errors, retry_after


class JobEndedFailed(Exception):
    """What its ``wait_for_job`` raises for a job whose status is ``failed``."""

    def __init__(self, message: str, job_id: str) -> None:
        super().__init__(message)
        self.job_id = job_id


def headers_of(api_key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {api_key}", "Content-Type": "application/json", "User-Agent": USER_AGENT}


def answer_of(response: httpx.Response) -> dict[str, Any]:
    """The body it reads from a success, or the error it raises for anything else."""
    if response.status_code in (200, 201):
        body = response.json()
        assert isinstance(body, dict), f"the SDK indexes the answer as an object: {body!r}"
        return body
    errors = None
    try:
        body = response.json()
        message = body.get("error", {}).get("message", response.text)
        errors = body.get("errors")
    except (ValueError, AttributeError):  # not JSON, or not an object: it shows the text
        message = response.text
    retry_after = response.headers.get("Retry-After")
    raise Refused(response.status_code, message, errors,
                  int(retry_after) if response.status_code == 429 and retry_after else None)


def event_of(payload: str) -> StreamEventRead:
    """One ``data:`` payload as its stream parser reads it."""
    parsed = json.loads(payload)
    assert "usage" not in parsed or isinstance(parsed["usage"], dict), "it unpacks `usage` as keyword arguments"
    return StreamEventRead(
        type=parsed.get("type", "token"), content=parsed.get("content") or parsed.get("chunk"),
        step=parsed.get("step"), total=parsed.get("total"), image_data=parsed.get("image_data"),
        image_format=parsed.get("format"), error=parsed.get("error"),
        usage=UsageRead(**parsed["usage"]) if "usage" in parsed else None)


def chat_input(prompt: str, system_prompt: str | None, max_tokens: int | None,
               temperature: float | None) -> dict[str, Any]:
    job_input: dict[str, Any] = {"prompt": prompt}
    if system_prompt:
        job_input["system_prompt"] = system_prompt
    if max_tokens:
        job_input["max_tokens"] = max_tokens
    if temperature is not None:
        job_input["temperature"] = temperature
    return job_input


@dataclass(frozen=True)
class ImageAsk:
    prompt: str
    negative_prompt: str | None = None
    width: int = 1024
    height: int = 1024
    steps: int = 30
    guidance_scale: float = 7.5
    seed: int | None = None
    workload: str = "sdxl"

    def job_input(self) -> dict[str, Any]:
        job_input: dict[str, Any] = {"prompt": self.prompt, "width": self.width, "height": self.height,
                                     "steps": self.steps, "guidance_scale": self.guidance_scale}
        if self.negative_prompt:
            job_input["negative_prompt"] = self.negative_prompt
        if self.seed is not None:
            job_input["seed"] = self.seed
        return job_input

    def result(self, job: JobRead) -> ImageResultRead:
        output = json.loads(job.output or "{}")
        return ImageResultRead(image_data=output.get("image_data", ""), image_format=output.get("format", "png"),
                               width=output.get("width", self.width), height=output.get("height", self.height),
                               seed=output.get("seed"), job_id=job.id, usage=job.usage or UsageRead())


def chat_result(job: JobRead) -> ChatResultRead:
    return ChatResultRead(content=job.output or "", job_id=job.id, usage=job.usage or UsageRead(),
                          finish_reason="stop" if job.status == "completed" else "error")


def ended(job: JobRead) -> JobRead | None:
    if job.status not in ENDED:
        return None
    if job.status == "failed":
        raise JobEndedFailed(job.error or "Job failed", job.id)
    return job


class ClientReplay:
    """The reference ``Client``'s requests, one method each, answers read as it reads them. Every request it
    sent is kept in ``sent``."""

    def __init__(self, base_url: str, api_key: str, poll_s: float = 0.02) -> None:
        self.sent: list[httpx.Request] = []
        self.poll_s = poll_s
        self.http = httpx.Client(base_url=base_url.rstrip("/"), headers=headers_of(api_key), timeout=30,
                                 event_hooks={"request": [self.sent.append]})

    def close(self) -> None:
        self.http.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def get_account(self) -> AccountRead:
        return AccountRead(**answer_of(self.http.get("/api/v1/account"))["data"])

    def create_job(self, workload: str, input: dict[str, Any]) -> JobRead:
        answer = answer_of(self.http.post("/api/v1/jobs", json={"workload": workload, "input": input}))
        return JobRead(**answer["data"])

    def get_job(self, job_id: str) -> JobRead:
        return JobRead(**answer_of(self.http.get(f"/api/v1/jobs/{job_id}"))["data"])

    def list_jobs(self, limit: int = 20, offset: int = 0) -> list[JobRead]:
        answer = answer_of(self.http.get("/api/v1/jobs", params={"limit": limit, "offset": offset}))
        return [JobRead(**job) for job in answer["data"]]

    def cancel_job(self, job_id: str) -> JobRead:
        return JobRead(**answer_of(self.http.delete(f"/api/v1/jobs/{job_id}"))["data"])

    def wait_for_job(self, job_id: str, timeout_s: float = 10.0) -> JobRead:
        deadline = time.monotonic() + timeout_s
        while (job := ended(self.get_job(job_id))) is None:
            assert time.monotonic() < deadline, f"job {job_id} did not end within {timeout_s} s"
            time.sleep(self.poll_s)
        return job

    def stream_job(self, job_id: str) -> list[StreamEventRead]:
        with connect_sse(self.http, "GET", f"{self.http.base_url}/api/v1/jobs/{job_id}/stream") as source:
            return [event_of(sse.data) for sse in source.iter_sse()]

    def list_workloads(self) -> list[WorkloadRead]:
        return [WorkloadRead(**w) for w in answer_of(self.http.get("/api/v1/workloads"))["data"]]

    def get_workload(self, slug: str) -> WorkloadRead:
        return WorkloadRead(**answer_of(self.http.get(f"/api/v1/workloads/{slug}"))["data"])

    def list_api_keys(self) -> list[ApiKeyRead]:
        return [ApiKeyRead(**k) for k in answer_of(self.http.get("/api/v1/api-keys"))["data"]]

    def create_api_key(self, name: str) -> tuple[ApiKeyRead, str]:
        answer = answer_of(self.http.post("/api/v1/api-keys", json={"name": name}))
        assert "key" in answer, f"the full key must sit beside `data`, at the top level: {sorted(answer)}"
        assert isinstance(answer["key"], str)
        return ApiKeyRead(**answer["data"]), answer["key"]

    def delete_api_key(self, key_id: str) -> None:
        answer_of(self.http.delete(f"/api/v1/api-keys/{key_id}"))

    def chat(self, prompt: str, system_prompt: str | None = None, max_tokens: int | None = None,
             temperature: float | None = None, workload: str = "llm-chat") -> ChatResultRead:
        job = self.create_job(workload, chat_input(prompt, system_prompt, max_tokens, temperature))
        return chat_result(self.wait_for_job(job.id))

    def chat_stream(self, prompt: str, system_prompt: str | None = None, max_tokens: int | None = None,
                    temperature: float | None = None, workload: str = "llm-chat") -> list[StreamEventRead]:
        job = self.create_job(workload, chat_input(prompt, system_prompt, max_tokens, temperature))
        return self.stream_job(job.id)

    def generate_image(self, ask: ImageAsk) -> ImageResultRead:
        job = self.create_job(ask.workload, ask.job_input())
        return ask.result(self.wait_for_job(job.id))

    def batch(self, jobs: list[dict[str, Any]]) -> list[JobRead]:
        return [self.create_job(workload=spec["workload"], input=spec["input"]) for spec in jobs]

    def wait_all(self, jobs: list[JobRead]) -> list[JobRead]:
        return [self.wait_for_job(job.id) for job in jobs]

    def submit_batch(self, workload: str, inputs: list[dict[str, Any]], merge_strategy: str = "concat",
                     fail_mode: str = "best_effort", max_parallelism: int | None = None, region: str | None = None,
                     bid_price: float | None = None) -> BatchJobRead:
        body = batch_body(workload, inputs, merge_strategy, fail_mode, max_parallelism, region, bid_price)
        return BatchJobRead(**answer_of(self.http.post("/api/v1/jobs/batch", json=body)))

    def get_batch_status(self, batch_id: str) -> BatchProgressRead:
        return BatchProgressRead(**answer_of(self.http.get(f"/api/v1/jobs/{batch_id}/batch-status")))

    def wait_for_batch(self, batch_id: str, timeout_s: float = 20.0) -> BatchJobRead:
        deadline = time.monotonic() + timeout_s
        while (progress := self.get_batch_status(batch_id)).parent_state not in BATCH_ENDED:
            assert time.monotonic() < deadline, f"batch {batch_id} did not end within {timeout_s} s"
            time.sleep(self.poll_s)
        return batch_ended(progress, self.get_job(batch_id))


class AsyncClientReplay:
    """The reference ``AsyncClient``'s requests (a subset of the ``Client``'s methods), awaited."""

    def __init__(self, base_url: str, api_key: str, poll_s: float = 0.02) -> None:
        self.poll_s = poll_s
        self.http = httpx.AsyncClient(base_url=base_url.rstrip("/"), headers=headers_of(api_key), timeout=30)

    async def close(self) -> None:
        await self.http.aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.close()

    async def create_job(self, workload: str, input: dict[str, Any]) -> JobRead:
        response = await self.http.post("/api/v1/jobs", json={"workload": workload, "input": input})
        return JobRead(**answer_of(response)["data"])

    async def get_job(self, job_id: str) -> JobRead:
        return JobRead(**answer_of(await self.http.get(f"/api/v1/jobs/{job_id}"))["data"])

    async def wait_for_job(self, job_id: str, timeout_s: float = 10.0) -> JobRead:
        deadline = time.monotonic() + timeout_s
        while (job := ended(await self.get_job(job_id))) is None:
            assert time.monotonic() < deadline, f"job {job_id} did not end within {timeout_s} s"
            await asyncio.sleep(self.poll_s)
        return job

    async def stream_job(self, job_id: str) -> list[StreamEventRead]:
        url = f"{self.http.base_url}/api/v1/jobs/{job_id}/stream"
        async with aconnect_sse(self.http, "GET", url) as source:
            return [event_of(sse.data) async for sse in source.aiter_sse()]

    async def chat(self, prompt: str, system_prompt: str | None = None, max_tokens: int | None = None,
                   temperature: float | None = None, workload: str = "llm-chat") -> ChatResultRead:
        job = await self.create_job(workload, chat_input(prompt, system_prompt, max_tokens, temperature))
        return chat_result(await self.wait_for_job(job.id))

    async def chat_stream(self, prompt: str, system_prompt: str | None = None, max_tokens: int | None = None,
                          temperature: float | None = None, workload: str = "llm-chat") -> list[StreamEventRead]:
        job = await self.create_job(workload, chat_input(prompt, system_prompt, max_tokens, temperature))
        return await self.stream_job(job.id)

    async def generate_image(self, ask: ImageAsk) -> ImageResultRead:
        job = await self.create_job(ask.workload, ask.job_input())
        return ask.result(await self.wait_for_job(job.id))

    async def submit_batch(self, workload: str, inputs: list[dict[str, Any]], merge_strategy: str = "concat",
                           fail_mode: str = "best_effort", max_parallelism: int | None = None,
                           region: str | None = None, bid_price: float | None = None) -> BatchJobRead:
        body = batch_body(workload, inputs, merge_strategy, fail_mode, max_parallelism, region, bid_price)
        return BatchJobRead(**answer_of(await self.http.post("/api/v1/jobs/batch", json=body)))

    async def get_batch_status(self, batch_id: str) -> BatchProgressRead:
        return BatchProgressRead(**answer_of(await self.http.get(f"/api/v1/jobs/{batch_id}/batch-status")))

    async def wait_for_batch(self, batch_id: str, timeout_s: float = 20.0) -> BatchJobRead:
        deadline = time.monotonic() + timeout_s
        while (progress := await self.get_batch_status(batch_id)).parent_state not in BATCH_ENDED:
            assert time.monotonic() < deadline, f"batch {batch_id} did not end within {timeout_s} s"
            await asyncio.sleep(self.poll_s)
        return batch_ended(progress, await self.get_job(batch_id))
