"""The host's gate over its real socket, with a scripted runtime: what it runs, what it refuses, and how it stays up
under a hostile client. The real Docker engine behind it: tests/integration/test_gate_docker.py."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from gate_builders import (
    HOST,
    HOST_KEY,
    WIDE,
    Coordinator,
    FakeRuntime,
    a_gate,
    container_manifest,
    guard_for,
    tier_limits,
)

from archipelag import identity, receipts
from archipelag.errors import (
    ArchipelagError,
    ConfigError,
    Forbidden,
    HostBusy,
    HostLost,
    JobCancelled,
    RuntimeUnavailable,
    TicketRefused,
    WorkloadRefused,
)
from archipelag.gate import tickets, wire
from archipelag.gate.client import GatedRuntime
from archipelag.gate.server import SPARE_CONNECTIONS, GateServer
from archipelag.ids import HostId, JobId
from archipelag.metrics.trace import TRACE
from archipelag.metrics.trace import read as read_trace
from archipelag.protocol import usage_counts
from archipelag.runtimes.base import CancelToken, JobSpec
from archipelag.sandbox import Tier

MANIFEST = container_manifest()
INPUT = {"prompt": "hello"}


@pytest.fixture
def coordinator() -> Coordinator:
    return Coordinator()


def raw_exchange(path: Path, payload: bytes, timeout_s: float = 10.0) -> list[dict[str, Any]]:
    """Send bytes as a hostile client would, and read every line the gate answers until it hangs up."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout_s)
        sock.connect(str(path))
        with contextlib.suppress(OSError):  # the gate may hang up before it all went
            sock.sendall(payload)
        received = b""
        with contextlib.suppress(ConnectionResetError):  # its last line came first; a reset may follow
            while chunk := sock.recv(65536):
                received += chunk
    return [json.loads(line) for line in received.splitlines() if line.strip()]


def test_a_signed_ticket_runs_the_job_and_its_events_come_back(coordinator: Coordinator) -> None:
    runtime = FakeRuntime()
    with a_gate(runtime, guard_for(MANIFEST), (coordinator.public,)) as gate:
        events = list(GatedRuntime(gate.path).run(coordinator.spec(MANIFEST, INPUT), CancelToken()))
    receipt = events[-1].pop("receipt")  # the gate's, over what it sent
    assert events == [{"type": "token", "content": "hi"}, {"type": "done"}]
    assert receipts.mismatch(a_receipt(receipt, "job-1", events[-1]), "job-1", "hi") is None
    [ran] = runtime.ran
    assert (ran.job_id, ran.workload, ran.input) == ("job-1", MANIFEST, INPUT)
    assert runtime.closed  # the gate owns its runtime


def test_limits_beyond_the_tier_are_narrowed_to_it(coordinator: Coordinator) -> None:
    runtime = FakeRuntime()
    with a_gate(runtime, guard_for(MANIFEST), (coordinator.public,)) as gate:
        list(GatedRuntime(gate.path).run(coordinator.spec(MANIFEST, INPUT, limits=WIDE), CancelToken()))
    assert runtime.ran[0].limits == tier_limits(Tier.RESTRICTED)


def test_the_agent_may_narrow_the_tickets_limits_but_never_widen_them(coordinator: Coordinator) -> None:
    runtime = FakeRuntime()
    narrow = dataclasses.replace(tier_limits(Tier.RESTRICTED), memory_mb=64, timeout_s=5)
    with a_gate(runtime, guard_for(MANIFEST), (coordinator.public,)) as gate:
        spec = coordinator.spec(MANIFEST, INPUT, limits=narrow)
        list(GatedRuntime(gate.path).run(dataclasses.replace(spec, limits=WIDE), CancelToken()))  # claims more
    assert (runtime.ran[0].limits.memory_mb, runtime.ran[0].limits.timeout_s) == (64, 5)


def test_the_gate_runs_its_own_catalogs_manifest_not_the_agents(coordinator: Coordinator) -> None:
    """The agent sends only the slug: a manifest it made up (another image) never reaches the runtime."""
    runtime = FakeRuntime()
    forged = dataclasses.replace(MANIFEST, image="evil/rootkit:1", image_id="sha256:" + "ee" * 32)
    with a_gate(runtime, guard_for(MANIFEST), (coordinator.public,)) as gate:
        list(GatedRuntime(gate.path).run(dataclasses.replace(coordinator.spec(MANIFEST, INPUT), workload=forged),
                                         CancelToken()))
    assert runtime.ran[0].workload == MANIFEST


