"""Client: the synchronous Python client of an Archipelag network's HTTP API (DESIGN §8).

Three surfaces over one connection: resource calls (``create_job``, ``get_job``, ``hosts`` …) that
return typed models, a ``ray.get``-style one (``submit`` → ``JobRef``, ``batch_ref`` → ``BatchRef``, ``get``,
``wait``; batches: ``submit_batch``, ``get_batch_status``, ``wait_for_batch``), and generation
(``chat`` → ``ChatResult``, ``chat_stream`` → ``ChatStream`` of text pieces, ``generate_image`` →
``ImageResult``) over the OpenAI-compatible endpoints (see ``archipelag.sdk.generation``).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Generator, Iterator, Sequence
from contextlib import closing
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Self, TypeVar, overload

import httpx
from httpx_sse import EventSource, SSEError

from archipelag import __version__, receipts
from archipelag.errors import ArchipelagError
from archipelag.ids import JobId
from archipelag.protocol import USAGE_COUNTS
from archipelag.sdk import generation, wire
from archipelag.sdk.errors import JobFailed, ReceiptInvalid, Unreachable, WaitTimeout
from archipelag.sdk.generation import (
    CHAT_PATH,
    DEFAULT_CHAT_MODEL,
    ChatResult,
    ChatStream,
    ImageResult,
    Messages,
    ProgressCallback,
    chat_body,
    chat_result,
    image_body,
    job_id_of,
)
from archipelag.sdk.models import (
    FINAL_EVENT_TYPES,
    Account,
    ApiKey,
    AskingPrices,
    BatchConfig,
    BatchJob,
    BatchProgress,
    Event,
    Host,
    HostKarma,
    Job,
    JobReceipt,
    JobState,
    MarketHistory,
    MarketRate,
    Page,
    Workload,
)

DEFAULT_URL = "http://127.0.0.1:8000"
DEFAULT_TIMEOUT_S = 30.0
API = "/api/v1"
API_KEY_ENV = "ARCHIPELAG_API_KEY"
POLL_FIRST_S = 0.05
POLL_MAX_S = 1.0


def headers_for(api_key: str | None) -> dict[str, str]:
    headers = {"User-Agent": f"archipelag-sdk/{__version__}", "Accept": "application/json"}
    if api_key:
        headers["Authorization"] = f"Bearer {api_key}"
    return headers


def resolve_api_key(api_key: str | None) -> str | None:
    """The key given, else ``ARCHIPELAG_API_KEY`` (read when a client is built, never at import)."""
    return api_key if api_key is not None else os.environ.get(API_KEY_ENV) or None


def job_body(workload: str, input: dict[str, Any], priority: int | None,
             region: str | None, bid_price: float | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {"workload": workload, "input": input}
    if priority is not None:
        body["priority"] = priority
    if region is not None:
        body["region"] = region
    if bid_price is not None:
        body["bid_price"] = bid_price
    return body


def history_params(since: datetime | None, bucket_s: int | None) -> dict[str, Any]:
    params: dict[str, Any] = {}
    if since is not None:
        params["since"] = since.isoformat()
    if bucket_s is not None:
        params["bucket"] = bucket_s
    return params


def remaining_s(deadline: float | None) -> float | None:
    return None if deadline is None else max(0.0, deadline - time.monotonic())


def output_of(job: Job) -> str | None:
    """A finished job's output, or JobFailed when it ended without one."""
    if job.status is JobState.COMPLETED:
        return job.output
    reason = job.error or "no reason given"
    raise JobFailed(f"job {job.id} ended {job.status.value}: {reason}", job_id=job.id,
                    status=job.status.value, error=job.error)


