"""The escape suite: a workload that attacks its sandbox, each attack in a real container on the real engine.

Every attack must be contained, end the job with the right error and a reason that says what happened, leave
the runtime able to run the next job, and leave no container behind.
"""

from __future__ import annotations

import dataclasses
import socket
from collections.abc import Iterator
from typing import Any

import pytest
from docker_engine import LIMITS, DockerEnv, a_job_id, docker_env  # noqa: F401

from archipelag.errors import BudgetExceeded, WorkloadError, WorkloadTimedOut
from archipelag.protocol import Event
from archipelag.runtimes.base import CancelToken, JobSpec
from archipelag.runtimes.docker import DockerRuntime, HostFacts

pytestmark = pytest.mark.docker

RESTRICTED, STANDARD = 0, 1  # trust levels


@pytest.fixture(scope="module")
def runtime(docker_env: DockerEnv) -> DockerRuntime:  # noqa: F811
    return DockerRuntime(docker_env.client, HostFacts(cpu_count=2))


@pytest.fixture(scope="module")
def host_listener() -> Iterator[int]:
    """A TCP port open on the host's 127.0.0.1: a workload must not reach it."""
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        yield int(server.getsockname()[1])


def run(runtime: DockerRuntime, env: DockerEnv, name: str, job: dict[str, Any], trust_level: int = RESTRICTED,
        **limits: Any) -> list[Event]:
    spec = JobSpec(a_job_id(name), env.probe(trust_level), job, dataclasses.replace(LIMITS, **limits))
    return list(runtime.run(spec, CancelToken()))


def assert_still_serving(runtime: DockerRuntime, env: DockerEnv) -> None:
    events = run(runtime, env, "after", {"attack": "echo", "text": "still here"})
    assert [e.get("content") for e in events if e["type"] == "token"] == ["still ", "here "]
    assert events[-1]["type"] == "done"
    assert env.leftovers() == []


ATTACKS = [
    # (id, input, trust level, limits, error, what the reason must say)
    ("write-root", {"attack": "write_root", "path": "/pwned"}, RESTRICTED, {}, WorkloadError,
     "Read-only file system"),
    ("overwrite-interpreter", {"attack": "write_root", "path": "/usr/local/bin/python3"}, RESTRICTED, {},
     WorkloadError, "Read-only file system"),
    ("socket-outside-restricted", {"attack": "connect", "host": "192.0.2.1", "port": 80}, RESTRICTED, {},
     WorkloadError, "Operation not permitted"),
    ("socket-outside-standard", {"attack": "connect", "host": "192.0.2.1", "port": 80}, STANDARD, {},
     WorkloadError, "Network is unreachable"),
    ("fork-bomb", {"attack": "fork_bomb"}, RESTRICTED, {"memory_mb": 512, "pids_limit": 16}, WorkloadError,
     "Resource temporarily unavailable"),
    ("allocate-past-memory", {"attack": "memory"}, RESTRICTED, {"memory_mb": 64}, BudgetExceeded,
     "out of memory"),
    ("spin-past-timeout", {"attack": "spin"}, RESTRICTED, {"timeout_s": 2}, WorkloadTimedOut, "timed out"),
    ("read-host-shadow", {"attack": "read_host", "paths": ["/etc/shadow"]}, RESTRICTED, {}, WorkloadError,
     "No such file or directory: '/etc/shadow'"),
    ("read-host-repo", {"attack": "read_host", "paths": [__file__]}, RESTRICTED, {}, WorkloadError,
     "No such file or directory"),
    ("setuid-binary", {"attack": "setuid"}, STANDARD, {}, WorkloadError, "euid 10001"),
    ("mount", {"attack": "mount"}, STANDARD, {}, WorkloadError, "mount: Operation not permitted"),
    ("ptrace", {"attack": "ptrace"}, STANDARD, {}, WorkloadError, "ptrace: Operation not permitted"),
    ("stdout-flood", {"attack": "flood"}, RESTRICTED, {}, BudgetExceeded, "output limit"),
    ("event-flood", {"attack": "flood"}, RESTRICTED, {"output_events": 100}, BudgetExceeded, "more than 100 events"),
    ("one-endless-line", {"attack": "long_line"}, RESTRICTED, {}, BudgetExceeded, "longer than"),
]


@pytest.mark.parametrize(("job", "trust_level", "limits", "error", "reason"),
                         [a[1:] for a in ATTACKS], ids=[a[0] for a in ATTACKS])
def test_attack_is_contained_and_reported(runtime: DockerRuntime, docker_env: DockerEnv,  # noqa: F811
                                          job: dict[str, Any], trust_level: int, limits: dict[str, Any],
                                          error: type[Exception], reason: str) -> None:
    with pytest.raises(error) as caught:
        run(runtime, docker_env, "attack", job, trust_level, **limits)
    said = f"{caught.value} {getattr(caught.value, 'details', {}).get('stderr_tail', '')}"
    assert reason in said
    assert "escaped" not in said
    assert_still_serving(runtime, docker_env)


@pytest.mark.parametrize(("trust_level", "refusal"), [(RESTRICTED, "Operation not permitted"),
                                                      (STANDARD, "Connection refused")])
def test_host_loopback_is_out_of_reach(runtime: DockerRuntime, docker_env: DockerEnv,  # noqa: F811
                                       host_listener: int, trust_level: int, refusal: str) -> None:
    with pytest.raises(WorkloadError, match=refusal):
        run(runtime, docker_env, "loopback", {"attack": "connect", "host": "127.0.0.1", "port": host_listener},
            trust_level)
    assert_still_serving(runtime, docker_env)


def test_the_container_sees_only_its_image(runtime: DockerRuntime, docker_env: DockerEnv) -> None:  # noqa: F811
    output = run(runtime, docker_env, "listing", {"attack": "listing"})[-1]["output"]
    assert set(output["root"]) <= {".dockerenv", "app", "dev", "etc", "lib", "lib64", "proc", "sys", "tmp", "usr"}
    assert output["uid"] == 10001
    assert output["cmdline"][:2] == ["python3", "/app/probe.py"]  # PID 1 is the workload, not the host's init
    assert docker_env.leftovers() == []
