"""Generation: chat and images through the network's OpenAI-compatible endpoints — the request bodies, the
SSE frames they answer, and the results (``ChatResult``, ``ChatStream``, ``ImageResult``).

``Client.chat``/``chat_stream``/``generate_image`` (and their ``AsyncClient`` twins) are thin wrappers over
this module. Chat uses ``POST /api/v1/chat/completions`` (streamed with ``include_usage``, so the usage is
known at the end); images use ``POST /api/v1/images/generations`` with ``stream: true``, whose
``image_generation.progress`` frames feed ``on_progress``. The job behind each answer is named by the
``X-Archipelag-Job-Id`` header. Closing a stream early closes the connection, and the server cancels the job.
"""

from __future__ import annotations

import base64
import json
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Generator, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Self

import httpx
from httpx_sse import EventSource, SSEError

from archipelag.errors import ArchipelagError
from archipelag.ids import JobId
from archipelag.sdk import wire
from archipelag.sdk.errors import JobFailed, Unreachable
from archipelag.sdk.models import Usage

DEFAULT_CHAT_MODEL = "llm-chat"  # the workload's slug: the server maps it to its model
JOB_HEADER = "X-Archipelag-Job-Id"
CHAT_PATH = "/api/v1/chat/completions"
IMAGES_PATH = "/api/v1/images/generations"
ProgressCallback = Callable[[int, int], None]  # (step, total)
Opened = Callable[[httpx.Response], None]  # told the response once a stream's request is answered
Messages = str | Sequence[Mapping[str, Any]]


def chat_body(messages: Messages, model: str, system: str | None, stream: bool,
              params: Mapping[str, Any]) -> dict[str, Any]:
    """An OpenAI chat request: a prompt string becomes one user message (after ``system``, if given)."""
    if isinstance(messages, str):
        chat = [{"role": "user", "content": messages}]
    else:
        chat = [dict(message) for message in messages]
    if system is not None:
        chat.insert(0, {"role": "system", "content": system})
    given = {k: v for k, v in params.items() if v is not None}
    body: dict[str, Any] = {"model": model, "messages": chat, **given}
    if stream:
        body.update(stream=True, stream_options={"include_usage": True})
    return body


def image_body(prompt: str, model: str | None, size: str | None, params: Mapping[str, Any]) -> dict[str, Any]:
    body: dict[str, Any] = {"prompt": prompt, "stream": True, "response_format": "b64_json",
                            **{k: v for k, v in params.items() if v is not None}}
    if model is not None:
        body["model"] = model
    if size is not None:
        body["size"] = size
    return body


def job_id_of(response: httpx.Response) -> JobId | None:
    value = response.headers.get(JOB_HEADER)
    return JobId(value) if value else None


def _failed(frame: Mapping[str, Any], job_id: JobId | None) -> JobFailed:
    error = frame.get("error") or {}
    message = str(error.get("message") or "the job failed") if isinstance(error, dict) else str(error)
    code = error.get("code") if isinstance(error, dict) else None
    status = "cancelled" if code == "cancelled" else "timeout" if code == "timed_out" else "failed"
    return JobFailed(f"job {job_id or '?'} ended {status}: {message}", job_id=job_id, status=status,
                     error=message)


def _usage(raw: Any) -> Usage | None:
    return Usage.model_validate(raw) if isinstance(raw, dict) else None


@dataclass(frozen=True)
class ChatResult:
    """A whole answer: its text, the tokens it took, and the job that made it."""

    content: str
    usage: Usage
    job_id: JobId | None
    finish_reason: str | None = None  # "stop", or "length" when max_tokens cut it
    model: str | None = None
    seed: int | None = None


def chat_result(body: Any, job_id: JobId | None) -> ChatResult:
    try:
        choice = body["choices"][0]
        content = choice["message"]["content"] or ""
    except (KeyError, IndexError, TypeError):
        raise ArchipelagError("the chat answer has no choices; is the URL an Archipelag network?") from None
    return ChatResult(content=content, usage=_usage(body.get("usage")) or Usage(), job_id=job_id,
                      finish_reason=choice.get("finish_reason"), model=body.get("model"),
                      seed=body.get("seed"))


