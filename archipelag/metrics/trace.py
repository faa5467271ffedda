"""Trace: where the time to a job's first output goes, stage by stage, across the processes it passes through.

With ``ARCHIPELAG_TRACE_FILE`` set, each process on a job's path (an API replica, the jobs actor, the bridge, the
host actor, the host's gate) appends one line per stage it passes, ``<job id> <stage> <wall-clock seconds>``, to
that file (one short appending write each, so lines of several processes never mix); the benchmark
(``bench/bench_llm.py``) reads them back and prints the breakdown of the first token's path. Unset (the default),
``stamp`` costs one attribute test. Stamps are wall-clock times, so the breakdown holds for processes on one
machine, which is where the benchmark runs them.

The stages, in the order a streamed chat passes them (``STAGES``): the API replica receives the request
(``arrived``), has authenticated and parsed it (``handler``); the jobs service receives the submission (``submit``),
has admitted it and asks placement (``placing``), has ranked hosts (``ranked``), sends it to its host
(``dispatched``); the bridge to the hosts' cluster reads it and calls the host (``bridge_in``); the host receives it
(``host``), hands it to its sandbox (``sandbox_in``); the host's gate reads the request (``gate_in``) and has
checked its ticket against the signed catalog (``admitted``); the request is written to the warm model worker's
stdin (``worker_in``) and its first output read back (``worker_out``: between the two, the container alone, where
the engine's own time to first token is), the gate sends that on (``gate_out``); the host reads it (``sandbox_out``)
and sends it on (``host_out``); the bridge has it and writes it on (``bridge_out``); the jobs service's relay has it
(``relayed``); the replica has it (``replica``) and writes it to the client (``written``). A host whose runtime runs
in-process stamps no gate stages; a job without a warm worker, no worker stages. ``created`` (the ledger has
recorded the job) runs beside the path.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Final, TextIO

from starlette.types import ASGIApp, Receive, Scope, Send

STAGES: Final = ("arrived", "handler", "submit", "placing", "ranked", "dispatched", "bridge_in", "host", "sandbox_in",
                 "gate_in", "admitted", "worker_in", "worker_out", "gate_out", "sandbox_out", "host_out", "bridge_out",
                 "relayed", "replica", "written")
BESIDE: Final = ("created",)  # stages off the first output's path


class _Tracer:
    def __init__(self) -> None:
        self._file: TextIO | None = None
        self._path: Path | None = None
        self._lock = threading.Lock()

    def configure(self, path: Path | None) -> None:
        """Write stamps to ``path`` (appending; shared by every process), or stop writing them (None)."""
        with self._lock:
            if path == self._path:
                return
            if self._file is not None:
                self._file.close()
            self._path = path
            self._file = open(path, "a", buffering=1, encoding="utf-8") if path is not None else None  # noqa: SIM115

    @property
    def on(self) -> bool:
        return self._file is not None

    def stamp(self, job_id: str, stage: str, at: float | None = None) -> None:
        """Record that ``job_id`` passed ``stage`` now (or at ``at``, a ``time.time()`` taken earlier)."""
        if self._file is None:
            return
        line = f"{job_id} {stage} {time.time() if at is None else at:.6f}\n"
        with self._lock:
            if self._file is not None:
                self._file.write(line)

    def __reduce__(self) -> tuple[object, tuple[()]]:
        return (_process_tracer, ())  # one per process: Ray pickling an actor class by value finds this one


TRACE: Final = _Tracer()


def _process_tracer() -> _Tracer:
    return TRACE


def read(path: Path) -> dict[str, dict[str, float]]:
    """The stamps in ``path``: job id → stage → time (the first stamp of a stage wins: a retried attempt's
    later stamps do not move it)."""
    stamps: dict[str, dict[str, float]] = {}
    if not path.exists():
        return stamps
    for line in path.read_text(encoding="utf-8").splitlines():
        parts = line.split()
        if len(parts) == 3:
            stamps.setdefault(parts[0], {}).setdefault(parts[1], float(parts[2]))
    return stamps


class Arrivals:
    """ASGI middleware, outermost when tracing: notes when each request reached the replica (``arrived``), in
    the request's state, for the route to stamp once it knows the job."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            scope.setdefault("state", {})["arrived"] = time.time()
        await self.app(scope, receive, send)
