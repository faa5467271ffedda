"""Builders for tests that run a whole network: free ports, settings, polling."""

from __future__ import annotations

import os
import random
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar

import httpx
import uvicorn
from fastapi import FastAPI

from archipelag.network import EmbeddedNetwork
from archipelag.settings import Settings

T = TypeVar("T")


# Ports for a test network's API and Ray head: free now, and below the kernel's ephemeral range (32768 and up here),
# where every port Ray's processes bind without a number (port 0) comes from, and above Ray's worker ports (10002 to
# 19999). A port the kernel handed out would be free when picked and could be taken by one of Ray's servers before
# the API binds it (seen: "Address already in use" as a network started).
_PORTS = range(20000, 32768)


def free_port() -> int:
    while True:
        port = random.choice(_PORTS)
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port


def network_settings(state_dir: Path, **overrides: object) -> Settings:
    """Settings for a test network: its own state dir and ports, fast heartbeats, Ray auth off."""
    values: dict[str, object] = {
        "state_dir": state_dir,
        "api_port": free_port(),
        "ray_head_port": free_port(),
        "ray_auth": "disabled",
        "ray_temp_dir": Path(os.environ["RAY_TMPDIR"]),  # this pytest process's (conftest)
        # Fast enough that a lost host reads offline within seconds; each beat and each fleet round (also at this
        # interval) costs the services CPU: a test network idled at 0.44 cores at 0.5 s and 0.25 at 10 s.
        "heartbeat_interval_s": 1.0,
        "rate_limit_per_min": 6000,  # the real limiter, at a pace tests do not reach
        **overrides,
    }
    return Settings(**values)  # type: ignore[arg-type]


@contextmanager
def local_ray(namespace: str, num_cpus: int = 1) -> Iterator[None]:
    """A one-node Ray cluster for this process, started as the network's nodes start: no dashboard, and the
    node's agents Archipelag's (``nodes.leave_out_ray_dashboard``); shut down after."""
    import ray

    from archipelag.nodes import leave_out_ray_dashboard

    leave_out_ray_dashboard()
    ray.init(address="local", num_cpus=num_cpus, include_dashboard=False, namespace=namespace, logging_level="ERROR")
    try:
        yield
    finally:
        ray.shutdown()


@contextmanager
def api_client(network: EmbeddedNetwork, timeout_s: float = 60) -> Iterator[httpx.Client]:
    """An HTTP client for a test network's API, with its account's key."""
    with httpx.Client(base_url=network.url, headers={"Authorization": f"Bearer {network.api_key}"},
                      timeout=timeout_s) as client:
        yield client


def eventually(check: Callable[[], T], timeout_s: float = 20, interval_s: float = 0.1) -> T:
    """Poll ``check`` until it returns something truthy; fail with its last answer."""
    deadline = time.monotonic() + timeout_s
    last: T | None = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(interval_s)
    raise AssertionError(f"condition not met within {timeout_s} s; last answer: {last!r}")


def enrol_local_host(settings: Settings, host_id: str, region: str = "eu-west") -> None:
    """What `archipelag up` does for its own hosts before starting them: a key in the state dir, enrolled under
    the network's own account (made here if the network has none yet)."""
    from archipelag import identity
    from archipelag.ledger import Ledger

    key = identity.load_or_create_key(identity.named_key_path(settings.state_dir, host_id))
    ledger = Ledger(settings.effective_database_url())
    try:
        ledger.migrate()
        owner = ledger.find_account("you@localhost") or ledger.create_account("you@localhost", 0)
        ledger.enrol_host(host_id, identity.public_hex(key), owner.id, host_id, region)
    finally:
        ledger.close()


@contextmanager
def serve(app: FastAPI, lifespan: str = "off") -> Iterator[str]:
    """Run the app with uvicorn on a free local port in a thread; yield its base URL."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan=lifespan))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        while not server.started:
            if not thread.is_alive():
                raise RuntimeError("the app did not start")
            threading.Event().wait(0.01)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=5)
        sock.close()
