"""A model network of stand-ins behind the real API app: the real ``build_api``, ``Services``, ``JobService``
(dispatcher and relay), ledger (SQLite in a temp dir) and placement (in-process), with scripted hosts in place
of HostAgents.

The scripted hosts answer chat jobs with the words of the last message as tokens (capped at ``max_tokens``)
and image jobs with ``progress`` events and a real PNG. Words in the prompt steer them:
``fail`` (an error after one token), ``refuse`` (an error before any output), ``hang`` (one token, then
nothing until cancelled), ``park`` (nothing at all until cancelled). In a ``signed`` network the host has an
enrolled key, signs a receipt into each done event, and the jobs service checks it, as in a network of real hosts.
"""

from __future__ import annotations

import asyncio
import base64
import zlib
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import netutil
from builders import NOW, a_host
from fastapi import FastAPI
from fastapi.testclient import TestClient
from nacl.signing import SigningKey

from archipelag import identity, receipts
from archipelag.catalog import Manifest, ModelSpec
from archipelag.ids import HostId, JobId, WorkloadSlug
from archipelag.jobs.client import JobsClient
from archipelag.jobs.service import JobService
from archipelag.ledger import Ledger
from archipelag.ledger.client import LedgerClient
from archipelag.placement.client import PlacementClient
from archipelag.protocol import Event
from archipelag.runtimes.base import JobSpec
from archipelag.serve.app import build_api
from archipelag.serve.services import Services
from archipelag.settings import Settings

HOST = HostId("host-a")


def _manifest(slug: str, model: ModelSpec | None, **extra: Any) -> Manifest:
    return Manifest(slug=WorkloadSlug(slug), name=slug, description="", runtime="container", trust_level=1,
                    price_micro=10_000, required_ram_mb=256, model=model, **extra)


CHAT = _manifest("llm-chat", ModelSpec("smollm2-135m-instruct", "gguf", "m.gguf", "0" * 64), worker=True)
IMAGE = _manifest("sd-diffusers", ModelSpec("sd-tiny", "diffusers", "sd-tiny", "0" * 64))
SDXL = _manifest("sdxl", ModelSpec("sdxl", "diffusers", "sdxl", "0" * 64), required_vram_mb=8192)
PLAIN = _manifest("text-stats", None)
CATALOG = {m.slug: m for m in (CHAT, IMAGE, PLAIN, SDXL)}


def png(width: int, height: int) -> bytes:
    """A grey PNG, written by hand (no Pillow needed)."""
    def block(kind: bytes, data: bytes) -> bytes:
        return len(data).to_bytes(4, "big") + kind + data + zlib.crc32(kind + data).to_bytes(4, "big")
    header = width.to_bytes(4, "big") + height.to_bytes(4, "big") + bytes([8, 0, 0, 0, 0])
    rows = b"".join(b"\x00" + b"\x80" * width for _ in range(height))
    chunks = block(b"IHDR", header) + block(b"IDAT", zlib.compress(rows)) + block(b"IEND", b"")
    return b"\x89PNG\r\n\x1a\n" + chunks


@dataclass
class ScriptedHost:
    """Runs chat and image jobs from a script; records what it ran and what it was asked to stop."""

    ran: list[dict[str, Any]] = field(default_factory=list)
    cancelled: list[JobId] = field(default_factory=list)
    token_delay_s: float = 0.0
    key: SigningKey | None = None  # HOST's: it signs a receipt into each done event
    _stops: dict[JobId, asyncio.Event] = field(default_factory=dict)

    async def run(self, spec: JobSpec) -> AsyncIterator[Event]:
        self.ran.append(dict(spec.input))
        stop = self._stops[spec.job_id] = asyncio.Event()
        yield {"type": "status", "message": "loading model"}
        if "messages" in spec.input:
            events = self._chat(spec.input)
        else:
            events = self._image(spec.input)
        produced: list[Event] = []
        for event in events:
            if event["type"] == "wait":
                while not stop.is_set():  # alive and quiet: keep the lease
                    try:
                        await asyncio.wait_for(stop.wait(), 0.5)
                    except TimeoutError:
                        yield {"type": "keepalive"}
                yield {"type": "error", "message": "cancelled by the user", "code": "cancelled"}
                return
            if self.token_delay_s:
                await asyncio.sleep(self.token_delay_s)
            produced.append(event)
            if event["type"] == "done" and self.key is not None:
                event = {**event, "receipt": receipts.sign(identity.key_signer(self.key, HOST), spec.job_id,
                                                           spec.attempt, produced)}
            yield event

    async def run_batches(self, spec: JobSpec) -> AsyncIterator[list[Event]]:
        async for event in self.run(spec):
            yield [] if event["type"] == "keepalive" else [event]

    async def cancel(self, job_id: JobId, reason: str = "") -> bool:
        self.cancelled.append(job_id)
        stop = self._stops.get(job_id)
        if stop is None:
            return False
        stop.set()
        return True

    @staticmethod
    def _chat(job_input: dict[str, Any]) -> list[Event]:
        words = str(job_input["messages"][-1]["content"]).split()
        if "refuse" in words:
            return [{"type": "error", "message": "the model refused the input", "code": "invalid_input"}]
        if "park" in words:
            return [{"type": "wait"}]
        tokens = [(" " if i else "") + w for i, w in enumerate(words)][: job_input["max_tokens"]]
        if "fail" in words:
            return [{"type": "token", "content": tokens[0]},
                    {"type": "error", "message": "the model crashed", "code": "workload_error"}]
        if "hang" in words:
            return [{"type": "token", "content": tokens[0]}, {"type": "wait"}]
        events: list[Event] = [{"type": "token", "content": t} for t in tokens]
        prompt_tokens = sum(len(str(m["content"]).split()) for m in job_input["messages"])
        events.append({"type": "done", "seed": job_input.get("seed", 42),
                       "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": len(tokens)}})
        return events

    @staticmethod
    def _image(job_input: dict[str, Any]) -> list[Event]:
        if "refuse" in job_input["prompt"].split():
            return [{"type": "error", "message": "the prompt was refused", "code": "invalid_input"}]
        if "park" in job_input["prompt"].split():
            return [{"type": "progress", "step": 1, "total": 2}, {"type": "wait"}]
        width, height, steps = job_input["width"], job_input["height"], job_input["steps"]
        seed = job_input.get("seed", 7)
        events: list[Event] = [{"type": "progress", "step": s, "total": steps} for s in range(1, steps + 1)]
        data = base64.b64encode(png(width, height)).decode()
        events.append({"type": "image", "data": data, "format": "png", "width": width, "height": height})
        events.append({"type": "done", "seed": seed,
                       "output": {"format": "png", "width": width, "height": height, "seed": seed}})
        return events