def verified_receipt(job: Job) -> JobReceipt:
    """``job``'s receipt once it checks out here, trusting nobody but the key in it: the signature is that key's
    over this job, its attempt, the usage it was charged for and the SHA-256 of its output. ReceiptInvalid says
    what does not match."""
    signed = job.receipt
    if signed is None:
        raise ReceiptInvalid(f"job {job.id} has no receipt: only a job that completed on a host with an enrolled "
                             "key has one", job_id=job.id)
    if job.host_id is not None and signed.host_id != job.host_id:
        raise ReceiptInvalid(f"the receipt is host {signed.host_id}'s, but job {job.id} ran on {job.host_id}",
                             job_id=job.id)
    for name in USAGE_COUNTS:
        charged, said = getattr(job.usage, name), signed.usage.get(name, 0)
        if charged != said:
            raise ReceiptInvalid(f"the job was charged for {charged} {name}, but the receipt says {said}",
                                 job_id=job.id)
    why = receipts.mismatch(receipts.Receipt(signed.host_id, signed.host_public_key, signed.attempt, dict(signed.usage),
                                             signed.output_sha256, signed.signed_at, signed.signature),
                            job.id, job.output)
    if why is not None:
        raise ReceiptInvalid(why, job_id=job.id)
    return signed


def wait_timeout(job_id: str, status: JobState, timeout_s: float | None) -> WaitTimeout:
    return WaitTimeout(f"job {job_id} is still {status.value} after {timeout_s}s; it goes on running",
                       job_id=job_id, status=status.value)


BatchProgressCallback = Callable[[int, int, int], None]  # (completed, failed, total), as the reference SDK calls it


def batch_body(workload: str, inputs: Sequence[dict[str, Any]], merge_strategy: str, fail_mode: str,
               max_parallelism: int | None, region: str | None, bid_price: float | None,
               priority: int | None) -> dict[str, Any]:
    body: dict[str, Any] = {"workload": workload, "inputs": list(inputs), "merge_strategy": merge_strategy,
                            "fail_mode": fail_mode}
    optional = {"max_parallelism": max_parallelism, "region": region, "priority": priority,
                "bid_price": str(bid_price) if bid_price is not None else None}
    return body | {name: value for name, value in optional.items() if value is not None}


def merged_of(job: Job) -> list[Any]:
    """A finished batch's merged output (its children's outputs in input order), or JobFailed."""
    output = output_of(job)
    merged = json.loads(output) if output else []
    return merged if isinstance(merged, list) else [merged]


def report_progress(progress: BatchProgress, on_progress: BatchProgressCallback | None) -> None:
    if on_progress is not None:
        failed = sum(progress.child_states.get(state, 0) for state in ("failed", "timed_out"))
        on_progress(progress.child_states.get("succeeded", 0), failed, progress.chunk_count)


def batch_ended(progress: BatchProgress, parent: Job) -> BatchJob:
    """The ended batch, or JobFailed when it failed (as the reference SDK's ``wait_for_batch`` raises)."""
    if parent.status is JobState.FAILED:
        output_of(parent)
    failed = sum(progress.child_states.get(state, 0) for state in ("failed", "timed_out"))
    config = BatchConfig(chunk_count=progress.chunk_count, merge_strategy=progress.merge_strategy,
                         fail_mode=progress.fail_mode, completed=progress.child_states.get("succeeded", 0),
                         failed=failed)
    return BatchJob(id=progress.parent_id, state=progress.parent_state, workload=parent.workload_slug or "",
                    batch=config, children=progress.children, created_at=parent.created_at)


def batch_timeout(batch_id: str, state: str, timeout_s: float | None) -> WaitTimeout:
    return WaitTimeout(f"batch {batch_id} is still {state} after {timeout_s}s; it goes on running",
                       job_id=batch_id, status=state)


@dataclass(frozen=True)
class JobRef:
    """A submitted job, like a Ray ``ObjectRef``: pass it to ``Client.get``/``wait``; iterate its events."""

    job_id: JobId
    client: Client = field(repr=False, compare=False)

    def stream(self) -> Iterator[Event]:
        return self.client.stream(self.job_id)

    def __iter__(self) -> Iterator[Event]:
        return self.stream()

    def job(self) -> Job:
        return self.client.get_job(self.job_id)

    def result(self, timeout: float | None = None) -> str | None:
        return self.client.get(self, timeout=timeout)

    def cancel(self) -> Job:
        return self.client.cancel_job(self.job_id)


