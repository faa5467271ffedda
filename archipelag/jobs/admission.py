"""Admission: what a job must pass before it is queued — the workload exists, its input is complete, of a size
its workload accepts and, for the built-in chat and image workloads, of the right types and ranges; the queue has
room; some host could ever run it — and what it reserves. Pure apart from the ranking it is handed.

Numbers are what they claim: ``max_tokens: 2000.0``, ``true``, ``1e308``, ``NaN`` are refused (422), never
rounded or read as a default, so a job reserves for exactly what it may make. The ranges are the workloads' own
(``workloads/llm-chat``, ``workloads/sd-diffusers``), checked here before anything is held.
"""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictStr,
    ValidationError,
    field_validator,
)

from archipelag.catalog import MICRO, Manifest, lookup, max_price_micro
from archipelag.errors import NoCapacity, PayloadTooLarge, ValidationFailed
from archipelag.ids import HostId, WorkloadSlug
from archipelag.placement.scoring import JobRequest

MAX_BID_CREDITS = 1_000_000
# A request's bid: the most its job pays per job, in credits, to the micro-credit (a per-token workload's tokens
# come on top at the catalog's price). Lower than every host asks, the job is refused (503) before anything is held.
BidPrice = Annotated[Decimal, Field(ge=0, le=MAX_BID_CREDITS, decimal_places=6, allow_inf_nan=False)]

# llm-chat (workloads/llm-chat/main.py)
MAX_MESSAGES = 128
MAX_MESSAGE_BYTES = 32 * 1024
MAX_TOKENS = 4096
MAX_STOPS = 4
MAX_CHAT_SEED = 2**31 - 1
# the diffusers workloads (workloads/sd-diffusers/main.py)
MIN_SIDE, MAX_SIDE, SIDE_STEP = 64, 1024, 8
MAX_STEPS = 100
MAX_GUIDANCE = 20.0
MAX_IMAGE_SEED = 2**32 - 1

Finite = Annotated[float, Field(strict=True, allow_inf_nan=False)]  # an int is a float too; NaN and inf are not
Tokens = Annotated[int, Field(strict=True, ge=1, le=MAX_TOKENS)]
ChatSeed = Annotated[int, Field(strict=True, ge=0, le=MAX_CHAT_SEED)]
Side = Annotated[int, Field(strict=True, ge=MIN_SIDE, le=MAX_SIDE, multiple_of=SIDE_STEP)]
Steps = Annotated[int, Field(strict=True, ge=1, le=MAX_STEPS)]
ImageSeed = Annotated[int, Field(strict=True, ge=0, le=MAX_IMAGE_SEED)]
Stops = Annotated[list[Annotated[StrictStr, Field(min_length=1)]], Field(max_length=MAX_STOPS),
                  BeforeValidator(lambda value: [value] if isinstance(value, str) else value)]


def _fits(value: str | None) -> str | None:
    if value is not None and len(value.encode()) > MAX_MESSAGE_BYTES:
        raise ValueError(f"longer than {MAX_MESSAGE_BYTES} bytes")
    return value


class _Input(BaseModel):
    model_config = ConfigDict(extra="allow")  # a workload ignores fields it does not know


class ChatTurn(_Input):
    role: Literal["system", "user", "assistant", "tool"]
    content: StrictStr

    @field_validator("content")
    @classmethod
    def _content_fits(cls, value: str) -> str | None:
        return _fits(value)


class ChatInput(_Input):
    """llm-chat's input: ``messages``, or ``prompt`` with ``system_prompt``; and the sampling parameters."""

    messages: list[ChatTurn] | None = Field(default=None, min_length=1, max_length=MAX_MESSAGES)
    prompt: StrictStr | None = None
    system_prompt: StrictStr | None = None
    max_tokens: Tokens | None = None
    temperature: Annotated[Finite, Field(ge=0, le=2)] | None = None
    top_p: Annotated[Finite, Field(ge=0, le=1)] | None = None
    stop: Stops | None = None  # a string or a list of them
    seed: ChatSeed | None = None

    @field_validator("prompt", "system_prompt")
    @classmethod
    def _texts_fit(cls, value: str | None) -> str | None:
        return _fits(value)


