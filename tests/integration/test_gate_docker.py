"""The host's gate in front of the real Docker engine: a signed ticket runs a real container end to end; a cancel
or an agent walking away removes it; the socket serves the Ray node's user and no other (a real second uid)."""

from __future__ import annotations

import dataclasses
import json
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from docker_engine import ENGINE_URL, LIMITS, REPO_ROOT, DockerEnv, a_job_id, docker_env  # noqa: F401
from gate_builders import HOST, Coordinator, a_gate, guard_for

from archipelag import identity, receipts
from archipelag.actors.agent_actor import build_runtimes
from archipelag.actors.hardware import Hardware
from archipelag.catalog import Manifest, write_catalog
from archipelag.catalog_signing import generate_signing_key, sign_catalog
from archipelag.errors import JobCancelled, TicketRefused
from archipelag.gate import wire
from archipelag.gate.client import GatedRuntime
from archipelag.gate.server import GateServer, start_gate
from archipelag.runtimes.base import CancelToken, JobSpec
from archipelag.runtimes.docker import DockerRuntime
from archipelag.settings import Settings

pytestmark = pytest.mark.docker

TEST_USER = "archipelag-gate-test"
# A client as an unprivileged user runs it: the system Python, the request on stdin, the gate's lines on stdout.
RAW_CLIENT = """
import socket, sys
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.settimeout(60)
try:
    s.connect(sys.argv[1])
except OSError as exc:
    print("connect failed:", exc.strerror)
    raise SystemExit(3)
try:
    s.sendall(sys.stdin.buffer.read())
except OSError:
    pass  # refused before it read the request: its answer says why
out = b""
try:
    while chunk := s.recv(65536):
        out += chunk
except ConnectionResetError:
    pass
sys.stdout.buffer.write(out)
"""


@pytest.fixture
def gate(docker_env: DockerEnv) -> Iterator[tuple[GateServer, Coordinator]]:  # noqa: F811
    coordinator = Coordinator()
    # The gate owns its runtime (and closes it): a client of its own, not the session's.
    with a_gate(DockerRuntime.connect(ENGINE_URL), guard_for(docker_env.probe()), (coordinator.public,)) as server:
        yield server, coordinator


def job(env: DockerEnv, coordinator: Coordinator, name: str, job_input: dict[str, Any]) -> JobSpec:
    return coordinator.spec(env.probe(), job_input, job_id=a_job_id(name), limits=LIMITS)


def wait_for_no_leftovers(env: DockerEnv, timeout_s: float = 30.0) -> list[str]:
    deadline = time.monotonic() + timeout_s
    while (left := env.leftovers()) and time.monotonic() < deadline:
        time.sleep(0.2)
    return left


def test_a_signed_ticket_runs_a_real_container_through_the_gate(gate: tuple[GateServer, Coordinator],
                                                                docker_env: DockerEnv) -> None:  # noqa: F811
    server, coordinator = gate
    spec = job(docker_env, coordinator, "gate-echo", {"attack": "echo", "text": "through the gate"})
    events = list(GatedRuntime(server.path).run(spec, CancelToken()))
    assert "".join(e["content"] for e in events if e["type"] == "token") == "through the gate "
    assert events[-1].pop("receipt")["output_sha256"] == receipts.output_sha256("through the gate ")  # the gate's
    assert events[-1] == {"type": "done", "usage": {"completion_tokens": 3}}
    assert wait_for_no_leftovers(docker_env) == []  # removed just after the done event left, as without a gate


def test_an_unsigned_job_starts_no_container(gate: tuple[GateServer, Coordinator],
                                             docker_env: DockerEnv) -> None:  # noqa: F811
    server, coordinator = gate
    spec = dataclasses.replace(job(docker_env, coordinator, "gate-unsigned", {"attack": "echo", "text": "x"}),
                               ticket=None)
    with pytest.raises(TicketRefused):
        GatedRuntime(server.path).run(spec, CancelToken())
    assert docker_env.leftovers() == []


