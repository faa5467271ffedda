"""A network of several machines: the coordinator and two hosts on a LAN of network namespaces (tests/netns.py).

Everything goes over that LAN and nothing else, as it would between real machines: the coordinator (`archipelag
up --hosts 0`, its Ray head and API listening on its LAN address, Ray's token auth on), two strangers' machines
that enrol with `archipelag host join --coordinator http://…` and nothing carried by hand, and the owner's laptop,
which approves their pairing codes with `archipelag hosts approve` and streams a job. Mid-stream the cable of the
host running the job is pulled: the job carries on on the other host and the stream ends with every token once.
Then that host is revoked and the coordinator restarts with a new cluster token: the other host fetches it as it
rejoins and runs jobs again; the revoked one, its cable mended, is refused it and leaves.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
import pytest
from catalog_builders import network_catalog
from netns import Lan, lan
from netutil import eventually, network_settings

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.timeout(900)]

API_PORT = 8000  # each machine has its own ports: the usual ones are free
TICKS = 40  # test-ticks says "tick " this many times, ~0.1 s apart


@dataclass
class Machine:
    """A process of ours running on one member of the LAN, with what it printed."""

    name: str
    process: subprocess.Popen[str]
    lines: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        assert self.process.stdout is not None
        threading.Thread(target=lambda: self.lines.extend(iter(self.process.stdout.readline, "")),  # type: ignore[union-attr]
                         daemon=True).start()

    def said(self, prefix: str) -> str | None:
        return next((line.split(":", 1)[1].strip() for line in self.lines if line.startswith(prefix)), None)

    def stop(self, grace_s: float) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(timeout=grace_s)
                return
            except subprocess.TimeoutExpired:
                pass
            os.killpg(self.process.pid, signal.SIGKILL)  # its Ray node's session goes with its watchdog
            self.process.wait(timeout=30)


def archipelag(net: Lan, where: str, args: list[str], env: dict[str, str]) -> Machine:
    process = net.popen(where, [sys.executable, "-m", "archipelag", *args], stdout=subprocess.PIPE,
                        stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env, text=True,
                        start_new_session=True)
    return Machine(where, process)


def laptop_api(net: Lan, env: dict[str, str], method: str, path: str, body: Any = None) -> Any:
    """One API call from the laptop (httpx inside its namespace); the answer's JSON."""
    script = textwrap.dedent(f"""
        import json, os, sys, httpx
        r = httpx.request({method!r}, os.environ["API"] + {path!r}, json={body!r}, timeout=30,
                          headers={{"Authorization": "Bearer " + os.environ["ARCHIPELAG_API_KEY"]}})
        print(json.dumps({{"status": r.status_code, "body": r.json() if r.content else None}}))
    """)
    done = net.run("laptop", [sys.executable, "-c", script], env=env)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def wait_up(coordinator: Machine, state_dir: Path) -> None:
    eventually(lambda: coordinator.process.poll() is not None or "Archipelag is up" in "".join(coordinator.lines),
               timeout_s=300, interval_s=0.5)
    head_log = state_dir / "logs" / "head.log"
    assert coordinator.process.poll() is None, "".join(coordinator.lines) + (
        head_log.read_text()[-3000:] if head_log.exists() else "")


def ray_nodes_of(address: str) -> list[psutil.Process]:
    """Ray's processes (a head's, the hosts' raylets) naming the GCS at ``address``. The test's machines share one
    process table, where `ray start --head` looks for them: it refuses to start while one is listed."""
    return [process for process in psutil.process_iter(["cmdline"])
            if f"--gcs-address={address}" in " ".join(process.info["cmdline"] or ())]


def online(net: Lan, laptop: dict[str, str]) -> set[str]:
    return {h["name"] for h in laptop_api(net, laptop, "GET", "/api/v1/hosts")["body"]["data"]
            if h["status"] == "online"}


