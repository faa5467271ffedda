"""OpenAI-compatible API: chat completions, models and image generations, each one an ordinary job.

    POST /v1/chat/completions       also /api/v1/chat/completions     write scope
    GET  /v1/models                 also /api/v1/models               read scope
    GET  /v1/models/{model}         also /api/v1/models/{model}       read scope
    POST /v1/images/generations     also /api/v1/images/generations   write scope

Point an OpenAI client at ``http://HOST:8000/v1`` with an ``ak_…`` key as its API key.

- ``model`` is a catalog model id (``smollm2-135m-instruct``, ``sd-tiny``) or its workload's slug
  (``llm-chat``, ``sd-diffusers``). Chat models are workloads whose ``[model]`` is a GGUF, image models
  those whose ``[model]`` is a diffusers folder. ``/v1/models`` lists the ones some online host can run now
  (all hosts busy still counts: the job queues); each object adds ``kind`` ("chat"|"image") and
  ``workload`` (the slug).
- A request creates a job the way ``POST /api/v1/jobs`` does (credits reserved, hosts ranked, dispatched); it
  shows in ``/api/v1/jobs`` with its usage, and every answer names it in the ``X-Archipelag-Job-Id`` header.
- Chat: the body is OpenAI's (``messages``, ``stream``, ``stream_options.include_usage``, ``max_tokens``
  or ``max_completion_tokens``, ``temperature``, ``top_p``, ``stop``, ``seed``, ``n`` = 1; others ignored);
  limits in ``openai_requests``. ``stream: true`` answers SSE ``chat.completion.chunk`` frames: one with the
  role, one per token, one with ``finish_reason`` (and our ``seed``), a usage chunk (``choices: []``) when
  asked, then ``data: [DONE]``.
  ``finish_reason`` is "length" when the completion reached ``max_tokens`` (default 256), else "stop".
- Images: ``prompt``, ``model`` (default: the first image model a host can run, ``sd-tiny``), ``n`` = 1,
  ``size`` "WxH" (default per model: 64x64 for sd-tiny, 1024x1024 for sdxl, else 512x512),
  ``response_format`` "b64_json" only, plus ``negative_prompt``, ``steps``, ``guidance_scale``, ``seed``.
  Answer ``{created, data: [{b64_json, revised_prompt, seed, width, height}], size, output_format}``. With
  ``stream: true``: SSE frames ``{"type": "image_generation.progress", step, total}`` per step, then
  ``image_generation.completed`` (with ``b64_json`` and ``seed``), then ``data: [DONE]``.
- Errors answer in OpenAI's shape (``openai_wire``): 401/403/429 as the jobs API, 402 short balance, 404
  ``model_not_found``, 422 ``invalid_request_error`` with ``param`` and the ``errors`` map, 503 when no online
  host could ever run the model (the placement reason in the message). A stream waits for the job's first
  output before it answers, so a job that fails first (a queue timeout, a refused input) is an HTTP error too;
  one that fails later sends a last ``{"error": {…}}`` frame, then ``data: [DONE]``.
- A client that goes away cancels its job, as ``DELETE /api/v1/jobs/{id}`` would, freeing the host: see
  ``watch_client`` and ``abandoned_cancels``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from decimal import Decimal
from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.responses import StreamingResponse

from archipelag.catalog import Manifest
from archipelag.errors import NoCapacity
from archipelag.ids import JobId
from archipelag.jobs.admission import bid_micro, job_request
from archipelag.jobs.relay import Batch
from archipelag.ledger.records import Job
from archipelag.metrics.trace import TRACE
from archipelag.protocol import FINAL_TYPES, Event
from archipelag.serve.api_jobs import Reader, Svc, Writer, follow_job
from archipelag.serve.auth import Caller
from archipelag.serve.openai_requests import ChatRequest, ImageRequest, chat_input, image_input
from archipelag.serve.openai_wire import (
    DONE_FRAME,
    ChatIds,
    ImageTranscript,
    ModelNotFound,
    OpenAIRoute,
    Transcript,
    chunk,
    completion,
    failure_of,
    image_completed_event,
    image_progress_event,
    images_response,
    model_object,
    sse_frame,
    stream_error,
    usage_chunk,
)
from archipelag.serve.responses import FastJSON
from archipelag.serve.services import Services

log = logging.getLogger(__name__)
router = APIRouter(route_class=OpenAIRoute)

JOB_HEADER = "X-Archipelag-Job-Id"
PATH_PREFIXES = ("/v1/", "/api/v1/chat/", "/api/v1/models", "/api/v1/images/")  # the routes below
SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
KINDS = {"gguf": "chat", "diffusers": "image"}  # a manifest's model kind → the API's model kind
DISCONNECT_POLL_S = 0.5
_STARTED = int(time.time())  # `created` of the model objects: when this ingress began offering them
_background: set[asyncio.Task[None]] = set()  # client watchers and cancels (a reference keeps a task alive)


def is_openai_path(path: str) -> bool:
    """Whether ``path`` is one of this module's routes, whose errors answer in OpenAI's shape."""
    return path.startswith(PATH_PREFIXES)


# --- models -------------------------------------------------------------------------------------------


def model_manifests(catalog: dict[Any, Manifest], kind: str | None = None) -> list[Manifest]:
    """The catalog's chat and/or image workloads, in slug order."""
    return [m for m in catalog.values()
            if m.model is not None and KINDS.get(m.model.kind) is not None
            and (kind is None or KINDS[m.model.kind] == kind)]


