"""The coordinator's side of the bridge (bridge/client.py, bridge/wire.py): whatever the bridge — a Ray driver of
the hosts' cluster, which a member of that cluster can take over — answers, the jobs service, the API and placement
read only checked JSON, and a bridge that is gone or garbled is a lost host, never a hang or a crash."""

from __future__ import annotations

import asyncio
import functools
import json
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import pytest

from archipelag.actors.controls import Command, Controller
from archipelag.bridge import client as client_module
from archipelag.bridge import wire
from archipelag.bridge.client import BridgedAgent, BridgeHosts
from archipelag.catalog import Manifest
from archipelag.errors import BridgeDown, Conflict, HostLost, ValidationFailed, WorkloadRefused
from archipelag.ids import HostId, JobId, WorkloadSlug
from archipelag.lifecycle import HostStatus
from archipelag.placement.measured import Claims
from archipelag.runtimes.base import JobSpec
from archipelag.sandbox import Limits

HOST = HostId("h1")
VIEW = {"state": {"status": "paused", "by": "owner", "reason": "lunch", "since": 1.5}, "running": ["j1"]}
SPEC = JobSpec(JobId("job-1"), Manifest(slug=WorkloadSlug("echo"), name="Echo", description="", runtime="wasm",
                                        trust_level=0, price_micro=1),
               {"text": "hi"}, Limits(memory_mb=64, timeout_s=5, network=False, gpu=False, fuel=10, output_bytes=100,
                                      line_bytes=10))


def sync(test: Callable[..., Coroutine[Any, Any, None]]) -> Callable[..., None]:
    @functools.wraps(test)
    def run(*args: Any, **kwargs: Any) -> None:
        asyncio.run(test(*args, **kwargs))
    return run


def line(answer: object) -> bytes:
    return json.dumps(answer).encode() + b"\n"


class FakeBridge:
    """A Unix socket that answers each connection with ``script(request)`` (raw bytes), then closes it, or holds
    it open with ``hold``; it keeps what it was asked and whether each caller left first."""

    def __init__(self, path: Path, script: Callable[[dict[str, object]], bytes], hold: bool = False) -> None:
        self.path = path
        self._script = script
        self._hold = hold
        self.requests: list[dict[str, object]] = []
        self.callers_left = 0
        self.open: set[asyncio.StreamWriter] = set()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.open.add(writer)
        raw = await reader.readline()
        if not raw:  # a connection closed before its request
            writer.close()
            return
        request = json.loads(raw)
        self.requests.append(request)
        writer.write(self._script(request))
        await writer.drain()
        if self._hold and not await reader.read(1):
            self.callers_left += 1
        writer.close()


async def serving(fake: FakeBridge) -> asyncio.Server:
    return await asyncio.start_unix_server(fake._serve, path=str(fake.path))


async def run_all(agent: BridgedAgent) -> list[list[dict[str, object]]]:
    return [batch async for batch in agent.run_batches(SPEC)]


# --- runs ---------------------------------------------------------------------------------------------------


@sync
async def test_a_runs_batches_come_through_until_the_host_closes_the_stream(tmp_path: Path) -> None:
    fake = FakeBridge(tmp_path / "b.sock", lambda _: line({"batch": []}) + line({"batch": [{"type": "token",
                      "text": "hi"}]}) + line({"end": True}))
    async with await serving(fake):
        batches = await run_all(BridgedAgent(HOST, fake.path))
    assert batches == [[], [{"type": "token", "text": "hi"}]]
    request = fake.requests[0]
    assert request["op"] == "run" and request["host"] == HOST and request["workload"] == "echo"
    assert request["job_id"] == "job-1" and request["input"] == {"text": "hi"}


@pytest.mark.parametrize("last", [
    line({"lost": "host h1 was lost while running the job: ActorDiedError"}),
    b"",  # closed without saying how the stream ended
    b"not json\n",
    line(["a", "list"]),
    line({"batch": "not a list"}),
    line({"batch": [1, 2]}),
    line({"something": "else"}),
])
@sync
async def test_a_host_lost_or_a_garbled_answer_is_a_lost_host(tmp_path: Path, last: bytes) -> None:
    fake = FakeBridge(tmp_path / "b.sock", lambda _: line({"batch": [{"type": "status", "message": "ok"}]}) + last)
    async with await serving(fake):
        with pytest.raises(HostLost):
            await run_all(BridgedAgent(HOST, fake.path))