def _other_key(c: Coordinator, spec: JobSpec) -> JobSpec:
    return Coordinator().spec(spec.workload, spec.input)


def _other_host(c: Coordinator, spec: JobSpec) -> JobSpec:
    return c.spec(spec.workload, spec.input, host_id=HostId("host-elsewhere"))


def _other_job(c: Coordinator, spec: JobSpec) -> JobSpec:
    return dataclasses.replace(spec, job_id=JobId("job-2"))


def _other_input(c: Coordinator, spec: JobSpec) -> JobSpec:
    return dataclasses.replace(spec, input={"prompt": "something else"})


def _other_artifact(c: Coordinator, spec: JobSpec) -> JobSpec:
    """Signed for another image of the same workload (an old pin, say): the gate's catalog pins this one."""
    return c.spec(dataclasses.replace(MANIFEST, image_id="sha256:" + "cd" * 32), spec.input)


def _expired(c: Coordinator, spec: JobSpec) -> JobSpec:
    return c.spec(spec.workload, spec.input, now=time.time() - 600, ttl_s=120)


def _no_ticket(c: Coordinator, spec: JobSpec) -> JobSpec:
    return dataclasses.replace(spec, ticket=None)


def _forged_body(c: Coordinator, spec: JobSpec) -> JobSpec:
    """A ticket for a sandboxed job whose body was changed to allow the network, its signature kept."""
    spec = c.spec(spec.workload, spec.input, limits=tier_limits(Tier.RESTRICTED))
    assert spec.ticket is not None
    body = json.loads(spec.ticket.body)
    body["limits"]["network"] = True
    forged = tickets.SignedTicket(json.dumps(body, sort_keys=True, separators=(",", ":")), spec.ticket.signature)
    return dataclasses.replace(spec, ticket=forged)


@pytest.mark.parametrize("mangle", [_no_ticket, _other_key, _other_host, _other_job, _other_input, _other_artifact,
                                    _expired, _forged_body], ids=lambda f: f.__name__.strip("_"))
def test_a_ticket_not_for_exactly_this_job_here_is_refused(coordinator: Coordinator,
                                                           mangle: Callable[[Coordinator, JobSpec], JobSpec]) -> None:
    runtime = FakeRuntime()
    with a_gate(runtime, guard_for(MANIFEST), (coordinator.public,)) as gate, \
            pytest.raises(TicketRefused) as refused:
        GatedRuntime(gate.path).run(mangle(coordinator, coordinator.spec(MANIFEST, INPUT)), CancelToken())
    assert refused.value.code == "ticket_refused"
    assert runtime.ran == []


def test_a_ticket_starts_once(coordinator: Coordinator) -> None:
    runtime = FakeRuntime()
    spec = coordinator.spec(MANIFEST, INPUT)
    with a_gate(runtime, guard_for(MANIFEST), (coordinator.public,)) as gate:
        list(GatedRuntime(gate.path).run(spec, CancelToken()))
        with pytest.raises(TicketRefused, match="used before"):
            GatedRuntime(gate.path).run(spec, CancelToken())
    assert len(runtime.ran) == 1


def test_the_refusal_goes_out_as_a_protocol_error_event(coordinator: Coordinator) -> None:
    with a_gate(FakeRuntime(), guard_for(MANIFEST), (coordinator.public,)) as gate:
        spec = dataclasses.replace(coordinator.spec(MANIFEST, INPUT), ticket=None)
        [line] = raw_exchange(gate.path, wire.run_request(spec))
    assert line["type"] == "error" and line["code"] == "ticket_refused" and "no ticket" in line["message"]


def test_a_workload_not_in_the_gates_signed_catalog_is_refused(coordinator: Coordinator) -> None:
    unknown = container_manifest("not-signed")
    with a_gate(FakeRuntime(), guard_for(MANIFEST), (coordinator.public,)) as gate, \
            pytest.raises(WorkloadRefused, match="signed catalog"):
        GatedRuntime(gate.path).run(coordinator.spec(unknown, INPUT), CancelToken())


