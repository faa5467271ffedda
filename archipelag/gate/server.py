"""GateServer: the host's gate, the one local process that may start containers, and only for signed tickets.

Ray lets any member of a cluster run code on any node (DESIGN §10), so a host's Ray node runs as a user who cannot
open the Docker socket. The machine's owner runs this gate instead: it owns the ``DockerRuntime`` (image cache,
model store, warm workers) and serves a Unix socket that only ``allowed_uids`` (the Ray node's user) may use — the
socket's mode keeps others out, and the kernel's word on each peer (SO_PEERCRED) is checked again on every
connection. A ``run`` names a workload by slug only: the manifest comes from the gate's own verified catalog, the
ticket must be the coordinator's for exactly that job, this host, that artifact and that input (gate/tickets.py),
each ticket starts once, and the job runs within the ticket's limits narrowed to the workload's signed tier. The
wire is gate/wire.py. Every read is bounded in size and time, so a hostile client gets an error line and a closed
socket, never a hung or crashed gate.
"""

from __future__ import annotations

import base64
import contextlib
import logging
import select
import socket
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Final

from nacl.signing import SigningKey

from archipelag import identity, receipts
from archipelag.catalog_signing import CatalogGuard
from archipelag.errors import (
    ArchipelagError,
    ConfigError,
    Forbidden,
    HostBusy,
    RequestError,
    RuntimeUnavailable,
    TicketRefused,
    ValidationFailed,
    WorkloadError,
    WorkloadRefused,
)
from archipelag.gate import tickets, wire
from archipelag.gate.listener import listen
from archipelag.ids import HostId
from archipelag.metrics.trace import TRACE
from archipelag.protocol import OUTPUT_TYPES, Event, is_final
from archipelag.runtimes.base import CancelToken, JobSpec, Runtime
from archipelag.sandbox import Limits
from archipelag.settings import Settings
from archipelag.unix_sockets import peer_uid

if TYPE_CHECKING:
    from archipelag.actors.hardware import Hardware

log = logging.getLogger(__name__)

REQUEST_TIMEOUT_S: Final = 10.0  # a client's whole request must arrive within this
WRITE_TIMEOUT_S: Final = 120.0  # a client that reads none of its job's events this long loses the job
DRAIN_TIMEOUT_S: Final = 0.5  # after the last line: for the rest of a refused request to arrive
SPARE_CONNECTIONS: Final = 16  # beyond the job slots: warm requests, and refusals answered while slots are full
RAN_REMEMBERED: Final = 100_000  # job ids whose receipts the gate remembers signing, each way


class Nonces:
    """The tickets already started, each kept until it expires (a replay after that fails the expiry check)."""

    def __init__(self) -> None:
        self._seen: dict[str, float] = {}
        self._lock = threading.Lock()

    def spend(self, ticket: tickets.JobTicket, now: float) -> None:
        with self._lock:
            self._seen = {nonce: until for nonce, until in self._seen.items() if until >= now}
            if ticket.nonce in self._seen:
                raise TicketRefused(f"job {ticket.job_id}: this ticket was used before; each starts one attempt",
                                    reason="replayed")
            self._seen[ticket.nonce] = ticket.expires_at


