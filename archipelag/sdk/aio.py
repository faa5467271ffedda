"""AsyncClient: the asyncio twin of ``Client``, same methods and results, awaited.

It shares the wire decoding and the rules (what a job body is, when a job failed) with ``client``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncGenerator, AsyncIterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Self, TypeVar, overload

import httpx
from httpx_sse import EventSource, SSEError

from archipelag.errors import ArchipelagError
from archipelag.ids import JobId
from archipelag.sdk import generation, wire
from archipelag.sdk.client import (
    API,
    DEFAULT_TIMEOUT_S,
    DEFAULT_URL,
    POLL_FIRST_S,
    POLL_MAX_S,
    BatchProgressCallback,
    batch_body,
    batch_ended,
    batch_timeout,
    headers_for,
    history_params,
    job_body,
    merged_of,
    output_of,
    remaining_s,
    report_progress,
    resolve_api_key,
    verified_receipt,
    wait_timeout,
)
from archipelag.sdk.errors import Unreachable
from archipelag.sdk.generation import (
    CHAT_PATH,
    DEFAULT_CHAT_MODEL,
    AsyncChatStream,
    ChatResult,
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
    BatchJob,
    BatchProgress,
    Event,
    Host,
    HostKarma,
    Job,
    JobReceipt,
    MarketHistory,
    MarketRate,
    Page,
    Workload,
)


@dataclass(frozen=True)
class AsyncJobRef:
    """A submitted job for ``AsyncClient.get``/``wait``; ``async for event in ref`` streams it."""

    job_id: JobId
    client: AsyncClient = field(repr=False, compare=False)

    def stream(self) -> AsyncIterator[Event]:
        return self.client.stream(self.job_id)

    def __aiter__(self) -> AsyncIterator[Event]:
        return self.stream()

    async def job(self) -> Job:
        return await self.client.get_job(self.job_id)

    async def result(self, timeout: float | None = None) -> str | None:
        return await self.client.get(self, timeout=timeout)

    async def cancel(self) -> Job:
        return await self.client.cancel_job(self.job_id)


@dataclass(frozen=True)
class AsyncBatchRef:
    """A submitted batch for ``AsyncClient.get``/``wait``: its result is the children's outputs in input order."""

    job_id: JobId  # the batch's parent job
    client: AsyncClient = field(repr=False, compare=False)

    async def status(self) -> BatchProgress:
        return await self.client.get_batch_status(self.job_id)

    async def job(self) -> Job:
        return await self.client.get_job(self.job_id)

    async def result(self, timeout: float | None = None) -> list[Any]:
        return await self.client.get(self, timeout=timeout)

    async def cancel(self) -> Job:
        return await self.client.cancel_job(self.job_id)


AsyncRef = TypeVar("AsyncRef", bound=AsyncJobRef | AsyncBatchRef)