def test_cancel_reaches_the_job_at_the_gate(coordinator: Coordinator) -> None:
    runtime = FakeRuntime(hold=True)
    cancel = CancelToken()
    with a_gate(runtime, guard_for(MANIFEST), (coordinator.public,)) as gate:
        events = GatedRuntime(gate.path).run(coordinator.spec(MANIFEST, INPUT), cancel)
        assert next(events)["type"] == "status"
        cancel.cancel("stopped by its user")
        with pytest.raises(JobCancelled, match="stopped by its user"):
            list(events)
    assert runtime.cancelled == ["stopped by its user"]


def test_an_agent_that_walks_away_cancels_the_job(coordinator: Coordinator) -> None:
    runtime = FakeRuntime(hold=True)
    with a_gate(runtime, guard_for(MANIFEST), (coordinator.public,)) as gate:
        events = GatedRuntime(gate.path).run(coordinator.spec(MANIFEST, INPUT), CancelToken())
        next(events)
        events.close()  # type: ignore[attr-defined]
        deadline = time.monotonic() + 10
        while not runtime.cancelled and time.monotonic() < deadline:
            time.sleep(0.02)
    assert runtime.cancelled == ["the host agent went away mid-job"]


@pytest.mark.parametrize("junk", [b"garbage\n", b"x" * 10_000, b'{"op": "run"}\n'])
def test_junk_from_the_agent_mid_job_cancels_the_job(coordinator: Coordinator, junk: bytes) -> None:
    runtime = FakeRuntime(hold=True)
    with a_gate(runtime, guard_for(MANIFEST), (coordinator.public,)) as gate, \
            socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(10)
        sock.connect(str(gate.path))
        sock.sendall(wire.run_request(coordinator.spec(MANIFEST, INPUT)))
        reader = wire.LineReader(sock)
        assert json.loads(reader.line(4096, time.monotonic() + 10) or b"") == wire.STARTED
        sock.sendall(junk)
        lines = [json.loads(line) for line in iter(lambda: reader.line(4096, time.monotonic() + 10), None)]
    assert lines[-1]["code"] == "cancelled" and runtime.cancelled == ["the host agent sent a bad request"]


def test_jobs_past_the_slots_are_turned_away(coordinator: Coordinator) -> None:
    runtime = FakeRuntime(hold=True)
    cancel = CancelToken()
    with a_gate(runtime, guard_for(MANIFEST), (coordinator.public,), slots=1) as gate:
        running = GatedRuntime(gate.path).run(coordinator.spec(MANIFEST, INPUT), cancel)
        next(running)
        with pytest.raises(HostBusy):
            GatedRuntime(gate.path).run(coordinator.spec(MANIFEST, INPUT, job_id="job-2"), CancelToken())
        cancel.cancel()
        with pytest.raises(JobCancelled):
            list(running)


def test_warm_is_the_runtimes_warm_set(coordinator: Coordinator) -> None:
    with a_gate(FakeRuntime(), guard_for(MANIFEST), (coordinator.public,)) as gate:
        assert GatedRuntime.connect(gate.path).warm(time.time()) == {"fake-workload"}


def test_a_peer_whose_uid_is_not_allowed_is_refused(coordinator: Coordinator) -> None:
    runtime = FakeRuntime()
    with a_gate(runtime, guard_for(MANIFEST), (coordinator.public,), allowed_uids={54321}) as gate, \
            pytest.raises(Forbidden, match="may not use"):
        GatedRuntime(gate.path).run(coordinator.spec(MANIFEST, INPUT), CancelToken())
    assert runtime.ran == []


@pytest.mark.parametrize(("payload", "code"), [
    (b"x" * (3 << 20), "payload_too_large"),  # no newline, past the bound
    (b"\xff\xfe not json\n", "validation_error"),
    (b"[1, 2, 3]\n", "validation_error"),
    (b'{"op": "run", "job_id": 5}\n', "validation_error"),
    (b'{"op": "run", "job_id": "j", "workload": "fake-workload", "input": {}, "limits": {"memory_mb": "all"}}\n',
     "validation_error"),
    (b"[" * 100_000 + b"\n", "validation_error"),
    (b'{"op": "cancel", "reason": "nothing runs"}\n', "validation_error"),
    (b'{"op": "format-disk"}\n', "validation_error"),
])
def test_a_hostile_client_gets_an_error_and_the_gate_keeps_serving(coordinator: Coordinator, payload: bytes,
                                                                   code: str) -> None:
    with a_gate(FakeRuntime(), guard_for(MANIFEST), (coordinator.public,)) as gate:
        lines = raw_exchange(gate.path, payload)
        assert [(line["type"], line["code"]) for line in lines] == [("error", code)]
        assert list(GatedRuntime(gate.path).run(coordinator.spec(MANIFEST, INPUT), CancelToken()))[-1]["type"] == "done"


