"""The sandbox a container workload runs in, as the Docker engine's create arguments (DESIGN §5). Pure: no engine.

``container_request`` turns a job's tier limits into a hardened container: read-only root, a size-capped tmpfs
``/tmp``, every capability dropped, no-new-privileges, the tier's seccomp profile, no network unless the tier allows
it, pids/memory/CPU limits, the non-root user 10001, no log driver, stdin open; a model mounted read-only; a GPU
when the workload needs one or can use one and the tier and host allow it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from docker.types import DeviceRequest, LogConfig, Mount, Ulimit

from archipelag.errors import WorkloadRefused
from archipelag.runtimes import seccomp
from archipelag.runtimes.base import JobSpec

WORKLOAD_USER: Final = "10001:10001"  # the `workload` user of the base image's /etc/passwd
JOB_LABEL: Final = "io.archipelag.job"
WORKLOAD_LABEL: Final = "io.archipelag.workload"

@dataclass(frozen=True)
class HostFacts:
    """What the host offers containers: its core count (caps the CPU quota) and whether a GPU can be passed."""

    cpu_count: int
    gpu: bool = False

    @classmethod
    def detect(cls, gpu: bool = False, lent_cores: int | None = None) -> HostFacts:
        """``lent_cores``: the owner's `--max-cores`; a job's CPU quota never goes past it."""
        cores = os.cpu_count() or 1
        return cls(cpu_count=min(cores, lent_cores) if lent_cores else cores, gpu=gpu)


@dataclass(frozen=True)
class ContainerRequest:
    """What ``create_container`` gets for one job: the container's own settings and its host config."""

    create: dict[str, Any]
    host_config: dict[str, Any]


def container_request(spec: JobSpec, image_id: str, host: HostFacts, model: Path | None = None,
                      worker: bool = False, owner: dict[str, str] | None = None) -> ContainerRequest:
    """The container for ``spec``: the sandbox of its tier, nothing else. Pure.

    ``model``: weights mounted read-only at ``/models/<name>`` (``ARCHIPELAG_MODEL``). ``worker``: a long-lived
    model worker (``runtimes.workers``) whose stdin stays open across requests. ``owner``: labels naming the
    host process, so a later sweep can remove what a killed host left behind."""
    limits = spec.limits
    memory = f"{limits.memory_mb}m"
    environment = {"ARCHIPELAG_THREADS": str(max(1, int(min(limits.cpus, host.cpu_count))))}
    labels = {JOB_LABEL: "worker" if worker else str(spec.job_id), WORKLOAD_LABEL: str(spec.workload.slug),
              **(owner or {})}
    create: dict[str, Any] = {
        "image": image_id,
        "user": WORKLOAD_USER,
        "labels": labels,
        "stdin_open": True,  # with detach=False the SDK also sets StdinOnce: the engine closes the workload's
        "detach": worker,  # stdin when we half-close the attach socket; a worker's stdin stays open
        "tty": False,
        "environment": environment,
    }
    host_config: dict[str, Any] = {
        "read_only": True,
        "tmpfs": {"/tmp": f"rw,nosuid,nodev,noexec,size={limits.tmp_mb}m,mode=1777"},
        "shm_size": f"{limits.tmp_mb}m",
        "cap_drop": ["ALL"],
        "security_opt": ["no-new-privileges", f"seccomp={seccomp.profile_json(spec.workload.tier)}"],
        "network_mode": "bridge" if limits.network else "none",
        "ipc_mode": "private",
        "pids_limit": limits.pids_limit,
        "mem_limit": memory,
        "memswap_limit": memory,
        "nano_cpus": int(min(limits.cpus, host.cpu_count) * 1e9),
        "oom_score_adj": 500,  # under host memory pressure, workloads die before the host's own processes
        "ulimits": [Ulimit(name="core", soft=0, hard=0), Ulimit(name="nofile", soft=1024, hard=1024)],
        "log_config": LogConfig(type=LogConfig.types.NONE),
    }
    if worker:
        environment["ARCHIPELAG_WORKER"] = "1"
        if spec.workload.parallel > 1:  # the multiplexed worker protocol (runtimes.workers)
            environment["ARCHIPELAG_PARALLEL"] = str(spec.workload.parallel)
    if model is not None:
        target = f"/models/{model.name}"
        host_config["mounts"] = [Mount(target=target, source=str(model), type="bind", read_only=True)]
        environment["ARCHIPELAG_MODEL"] = target
    if spec.workload.requires_gpu:
        if not limits.gpu:
            raise WorkloadRefused(f"workload {spec.workload.slug!r} needs a GPU, which its "
                                  f"{spec.workload.tier.value} tier does not allow", reason="gpu_not_allowed")
        if not host.gpu:
            raise WorkloadRefused(f"workload {spec.workload.slug!r} needs a GPU and this host has none",
                                  reason="gpu_missing")
    # A workload that needs a GPU gets it; a model workload gets one when it can (layers offloaded).
    if spec.workload.requires_gpu or (spec.workload.model is not None and limits.gpu and host.gpu):
        host_config["device_requests"] = [DeviceRequest(count=-1, capabilities=[["gpu"]])]
        environment["ARCHIPELAG_GPU"] = "1"
    return ContainerRequest(create, host_config)
