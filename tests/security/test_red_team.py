"""The red team: attacks a joined node makes on a real network, each run as a Ray task on that node, and what came
of it. Prints a table (attack, outcome) and writes it to test-artifacts/security/red-team.md.

The attacker is what issue 11 calls "a real joined node": a Ray node started with the hosts' cluster's address
and credential, as `host join` starts one, that is not an enrolled host. Its code tries the coordinator's actors by
name (they run in another Ray cluster, the services', which no host joins) and reaches other hosts' nodes and the
hosts' head by node affinity, as Ray allows any member of a cluster. This test process is a driver of the
services' cluster; the attacks are sent to the hosts' cluster through a driver of its own (``hosts_cluster.py``).

Each attack has an expected outcome. ``prevented`` ones are the project's promises. ``possible`` ones are what Ray's
model still allows here (Ray has no authorisation between members of a cluster; README, "What a joined host can and
cannot do"): they are recorded so that the table and the README say the truth, and a change that closes one makes
its test fail until the expectation (and the README) is updated.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import ray
from builders import a_host
from catalog_builders import network_catalog
from docker_engine import engine_lease
from host_users import NAME as RAY_USER
from host_users import ray_user
from hosts_cluster import HostsDriver, Raised, hosts_driver
from netutil import api_client, eventually, network_settings
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from archipelag.catalog import load_catalog
from archipelag.ids import HostId, JobId, WorkloadSlug
from archipelag.network import EmbeddedNetwork, start_network
from archipelag.nodes import RayNodeProcess, host_resource, runtime_dir, start_host_node
from archipelag.placement.scoring import HostSnapshot
from archipelag.runtimes.base import JobSpec
from archipelag.sandbox import Limits
from archipelag.settings import REPO_ROOT

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.ray_driver]

# The attacks run on the attacker's node, whose workers cannot import this test module: send them by value.
ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])

ATTACKER = "mallory"
VICTIM = "island-1"
HUB_USER = "archipelag-hub"  # the account of the hosts' head and the bridge
ON_ATTACKER = {host_resource(ATTACKER): 0.001}
TABLE: list[tuple[str, str, str, str]] = []  # attack, expected, outcome, what happened


@pytest.fixture(scope="module")
def network() -> Iterator[EmbeddedNetwork]:
    """One host, lent the way the README tells a stranger to: `host join --ray-user`, its Ray node under an
    account of its own and its containers started by its gate on the machine's Docker engine. Its folder is one
    that account may enter (pytest's own are closed to others). The hosts' head and the bridge run as an account
    of their own too (``ARCHIPELAG_HOSTS_RAY_USER``), and every join needs the cluster's token."""
    with ray_user() as missing, ray_user(HUB_USER) as no_hub, engine_lease() as no_engine:
        if missing or no_hub or no_engine:
            pytest.skip(missing or no_hub or no_engine)
        root = Path(tempfile.mkdtemp(prefix="archipelag-red-team-"))
        root.chmod(0o755)
        settings = network_settings(root / "state", workloads_dir=network_catalog(root), host_slots=2,
                                    ray_auth="token", hosts_ray_user=HUB_USER)
        net = start_network(settings, hosts=0, regions=("eu-west",), named={VICTIM: ("--ray-user", RAY_USER)})
        try:
            yield net
        finally:
            net.stop()
            shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def attacker(network: EmbeddedNetwork) -> Iterator[RayNodeProcess]:
    """A joined node that is not an enrolled host: it holds the hosts' cluster's address and credential, nothing
    more."""
    global DRIVER
    node = start_host_node(network.coordinator.address, ATTACKER, "eu-west", 1,
                           network.settings.state_dir / "logs", node_ip="127.0.0.1", env=network.settings.ray_env())
    try:
        with hosts_driver(network) as DRIVER:
            eventually(lambda: any(host_resource(ATTACKER) in n["Resources"] for n in DRIVER.nodes()),
                       timeout_s=120)
            yield node
    finally:
        DRIVER = None
        node.stop()


@pytest.fixture(scope="module", autouse=True)
def table() -> Iterator[None]:
    yield
    width = max((len(row[0]) for row in TABLE), default=10)
    lines = [f"| {'attack':<{width}} | expected  | outcome   | what happened |", f"|{'-' * (width + 2)}|---|---|---|"]
    lines += [f"| {a:<{width}} | {e:<9} | {o:<9} | {w} |" for a, e, o, w in TABLE]
    report = "\n".join(lines)
    print("\n\nRed team (attacks from a joined node):\n" + report)
    out = REPO_ROOT / "test-artifacts" / "security"
    out.mkdir(parents=True, exist_ok=True)
    (out / "red-team.md").write_text(report + "\n")


DRIVER: HostsDriver | None = None  # the hosts' cluster's driver, while the attacker's node runs


def on_attacker(fn: Callable[..., Any], *args: Any) -> Any:
    """Run ``fn`` as a task on the attacker's node: what it returned, or what it raised (``Raised``)."""
    assert DRIVER is not None
    return DRIVER.call(fn, *args, num_cpus=0, resources=ON_ATTACKER, max_retries=0)


def no_such_actor(what: Any) -> bool:
    """Whether an attack failed because the hosts' cluster has no actor by the name it looked up."""
    return isinstance(what, Raised) and "Failed to look up actor" in what


NOT_HERE = "the hosts' cluster holds no such actor: the coordinator's services run in a Ray cluster of their own"


def in_depth(fn: Callable[..., Any], *args: Any) -> Any:
    """An attack on placement: from the joined node, which finds no placement actor to call; then, for placement's
    own checks (defence in depth), from a member of the services' cluster (this process): what that returned."""
    joined = on_attacker(fn, *args)
    assert no_such_actor(joined), joined
    return fn(*args)


def deep(what: str) -> str:
    return f"{NOT_HERE}; called from inside that cluster, {what}"


def record(attack: str, expected: str, outcome: str, what: str) -> None:
    TABLE.append((attack, expected, outcome, what.replace("|", "/")[:160]))
    assert outcome == expected, f"{attack}: {what}"


def host_id(network: EmbeddedNetwork) -> HostId:
    return network.hosts[0].host_id


# --- the attacks: each body runs on the attacker's node -----------------------------------------------------


def _mint(namespace: str, account_id: int) -> str:
    ledger = ray.get_actor("ledger", namespace=namespace)
    before = ray.get(ledger.balance_micro.remote(account_id))
    ray.get(ledger.grant_credits.remote(account_id, 10**12, "red team"))
    return f"balance {before} -> {ray.get(ledger.balance_micro.remote(account_id))} micro-credits"


def _api_key(namespace: str, account_id: int) -> str:
    ledger = ray.get_actor("ledger", namespace=namespace)
    _, key = ray.get(ledger.create_api_key.remote(account_id, "red team", ("keys", "read", "write")))
    return f"a key with every scope for account {account_id}: {key[:7]}…"


def _read_job(namespace: str, job_id: str) -> str:
    ledger = ray.get_actor("ledger", namespace=namespace)
    job = ray.get(ledger.get_job.remote(job_id))
    return f"read job {job_id} of account {job.account_id}: input {job.input}"


def _karma(namespace: str, victim: str) -> str:
    from archipelag.ledger.karma_rules import KarmaKind

    ledger = ray.get_actor("ledger", namespace=namespace)
    ray.get(ledger.record_karma.remote(victim, KarmaKind.ADJUSTMENT, adjustment=100.0, reason="red team"))
    return f"karma score of {victim} now {ray.get(ledger.karma_score.remote(victim)):.2f}"


def _fake_host(namespace: str, fake: HostSnapshot) -> str:
    from archipelag.errors import HostRefused

    placement = ray.get_actor("placement", namespace=namespace)
    try:
        ray.get(placement.register.remote(fake))
    except HostRefused as exc:
        return f"refused: {exc.message}"
    except ray.exceptions.RayTaskError as exc:
        return f"refused: {exc.cause}" if isinstance(exc.cause, HostRefused) else f"error: {exc}"
    return "registered a host with 64 cores and karma 1.0"


def _pause_other(namespace: str, victim: str) -> str:
    from archipelag.errors import HostRefused
    from archipelag.lifecycle import HostStatus

    placement = ray.get_actor("placement", namespace=namespace)
    try:
        ray.get(placement.set_status.remote(HostId(victim), HostStatus.PAUSED))
    except HostRefused as exc:
        return f"refused: {exc.message}"
    except ray.exceptions.RayTaskError as exc:
        return f"refused: {exc.cause}" if isinstance(exc.cause, HostRefused) else f"error: {exc}"
    status = next(h.status for h in ray.get(placement.hosts.remote()) if h.host_id == victim)
    return f"placement showed {victim} as {status}"


def _mark_offline(namespace: str, victim: str, seconds: float) -> list[tuple[float, str]]:
    """Report the victim lost in a loop for ``seconds``, reading placement after each report: (when, status)."""
    placement = ray.get_actor("placement", namespace=namespace)
    seen = []
    started = time.monotonic()
    while time.monotonic() - started < seconds:
        ray.get(placement.mark_offline.remote(HostId(victim), "red team"))
        status = next(h.status for h in ray.get(placement.hosts.remote()) if h.host_id == victim)
        seen.append((time.monotonic() - started, str(status)))
    return seen


def _suspend_other(namespace: str, victim: str) -> str:
    from archipelag.errors import HostRefused

    placement = ray.get_actor("placement", namespace=namespace)
    try:
        ray.get(placement.suspend.remote(HostId(victim), "red team"))
    except ray.exceptions.RayTaskError as exc:
        return f"refused: {exc.cause}" if isinstance(exc.cause, HostRefused) else f"error: {exc}"
    return f"placement holds {victim} suspended: {ray.get(placement.suspensions.remote()).get(victim)}"


def _forget_other(namespace: str, victim: str) -> str:
    from archipelag.errors import HostRefused

    placement = ray.get_actor("placement", namespace=namespace)
    try:
        ray.get(placement.forget.remote(HostId(victim)))
    except ray.exceptions.RayTaskError as exc:
        return f"refused: {exc.cause}" if isinstance(exc.cause, HostRefused) else f"error: {exc}"
    return f"placement dropped {victim} as if it were revoked ({ray.get(placement.ping.remote())} hosts left)"


def _victim_in_placement(placement: Any, victim: str) -> HostSnapshot:
    seen: HostSnapshot = next(h for h in ray.get(placement.hosts.remote()) if h.host_id == victim)
    return seen


def _set_karma(namespace: str, victim: str) -> tuple[str, float, float, str]:
    """Try to hand placement a karma (0: to suspend the victim), then ask it to read karma again, which any node
    may: (what the attempt did, placement's karma for the victim, the ledger's, its status in placement)."""
    placement = ray.get_actor("placement", namespace=namespace)
    try:
        ray.get(placement.set_karma.remote(HostId(victim), 0.0, 0.0, "red team"))
        tried = "set_karma was taken"
    except AttributeError:
        tried = "placement has no call that takes a karma"
    ray.get(placement.refresh_karma.remote([HostId(victim)]))
    seen = _victim_in_placement(placement, victim)
    ledger = ray.get_actor("ledger", namespace=namespace)
    return tried, seen.karma, ray.get(ledger.karma_score.remote(victim)), str(seen.status)


def _set_asks(namespace: str, victim: str) -> tuple[str, dict[str, int], dict[str, int]]:
    """Try to set the victim's asks in placement (a thousandfold), then ask placement to apply the asks again,
    which any node may: (what the attempt did, placement's asks for the victim, the ledger's)."""
    placement = ray.get_actor("placement", namespace=namespace)
    try:
        ray.get(placement.set_asks.remote(HostId(victim), {"*": 10**9}))
        tried = "set_asks was taken"
    except AttributeError:
        tried = "placement has no call that takes asks"
    ray.get(placement.refresh_asks.remote(HostId(victim)))
    ledger = ray.get_actor("ledger", namespace=namespace)
    held = ray.get(ledger.asking_prices.remote(victim)).get(victim, {})
    return tried, dict(_victim_in_placement(placement, victim).asks), dict(held)


def _invent_load(namespace: str, victim: str, jobs: int, seconds: float) -> list[tuple[float, int]]:
    """Tell placement the victim was handed ``jobs`` jobs nobody gave it, then read its load until it is back
    under that or ``seconds`` pass: (when, jobs placement counts on it)."""
    placement = ray.get_actor("placement", namespace=namespace)
    for _ in range(jobs):
        ray.get(placement.job_assigned.remote(HostId(victim)))
    seen = []
    started = time.monotonic()
    while time.monotonic() - started < seconds:
        seen.append((time.monotonic() - started, _victim_in_placement(placement, victim).active_jobs))
        if seen[-1][1] < jobs:
            break
        time.sleep(0.05)
    return seen


def _lift_limits(namespace: str, victim: str, spec: Any) -> str:
    agent = ray.get_actor(f"host-agent:{victim}", namespace=namespace)
    started = time.monotonic()
    events: list[dict[str, Any]] = []
    stream = agent.run.remote(spec)
    for ref in stream:
        events.extend(ray.get(ref))
        if time.monotonic() - started > 20:
            ray.get(agent.cancel.remote(spec.job_id, "red team: enough"))
            return f"still running after 20 s with the limits it asked for ({spec.limits.timeout_s:.0f} s)"
    last = events[-1] if events else {}
    return f"stopped after {time.monotonic() - started:.1f} s: {last.get('code') or last.get('type')}"


def _on_victim_node(node_id: str, fn: Callable[..., Any], *args: Any) -> Any:
    task = ray.remote(fn).options(num_cpus=0, max_retries=0,
                                  scheduling_strategy=NodeAffinitySchedulingStrategy(node_id=node_id, soft=False))
    return ray.get(task.remote(*args), timeout=60)


def _steal_key(node_id: str, key_path: str) -> str:
    def read(path: str) -> str:
        try:
            return f"read {len(Path(path).read_bytes())} bytes of {path} on its node (uid {os.getuid()})"
        except OSError as exc:
            return f"refused: {exc.strerror} (uid {os.getuid()}): the host's gate holds it"

    return str(_on_victim_node(node_id, read, key_path))


def _have_the_gate_sign(node_id: str, socket_path: str, purpose: str) -> str:
    def ask(socket_path: str, purpose: str) -> str:
        import json
        import socket

        from archipelag.gate import wire

        with socket.socket(socket.AF_UNIX) as sock:
            sock.connect(socket_path)
            sock.sendall(wire.sign_request(purpose, "ab" * 32))
            answer = json.loads(sock.makefile().readline())
        if answer.get("gate") == "signed":
            return f"signed {purpose} as {answer.get('host_id')} at {answer.get('at')} (uid {os.getuid()})"
        return f"refused: {answer.get('code')}: {str(answer.get('message'))[:90]}"

    return str(_on_victim_node(node_id, ask, socket_path, purpose))


def _gate(node_id: str, socket_path: str, spec: Any, forge: bool) -> str:
    """Ask the host's gate (whose socket the node's account may use, as its agent does) to start a container."""

    def ask(socket_path: str, spec: Any, forge: bool) -> str:
        from dataclasses import replace

        from archipelag import identity
        from archipelag.errors import ArchipelagError
        from archipelag.gate import tickets
        from archipelag.gate.client import GatedRuntime
        from archipelag.runtimes.base import CancelToken

        if forge:  # the attacker's own key, as a coordinator would sign
            spec = replace(spec, ticket=tickets.issue(identity.generate_key(), spec, HostId(VICTIM), time.time()))
        try:
            events = list(GatedRuntime(Path(socket_path)).run(spec, CancelToken()))
        except ArchipelagError as exc:
            return f"refused: {exc.code}: {exc.message[:90]}"
        last = events[-1] if events else {}
        if last.get("type") == "error":
            return f"refused: {last.get('code')}: {str(last.get('error'))[:90]}"
        return f"started: {len(events)} events, the last {last.get('type')}"

    return str(_on_victim_node(node_id, ask, socket_path, spec, forge))


def _read_private(node_id: str, path: str) -> str:
    def read(path: str) -> str:
        try:
            return f"read {len(Path(path).read_bytes())} bytes of {path} (uid {os.getuid()})"
        except OSError as exc:
            return f"refused: {exc.strerror} (uid {os.getuid()})"

    return str(_on_victim_node(node_id, read, path))


def _become_root(node_id: str) -> str:
    def escalate() -> str:
        import subprocess

        tries = []
        for attempt in (lambda: os.setuid(0), lambda: os.setgid(0), lambda: os.setgroups([0])):
            try:
                attempt()
                tries.append("allowed")
            except OSError as exc:
                tries.append(exc.strerror or str(exc))
        sudo = subprocess.run(["sudo", "-n", "true"], capture_output=True, check=False).returncode \
            if Path("/usr/bin/sudo").exists() else "no sudo"
        return (f"uid {os.getuid()} euid {os.geteuid()} groups {os.getgroups()}; setuid/setgid/setgroups: "
                f"{', '.join(tries)}; sudo -n: {sudo}")

    return str(_on_victim_node(node_id, escalate))


class _RunOnUnpickle:
    """A value whose unpickling runs a shell command: what a process that unpickles it, runs."""

    def __init__(self, command: str) -> None:
        self.command = command

    def __reduce__(self) -> tuple[Any, ...]:
        return (os.system, (self.command,))


def _hand_root_a_pickle(namespace: str, victim: str, command: str) -> str:
    """Take over the host's agent (any member may run a closure inside any actor: ``__ray_call__``) and have its
    next answer to the `host join` process that started it, which polls it twice a second, be a pickle that runs
    ``command`` wherever it is unpickled."""

    def plant(instance: Any, command: str) -> str:
        logic = instance._agent
        original = logic.view

        def view() -> Any:
            logic.view = original  # once: the host goes on working for the attacks after this one
            return _RunOnUnpickle(command)

        logic.view = view
        return f"planted in pid {os.getpid()} (uid {os.getuid()})"

    agent = ray.get_actor(f"host-agent:{victim}", namespace=namespace)
    return str(ray.get(agent.__ray_call__.remote(plant, command), timeout=30))


def _answer_a_run_with_a_pickle(namespace: str, victim: str, command: str) -> str:
    """Take over the host's agent and make the first batch of the next job it runs a pickle that runs ``command``
    wherever it is unpickled: the coordinator's process that reads the host's answers."""

    def plant(instance: Any, command: str) -> str:
        logic = instance._agent
        original = logic.run_batched

        def run_batched(spec: Any, keepalive_s: float) -> Any:
            logic.run_batched = original  # once: the job's retry, and the attacks after this one, run as usual
            yield [_RunOnUnpickle(command)]

        logic.run_batched = run_batched
        return f"planted in pid {os.getpid()} (uid {os.getuid()})"

    agent = ray.get_actor(f"host-agent:{victim}", namespace=namespace)
    return str(ray.get(agent.__ray_call__.remote(plant, command), timeout=30))


def _swap_the_nodes_folder(node_id: str, target: str) -> str:
    """Put a link to ``target`` where the node's own folder was (the node's account owns that folder's entry in
    /tmp), then stop the node's `ray start` (the node's account's own process): `host join` (root) joins again and
    prepares the folder anew."""

    def swap(target: str) -> str:
        import shlex
        import subprocess

        home = Path(os.environ["HOME"])  # the node's folder: its temp dir, also its home
        for proc in Path("/proc").iterdir():
            try:
                args = (proc / "cmdline").read_bytes().split(b"\0")
                if proc.stat().st_uid == os.getuid() and b"--block" in args \
                        and f"--temp-dir={home}".encode() in args:
                    break
            except (OSError, ValueError):
                continue
        else:
            return f"found no ray start of {home} to stop"
        # From a process of its own: this task's worker keeps its log in that folder, and the node goes with it.
        moved, link = shlex.quote(f"{home}-moved"), shlex.quote(str(home))
        script = f"sleep 0.5; mv {link} {moved} && ln -s {shlex.quote(target)} {link} && kill -9 {proc.name}"
        subprocess.Popen(["sh", "-c", script], start_new_session=True)
        return f"linked {home} -> {target}, stopped its ray start (pid {proc.name})"

    return str(_on_victim_node(node_id, swap, target))


def _change_a_container_jobs_output(namespace: str, victim: str) -> str:
    """Take over the host's agent and change the output of the next container job it relays, asking the host's
    gate (as the agent may) to sign a receipt for the changed output; keep the gate's own receipt if it will not."""

    def plant(instance: Any) -> str:
        from archipelag import receipts

        runtime = instance._agent._runtimes["container"]
        original = runtime.run

        def run(spec: Any, cancel: Any) -> Any:
            runtime.run = original  # once
            sent: list[dict[str, Any]] = []
            for event in original(spec, cancel):
                if event.get("type") == "done" and isinstance(event.get("output"), dict):
                    event = {**event, "output": {**event["output"], "words": 999}}
                    with contextlib.suppress(Exception):  # refused: the gate's receipt stays
                        event["receipt"] = receipts.sign(instance._sign, spec.job_id, spec.attempt, [*sent, event])
                sent.append(event)
                yield event

        runtime.run = run
        return f"planted in pid {os.getpid()} (uid {os.getuid()})"

    agent = ray.get_actor(f"host-agent:{victim}", namespace=namespace)
    return str(ray.get(agent.__ray_call__.remote(plant), timeout=30))


def _docker(node_id: str) -> str:
    def reach() -> str:
        import socket

        path = "/var/run/docker.sock"
        if not os.path.exists(path):
            return "no Docker engine socket on this node"
        try:
            with socket.socket(socket.AF_UNIX) as sock:
                sock.connect(path)
                sock.sendall(b"GET /version HTTP/1.0\r\n\r\n")
                status_line = sock.recv(200).split(b"\r\n")[0].decode()
        except OSError as exc:
            return f"refused: {exc} (uid {os.getuid()})"
        return f"connected to {path}: {status_line}"

    return str(_on_victim_node(node_id, reach))


def _read_the_coordinators_state(head_node: str, state_dir: str, runtime_dir: str) -> str:
    def read(state_dir: str, runtime_dir: str) -> str:
        got, refused = [], []
        for name in ("archipelag.db", "archipelag.db-wal", "services_ray_token", "ray_auth_token", "api_key",
                     "catalog_signing.key", "coordinator/ticket.key", f"keys/{VICTIM}.key", "logs/bridge.log",
                     "logs/head.log"):
            try:
                with open(os.path.join(state_dir, name), "rb") as file:
                    file.read(1)
                got.append(name)
            except OSError as exc:
                refused.append(f"{name}: {exc.strerror}")
        for folder in (state_dir, os.path.join(runtime_dir, "services")):
            try:
                os.listdir(folder)
                got.append(f"the list of {folder}")
            except OSError as exc:
                refused.append(f"{folder}: {exc.strerror}")
        return f"as uid {os.getuid()}: read {', '.join(got) or 'nothing'}; refused {len(refused)} ({refused[0]}, …)"

    return str(_on_victim_node(head_node, read, state_dir, runtime_dir))


def _join_the_services_cluster(address: str, token: str) -> str:
    import subprocess
    import tempfile

    with tempfile.NamedTemporaryFile("w", suffix=".token") as held:
        held.write(token)
        held.flush()
        env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": held.name}
        try:
            tried = subprocess.run(
                [sys.executable, "-c", ("import ray, sys; from archipelag.nodes import keep_loopback_node_addresses; "
                                        "keep_loopback_node_addresses(); ray.init(address=sys.argv[1]); "
                                        "print('joined', len(ray.nodes()), 'nodes', ray.util.list_named_actors(True))"),
                 address],
                env=env, capture_output=True, text=True, timeout=90, check=False)
        except subprocess.TimeoutExpired:
            return "refused: no answer within 90 s"
    if tried.returncode == 0 and "joined" in tried.stdout:
        return tried.stdout.strip()
    said = [line for line in tried.stderr.splitlines() if line.strip()]
    why = [line for line in said if "auth" in line.lower()] or said[-1:] or ["(nothing said)"]
    return f"refused (exit {tried.returncode}): {why[0][:200]}"


# --- the tests ---------------------------------------------------------------------------------------------


def test_a_joined_node_cannot_register_a_fake_host(network: EmbeddedNetwork, attacker: RayNodeProcess) -> None:
    fake = replace(a_host("h-invented", karma=1.0, last_heartbeat_at=time.time()), cpu_cores=64, ram_mb=10**6,
                   slots=64)
    what = in_depth(_fake_host, network.settings.ray_namespace, fake)
    record("register a fake host with invented hardware and karma", "prevented",
           "prevented" if what.startswith("refused") else "possible", deep(what))


def test_a_joined_node_cannot_mint_credits_through_the_ledger_actor(network: EmbeddedNetwork,
                                                                    attacker: RayNodeProcess) -> None:
    with api_client(network) as http:
        account = http.get("/api/v1/account").json()["data"]["id"]
        before = http.get("/api/v1/account").json()["data"]["credits"]
        what = on_attacker(_mint, network.settings.ray_namespace, account)
        after = http.get("/api/v1/account").json()["data"]["credits"]
    record("mint credits by calling the ledger actor", "prevented",
           "prevented" if no_such_actor(what) and after == before else "possible", f"{NOT_HERE} ({what})")


def test_a_joined_node_cannot_make_api_keys_for_any_account(network: EmbeddedNetwork,
                                                            attacker: RayNodeProcess) -> None:
    with api_client(network) as http:
        account = http.get("/api/v1/account").json()["data"]["id"]
    what = on_attacker(_api_key, network.settings.ray_namespace, account)
    record("make an API key for another account", "prevented", "prevented" if no_such_actor(what) else "possible",
           f"{NOT_HERE} ({what})")


def test_a_joined_node_cannot_read_other_users_jobs_through_the_ledger(network: EmbeddedNetwork,
                                                                       attacker: RayNodeProcess) -> None:
    with api_client(network) as http:
        created = http.post("/api/v1/jobs", json={"workload": "wasm-hash", "input": {"text": "a private note"}})
        assert created.status_code == 201, created.text
    what = on_attacker(_read_job, network.settings.ray_namespace, created.json()["data"]["id"])
    record("read another user's job input and output through the ledger", "prevented",
           "possible" if "a private note" in what else "prevented", f"{NOT_HERE} ({what})")


def test_a_joined_node_cannot_grant_karma(network: EmbeddedNetwork, attacker: RayNodeProcess) -> None:
    what = on_attacker(_karma, network.settings.ray_namespace, host_id(network))
    record("give a host karma it did not earn", "prevented", "prevented" if no_such_actor(what) else "possible",
           f"{NOT_HERE} ({what})")


def test_a_joined_node_cannot_pause_another_host_in_placement(network: EmbeddedNetwork,
                                                              attacker: RayNodeProcess) -> None:
    what = in_depth(_pause_other, network.settings.ray_namespace, host_id(network))
    record("pause or drain another host through placement", "prevented",
           "prevented" if what.startswith("refused") else "possible", deep(what))


def run_job(network: EmbeddedNetwork, text: str) -> dict[str, Any]:
    with api_client(network) as http:
        created = http.post("/api/v1/jobs", json={"workload": "wasm-hash", "input": {"text": text}})
        assert created.status_code == 201, created.text
        job_id = created.json()["data"]["id"]
        eventually(lambda: http.get(f"/api/v1/jobs/{job_id}").json()["data"]["status"] in {"completed", "failed"},
                   timeout_s=60)
        job: dict[str, Any] = http.get(f"/api/v1/jobs/{job_id}").json()["data"]
    return job


def test_a_joined_node_cannot_take_another_host_out_of_placement(network: EmbeddedNetwork,
                                                                 attacker: RayNodeProcess) -> None:
    """Reporting a host lost, as the dispatcher does when its agent dies: placement asks the host, whose signed
    heartbeat puts it back within a round trip, and doubts the next reports (placement/suspects.py)."""
    seen = in_depth(_mark_offline, network.settings.ray_namespace, host_id(network), 3.0)
    back = next((i for i, (_, status) in enumerate(seen) if status == "online"), len(seen))
    out_s = seen[back][0] if back < len(seen) else float("inf")
    offline_later = sum(status != "online" for _, status in seen[back:])
    what = (f"{len(seen)} reports in 3 s, each read back: out {out_s:.2f} s after the first (the host's answer), "
            f"then out in {offline_later} reads")
    held = out_s > 2.0 or offline_later > 0
    record("take another host out of placement (report it lost)", "prevented", "possible" if held else "prevented",
           deep(what))
    job = run_job(network, "still here")  # the victim is the only host: it still gets the job
    assert job["status"] == "completed", job["error"]


def test_a_joined_node_cannot_suspend_or_forget_another_host_in_placement(network: EmbeddedNetwork,
                                                                         attacker: RayNodeProcess) -> None:
    """An operator's suspension and an owner's revocation are the ledger's word, which placement checks."""
    suspended = in_depth(_suspend_other, network.settings.ray_namespace, host_id(network))
    record("suspend another host in placement", "prevented",
           "prevented" if suspended.startswith("refused") else "possible", deep(suspended))
    forgotten = in_depth(_forget_other, network.settings.ray_namespace, host_id(network))
    record("drop another host from placement as if revoked", "prevented",
           "prevented" if forgotten.startswith("refused") else "possible", deep(forgotten))
    with api_client(network) as http:
        assert any(h["id"] == host_id(network) and h["status"] == "online"
                   for h in http.get("/api/v1/hosts").json()["data"])


def test_a_joined_node_cannot_make_placement_rank_by_invented_karma(network: EmbeddedNetwork,
                                                                   attacker: RayNodeProcess) -> None:
    """Karma is the ledger's word, which placement reads itself; a caller may only ask it to read again."""
    tried, karma, ledger_score, status = in_depth(_set_karma, network.settings.ray_namespace, host_id(network))
    what = (f"{tried}; after a refresh it asked for, placement ranks the host by karma {karma:.2f}, the ledger's "
            f"{ledger_score:.2f}, and shows it {status}")
    believed = tried.endswith("taken") or abs(karma - ledger_score) > 1e-3 or status != "online"
    record("set another host's karma in placement (to suspend it)", "prevented",
           "possible" if believed else "prevented", deep(what))


def test_a_joined_node_cannot_set_another_hosts_asks(network: EmbeddedNetwork, attacker: RayNodeProcess) -> None:
    """Asks reach placement only from the ledger (an owner's, stored first; a host's signed registration's), and
    nothing stores to the ledger what placement holds: after fleet rounds the ledger still holds the owner's."""
    victim = host_id(network)
    tried, in_placement, in_ledger = in_depth(_set_asks, network.settings.ray_namespace, victim)
    time.sleep(3 * network.settings.heartbeat_interval_s)  # fleet rounds, which once stored placement's asks
    with api_client(network) as http:
        stored = http.get("/api/v1/market/asking-prices", params={"host_id": victim}).json()["data"]
    what = f"{tried}; placement's asks for the host {in_placement or 'the catalog'}, the ledger's {in_ledger or 'none'}"
    forged = (tried.endswith("taken") or in_placement != in_ledger
              or max(stored[0]["prices"].values(), default=0) >= 1000)  # the forged ask: 10**9 micro-credits
    record("set another host's asking prices in placement", "prevented", "possible" if forged else "prevented",
           deep(what))


def test_a_joined_node_cannot_make_another_host_look_full_for_good(network: EmbeddedNetwork,
                                                                   attacker: RayNodeProcess) -> None:
    """Jobs a node says placement handed a host count only until the host's signed heartbeats bound them
    (Fleet.heartbeat): the invented load is gone by the host's second heartbeat, and the host runs a job again."""
    slots, interval_s = network.settings.host_slots, network.settings.heartbeat_interval_s
    seen = in_depth(_invent_load, network.settings.ray_namespace, host_id(network), 5 * slots, 20 * interval_s)
    full_at_first = seen[0][1] >= slots
    gone_s = seen[-1][0] if seen[-1][1] < 5 * slots else float("inf")
    assert full_at_first  # placement believes the dispatcher's word: only members of the services' cluster have it
    record("make another host look full by inventing jobs handed to it (once, or repeated)", "prevented",
           "prevented", deep(f"{5 * slots} invented jobs: placement counted {seen[0][1]} on it, full while they last"))
    record("make another host look full for good with invented jobs", "prevented",
           "prevented" if gone_s <= 10 * interval_s else "possible",
           deep(f"the invented jobs were gone {gone_s:.2f} s later (its heartbeats every {interval_s:g} s)"))
    job = run_job(network, "not full")
    assert job["status"] == "completed", job["error"]


def victim_node(network: EmbeddedNetwork) -> str:
    record_file = network.settings.state_dir / "hosts" / f"{host_id(network)}.json"
    import json

    return str(json.loads(record_file.read_text())["node_id"])


def test_a_joined_node_cannot_read_a_hosts_key_on_its_node(network: EmbeddedNetwork,
                                                          attacker: RayNodeProcess) -> None:
    from archipelag import identity

    key_path = identity.named_key_path(network.settings.state_dir, host_id(network))
    what = on_attacker(_steal_key, victim_node(network), str(key_path))
    record("read a host's signing key from a task on its node", "prevented",
           "possible" if what.startswith("read") else "prevented", what)


@pytest.mark.parametrize(("purpose", "expected"), [("heartbeat", "possible"), ("poll", "prevented")],
                         ids=["a report", "the poll for the cluster's credentials"])
def test_what_a_joined_node_can_have_a_hosts_gate_sign(network: EmbeddedNetwork, attacker: RayNodeProcess,
                                                      purpose: str, expected: str) -> None:
    """The gate signs for whoever runs as the node's account: so does a task of another member on that node. It
    signs only what an agent signs, never the poll that fetches the cluster's credentials, so the host's word
    cannot be had once the node is off the cluster (a rotated token)."""
    from archipelag.gate.server import socket_path

    what = on_attacker(_have_the_gate_sign, victim_node(network),
                       str(socket_path(network.settings, host_id(network))), purpose)
    attack = ("have a host's gate sign a report as the host, from a task on its node" if purpose != "poll" else
              "have a host's gate sign the poll that fetches the cluster's credentials (to outlast a rotated token)")
    record(attack, expected, "possible" if what.startswith("signed") else "prevented", what)


def test_a_joined_node_cannot_reach_the_docker_engine_of_a_host(network: EmbeddedNetwork,
                                                                attacker: RayNodeProcess) -> None:
    with engine_lease() as missing:  # the host's engine, as a lent machine running containers has one
        if missing:
            pytest.skip(missing)
        what = on_attacker(_docker, victim_node(network))
    record("reach a host's Docker engine from a task on its node", "prevented",
           "possible" if what.startswith("connected") else "prevented", what)


def a_text_stats_job(network: EmbeddedNetwork) -> dict[str, Any]:
    """A user's text-stats job (a container workload) on the network, once it has ended."""
    with api_client(network) as http:
        created = http.post("/api/v1/jobs", json={"workload": "text-stats", "input": {"text": "one two two"}})
        assert created.status_code == 201, created.text
        job_id = created.json()["data"]["id"]
        eventually(lambda: http.get(f"/api/v1/jobs/{job_id}").json()["data"]["status"] in {"completed", "failed"},
                   timeout_s=120)
        job: dict[str, Any] = http.get(f"/api/v1/jobs/{job_id}").json()["data"]
    return job


def test_a_container_job_runs_through_the_hosts_gate(network: EmbeddedNetwork) -> None:
    """The gate is the host's only way to its engine: a job of a container workload still runs, with the ticket
    the coordinator signed for it."""
    job = a_text_stats_job(network)
    assert job["status"] == "completed", job["error"]
    assert '"words": 3' in job["output"]


def test_a_joined_node_cannot_change_a_container_jobs_output_on_another_host(network: EmbeddedNetwork,
                                                                             attacker: RayNodeProcess) -> None:
    """The gate signs each container job's receipt over what it sent, and no other for that job: output changed
    after it fails the coordinator's check (the user pays nothing), and the user's own check would catch it."""
    planted = on_attacker(_change_a_container_jobs_output, network.settings.ray_namespace, host_id(network))
    job = a_text_stats_job(network)
    changed = job["status"] == "completed" and '"words": 999' in (job["output"] or "")
    what = f"{planted}; the job {job['status']}" + (f": {job['error']}" if job.get("error") else "") + \
        (f", output {job['output'][:60]}" if job.get("output") else "")
    record("change the output of a container job on another host (take over its agent, have the gate sign anew)",
           "prevented", "possible" if changed else "prevented", what)


@pytest.mark.parametrize("forge", [False, True], ids=["without a ticket", "with a forged ticket"])
def test_a_joined_node_cannot_start_a_container_through_a_hosts_gate(network: EmbeddedNetwork,
                                                                   attacker: RayNodeProcess, forge: bool) -> None:
    from archipelag.gate.server import socket_path

    text_stats = load_catalog(network.settings.workloads_dir)[WorkloadSlug("text-stats")]
    spec = JobSpec(JobId(f"red-team-{uuid.uuid4().hex[:8]}"), text_stats, {"text": "mine now"},
                   text_stats.limits_under(network.settings.limits_for(text_stats.tier)))
    what = on_attacker(_gate, victim_node(network), str(socket_path(network.settings, host_id(network))), spec,
                       forge)
    record(f"start a container through a host's gate {'with a forged' if forge else 'without a'} ticket",
           "prevented", "prevented" if what.startswith("refused") else "possible", what)


def test_a_joined_node_cannot_read_the_owners_files_on_a_host(network: EmbeddedNetwork,
                                                              attacker: RayNodeProcess) -> None:
    secret = network.settings.state_dir.parent / "owner-secret"  # the owner's, beside the host's state folder
    secret.write_text("the owner's private notes")
    secret.chmod(0o600)
    what = on_attacker(_read_private, victim_node(network), str(secret))
    record("read the owner's files on a host from a task on its node", "prevented",
           "possible" if what.startswith("read") else "prevented", what)


def test_a_joined_node_cannot_become_root_on_a_host(network: EmbeddedNetwork, attacker: RayNodeProcess) -> None:
    what = on_attacker(_become_root, victim_node(network))
    rooted = "uid 0 " in what or "euid 0 " in what or "allowed" in what or "sudo -n: 0" in what
    record("become root on a host from a task on its node", "prevented", "possible" if rooted else "prevented",
           what)


def test_a_joined_node_cannot_lift_a_workloads_limits_by_calling_a_host(network: EmbeddedNetwork,
                                                                        attacker: RayNodeProcess) -> None:
    slow = load_catalog(network.settings.workloads_dir)[WorkloadSlug("test-slow-loop")]  # its tier: 2 s
    greedy = Limits(memory_mb=4096, timeout_s=10**6, network=True, gpu=False, fuel=10**18, output_bytes=10**9,
                    line_bytes=10**6)
    spec = JobSpec(JobId(f"red-team-{uuid.uuid4().hex[:8]}"), slow, {}, greedy)
    what = on_attacker(_lift_limits, network.settings.ray_namespace, host_id(network), spec)
    record("hand a host a job with limits beyond its signed tier", "prevented",
           "prevented" if what.startswith("stopped") else "possible", what)


def test_what_reads_a_hosts_answers_is_the_bridge_alone(network: EmbeddedNetwork, attacker: RayNodeProcess) -> None:
    """The coordinator's services read hosts only through the bridge's JSON (archipelag/bridge/): a pickle a taken-
    over agent answers with runs in the bridge, never in the jobs service that holds the job's books."""
    drop = Path(tempfile.mkdtemp(prefix="archipelag-red-team-drop-"))
    drop.chmod(0o1777)
    marker = drop / "ran-in"
    try:
        planted = on_attacker(_answer_a_run_with_a_pickle, network.settings.ray_namespace, host_id(network),
                              f"echo $PPID $(id -u) > {marker}")
        with api_client(network) as http:
            created = http.post("/api/v1/jobs", json={"workload": "wasm-hash", "input": {"text": "a pickle"}})
            assert created.status_code == 201, created.text
            job_id = created.json()["data"]["id"]
            eventually(marker.exists, timeout_s=30)
            http.delete(f"/api/v1/jobs/{job_id}")  # its host was lost to it: it would wait for another one
        pid, uid = marker.read_text().split()
        bridge = network.coordinator.bridge
        assert bridge is not None
        where = "the bridge" if pid == str(bridge.pid) else "a process that is not the bridge"
        hub = pwd.getpwnam(HUB_USER).pw_uid
        record("make the jobs service run its code: a taken-over host's agent answers a job with a pickle",
               "prevented", "prevented" if where == "the bridge" and uid == str(hub) else "possible",
               f"{planted}; the payload ran in {where} (pid {pid}) as uid {uid}, the hosts' head's account, which "
               "holds no account, key or credit and cannot read the coordinator's state; the job lost its host")
        record("read or change the jobs another host runs: run code inside its agent (`__ray_call__`)", "possible",
               "prevented" if isinstance(planted, Raised) else "possible",
               f"{planted}: code of the attacker's now answers that host's jobs")
        record("read or change the jobs that pass through the bridge (every host's): take it over with a pickled "
               "answer", "possible", "possible" if where == "the bridge" else "prevented",
               f"the payload ran in the bridge (pid {pid}), which carries every job's input and output to and from "
               "its host")
    finally:
        shutil.rmtree(drop, ignore_errors=True)


def test_code_on_the_hosts_head_cannot_read_the_coordinators_state(network: EmbeddedNetwork,
                                                                  attacker: RayNodeProcess) -> None:
    """Any member may run a task on the hosts' head: it runs as the hosts' head's account, on the coordinator's
    machine, beside the coordinator's state (ledger, tokens, keys, logs)."""
    assert DRIVER is not None
    head = next(n["NodeID"] for n in DRIVER.nodes() if "node:__internal_head__" in n["Resources"])
    what = on_attacker(_read_the_coordinators_state, head, str(network.settings.state_dir),
                       str(runtime_dir(network.settings.state_dir)))
    record("read the coordinator's database, tokens, keys or logs from a task on the hosts' head", "prevented",
           "prevented" if "read nothing" in what else "possible", what)


def test_a_joined_node_cannot_join_the_services_cluster(network: EmbeddedNetwork, attacker: RayNodeProcess) -> None:
    """The services' cluster listens on the coordinator's loopback only, and takes the services' token, which no
    host is given. Told its address, a joined node tries the token it holds."""
    token = Path(network.settings.ray_env()["RAY_AUTH_TOKEN_PATH"]).read_text()
    what = on_attacker(_join_the_services_cluster, network.coordinator.services_address, token)
    services_token = Path(network.settings.services_ray_env()["RAY_AUTH_TOKEN_PATH"]).read_text()
    control = _join_the_services_cluster(network.coordinator.services_address, services_token)
    assert control.startswith("joined"), control  # the services' own token joins: the refusal is the token's
    record("join the coordinator's own Ray cluster with the hosts' credential", "prevented",
           "prevented" if what.startswith("refused") else "possible", what)


def test_a_joined_node_cannot_make_the_owners_process_run_its_code(network: EmbeddedNetwork,
                                                                  attacker: RayNodeProcess) -> None:
    """`host join` runs as the machine's owner (root here: it runs the gate). Whatever it unpickles from Ray, a
    member of the cluster can choose: it may run code in the host's agent and make the agent's answers pickles."""
    drop = Path(tempfile.mkdtemp(prefix="archipelag-red-team-drop-"))
    drop.chmod(0o1777)  # anyone may write here: the file's content says who did
    marker = drop / "ran-as"
    try:
        planted = on_attacker(_hand_root_a_pickle, network.settings.ray_namespace, host_id(network),
                              f"id -u > {marker}")
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not marker.exists():
            time.sleep(0.2)
        ran_as = marker.read_text().strip() if marker.exists() else None
        what = f"{planted}; the payload ran as uid {ran_as}" if ran_as is not None else \
            f"{planted}; the payload did not run within 10 s"
        record("make the owner's `host join` process (root) run its code, through the host's agent", "prevented",
               "possible" if ran_as == "0" else "prevented", what)
    finally:
        shutil.rmtree(drop, ignore_errors=True)


def test_a_joined_node_cannot_make_the_owners_process_hand_it_a_folder(network: EmbeddedNetwork,
                                                                      attacker: RayNodeProcess) -> None:
    """When a host's node stops, `host join` (root) starts it again. A folder the node's account may replace by a
    link must not be one root then changes the owner of."""
    canary = Path(tempfile.mkdtemp(prefix="archipelag-red-team-canary-"))  # root's, 0700
    before = victim_node(network)
    try:
        what = on_attacker(_swap_the_nodes_folder, before, str(canary))
        eventually(lambda: victim_node(network) != before or canary.stat().st_uid != 0, timeout_s=90)
        owner = canary.stat().st_uid
        what += f"; the host rejoined; root's folder {canary.name} is now owned by uid {owner}"
        record("make the owner's `host join` (root) give the node's account a folder of root's, by a link where "
               "the node's folder was", "prevented", "possible" if owner != 0 else "prevented", what)
    finally:
        shutil.rmtree(canary, ignore_errors=True)
    eventually(lambda: victim_node(network) != before, timeout_s=90)  # the host is back for what follows