def test_a_client_that_says_nothing_is_timed_out_and_the_gate_keeps_serving(coordinator: Coordinator) -> None:
    with a_gate(FakeRuntime(), guard_for(MANIFEST), (coordinator.public,), request_timeout_s=0.3) as gate:
        silent = [socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) for _ in range(3)]
        for sock in silent:
            sock.connect(str(gate.path))
        assert list(GatedRuntime(gate.path).run(coordinator.spec(MANIFEST, INPUT), CancelToken()))[-1]["type"] == "done"
        for sock in silent:
            sock.settimeout(5)
            [line] = [json.loads(x) for x in sock.recv(65536).splitlines()]
            assert line["code"] == "bad_request" and "did not arrive" in line["message"]
            sock.close()


def test_a_string_utf8_cannot_carry_crosses_the_wire_as_json_has_it(coordinator: Coordinator) -> None:
    """JSON allows a lone surrogate (a workload may write one); it arrives unchanged."""
    odd = {"type": "token", "content": "a\ud800b"}
    runtime = FakeRuntime([odd, {"type": "done"}])
    with a_gate(runtime, guard_for(MANIFEST), (coordinator.public,)) as gate:
        events = list(GatedRuntime(gate.path).run(coordinator.spec(MANIFEST, INPUT), CancelToken()))
    assert events[0] == odd


def test_connections_past_the_bound_are_turned_away_until_some_close(coordinator: Coordinator) -> None:
    with a_gate(FakeRuntime(), guard_for(MANIFEST), (coordinator.public,), slots=1, request_timeout_s=1.0) as gate:
        idle = []
        for _ in range(1 + SPARE_CONNECTIONS):
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.connect(str(gate.path))
            idle.append(sock)
        time.sleep(0.2)  # all accepted
        with pytest.raises(HostBusy, match="too many connections"):
            GatedRuntime(gate.path).run(coordinator.spec(MANIFEST, INPUT), CancelToken())
        for sock in idle:
            sock.close()
        deadline = time.monotonic() + 10
        while True:
            try:
                events = list(GatedRuntime(gate.path).run(coordinator.spec(MANIFEST, INPUT), CancelToken()))
                break
            except HostBusy:
                assert time.monotonic() < deadline
                time.sleep(0.1)
        assert events[-1]["type"] == "done"


def test_a_workload_cannot_forge_the_gates_own_lines(coordinator: Coordinator) -> None:
    """A workload's event claiming to be the gate's error stays the workload's event."""
    forged = {"type": "error", "message": "boom", "code": "ticket_refused", wire.MARK: "error"}
    with a_gate(FakeRuntime([forged]), guard_for(MANIFEST), (coordinator.public,)) as gate:
        events = list(GatedRuntime(gate.path).run(coordinator.spec(MANIFEST, INPUT), CancelToken()))
    assert events == [{"type": "error", "message": "boom", "code": "ticket_refused"}]


def test_a_gate_that_is_down_is_runtime_unavailable(tmp_path: Path, coordinator: Coordinator) -> None:
    with pytest.raises(RuntimeUnavailable, match="does not answer"):
        GatedRuntime(tmp_path / "none.sock").run(coordinator.spec(MANIFEST, INPUT), CancelToken())
    with pytest.raises(RuntimeUnavailable):
        GatedRuntime.connect(tmp_path / "none.sock")
    assert GatedRuntime(tmp_path / "none.sock").warm(time.time()) == frozenset()


@contextlib.contextmanager
def a_stand_in_gate(lines: list[bytes], then_close: bool) -> Iterator[Path]:
    """A gate that takes one job, answers ``lines``, then hangs up or goes silent."""
    path = Path(f"/tmp/gate-stand-in-{threading.get_ident()}.sock")
    path.unlink(missing_ok=True)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(path))
    listener.listen(1)
    hold = threading.Event()

    def serve() -> None:
        conn, _ = listener.accept()
        conn.recv(65536)
        conn.sendall(b"".join(lines))
        if not then_close:
            hold.wait(30)
        conn.close()

    threading.Thread(target=serve, daemon=True).start()
    try:
        yield path
    finally:
        hold.set()
        listener.close()
        path.unlink(missing_ok=True)


