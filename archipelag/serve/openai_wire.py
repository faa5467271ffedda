"""OpenAI wire: what the OpenAI-compatible API answers — completions, stream chunks, SSE frames — and its
errors, rendered in one place (``OpenAIRoute``) in OpenAI's shape::

    {"error": {"message": …, "type": "invalid_request_error", "param": "messages.0.content", "code": …}}

plus DESIGN §8's extras (the ``errors`` map of a 422, ``required``/``available`` of a 402, …), so both
OpenAI clients and Archipelag's own read it.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from typing import Any

from fastapi import Request, Response
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute

from archipelag.errors import (
    ArchipelagError,
    JobCancelled,
    NoCapacity,
    NotFound,
    RateLimited,
    ValidationFailed,
    WorkloadError,
    WorkloadTimedOut,
)
from archipelag.protocol import Event
from archipelag.serve.responses import FastJSON

DONE_FRAME = b"data: [DONE]\n\n"
# A job's end codes that are no fault of the request (a host that lied in its receipt is the network's fault).
NETWORK_FAILURES = frozenset({"queue_timeout", "host_lost", "bad_receipt"})
NETWORK_RETRY_AFTER_S = 5

_TYPES = {400: "invalid_request_error", 401: "authentication_error", 402: "insufficient_quota",
          403: "permission_error", 404: "invalid_request_error", 409: "invalid_request_error",
          422: "invalid_request_error", 429: "rate_limit_error"}


class ModelNotFound(NotFound):
    """The request names a model no workload of the catalog serves."""

    code = "model_not_found"


def error_type(status: int) -> str:
    return _TYPES.get(status, "server_error" if status >= 500 else "invalid_request_error")


def error_body(exc: ArchipelagError) -> dict[str, Any]:
    details = {k: v for k, v in exc.details.items() if k not in {"message", "type", "param", "code"}}
    return {"error": {"message": exc.message, "type": error_type(exc.http_status),
                      "param": exc.details.get("param"), "code": exc.code, **jsonable_encoder(details)}}


def error_response(exc: ArchipelagError) -> Response:
    headers = {}
    if "retry_after" in exc.details or isinstance(exc, RateLimited):
        headers["Retry-After"] = str(exc.details.get("retry_after", 60))
    return FastJSON(error_body(exc), status_code=exc.http_status, headers=headers)


def _param(loc: Sequence[Any]) -> str:
    parts = [str(p) for p in loc]
    if parts and parts[0] in {"body", "query", "path", "header"}:
        parts = parts[1:]
    return ".".join(parts) or "body"


def validation_failed(exc: RequestValidationError) -> ValidationFailed:
    errors: dict[str, str] = {}
    for item in exc.errors():
        errors.setdefault(_param(item.get("loc", ())), str(item.get("msg", "invalid")))
    param = next(iter(errors), "body")
    return ValidationFailed(f"the request is invalid: {'; '.join(f'{k}: {v}' for k, v in errors.items())}",
                            errors=errors, param=param)


class OpenAIRoute(APIRoute):
    """A route whose errors (auth, validation, ours) answer in OpenAI's error shape."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def route(request: Request) -> Response:
            try:
                return await handler(request)
            except ArchipelagError as exc:
                return error_response(exc)
            except RequestValidationError as exc:
                return error_response(validation_failed(exc))

        return route


def sse_frame(value: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps(value, separators=(",", ":")).encode() + b"\n\n"


def failure_of(event: Event) -> ArchipelagError:
    """The error a job's final `error` event stands for, to answer before any byte was sent."""
    code = event.get("code")
    message = str(event.get("message") or event.get("error") or "the job failed")
    if code == "cancelled":
        return JobCancelled(message)
    if code == "timed_out":
        return WorkloadTimedOut(message)
    if code in NETWORK_FAILURES:  # the network's shortfall, not the request's: 503, come back later
        return NoCapacity(message, retry_after=NETWORK_RETRY_AFTER_S)
    return WorkloadError(message)


def stream_error(event: Event) -> dict[str, Any]:
    """The SSE frame for an `error` event once streaming has begun."""
    return error_body(failure_of(event))


@dataclass
class Transcript:
    """What a chat job has said so far, fed its events: the text, the usage, and how it ended. (A job retried
    on another host arrives here already continuous: the relay swallows what the retry says again.)"""

    max_tokens: int
    pieces: list[str] = field(default_factory=list)
    done: Event | None = None
    error: Event | None = None

    def add(self, event: Event) -> None:
        kind = event["type"]
        if kind == "token":
            self.pieces.append(event["content"])
        elif kind == "done":
            self.done = event
        elif kind == "error":
            self.error = event

    @property
    def ended(self) -> bool:
        return self.done is not None or self.error is not None

    @property
    def content(self) -> str:
        if not self.pieces and self.done is not None and isinstance(self.done.get("output"), str):
            return str(self.done["output"])
        return "".join(self.pieces)

    @property
    def usage(self) -> dict[str, int]:
        raw = (self.done or {}).get("usage") or {}
        prompt = int(raw.get("prompt_tokens", 0))
        completion = int(raw.get("completion_tokens", len(self.pieces)))
        return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}

    @property
    def finish_reason(self) -> str:
        reported = (self.done or {}).get("finish_reason")
        if reported in {"stop", "length"}:
            return str(reported)
        return "length" if self.usage["completion_tokens"] >= self.max_tokens else "stop"

    @property
    def seed(self) -> int | None:
        seed = (self.done or {}).get("seed")
        return seed if isinstance(seed, int) else None


