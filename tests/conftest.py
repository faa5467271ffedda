"""Shared test wiring: Ray's environment, and CI's rule that a capability skip is a failure."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# Ray reads these when it starts; set them before any test imports ray.
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_TMPDIR", "/tmp/archipelag-test-ray")
Path(os.environ["RAY_TMPDIR"]).mkdir(parents=True, exist_ok=True)
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

# Capabilities a CI machine must have: a skip of a test marked with one of these fails there.
REQUIRED_IN_CI = ("postgres", "docker", "integration", "e2e")


def _strict() -> bool:
    return bool(os.environ.get("CI") or os.environ.get("ARCHIPELAG_REQUIRE_ALL"))


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]):  # type: ignore[no-untyped-def]
    outcome = yield
    report = outcome.get_result()
    if report.skipped and _strict() and any(item.get_closest_marker(m) for m in REQUIRED_IN_CI):
        report.outcome = "failed"
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        report.longrepr = f"skipped in CI, where this capability is required: {reason}"