def resolve(catalog: dict[Any, Manifest], name: str, kind: str | None = None) -> Manifest:
    """The workload serving model ``name`` (a model id or a workload slug); ModelNotFound (404) when none."""
    for manifest in model_manifests(catalog, kind):
        assert manifest.model is not None
        if name in (manifest.model.id, manifest.slug):
            return manifest
    listed = ", ".join(m.model.id for m in model_manifests(catalog, kind) if m.model) or "none"
    what = f"{kind} model" if kind else "model"
    raise ModelNotFound(f"the {what} {name!r} does not exist here; {what}s: {listed} (GET /v1/models)",
                        param="model")


async def placement_problem(svc: Services, manifest: Manifest, region: str | None) -> str | None:
    """None when some online host could run ``manifest`` now (busy ones count: the job would queue), else why
    not, in placement's words."""
    try:
        await svc.placement.rank_async(job_request(manifest, region))
    except NoCapacity as exc:
        return None if exc.details.get("full") else exc.message
    return None


def model_view(manifest: Manifest) -> dict[str, Any]:
    assert manifest.model is not None
    return model_object(manifest.model.id, _STARTED, KINDS[manifest.model.kind], manifest.slug)


@router.get("/v1/models")
@router.get("/api/v1/models")
async def list_models(caller: Reader, svc: Svc) -> Response:
    manifests = model_manifests(svc.catalog)
    problems = await asyncio.gather(*(placement_problem(svc, m, caller.home_region) for m in manifests))
    servable = [model_view(m) for m, problem in zip(manifests, problems, strict=True) if problem is None]
    return FastJSON({"object": "list", "data": servable})


@router.get("/v1/models/{model:path}")
@router.get("/api/v1/models/{model:path}")
async def get_model(model: str, caller: Reader, svc: Svc) -> Response:
    manifest = resolve(svc.catalog, model)
    problem = await placement_problem(svc, manifest, caller.home_region)
    if problem is not None:
        raise ModelNotFound(f"the model {model!r} cannot be served now: {problem}", param="model")
    return FastJSON(model_view(manifest))


# --- following a job, and cancelling it when its client goes away --------------------------------------


async def submit(svc: Services, caller: Caller, manifest: Manifest, job_input: dict[str, Any],
                 bid_price: Decimal | None = None) -> Follower:
    """Start the job as the jobs API does, and follow it (in the same call to the jobs service); a 503 names the
    model as well as placement's reason. ``bid_price``: the request's (Archipelag's extension), in credits."""
    try:
        job, stream = await svc.jobs.submit_and_follow(caller.account_id, manifest.slug, job_input,
                                                       caller.home_region, bid_micro=bid_micro(bid_price))
    except NoCapacity as exc:
        model = manifest.model.id if manifest.model else manifest.slug
        raise type(exc)(f"no online host can serve the model {model!r} now: {exc.message}", **exc.details) from None
    return Follower(svc, job, stream)


