"""Models: the API's objects as the client sees them (DESIGN §8), frozen and tolerant of extra fields.

A newer server may add fields; they are kept (``model_extra``) and never break an older client.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any, Generic, NewType, TypeVar

from pydantic import BaseModel, ConfigDict, Field

from archipelag.ids import HostId, JobId

Event = dict[str, Any]
"""One stream event as sent by the API: ``{"type": "token", "content": …, "seq": 0}`` and so on."""

FINAL_EVENT_TYPES = frozenset({"done", "error"})

ApiKeyId = NewType("ApiKeyId", str)
"""An API key's id as the API writes it: a string, like every id but a workload's (DESIGN §8)."""


class JobState(StrEnum):
    """A job's status in the public vocabulary of the API."""

    PENDING = "pending"  # accepted, not yet handed to placement
    QUEUED = "queued"  # waiting for a host
    RUNNING = "running"  # a host has it (assigned, started or streaming)
    COMPLETED = "completed"  # ended with a `done` event
    FAILED = "failed"  # ended with an error
    CANCELLED = "cancelled"  # cancelled by its owner
    TIMEOUT = "timeout"  # ran past its wall-clock budget

    @property
    def is_terminal(self) -> bool:
        return self in TERMINAL_STATES


TERMINAL_STATES = frozenset({JobState.COMPLETED, JobState.FAILED, JobState.CANCELLED, JobState.TIMEOUT})


class _ApiModel(BaseModel):
    model_config = ConfigDict(frozen=True, extra="allow")


class Usage(_ApiModel):
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0
    credits_used: float = 0.0


class JobReceipt(_ApiModel):
    """What the host that ran a completed job signed with its enrolled key: the job and attempt, the usage it was
    charged for, and the SHA-256 of its output (``Client.verify_receipt`` checks it offline)."""

    host_id: HostId
    host_public_key: str  # Ed25519, hex: the key the host enrolled with
    attempt: int
    usage: dict[str, int] = Field(default_factory=dict)  # prompt_tokens, completion_tokens
    output_sha256: str
    signed_at: float  # the host's clock, Unix seconds
    signature: str  # Ed25519, base64


class Job(_ApiModel):
    id: JobId
    workload_id: int | None = None
    workload_slug: str | None = None
    status: JobState
    input: dict[str, Any] = Field(default_factory=dict)
    output: str | None = None  # text for chat/text workloads; JSON-encoded for structured output
    error: str | None = None
    usage: Usage = Field(default_factory=Usage)
    host_id: HostId | None = None
    created_at: datetime | None = None
    started_at: datetime | None = None
    completed_at: datetime | None = None
    duration_ms: int | None = None
    bid_price: float | None = None  # credits: the most it pays per job
    clearing_price: float | None = None  # credits: the ask of the host that ran it, once it succeeded
    receipt: JobReceipt | None = None  # its host's signed receipt, once it completed on an enrolled host

    @property
    def is_terminal(self) -> bool:
        return self.status.is_terminal

    def output_json(self) -> Any:
        """The output decoded as JSON (structured workloads such as images); None when there is none."""
        return None if self.output is None else json.loads(self.output)


class Workload(_ApiModel):
    id: int
    name: str
    slug: str
    description: str = ""
    runtime_type: str = "container"  # "container" or "wasm"
    required_vram_mb: int | None = None
    required_ram_mb: int | None = None
    price_per_job: float = 0.0
    trust_level: int = 0
    is_enabled: bool = True


class Account(_ApiModel):
    id: str  # a string in the API, whatever the network stores
    email: str | None = None
    credits: float = 0.0
    created_at: datetime | None = None


class ApiKey(_ApiModel):
    id: ApiKeyId
    name: str
    prefix: str = ""
    scopes: tuple[str, ...] = ()
    created_at: datetime | None = None
    last_used_at: datetime | None = None
    expires_at: datetime | None = None
    key: str | None = None  # the full key: present only in the answer that created it


