"""The owner's side of a host's separate driver (actors/driver.py): whatever the driver — a process of the Ray
node's account, which any member of the cluster can take over — answers, `host join` reads only checked JSON, and
never waits on it without a deadline."""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from archipelag.actors import driver as driver_module
from archipelag.actors.controls import Command, Controller
from archipelag.actors.driver import SeparateDriver, read_view
from archipelag.errors import Conflict, HostLost
from archipelag.ids import HostId
from archipelag.lifecycle import HostStatus
from archipelag.settings import Settings

HOST = HostId("h1")
GOOD = {"state": {"status": "paused", "by": "owner", "reason": "lunch", "since": 1.5}, "running": ["j1", "j2"]}


def separate(process: subprocess.Popen[bytes], settings: Settings | None = None, node_id: str = "",
             runtimes: tuple[str, ...] = ()) -> SeparateDriver:
    return SeparateDriver(process, settings or Settings(state_dir=Path("/nonexistent")), HOST, node_id, runtimes)


def a_driver(*answers: bytes, then_sleep_s: float = 0, settings: Settings | None = None) -> SeparateDriver:
    """A driver process that answers each request line with the next of ``answers`` (raw bytes), then sleeps."""
    script = (
        "import sys, time\n"
        f"answers = {list(answers)!r}\n"
        "for answer in answers:\n"
        "    sys.stdin.readline()\n"
        "    sys.stdout.buffer.write(answer); sys.stdout.buffer.flush()\n"
        f"time.sleep({then_sleep_s})\n"
    )
    process = subprocess.Popen([sys.executable, "-c", script], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    return separate(process, settings, node_id="n1", runtimes=("wasm",))


@pytest.fixture
def drivers(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[SeparateDriver]]:
    monkeypatch.setattr(driver_module, "STOP_TIMEOUT_S", 0.5)  # the scripted drivers ignore their closed input
    made: list[SeparateDriver] = []
    yield made
    for driver in made:
        driver.close()


def line(answer: object) -> bytes:
    return json.dumps(answer).encode() + b"\n"


def test_a_drivers_view_is_read_field_by_field(drivers: list[SeparateDriver]) -> None:
    driver = a_driver(line({"ok": GOOD}))
    drivers.append(driver)
    view = driver.view()
    assert view.state.status == HostStatus.PAUSED and view.state.by == Controller.OWNER
    assert view.state.reason == "lunch" and view.running == ("j1", "j2")


def test_the_agents_refusal_comes_back_as_itself(drivers: list[SeparateDriver]) -> None:
    driver = a_driver(line({"error": {"code": "conflict", "message": "the host is draining"}}))
    drivers.append(driver)
    with pytest.raises(Conflict, match="draining"):
        driver.control(Command.PAUSE, Controller.OWNER, "")


@pytest.mark.parametrize("answer", [
    b"not json\n",
    line(["a", "list"]),
    line({"ok": {"state": "online", "running": []}}),
    line({"ok": {**GOOD, "running": "j1"}}),
    line({"ok": {**GOOD, "running": ["j"] * (driver_module.MAX_RUNNING + 1)}}),
    line({"ok": {**GOOD, "state": {**GOOD["state"], "status": "offline"}}}),  # not a state an agent holds
    line({"ok": {**GOOD, "state": {**GOOD["state"], "status": "root"}}}),
    line({"ok": {**GOOD, "state": {**GOOD["state"], "by": "mallory"}}}),
    line({"ok": {**GOOD, "state": {**GOOD["state"], "since": "yesterday"}}}),
    line({"ok": {**GOOD, "state": {**GOOD["state"], "reason": "x" * 5000}}}),
    line({"error": {"code": "internal_error", "message": "x" * 5000}}),
    line({"error": "no"}),
], ids=["not json", "a list", "state not an object", "running not a list", "too many jobs", "offline",
        "unknown status", "unknown controller", "since not a time", "reason too long", "unknown error code",
        "error not an object"])
def test_a_driver_that_answers_nonsense_counts_as_lost(drivers: list[SeparateDriver], answer: bytes) -> None:
    driver = a_driver(answer)
    drivers.append(driver)
    with pytest.raises(HostLost):
        driver.view()


def test_a_line_longer_than_an_answer_may_be_is_refused(drivers: list[SeparateDriver]) -> None:
    script = (f"import sys, time\nsys.stdin.readline()\nsys.stdout.write('x' * {driver_module.MAX_LINE_BYTES * 2})\n"
              "sys.stdout.flush()\ntime.sleep(30)\n")
    process = subprocess.Popen([sys.executable, "-c", script], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    driver = separate(process)
    drivers.append(driver)
    with pytest.raises(HostLost, match="more than a line"):
        driver.view()


def test_a_silent_driver_is_given_up_on_at_the_deadline(monkeypatch: pytest.MonkeyPatch,
                                                        drivers: list[SeparateDriver]) -> None:
    monkeypatch.setattr(driver_module, "VIEW_TIMEOUT_S", 0.5)
    driver = a_driver(then_sleep_s=30)
    drivers.append(driver)
    started = time.monotonic()
    with pytest.raises(HostLost, match="in time"):
        driver.view()
    assert time.monotonic() - started < 5


def test_a_driver_that_exited_is_lost_and_leaving_still_returns(drivers: list[SeparateDriver]) -> None:
    driver = a_driver()
    drivers.append(driver)
    with pytest.raises(HostLost):
        driver.view()
    driver.leave()  # says so in the log; never raises
    assert not driver.alive()


def test_a_driver_that_ignores_its_closed_input_is_killed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(driver_module, "STOP_TIMEOUT_S", 0.5)
    script = "import signal, time\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\ntime.sleep(60)\n"
    process = subprocess.Popen([sys.executable, "-c", script], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    started = time.monotonic()
    separate(process).close()
    assert process.returncode is not None and time.monotonic() - started < 5


def test_read_view_takes_an_honest_view() -> None:
    view = read_view({"state": {"status": "online", "by": None, "reason": "", "since": 0}, "running": []})
    assert view.state.status == HostStatus.ONLINE and view.running == ()


class Quiet(BaseHTTPRequestHandler):
    def log_message(self, *args: object) -> None:
        pass


@contextlib.contextmanager
def api(tmp_path: Path, handler: type[BaseHTTPRequestHandler]) -> Iterator[Settings]:
    """A coordinator's API played by ``handler`` on a port of its own; the settings of a host that reports there."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield Settings(state_dir=tmp_path, coordinator_api=f"http://127.0.0.1:{server.server_address[1]}")
    finally:
        server.shutdown()
        server.server_close()


def test_a_host_waiting_for_its_coordinators_api_asks_over_one_connection(tmp_path: Path) -> None:
    """A host that starts with its coordinator asks for the API every 0.2 s until it answers, on the cores the
    coordinator is starting on: over one kept-alive connection, not a new client (and TLS context) per try."""
    seen: list[tuple[str, int]] = []

    class Health(Quiet):
        protocol_version = "HTTP/1.1"  # keep-alive

        def do_GET(self) -> None:
            seen.append(self.client_address)
            self.send_response(200 if len(seen) > 3 else 503)
            self.send_header("Content-Length", "0")
            self.end_headers()

    with api(tmp_path, Health) as settings:
        driver_module._wait_for_api(settings, HostId("h1"), timeout_s=10, node_alive=lambda: None)
    assert len(seen) == 4 and len(set(seen)) == 1  # three refusals, then the answer, all from one client socket


def test_a_host_stops_waiting_for_the_api_once_its_node_is_gone(tmp_path: Path) -> None:
    settings = Settings(state_dir=tmp_path, coordinator_api="http://127.0.0.1:9")  # nothing answers there
    with pytest.raises(HostLost, match="raylet exited"):
        driver_module._wait_for_api(settings, HostId("h1"), timeout_s=10, node_alive=lambda: "its raylet exited")


def test_a_driver_of_the_nodes_account_leaves_and_the_owner_tells_placement(tmp_path: Path,
                                                                            drivers: list[SeparateDriver]) -> None:
    """The node's account may not read the host's key: the owner's process, which holds it, signs the goodbye."""
    from archipelag import identity

    heard: list[dict[str, object]] = []

    class Reports(Quiet):
        def do_POST(self) -> None:
            heard.append({"path": self.path, **json.loads(self.rfile.read(int(self.headers["Content-Length"])))})
            body = json.dumps({"data": {}}).encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    with api(tmp_path, Reports) as settings:
        key = identity.load_or_create_key(identity.named_key_path(tmp_path, HOST))
        driver = a_driver(line({"ok": {}}), settings=settings)
        drivers.append(driver)
        driver.leave()
    (goodbye,) = heard
    assert goodbye["path"] == f"/api/v1/hosts/{HOST}/reports" and goodbye["purpose"] == "status"
    report = identity.status_report(HostStatus.OFFLINE)
    assert goodbye["report"] == identity.plain(report)
    proof = goodbye["proof"]
    assert isinstance(proof, dict)
    identity.verify(identity.Proof(HOST, proof["at"], proof["digest"], bytes.fromhex(proof["signature"])), "status",
                    identity.public_hex(key), report)