@dataclass(frozen=True)
class ChatIds:
    """What every answer to one chat request repeats."""

    job_id: str
    model: str
    created: int

    @property
    def completion_id(self) -> str:
        return f"chatcmpl-{self.job_id}"


def completion(ids: ChatIds, transcript: Transcript) -> dict[str, Any]:
    return {
        "id": ids.completion_id, "object": "chat.completion", "created": ids.created, "model": ids.model,
        "system_fingerprint": None,
        "choices": [{"index": 0,
                     "message": {"role": "assistant", "content": transcript.content, "refusal": None},
                     "logprobs": None, "finish_reason": transcript.finish_reason}],
        "usage": transcript.usage, "seed": transcript.seed,
    }


def chunk(ids: ChatIds, delta: dict[str, Any], finish_reason: str | None = None,
          **extra: Any) -> dict[str, Any]:
    return {
        "id": ids.completion_id, "object": "chat.completion.chunk", "created": ids.created,
        "model": ids.model, "system_fingerprint": None,
        "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}], **extra,
    }


def usage_chunk(ids: ChatIds, transcript: Transcript) -> dict[str, Any]:
    return {"id": ids.completion_id, "object": "chat.completion.chunk", "created": ids.created,
            "model": ids.model, "system_fingerprint": None, "choices": [], "usage": transcript.usage}


def model_object(model_id: str, created: int, kind: str, workload: str) -> dict[str, Any]:
    """An OpenAI model object; ``kind`` ("chat" or "image") and ``workload`` (its slug) are our extensions."""
    return {"id": model_id, "object": "model", "created": created, "owned_by": "archipelag", "kind": kind,
            "workload": workload}


@dataclass
class ImageTranscript:
    """What an image job has sent so far: its progress, the picture, and how it ended."""

    step: int = 0
    total: int = 0
    image: Event | None = None
    done: Event | None = None
    error: Event | None = None

    def add(self, event: Event) -> None:
        kind = event["type"]
        if kind == "progress":
            self.step, self.total = int(event["step"]), int(event["total"])
        elif kind == "image":
            self.image = event
        elif kind == "done":
            self.done = event
        elif kind == "error":
            self.error = event

    @property
    def ended(self) -> bool:
        return self.done is not None or self.error is not None

    @property
    def seed(self) -> int | None:
        done = self.done or {}
        output = done.get("output")
        seed = done.get("seed", output.get("seed") if isinstance(output, dict) else None)
        return seed if isinstance(seed, int) else None

    def picture(self) -> dict[str, Any]:
        """The image as OpenAI's ``data`` item (``seed``, ``width``, ``height`` are our extensions)."""
        if self.image is None:
            raise WorkloadError("the image job ended without an image")
        return {"b64_json": self.image.get("data") or self.image.get("image_data"), "revised_prompt": None,
                "seed": self.seed, "width": self.image["width"], "height": self.image["height"]}


def images_response(created: int, transcript: ImageTranscript) -> dict[str, Any]:
    picture = transcript.picture()
    return {"created": created, "data": [picture], "output_format": "png",
            "size": f"{picture['width']}x{picture['height']}"}


def image_completed_event(created: int, transcript: ImageTranscript) -> dict[str, Any]:
    """The last frame of an image stream, shaped as OpenAI's ``image_generation.completed``."""
    picture = transcript.picture()
    return {"type": "image_generation.completed", "b64_json": picture["b64_json"], "created_at": created,
            "size": f"{picture['width']}x{picture['height']}", "quality": "auto", "background": "opaque",
            "output_format": "png", "seed": picture["seed"],
            "usage": {"input_tokens": 0, "output_tokens": 0, "total_tokens": 0,
                      "input_tokens_details": {"image_tokens": 0, "text_tokens": 0}}}


def image_progress_event(transcript: ImageTranscript) -> dict[str, Any]:
    """A progress frame of an image stream: an Archipelag extension (OpenAI has only partial images)."""
    return {"type": "image_generation.progress", "step": transcript.step, "total": transcript.total}
