"""Where a command's CPU goes, process by process: `python scripts/cpu-by-process.py -- make test`.

Runs the command and samples every process on the machine every ``--interval`` seconds (psutil), adding each
process's CPU since the last sample to its kind: Ray's processes by what they run or their title (``ray::Ledger``,
the raylet, GCS, the dashboard agent, …), ours by what they run (``archipelag host join``, ``archipelag up``,
pytest, …), the rest by name. Prints the kinds, most CPU first, when the command ends (Ctrl-C too), beside the machine's whole CPU time
over the same span. A process that starts and ends between two samples is missed, and one that ends loses what
it used since the last one, so the table undercounts short-lived processes (the README's "Where a run's CPU goes"
used it with BSD process accounting beside it). Counts every process on the machine, not only the command's.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from collections import Counter

import psutil

# Ray's native programs by their name (the raylet's command line holds its agents' command lines too).
PROGRAMS = {"raylet": "Ray raylet", "gcs_server": "Ray GCS"}
# Then (what the command line holds, the kind), first match wins. Ray's workers and actors carry their title
# (``ray::…``) once they have one.
KINDS = (
    ("ray::DashboardAgent", "Ray dashboard agent"),
    ("dashboard/agent.py", "Ray dashboard agent"),
    ("ray::RuntimeEnvAgent", "Ray runtime-env agent"),
    ("runtime_env/agent", "Ray runtime-env agent"),
    ("dashboard/dashboard.py", "Ray dashboard"),
    ("default_worker.py", "ray::IDLE"),
    ("sys.modules.update", "ray start (ours)"),
    ("archipelag host join", "archipelag host join"),
    ("archipelag up", "archipelag up"),
    ("archipelag.bridge", "archipelag bridge"),
    ("-m archipelag", "archipelag CLI"),
    ("pytest", "pytest"),
)


def kind(process: psutil.Process) -> str:
    if process.name() in PROGRAMS:
        return PROGRAMS[process.name()]
    line = " ".join(process.cmdline())
    for fragment, name in KINDS:
        if fragment in line:
            return name
    if line.startswith("ray::"):
        return line.split()[0]
    return process.name()


def sample(seen: dict[tuple[int, float], float], totals: Counter[str]) -> None:
    """Add each process's CPU since the last sample to what it is now (a process changes: a fork runs its parent's
    command line until it execs, and Ray's processes set their titles as they start)."""
    for process in psutil.process_iter():
        try:
            key = (process.pid, process.create_time())
            times = process.cpu_times()
            used = times.user + times.system
            name = kind(process)
        except psutil.Error:  # ended meanwhile, or not ours to read
            continue
        totals[name] += used - seen.get(key, 0.0)
        seen[key] = used


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--interval", type=float, default=1.0, help="seconds between samples (default 1)")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="the command to run, after --")
    args = parser.parse_args()
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("no command given")
    seen: dict[tuple[int, float], float] = {}
    totals: Counter[str] = Counter()
    sample(seen, totals)
    totals.clear()  # what ran before the command is not its
    machine_before, started = sum(psutil.cpu_times()[:3]), time.monotonic()
    child = subprocess.Popen(command)
    try:
        while child.poll() is None:
            time.sleep(args.interval)
            sample(seen, totals)
    except KeyboardInterrupt:
        child.wait()
    machine = sum(psutil.cpu_times()[:3]) - machine_before  # user, nice, system: every core
    print(f"\n{'kind':<48} {'CPU s':>9}")
    for name, used in totals.most_common():
        if used >= 0.05:
            print(f"{name[:48]:<48} {used:9.1f}")
    print(f"{'sampled, all kinds':<48} {sum(totals.values()):9.1f}")
    print(f"{'the machine (all cores), same span':<48} {machine:9.1f}   over {time.monotonic() - started:.0f} s")
    return child.returncode


if __name__ == "__main__":
    sys.exit(main())
