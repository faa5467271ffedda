"""Images: building the container images the Docker runtime runs, locally, and returning their IDs.

No registry can be reached from a host here, so the base image ``archipelag/base:py311`` is built from the
machine's own CPython: ``docker-base/Dockerfile`` copies a staged ``rootfs/`` (the interpreter, its standard
library without tests or tkinter, the shared libraries they link as ``ldd`` reports them, ``/etc/passwd`` with the
non-root ``workload`` user 10001, ``/tmp`` mode 1777) into an empty image. Each workload image is then built from
``workloads/<slug>/Dockerfile`` with ``--build-arg BASE=archipelag/base:py311``; on a real deployment the same
Dockerfile builds from a public python base.

The catalog pins a workload by image ID (``sha256:…``; there is no registry to give digests), so every build
returns that ID. Builds are cached: an image carries the hash of what went into it (label
``io.archipelag.content-hash``) and is also tagged by it (``<repository>:content-<hash prefix>``), and a build whose
content tag is already on the engine is skipped (its own tag is put back if another checkout moved it). The
lookup is by that tag, not by the label: an image built FROM a workload image inherits its labels, and a lookup by
label handed such a derived image back as the workload's. The hash is of the files' bytes, not their times, so a
fresh clone of the same commit finds the images an earlier clone built.
"""

from __future__ import annotations

import hashlib
import io
import os
import subprocess
import sys
import sysconfig
import tarfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Final

import docker
import docker.errors
from docker.utils import parse_repository_tag

from archipelag.catalog import Manifest
from archipelag.errors import ConfigError
from archipelag.settings import REPO_ROOT

BASE_IMAGE: Final = "archipelag/base:py311"
BASE_DIR: Final = REPO_ROOT / "docker-base"  # not docker/: a top-level docker folder shadows the SDK for mypy
CONTENT_HASH_LABEL: Final = "io.archipelag.content-hash"
LAYOUT_VERSION: Final = "1"  # bump when the staging below changes what goes into the base image

_SKIP_STDLIB_DIRS: Final = frozenset({"site-packages", "test", "tkinter", "idlelib", "turtledemo", "ensurepip",
                                      "lib2to3", "pydoc_data", "__phello__"})
_SKIP_DYNLOAD_PREFIXES: Final = ("_test", "_tkinter", "_curses", "readline", "nis.", "ossaudiodev", "_xx",
                                 "xxlimited", "_ctypes_test")


@dataclass(frozen=True)
class _Entry:
    """One member of a build context: a file copied from ``source``, inline ``data``, a directory or a link."""

    name: str
    mode: int = 0o644
    source: Path | None = None
    data: bytes | None = None
    directory: bool = False
    link_to: str | None = None

    def fingerprint(self) -> str:
        """What identifies this member's content: the SHA-256 of a file's or inline data's bytes."""
        if self.source is not None:
            content = _file_digest(self.source)
        elif self.data is not None:
            content = hashlib.sha256(self.data).hexdigest()
        else:
            content = self.link_to or "dir"
        return f"{self.name}|{self.mode:o}|{content}"


_digests: dict[tuple[int, int, int, int], str] = {}  # (device, inode, size, mtime): a file's SHA-256


def _file_digest(path: Path) -> str:
    """A file's SHA-256, hashed once per process while it is unchanged (an image context is ~1 GB with the
    diffusers wheels; staged files are hard links shared by every checkout, so their inode is the same)."""
    stat = path.stat()
    key = (stat.st_dev, stat.st_ino, stat.st_size, stat.st_mtime_ns)
    if key not in _digests:
        with path.open("rb") as fh:
            _digests[key] = hashlib.file_digest(fh, "sha256").hexdigest()
    return _digests[key]


# --- building ---------------------------------------------------------------------------------------


def build_base(client: docker.DockerClient, python: Path | None = None) -> str:
    """Build ``archipelag/base:py311`` from the CPython at ``python`` (default: this interpreter's base);
    return its image ID. Skipped when an image with the same content is already tagged."""
    entries = [*_files_of(BASE_DIR, skip={"passwd", "group"}), *_python_rootfs(python or Path(_this_python()))]
    return _build(client, entries, BASE_IMAGE, buildargs={})


