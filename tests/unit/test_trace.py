"""The first token's path, stamped stage by stage (metrics.trace): what the benchmark's breakdown reads."""

from __future__ import annotations

import pickle
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from archipelag.metrics.trace import TRACE, read


@pytest.fixture
def traced(tmp_path: Path) -> Iterator[Path]:
    path = tmp_path / "trace.txt"
    TRACE.configure(path)
    yield path
    TRACE.configure(None)


def test_off_it_writes_nothing(tmp_path: Path) -> None:
    TRACE.configure(None)
    TRACE.stamp("job-1", "arrived")
    assert not TRACE.on and read(tmp_path / "trace.txt") == {}


def test_each_stage_of_a_job_reads_back_and_a_later_attempt_does_not_move_it(traced: Path) -> None:
    TRACE.stamp("job-1", "arrived", 10.0)
    TRACE.stamp("job-1", "host", 10.5)
    TRACE.stamp("job-2", "arrived", 11.0)
    TRACE.stamp("job-1", "host", 12.0)  # its retry on another host
    assert read(traced) == {"job-1": {"arrived": 10.0, "host": 10.5}, "job-2": {"arrived": 11.0}}


def test_stamps_from_many_threads_never_mix_within_a_line(traced: Path) -> None:
    def stamp(n: int) -> None:
        for i in range(200):
            TRACE.stamp(f"job-{n}-{i}", "relayed")

    threads = [threading.Thread(target=stamp, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(read(traced)) == 1600


def test_an_actor_class_pickled_by_value_finds_its_own_processes_tracer() -> None:
    assert pickle.loads(pickle.dumps(TRACE)) is TRACE