class GateServer:
    """Serves the gate on ``socket_path`` (bound and listening once constructed); ``serve_forever`` answers on the
    calling thread until ``close``. Each connection has a thread; at most ``slots`` jobs run at once."""

    def __init__(self, socket_path: Path, runtime: Runtime | None, guard: CatalogGuard, host_id: HostId,
                 coordinator_keys: Sequence[str], allowed_uids: Iterable[int], max_input_bytes: int, slots: int,
                 key: SigningKey, *, clock: Callable[[], float] = time.time,
                 request_timeout_s: float = REQUEST_TIMEOUT_S,
                 write_timeout_s: float = WRITE_TIMEOUT_S, socket_gid: int | None = None) -> None:
        if not coordinator_keys:
            raise ConfigError("the gate trusts no coordinator key, so it would refuse every ticket; pass the "
                              "coordinator's public key (the host learns it when it enrols)")
        self.path = Path(socket_path).absolute()
        self.host_id = host_id
        self._runtime = runtime  # None: no Docker engine here; the gate still signs for the node
        self._key = key  # the host's: the node's account cannot read it, and asks the gate to sign (``sign``)
        # A job's receipt is signed once, by one of two: the gate as the container job it ran ends, or the gate
        # on the node's request (a job that ran in the agent). Each remembers its job ids and bars the other.
        self._ran: OrderedDict[str, None] = OrderedDict()
        self._receipted: OrderedDict[str, None] = OrderedDict()
        self._guard = guard
        self._keys = tuple(coordinator_keys)
        self._allowed = frozenset(allowed_uids)
        self._max_request_bytes = max_input_bytes + wire.TICKET_BYTES
        self._slots = threading.BoundedSemaphore(slots)
        self._connections = threading.BoundedSemaphore(slots + SPARE_CONNECTIONS)
        self._clock = clock
        self._request_timeout_s = request_timeout_s
        self._write_timeout_s = write_timeout_s
        self._nonces = Nonces()
        self._running: dict[int, CancelToken] = {}
        self._threads: set[threading.Thread] = set()
        self._lock = threading.Lock()
        self._closed = threading.Event()
        self._listener, self._inode = listen(self.path, self._allowed, socket_gid)

    # --- lifetime -----------------------------------------------------------------------------------------

    def serve_forever(self) -> None:
        while not self._closed.is_set():
            try:
                conn, _ = self._listener.accept()
            except OSError:
                if self._closed.is_set():
                    return
                log.warning("the gate's accept failed", exc_info=True)
                time.sleep(0.1)
                continue
            self._accept(conn)

    def close(self, reason: str = "the host's gate is closing") -> None:
        """Stop taking connections, cancel the jobs that run (their containers go), release the runtime."""
        if self._closed.is_set():
            return
        self._closed.set()
        with contextlib.suppress(OSError):
            self._listener.shutdown(socket.SHUT_RDWR)
        self._listener.close()
        with contextlib.suppress(OSError):
            if self.path.lstat().st_ino == self._inode:  # not a newer gate's socket
                self.path.unlink()
        with self._lock:
            running, threads = list(self._running.values()), list(self._threads)
        for token in running:
            token.cancel(reason)
        deadline = time.monotonic() + 30
        for thread in threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        if self._runtime is not None:
            self._runtime.close()

    def _engine(self) -> Runtime:
        if self._runtime is None:
            raise RuntimeUnavailable("this host's gate has no Docker engine: it runs no containers",
                                     reason="no_engine")
        return self._runtime

    # --- connections --------------------------------------------------------------------------------------

    def _accept(self, conn: socket.socket) -> None:
        """Refuse a stranger or an overflow here, on the accept thread (quickly: a short send timeout); give
        everyone else a thread of their own."""
        try:
            uid = peer_uid(conn)
            if uid not in self._allowed:
                log.warning("the gate refused a connection from uid %d (allowed: %s)", uid, sorted(self._allowed))
                raise Forbidden(f"uid {uid} may not use this host's gate; only its Ray node's user may")
            if not self._connections.acquire(blocking=False):
                raise HostBusy("the host's gate has too many connections open; try again later")
        except (ArchipelagError, OSError) as exc:
            if isinstance(exc, ArchipelagError):
                conn.setblocking(False)  # the accept thread never waits on a refused client
                with contextlib.suppress(OSError):
                    conn.send(wire.encode(wire.error_line(exc)))
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
            conn.close()
            return
        thread = threading.Thread(target=self._serve_connection, args=(conn,), name="gate-connection", daemon=True)
        with self._lock:
            self._threads.add(thread)
        thread.start()

    def _serve_connection(self, conn: socket.socket) -> None:
        try:
            conn.settimeout(self._write_timeout_s)  # sends only: lines are read with deadlines (wire.LineReader)
            reader = wire.LineReader(conn)
            try:
                request = self._read_request(reader)
                if isinstance(request, wire.SignRequest):
                    if request.receipt is not None:
                        with self._lock:
                            if request.receipt["job_id"] in self._ran:
                                raise Forbidden(f"the gate ran job {request.receipt['job_id']} and signed its "
                                                "receipt itself; it signs no other", reason="receipt_taken")
                            _remember(self._receipted, request.receipt["job_id"])
                    proof = identity.sign_digest(self._key, request.purpose, self.host_id, self._clock(),
                                                 request.digest)
                    conn.sendall(wire.encode({wire.MARK: "signed", "host_id": proof.host_id, "at": proof.at,
                                              "digest": proof.digest,
                                              "signature": base64.b64encode(proof.signature).decode()}))
                elif isinstance(request, wire.WarmRequest):
                    conn.sendall(wire.encode({wire.MARK: "warm", "warm": sorted(self._engine().warm(self._clock()))}))
                elif isinstance(request, wire.RunRequest):
                    self._run(conn, reader, request)
                else:
                    raise ValidationFailed("a connection starts with a run or a warm request",
                                           errors={"op": "not first"})
            except ArchipelagError as exc:
                conn.sendall(wire.encode(wire.error_line(exc)))
        except OSError:
            log.debug("a gate client went away", exc_info=True)
        except Exception:  # the gate keeps serving whatever one connection did
            log.exception("the gate failed a request")
            with contextlib.suppress(OSError):
                conn.sendall(wire.encode(wire.error_line(WorkloadError("the host's gate failed the request"))))
        finally:
            _close(conn)
            self._connections.release()
            with self._lock:
                self._threads.discard(threading.current_thread())

    def _read_request(self, reader: wire.LineReader) -> wire.Request:
        try:
            line = reader.line(self._max_request_bytes, time.monotonic() + self._request_timeout_s)
        except TimeoutError:
            raise RequestError(f"the request did not arrive within {self._request_timeout_s:g} s") from None
        if line is None:
            raise ValidationFailed("the connection closed before a request", errors={"request": "missing"})
        return wire.parse_request(line)

    # --- jobs ---------------------------------------------------------------------------------------------

    def _run(self, conn: socket.socket, reader: wire.LineReader, request: wire.RunRequest) -> None:
        if not self._slots.acquire(blocking=False):
            raise HostBusy(f"the host's gate runs as many jobs as it may at once; job {request.job_id} goes elsewhere")
        try:
            if TRACE.on:
                TRACE.stamp(request.job_id, "gate_in")
            spec = self._admitted(request)
            if TRACE.on:
                TRACE.stamp(spec.job_id, "admitted")
            token = CancelToken()
            events = self._engine().run(spec, token)  # refuses before anything starts
            with self._lock:
                self._running[id(token)] = token
            if self._closed.is_set():  # admitted while the gate was closing
                token.cancel("the host's gate is closing")
            try:
                self._stream(conn, reader, spec, events, token)
            finally:
                with self._lock:
                    self._running.pop(id(token), None)
        finally:
            self._slots.release()

    def _admitted(self, request: wire.RunRequest) -> JobSpec:
        """The job to run: the gate's own signed manifest for the slug, the ticket checked against it and spent,
        the limits the ticket's (narrowed by the agent's, if it sent any) within the signed tier's."""
        manifest = self._guard.catalog.manifests.get(request.workload)
        if manifest is None or manifest.runtime != "container":
            raise WorkloadRefused(f"workload {request.workload!r} is no container workload of this host's signed "
                                  "catalog; refusing to run it", reason="unknown_workload")
        claimed = JobSpec(request.job_id, manifest, request.input, request.limits or _NO_LIMITS, request.ticket,
                          request.attempt)
        ticket = tickets.verify(request.ticket, self._keys, self.host_id, claimed, self._clock())
        self._nonces.spend(ticket, self._clock())
        with self._lock:
            if request.job_id in self._receipted:
                raise TicketRefused(f"job {request.job_id} already has a receipt the node asked for; this gate runs "
                                    "it no more", reason="receipt_taken")
            _remember(self._ran, request.job_id)
        limits = ticket.limits.within(request.limits) if request.limits is not None else ticket.limits
        spec = self._guard.admit(replace(claimed, limits=limits))
        log.info("gate: job %s of %s admitted on %s", spec.job_id, manifest.slug, self.host_id)
        return spec

    def _stream(self, conn: socket.socket, reader: wire.LineReader, spec: JobSpec,
                events: Iterable[Event], token: CancelToken) -> None:
        """Send the job's events as they come; the client's cancel, or its going away, cancels the job."""
        ended = threading.Event()
        watcher = threading.Thread(target=_watch, args=(reader, token, ended), name=f"gate-watch-{spec.job_id}",
                                   daemon=True)
        try:
            conn.sendall(wire.encode(wire.STARTED))
            watcher.start()
            output = False
            produced: list[Event] = []  # what the job's receipt covers
            sign = identity.key_signer(self._key, self.host_id, self._clock)
            try:
                for event in events:
                    event = {k: v for k, v in event.items() if k not in (wire.MARK, "receipt")}
                    produced.append(event)
                    if event.get("type") == "done":  # signed here: the node may change what it relays, not this
                        event["receipt"] = receipts.sign(sign, spec.job_id, spec.attempt, produced)
                    line = wire.encode(event)
                    if not output and event.get("type") in OUTPUT_TYPES and TRACE.on:
                        TRACE.stamp(spec.job_id, "gate_out")
                        output = True
                    if is_final(event):
                        ended.set()  # before it leaves: a client closing once it has read it cancels nothing
                    conn.sendall(line)
                    if ended.is_set():
                        break
            except ArchipelagError as exc:
                ended.set()
                conn.sendall(wire.encode(wire.error_line(exc)))
            except OSError:
                token.cancel("the host agent went away mid-job")
                raise
            except Exception as exc:  # a runtime bug fails the job, not the gate
                ended.set()
                log.exception("the runtime failed job %s", spec.job_id)
                conn.sendall(wire.encode(wire.error_line(
                    WorkloadError(f"the host's runtime failed: {type(exc).__name__}: {exc}"))))
        finally:
            close = getattr(events, "close", None)
            if close is not None:
                close()  # the container is removed, whatever happened
            ended.set()
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RD)  # wakes the watcher
            if watcher.is_alive():
                watcher.join()