def build_image(client: docker.DockerClient, context_dir: Path, tag: str, base: str = BASE_IMAGE) -> str:
    """Build the image for ``context_dir/Dockerfile`` (``ARG BASE`` … ``FROM ${BASE}``) as ``tag`` on ``base``;
    return its image ID. The base is built first when it is ``archipelag/base:py311`` and absent."""
    if not (context_dir / "Dockerfile").is_file():
        raise ConfigError(f"{context_dir} has no Dockerfile to build {tag} from")
    base_id = build_base(client) if base == BASE_IMAGE else image_id(client, base)
    if base_id is None:
        raise ConfigError(f"base image {base} is not on this machine; build or load it first")
    entries = list(_files_of(context_dir))
    return _build(client, entries, tag, buildargs={"BASE": base}, salt=base_id)


def build_workload(client: docker.DockerClient, manifest: Manifest, base: str = BASE_IMAGE) -> str:
    """Build a container workload's image from its folder, tagged as its manifest's ``image``."""
    if manifest.runtime != "container" or not manifest.image:
        raise ConfigError(f"workload {manifest.slug} is not a container workload with an `image` to build")
    return build_image(client, Path(manifest.directory), manifest.image, base)


def image_id(client: docker.DockerClient, reference: str) -> str | None:
    """The local ID of ``reference`` (repository:tag or an ID); None when it is not here."""
    try:
        return str(client.images.get(reference).id)
    except docker.errors.ImageNotFound:
        return None
    except docker.errors.DockerException as exc:
        raise ConfigError(f"the Docker engine could not look up image {reference}: {exc}") from None


def _build(client: docker.DockerClient, entries: list[_Entry], tag: str, buildargs: dict[str, str],
           salt: str = "") -> str:
    content_hash = _content_hash(entries, buildargs, salt)
    repository = parse_repository_tag(tag)[0]
    content_tag = f"content-{content_hash.removeprefix('sha256:')[:32]}"
    try:
        built = client.images.get(f"{repository}:{content_tag}")
        # This content was built before: by this checkout, an earlier clone, or another checkout.
        if tag not in built.tags:
            built.tag(*parse_repository_tag(tag))
        return str(built.id)
    except docker.errors.ImageNotFound:
        pass
    except docker.errors.DockerException as exc:
        raise ConfigError(f"the Docker engine could not look up image {tag}: {exc}") from None
    context = _tar(entries)
    try:
        image, _logs = client.images.build(fileobj=context, custom_context=True, tag=tag, buildargs=buildargs,
                                           labels={CONTENT_HASH_LABEL: content_hash}, rm=True, forcerm=True)
        image.tag(repository, content_tag)
    except docker.errors.BuildError as exc:
        tail = "".join(str(line.get("stream") or line.get("error") or "") for line in exc.build_log)[-2000:]
        raise ConfigError(f"building image {tag} failed: {exc.msg}\n{tail}") from None
    except docker.errors.DockerException as exc:
        raise ConfigError(f"building image {tag} failed: {exc}") from None
    return str(image.id)


def _content_hash(entries: Iterable[_Entry], buildargs: dict[str, str], salt: str) -> str:
    digest = hashlib.sha256(f"{LAYOUT_VERSION}|{sorted(buildargs.items())}|{salt}".encode())
    for entry in sorted(entries, key=lambda e: e.name):
        digest.update(entry.fingerprint().encode() + b"\n")
    return "sha256:" + digest.hexdigest()