def test_a_cancel_through_the_gate_removes_the_container(gate: tuple[GateServer, Coordinator],
                                                         docker_env: DockerEnv) -> None:  # noqa: F811
    server, coordinator = gate
    cancel = CancelToken()
    events = GatedRuntime(server.path).run(job(docker_env, coordinator, "gate-cancel",
                                               {"attack": "stream", "sleep_s": 120}), cancel)
    assert next(events)["content"] == "first"
    assert len(docker_env.leftovers()) == 1
    cancel.cancel("stopped by the test")
    started = time.monotonic()
    with pytest.raises(JobCancelled, match="stopped by the test"):
        list(events)
    assert time.monotonic() - started < 30
    assert docker_env.leftovers() == []


def test_an_agent_that_disconnects_mid_job_leaves_no_container(gate: tuple[GateServer, Coordinator],
                                                               docker_env: DockerEnv) -> None:  # noqa: F811
    server, coordinator = gate
    events = GatedRuntime(server.path).run(job(docker_env, coordinator, "gate-walk-away",
                                               {"attack": "stream", "sleep_s": 120}), CancelToken())
    next(events)
    assert len(docker_env.leftovers()) == 1
    events.close()  # type: ignore[attr-defined]
    assert wait_for_no_leftovers(docker_env) == []


def test_closing_the_gate_stops_its_containers(docker_env: DockerEnv) -> None:  # noqa: F811
    coordinator = Coordinator()
    with a_gate(DockerRuntime.connect(ENGINE_URL), guard_for(docker_env.probe()), (coordinator.public,)) as server:
        events = GatedRuntime(server.path).run(job(docker_env, coordinator, "gate-close",
                                                   {"attack": "stream", "sleep_s": 120}), CancelToken())
        next(events)
        server.close()
        with pytest.raises(JobCancelled):
            list(events)
    assert docker_env.leftovers() == []


# --- who may connect: a real second uid -------------------------------------------------------------------


@pytest.fixture(scope="module")
def test_uid() -> int:
    """An unprivileged system user for the peer checks (made once; it owns nothing and is left for later runs)."""
    try:
        return pwd.getpwnam(TEST_USER).pw_uid
    except KeyError:
        made = subprocess.run(["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", TEST_USER],
                              capture_output=True, text=True, check=False)
        if made.returncode != 0:
            pytest.skip(f"cannot make the user {TEST_USER}: {made.stderr.strip()}")
        return pwd.getpwnam(TEST_USER).pw_uid


def as_user(uid: int, server: GateServer, request: bytes) -> tuple[int, list[dict[str, Any]], str]:
    done = subprocess.run(["/usr/bin/python3", "-c", RAW_CLIENT, str(server.path)], input=request, user=uid,
                          group=pwd.getpwuid(uid).pw_gid, extra_groups=[], capture_output=True, timeout=120,
                          check=False, cwd="/")
    lines = [json.loads(line) for line in done.stdout.splitlines() if line.startswith(b"{")]
    return done.returncode, lines, done.stdout.decode(errors="replace") + done.stderr.decode(errors="replace")


def test_the_ray_nodes_user_runs_a_job_and_no_other_uid_may(docker_env: DockerEnv, test_uid: int) -> None:  # noqa: F811
    coordinator = Coordinator()
    runtime = DockerRuntime.connect(ENGINE_URL)
    with a_gate(runtime, guard_for(docker_env.probe()), (coordinator.public,), allowed_uids={test_uid}) as server:
        assert server.path.stat().st_mode & 0o777 in (0o600, 0o660)  # never open to everyone
        spec = job(docker_env, coordinator, "gate-uid", {"attack": "echo", "text": "as the ray user"})
        code, lines, said = as_user(test_uid, server, wire.run_request(spec))
        assert code == 0, said
        assert lines[0] == wire.STARTED and lines[-1]["type"] == "done", said
    coordinator = Coordinator()
    with a_gate(DockerRuntime.connect(ENGINE_URL), guard_for(docker_env.probe()), (coordinator.public,),
                allowed_uids={0}) as server:
        spec = job(docker_env, coordinator, "gate-stranger", {"attack": "echo", "text": "not allowed"})
        code, lines, said = as_user(test_uid, server, wire.run_request(spec))
        # The socket's mode keeps the stranger out; if a folder or mode were loosened, the peer check still does.
        assert code == 3 or [(line["type"], line["code"]) for line in lines] == [("error", "forbidden")], said
        server.path.chmod(0o666)  # loosened by hand: the kernel's word on the peer still refuses it
        code, lines, said = as_user(test_uid, server, wire.run_request(spec))
        assert code == 0 and [(line["type"], line["code"]) for line in lines] == [("error", "forbidden")], said
    assert docker_env.leftovers() == []