@dataclass(frozen=True)
class BatchRef:
    """A submitted batch, like a Ray ``ObjectRef`` of a list: ``Client.get`` gives its merged output (the
    children's outputs in input order), ``Client.wait`` takes it beside ``JobRef``s."""

    job_id: JobId  # the batch's parent job
    client: Client = field(repr=False, compare=False)

    def status(self) -> BatchProgress:
        return self.client.get_batch_status(self.job_id)

    def job(self) -> Job:
        return self.client.get_job(self.job_id)

    def result(self, timeout: float | None = None) -> list[Any]:
        return self.client.get(self, timeout=timeout)

    def cancel(self) -> Job:
        """Cancel the batch: its children that have not ended are cancelled (and refunded) with it."""
        return self.client.cancel_job(self.job_id)


Ref = TypeVar("Ref", bound=JobRef | BatchRef)


class Client:
    """A connection to one network. Use as a context manager, or call ``close()``."""

    def __init__(self, base_url: str = DEFAULT_URL, api_key: str | None = None,
                 timeout_s: float = DEFAULT_TIMEOUT_S, transport: httpx.BaseTransport | None = None) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeout_s = timeout_s
        self._http = httpx.Client(base_url=self.base_url, headers=headers_for(resolve_api_key(api_key)),
                                  timeout=timeout_s, transport=transport)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Client({self.base_url!r})"

    def _request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            return self._http.request(method, path, **kwargs)
        except httpx.TransportError as exc:
            raise wire.unreachable(exc, self.base_url) from exc

    def _data(self, method: str, path: str, **kwargs: Any) -> Any:
        return wire.data_of(self._request(method, path, **kwargs))

    # --- resources ------------------------------------------------------------------------------

    def health(self) -> dict[str, Any]:
        body = wire.body_of(self._request("GET", "/health"))
        return dict(body.get("data", body)) if isinstance(body, dict) else {"status": body}

    def create_job(self, workload: str, input: dict[str, Any], priority: int | None = None,
                   region: str | None = None, bid_price: float | None = None) -> Job:
        """``bid_price``: the most the job pays per job, in credits (default: your saved bid, else the market
        rate)."""
        return Job.model_validate(self._data("POST", f"{API}/jobs",
                                             json=job_body(workload, input, priority, region, bid_price)))

    def get_job(self, job_id: str) -> Job:
        return Job.model_validate(self._data("GET", f"{API}/jobs/{job_id}"))

    def list_jobs(self, limit: int = 20, offset: int = 0) -> Page[Job]:
        response = self._request("GET", f"{API}/jobs", params={"limit": limit, "offset": offset})
        return wire.page_of(response, Job.model_validate)

    def cancel_job(self, job_id: str) -> Job:
        return Job.model_validate(self._data("DELETE", f"{API}/jobs/{job_id}"))

    def verify_receipt(self, job_id: str) -> JobReceipt:
        """Check the job's receipt against its output here, offline: the receipt if it holds, else
        ReceiptInvalid saying what does not match (``verified_receipt``)."""
        return verified_receipt(self.get_job(job_id))

    def workloads(self) -> Page[Workload]:
        return wire.page_of(self._request("GET", f"{API}/workloads"), Workload.model_validate)

    def workload(self, slug: str) -> Workload:
        return Workload.model_validate(self._data("GET", f"{API}/workloads/{slug}"))

    def account(self) -> Account:
        return Account.model_validate(self._data("GET", f"{API}/account"))

    def hosts(self) -> Page[Host]:
        return wire.page_of(self._request("GET", f"{API}/hosts"), Host.model_validate)

    def host(self, host_id: str) -> Host:
        return Host.model_validate(self._data("GET", f"{API}/hosts/{host_id}"))

    def approve_host(self, code: str) -> Host:
        """Enrol the machine showing pairing ``code`` (from `archipelag host join`) as your host."""
        return Host.model_validate(self._data("POST", f"{API}/hosts/approve", json={"code": code}))

    def revoke_host(self, host_id: str, reason: str = "revoked by its owner") -> Host:
        """Cut one of your hosts off (an admin: any host); its running jobs move to other hosts."""
        return Host.model_validate(self._data("POST", f"{API}/hosts/{host_id}/revoke", json={"reason": reason}))

    def my_hosts(self) -> Page[Host]:
        return wire.page_of(self._request("GET", f"{API}/account/hosts"), Host.model_validate)

    def host_karma(self, host_id: str) -> HostKarma:
        return HostKarma.model_validate(self._data("GET", f"{API}/hosts/{host_id}/karma"))

    def host_karma_history(self, host_id: str, limit: int = 20, offset: int = 0) -> Page[dict[str, Any]]:
        """A host's karma events, newest first."""
        return wire.page_of(self._request("GET", f"{API}/hosts/{host_id}/karma/history",
                                          params={"limit": limit, "offset": offset}), dict)

    # --- the exchange ---------------------------------------------------------------------------

    def market_rates(self) -> list[MarketRate]:
        """Every workload's market rate now."""
        return [MarketRate.model_validate(r) for r in self._data("GET", f"{API}/market/rates")]

    def market_rate(self, slug: str) -> MarketRate:
        return MarketRate.model_validate(self._data("GET", f"{API}/market/rates/{slug}"))

    def market_history(self, slug: str, since: datetime | None = None, bucket_s: int | None = None) -> MarketHistory:
        """The prices the workload's settled jobs cleared at, per bucket of time (default: the last day)."""
        return MarketHistory.model_validate(self._data("GET", f"{API}/market/history/{slug}",
                                                       params=history_params(since, bucket_s)))

    def set_asking_prices(self, host_id: str, prices: dict[str, float]) -> AskingPrices:
        """Replace what your host asks per job, in credits by workload slug or family (``{"llm-*": 0.05}``)."""
        return AskingPrices.model_validate(self._data("POST", f"{API}/market/asking-prices",
                                                      json={"host_id": host_id, "prices": prices}))

    def asking_prices(self, host_id: str | None = None) -> list[AskingPrices]:
        """One of your hosts' asks, or every host you own."""
        params = {"host_id": host_id} if host_id else {}
        return [AskingPrices.model_validate(a)
                for a in self._data("GET", f"{API}/market/asking-prices", params=params)]

    def bid_preferences(self) -> dict[str, float]:
        """Your saved bids (credits by workload slug or family), used when a job names no bid."""
        return dict(self._data("GET", f"{API}/account/bid-preferences")["prices"])

    def set_bid_preference(self, workload: str, credits: float | None) -> dict[str, float]:
        """Save your bid for a workload or family (None forgets it); your saved bids."""
        body = {"prices": {workload: credits}}
        return dict(self._data("PUT", f"{API}/account/bid-preferences", json=body)["prices"])

    def api_keys(self) -> Page[ApiKey]:
        return wire.page_of(self._request("GET", f"{API}/api-keys"), ApiKey.model_validate)

    def create_api_key(self, name: str, scopes: Sequence[str] | None = None) -> ApiKey:
        body: dict[str, Any] = {"name": name}
        if scopes is not None:
            body["scopes"] = list(scopes)
        response = self._request("POST", f"{API}/api-keys", json=body)
        return ApiKey.model_validate(wire.created_key_of(response))

    def revoke_api_key(self, key_id: str) -> ApiKey:
        return ApiKey.model_validate(self._data("DELETE", f"{API}/api-keys/{key_id}"))

    # --- streams and waiting --------------------------------------------------------------------

    def stream(self, job_id: str) -> Iterator[Event]:
        """The job's events as they come (replayed if it already ended); stops after `done` or `error`."""
        return self._events(job_id, read_timeout_s=None)

    def _events(self, job_id: str, read_timeout_s: float | None) -> Generator[Event, None, None]:
        timeout = httpx.Timeout(self.timeout_s, read=read_timeout_s)
        resume = wire.Resumption()
        while True:
            try:
                with self._http.stream("GET", f"{API}/jobs/{job_id}/stream", headers=resume.headers(),
                                       timeout=timeout) as response:
                    if response.is_error and not resume.retry_on(response.status_code):
                        response.read()
                        raise wire.error_for(response)
                    if not response.is_error:
                        for sse in EventSource(response).iter_sse():
                            resume.received(sse.id)
                            if not sse.data:
                                continue
                            event = wire.parse_event(sse.data)
                            yield event
                            if event["type"] in FINAL_EVENT_TYPES:
                                return
            except SSEError as exc:
                raise ArchipelagError(f"the server did not answer with an event stream: {exc}") from None
            except httpx.TransportError as exc:
                if resume.last_id is None or resume.gone():
                    raise wire.unreachable(exc, self.base_url) from exc
            if resume.last_id is None or resume.gone():  # else resume after the last event received
                raise Unreachable(f"the stream of job {job_id} closed before its last event; "
                                  "GET the job for its status", job_id=job_id)
            time.sleep(resume.pause_s)

    def wait_job(self, job_id: str, timeout: float | None = None) -> Job:
        """Block until the job is terminal and return it; WaitTimeout past ``timeout`` seconds."""
        deadline = None if timeout is None else time.monotonic() + timeout
        job = self.get_job(job_id)
        if job.is_terminal:
            return job
        try:
            with closing(self._events(job_id, read_timeout_s=remaining_s(deadline))) as events:
                for _ in events:
                    if deadline is not None and time.monotonic() > deadline:
                        break
        except Unreachable:
            pass  # the stream broke or timed out; polling decides, and raises if the server is gone
        return self._poll(job_id, deadline, timeout)

    def _poll(self, job_id: str, deadline: float | None, timeout_s: float | None) -> Job:
        delay = POLL_FIRST_S
        while True:
            job = self.get_job(job_id)
            if job.is_terminal:
                return job
            left = remaining_s(deadline)
            if left is not None and left <= 0:
                raise wait_timeout(job_id, job.status, timeout_s)
            time.sleep(delay if left is None else min(delay, left))
            delay = min(delay * 1.5, POLL_MAX_S)

    # --- batches -------------------------------------------------------------------------------

    def submit_batch(self, workload: str, inputs: list[dict[str, Any]], *, merge_strategy: str = "concat",
                     fail_mode: str = "best_effort", max_parallelism: int | None = None, region: str | None = None,
                     bid_price: float | None = None, priority: int | None = None) -> BatchJob:
        """Run ``workload`` once per input as child jobs, at most ``max_parallelism`` at once. ``fail_mode``:
        ``best_effort`` (a failed child's output is null) or ``fail_fast`` (the first failure cancels the rest).
        ``batch_ref(batch.id)`` gives a ref for ``get``/``wait``."""
        body = batch_body(workload, inputs, merge_strategy, fail_mode, max_parallelism, region, bid_price, priority)
        return BatchJob.model_validate(self._data("POST", f"{API}/jobs/batch", json=body))

    def get_batch_status(self, batch_id: str) -> BatchProgress:
        return BatchProgress.model_validate(self._data("GET", f"{API}/jobs/{batch_id}/batch-status"))

    def wait_for_batch(self, batch_id: str, poll_interval: float = 2.0, timeout: float | None = None,
                       on_progress: BatchProgressCallback | None = None) -> BatchJob:
        """Block until the batch ends (``on_progress(completed, failed, total)`` at each look); JobFailed when
        it failed, WaitTimeout past ``timeout`` seconds."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            progress = self.get_batch_status(batch_id)
            report_progress(progress, on_progress)
            if progress.is_complete:
                return batch_ended(progress, self.get_job(batch_id))
            left = remaining_s(deadline)
            if left is not None and left <= 0:
                raise batch_timeout(batch_id, progress.parent_state, timeout)
            time.sleep(poll_interval if left is None else min(poll_interval, left))

    def batch_ref(self, batch_id: str) -> BatchRef:
        """A BatchRef for a batch (``submit_batch(…).id``), for ``get`` and ``wait``."""
        return BatchRef(JobId(batch_id), self)

    # --- the ray.get-style surface --------------------------------------------------------------

    def submit(self, workload: str, input: dict[str, Any], priority: int | None = None,
               region: str | None = None) -> JobRef:
        return self.ref(self.create_job(workload, input, priority=priority, region=region).id)

    def ref(self, job_id: str) -> JobRef:
        """A JobRef for a job submitted elsewhere."""
        return JobRef(JobId(job_id), self)

    @overload
    def get(self, refs: JobRef, *, timeout: float | None = None) -> str | None: ...

    @overload
    def get(self, refs: BatchRef, *, timeout: float | None = None) -> list[Any]: ...

    @overload
    def get(self, refs: Sequence[JobRef], *, timeout: float | None = None) -> list[str | None]: ...

    @overload
    def get(self, refs: Sequence[JobRef | BatchRef], *, timeout: float | None = None) -> list[Any]: ...

    def get(self, refs: JobRef | BatchRef | Sequence[JobRef | BatchRef],
            *, timeout: float | None = None) -> Any:
        """Block until the job(s) end; return the output(s) — a batch's is the list of its children's outputs.
        JobFailed if one did not complete."""
        deadline = None if timeout is None else time.monotonic() + timeout
        if isinstance(refs, JobRef | BatchRef):
            return self._output(refs, deadline)
        return [self._output(ref, deadline) for ref in refs]

    def _output(self, ref: JobRef | BatchRef, deadline: float | None) -> Any:
        job = self.wait_job(ref.job_id, remaining_s(deadline))
        return merged_of(job) if isinstance(ref, BatchRef) else output_of(job)

    def wait(self, refs: Sequence[Ref], *, num_returns: int = 1,
             timeout: float | None = None) -> tuple[list[Ref], list[Ref]]:
        """Like ``ray.wait``: (the first ``num_returns`` refs that ended, the rest), both in input order."""
        refs = list(refs)
        if not 0 <= num_returns <= len(refs):
            raise ValueError(f"num_returns must be between 0 and {len(refs)}, got {num_returns}")
        deadline = None if timeout is None else time.monotonic() + timeout
        ended: set[JobId] = set()
        delay = POLL_FIRST_S
        while True:
            for ref in refs:
                if len(ended) >= num_returns:
                    break
                if ref.job_id not in ended and self.get_job(ref.job_id).is_terminal:
                    ended.add(ref.job_id)
            left = remaining_s(deadline)
            if len(ended) >= num_returns or (left is not None and left <= 0):
                break
            time.sleep(delay if left is None else min(delay, left))
            delay = min(delay * 1.5, POLL_MAX_S)
        ready = [ref for ref in refs if ref.job_id in ended][:num_returns]
        return ready, [ref for ref in refs if ref not in ready]

    # --- generation: chat and images ------------------------------------------------------------

    def chat(self, messages: Messages, model: str = DEFAULT_CHAT_MODEL, *, system: str | None = None,
             max_tokens: int | None = None, temperature: float | None = None, seed: int | None = None,
             **params: Any) -> ChatResult:
        """Ask a chat model and wait for the whole answer. ``messages``: a prompt, or OpenAI-style
        ``[{"role", "content"}…]``; ``params``: more OpenAI fields (``top_p``, ``stop`` …)."""
        body = chat_body(messages, model, system, False,
                         {"max_tokens": max_tokens, "temperature": temperature, "seed": seed, **params})
        timeout = httpx.Timeout(self.timeout_s, read=None)  # a queued job may wait long for its host
        response = self._request("POST", CHAT_PATH, json=body, timeout=timeout)
        return chat_result(wire.body_of(response), job_id_of(response))

    def chat_stream(self, messages: Messages, model: str = DEFAULT_CHAT_MODEL, *, system: str | None = None,
                    max_tokens: int | None = None, temperature: float | None = None, seed: int | None = None,
                    **params: Any) -> ChatStream:
        """The answer's text pieces as they come (iterate it); its ``usage``, ``content``, ``job_id`` and
        ``finish_reason`` afterwards. ``close()`` before the end cancels the job."""
        body = chat_body(messages, model, system, True,
                         {"max_tokens": max_tokens, "temperature": temperature, "seed": seed, **params})
        return ChatStream(
            lambda opened: generation.sse_frames(self._http, CHAT_PATH, body, self.timeout_s, opened))

    def generate_image(self, prompt: str, out: Path | str | None = None,
                       on_progress: ProgressCallback | None = None, *, model: str | None = None,
                       size: str | None = None, steps: int | None = None, seed: int | None = None,
                       negative_prompt: str | None = None, guidance_scale: float | None = None,
                       **params: Any) -> ImageResult:
        """Make a picture; ``on_progress(step, total)`` per denoising step; the PNG is written to ``out`` when
        given. ``model`` defaults to the network's first image model, ``size`` ("WxH") to that model's."""
        diffusion = {"steps": steps, "seed": seed, "guidance_scale": guidance_scale,
                     "negative_prompt": negative_prompt}
        body = image_body(prompt, model, size, {**diffusion, **params})
        return generation.generate_image(self._http, self.timeout_s, body, out, on_progress)
