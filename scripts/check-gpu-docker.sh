#!/usr/bin/env bash
# Check GPU passthrough for container workloads on a machine with an NVIDIA GPU, for real.
#
#   scripts/check-gpu-docker.sh
#
# Needs: an NVIDIA driver (nvidia-smi works on the host) and the NVIDIA Container Toolkit registered with Docker
# (`nvidia-ctk runtime configure --runtime=docker`, then restart dockerd). It makes the engine available
# (scripts/docker-engine.sh), builds the base image, and runs one container with exactly the device request and
# sandbox the Docker runtime builds for a GPU workload of the standard tier (archipelag.runtimes.docker
# .container_request), then checks that the container sees the GPU devices and can talk to the driver (NVML).
# Exit 0 and "GPU passthrough works" on success.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PY:-.venv/bin/python}"

nvidia-smi -L || { echo "no NVIDIA GPU/driver on this host: nothing to check" >&2; exit 2; }
scripts/docker-engine.sh ensure "$$"
trap 'scripts/docker-engine.sh stop "$$" >/dev/null' EXIT

"$PY" - <<'PYTHON'
import sys

import docker

from archipelag.catalog import Manifest
from archipelag.ids import JobId, WorkloadSlug
from archipelag.runtimes import images
from archipelag.runtimes.base import JobSpec
from archipelag.runtimes.docker import HostFacts, container_request
from archipelag.sandbox import Tier
from archipelag.settings import Settings

PROBE = """
import ctypes, glob, json
devices = sorted(glob.glob('/dev/nvidia*'))
nvml = ctypes.CDLL('libnvidia-ml.so.1')
assert nvml.nvmlInit_v2() == 0, 'nvmlInit failed'
count = ctypes.c_uint()
assert nvml.nvmlDeviceGetCount_v2(ctypes.byref(count)) == 0, 'nvmlDeviceGetCount failed'
print(json.dumps({'devices': devices, 'gpus': count.value}))
"""

client = docker.from_env()
image_id = images.build_base(client)
workload = Manifest(slug=WorkloadSlug("gpu-check"), name="gpu-check", description="", runtime="container",
                    trust_level=1, price_micro=0, image=images.BASE_IMAGE, image_id=image_id,
                    required_vram_mb=1, requires_gpu=True)
spec = JobSpec(JobId("gpu-check"), workload, {}, Settings().limits_for(Tier.STANDARD))
request = container_request(spec, image_id, HostFacts.detect(gpu=True))
print("device_requests:", request.host_config["device_requests"])
create = {**request.create, "stdin_open": False, "command": ["python3", "-c", PROBE]}
host_config = {**request.host_config, "log_config": {"Type": "json-file", "Config": {}}}
api = client.api
container = api.create_container(**create, host_config=api.create_host_config(**host_config))
try:
    api.start(container)
    status = api.wait(container, timeout=120)["StatusCode"]
    output = api.logs(container).decode()
finally:
    api.remove_container(container, force=True)
print(output)
if status != 0:
    sys.exit(f"the GPU container exited with status {status}")
print("GPU passthrough works")
PYTHON
