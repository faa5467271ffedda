"""The host's control socket, served for real on a Unix socket: the owner's requests work; bad requests get a clear
error; another user of the machine is refused, by the file's permissions and, should those be loosened by hand, by
the kernel's word on who is calling (SO_PEERCRED). The other user is a real one (nobody), in a real process."""

from __future__ import annotations

import json
import os
import shutil
import socket
import stat
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from test_host_controls import Clocks, LocalAgent, controls_for

from archipelag.actors.control_socket import ControlServer, ask, socket_path
from archipelag.actors.host_agent import HostAgent
from archipelag.errors import ConfigError, Forbidden, RequestError
from archipelag.ids import HostId
from archipelag.settings import Settings

NOBODY = 65534
SYSTEM_PYTHON = "/usr/bin/python3"  # one that another user can run (the project's venv may sit in root's home)
# What another user runs: connect, send a pause, print what came back (or the error's name).
INTRUDER = """
import socket, sys
s = socket.socket(socket.AF_UNIX)
try:
    s.connect(sys.argv[1])
    s.sendall(b'{"command": "pause"}\\n')
    print(s.makefile().read())
except OSError as exc:
    print(type(exc).__name__)
"""


@pytest.fixture
def state_dir() -> Iterator[Path]:
    """A state dir another user could reach, were its control folder not private (pytest's tmp is 0700)."""
    root = Path(tempfile.mkdtemp(prefix="arch-ctl-", dir="/tmp"))
    os.chmod(root, 0o755)
    yield root / "state"
    shutil.rmtree(root)


@pytest.fixture
def served(state_dir: Path) -> Iterator[tuple[Path, LocalAgent]]:
    agent = LocalAgent(HostAgent(HostId("h1"), {}, 2))
    server = ControlServer(socket_path(Settings(state_dir=state_dir), "h1"), controls_for(agent, Clocks()).handle)
    server.start()
    yield server.path, agent
    server.close()
    assert not server.path.exists()


def raw(path: Path, line: bytes) -> dict[str, object]:
    with socket.socket(socket.AF_UNIX) as sock:
        sock.connect(str(path))
        sock.sendall(line)
        sock.shutdown(socket.SHUT_WR)
        answer: dict[str, object] = json.loads(sock.makefile().read())
        return answer


def as_nobody(path: Path) -> str:
    done = subprocess.run([SYSTEM_PYTHON, "-c", INTRUDER, str(path)], user=NOBODY, capture_output=True, text=True,
                          timeout=30, check=True)
    return done.stdout.strip()


def test_the_owner_pauses_and_resumes_through_the_socket(served: tuple[Path, LocalAgent]) -> None:
    path, agent = served
    assert ask(path, {"command": "pause"})["status"] == "paused"
    assert agent.agent.state.by == "owner"
    answer = ask(path, {"command": "resume"})
    assert answer["status"] == "online" and answer["host_id"] == "h1"


def test_the_socket_is_private_to_the_user_who_lent_the_machine(served: tuple[Path, LocalAgent]) -> None:
    path, _ = served
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700


@pytest.mark.skipif(os.getuid() != 0 or not Path(SYSTEM_PYTHON).exists(), reason="needs root to act as another user")
def test_another_user_cannot_reach_the_socket(served: tuple[Path, LocalAgent]) -> None:
    path, agent = served
    assert as_nobody(path) == "PermissionError"
    assert agent.agent.state.status == "online"


@pytest.mark.skipif(os.getuid() != 0 or not Path(SYSTEM_PYTHON).exists(), reason="needs root to act as another user")
def test_another_user_is_refused_even_when_the_permissions_were_loosened(served: tuple[Path, LocalAgent]) -> None:
    path, agent = served
    os.chmod(path.parent, 0o755)
    os.chmod(path, 0o666)
    answer = json.loads(as_nobody(path))
    assert answer["error"]["code"] == "forbidden" and f"uid {NOBODY}" in answer["error"]["message"]
    assert agent.agent.state.status == "online"


@pytest.mark.parametrize(("line", "code"), [
    (b"pause\n", "validation_error"),
    (b"[1, 2]\n", "validation_error"),
    (b'{"command": "format-disk"}\n', "validation_error"),
    (b'{"command": "leave", "timeout_s": -5}\n', "validation_error"),
    (b"\xff\xfe\n", "validation_error"),
    (b'{"command": "' + b"x" * 5000 + b'"}\n', "payload_too_large"),
])
def test_a_bad_request_gets_a_clear_error_and_changes_nothing(served: tuple[Path, LocalAgent], line: bytes,
                                                              code: str) -> None:
    path, agent = served
    answer = raw(path, line)
    assert answer["error"]["code"] == code, answer  # type: ignore[index]
    assert agent.agent.state.status == "online"
    assert ask(path, {"command": "status"})["status"] == "online"  # the server still serves


def test_the_host_s_refusal_reaches_the_command_as_an_error(served: tuple[Path, LocalAgent]) -> None:
    path, _ = served
    ask(path, {"command": "drain"})
    with pytest.raises(RequestError, match="draining"):
        ask(path, {"command": "resume"})


def test_a_silent_client_does_not_hold_the_socket(served: tuple[Path, LocalAgent]) -> None:
    path, _ = served
    with socket.socket(socket.AF_UNIX) as idle:
        idle.connect(str(path))  # says nothing; the server gives up on it after its read timeout
        assert ask(path, {"command": "status"}, timeout_s=10)["status"] == "online"


def test_the_command_finds_the_one_host_or_asks_which(state_dir: Path) -> None:
    settings = Settings(state_dir=state_dir)
    with pytest.raises(ConfigError, match="no host is joined"):
        socket_path(settings, None)
    servers = [ControlServer(socket_path(settings, h), lambda r: {}) for h in ("h1", "h2")]
    servers[0].start()
    try:
        assert socket_path(settings, None).name == "h1.sock"
        servers[1].start()
        with pytest.raises(ConfigError, match="--host-id"):
            socket_path(settings, None)
        with pytest.raises(ConfigError, match="already joined"):
            ControlServer(socket_path(settings, "h1"), lambda r: {}).start()
    finally:
        for server in servers:
            server.close()


def test_a_socket_left_by_a_killed_host_is_replaced(state_dir: Path) -> None:
    path = socket_path(Settings(state_dir=state_dir), "h1")
    path.parent.mkdir(parents=True)
    left = socket.socket(socket.AF_UNIX)
    left.bind(str(path))
    left.close()  # bound, never listening: what a SIGKILLed `host join` leaves
    with pytest.raises(ConfigError, match="is `archipelag host join` running|is gone"):
        ask(path, {"command": "status"})
    server = ControlServer(path, lambda r: {"ok": True})
    server.start()
    try:
        assert ask(path, {"command": "status"}) == {"ok": True}
    finally:
        server.close()


def test_asking_another_user_s_socket_says_so(tmp_path: Path) -> None:
    with pytest.raises(ConfigError):
        ask(tmp_path / "none.sock", {"command": "status"})
    assert Forbidden.http_status == 403


def test_a_leaving_host_refuses_requests_and_its_socket_goes_once_it_has_left(state_dir: Path) -> None:
    server = ControlServer(socket_path(Settings(state_dir=state_dir), "h1"), lambda r: {"ok": True})
    server.start()
    server.close(keep_path=True)  # leaving: no more requests, but `host drain --wait` still sees it there
    assert server.path.exists()
    with pytest.raises(ConfigError, match="is gone"):
        ask(server.path, {"command": "status"})
    server.close()
    assert not server.path.exists()
