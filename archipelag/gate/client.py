"""GatedRuntime: the container runtime as a host's Ray agent sees it when containers start only through its gate.

It implements the Runtime seam (runtimes/base.py) by asking the gate (gate/server.py) over its Unix socket
(gate/wire.py): ``run`` sends the job with its coordinator-signed ticket and returns once the gate has accepted or
refused it (a refusal raises here, before the job counts as started, as DockerRuntime's does); the events then
stream back as the workload writes them; a cancel goes to the gate on the same connection, and closing the
iterator closes the connection, which cancels there too. A gate that does not answer is RuntimeUnavailable (the
job goes to another host); one that goes away mid-job, or stays silent longer than the job could, is HostLost.
Never a hang: every wait has a deadline.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import functools
import json
import logging
import socket
import threading
import time
from collections.abc import Generator, Iterator
from pathlib import Path
from typing import Any, Final

from archipelag import identity
from archipelag.errors import ArchipelagError, HostLost, RuntimeUnavailable
from archipelag.gate import wire
from archipelag.ids import HostId
from archipelag.protocol import Event, is_final
from archipelag.runtimes.base import CancelToken, JobSpec
from archipelag.runtimes.models import ModelStore

log = logging.getLogger(__name__)

CONNECT_TIMEOUT_S: Final = 5.0
ACCEPT_TIMEOUT_S: Final = 60.0  # the gate checks the ticket and the image before it answers (beyond an image fetch)
WARM_TIMEOUT_S: Final = 5.0  # asked on the heartbeat's thread: a stuck gate must not silence the host
SIGN_TIMEOUT_S: Final = 5.0  # heartbeats and receipts wait on it
GRACE_S: Final = 90.0  # beyond the job's own budgets: the runtime's wait for the exit status, and more
SEND_TIMEOUT_S: Final = 30.0
EVENT_ROOM_BYTES: Final = 64 * 1024  # what an error line of the gate may hold beyond the workload's line budget


class GatedRuntime:
    """Runs container workloads through the host's gate; thread-safe (one connection per job)."""

    name = "container"
    signs_receipts = True  # the gate signs each job's receipt over what it sent (HostAgent keeps it)

    def __init__(self, socket_path: Path, models: ModelStore | None = None, grace_s: float = GRACE_S,
                 image_fetch_s: float = 0.0) -> None:
        self.socket_path = Path(socket_path)
        self.models = models  # read-only here: which weights this host has (placement's accepts)
        self._grace_s = grace_s
        # The gate fetches an image it lacks before it answers (runtimes/image_fetch.py): wait that long more.
        self._accept_timeout_s = ACCEPT_TIMEOUT_S + image_fetch_s

    @classmethod
    def connect(cls, socket_path: Path, models: ModelStore | None = None,
                image_fetch_s: float = 0.0) -> GatedRuntime:
        """A runtime whose gate answers now; RuntimeUnavailable when none does."""
        runtime = cls(socket_path, models, image_fetch_s=image_fetch_s)
        runtime.warm_slugs()
        return runtime

    def run(self, spec: JobSpec, cancel: CancelToken) -> Iterator[Event]:
        sock = self._open()
        try:
            _send(sock, wire.run_request(spec))
            reader = wire.LineReader(sock)
            first = self._line(reader, EVENT_ROOM_BYTES, time.monotonic() + self._accept_timeout_s, started=False)
            if first.get(wire.MARK) != "started":
                raise self._refusal(first)
        except BaseException:
            sock.close()
            raise
        return self._events(sock, reader, spec, cancel)

    def warm(self, now: float) -> frozenset[str]:
        """The gate's warm workloads; none while it does not answer (the heartbeat goes on)."""
        try:
            return self.warm_slugs()
        except ArchipelagError as exc:
            log.warning("the host's gate did not say which workloads are warm: %s", exc.message)
            return frozenset()

    def warm_slugs(self) -> frozenset[str]:
        sock = self._open()
        try:
            _send(sock, wire.encode({"op": "warm"}))
            answer = self._line(wire.LineReader(sock), 1 << 20, time.monotonic() + WARM_TIMEOUT_S, started=False)
        finally:
            sock.close()
        if answer.get(wire.MARK) != "warm" or not isinstance(answer.get("warm"), list):
            raise self._refusal(answer)
        return frozenset(str(slug) for slug in answer["warm"])

    def close(self) -> None:
        """Nothing to release: each job's connection closes with it; the gate keeps its own runtime."""

    def sign_as(self, host_id: HostId, purpose: str, report: Any) -> identity.Proof:
        """The gate's signature over ``report`` as ``host_id``, at its clock; RuntimeUnavailable when it does not
        answer within SIGN_TIMEOUT_S or answers what is not this host's signature over this report."""
        report_digest = identity.digest(report)
        sock = self._open()
        try:
            _send(sock, wire.sign_request(purpose, report))
            answer = self._line(wire.LineReader(sock), 4096, time.monotonic() + SIGN_TIMEOUT_S, started=False)
        finally:
            sock.close()
        if answer.get(wire.MARK) != "signed":
            raise self._refusal(answer)
        at, signature = answer.get("at"), answer.get("signature")
        if answer.get("host_id") != host_id or answer.get("digest") != report_digest \
                or not isinstance(at, float | int) or isinstance(at, bool) or not isinstance(signature, str):
            raise RuntimeUnavailable(f"the host's gate at {self.socket_path} signed something else",
                                     reason="gate_broken")
        try:
            raw = base64.b64decode(signature, validate=True)
        except (binascii.Error, ValueError):
            raise RuntimeUnavailable(f"the host's gate at {self.socket_path} sent no signature",
                                     reason="gate_broken") from None
        return identity.Proof(host_id, float(at), report_digest, raw)

    # --- one job ------------------------------------------------------------------------------------------

    def _events(self, sock: socket.socket, reader: wire.LineReader, spec: JobSpec,
                cancel: CancelToken) -> Generator[Event, None, None]:
        sent = threading.Lock()

        def send_cancel() -> None:
            with sent, contextlib.suppress(OSError):
                sock.sendall(wire.cancel_request(cancel.reason or "cancelled"))

        # A job waits at most its time budget for a busy worker, then runs at most as long again: a gate silent
        # longer than that (and the runtime's wait for an exit status) is stuck, not busy.
        silence_s = 2 * spec.limits.timeout_s + self._grace_s
        max_bytes = spec.limits.line_bytes + EVENT_ROOM_BYTES
        try:
            cancel.on_cancel(send_cancel)
            while True:
                line = self._line(reader, max_bytes, time.monotonic() + silence_s, started=True)
                if line.get(wire.MARK) == "error":
                    raise wire.raised(line)
                yield line
                if is_final(line):
                    return
        finally:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)  # a consumer walking away cancels the job at the gate
            sock.close()

    def _line(self, reader: wire.LineReader, max_bytes: int, deadline: float, started: bool) -> Event:
        """The gate's next line, decoded; HostLost (mid-job) or RuntimeUnavailable (before it) when the gate
        closed, went silent past ``deadline``, or sent what is not its wire."""
        fail = HostLost if started else RuntimeUnavailable
        try:
            raw = reader.line(max_bytes, deadline)
        except TimeoutError:
            raise fail(f"the host's gate at {self.socket_path} stopped answering", reason="gate_silent") from None
        except (OSError, ArchipelagError) as exc:
            raise fail(f"the host's gate at {self.socket_path} failed the connection: {exc}",
                       reason="gate_broken") from None
        if raw is None:
            raise fail(f"the host's gate at {self.socket_path} closed the connection "
                       + ("mid-job (it stopped or crashed)" if started else "without an answer"),
                       reason="gate_closed")
        try:
            line = json.loads(raw)
        except (ValueError, UnicodeDecodeError, RecursionError):
            line = None
        if not isinstance(line, dict):
            raise fail(f"the host's gate at {self.socket_path} sent a line that is not its wire", reason="gate_broken")
        return line

    def _refusal(self, line: Event) -> ArchipelagError:
        if line.get(wire.MARK) == "error":
            return wire.raised(line)
        return RuntimeUnavailable(f"the host's gate at {self.socket_path} answered what it should not "
                                  f"({str(line)[:80]})", reason="gate_broken")

    def _open(self) -> socket.socket:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(CONNECT_TIMEOUT_S)
        try:
            sock.connect(str(self.socket_path))
        except OSError as exc:
            sock.close()
            raise RuntimeUnavailable(f"the host's gate at {self.socket_path} does not answer ({exc.strerror or exc}); "
                                     "is `archipelag host join` (or `archipelag host gate`) running?",
                                     reason="gate_down") from None
        sock.settimeout(SEND_TIMEOUT_S)  # sends only: lines are read with deadlines (wire.LineReader)
        return sock


def gate_signer(socket_path: Path, host_id: HostId) -> identity.Signer:
    """Signs as the host through its gate, which holds the key (identity.Signer)."""
    return functools.partial(GatedRuntime(socket_path).sign_as, host_id)


def _send(sock: socket.socket, request: bytes) -> None:
    """Send a request; a gate that hung up first (it refused the connection) has said why in its answer."""
    with contextlib.suppress(OSError):
        sock.sendall(request)
