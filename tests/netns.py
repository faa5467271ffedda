"""Other machines for tests: network namespaces joined by a bridge, all made by the test that uses them.

Each member (the coordinator, a host, a user's laptop) is a namespace with one interface on a private /24 and its
own loopback. The bridge lives in a namespace of its own too, so nothing in the machine's network changes and no
packet leaves the namespaces: a member reaches only the other members' addresses. Processes started with
``Lan.popen`` run inside their member's namespace (``ip netns exec``) and share the machine's files, as programs on
one LAN share nothing but the wire. ``cut`` takes a member's cable out of the bridge; ``mend`` puts it back.

Needs root (CAP_NET_ADMIN) and iproute2; ``Lan.available()`` says whether this machine has them.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

BRIDGE = "br0"
MEMBER_IF = "eth0"


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], capture_output=True, text=True, check=check, timeout=30)


@dataclass
class Lan:
    """A LAN of namespaces: ``10.<a>.<b>.0/24``, the bridge at no address, members from .1 up."""

    tag: str = field(default_factory=lambda: uuid.uuid4().hex[:6])
    members: dict[str, str] = field(default_factory=dict)  # name -> its address
    _ports: dict[str, str] = field(default_factory=dict)  # name -> its cable's end on the bridge

    @staticmethod
    def available() -> str | None:
        """Why namespaces cannot be made here, or None when they can."""
        if os.geteuid() != 0:
            return "network namespaces need root"
        if shutil.which("ip") is None:
            return "no iproute2 (`ip`)"
        probe = f"ap-probe-{uuid.uuid4().hex[:6]}"
        made = _ip("netns", "add", probe, check=False)
        _ip("netns", "del", probe, check=False)
        return None if made.returncode == 0 else f"cannot make a network namespace: {made.stderr.strip()}"

    @property
    def subnet(self) -> str:
        number = int(self.tag, 16)
        return f"10.{200 + number % 50}.{(number >> 8) % 250}"

    def ns(self, name: str) -> str:
        return f"ap-{self.tag}-{name}"

    def start(self) -> Lan:
        _ip("netns", "add", self.ns("lan"))
        self._in("lan", "ip", "link", "add", BRIDGE, "type", "bridge")
        self._in("lan", "ip", "link", "set", BRIDGE, "up")
        return self

    def add(self, name: str) -> str:
        """A new member on the LAN; returns its address."""
        address = f"{self.subnet}.{len(self.members) + 1}"
        ns, inner, outer = self.ns(name), f"ap{self.tag}{len(self.members)}a", f"ap{self.tag}{len(self.members)}b"
        _ip("netns", "add", ns)
        _ip("link", "add", inner, "type", "veth", "peer", "name", outer)  # made here, moved at once
        _ip("link", "set", inner, "netns", ns)
        _ip("link", "set", outer, "netns", self.ns("lan"))
        self._in(name, "ip", "link", "set", inner, "name", MEMBER_IF)
        self._in(name, "ip", "addr", "add", f"{address}/24", "dev", MEMBER_IF)
        self._in(name, "ip", "link", "set", MEMBER_IF, "up")
        self._in(name, "ip", "link", "set", "lo", "up")
        self._in("lan", "ip", "link", "set", outer, "master", BRIDGE)
        self._in("lan", "ip", "link", "set", outer, "up")
        self.members[name], self._ports[name] = address, outer
        return address

    def popen(self, name: str, argv: list[str], **kwargs: Any) -> subprocess.Popen[Any]:
        """Start ``argv`` inside member ``name``'s namespace."""
        return subprocess.Popen(["ip", "netns", "exec", self.ns(name), *argv], **kwargs)

    def run(self, name: str, argv: list[str], timeout_s: float = 120, **kwargs: Any) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["ip", "netns", "exec", self.ns(name), *argv], capture_output=True, text=True,
                              timeout=timeout_s, check=False, **kwargs)

    def cut(self, name: str) -> None:
        """Pull member ``name``'s cable: its packets go nowhere, and nobody reaches it (no reset is sent)."""
        self._in("lan", "ip", "link", "set", self._ports[name], "down")

    def mend(self, name: str) -> None:
        self._in("lan", "ip", "link", "set", self._ports[name], "up")

    def close(self) -> None:
        """Delete every namespace (and so every cable). Processes inside must have been stopped first."""
        for name in [*self.members, "lan"]:
            _ip("netns", "del", self.ns(name), check=False)

    def _in(self, name: str, *argv: str) -> None:
        subprocess.run(["ip", "netns", "exec", self.ns(name), *argv], capture_output=True, text=True, check=True,
                       timeout=30)


@contextlib.contextmanager
def lan() -> Iterator[Lan]:
    made = Lan().start()
    try:
        yield made
    finally:
        made.close()
