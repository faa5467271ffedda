"""A driver of a test network's hosts' cluster, for tests whose own process is a driver of the coordinator's.

The coordinator's services and the hosts run in two Ray clusters (``archipelag/coordinator.py``), and a process is
a driver of one cluster at most. A test that looks at the hosts' cluster, or attacks from a node of it, does so
through ``HostsDriver``: a process of its own, connected to the hosts' head with the hosts' token, that runs each
function it is sent (pickled by value) as a Ray task there and sends back what it returned, or what it raised.
"""

from __future__ import annotations

import os
import struct
import subprocess
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import ray

from archipelag.network import EmbeddedNetwork

_DRIVER = """
import os, struct, sys, logging
import ray
from ray import cloudpickle
from archipelag.nodes import keep_loopback_node_addresses

answers = os.fdopen(os.dup(1), "wb")
os.dup2(2, 1)
keep_loopback_node_addresses()
ray.init(address=sys.argv[1], namespace=sys.argv[2], logging_level=logging.ERROR, log_to_driver=False)
answers.write(b"ready\\n"); answers.flush()
while True:
    size = sys.stdin.buffer.read(8)
    if len(size) < 8:
        break
    fn, args, options = cloudpickle.loads(sys.stdin.buffer.read(struct.unpack(">Q", size)[0]))
    try:
        if options is None:
            answer = ("returned", fn(*args))
        else:
            answer = ("returned", ray.get(ray.remote(fn).options(**options).remote(*args), timeout=120))
    except Exception as exc:
        cause = exc.cause if isinstance(exc, ray.exceptions.RayTaskError) and exc.cause is not None else exc
        answer = ("raised", f"{type(cause).__name__}: {cause}")
    data = cloudpickle.dumps(answer)
    answers.write(struct.pack(">Q", len(data)) + data); answers.flush()
"""


class Raised(str):
    """What a function sent to the hosts' cluster raised: its type and message."""


class HostsDriver:
    def __init__(self, process: subprocess.Popen[bytes]) -> None:
        self._process = process

    def call(self, fn: Callable[..., Any], *args: Any, **options: Any) -> Any:
        """``fn(*args)`` as a Ray task with ``options`` on the hosts' cluster: what it returned, or ``Raised``."""
        return self._send(fn, args, options)

    def in_driver(self, fn: Callable[..., Any], *args: Any) -> Any:
        """``fn(*args)`` in the driver itself (``ray.nodes()``, a named actor's lookup)."""
        return self._send(fn, args, None)

    def nodes(self) -> list[dict[str, Any]]:
        return [n for n in self.in_driver(ray.nodes) if n["Alive"]]

    def _send(self, fn: Callable[..., Any], args: tuple[Any, ...], options: dict[str, Any] | None) -> Any:
        assert self._process.stdin is not None and self._process.stdout is not None
        data = ray.cloudpickle.dumps((fn, args, options))
        self._process.stdin.write(struct.pack(">Q", len(data)) + data)
        self._process.stdin.flush()
        size = self._process.stdout.read(8)
        if len(size) < 8:
            raise RuntimeError(f"the hosts' cluster's driver exited ({self._process.wait()})")
        kind, value = ray.cloudpickle.loads(self._process.stdout.read(struct.unpack(">Q", size)[0]))
        return Raised(value) if kind == "raised" else value


@contextmanager
def hosts_driver(network: EmbeddedNetwork) -> Iterator[HostsDriver]:
    settings = network.settings
    process = subprocess.Popen([sys.executable, "-c", _DRIVER, network.coordinator.address, settings.ray_namespace],
                               stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                               env={**os.environ, **settings.ray_env()})
    try:
        assert process.stdout is not None
        if process.stdout.readline() != b"ready\n":
            raise RuntimeError(f"the hosts' cluster's driver did not start ({process.wait()})")
        yield HostsDriver(process)
    finally:
        if process.stdin is not None:
            process.stdin.close()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
