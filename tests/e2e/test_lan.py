"""A network of several machines: the coordinator and two hosts on a LAN of network namespaces (tests/netns.py).

Everything goes over that LAN and nothing else, as it would between real machines: the coordinator (`archipelag
up --hosts 0`, its Ray head and API listening on its LAN address, Ray's token auth on), two strangers' machines
that enrol with `archipelag host join --coordinator http://…` and nothing carried by hand, and the owner's laptop,
which approves their pairing codes with `archipelag hosts approve` and streams a job. Mid-stream the cable of the
host running the job is pulled: the job carries on on the other host and the stream ends with every token once.
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
            coordinator = archipelag(net, "coordinator", ["up", "--hosts", "0"], {**base, **settings.to_env()})
            machines.append(coordinator)
            api = f"http://{coordinator_ip}:{API_PORT}"
            eventually(lambda: coordinator.process.poll() is not None or "Archipelag is up" in "".join(
                coordinator.lines), timeout_s=300, interval_s=0.5)
            assert coordinator.process.poll() is None, "".join(coordinator.lines)
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
                   "ray_tmp": ray_tmp}
        finally:
            for machine in reversed(machines):
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
    def online() -> set[str]:
        return {h["name"] for h in laptop_api(net, laptop, "GET", "/api/v1/hosts")["body"]["data"]
                if h["status"] == "online"}

    try:
        eventually(lambda: online() >= {"attic", "office"}, timeout_s=180, interval_s=1)
    except AssertionError:
        raise AssertionError(f"online: {online()}; the hosts said: "
                             + "\n".join("".join(h.lines) for h in network["hosts"])) from None
    for name in ("attic", "office"):  # each machine's Ray kept its sockets in its own folder
        assert any((network["ray_tmp"] / name).glob("session_*/sockets/raylet*")), name


def test_a_stream_survives_its_host_losing_its_link(network: dict[str, Any]) -> None:
    net, laptop = network["net"], network["laptop"]
    script = textwrap.dedent("""
        import json, os
        from archipelag.sdk import Client
        with Client(os.environ["API"], api_key=os.environ["ARCHIPELAG_API_KEY"]) as client:
            job = client.create_job("test-ticks", {}, region="eu-west")
            print("job:", job.id, flush=True)
            for event in client.stream(job.id):
                print("event:", json.dumps(event), flush=True)
    """)
    reader = Machine("laptop", net.popen("laptop", [sys.executable, "-c", script], stdout=subprocess.PIPE,
                                         stderr=subprocess.STDOUT, env=laptop, text=True))
    try:
        job_id = eventually(lambda: reader.said("job") or reader.process.poll() is not None, timeout_s=60)
        assert isinstance(job_id, str), reader.lines
        try:
            eventually(lambda: sum(line.startswith("event:") and "tick" in line for line in reader.lines) >= 5,
                       timeout_s=60)
        except AssertionError:
            raise AssertionError(f"{laptop_api(net, laptop, 'GET', f'/api/v1/jobs/{job_id}')}: {reader.lines}"
                                 ) from None
        first = laptop_api(net, laptop, "GET", f"/api/v1/jobs/{job_id}")["body"]["data"]["host_id"]
        names = {h["id"]: h["name"] for h in laptop_api(net, laptop, "GET", "/api/v1/hosts")["body"]["data"]}
        net.cut(names[first])
        assert reader.process.wait(timeout=120) == 0, reader.lines
    finally:
        if reader.process.poll() is None:
            reader.process.kill()
    events = [json.loads(line.split(":", 1)[1]) for line in reader.lines if line.startswith("event:")]
    assert [e["content"] for e in events if e["type"] == "token"] == ["tick "] * TICKS
    assert events[-1]["type"] == "done"
    job = laptop_api(net, laptop, "GET", f"/api/v1/jobs/{job_id}")["body"]["data"]
    assert job["status"] == "completed" and job["host_id"] != first, job