# A request without limits takes the ticket's: this only fills the spec the ticket is checked against.
_NO_LIMITS = Limits(memory_mb=0, timeout_s=0, network=False, gpu=False, fuel=0, output_bytes=0, line_bytes=0)


def _remember(seen: OrderedDict[str, None], job_id: str) -> None:
    seen[job_id] = None
    while len(seen) > RAN_REMEMBERED:
        seen.popitem(last=False)


def _watch(reader: wire.LineReader, token: CancelToken, ended: threading.Event) -> None:
    """Read the client's side while its job runs: a cancel request cancels; anything else, or the connection
    closing before the job ended, cancels too (the agent is gone or broken, and nobody would read the events)."""
    while True:
        why = "the host agent sent a bad request"
        try:
            line = reader.line(wire.CONTROL_BYTES, None)
            if line is None:
                why = "the host agent went away mid-job"
            request = wire.parse_request(line) if line is not None else None
        except OSError:
            why, request = "the host agent went away mid-job", None
        except ArchipelagError:
            request = None
        if ended.is_set():
            return
        if not isinstance(request, wire.CancelRequest):
            token.cancel(why)
            return
        token.cancel(request.reason or "cancelled")


def _close(conn: socket.socket) -> None:
    """Close after reading what the client still sends (bounded): closing on unread bytes can reset the
    connection, and the client would see that instead of our last line."""
    with contextlib.suppress(OSError):
        conn.shutdown(socket.SHUT_WR)
        poll = select.poll()
        poll.register(conn.fileno(), select.POLLIN)
        deadline = time.monotonic() + DRAIN_TIMEOUT_S
        left = 64 * 1024
        while left > 0 and poll.poll(max(0, int((deadline - time.monotonic()) * 1000))):
            chunk = conn.recv(min(left, 65536))
            if not chunk:
                break
            left -= len(chunk)
    conn.close()