class ImageInput(_Input):
    """The diffusers workloads' input."""

    prompt: StrictStr = Field(min_length=1)
    negative_prompt: StrictStr | None = None
    width: Side | None = None
    height: Side | None = None
    steps: Steps | None = None
    guidance_scale: Annotated[Finite, Field(ge=0, le=MAX_GUIDANCE)] | None = None
    seed: ImageSeed | None = None


INPUTS: dict[str, type[_Input]] = {"gguf": ChatInput, "diffusers": ImageInput}  # by the manifest's model kind


def job_request(manifest: Manifest, region: str | None, bid_micro: int | None = None) -> JobRequest:
    """What placement is asked for a job of ``manifest`` from ``region`` that bids ``bid_micro`` (None: no price
    filter); a host without an ask for the workload asks its catalog price."""
    return JobRequest(workload=manifest.slug, runtime=manifest.runtime, required_ram_mb=manifest.required_ram_mb,
                      required_vram_mb=manifest.required_vram_mb, caller_region=region, bid_micro=bid_micro,
                      catalog_price_micro=manifest.price_micro)


def input_limit(manifest: Manifest, max_input_bytes: int) -> int:
    """The most bytes of input ``manifest`` takes: the network's limit, narrowed by its ``[limits] input_bytes``."""
    narrowed = manifest.limits.get("input_bytes")
    if isinstance(narrowed, int) and not isinstance(narrowed, bool) and narrowed > 0:
        return min(max_input_bytes, narrowed)
    return max_input_bytes


def input_bytes(job_input: dict[str, Any]) -> int:
    """The input's size as compact UTF-8 JSON; ValidationFailed when it is not JSON (NaN, Infinity)."""
    try:
        encoded = json.dumps(job_input, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
    except (ValueError, TypeError, RecursionError):
        raise ValidationFailed("the input is not plain JSON: NaN and Infinity are not numbers",
                               errors={"input": "not plain JSON"}) from None
    return len(encoded.encode())


def validate_input(manifest: Manifest, job_input: dict[str, Any], max_input_bytes: int) -> None:
    limit = input_limit(manifest, max_input_bytes)
    size = input_bytes(job_input)
    if size > limit:
        raise PayloadTooLarge(f"the input of {manifest.slug} is {size} bytes as JSON; it takes at most {limit}",
                              limit_bytes=limit)
    missing = {f"input.{name}": "field required" for name in manifest.required_inputs if name not in job_input}
    if missing:
        raise ValidationFailed(f"{manifest.slug} needs {', '.join(sorted(missing))}", errors=missing)
    shape = INPUTS.get(manifest.model.kind) if manifest.model is not None else None
    if shape is not None:
        _check_shape(manifest, shape, job_input)


def _check_shape(manifest: Manifest, shape: type[_Input], job_input: dict[str, Any]) -> None:
    try:
        checked = shape.model_validate(job_input)
    except ValidationError as exc:
        errors: dict[str, str] = {}
        for item in exc.errors(include_url=False):
            name = ".".join(str(part) for part in ("input", *item["loc"]))
            errors.setdefault(name, item["msg"])
        raise ValidationFailed(f"the input of {manifest.slug} is invalid: "
                               f"{'; '.join(f'{k}: {v}' for k, v in errors.items())}", errors=errors) from None
    if isinstance(checked, ChatInput) and checked.messages is None and checked.prompt is None:
        raise ValidationFailed(f"{manifest.slug} needs input.messages or input.prompt",
                               errors={"input.messages": "field required (or input.prompt)"})


def admit(catalog: dict[WorkloadSlug, Manifest], slug: str, job_input: dict[str, Any],
          max_input_bytes: int) -> tuple[Manifest, int]:
    """The workload and the credits to reserve (its maximum price); NotFound, PayloadTooLarge or
    ValidationFailed when the request is wrong."""
    manifest = lookup(catalog, slug)
    validate_input(manifest, job_input, max_input_bytes)
    return manifest, max_price_micro(manifest, job_input)


def bid_micro(bid_price: Decimal | None) -> int | None:
    """A request's bid in micro-credits (None: it named none)."""
    return int(bid_price * MICRO) if bid_price is not None else None


def hosts_now(ranking: list[HostId] | NoCapacity) -> list[HostId]:
    """The hosts to try first; raises when no online host could ever run the job (503 before anything is
    written). Hosts that could but are all busy give an empty list: the job waits in the queue."""
    if isinstance(ranking, NoCapacity):
        if ranking.details.get("full"):
            return []
        raise ranking
    return ranking