def test_a_gate_that_dies_mid_job_is_host_lost_not_a_hang(coordinator: Coordinator) -> None:
    lines = [wire.encode(wire.STARTED), wire.encode({"type": "token", "content": "a"})]
    with a_stand_in_gate(lines, then_close=True) as path:
        events = GatedRuntime(path).run(coordinator.spec(MANIFEST, INPUT), CancelToken())
        assert next(events) == {"type": "token", "content": "a"}
        with pytest.raises(HostLost, match="mid-job"):
            next(events)


def test_a_gate_silent_longer_than_the_job_could_be_is_host_lost(coordinator: Coordinator) -> None:
    quick = dataclasses.replace(tier_limits(Tier.RESTRICTED), timeout_s=0.1)
    with a_stand_in_gate([wire.encode(wire.STARTED)], then_close=False) as path:
        events = GatedRuntime(path, grace_s=0.3).run(coordinator.spec(MANIFEST, INPUT, limits=quick), CancelToken())
        started = time.monotonic()
        with pytest.raises(HostLost, match="stopped answering"):
            next(events)
        assert time.monotonic() - started < 5


def test_a_gate_that_answers_nonsense_is_not_believed(coordinator: Coordinator) -> None:
    with a_stand_in_gate([b"not json\n"], then_close=True) as path, \
            pytest.raises(RuntimeUnavailable, match="not its wire"):
        GatedRuntime(path).run(coordinator.spec(MANIFEST, INPUT), CancelToken())


def test_closing_the_gate_cancels_what_runs_and_removes_its_socket(coordinator: Coordinator) -> None:
    runtime = FakeRuntime(hold=True)
    with a_gate(runtime, guard_for(MANIFEST), (coordinator.public,)) as gate:
        events = GatedRuntime(gate.path).run(coordinator.spec(MANIFEST, INPUT), CancelToken())
        next(events)
        gate.close()
        with pytest.raises(JobCancelled, match="closing"):
            list(events)
        assert not gate.path.exists()


def test_errors_cross_the_wire_as_their_own_class() -> None:
    for exc in (TicketRefused("t"), WorkloadRefused("w", reason="image_missing"), HostBusy("b"), JobCancelled("c")):
        back = wire.raised(json.loads(wire.encode(wire.error_line(exc))))
        assert (type(back), back.message, back.details) == (type(exc), exc.message, exc.details)
    unknown = wire.raised({"type": "error", "message": "m", "code": "from_the_future"})
    assert type(unknown) is ArchipelagError and unknown.code == "from_the_future"


def test_a_gate_trusting_no_coordinator_refuses_to_start() -> None:
    with pytest.raises(ConfigError, match="no coordinator key"), a_gate(FakeRuntime(), guard_for(MANIFEST), ()):
        pass


@pytest.mark.parametrize(("mode", "owner"), [(0o777, None), (0o775, None), (0o755, 54321)])
def test_a_socket_folder_others_can_write_is_refused(tmp_path: Path, coordinator: Coordinator, mode: int,
                                                     owner: int | None) -> None:
    folder = tmp_path / "loose"
    folder.mkdir()
    folder.chmod(mode)
    if owner is not None:
        os.chown(folder, owner, -1)
    with pytest.raises(ConfigError, match="can be written by others"):
        GateServer(folder / "g.sock", FakeRuntime(), guard_for(MANIFEST), HOST, (coordinator.public,), {0}, 1024, 1,
                   HOST_KEY)
    assert list(folder.iterdir()) == []


def test_a_socket_path_longer_than_unix_allows_is_refused(coordinator: Coordinator) -> None:
    with pytest.raises(ConfigError, match="longer than a Unix socket allows"):
        GateServer(Path("/tmp") / ("g" * 120), FakeRuntime(), guard_for(MANIFEST), HOST, (coordinator.public,), {0},
                   1024, 1, HOST_KEY)


