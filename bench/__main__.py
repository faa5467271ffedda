"""`make bench`: every benchmark, each section a table with its baseline measured in the same run.

    python -m bench                 # all sections
    python -m bench placement wasm  # some of them
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable

SECTIONS = ("placement", "wasm", "docker", "network", "up", "join", "jobs", "batch", "ledger", "llm",
            "llm-load", "web")


def _placement() -> None:
    from bench import bench_placement

    bench_placement.main([])  # not this command's arguments (`python -m bench placement`)


def _wasm() -> None:
    from bench import bench_wasm

    bench_wasm.main([])


def _table(rows: list[tuple[str, str, str]]) -> None:
    width = max(len(r[0]) for r in rows)
    print(f"{'measurement':{width}}  {'value':>18}  note")
    for name, value, note in rows:
        print(f"{name:{width}}  {value:>18}  {note}")


def _docker() -> None:
    from bench import bench_docker

    _table(bench_docker.rows())


def _network() -> None:
    from bench import bench_network

    _table(bench_network.run())


def _up() -> None:
    from bench import bench_up

    _table(bench_up.run())


def _join() -> None:
    from bench import bench_join

    _table(bench_join.run())


def _jobs() -> None:
    from bench import bench_jobs

    _table(bench_jobs.throughput_rows())
    _table(bench_jobs.failover_rows())


def _batch() -> None:
    from bench import bench_batch

    _table(bench_batch.run())


def _ledger() -> None:
    from bench import bench_ledger

    _table(bench_ledger.run())


def _llm() -> None:
    from bench import bench_llm

    _table(bench_llm.run())


def _llm_load() -> None:
    from bench import bench_llm_load

    _table(bench_llm_load.run())


def _web() -> None:
    from bench import bench_web

    _table(bench_web.run())


RUNNERS: dict[str, Callable[[], None]] = {
    "placement": _placement, "wasm": _wasm, "docker": _docker, "network": _network, "up": _up, "join": _join,
    "jobs": _jobs, "batch": _batch, "ledger": _ledger, "llm": _llm,
    "web": _web, "llm-load": _llm_load,
}


def main(argv: list[str]) -> int:
    chosen = argv or list(SECTIONS)
    unknown = [s for s in chosen if s not in RUNNERS]
    if unknown:
        print(f"unknown section(s) {unknown}; choose from {list(SECTIONS)}", file=sys.stderr)
        return 2
    for section in chosen:
        print(f"\n== {section} " + "=" * (70 - len(section)))
        started = time.perf_counter()
        RUNNERS[section]()
        print(f"({section}: {time.perf_counter() - started:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