class Follower:
    """One request's view of its job's stream: batches from the relay, with the ones read ahead (while waiting
    for the first output) handed out again first. ``ended`` once the final event has been read."""

    def __init__(self, svc: Services, job: Job, stream: AsyncIterator[Batch]) -> None:
        self.svc = svc
        self.job_id = job.id
        self.ended = False
        self._ahead: list[list[Event]] = []
        self._source = follow_job(svc, job.id, -1, stream=stream)

    async def batches(self) -> AsyncIterator[list[Event]]:
        while self._ahead:
            yield self._ahead.pop(0)
        async for batch in self._source:
            if any(e["type"] in FINAL_TYPES for e in batch):
                self.ended = True
            if batch:
                yield batch

    async def first_output(self, kinds: frozenset[str]) -> None:
        """Wait for the job's first event of ``kinds`` or its end; raise the job's error if it ends first. What
        was read stays for ``batches``."""
        async for batch in self._source:
            if not batch:
                continue
            if TRACE.on and any(e["type"] in kinds for e in batch):
                TRACE.stamp(self.job_id, "replica")
            self._ahead.append(batch)
            for event in batch:
                if event["type"] == "error":
                    self.ended = True
                    raise failure_of(event)
                if event["type"] in kinds or event["type"] == "done":
                    return


async def cancel_abandoned(svc: Services, job_id: JobId) -> None:
    """Cancel the job through the jobs service's one cancel path, as ``DELETE /api/v1/jobs/{id}`` does."""
    try:
        await svc.jobs.cancel(job_id, "cancelled: the client that started the job went away")
    except Exception:  # a background task: log, never raise into the void
        log.warning("job %s: cancel after the client left failed", job_id, exc_info=True)


def _cancel_soon(svc: Services, job_id: JobId) -> None:
    log.info("job %s: its client went away; cancelling it", job_id)
    _keep(asyncio.get_running_loop().create_task(cancel_abandoned(svc, job_id)))


def _keep(task: asyncio.Task[None]) -> None:
    _background.add(task)
    task.add_done_callback(_background.discard)


async def _watch_disconnect(request: Request, follower: Follower) -> None:
    try:
        while not follower.ended:
            if await request.is_disconnected():
                _cancel_soon(follower.svc, follower.job_id)
                return
            await asyncio.sleep(DISCONNECT_POLL_S)
    except Exception:  # a background task: log, never raise into the void
        log.warning("job %s: watching its client failed", follower.job_id, exc_info=True)


def watch_client(request: Request, follower: Follower) -> None:
    """Until the job ends, poll whether its client is still there; cancel the job when it is not. Polled,
    because a queued job has nothing to send that would reveal a closed connection."""
    _keep(asyncio.get_running_loop().create_task(_watch_disconnect(request, follower)))


@asynccontextmanager
async def abandoned_cancels(follower: Follower) -> AsyncIterator[None]:
    """A job left by an exception inside — the handler or its stream cancelled (Starlette and Serve do that
    when the client disconnects), a stream closed early — is cancelled. The cancel runs as its own task:
    the code that notices may itself be under cancellation."""
    try:
        yield
    except BaseException:
        if not follower.ended:
            _cancel_soon(follower.svc, follower.job_id)
        raise


async def follow_to_end(follower: Follower, transcript: Transcript | ImageTranscript) -> None:
    """Feed every event of the job to ``transcript`` until it ends (an answer that is not streamed)."""
    async with abandoned_cancels(follower):
        async for batch in follower.batches():
            for event in batch:
                transcript.add(event)


# --- chat ---------------------------------------------------------------------------------------------


# With `"stream": true` the answer is Server-Sent Events (OpenAI's chunks); the schema says so.
STREAMED: dict[int | str, dict[str, Any]] = {200: {"description": "The answer: JSON, or with `stream: true` Server-Sent Events",
                  "content": {"application/json": {}, "text/event-stream": {}}}}


