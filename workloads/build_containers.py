"""Build: the container workloads' images, offline, from local files.

    .venv/bin/python workloads/build_containers.py                # stage and build every container workload
    .venv/bin/python workloads/build_containers.py pdf-extract    # only these slugs
    .venv/bin/python workloads/build_containers.py --except sd-diffusers   # all but these
    .venv/bin/python workloads/build_containers.py --stage-only   # stage vendor/ dirs, no Docker needed
    .venv/bin/python workloads/build_containers.py --offline      # never download; fail if a wheel is missing

A container workload is a folder with ``manifest.toml`` (runtime = "container", image = "archipelag/<slug>:1"),
a ``Dockerfile`` (``ARG BASE`` / ``FROM ${BASE}``, ``COPY vendor/ /app/vendor/``), its program, and an optional
``requirements.txt`` of pinned third-party packages. Staging fills the folder's git-ignored ``vendor/`` with
those packages, installed with pip from a wheel cache outside the repository (``--wheels``, default
``~/.cache/archipelag/wheels``; wheels missing there are fetched once with ``pip download``; llama-cpp-python,
which has no binary wheel, from the cache's folder that ``make llama-wheel`` names for its build options), plus
``container_sdk/workload_io.py``. The wheels are the ones for this machine's CPython, which is the interpreter
of the base image ``archipelag/base:py311`` (``archipelag.runtimes.images``). A stamp in ``vendor/`` skips
staging while nothing that goes into it changed, so files keep their times and the image build stays cached; what
was staged is kept under ``~/.cache/archipelag/staged/<slug>-<stamp>`` and linked into other checkouts.

A compiled wheel (Pillow) may link system libraries that manylinux wheels may assume (libpthread, libdl,
libstdc++, libgcc_s, …) but the base image lacks, because it holds only what the interpreter links. Staging copies
those, as ``ldd`` resolves them here, into the folder's git-ignored ``system-libs/``, which such a Dockerfile copies
to ``/usr/lib`` (searched after the loader's cache, so on a public base the image's own libraries still win).
The image is then built by ``archipelag.runtimes.images.build_workload`` (base built first when absent); its ID is
printed, and ``archipelag catalog build`` pins it.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

from archipelag.catalog import Manifest, load_catalog

WORKLOADS = Path(__file__).resolve().parent
SDK = WORKLOADS / "container_sdk" / "workload_io.py"
DEFAULT_WHEELS = Path.home() / ".cache" / "archipelag" / "wheels"
LOCAL_WHEELS = (Path("/opt/wheels"),)  # wheels that lie on this kind of machine (torch's CPU build)
# llama-cpp-python's options; the Makefile compiles its wheel into the cache folder named for this file's SHA-256
LLAMA_CMAKE = WORKLOADS / "llama-cpp-python.cmake"
STAMP = ".staged"
STAGED = Path.home() / ".cache" / "archipelag" / "staged"  # staged folders by workload and stamp, for every checkout
STAGED_KEPT = 3  # per workload: checkouts at other commits (or with edits) keep theirs
LAYOUT_VERSION = "1"  # bump when staging changes what goes into vendor/
_PIP = [sys.executable, "-m", "pip", "--disable-pip-version-check", "--no-input"]


def container_workloads(slugs: list[str] | None = None) -> list[Manifest]:
    """The container workloads with a Dockerfile, in slug order; all of them when ``slugs`` is empty."""
    found = [m for m in load_catalog(WORKLOADS).values()
             if m.runtime == "container" and (Path(m.directory) / "Dockerfile").is_file()]
    if slugs:
        unknown = sorted(set(slugs) - {m.slug for m in found})
        if unknown:
            raise SystemExit(f"no container workload named {', '.join(unknown)} in {WORKLOADS}")
        found = [m for m in found if m.slug in slugs]
    return found


def stamp_of(folder: Path) -> str:
    """What identifies a staged vendor/: the pins, the SDK, and the interpreter the wheels are for."""
    requirements = folder / "requirements.txt"
    digest = hashlib.sha256(f"{LAYOUT_VERSION}|{sys.version}|{sysconfig.get_platform()}\n".encode())
    digest.update(requirements.read_bytes() if requirements.is_file() else b"")
    digest.update(SDK.read_bytes())
    if requirements.is_file() and b"llama-cpp-python" in requirements.read_bytes():
        digest.update(llama_folder().encode())  # other build options: another wheel
    return digest.hexdigest()


def llama_folder() -> str:
    """The wheel cache's folder for llama-cpp-python built with this checkout's options (as the Makefile names it)."""
    return f"llama-cpp-python-0.3.36-{hashlib.sha256(LLAMA_CMAKE.read_bytes()).hexdigest()[:16]}"


def stage(folder: Path, wheels: Path, offline: bool) -> bool:
    """Fill ``folder/vendor`` and ``folder/system-libs``; False when it was already staged from the same inputs.

    What is staged is kept outside the checkout, under its stamp (``STAGED``), and hard-linked into the folder: a
    clean checkout (CI) gets it in about a second instead of installing ~1 GB of wheels again."""
    vendor = folder / "vendor"
    stamp = stamp_of(folder)
    if (vendor / STAMP).is_file() and (vendor / STAMP).read_text().strip() == stamp:
        return False
    staged = STAGED / f"{folder.name}-{stamp[:16]}"
    if not (staged / "vendor" / STAMP).is_file():
        _stage_into(staged, folder, wheels, offline, stamp)
    for name in ("system-libs", "vendor"):  # vendor/ last: its stamp says the folder is staged
        partial = folder / f".{name}.partial"
        shutil.rmtree(partial, ignore_errors=True)
        if (staged / name).is_dir():
            shutil.copytree(staged / name, partial, symlinks=True, copy_function=_link_or_copy)
        shutil.rmtree(folder / name, ignore_errors=True)
        if partial.is_dir():
            partial.rename(folder / name)
    return True


def _stage_into(staged: Path, folder: Path, wheels: Path, offline: bool, stamp: str) -> None:
    """Install ``folder``'s requirements and the SDK into ``staged/vendor``, its system libraries into
    ``staged/system-libs``; of the workload's stagings the newest ``STAGED_KEPT`` are kept."""
    partial = staged.with_name(f"{staged.name}.partial-{os.getpid()}")
    shutil.rmtree(partial, ignore_errors=True)
    vendor = partial / "vendor"
    vendor.mkdir(parents=True)
    requirements = folder / "requirements.txt"
    if requirements.is_file() and requirements.read_text().strip():
        _install(requirements, vendor, wheels, offline)
    shutil.rmtree(vendor / "bin", ignore_errors=True)  # console scripts point at this machine's interpreter
    shutil.copy2(SDK, vendor / SDK.name)
    _stage_system_libs(vendor, partial / "system-libs")
    (vendor / STAMP).write_text(stamp + "\n")
    try:
        partial.rename(staged)
    except OSError:  # another build staged the same inputs meanwhile
        shutil.rmtree(partial, ignore_errors=True)
    kept = [path for path in STAGED.glob(f"{folder.name}-*") if path.name.removeprefix(f"{folder.name}-").isalnum()]
    for older in sorted(kept, key=lambda path: path.stat().st_mtime, reverse=True)[STAGED_KEPT:]:
        shutil.rmtree(older, ignore_errors=True)  # checkouts keep their links to its files