@dataclass
class ModelNetwork:
    services: Services
    ledger: Ledger
    placement: PlacementClient
    host: ScriptedHost
    key: str
    account_id: int
    app: FastAPI

    def job(self, job_id: str) -> Any:
        return self.ledger.get_job(job_id)

    def client(self, key: str | None = None) -> TestClient:
        """A client of the app in this process, with ``key`` (the network's own admin key by default); use it
        as a context manager."""
        return TestClient(self.app, headers={"Authorization": f"Bearer {key or self.key}"})


def a_model_network(tmp_path: Path, *, hosts: int = 1, slots: int = 4, active_jobs: int = 0,
                    runtimes: frozenset[str] = frozenset({"container"}), queue_timeout_s: float = 5.0,
                    credits_micro: int = 1_000_000, queue_max_jobs: int = 1000, signed: bool = False,
                    **overrides: Any) -> ModelNetwork:
    """The network; its account (the first: an admin) has a key with every scope. ``overrides`` replace settings
    (the real rate limiter runs, at a pace tests do not reach unless they mean to). ``signed``: its hosts are
    enrolled (owned by that account) with keys, HOST signs its receipts, and the jobs service checks them."""
    settings = Settings(**{"state_dir": tmp_path, "queue_timeout_s": queue_timeout_s, "rate_limit_per_min": 6000,
                           "queue_max_jobs": queue_max_jobs, **overrides})
    ledger = Ledger(f"sqlite:///{tmp_path / 'ledger.db'}")
    ledger.migrate()
    ledger.sync_catalog(CATALOG.values())
    account = ledger.create_account("ada@example.org", credits_micro)
    _, key = ledger.create_api_key(account.id, "test", ("keys", "read", "write"))
    placement = PlacementClient.local(settings, clock=lambda: NOW, catalog=CATALOG,  # its asks bound by this catalog
                                      book=ledger)  # karma and asks are the ledger's word
    host = ScriptedHost(key=identity.generate_key() if signed else None)
    jobs = JobService(settings, dict(CATALOG), LedgerClient.local(ledger), placement, lambda _: host,
                      identities=LedgerClient.local(ledger).host_identity if signed else None)
    services = Services(settings=settings, ledger=LedgerClient.local(ledger), jobs=JobsClient.local(jobs),
                        placement=placement, catalog=dict(CATALOG))
    for index in range(hosts):
        host_id = HostId(f"host-{chr(ord('a') + index)}")
        ledger.upsert_host(host_id, host_id, "eu-west", {})  # recorded before it joins, as enrolment records it
        if signed:
            host_key = host.key if host_id == HOST else identity.generate_key()
            assert host_key is not None
            ledger.enrol_host(host_id, identity.public_hex(host_key), account.id, host_id, "eu-west")
        placement.register(a_host(host_id, runtimes=runtimes, slots=slots, active_jobs=active_jobs))
    return ModelNetwork(services, ledger, placement, host, key, account.id, build_api(services))


@contextmanager
def serve(app: FastAPI) -> Iterator[str]:
    """The API with its lifespan on (its services start and stop with it)."""
    with netutil.serve(app, lifespan="on") as url:
        yield url
