"""An embedded network's stop: a host's record that vanishes while it is read is a host off the cluster, and
whatever goes wrong with a host as it leaves, the coordinator still stops (the process leaves its Ray cluster)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from archipelag.network import EmbeddedNetwork, LocalHost
from archipelag.settings import Settings


@pytest.fixture
def host(tmp_path: Path) -> Any:
    process = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    yield LocalHost("h1", "eu-west", process, tmp_path / "join.log")
    process.kill()
    process.wait()


def test_a_record_dropped_between_two_looks_is_no_record(tmp_path: Path, host: LocalHost,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    settings = Settings(state_dir=tmp_path)
    path = tmp_path / "hosts" / "h1.json"
    path.parent.mkdir()
    path.write_text('{"ray_pid": 4242}')
    assert host.record(settings) == {"ray_pid": 4242} and not host.off_cluster(settings)
    read_text = Path.read_text

    def dropped_first(self: Path, *args: Any, **kwargs: Any) -> str:
        self.unlink(missing_ok=True)  # the host leaves just as it is looked at
        return read_text(self, *args, **kwargs)

    monkeypatch.setattr(Path, "read_text", dropped_first)
    assert host.off_cluster(settings) and host.ray_pid == 4242


class Coordinator:
    stopped = False

    def stop(self) -> None:
        self.stopped = True


def test_the_coordinator_stops_whatever_a_host_does_as_it_leaves(tmp_path: Path, host: LocalHost,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    def unreadable(self: LocalHost, settings: Settings) -> dict[str, object]:
        raise PermissionError("the host's record cannot be read")

    monkeypatch.setattr(LocalHost, "record", unreadable)
    coordinator = Coordinator()
    network = EmbeddedNetwork(Settings(state_dir=tmp_path), coordinator, "key", hosts=[host])  # type: ignore[arg-type]
    with pytest.raises(PermissionError):
        network.stop(leave_grace_s=0.1)
    assert coordinator.stopped
