"""The container a Docker job gets, built as plain data from its spec, its tier's limits and the host's facts."""

from __future__ import annotations

import json
from typing import Any

import pytest

from archipelag.catalog import Manifest
from archipelag.errors import WorkloadRefused
from archipelag.ids import JobId, WorkloadSlug
from archipelag.runtimes import seccomp
from archipelag.runtimes.base import JobSpec
from archipelag.runtimes.container_spec import JOB_LABEL, HostFacts, container_request
from archipelag.sandbox import Tier
from archipelag.settings import Settings

IMAGE_ID = "sha256:" + "a" * 64
CPU_HOST = HostFacts(cpu_count=2, gpu=False)
GPU_HOST = HostFacts(cpu_count=16, gpu=True)


def a_spec(trust_level: int = 0, vram_mb: int = 0) -> JobSpec:
    workload = Manifest(slug=WorkloadSlug("w"), name="w", description="", runtime="container",
                        trust_level=trust_level, price_micro=0, image="archipelag/w:1", image_id=IMAGE_ID,
                        required_vram_mb=vram_mb, requires_gpu=vram_mb > 0)
    return JobSpec(JobId("job-1"), workload, {}, Settings().limits_for(workload.tier))


def host_config(spec: JobSpec, host: HostFacts = CPU_HOST) -> dict[str, Any]:
    return container_request(spec, IMAGE_ID, host).host_config


def test_every_container_is_hardened_whatever_its_tier() -> None:
    for trust_level in range(4):
        request = container_request(a_spec(trust_level), IMAGE_ID, CPU_HOST)
        config = request.host_config
        assert request.create["image"] == IMAGE_ID  # the pinned ID, never a tag that could move
        assert request.create["user"] == "10001:10001"
        assert request.create["labels"][JOB_LABEL] == "job-1"
        assert request.create["stdin_open"] is True and request.create["detach"] is False
        assert config["read_only"] is True
        assert config["cap_drop"] == ["ALL"]
        assert config["security_opt"][0] == "no-new-privileges"
        assert config["mem_limit"] == config["memswap_limit"]
        assert "mode=1777" in config["tmpfs"]["/tmp"] and "noexec" in config["tmpfs"]["/tmp"]
        assert config["log_config"]["Type"] == "none"
        assert "device_requests" not in config


@pytest.mark.parametrize(("trust_level", "memory", "network"), [(0, "256m", "none"), (1, "1024m", "none"),
                                                                 (3, "8192m", "bridge")])
def test_limits_follow_the_tier(trust_level: int, memory: str, network: str) -> None:
    config = host_config(a_spec(trust_level))
    assert config["mem_limit"] == memory
    assert config["network_mode"] == network
    tier = a_spec(trust_level).workload.tier
    assert config["security_opt"][1] == f"seccomp={seccomp.profile_json(tier)}"


def test_the_cpu_quota_never_asks_for_more_cores_than_the_host_has() -> None:
    assert host_config(a_spec(3), CPU_HOST)["nano_cpus"] == 2_000_000_000  # elevated asks 4, host has 2
    assert host_config(a_spec(3), GPU_HOST)["nano_cpus"] == 4_000_000_000
    assert host_config(a_spec(0), GPU_HOST)["nano_cpus"] == 1_000_000_000


def test_a_gpu_workload_gets_every_gpu_when_host_and_tier_allow() -> None:
    (request,) = host_config(a_spec(trust_level=1, vram_mb=4096), GPU_HOST)["device_requests"]
    assert request["Count"] == -1
    assert request["Capabilities"] == [["gpu"]]


def test_a_workload_that_needs_no_gpu_gets_none_even_on_a_gpu_host() -> None:
    assert "device_requests" not in host_config(a_spec(trust_level=1), GPU_HOST)


@pytest.mark.parametrize(("trust_level", "host", "reason"), [(0, GPU_HOST, "gpu_not_allowed"),
                                                             (1, CPU_HOST, "gpu_missing")])
def test_a_gpu_workload_is_refused_where_it_cannot_have_one(trust_level: int, host: HostFacts,
                                                            reason: str) -> None:
    with pytest.raises(WorkloadRefused) as refused:
        container_request(a_spec(trust_level, vram_mb=4096), IMAGE_ID, host)
    assert refused.value.details["reason"] == reason


def test_seccomp_profiles_deny_by_default_and_restricted_refuses_sockets() -> None:
    for tier in Tier:
        profile = json.loads(seccomp.profile_json(tier))
        assert profile["defaultAction"] == "SCMP_ACT_ERRNO" and profile["defaultErrnoRet"] == 1
        allowed = set(profile["syscalls"][0]["names"])
        assert not allowed & {"mount", "ptrace", "unshare", "setns", "bpf", "kexec_load", "clone3"}
        assert {"read", "write", "execve", "futex", "exit_group"} <= allowed
    assert "socket" not in seccomp.allowed_syscalls(Tier.RESTRICTED)
    assert "connect" not in seccomp.allowed_syscalls(Tier.RESTRICTED)
    assert "socket" in seccomp.allowed_syscalls(Tier.STANDARD)


def test_clone_is_allowed_only_without_namespace_flags() -> None:
    (clone,) = [r for r in seccomp.profile(Tier.STANDARD)["syscalls"] if r["names"] == ["clone"]]
    (arg,) = clone["args"]
    assert arg["op"] == "SCMP_CMP_MASKED_EQ" and arg["value"] == seccomp.CLONE_NAMESPACE_FLAGS
    assert arg["valueTwo"] == 0
