"""Image store: the coordinator's saved images, one ``docker save`` tarball per pinned image ID, for hosts to fetch.

``ImageStore.saved(image_id)`` returns the tarball's path, saving it from the coordinator's engine the first time
(``state_dir/images/<hex>.tar``): saved by ID, so the tarball names no tags, written under a temporary name and
renamed into place, so a reader never sees half of one. Ingress replicas are processes of their own: a file lock
per image makes one of them save it while the others wait and then serve what it wrote. Which IDs may be served
is the API's decision (serve/api_images.py: those the signed catalog pins); this module only saves and finds.
Docker SDK errors are translated here: an engine that does not answer is RuntimeUnavailable (503), an image the
engine does not hold is NotFound (404).
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Final

import docker
import docker.errors
import requests.exceptions

from archipelag.errors import NotFound, RuntimeUnavailable
from archipelag.image_transfer import KeyedLocks, parse_image_id

log = logging.getLogger(__name__)

CHUNK_BYTES: Final = 1 << 20
SUFFIX: Final = ".tar"


class ImageStore:
    """Saved images under ``directory``; ``connect`` opens the coordinator's engine (the local one by default)."""

    def __init__(self, directory: Path, connect: Callable[[], docker.DockerClient] = docker.from_env) -> None:
        self.directory = Path(directory)
        self._connect = connect
        self._locks = KeyedLocks()  # threads of this process; the file lock covers other processes

    def path_of(self, image_id: str) -> Path:
        return self.directory / f"{parse_image_id(image_id).removeprefix('sha256:')}{SUFFIX}"

    def saved(self, image_id: str, pinned: frozenset[str] = frozenset()) -> Path:
        """The tarball of ``image_id``, saved from the engine when this store has none yet. After a save, the
        tarballs of images not in ``pinned`` (when given) go: a changed catalog leaves none behind."""
        path = self.path_of(image_id)
        if path.is_file():
            return path
        with self._locks.hold(image_id), self._file_lock(path):
            if not path.is_file():  # another thread or replica may have saved it while this one waited
                self._save(image_id, path)
                if pinned:
                    self._forget_all_but(pinned | {image_id})
        return path

    def _forget_all_but(self, pinned: frozenset[str]) -> list[Path]:
        keep = {self.path_of(image_id).name for image_id in pinned}
        gone = [path for path in self.directory.glob(f"*{SUFFIX}") if path.name not in keep]
        for path in gone:
            path.unlink(missing_ok=True)
        return gone

    @contextlib.contextmanager
    def _file_lock(self, path: Path) -> Iterator[None]:
        self.directory.mkdir(parents=True, exist_ok=True)
        with open(path.with_suffix(".lock"), "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def _save(self, image_id: str, path: Path) -> None:
        started = time.monotonic()
        partial = path.with_name(f".{path.name}.{os.getpid()}.partial")
        try:
            client = self._connect()
        except (docker.errors.DockerException, requests.exceptions.RequestException) as exc:
            raise RuntimeUnavailable(f"the coordinator's Docker engine does not answer ({exc}), so it cannot "
                                     f"serve image {image_id}; start it (scripts/docker-engine.sh ensure)",
                                     reason="engine_down") from None
        try:
            with partial.open("wb") as out:
                for chunk in client.api.get_image(image_id, chunk_size=CHUNK_BYTES):
                    out.write(chunk)
                out.flush()
                os.fsync(out.fileno())
            os.replace(partial, path)
        except docker.errors.ImageNotFound:
            raise NotFound(f"image {image_id} is pinned by the catalog but not on the coordinator's Docker engine; "
                           "build it there (`make containers`)") from None
        except (docker.errors.DockerException, requests.exceptions.RequestException) as exc:
            raise RuntimeUnavailable(f"the coordinator's Docker engine could not save image {image_id}: {exc}",
                                     reason="engine_down") from None
        finally:
            partial.unlink(missing_ok=True)
            client.close()
        log.info("saved image %s for hosts to fetch (%d bytes, %.1f s)", image_id, path.stat().st_size,
                 time.monotonic() - started)
