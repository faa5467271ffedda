"""CPU time each of an embedded network's processes spends, by role: what a stretch of work costs the network's
own processes (the API replicas, the jobs service, the ledger, the host's agent, Ray's daemons …) against the model
worker in its container, with the same stretch's idle background taken off.

``python -m bench.cpu -- CMD`` runs a command (``make test``, ``.ci/run`` …) and prints the whole machine's CPU
over it by role, every process sampled each second: a process that starts and ends between two samples is missed,
and one that ends loses what it used since the last, so short-lived processes are undercounted.

Roles come from process titles: Ray names an actor's worker ``ray::JobsActor`` (``ray::JobsActor.submit`` while
it runs a method); daemons and Python scripts go by their executable or script. Each is prefixed with the part of
the network it belongs to (the services' head, the hosts' head, a host, the container).
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import docker
import psutil

from archipelag import ray_agent
from archipelag.network import EmbeddedNetwork
from archipelag.runtimes.orphans import OWNER_LABEL

Snapshot = dict[int, tuple[str, float]]  # pid → (role, CPU seconds so far)


def role_of(process: psutil.Process) -> str:
    """A process's part in the network, from its title or command line."""
    command = process.cmdline() or [process.name()]
    first = command[0]
    if first.startswith("ray::"):
        return re.split(r"[.\s]", first[len("ray::"):], maxsplit=1)[0] or "idle Ray worker"
    if "archipelag.ray_agent" in command[:-1]:  # a node's agent, named by the one of Ray's it stands for
        script = command[command.index("archipelag.ray_agent") + 1]
        return f"ray_agent ({'runtime env' if ray_agent.RUNTIME_ENV_AGENT_SCRIPT in script else 'dashboard'})"
    for flag in ("-m", "-c"):  # a module and its first argument; a script given inline, by its first argument
        if flag in command[:-1]:
            at = command.index(flag)
            return " ".join(command[at + 1:at + 3] if flag == "-m" else ["python -c …", *command[at + 2:at + 3]])
    scripts = [Path(arg).name for arg in command if arg.endswith(".py")]
    return scripts[0] if scripts else Path(first).name


def network_processes(network: EmbeddedNetwork) -> dict[int, str]:
    """pid → role of every process the network runs: both heads, the bridge, each host (its join process and its
    Ray node), and the model workers' containers."""
    found: dict[int, str] = {}

    def add(part: str, processes: list[psutil.Process]) -> None:
        for process in processes:
            try:
                found.setdefault(process.pid, f"{part}: {role_of(process)}")
            except psutil.Error:
                continue

    coordinator = network.coordinator
    add("services head", coordinator.head.processes())
    add("hosts head", coordinator.hosts_head.processes())
    for host in network.hosts:
        add(host.host_id, host.processes(network.settings))
    children = psutil.Process(os.getpid()).children(recursive=True)
    add("coordinator", [p for p in children if p.pid not in found])  # the bridge, and what else this process ran
    owners = {str(pid) for pid in found}
    client = docker.from_env()
    try:
        for container in client.containers.list(filters={"label": OWNER_LABEL}):
            owner = str(container.labels.get(OWNER_LABEL, "")).split(":")
            if len(owner) == 3 and owner[1] in owners:
                top = psutil.Process(int(container.attrs["State"]["Pid"]))
                add("container", [top, *top.children(recursive=True)])
    finally:
        client.close()
    return found


def snapshot(roles: dict[int, str]) -> Snapshot:
    taken: Snapshot = {}
    for pid, role in roles.items():
        try:
            times = psutil.Process(pid).cpu_times()
        except psutil.Error:
            continue
        taken[pid] = (role, times.user + times.system)
    return taken


def by_role(before: Snapshot, after: Snapshot) -> dict[str, float]:
    """CPU seconds each role spent between the two snapshots (a process that started between them counts whole)."""
    spent: dict[str, float] = defaultdict(float)
    for pid, (role, cpu) in after.items():
        spent[role] += cpu - before.get(pid, (role, 0.0))[1]
    return dict(spent)


@dataclass(frozen=True)
class Cost:
    """CPU per unit of work by role (seconds), the idle background over the same time taken off."""

    per_unit: dict[str, float]
    units: int
    seconds: float


def cost_of(network: EmbeddedNetwork, work: Callable[[], int], idle_s: float = 5.0,
            warm: Callable[[], object] | None = None) -> Cost:
    """Run ``work`` (it returns how many units it did) and charge each role's CPU to it, less what that role
    burns idle over as long (measured just before, for ``idle_s``). ``warm`` runs between the two, uncounted:
    what the work needs started that idleness stops (a model worker past its idle TTL), since a process that
    starts during the work counts whole."""
    roles = network_processes(network)
    first = snapshot(roles)
    time.sleep(idle_s)
    idle = by_role(first, snapshot(roles))
    if warm is not None:
        warm()
    roles = network_processes(network)  # again: a worker may have come or gone
    before = snapshot(roles)
    started = time.perf_counter()
    units = work()
    seconds = time.perf_counter() - started
    busy = by_role(before, snapshot(network_processes(network) | roles))
    per_unit = {role: (cpu - idle.get(role, 0.0) * seconds / idle_s) / max(units, 1) for role, cpu in busy.items()}
    return Cost(per_unit, units, seconds)


def machine_roles() -> dict[int, str]:
    """pid → role of every process on the machine, read now (a fork has its parent's command line until it execs,
    and Ray's processes take their titles as they start)."""
    roles: dict[int, str] = {}
    for process in psutil.process_iter():
        try:
            roles[process.pid] = role_of(process)
        except psutil.Error:  # ended meanwhile, or not ours to read
            continue
    return roles


def machine_by_role(command: list[str], interval_s: float = 1.0) -> tuple[dict[str, float], float, int]:
    """Run ``command``; every process's CPU while it ran, by role, the machine's CPU over the same span, and the
    command's exit status."""
    spent: dict[str, float] = defaultdict(float)
    last = snapshot(machine_roles())
    machine_before = sum(psutil.cpu_times()[:3])  # user, nice, system: every core
    child = subprocess.Popen(command)
    try:
        while child.poll() is None:
            time.sleep(interval_s)
            now = snapshot(machine_roles())
            for role, cpu in by_role(last, now).items():
                spent[role] += cpu
            last = now
    except KeyboardInterrupt:
        child.wait()
    return dict(spent), sum(psutil.cpu_times()[:3]) - machine_before, child.returncode


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.cpu", description="a command's CPU by process role")
    parser.add_argument("--interval", type=float, default=1.0, help="seconds between samples (default 1)")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="the command to run, after --")
    args = parser.parse_args()
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("no command given")
    started = time.monotonic()
    spent, machine, status = machine_by_role(command, args.interval)
    print(f"\n{'role':<56} {'CPU s':>9}")
    for role, cpu in sorted(spent.items(), key=lambda item: -item[1]):
        if cpu >= 0.05:
            print(f"{role[:56]:<56} {cpu:9.1f}")
    print(f"{'sampled, all roles':<56} {sum(spent.values()):9.1f}")
    print(f"{'the machine (all cores), same span':<56} {machine:9.1f}   over {time.monotonic() - started:.0f} s")
    return status


if __name__ == "__main__":
    sys.exit(main())
