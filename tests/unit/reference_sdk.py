"""The reference network's Python SDK, installed for real: a virtualenv of its own outside the checkout (its
module is named ``archipelag``, like ours), and a run of ``reference_sdk_drive.py`` in it.

It installs ``archipelag`` from the package index, or what ``ARCHIPELAG_REFERENCE_SDK`` names (a path to a
checkout or a wheel of it: the package is not on every index). An install that fails is not tried again for a
day, so the unit tests stay fast where the index does not have it.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

CACHE = Path.home() / ".cache" / "archipelag"
SOURCE_ENV = "ARCHIPELAG_REFERENCE_SDK"
RETRY_AFTER_S = 24 * 3600
INSTALL_TIMEOUT_S = 300
DRIVE = Path(__file__).with_name("reference_sdk_drive.py")


def requirement() -> str:
    return os.environ.get(SOURCE_ENV) or "archipelag"


def venv_for(wanted: str) -> Path:
    """One virtualenv per source, so test runs that install from different ones never share or rebuild one."""
    if wanted == "archipelag":
        return CACHE / "reference-sdk-venv"
    return CACHE / f"reference-sdk-venv-{hashlib.sha256(wanted.encode()).hexdigest()[:12]}"


def reference_python() -> tuple[Path | None, str]:
    """The virtualenv's python with the reference SDK in it, or None and why it is not there. Under a lock: test
    runs at the same time wait for one install; a virtualenv, once ready, is never touched again."""
    wanted = requirement()
    venv = venv_for(wanted)
    python, ready, failed = venv / "bin" / "python", venv / ".ready", venv.with_name(venv.name + ".failed.json")
    CACHE.mkdir(parents=True, exist_ok=True)
    with open(CACHE / "reference-sdk.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if ready.exists():
            return python, f"installed from {wanted}"
        if failed.exists():
            failure = json.loads(failed.read_text())
            if time.time() - failure.get("at", 0) < RETRY_AFTER_S:
                return None, str(failure["why"])
        why = _install(wanted, venv)
        if why is None:
            ready.write_text(wanted)
            failed.unlink(missing_ok=True)
            return python, f"installed from {wanted}"
        shutil.rmtree(venv, ignore_errors=True)
        failed.write_text(json.dumps({"requirement": wanted, "at": time.time(), "why": why}))
        return None, why


def _install(wanted: str, venv: Path) -> str | None:
    """Install the reference SDK into a fresh virtualenv; None when done, else what went wrong."""
    try:
        subprocess.run([sys.executable, "-m", "venv", "--clear", str(venv)], check=True, capture_output=True,
                       timeout=120)
        done = subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "-q", "--timeout", "15",
                               "--disable-pip-version-check", wanted],
                              check=False, capture_output=True, text=True, timeout=INSTALL_TIMEOUT_S)
    except (subprocess.SubprocessError, OSError) as exc:
        return f"could not install the reference SDK ({wanted}): {exc}"
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["pip failed"])[-1]
        return (f"could not install the reference SDK ({wanted}) into {venv}: {last}; set {SOURCE_ENV} to a "
                "checkout or wheel of it")
    return None


def drive(python: Path, base_url: str, api_key: str, cwd: Path) -> dict[str, Any]:
    """Run every public method of its clients against the network; the report, method → ok or raised."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV"))}
    done = subprocess.run([str(python), "-I", str(DRIVE), base_url, api_key], check=False, capture_output=True,
                          text=True, cwd=cwd, env=env, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    report: dict[str, Any] = json.loads(done.stdout)
    return report
