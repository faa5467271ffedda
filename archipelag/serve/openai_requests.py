"""OpenAI requests: the bodies of the OpenAI-compatible endpoints, checked against our limits and turned into
workload inputs (``llm-chat`` for chat, the diffusers workloads for images). No FastAPI here.

Limits (DESIGN §8): at most 128 messages, 32 KB (UTF-8) per message, ``max_tokens`` 1-4096, ``n`` = 1; the
image sizes, steps and guidance the diffusers workloads take. They are the jobs core's (``jobs.admission``).
Numbers are strict: ``max_tokens: 2000.0`` or ``true`` is no integer, ``NaN`` no temperature.
A breach raises ``ValidationFailed`` whose ``errors`` map names the field as OpenAI's ``param`` does
(``messages.3.content``); the API renders it as 422.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt

from archipelag.catalog import DEFAULT_MAX_TOKENS  # sent explicitly, so finish_reason is exact
from archipelag.errors import ValidationFailed
from archipelag.jobs.admission import (
    MAX_CHAT_SEED,
    MAX_GUIDANCE,
    MAX_MESSAGE_BYTES,
    MAX_MESSAGES,
    MAX_SIDE,
    MAX_STEPS,
    MAX_STOPS,
    MAX_TOKENS,
    MIN_SIDE,
    SIDE_STEP,
    BidPrice,
    Finite,
)

ROLES = frozenset({"system", "developer", "user", "assistant", "tool"})  # developer: OpenAI's newer system
MAX_PROMPT_BYTES = 4 * 1024
MAX_SEED = MAX_CHAT_SEED  # images too: OpenAI clients expect a 31-bit seed


class _Body(BaseModel):
    model_config = ConfigDict(extra="allow")  # OpenAI clients send fields we do not use; they are ignored


class ChatMessage(_Body):
    role: str
    content: str | list[dict[str, Any]] | None = None
    name: str | None = None


class StreamOptions(_Body):
    include_usage: StrictBool = False


class ChatRequest(_Body):
    model: str = Field(min_length=1, max_length=200)
    messages: list[ChatMessage]
    stream: StrictBool = False
    stream_options: StreamOptions | None = None
    max_tokens: StrictInt | None = None
    max_completion_tokens: StrictInt | None = None
    temperature: Finite | None = None
    top_p: Finite | None = None
    stop: str | list[str] | None = None
    seed: StrictInt | None = None
    n: StrictInt | None = None
    user: str | None = None
    bid_price: BidPrice | None = None  # Archipelag's: the most the job pays per job, in credits

    @property
    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)


class ImageRequest(_Body):
    prompt: str = Field(min_length=1)
    model: str | None = None
    n: StrictInt | None = None
    size: str | None = None
    response_format: str | None = None
    stream: StrictBool = False
    # Archipelag extensions (diffusers parameters)
    negative_prompt: str | None = None
    steps: StrictInt | None = None
    guidance_scale: Finite | None = None
    seed: StrictInt | None = None
    user: str | None = None
    bid_price: BidPrice | None = None


class _Problems:
    """Collects field → message; ``raise_if_any`` raises one ValidationFailed naming the first."""

    def __init__(self) -> None:
        self.errors: dict[str, str] = {}

    def add(self, param: str, message: str) -> None:
        self.errors.setdefault(param, message)

    def raise_if_any(self) -> None:
        if self.errors:
            param, message = next(iter(self.errors.items()))
            more = f" (and {len(self.errors) - 1} more)" if len(self.errors) > 1 else ""
            raise ValidationFailed(f"{param}: {message}{more}", errors=self.errors, param=param)


def _text_of(content: str | list[dict[str, Any]] | None, param: str, problems: _Problems) -> str:
    """A message's content as one string: text parts are joined; other parts (images, audio) are refused."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    texts = []
    for index, part in enumerate(content):
        if part.get("type") != "text" or not isinstance(part.get("text"), str):
            problems.add(f"{param}.{index}", "only text content parts are supported")
            continue
        texts.append(part["text"])
    return "".join(texts)


def _shown(value: float) -> str:
    text = f"{value:g}" if isinstance(value, float) else str(value)
    return text if len(text) <= 24 else f"{text[:20]}…"


def _check_range(problems: _Problems, param: str, value: float | None, low: float, high: float) -> None:
    if value is not None and not low <= value <= high:
        problems.add(param, f"must be between {low:g} and {high:g}, not {_shown(value)}")


def _stops(stop: str | list[str] | None, problems: _Problems) -> list[str] | None:
    if stop is None:
        return None
    stops = [stop] if isinstance(stop, str) else stop
    if len(stops) > MAX_STOPS or not all(stops):
        problems.add("stop", f"must be a non-empty string or a list of up to {MAX_STOPS} of them")
    return stops or None


def max_tokens_of(body: ChatRequest) -> int:
    value = body.max_completion_tokens if body.max_completion_tokens is not None else body.max_tokens
    return DEFAULT_MAX_TOKENS if value is None else value