class HostCapabilities(_ApiModel):
    cpu_cores: int | None = None
    ram_mb: int | None = None
    gpu_model: str | None = None
    gpu_vram_mb: int | None = None
    runtimes: tuple[str, ...] = ()


class Host(_ApiModel):
    id: HostId
    name: str | None = None
    status: str
    region: str | None = None
    capabilities: HostCapabilities = Field(default_factory=HostCapabilities)
    karma_score: float = 0.0
    active_jobs: int = 0
    last_heartbeat_at: datetime | None = None
    owner_account_id: str | None = None  # in your own hosts' list, and once you approve or revoke one
    revoked: bool = False


class HostKarma(_ApiModel):
    host_id: HostId
    karma_score: float
    karma_total: float = 0.0  # the points behind the score (a negative total recovers with time)
    standing: str = "good"  # good, cooldown (fewer jobs) or suspended (none)
    placement_share: float = 1.0
    reason: str | None = None  # why it is cooled down or suspended
    events: tuple[dict[str, Any], ...] = ()  # the latest; host_karma_history pages through all


BATCH_ENDED = frozenset({"succeeded", "failed", "cancelled"})  # a batch's states (the internal vocabulary)


class BatchChild(_ApiModel):
    """One child job of a batch."""

    id: JobId
    batch_index: int
    state: str  # submitted, queued, assigned, started, streaming, succeeded, failed, cancelled, timed_out
    error: str | None = None
    host_id: HostId | None = None


class BatchConfig(_ApiModel):
    """A batch's settings and counts."""

    chunk_count: int
    merge_strategy: str = "concat"
    fail_mode: str = "best_effort"
    completed: int = 0
    failed: int = 0
    max_parallelism: int | None = None
    bid_price: float | None = None


class BatchJob(_ApiModel):
    """A batch (its parent job) with its children, as ``POST /api/v1/jobs/batch`` answers it."""

    id: JobId
    state: str
    workload: str
    batch: BatchConfig
    children: tuple[BatchChild, ...] = ()
    created_at: datetime

    @property
    def is_complete(self) -> bool:
        return self.state in BATCH_ENDED

    @property
    def progress(self) -> float:
        """The share of children that ended, 0 to 1."""
        if self.batch.chunk_count == 0:
            return 0.0
        return (self.batch.completed + self.batch.failed) / self.batch.chunk_count


class BatchProgress(_ApiModel):
    """How far a batch is: children per state, and each child."""

    parent_id: JobId
    parent_state: str
    chunk_count: int
    merge_strategy: str
    fail_mode: str
    child_states: dict[str, int] = Field(default_factory=dict)
    children: tuple[BatchChild, ...] = ()

    @property
    def is_complete(self) -> bool:
        return self.parent_state in BATCH_ENDED


class MarketRate(_ApiModel):
    """A workload's market now: the rate (the median effective ask of the hosts that could run it, or the catalog
    price × surge with none), in credits per job."""

    workload: str
    rate: float | None = None
    hosts: int = 0
    lowest: float | None = None
    highest: float | None = None
    surge: float = 1.0
    catalog_price: float | None = None


class PriceBucket(_ApiModel):
    """The prices a workload's settled jobs cleared at in one bucket of time, in credits."""

    start: datetime
    count: int
    min: float
    median: float
    avg: float
    max: float


class MarketHistory(_ApiModel):
    workload: str
    since: datetime
    bucket_s: int
    buckets: tuple[PriceBucket, ...] = ()


class AskingPrices(_ApiModel):
    """What a host asks per job, in credits, by workload slug or family (``llm-*``)."""

    host_id: HostId
    prices: dict[str, float] = Field(default_factory=dict)


T = TypeVar("T")


@dataclass(frozen=True)
class Page(Generic[T]):
    """One page of a list: its items and the server's ``meta`` (total, limit, offset)."""

    items: tuple[T, ...]
    total: int
    limit: int
    offset: int

    def __iter__(self) -> Iterator[T]:
        return iter(self.items)

    def __len__(self) -> int:
        return len(self.items)

    @property
    def has_more(self) -> bool:
        return self.offset + len(self.items) < self.total