@dataclass
class _ChatState:
    """What a chat stream has said so far, fed its frames."""

    job_id: JobId | None = None
    pieces: list[str] = field(default_factory=list)
    usage: Usage | None = None
    finish_reason: str | None = None
    model: str | None = None
    seed: int | None = None

    def take(self, frame: Mapping[str, Any]) -> str | None:
        """The text piece in ``frame`` (None if it has none); JobFailed for an error frame."""
        if "error" in frame:
            raise _failed(frame, self.job_id)
        self.model = frame.get("model", self.model)
        self.usage = _usage(frame.get("usage")) or self.usage
        if isinstance(frame.get("seed"), int):
            self.seed = frame["seed"]
        piece = None
        for choice in frame.get("choices") or ():
            piece = (choice.get("delta") or {}).get("content") or piece
            self.finish_reason = choice.get("finish_reason") or self.finish_reason
        if piece:
            self.pieces.append(piece)
        return piece or None


class _ChatStreamBase:
    def __init__(self) -> None:
        self._state = _ChatState()

    def _opened(self, response: httpx.Response) -> None:
        self._state.job_id = job_id_of(response)

    @property
    def job_id(self) -> JobId | None:
        """The job answering: known once the first piece arrived."""
        return self._state.job_id

    @property
    def content(self) -> str:
        """The text so far (all of it once iteration ended)."""
        return "".join(self._state.pieces)

    @property
    def usage(self) -> Usage | None:
        """Token counts, known once iteration ended."""
        return self._state.usage

    @property
    def finish_reason(self) -> str | None:
        return self._state.finish_reason

    @property
    def seed(self) -> int | None:
        return self._state.seed

    def result(self) -> ChatResult:
        """The whole answer, after iteration ended."""
        return ChatResult(content=self.content, usage=self.usage or Usage(), job_id=self.job_id,
                          finish_reason=self.finish_reason, model=self._state.model, seed=self.seed)


class ChatStream(_ChatStreamBase, Iterator[str]):
    """The answer's text pieces as they come; ``usage``, ``content``, ``job_id`` … afterwards. The request
    is sent on the first ``next``. ``close()`` (or leaving a ``with`` block) before the end cancels the
    job."""

    def __init__(self, open_frames: Callable[[Opened], Iterator[dict[str, Any]]]) -> None:
        super().__init__()
        self._open_frames = open_frames
        self._frames: Iterator[dict[str, Any]] | None = None

    def __iter__(self) -> Self:
        return self

    def __next__(self) -> str:
        if self._frames is None:
            self._frames = self._open_frames(self._opened)
        while True:
            piece = self._state.take(next(self._frames))
            if piece is not None:
                return piece

    def close(self) -> None:
        if isinstance(self._frames, Generator):
            self._frames.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()


class AsyncChatStream(_ChatStreamBase, AsyncIterator[str]):
    """``ChatStream`` for asyncio: ``async for piece in client.chat_stream(…)``; ``aclose()`` cancels
    early."""

    def __init__(self, open_frames: Callable[[Opened], AsyncIterator[dict[str, Any]]]) -> None:
        super().__init__()
        self._open_frames = open_frames
        self._frames: AsyncIterator[dict[str, Any]] | None = None

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> str:
        if self._frames is None:
            self._frames = self._open_frames(self._opened)
        while True:
            piece = self._state.take(await anext(self._frames))
            if piece is not None:
                return piece

    async def aclose(self) -> None:
        if isinstance(self._frames, AsyncGenerator):
            await self._frames.aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.aclose()


@dataclass(frozen=True)
class ImageResult:
    """A generated picture: its PNG bytes, the seed that makes it again, and where it was saved (if asked)."""

    png: bytes
    seed: int | None
    path: Path | None
    width: int
    height: int
    job_id: JobId | None