@pytest.fixture(scope="module")
def network(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    reason = Lan.available()
    if reason:
        pytest.skip(reason)
    root = tmp_path_factory.mktemp("lan")
    machines: list[Machine] = []
    with lan() as net:
        # Each machine's own /tmp for Ray (its sockets and session files), as on real machines: nodes sharing one
        # folder race for the same socket names when they start together. Short: socket paths stay < 107 bytes.
        ray_tmp = Path(f"/tmp/ap-{net.tag}")
        try:
            coordinator_ip = net.add("coordinator")
            hosts = {name: net.add(name) for name in ("attic", "office")}
            net.add("laptop")
            settings = network_settings(root / "coordinator", api_host=coordinator_ip, api_port=API_PORT,
                                        ray_head_ip=coordinator_ip, ray_head_port=6380, ray_auth="token",
                                        ray_temp_dir=ray_tmp / "coordinator", workloads_dir=network_catalog(root),
                                        heartbeat_interval_s=1.0)
            base = {k: v for k, v in os.environ.items() if not k.startswith(("ARCHIPELAG_", "RAY_"))}
            coordinator_env = {**base, **settings.to_env()}
            coordinator = archipelag(net, "coordinator", ["up", "--hosts", "0"], coordinator_env)
            machines.append(coordinator)
            api = f"http://{coordinator_ip}:{API_PORT}"
            wait_up(coordinator, settings.state_dir)
            laptop = {**base, "API": api,
                      "ARCHIPELAG_API_KEY": (settings.state_dir / "api_key").read_text().strip()}
            for name, address in hosts.items():
                env = {**base, "ARCHIPELAG_STATE_DIR": str(root / name), "ARCHIPELAG_RAY_TEMP_DIR": str(ray_tmp / name),
                       "ARCHIPELAG_HEARTBEAT_INTERVAL_S": "1",  # its copy of the workloads: the test modules too
                       "ARCHIPELAG_WORKLOADS_DIR": str(settings.workloads_dir)}
                machines.append(archipelag(net, name, [
                    "host", "join", "--coordinator", api, "--region", "eu-west", "--name", name,
                    "--node-ip", address], env))
            yield {"net": net, "api": api, "laptop": laptop, "hosts": machines[1:], "coordinator": coordinator,
                   "ray_tmp": ray_tmp, "machines": machines, "settings": settings,
                   "coordinator_env": coordinator_env}
        finally:  # hosts first: a host whose coordinator is gone spends its whole grace trying to say goodbye
            for machine in sorted(machines, key=lambda m: m.name == "coordinator"):
                machine.stop(grace_s=30)
            shutil.rmtree(ray_tmp, ignore_errors=True)


def test_hosts_on_other_machines_enrol_over_the_lan_with_a_code_their_owner_approves(
        network: dict[str, Any]) -> None:
    net, laptop = network["net"], network["laptop"]
    for host in network["hosts"]:
        code = eventually(lambda h=host: h.said("pairing code") or h.process.poll() is not None, timeout_s=120)
        assert isinstance(code, str), "".join(host.lines)
        approved = net.run("laptop", [sys.executable, "-m", "archipelag", "hosts", "approve", code,
                                      "--url", laptop["API"]], env=laptop)
        assert approved.returncode == 0, approved.stdout + approved.stderr
    try:
        eventually(lambda: online(net, laptop) >= {"attic", "office"}, timeout_s=180, interval_s=1)
    except AssertionError:
        raise AssertionError(f"online: {online(net, laptop)}; the hosts said: "
                             + "\n".join("".join(h.lines) for h in network["hosts"])) from None
    for name in ("attic", "office"):  # each machine's Ray kept its sockets in its own folder (its node's, inside)
        assert any((network["ray_tmp"] / name).glob("h-*/session_*/sockets/raylet*")), name


def test_a_stream_survives_its_host_losing_its_link(network: dict[str, Any]) -> None:
    net, laptop = network["net"], network["laptop"]
    # The reader names the job's host as soon as the first tick arrives, in its own process: a lookup from a second
    # Python start-up took long enough on a busy machine for the job (~4 s of ticks) to end before the cut.
    script = textwrap.dedent("""
        import json, os
        from archipelag.sdk import Client
        with Client(os.environ["API"], api_key=os.environ["ARCHIPELAG_API_KEY"]) as client:
            job = client.create_job("test-ticks", {}, region="eu-west")
            print("job:", job.id, flush=True)
            named = False
            for event in client.stream(job.id):
                print("event:", json.dumps(event), flush=True)
                if event["type"] == "token" and not named:
                    host_id = client.get_job(job.id).host_id
                    print("host:", host_id, {h.id: h.name for h in client.hosts()}[host_id], flush=True)
                    named = True
    """)
    reader = Machine("laptop", net.popen("laptop", [sys.executable, "-c", script], stdout=subprocess.PIPE,
                                         stderr=subprocess.STDOUT, env=laptop, text=True))
    try:
        job_id = eventually(lambda: reader.said("job") or reader.process.poll() is not None, timeout_s=60)
        assert isinstance(job_id, str), reader.lines
        try:
            first, name = eventually(lambda: (reader.said("host") or "").split() or None, timeout_s=60,
                                     interval_s=0.05)
        except AssertionError:
            raise AssertionError(f"{laptop_api(net, laptop, 'GET', f'/api/v1/jobs/{job_id}')}: {reader.lines}"
                                 ) from None
        net.cut(name)
        network["cut"] = name
        assert reader.process.wait(timeout=120) == 0, reader.lines
    finally:
        if reader.process.poll() is None:
            reader.process.kill()
    events = [json.loads(line.split(":", 1)[1]) for line in reader.lines if line.startswith("event:")]
    assert [e["content"] for e in events if e["type"] == "token"] == ["tick "] * TICKS
    assert events[-1]["type"] == "done"
    job = laptop_api(net, laptop, "GET", f"/api/v1/jobs/{job_id}")["body"]["data"]
    assert job["status"] == "completed" and job["host_id"] != first, job


def test_a_rotated_token_lets_the_other_hosts_back_and_keeps_a_revoked_one_out(network: dict[str, Any]) -> None:
    net, laptop, settings = network["net"], network["laptop"], network["settings"]
    revoked = network["cut"]  # the host whose cable the last test pulled
    kept = next(h.name for h in network["hosts"] if h.name != revoked)
    ids = {h["name"]: h["id"] for h in laptop_api(net, laptop, "GET", "/api/v1/hosts")["body"]["data"]}
    assert laptop_api(net, laptop, "POST", f"/api/v1/hosts/{ids[revoked]}/revoke")["status"] == 200
    token = (settings.state_dir / "ray_auth_token").read_text()
    net.mend(revoked)  # back on the LAN: its node is still a member, its agent gone; only the token keeps it in

    network["coordinator"].stop(grace_s=60)
    head = f"{settings.ray_head_ip}:{settings.ray_head_port}"
    eventually(lambda: not ray_nodes_of(head), timeout_s=60)  # the hosts' nodes go with the head
    coordinator = archipelag(net, "coordinator", ["up", "--hosts", "0", "--rotate-token"],
                             network["coordinator_env"])
    network["machines"].append(coordinator)
    wait_up(coordinator, settings.state_dir)
    assert (settings.state_dir / "ray_auth_token").read_text() != token

    host = {h.name: h for h in network["hosts"]}
    try:
        eventually(lambda: kept in online(net, laptop), timeout_s=180, interval_s=1)
    except AssertionError:
        raise AssertionError("".join(host[kept].lines[-30:])) from None
    created = laptop_api(net, laptop, "POST", "/api/v1/jobs", {"workload": "wasm-hash", "input": {"text": "hi"}})
    assert created["status"] == 201, created
    job_id = created["body"]["data"]["id"]
    eventually(lambda: laptop_api(net, laptop, "GET", f"/api/v1/jobs/{job_id}")["body"]["data"]["status"]
               == "completed", timeout_s=120, interval_s=1)
    assert laptop_api(net, laptop, "GET", f"/api/v1/jobs/{job_id}")["body"]["data"]["host_id"] == ids[kept]

    assert host[revoked].process.wait(timeout=120) is not None  # it asked for the new token and was refused
    assert any("refuses it" in line for line in host[revoked].lines), "".join(host[revoked].lines[-30:])
    assert revoked not in online(net, laptop)