class AsyncClient:
    """A connection to one network for asyncio code. ``async with AsyncClient() as c: …``."""

    def __init__(self, base_url: str = DEFAULT_URL, api_key: str | None = None,
                 timeout_s: float = DEFAULT_TIMEOUT_S,
                 transport: httpx.AsyncBaseTransport | None = None) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeout_s = timeout_s
        self._http = httpx.AsyncClient(base_url=self.base_url, headers=headers_for(resolve_api_key(api_key)),
                                       timeout=timeout_s, transport=transport)

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.aclose()

    def __repr__(self) -> str:
        return f"AsyncClient({self.base_url!r})"

    async def _request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            return await self._http.request(method, path, **kwargs)
        except httpx.TransportError as exc:
            raise wire.unreachable(exc, self.base_url) from exc

    async def _data(self, method: str, path: str, **kwargs: Any) -> Any:
        return wire.data_of(await self._request(method, path, **kwargs))

    # --- resources ------------------------------------------------------------------------------

    async def health(self) -> dict[str, Any]:
        body = wire.body_of(await self._request("GET", "/health"))
        return dict(body.get("data", body)) if isinstance(body, dict) else {"status": body}

    async def create_job(self, workload: str, input: dict[str, Any], priority: int | None = None,
                         region: str | None = None, bid_price: float | None = None) -> Job:
        body = job_body(workload, input, priority, region, bid_price)
        return Job.model_validate(await self._data("POST", f"{API}/jobs", json=body))

    async def get_job(self, job_id: str) -> Job:
        return Job.model_validate(await self._data("GET", f"{API}/jobs/{job_id}"))

    async def list_jobs(self, limit: int = 20, offset: int = 0) -> Page[Job]:
        response = await self._request("GET", f"{API}/jobs", params={"limit": limit, "offset": offset})
        return wire.page_of(response, Job.model_validate)

    async def cancel_job(self, job_id: str) -> Job:
        return Job.model_validate(await self._data("DELETE", f"{API}/jobs/{job_id}"))

    async def verify_receipt(self, job_id: str) -> JobReceipt:
        """Check the job's receipt against its output here, offline (``Client.verify_receipt``)."""
        return verified_receipt(await self.get_job(job_id))

    async def workloads(self) -> Page[Workload]:
        return wire.page_of(await self._request("GET", f"{API}/workloads"), Workload.model_validate)

    async def workload(self, slug: str) -> Workload:
        return Workload.model_validate(await self._data("GET", f"{API}/workloads/{slug}"))

    async def account(self) -> Account:
        return Account.model_validate(await self._data("GET", f"{API}/account"))

    async def hosts(self) -> Page[Host]:
        return wire.page_of(await self._request("GET", f"{API}/hosts"), Host.model_validate)

    async def host(self, host_id: str) -> Host:
        return Host.model_validate(await self._data("GET", f"{API}/hosts/{host_id}"))

    async def approve_host(self, code: str) -> Host:
        """Enrol the machine showing pairing ``code`` (from `archipelag host join`) as your host."""
        return Host.model_validate(await self._data("POST", f"{API}/hosts/approve", json={"code": code}))

    async def revoke_host(self, host_id: str, reason: str = "revoked by its owner") -> Host:
        """Cut one of your hosts off (an admin: any host); its running jobs move to other hosts."""
        return Host.model_validate(await self._data("POST", f"{API}/hosts/{host_id}/revoke", json={"reason": reason}))

    async def my_hosts(self) -> Page[Host]:
        return wire.page_of(await self._request("GET", f"{API}/account/hosts"), Host.model_validate)

    async def host_karma(self, host_id: str) -> HostKarma:
        return HostKarma.model_validate(await self._data("GET", f"{API}/hosts/{host_id}/karma"))

    async def host_karma_history(self, host_id: str, limit: int = 20, offset: int = 0) -> Page[dict[str, Any]]:
        """A host's karma events, newest first."""
        return wire.page_of(await self._request("GET", f"{API}/hosts/{host_id}/karma/history",
                                                params={"limit": limit, "offset": offset}), dict)

    # --- the exchange ---------------------------------------------------------------------------

    async def market_rates(self) -> list[MarketRate]:
        return [MarketRate.model_validate(r) for r in await self._data("GET", f"{API}/market/rates")]

    async def market_rate(self, slug: str) -> MarketRate:
        return MarketRate.model_validate(await self._data("GET", f"{API}/market/rates/{slug}"))

    async def market_history(self, slug: str, since: datetime | None = None,
                             bucket_s: int | None = None) -> MarketHistory:
        return MarketHistory.model_validate(await self._data("GET", f"{API}/market/history/{slug}",
                                                             params=history_params(since, bucket_s)))

    async def set_asking_prices(self, host_id: str, prices: dict[str, float]) -> AskingPrices:
        return AskingPrices.model_validate(await self._data("POST", f"{API}/market/asking-prices",
                                                            json={"host_id": host_id, "prices": prices}))

    async def asking_prices(self, host_id: str | None = None) -> list[AskingPrices]:
        params = {"host_id": host_id} if host_id else {}
        return [AskingPrices.model_validate(a)
                for a in await self._data("GET", f"{API}/market/asking-prices", params=params)]

    async def bid_preferences(self) -> dict[str, float]:
        return dict((await self._data("GET", f"{API}/account/bid-preferences"))["prices"])

    async def set_bid_preference(self, workload: str, credits: float | None) -> dict[str, float]:
        body = {"prices": {workload: credits}}
        return dict((await self._data("PUT", f"{API}/account/bid-preferences", json=body))["prices"])

    async def api_keys(self) -> Page[ApiKey]:
        return wire.page_of(await self._request("GET", f"{API}/api-keys"), ApiKey.model_validate)

    async def create_api_key(self, name: str, scopes: Sequence[str] | None = None) -> ApiKey:
        body: dict[str, Any] = {"name": name}
        if scopes is not None:
            body["scopes"] = list(scopes)
        response = await self._request("POST", f"{API}/api-keys", json=body)
        return ApiKey.model_validate(wire.created_key_of(response))

    async def revoke_api_key(self, key_id: str) -> ApiKey:
        return ApiKey.model_validate(await self._data("DELETE", f"{API}/api-keys/{key_id}"))

    # --- streams and waiting --------------------------------------------------------------------

    def stream(self, job_id: str) -> AsyncIterator[Event]:
        """The job's events as they come (replayed if it already ended); stops after `done` or `error`."""
        return self._events(job_id, read_timeout_s=None)

    async def _events(self, job_id: str, read_timeout_s: float | None) -> AsyncGenerator[Event, None]:
        timeout = httpx.Timeout(self.timeout_s, read=read_timeout_s)
        resume = wire.Resumption()
        while True:
            try:
                async with self._http.stream("GET", f"{API}/jobs/{job_id}/stream", headers=resume.headers(),
                                       timeout=timeout) as response:
                    if response.is_error and not resume.retry_on(response.status_code):
                        await response.aread()
                        raise wire.error_for(response)
                    if not response.is_error:
                        async for sse in EventSource(response).aiter_sse():
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
            await asyncio.sleep(resume.pause_s)

    async def wait_job(self, job_id: str, timeout: float | None = None) -> Job:
        """Wait until the job is terminal and return it; WaitTimeout past ``timeout`` seconds."""
        deadline = None if timeout is None else time.monotonic() + timeout
        job = await self.get_job(job_id)
        if job.is_terminal:
            return job
        events = self._events(job_id, read_timeout_s=remaining_s(deadline))
        try:
            async for _ in events:
                if deadline is not None and time.monotonic() > deadline:
                    break
        except Unreachable:
            pass  # the stream broke or timed out; polling decides, and raises if the server is gone
        finally:
            await events.aclose()
        return await self._poll(job_id, deadline, timeout)

    async def _poll(self, job_id: str, deadline: float | None, timeout_s: float | None) -> Job:
        delay = POLL_FIRST_S
        while True:
            job = await self.get_job(job_id)
            if job.is_terminal:
                return job
            left = remaining_s(deadline)
            if left is not None and left <= 0:
                raise wait_timeout(job_id, job.status, timeout_s)
            await asyncio.sleep(delay if left is None else min(delay, left))
            delay = min(delay * 1.5, POLL_MAX_S)

    # --- batches -------------------------------------------------------------------------------

    async def submit_batch(self, workload: str, inputs: list[dict[str, Any]], *, merge_strategy: str = "concat",
                           fail_mode: str = "best_effort", max_parallelism: int | None = None,
                           region: str | None = None, bid_price: float | None = None,
                           priority: int | None = None) -> BatchJob:
        """Run ``workload`` once per input as child jobs (see ``Client.submit_batch``)."""
        body = batch_body(workload, inputs, merge_strategy, fail_mode, max_parallelism, region, bid_price, priority)
        return BatchJob.model_validate(await self._data("POST", f"{API}/jobs/batch", json=body))

    async def get_batch_status(self, batch_id: str) -> BatchProgress:
        return BatchProgress.model_validate(await self._data("GET", f"{API}/jobs/{batch_id}/batch-status"))

    async def wait_for_batch(self, batch_id: str, poll_interval: float = 2.0, timeout: float | None = None,
                             on_progress: BatchProgressCallback | None = None) -> BatchJob:
        """Wait until the batch ends; JobFailed when it failed, WaitTimeout past ``timeout`` seconds."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            progress = await self.get_batch_status(batch_id)
            report_progress(progress, on_progress)
            if progress.is_complete:
                return batch_ended(progress, await self.get_job(batch_id))
            left = remaining_s(deadline)
            if left is not None and left <= 0:
                raise batch_timeout(batch_id, progress.parent_state, timeout)
            await asyncio.sleep(poll_interval if left is None else min(poll_interval, left))

    def batch_ref(self, batch_id: str) -> AsyncBatchRef:
        return AsyncBatchRef(JobId(batch_id), self)

    # --- the ray.get-style surface --------------------------------------------------------------

    async def submit(self, workload: str, input: dict[str, Any], priority: int | None = None,
                     region: str | None = None) -> AsyncJobRef:
        job = await self.create_job(workload, input, priority=priority, region=region)
        return self.ref(job.id)

    def ref(self, job_id: str) -> AsyncJobRef:
        return AsyncJobRef(JobId(job_id), self)

    @overload
    async def get(self, refs: AsyncJobRef, *, timeout: float | None = None) -> str | None: ...

    @overload
    async def get(self, refs: AsyncBatchRef, *, timeout: float | None = None) -> list[Any]: ...

    @overload
    async def get(self, refs: Sequence[AsyncJobRef], *, timeout: float | None = None) -> list[str | None]: ...

    @overload
    async def get(self, refs: Sequence[AsyncJobRef | AsyncBatchRef], *,
                  timeout: float | None = None) -> list[Any]: ...

    async def get(self, refs: AsyncJobRef | AsyncBatchRef | Sequence[AsyncJobRef | AsyncBatchRef],
                  *, timeout: float | None = None) -> Any:
        """Wait until the job(s) end; return the output(s) — a batch's is the list of its children's outputs.
        JobFailed if one did not complete.

        A list is awaited concurrently."""
        deadline = None if timeout is None else time.monotonic() + timeout
        if isinstance(refs, AsyncJobRef | AsyncBatchRef):
            return await self._output(refs, deadline)
        return list(await asyncio.gather(*(self._output(ref, deadline) for ref in refs)))

    async def _output(self, ref: AsyncJobRef | AsyncBatchRef, deadline: float | None) -> Any:
        job = await self.wait_job(ref.job_id, remaining_s(deadline))
        return merged_of(job) if isinstance(ref, AsyncBatchRef) else output_of(job)

    async def wait(self, refs: Sequence[AsyncRef], *, num_returns: int = 1,
                   timeout: float | None = None) -> tuple[list[AsyncRef], list[AsyncRef]]:
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
                if ref.job_id not in ended and (await self.get_job(ref.job_id)).is_terminal:
                    ended.add(ref.job_id)
            left = remaining_s(deadline)
            if len(ended) >= num_returns or (left is not None and left <= 0):
                break
            await asyncio.sleep(delay if left is None else min(delay, left))
            delay = min(delay * 1.5, POLL_MAX_S)
        ready = [ref for ref in refs if ref.job_id in ended][:num_returns]
        return ready, [ref for ref in refs if ref not in ready]

    # --- generation: chat and images ------------------------------------------------------------

    async def chat(self, messages: Messages, model: str = DEFAULT_CHAT_MODEL, *, system: str | None = None,
                   max_tokens: int | None = None, temperature: float | None = None, seed: int | None = None,
                   **params: Any) -> ChatResult:
        """Ask a chat model and wait for the whole answer (see ``Client.chat``)."""
        body = chat_body(messages, model, system, False,
                         {"max_tokens": max_tokens, "temperature": temperature, "seed": seed, **params})
        response = await self._request("POST", CHAT_PATH, json=body,
                                       timeout=httpx.Timeout(self.timeout_s, read=None))
        return chat_result(wire.body_of(response), job_id_of(response))

    def chat_stream(self, messages: Messages, model: str = DEFAULT_CHAT_MODEL, *, system: str | None = None,
                    max_tokens: int | None = None, temperature: float | None = None, seed: int | None = None,
                    **params: Any) -> AsyncChatStream:
        """``async for piece in client.chat_stream(…)``; ``usage``, ``content``, ``job_id`` afterwards.
        ``aclose()`` before the end cancels the job."""
        body = chat_body(messages, model, system, True,
                         {"max_tokens": max_tokens, "temperature": temperature, "seed": seed, **params})
        return AsyncChatStream(
            lambda opened: generation.async_sse_frames(self._http, CHAT_PATH, body, self.timeout_s, opened))

    async def generate_image(self, prompt: str, out: Path | str | None = None,
                             on_progress: ProgressCallback | None = None, *, model: str | None = None,
                             size: str | None = None, steps: int | None = None, seed: int | None = None,
                             negative_prompt: str | None = None, guidance_scale: float | None = None,
                             **params: Any) -> ImageResult:
        """Make a picture (see ``Client.generate_image``)."""
        diffusion = {"steps": steps, "seed": seed, "guidance_scale": guidance_scale,
                     "negative_prompt": negative_prompt}
        body = image_body(prompt, model, size, {**diffusion, **params})
        return await generation.async_generate_image(self._http, self.timeout_s, body, out, on_progress)