def chat_input(body: ChatRequest) -> dict[str, Any]:
    """The ``llm-chat`` input for a chat request; ValidationFailed (422) past a limit."""
    problems = _Problems()
    if not body.messages:
        problems.add("messages", "must hold at least one message")
    if len(body.messages) > MAX_MESSAGES:
        problems.add("messages", f"at most {MAX_MESSAGES} messages, not {len(body.messages)}")
    messages = []
    for index, message in enumerate(body.messages[:MAX_MESSAGES]):
        param = f"messages.{index}"
        if message.role not in ROLES:
            problems.add(f"{param}.role", f"must be one of {', '.join(sorted(ROLES))}, not {message.role!r}")
        content = _text_of(message.content, f"{param}.content", problems)
        if len(content.encode()) > MAX_MESSAGE_BYTES:
            problems.add(f"{param}.content", f"longer than {MAX_MESSAGE_BYTES} bytes")
        role = "system" if message.role == "developer" else message.role
        messages.append({"role": role, "content": content})
    max_tokens = max_tokens_of(body)
    param = "max_completion_tokens" if body.max_completion_tokens is not None else "max_tokens"
    _check_range(problems, param, max_tokens, 1, MAX_TOKENS)
    _check_range(problems, "temperature", body.temperature, 0, 2)
    _check_range(problems, "top_p", body.top_p, 0, 1)
    _check_range(problems, "seed", body.seed, 0, MAX_SEED)
    if body.n is not None and body.n != 1:
        problems.add("n", "only n = 1 is supported")
    stops = _stops(body.stop, problems)
    problems.raise_if_any()
    # The seed is fixed here, not left to the host: a retry after a host was lost then replays the same tokens,
    # and the stream goes on where it stopped (openai_wire.Transcript).
    seed = body.seed if body.seed is not None else secrets.randbelow(MAX_SEED + 1)
    job_input: dict[str, Any] = {"messages": messages, "max_tokens": max_tokens, "seed": seed}
    for name, value in (("temperature", body.temperature), ("top_p", body.top_p), ("stop", stops)):
        if value is not None:
            job_input[name] = value
    return job_input


@dataclass(frozen=True)
class ImageDefaults:
    width: int
    height: int
    steps: int
    guidance_scale: float


# Per image model: sd-tiny is a tiny random-weight pipeline (64×64 in ~0.1 s on a CPU, DESIGN §9), SDXL is
# made for 1024×1024; any other model gets Stable Diffusion 1.x's 512×512.
IMAGE_DEFAULTS: dict[str, ImageDefaults] = {
    "sd-tiny": ImageDefaults(64, 64, 10, 7.5),
    "sdxl": ImageDefaults(1024, 1024, 30, 7.0),
}
FALLBACK_IMAGE_DEFAULTS = ImageDefaults(512, 512, 25, 7.5)


def _side_digits(text: str) -> bool:
    return 0 < len(text) <= 5 and text.isascii() and text.isdigit()  # "²" is a digit to isdigit, not to int


def _size(value: str, problems: _Problems) -> tuple[int, int] | None:
    width, sep, height = value.lower().partition("x")
    if not sep or not _side_digits(width) or not _side_digits(height):
        problems.add("size", f"must be WIDTHxHEIGHT, e.g. 512x512, not {value[:20]!r}")
        return None
    w, h = int(width), int(height)
    if not (MIN_SIDE <= w <= MAX_SIDE and MIN_SIDE <= h <= MAX_SIDE) or w % SIDE_STEP or h % SIDE_STEP:
        problems.add("size", f"each side must be a multiple of {SIDE_STEP} from {MIN_SIDE} to {MAX_SIDE}, "
                     f"not {value[:20]!r}")
        return None
    return w, h


@dataclass(frozen=True)
class ImageJob:
    input: dict[str, Any]
    width: int
    height: int


def image_input(body: ImageRequest, model_id: str) -> ImageJob:
    """The diffusers workload input for an image request; ValidationFailed (422) past a limit."""
    problems = _Problems()
    defaults = IMAGE_DEFAULTS.get(model_id, FALLBACK_IMAGE_DEFAULTS)
    if len(body.prompt.encode()) > MAX_PROMPT_BYTES:
        problems.add("prompt", f"longer than {MAX_PROMPT_BYTES} bytes")
    if body.negative_prompt is not None and len(body.negative_prompt.encode()) > MAX_PROMPT_BYTES:
        problems.add("negative_prompt", f"longer than {MAX_PROMPT_BYTES} bytes")
    if body.n is not None and body.n != 1:
        problems.add("n", "only n = 1 is supported")
    if body.response_format not in (None, "b64_json"):
        problems.add("response_format", "only b64_json is supported (this network does not host image URLs)")
    size = _size(body.size, problems) if body.size not in (None, "auto") else None
    width, height = size or (defaults.width, defaults.height)
    _check_range(problems, "steps", body.steps, 1, MAX_STEPS)
    _check_range(problems, "guidance_scale", body.guidance_scale, 0, MAX_GUIDANCE)
    _check_range(problems, "seed", body.seed, 0, MAX_SEED)
    problems.raise_if_any()
    job_input: dict[str, Any] = {
        "prompt": body.prompt, "width": width, "height": height,
        "steps": body.steps if body.steps is not None else defaults.steps,
        "guidance_scale": body.guidance_scale if body.guidance_scale is not None else defaults.guidance_scale,
    }
    if body.negative_prompt:
        job_input["negative_prompt"] = body.negative_prompt
    if body.seed is not None:
        job_input["seed"] = body.seed
    return ImageJob(job_input, width, height)