# --- starting one -------------------------------------------------------------------------------------------


def socket_path(settings: Settings, host_id: HostId) -> Path:
    """Where the gate of ``host_id`` listens: ``ARCHIPELAG_GATE_SOCKET``, else ``state_dir/gate/<host>.sock``."""
    return settings.gate_socket or settings.state_dir / "gate" / f"{host_id}.sock"


def start_gate(settings: Settings, host_id: HostId, coordinator_keys: Sequence[str], allowed_uids: Iterable[int],
               hardware: Hardware | None = None) -> GateServer:
    """The host's gate, serving on a daemon thread of this process; its socket is ``socket_path(settings,
    host_id)`` (pass that to the Ray node's settings as ``gate_socket``). It holds the host's key (from the state
    dir) and signs the node's reports; it runs containers on the local Docker engine, none when no engine answers.
    ``close()`` stops it. ConfigError for a bad socket path or a missing key."""
    from archipelag.actors.hardware import detect
    from archipelag.runtimes.docker import DockerRuntime

    hardware = hardware or detect()
    TRACE.configure(settings.trace_file)
    guard = CatalogGuard.from_settings(settings)
    key = identity.host_key(settings.state_dir, host_id)
    runtime: DockerRuntime | None
    try:
        runtime = DockerRuntime.from_settings(settings, gpu=hardware.gpu_model is not None,
                                              lent_cores=hardware.cpu_cores)
    except RuntimeUnavailable as exc:
        log.warning("host %s: its gate runs no containers: %s", host_id, exc.message)
        runtime = None
    try:
        server = GateServer(socket_path(settings, host_id), runtime, guard, host_id, coordinator_keys, allowed_uids,
                            settings.max_job_input_bytes, settings.host_slots, key)
    except BaseException:
        if runtime is not None:
            runtime.close()
        raise
    threading.Thread(target=server.serve_forever, name=f"gate-{host_id}", daemon=True).start()
    return server