@sync
async def test_a_line_past_the_limit_is_a_lost_host_not_a_memory_hog(tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(client_module, "MAX_ANSWER_BYTES", 1000)
    fake = FakeBridge(tmp_path / "b.sock", lambda _: line({"batch": [{"type": "token", "text": "x" * 5000}]}))
    async with await serving(fake):
        with pytest.raises(HostLost, match="more than a line"):
            await run_all(BridgedAgent(HOST, fake.path))


@sync
async def test_a_bridge_that_goes_mid_run_is_the_bridges_fault_and_a_lost_agent_is_the_hosts(tmp_path: Path) -> None:
    fake = FakeBridge(tmp_path / "b.sock", lambda _: line({"batch": []}))  # then closes: the bridge went
    async with await serving(fake):
        with pytest.raises(BridgeDown):
            await run_all(BridgedAgent(HOST, fake.path))
    lost = FakeBridge(tmp_path / "c.sock", lambda _: line({"lost": "host h1 was lost: ActorDiedError"}))
    async with await serving(lost):
        with pytest.raises(HostLost) as raised:
            await run_all(BridgedAgent(HOST, lost.path))
    assert not isinstance(raised.value, BridgeDown)


@sync
async def test_a_cancelled_run_ends_with_the_cancelled_error_event(tmp_path: Path) -> None:
    fake = FakeBridge(tmp_path / "b.sock", lambda _: line({"cancelled": "the job's run was cancelled"}))
    async with await serving(fake):
        batches = await run_all(BridgedAgent(HOST, fake.path))
    assert batches[-1][0]["type"] == "error" and batches[-1][0]["code"] == "cancelled"


@sync
async def test_a_refusal_comes_back_as_its_own_error(tmp_path: Path) -> None:
    fake = FakeBridge(tmp_path / "b.sock", lambda _: line({"error": {"code": "workload_refused", "message": "no"}}))
    async with await serving(fake):
        with pytest.raises(WorkloadRefused, match="no"):
            await run_all(BridgedAgent(HOST, fake.path))


@sync
async def test_a_caller_that_leaves_a_run_closes_its_connection(tmp_path: Path) -> None:
    """The bridge cancels the run on the host when the connection closes (bridge/server.py)."""
    fake = FakeBridge(tmp_path / "b.sock", lambda _: line({"batch": [{"type": "token", "text": "a"}]}), hold=True)
    async with await serving(fake):
        stream = BridgedAgent(HOST, fake.path).run_batches(SPEC)
        assert await anext(stream) == [{"type": "token", "text": "a"}]
        await stream.aclose()
        for _ in range(100):
            if fake.callers_left:
                break
            await asyncio.sleep(0.01)
    assert fake.callers_left == 1


@sync
async def test_the_jobs_services_runs_take_a_connection_opened_ahead_and_one_a_restart_closed_is_dropped(
        tmp_path: Path) -> None:
    """The next run's connection is open before it comes (no connect on the first token's path); the bridge
    restarting closes it, and the run after goes through on a new one."""
    token = {"type": "token", "text": "hi"}
    hosts = BridgeHosts(tmp_path / "b.sock")
    first = FakeBridge(tmp_path / "b.sock", lambda _: line({"batch": [token]}) + line({"end": True}))
    async with await serving(first):
        assert await run_all(hosts(HOST)) == [[token]]
        assert await run_all(hosts(HostId("h2"))) == [[token]]
        await asyncio.sleep(0.05)
        assert [r["host"] for r in first.requests] == [HOST, "h2"] and len(first.open) == 3  # one spare waits
        for writer in first.open:  # the bridge goes, and with it the connections it held
            writer.close()
    await asyncio.sleep(0.05)
    second = FakeBridge(tmp_path / "b.sock", lambda _: line({"batch": [token]}) + line({"end": True}))
    async with await serving(second):
        assert await run_all(hosts(HOST)) == [[token]]
    assert [r["host"] for r in second.requests] == [HOST]


@sync
async def test_no_bridge_is_a_lost_host_and_a_cancel_that_did_nothing(tmp_path: Path) -> None:
    agent = BridgedAgent(HOST, tmp_path / "nobody.sock")
    with pytest.raises(BridgeDown, match="the bridge is not running"):  # no host's fault: no karma, no retry note
        await run_all(agent)
    assert await agent.cancel(JobId("j1")) is False
    with pytest.raises(HostLost):
        await agent.control_async(Command.PAUSE, Controller.OWNER, "lunch")


# --- controls -----------------------------------------------------------------------------------------------


@sync
async def test_a_view_is_read_field_by_field(tmp_path: Path) -> None:
    fake = FakeBridge(tmp_path / "b.sock", lambda _: line({"ok": VIEW}))
    async with await serving(fake):
        view = await BridgedAgent(HOST, fake.path).control_async(Command.PAUSE, Controller.OWNER, "lunch")
    assert view.state.status == HostStatus.PAUSED and view.state.by == Controller.OWNER and view.running == ("j1",)
    assert fake.requests[0] == {"op": "control", "host": "h1", "command": "pause", "by": "owner", "reason": "lunch"}


@pytest.mark.parametrize("answer", [
    {"ok": {"state": {"status": "online"}, "running": []}},  # no time
    {"ok": {"state": {**VIEW["state"], "status": "revoked"}, "running": []}},  # a status no agent holds
    {"ok": {"state": VIEW["state"], "running": list(range(5))}},  # ids that are not text
    {"ok": "paused"},
    {"error": "no object"},
])
@sync
async def test_a_view_that_is_not_one_is_a_lost_host(tmp_path: Path, answer: object) -> None:
    fake = FakeBridge(tmp_path / "b.sock", lambda _: line(answer))
    async with await serving(fake):
        with pytest.raises(HostLost):
            await BridgedAgent(HOST, fake.path).view_async()


@sync
async def test_the_agents_refusal_comes_back_as_itself(tmp_path: Path) -> None:
    fake = FakeBridge(tmp_path / "b.sock", lambda _: line({"error": {"code": "conflict", "message": "draining"}}))
    async with await serving(fake):
        with pytest.raises(Conflict, match="draining"):
            await BridgedAgent(HOST, fake.path).control_async(Command.RESUME, Controller.OWNER, "")


@sync
async def test_an_error_code_the_coordinator_does_not_know_is_a_lost_host(tmp_path: Path) -> None:
    fake = FakeBridge(tmp_path / "b.sock", lambda _: line({"error": {"code": "mint_credits", "message": "x"}}))
    async with await serving(fake):
        with pytest.raises(HostLost):
            await BridgedAgent(HOST, fake.path).kill()


@sync
async def test_a_silent_bridge_is_a_lost_host_after_the_requests_deadline(tmp_path: Path) -> None:
    fake = FakeBridge(tmp_path / "b.sock", lambda _: b"", hold=True)
    async with await serving(fake):
        with pytest.raises(HostLost, match="did not answer"):
            await BridgedAgent(HOST, fake.path)._ask(wire.ask("view", HOST), 0.2)


# --- the bridge reads its requests ---------------------------------------------------------------------------


def test_a_run_request_carries_the_job_as_the_gates_wire_does() -> None:
    request = wire.parse_request(wire.run_request(HOST, SPEC), 10_000)
    assert isinstance(request, wire.Run) and request.host == HOST
    assert request.job.job_id == "job-1" and request.job.workload == "echo" and request.job.limits == SPEC.limits


@pytest.mark.parametrize("raw", [
    b"not json", b"[]", line({"op": "view"}), line({"op": "mint", "host": "h1"}),
    line({"op": "cancel", "host": "h1"}), line({"op": "control", "host": "h1", "command": "explode", "by": "owner"}),
    line({"op": "run", "host": "h1", "job_id": "j", "workload": "echo", "input": "not an object"}),
    line({"op": "view", "host": "h" * 500}),
])
def test_a_request_that_is_not_one_is_refused(raw: bytes) -> None:
    with pytest.raises(ValidationFailed):
        wire.parse_request(raw, 10_000)


def test_a_request_past_the_limit_is_refused() -> None:
    with pytest.raises(ValidationFailed, match="at most"):
        wire.parse_request(wire.run_request(HOST, SPEC), 50)


# --- the join benchmark ----------------------------------------------------------------------------------------

MEASURED = {"threads": 2, "cpu_single_mb_s": 900.0, "cpu_all_mb_s": 1700.5, "cpu_single_share": 1.0,
            "cpu_parallelism": 1.9, "memory_probe_mb": 256, "memory_verified_mb": 256, "memory_mb_s": 4000.0,
            "node_ram_mb": 24000, "gpu_model": None, "gpu_vram_mb": 0, "gpu_tflops": None, "duration_s": 0.8}
CLAIMS = Claims(cpu_cores=2, ram_mb=4096, gpu_model=None, vram_mb=0)


@sync
async def test_a_measurement_comes_back_as_one(tmp_path: Path) -> None:
    fake = FakeBridge(tmp_path / "b.sock", lambda _: line({"ok": MEASURED}))
    async with await serving(fake):
        measured = await BridgedAgent(HOST, fake.path).measure("node-1", CLAIMS, 5)
    assert measured.cpu_all_mb_s == 1700.5 and measured.gpu_model is None
    request = wire.parse_request(json.dumps(fake.requests[0]).encode(), 10_000)
    assert isinstance(request, wire.Ask) and request.node_id == "node-1" and request.claims == CLAIMS


@pytest.mark.parametrize("change", [
    {"cpu_all_mb_s": float("nan")}, {"cpu_all_mb_s": -1.0}, {"threads": 2.5}, {"threads": True},
    {"gpu_model": 7}, {"extra": 1}, {"duration_s": "fast"},
])
def test_a_measurement_that_is_not_one_is_a_lost_host(change: dict[str, object]) -> None:
    with pytest.raises(HostLost):
        wire.measurement({**MEASURED, **change}, HOST)


def test_claims_that_are_not_claims_are_refused() -> None:
    request = {"op": "measure", "host": "h1", "node_id": "n", "claims": {"cpu_cores": -2, "ram_mb": 1,
                                                                          "gpu_model": None, "vram_mb": 0}}
    with pytest.raises(ValidationFailed):
        wire.parse_request(line(request), 10_000)
