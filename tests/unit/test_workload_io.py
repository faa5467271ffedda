"""The container SDK's worker mode (``workloads/container_sdk/workload_io.py``) driven as the host drives it: a small
program on this interpreter, requests on its stdin, events on its stdout. One request at a time, untagged, as the
sd-diffusers worker speaks; and multiplexed (``ARCHIPELAG_PARALLEL``), as the llm-chat worker speaks."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from archipelag.protocol import validate
from archipelag.settings import REPO_ROOT

SDK = REPO_ROOT / "workloads" / "container_sdk"
PROGRAM = '''
import threading, time
from workload_io import Cancelled, Done, cancelled, emit, serve

def handle(job):
    for index in range(job["n"]):
        if cancelled():
            raise Cancelled
        emit("token", content=f"{job['name']}{index} ")
        time.sleep(job.get("pause_s", 0))
    return Done(usage={"completion_tokens": job["n"]}, extra={"thread": threading.current_thread().name})

serve(handle, 4096, concurrent=True)
'''


class Program:
    def __init__(self, folder: Path, parallel: int) -> None:
        (folder / "main.py").write_text(PROGRAM)
        env = {k: v for k, v in os.environ.items() if not k.startswith("ARCHIPELAG_")}
        env.update(PYTHONPATH=str(SDK), ARCHIPELAG_WORKER="1", ARCHIPELAG_PARALLEL=str(parallel))
        self.process = subprocess.Popen([sys.executable, str(folder / "main.py")], stdin=subprocess.PIPE,
                                        stdout=subprocess.PIPE, env=env)

    def send(self, message: dict[str, Any]) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(json.dumps(message).encode() + b"\n")
        self.process.stdin.flush()

    def events(self) -> Iterator[dict[str, Any]]:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            yield json.loads(line)

    def until_final(self, idents: set[int]) -> dict[int, list[dict[str, Any]]]:
        """Each request's events, read until every one in ``idents`` ended."""
        seen: dict[int, list[dict[str, Any]]] = {}
        for event in self.events():
            rid = event.pop("rid")
            seen.setdefault(rid, []).append(validate(event))
            if event["type"] in ("done", "error"):
                idents.discard(rid)
                if not idents:
                    return seen
        raise AssertionError("the program ended first")

    def close(self) -> int:
        assert self.process.stdin is not None
        self.process.stdin.close()
        return self.process.wait(10)


@pytest.fixture
def program(tmp_path: Path) -> Iterator[Program]:
    running = Program(tmp_path, parallel=3)
    yield running
    running.process.kill()
    running.process.wait()


def test_multiplexed_requests_overlap_and_every_event_names_its_request(program: Program) -> None:
    for ident, name in enumerate("abc"):
        program.send({"id": ident, "input": {"name": name, "n": 4, "pause_s": 0.05}})
    started = time.monotonic()
    seen = program.until_final({0, 1, 2})
    assert time.monotonic() - started < 0.6  # side by side: one after another would take 0.6 s
    for ident, name in enumerate("abc"):
        assert [e["content"] for e in seen[ident][:-1]] == [f"{name}{i} " for i in range(4)]
        assert seen[ident][-1]["usage"] == {"completion_tokens": 4}
    assert len({seen[i][-1]["thread"] for i in range(3)}) == 3
    assert program.close() == 0


def test_a_cancel_stops_only_its_request(program: Program) -> None:
    program.send({"id": 7, "input": {"name": "long", "n": 200, "pause_s": 0.01}})
    program.send({"id": 8, "input": {"name": "short", "n": 3, "pause_s": 0.05}})
    program.send({"cancel": 7})
    seen = program.until_final({7, 8})
    assert seen[7][-1] == {"type": "error", "message": "cancelled"} and len(seen[7]) < 200
    assert seen[8][-1]["type"] == "done"


def test_bad_input_is_an_error_for_that_request_and_the_worker_goes_on(program: Program) -> None:
    program.send({"id": 1, "input": "not an object"})
    program.send({"id": 2, "input": {"name": "x", "n": 1}})
    seen = program.until_final({1, 2})
    assert seen[1] == [{"type": "error", "message": seen[1][0]["message"]}]
    assert "not a JSON object" in seen[1][0]["message"] and seen[2][-1]["type"] == "done"


def test_without_parallel_requests_run_one_after_another_untagged(tmp_path: Path) -> None:
    sequential = Program(tmp_path, parallel=1)
    try:
        sequential.send({"id": 0, "input": {"name": "a", "n": 2}})
        sequential.send({"id": 1, "input": {"name": "b", "n": 2}})
        events = [e for _, e in zip(range(6), sequential.events(), strict=False)]
        assert [e.get("content") for e in events] == ["a0 ", "a1 ", None, "b0 ", "b1 ", None]
        assert all("rid" not in e for e in events)
        assert sequential.close() == 0
    finally:
        sequential.process.kill()
        sequential.process.wait()