@dataclass
class _ImageState:
    on_progress: ProgressCallback | None
    job_id: JobId | None = None
    completed: dict[str, Any] | None = None

    def opened(self, response: httpx.Response) -> None:
        self.job_id = job_id_of(response)

    def take(self, frame: Mapping[str, Any]) -> None:
        if "error" in frame:
            raise _failed(frame, self.job_id)
        kind = frame.get("type")
        if kind == "image_generation.progress" and self.on_progress is not None:
            self.on_progress(int(frame["step"]), int(frame["total"]))
        elif kind == "image_generation.completed":
            self.completed = dict(frame)

    def result(self, out: Path | str | None) -> ImageResult:
        if self.completed is None:
            raise JobFailed(f"job {self.job_id or '?'} ended without an image", job_id=self.job_id,
                            status="failed", error="no image")
        png = base64.b64decode(self.completed.get("b64_json") or "")
        width, _, height = str(self.completed.get("size", "0x0")).partition("x")
        path = None
        if out is not None:
            path = Path(out)
            path.write_bytes(png)
        seed = self.completed.get("seed")
        return ImageResult(png=png, seed=seed if isinstance(seed, int) else None, path=path,
                           width=int(width or 0), height=int(height or 0), job_id=self.job_id)


# --- SSE frames of the OpenAI endpoints -----------------------------------------------------------------


def _frame(data: str) -> dict[str, Any]:
    try:
        value = json.loads(data)
    except ValueError:
        raise ArchipelagError(f"the stream sent a frame that is not JSON: {data[:80]!r}") from None
    if not isinstance(value, dict):
        raise ArchipelagError(f"the stream sent a frame that is not an object: {data[:80]!r}")
    return value


def _stream_timeout(timeout_s: float) -> httpx.Timeout:
    return httpx.Timeout(timeout_s, read=None)  # a queued job may wait long for its first byte


def sse_frames(http: httpx.Client, path: str, body: dict[str, Any], timeout_s: float,
               opened: Callable[[httpx.Response], None]) -> Generator[dict[str, Any], None, None]:
    """POST ``body`` and yield the JSON frames of the SSE answer up to ``[DONE]``; errors in our tree."""
    base_url = str(http.base_url)
    try:
        with http.stream("POST", path, json=body, headers={"Accept": "text/event-stream"},
                         timeout=_stream_timeout(timeout_s)) as response:
            if response.is_error:
                response.read()
                raise wire.error_for(response)
            opened(response)
            for sse in EventSource(response).iter_sse():
                if sse.data == "[DONE]":
                    return
                if sse.data:
                    yield _frame(sse.data)
    except SSEError as exc:
        raise ArchipelagError(f"the server did not answer with an event stream: {exc}") from None
    except httpx.TransportError as exc:
        raise wire.unreachable(exc, base_url) from exc
    raise Unreachable(f"the stream from {base_url} closed before its end")


async def async_sse_frames(http: httpx.AsyncClient, path: str, body: dict[str, Any], timeout_s: float,
                           opened: Callable[[httpx.Response], None]) -> AsyncGenerator[dict[str, Any], None]:
    """``sse_frames`` for asyncio."""
    base_url = str(http.base_url)
    try:
        async with http.stream("POST", path, json=body, headers={"Accept": "text/event-stream"},
                               timeout=_stream_timeout(timeout_s)) as response:
            if response.is_error:
                await response.aread()
                raise wire.error_for(response)
            opened(response)
            async for sse in EventSource(response).aiter_sse():
                if sse.data == "[DONE]":
                    return
                if sse.data:
                    yield _frame(sse.data)
    except SSEError as exc:
        raise ArchipelagError(f"the server did not answer with an event stream: {exc}") from None
    except httpx.TransportError as exc:
        raise wire.unreachable(exc, base_url) from exc
    raise Unreachable(f"the stream from {base_url} closed before its end")


def generate_image(http: httpx.Client, timeout_s: float, body: dict[str, Any], out: Path | str | None,
                   on_progress: ProgressCallback | None) -> ImageResult:
    state = _ImageState(on_progress)
    with_frames = sse_frames(http, IMAGES_PATH, body, timeout_s, state.opened)
    try:
        for frame in with_frames:
            state.take(frame)
    finally:
        with_frames.close()
    return state.result(out)


async def async_generate_image(http: httpx.AsyncClient, timeout_s: float, body: dict[str, Any],
                               out: Path | str | None, on_progress: ProgressCallback | None) -> ImageResult:
    state = _ImageState(on_progress)
    with_frames = async_sse_frames(http, IMAGES_PATH, body, timeout_s, state.opened)
    try:
        async for frame in with_frames:
            state.take(frame)
    finally:
        await with_frames.aclose()
    return state.result(out)