def test_the_host_id_is_the_gates_own(coordinator: Coordinator) -> None:
    """A ticket for this host id, sent to a gate of another host, is refused there."""
    with a_gate(FakeRuntime(), guard_for(MANIFEST), (coordinator.public,), host_id=HostId("host-b")) as gate, \
            pytest.raises(TicketRefused, match="another host"):
        GatedRuntime(gate.path).run(coordinator.spec(MANIFEST, INPUT, host_id=HOST), CancelToken())


# --- behind the host agent ------------------------------------------------------------------------------------


def test_the_host_agent_runs_gated_jobs_as_it_runs_local_ones(coordinator: Coordinator) -> None:
    """The agent's contract holds through the gate: numbered events after its started status; a refusal is one
    final error with its code and no started status (the job never began here); a leaving host's cancel ends the
    job with no final event (it moves elsewhere)."""
    from archipelag.actors.host_agent import HostAgent

    guard = guard_for(MANIFEST)
    with a_gate(FakeRuntime(), guard, (coordinator.public,)) as gate:
        agent = HostAgent(HOST, {"container": GatedRuntime(gate.path)}, 4, guard.admit)
        ran = list(agent.run(coordinator.spec(MANIFEST, INPUT)))
        assert [(e["seq"], e["type"]) for e in ran] == [(0, "status"), (1, "token"), (2, "done")]
        refused = list(agent.run(dataclasses.replace(coordinator.spec(MANIFEST, INPUT, job_id="job-2"), ticket=None)))
        assert [(e["type"], e.get("code")) for e in refused] == [("error", "ticket_refused")]
    runtime = FakeRuntime(hold=True)
    with a_gate(runtime, guard, (coordinator.public,)) as gate:
        agent = HostAgent(HOST, {"container": GatedRuntime(gate.path)}, 4, guard.admit)
        events = agent.run(coordinator.spec(MANIFEST, INPUT, job_id="job-3"))
        assert [next(events)["type"], next(events)["type"]] == ["status", "status"]
        threading.Timer(0.1, agent.close).start()
        assert list(events) == []
    assert runtime.cancelled == ["the host is leaving the network"]


def test_traced_the_gate_stamps_the_request_its_admission_and_the_first_output(coordinator: Coordinator,
                                                                               tmp_path: Path) -> None:
    TRACE.configure(tmp_path / "trace.txt")
    try:
        with a_gate(FakeRuntime(), guard_for(MANIFEST), (coordinator.public,)) as gate:
            list(GatedRuntime(gate.path).run(coordinator.spec(MANIFEST, INPUT), CancelToken()))
    finally:
        TRACE.configure(None)
    stamps = read_trace(tmp_path / "trace.txt")["job-1"]
    assert list(stamps) == ["gate_in", "admitted", "gate_out"]
    assert stamps["gate_in"] <= stamps["admitted"] <= stamps["gate_out"]


# --- signing for the node: the gate holds the host's key ----------------------------------------------------


def test_the_gate_signs_the_nodes_reports_with_the_hosts_key(coordinator: Coordinator) -> None:
    from archipelag import identity
    from archipelag.gate.client import gate_signer

    report = {"active_jobs": 1, "warm": ["a"]}
    with a_gate(FakeRuntime(), guard_for(MANIFEST), (coordinator.public,), clock=lambda: 1234.5) as gate:
        proof = gate_signer(gate.path, HOST)("heartbeat", report)
    assert proof.at == 1234.5  # the gate's clock, not the node's
    identity.verify(proof, "heartbeat", identity.public_hex(HOST_KEY), report)


def ask_to_sign(path: Path, request: dict[str, Any]) -> dict[str, Any]:
    with socket.socket(socket.AF_UNIX) as sock:
        sock.connect(str(path))
        sock.sendall(wire.encode(request))
        answer: dict[str, Any] = json.loads(sock.makefile().readline())
    return answer


RECEIPT_FIELDS = {"job_id": "job-9", "attempt": 1, "usage": {"completion_tokens": 2}, "output_sha256": "ab" * 32}