# --- as `host join` starts it -----------------------------------------------------------------------------


def signed_state(root: Path, probe: Manifest) -> Settings:
    """A state folder holding a catalog of the probe workload signed by a key the settings trust, and the host's
    key (the gate signs the node's reports with it)."""
    state = root / "state"
    write_catalog(state / "catalog.json", [probe])
    identity.load_or_create_key(identity.named_key_path(state, HOST))
    public = generate_signing_key(root / "catalog.key")
    sign_catalog(state / "catalog.json", root / "catalog.key")
    return Settings(state_dir=state, trusted_catalog_keys=[public.encoded()], gate_socket=gate_folder() / "g.sock")


def gate_folder() -> Path:
    folder = Path(tempfile.mkdtemp(prefix="gate-", dir="/tmp"))
    folder.chmod(0o755)
    return folder


def test_start_gate_serves_the_agents_gated_runtime(tmp_path: Path, docker_env: DockerEnv) -> None:  # noqa: F811
    """What `host join` does: start the gate in this process; the agent's build_runtimes then finds it."""
    settings = signed_state(tmp_path, docker_env.probe())
    coordinator = Coordinator()
    hardware = Hardware(cpu_cores=2, ram_mb=4096)
    server = start_gate(settings, HOST, (coordinator.public,), {os.getuid()}, hardware)
    try:
        assert server.path == settings.gate_socket
        runtimes = build_runtimes(settings, HOST, hardware)
        gated = runtimes["container"]
        assert isinstance(gated, GatedRuntime)
        spec = job(docker_env, coordinator, "gate-joined", {"attack": "echo", "text": "joined"})
        assert [e["type"] for e in gated.run(spec, CancelToken())] == ["token", "done"]
        assert "test-probe" in gated.warm(time.time())
    finally:
        server.close()
        settings.gate_socket.parent.rmdir()  # the socket went with the gate
    assert wait_for_no_leftovers(docker_env) == []
    without = build_runtimes(settings.model_copy(update={"gate_socket": tmp_path / "gone.sock"}), HOST, hardware)
    assert "container" not in without  # a gate that does not answer: no container runtime, as without an engine


def test_host_gate_serves_in_the_foreground_until_ctrl_c(tmp_path: Path, docker_env: DockerEnv) -> None:  # noqa: F811
    settings = signed_state(tmp_path, docker_env.probe())
    assert settings.gate_socket is not None
    coordinator = Coordinator()
    env = {**os.environ, "ARCHIPELAG_STATE_DIR": str(settings.state_dir),
           "ARCHIPELAG_TRUSTED_CATALOG_KEYS": json.dumps(settings.trusted_catalog_keys)}
    command = [str(REPO_ROOT / ".venv" / "bin" / "archipelag"), "host", "gate", "--socket", str(settings.gate_socket),
               "--ray-uid", str(os.getuid()), "--host-id", HOST, "--coordinator-key", coordinator.public]
    gate = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while not settings.gate_socket.exists():
            assert gate.poll() is None and time.monotonic() < deadline, gate.communicate()
            time.sleep(0.1)
        spec = job(docker_env, coordinator, "gate-cli", {"attack": "echo", "text": "from the cli"})
        assert list(GatedRuntime(settings.gate_socket).run(spec, CancelToken()))[-1]["type"] == "done"
        gate.send_signal(signal.SIGINT)
        out, err = gate.communicate(timeout=60)
        assert gate.returncode == 0, err
        assert "gate of host" in out
        assert not settings.gate_socket.exists()
    finally:
        if gate.poll() is None:
            gate.kill()
            gate.wait()
        shutil.rmtree(settings.gate_socket.parent, ignore_errors=True)
    assert wait_for_no_leftovers(docker_env) == []
