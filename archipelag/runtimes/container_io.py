"""A container's output, as both container paths read it: a one-shot job (``runtimes.docker``) and a warm model
worker (``runtimes.workers``).

``frames`` demultiplexes Docker's attach stream; ``Output`` turns it into stdout lines under the sandbox's output
budgets and keeps a short tail of stderr for error messages; ``exit_failure`` says why a container whose output
ended without a final event failed (out of memory, a crash, no done event); ``engine_error`` translates Docker SDK
errors, once.
"""

from __future__ import annotations

import socket
import struct
from collections.abc import Iterator
from typing import Final

import docker.errors
import requests.exceptions
from docker.models.containers import Container

from archipelag.errors import (
    ArchipelagError,
    BudgetExceeded,
    ProtocolViolation,
    RuntimeUnavailable,
    WorkloadError,
    WorkloadRefused,
)
from archipelag.sandbox import Limits

READ_BYTES: Final = 64 * 1024
STDERR_TAIL_BYTES: Final = 2048
STDOUT, STDERR = 1, 2


def frames(sock: socket.socket) -> Iterator[tuple[int, bytes]]:
    """Docker's multiplexed attach stream: an 8-byte header (stream id, 3 zero bytes, big-endian length) per
    frame. Ends at EOF — the container exited or was killed."""
    buffer = b""
    while True:
        while len(buffer) < 8:
            chunk = _recv(sock)
            if not chunk:
                return
            buffer += chunk
        stream, length = struct.unpack(">BxxxL", buffer[:8])
        buffer = buffer[8:]
        while length > 0:
            if not buffer:
                buffer = _recv(sock)
                if not buffer:
                    return
            piece, buffer = buffer[:length], buffer[length:]
            length -= len(piece)
            yield stream, piece


def _recv(sock: socket.socket) -> bytes:
    try:
        return sock.recv(READ_BYTES)
    except OSError:
        return b""


class Output:
    """stdout lines from a container's frames, read as they arrive. Stateful, so a warm worker reads request
    after request from one stream. ``stdout_bytes`` counts every stdout byte so far; ``stderr_tail`` keeps
    the last bytes of stderr."""

    def __init__(self, stream: Iterator[tuple[int, bytes]]) -> None:
        self._frames = stream
        self._pending = b""
        self.stdout_bytes = 0
        self.stderr_tail = b""

    def line(self, line_bytes: int, stdout_limit: int) -> bytes | None:
        """The next complete stdout line; None when the output ended (``rest`` holds an unfinished last line).
        BudgetExceeded once stdout passes ``stdout_limit`` bytes in all, or a line passes ``line_bytes``."""
        while b"\n" not in self._pending:
            if len(self._pending) > line_bytes:
                raise _too_long(line_bytes)
            chunk = self._stdout_chunk()
            if chunk is None:
                return None
            self.stdout_bytes += len(chunk)
            if self.stdout_bytes > stdout_limit:
                raise BudgetExceeded(f"output limit: the workload wrote more than {stdout_limit} bytes")
            self._pending += chunk
        line, self._pending = self._pending.split(b"\n", 1)
        if len(line) > line_bytes:
            raise _too_long(line_bytes)
        return line

    def rest(self) -> bytes:
        """What stdout held after its last newline when it ended."""
        return self._pending

    def _stdout_chunk(self) -> bytes | None:
        for stream, data in self._frames:
            if stream == STDOUT:
                return data
            if stream == STDERR:
                self.stderr_tail = (self.stderr_tail + data)[-STDERR_TAIL_BYTES:]
        return None


def _too_long(line_bytes: int) -> BudgetExceeded:
    return BudgetExceeded(f"output limit: the workload wrote a line longer than {line_bytes} bytes")


def exit_failure(container: Container, limits: Limits, stderr_tail: bytes, wait_s: float) -> ArchipelagError:
    """Why a container whose output ended without a final event failed: OOM, a crash, or no done event."""
    try:
        status = int(container.wait(timeout=wait_s)["StatusCode"])
        container.reload()
        state = container.attrs.get("State", {})
    except (docker.errors.DockerException, requests.exceptions.RequestException) as exc:
        return engine_error(exc)
    stderr = stderr_tail.decode("utf-8", "replace").strip()
    last_line = stderr.splitlines()[-1][-300:] if stderr else ""
    said = f": {last_line}" if last_line else " (its stderr is empty)"
    if state.get("OOMKilled"):
        return BudgetExceeded(f"out of memory: the workload went past its {limits.memory_mb} MB memory limit "
                              "and was killed", reason="out_of_memory")
    if status != 0:
        return WorkloadError(f"the workload exited with status {status} before a done event "
                             f"(limits: {limits.memory_mb} MB, {limits.pids_limit} processes){said}",
                             exit_status=status, stderr_tail=stderr)
    return ProtocolViolation(f"the workload exited without a done event{said}", stderr_tail=stderr)


def engine_error(exc: Exception) -> ArchipelagError:
    """A Docker SDK or transport error as ours: the engine refusing a request is the workload's failure to
    run here; an engine that does not answer makes the runtime unavailable."""
    if isinstance(exc, docker.errors.ImageNotFound):
        return WorkloadRefused(f"the workload's image is not on this host: {exc.explanation}",
                               reason="image_missing")
    if isinstance(exc, docker.errors.APIError):
        return WorkloadError(f"the Docker engine refused the container: {exc.explanation or exc}")
    return RuntimeUnavailable(f"the Docker engine does not answer: {exc}")