@pytest.mark.parametrize("request_", [
    {"op": "sign", "purpose": "poll", "digest": "ab" * 32},  # fetches the cluster's credentials: never the node's
    {"op": "sign", "purpose": "anything", "digest": "ab" * 32},
    {"op": "sign", "purpose": "heartbeat", "digest": "AB" * 32},
    {"op": "sign", "purpose": "heartbeat", "digest": "ab" * 31},
    {"op": "sign", "purpose": "heartbeat", "digest": "zz" * 32},
    {"op": "sign", "purpose": "receipt", "digest": "ab" * 32},  # a receipt goes as its fields
    {"op": "sign", "purpose": "receipt", "receipt": {**RECEIPT_FIELDS, "extra": 1}},
    {"op": "sign", "purpose": "receipt", "receipt": {**RECEIPT_FIELDS, "usage": {"tokens": "many"}}},
], ids=["poll", "unknown purpose", "upper-case digest", "short digest", "not hex", "receipt as a digest",
        "receipt with more fields", "receipt with a usage that is no count"])
def test_the_gate_signs_nothing_else(coordinator: Coordinator, request_: dict[str, Any]) -> None:
    with a_gate(FakeRuntime(), guard_for(MANIFEST), (coordinator.public,)) as gate:
        answer = ask_to_sign(gate.path, request_)
    assert answer["gate"] == "error" and answer["code"] == "validation_error"


def test_the_gate_signs_no_receipt_for_a_job_it_ran_but_one_for_another(coordinator: Coordinator) -> None:
    """It signed the receipt of a job it ran over what it sent: a node that changed that output on the way cannot
    have the change signed too. A job the agent ran itself (WASM) gets its receipt from the gate on request."""
    with a_gate(FakeRuntime(), guard_for(MANIFEST), (coordinator.public,)) as gate:
        list(GatedRuntime(gate.path).run(coordinator.spec(MANIFEST, INPUT), CancelToken()))
        taken = ask_to_sign(gate.path, {"op": "sign", "purpose": "receipt",
                                        "receipt": {**RECEIPT_FIELDS, "job_id": "job-1"}})
        other = ask_to_sign(gate.path, {"op": "sign", "purpose": "receipt", "receipt": RECEIPT_FIELDS})
    assert taken["code"] == "forbidden" and "signed its receipt itself" in taken["message"]
    assert other["gate"] == "signed" and other["digest"] == identity.digest(receipts.report(job_id="job-9", attempt=1, usage={"completion_tokens": 2}, output_digest="ab" * 32))


def test_a_job_whose_receipt_the_node_had_signed_ahead_does_not_run(coordinator: Coordinator) -> None:
    """Signed ahead for a job id the node learned, a receipt for a changed output would stand in for the gate's:
    the gate runs no container job it already signed a receipt for."""
    runtime = FakeRuntime()
    with a_gate(runtime, guard_for(MANIFEST), (coordinator.public,)) as gate:
        ahead = ask_to_sign(gate.path, {"op": "sign", "purpose": "receipt",
                                        "receipt": {**RECEIPT_FIELDS, "job_id": "job-1"}})
        with pytest.raises(TicketRefused, match="already has a receipt"):
            list(GatedRuntime(gate.path).run(coordinator.spec(MANIFEST, INPUT), CancelToken()))
    assert ahead["gate"] == "signed" and runtime.ran == []


def test_a_receipt_the_workload_wrote_is_replaced_by_the_gates(coordinator: Coordinator) -> None:
    forged = {"signed_at": 1.0, "output_sha256": "00" * 32, "signature": "AAAA"}
    runtime = FakeRuntime([{"type": "token", "content": "hi"}, {"type": "done", "receipt": forged}])
    with a_gate(runtime, guard_for(MANIFEST), (coordinator.public,)) as gate:
        events = list(GatedRuntime(gate.path).run(coordinator.spec(MANIFEST, INPUT), CancelToken()))
    receipt = events[-1]["receipt"]
    assert receipt != forged and receipts.mismatch(a_receipt(receipt, "job-1", events[-1]), "job-1", "hi") is None


def a_receipt(field: dict[str, Any], job_id: str, done: dict[str, Any]) -> receipts.Receipt:
    return receipts.Receipt(HOST, identity.public_hex(HOST_KEY), 1, usage_counts(done.get("usage")),
                            field["output_sha256"], field["signed_at"], field["signature"])


def test_a_gate_without_an_engine_still_signs_and_runs_no_container(coordinator: Coordinator) -> None:
    from archipelag.gate.client import gate_signer

    with a_gate(None, guard_for(MANIFEST), (coordinator.public,)) as gate:
        assert gate_signer(gate.path, HOST)("status", {"status": "online"}).host_id == HOST
        with pytest.raises(RuntimeUnavailable, match="no Docker engine"):
            GatedRuntime.connect(gate.path)