def _tar(entries: Iterable[_Entry]) -> io.BytesIO:
    """The build context as an uncompressed tar with fixed owners and times, so it is reproducible."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for entry in sorted(entries, key=lambda e: e.name):
            info = tarfile.TarInfo(entry.name)
            info.mode, info.mtime, info.uid, info.gid = entry.mode, 0, 0, 0
            if entry.directory:
                info.type = tarfile.DIRTYPE
                tar.addfile(info)
            elif entry.link_to is not None:
                info.type, info.linkname = tarfile.SYMTYPE, entry.link_to
                tar.addfile(info)
            elif entry.source is not None:
                info.size = entry.source.stat().st_size
                with entry.source.open("rb") as fh:
                    tar.addfile(info, fh)
            else:
                data = entry.data or b""
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    buffer.seek(0)
    return buffer


def _files_of(directory: Path, skip: Iterable[str] = ()) -> Iterator[_Entry]:
    """Every regular file under ``directory`` as a context member, keeping its mode (e.g. executable)."""
    skipped = set(skip)
    for path in sorted(directory.rglob("*")):
        relative = path.relative_to(directory).as_posix()
        if path.is_file() and not path.is_symlink() and relative not in skipped and "__pycache__" not in relative:
            yield _Entry(relative, path.stat().st_mode & 0o7777, source=path)


# --- staging the machine's Python -------------------------------------------------------------------


@cache  # staging walks ~2,000 files and runs ldd: once per process is enough
def _python_rootfs(python: Path) -> tuple[_Entry, ...]:
    """``rootfs/``: the interpreter as /usr/local/bin/python3, its stdlib under /usr/local/lib/python3.X, the
    shared libraries they need at the paths ``ldd`` gives (libraries from the Python prefix go to /usr/lib,
    a directory the loader always searches), /etc/passwd and /etc/group, and /tmp with mode 1777."""
    executable = Path(os.path.realpath(python))
    stdlib = Path(_stdlib_of(executable))
    prefix = stdlib.parent.parent
    version = stdlib.name  # "python3.11"
    entries = [
        _Entry("rootfs/usr/local/bin/python3", 0o755, source=executable),
        _Entry(f"rootfs/usr/local/bin/{version}", link_to="python3"),
        _Entry("rootfs/usr/local/bin/python", link_to="python3"),
        _Entry("rootfs/tmp", 0o1777, directory=True),
        _Entry("rootfs/etc/passwd", source=BASE_DIR / "passwd"),
        _Entry("rootfs/etc/group", source=BASE_DIR / "group"),
    ]
    native = [executable]
    for path in sorted(stdlib.rglob("*")):
        relative = path.relative_to(stdlib)
        if not path.is_file() or _skipped(relative):
            continue
        mode = path.stat().st_mode & 0o755
        entries.append(_Entry(f"rootfs/usr/local/lib/{version}/{relative.as_posix()}", mode, source=path))
        if path.suffix == ".so":
            native.append(path)
    for library in _linked_libraries(native):
        inside_prefix = library.is_relative_to(prefix)
        target = f"/usr/lib/{library.name}" if inside_prefix else library.as_posix()
        entries.append(_Entry(f"rootfs{target}", 0o755, source=Path(os.path.realpath(library))))
    return tuple(entries)


def _stdlib_of(executable: Path) -> str:
    if executable == Path(os.path.realpath(_this_python())):
        return sysconfig.get_paths()["stdlib"]
    return subprocess.run([str(executable), "-c", "import sysconfig; print(sysconfig.get_paths()['stdlib'])"],
                          check=True, capture_output=True, text=True).stdout.strip()


def _this_python() -> str:
    """The interpreter running this, outside any virtualenv."""
    return str(getattr(sys, "_base_executable", None) or sys.executable)


def _skipped(relative: Path) -> bool:
    parts = relative.parts
    if parts[0] in _SKIP_STDLIB_DIRS or parts[0].startswith("config-"):
        return True
    if parts[0] == "lib-dynload" and relative.name.startswith(_SKIP_DYNLOAD_PREFIXES):
        return True
    return relative.suffix == ".pyc" and ".opt-" in relative.name


def _linked_libraries(binaries: list[Path]) -> list[Path]:
    """The shared libraries ``binaries`` load (and the loader itself), as ``ldd`` resolves them here."""
    result = subprocess.run(["ldd", *map(str, binaries)], capture_output=True, text=True, check=False)
    found: set[Path] = set()
    for line in result.stdout.splitlines():
        if not line.startswith("\t"):
            continue
        words = line.split()
        path = words[2] if "=>" in words and len(words) > 2 else words[0]
        if path.startswith("/"):
            found.add(Path(path))
    if not found:
        raise ConfigError(f"ldd found no libraries for {binaries[0]}; is it a dynamically linked CPython?")
    return sorted(found)
