"""Removing containers: ``remove_container`` for one we are done with, and the sweep of those a killed host left
behind: each container carries its host process as an owner label, and a host
starting on the same machine removes those whose owner is gone (a warm model worker would otherwise hold its
memory forever; a finished one-shot container would stay as litter)."""

from __future__ import annotations

import contextlib
import socket
import threading
from typing import Final

import docker
import docker.errors
import psutil
import requests.exceptions
from docker.models.containers import Container

OWNER_LABEL: Final = "io.archipelag.owner"  # "<machine>:<pid>:<start time>" of the host process that made it


def remove_container(container: Container) -> None:
    """Kill and remove a container, whatever state it is in; retried while Docker is still busy with it."""
    for _ in range(5):
        try:
            container.remove(force=True, v=True)
            return
        except docker.errors.NotFound:
            return
        except (docker.errors.DockerException, requests.exceptions.RequestException):
            threading.Event().wait(0.2)  # "removal already in progress" and the like


def owner_tag() -> str:
    """This process as an owner label: machine, pid and start time (a reused pid is another process)."""
    me = psutil.Process()
    return f"{socket.gethostname()}:{me.pid}:{me.create_time():.0f}"


def sweep_orphans(client: docker.DockerClient) -> int:
    """Remove containers that a host process on this machine made and left behind when it was killed
    (a warm model worker would otherwise hold its memory forever). Returns how many it removed."""
    machine = socket.gethostname()
    removed = 0
    try:
        found = client.containers.list(all=True, filters={"label": OWNER_LABEL}, ignore_removed=True)
    except (docker.errors.DockerException, requests.exceptions.RequestException):
        return 0
    for container in found:
        owner = str(container.labels.get(OWNER_LABEL, ""))
        name, _, rest = owner.partition(":")
        pid, _, started = rest.partition(":")
        if name != machine or not pid.isdigit() or _process_lives(int(pid), started):
            continue
        with contextlib.suppress(docker.errors.DockerException, requests.exceptions.RequestException):
            container.remove(force=True, v=True)
            removed += 1
    return removed


def _process_lives(pid: int, started: str) -> bool:
    try:
        return f"{psutil.Process(pid).create_time():.0f}" == started
    except psutil.Error:
        return False