def _link_or_copy(source: str, target: str) -> None:
    try:
        os.link(source, target)
    except OSError:  # another filesystem
        shutil.copy2(source, target)


def _stage_system_libs(vendor: Path, out: Path) -> None:
    """Copy into ``out`` the system libraries that ``vendor``'s native modules link and the interpreter does not."""
    shutil.rmtree(out, ignore_errors=True)
    modules = [p for p in vendor.rglob("*.so*") if p.is_file()]
    if not modules:
        return
    interpreter = Path(getattr(sys, "_base_executable", sys.executable)).resolve()
    dynload = Path(sysconfig.get_paths()["stdlib"]) / "lib-dynload"
    present = {path.name for path in _linked([interpreter, *dynload.glob("*.so")])}
    needed = [path for path in _linked(modules) if not path.is_relative_to(vendor) and path.name not in present]
    if needed:
        out.mkdir()
        for library in needed:
            shutil.copy2(library.resolve(), out / library.name)


def _linked(binaries: list[Path]) -> set[Path]:
    """The shared libraries ``binaries`` load, as ``ldd`` resolves them on this machine."""
    result = subprocess.run(["ldd", *map(str, binaries)], capture_output=True, text=True, check=False)
    found: set[Path] = set()
    for line in result.stdout.splitlines():
        words = line.split()
        if line.startswith("\t") and "=>" in words and len(words) > 3 and words[2].startswith("/"):
            found.add(Path(words[2]))
    return found