@router.post("/v1/chat/completions", responses=STREAMED)
@router.post("/api/v1/chat/completions", responses=STREAMED)
async def chat_completions(body: ChatRequest, caller: Writer, svc: Svc, request: Request) -> Response:
    manifest = resolve(svc.catalog, body.model, "chat")
    assert manifest.model is not None
    job_input = chat_input(body)
    handled = time.time()
    follower = await submit(svc, caller, manifest, job_input, body.bid_price)
    if TRACE.on:
        TRACE.stamp(follower.job_id, "arrived", getattr(request.state, "arrived", handled))
        TRACE.stamp(follower.job_id, "handler", handled)
    watch_client(request, follower)
    ids = ChatIds(follower.job_id, manifest.model.id, int(time.time()))
    transcript = Transcript(max_tokens=job_input["max_tokens"])
    headers = {JOB_HEADER: follower.job_id}
    if not body.stream:
        await follow_to_end(follower, transcript)
        if transcript.error is not None or transcript.done is None:
            raise failure_of(transcript.error or {"message": "the job ended without an answer"})
        return FastJSON(completion(ids, transcript), headers=headers)
    async with abandoned_cancels(follower):
        await follower.first_output(frozenset({"token"}))
    return StreamingResponse(chat_frames(follower, ids, transcript, body.include_usage),
                             media_type="text/event-stream", headers={**SSE_HEADERS, **headers})


async def chat_frames(follower: Follower, ids: ChatIds, transcript: Transcript,
                      include_usage: bool) -> AsyncIterator[bytes]:
    async with abandoned_cancels(follower):
        yield sse_frame(chunk(ids, {"role": "assistant", "content": ""}))
        async for batch in follower.batches():  # one write per burst of events, not per event
            frames = []
            for event in batch:
                transcript.add(event)
                if event["type"] == "token":
                    if TRACE.on and len(transcript.pieces) == 1:
                        TRACE.stamp(follower.job_id, "written")
                    frames.append(sse_frame(chunk(ids, {"content": event["content"]})))
                elif event["type"] == "done":
                    frames.append(sse_frame(chunk(ids, {}, transcript.finish_reason, seed=transcript.seed)))
                    if include_usage:
                        frames.append(sse_frame(usage_chunk(ids, transcript)))
                elif event["type"] == "error":
                    frames.append(sse_frame(stream_error(event)))
            if frames:
                yield b"".join(frames)
            if transcript.ended:
                break
        yield DONE_FRAME


# --- images -------------------------------------------------------------------------------------------


async def image_model(svc: Services, name: str | None, region: str | None) -> Manifest:
    """The named image model, or the first one a host can run now (the first of the catalog when none can:
    submitting it then answers 503 with the reason)."""
    if name:
        return resolve(svc.catalog, name, "image")
    manifests = model_manifests(svc.catalog, "image")
    if not manifests:
        raise ModelNotFound("this network offers no image model", param="model")
    problems = await asyncio.gather(*(placement_problem(svc, m, region) for m in manifests))
    return next((m for m, problem in zip(manifests, problems, strict=True) if problem is None), manifests[0])


@router.post("/v1/images/generations", responses=STREAMED)
@router.post("/api/v1/images/generations", responses=STREAMED)
async def images_generations(body: ImageRequest, caller: Writer, svc: Svc, request: Request) -> Response:
    manifest = await image_model(svc, body.model, caller.home_region)
    assert manifest.model is not None
    image_job = image_input(body, manifest.model.id)
    follower = await submit(svc, caller, manifest, image_job.input, body.bid_price)
    watch_client(request, follower)
    created = int(time.time())
    transcript = ImageTranscript()
    headers = {JOB_HEADER: follower.job_id}
    if not body.stream:
        await follow_to_end(follower, transcript)
        if transcript.error is not None or transcript.done is None:
            raise failure_of(transcript.error or {"message": "the job ended without an image"})
        return FastJSON(images_response(created, transcript), headers=headers)
    async with abandoned_cancels(follower):
        await follower.first_output(frozenset({"progress", "image"}))
    return StreamingResponse(image_frames(follower, created, transcript),
                             media_type="text/event-stream", headers={**SSE_HEADERS, **headers})


async def image_frames(follower: Follower, created: int, transcript: ImageTranscript) -> AsyncIterator[bytes]:
    async with abandoned_cancels(follower):
        async for batch in follower.batches():
            frames = []
            for event in batch:
                transcript.add(event)
                if event["type"] == "progress":
                    frames.append(sse_frame(image_progress_event(transcript)))
                elif event["type"] == "done" and transcript.image is not None:
                    frames.append(sse_frame(image_completed_event(created, transcript)))
                elif event["type"] == "done":
                    frames.append(sse_frame(stream_error({"message": "the job ended without an image"})))
                elif event["type"] == "error":
                    frames.append(sse_frame(stream_error(event)))
            if frames:
                yield b"".join(frames)
            if transcript.ended:
                break
        yield DONE_FRAME