def _local_wheels(wheels: Path) -> list[str]:
    """``--find-links`` for the wheel cache, its llama-cpp-python folder, and for wheels this machine ships (torch's
    CPU wheel, DESIGN §9)."""
    return [arg for folder in (wheels, wheels / llama_folder(), *LOCAL_WHEELS) if folder.is_dir()
            for arg in ("--find-links", str(folder))]


def _install(requirements: Path, target: Path, wheels: Path, offline: bool) -> None:
    wheels.mkdir(parents=True, exist_ok=True)
    install = [*_PIP, "install", "--quiet", "--no-index", *_local_wheels(wheels), "--only-binary=:all:",
               "--no-compile", "--target", str(target), "-r", str(requirements)]
    if subprocess.run(install, check=False, capture_output=True).returncode == 0:
        return
    if offline:
        raise SystemExit(f"{requirements}: a pinned wheel is not in {wheels}, and --offline forbids fetching it")
    print(f"fetching the wheels of {requirements.relative_to(WORKLOADS)} into {wheels}", file=sys.stderr)
    _run([*_PIP, "download", "--quiet", "--only-binary=:all:", *_local_wheels(wheels), "--dest", str(wheels),
          "-r", str(requirements)])
    _run(install)


def _run(command: list[str]) -> None:
    result = subprocess.run(command, check=False, capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(f"{' '.join(command[2:6])} … failed:\n{result.stderr[-2000:]}")


def build(manifests: list[Manifest]) -> dict[str, str]:
    """Build every workload's image on the local engine; slug → image ID."""
    import docker
    import docker.errors

    from archipelag.errors import ConfigError
    from archipelag.runtimes.images import build_workload

    try:
        client = docker.from_env()
        client.ping()
    except docker.errors.DockerException as exc:
        raise SystemExit(f"the Docker engine does not answer ({exc}); start it with "
                         "scripts/docker-engine.sh ensure") from None
    try:
        return {m.slug: build_workload(client, m) for m in manifests}
    except ConfigError as exc:
        raise SystemExit(str(exc)) from None
    finally:
        client.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("slugs", nargs="*", help="workloads to build (default: every container workload)")
    parser.add_argument("--wheels", type=Path, default=DEFAULT_WHEELS, help="the wheel cache")
    parser.add_argument("--offline", action="store_true", help="never download a wheel")
    parser.add_argument("--stage-only", action="store_true", help="stage vendor/ dirs, build no image")
    parser.add_argument("--except", dest="skip", action="append", default=[], metavar="SLUG",
                        help="leave this workload out (another step builds it)")
    args = parser.parse_args()
    manifests = [m for m in container_workloads(args.slugs) if m.slug not in args.skip]
    for manifest in manifests:
        if stage(Path(manifest.directory), args.wheels, args.offline):
            print(f"staged {manifest.slug}/vendor", file=sys.stderr)
    if args.stage_only:
        return
    for slug, image_id in build(manifests).items():
        print(f"{slug} {image_id}")


if __name__ == "__main__":
    main()
