"""Shared test wiring: Ray's environment, CI's rule that a capability skip is a failure, and the ledger's books
checked after every test that made a ledger."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

# Ray reads these when it starts; set them before any test imports ray. Ray's files (every node's sockets and
# session logs, this process's and the networks' its tests start) go to a folder of this pytest process's own,
# removed when its session ends; short, as Ray's socket paths must stay under 107 bytes.
OWN_RAY_TMPDIR = "RAY_TMPDIR" not in os.environ  # one the caller chose is the caller's to keep
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_TMPDIR", f"/tmp/ap-t{os.getpid()}")
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


@pytest.fixture(scope="session", autouse=True)
def ray_files_go_with_the_session() -> Iterator[None]:
    """Set up first and torn down last: by then every network and node the tests started has stopped."""
    yield
    if OWN_RAY_TMPDIR:
        shutil.rmtree(os.environ["RAY_TMPDIR"], ignore_errors=True)


# --- the double-entry invariant after every test ------------------------------------------------------------


@pytest.fixture(autouse=True)
def ledger_books_balance(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Every SQLite ledger a test opens in this process is audited when the test ends: all books sum to zero,
    each transfer balances, running balances match their postings, and no user, earnings, escrow or payouts book
    is below zero. A PostgreSQL schema is audited by ``ledger_contract.fresh_schema`` instead, before it is dropped
    (which is before this runs). A network's ledger actor writes to the database its coordinator opened here, so
    its books are audited too."""
    from archipelag.ledger import db

    opened: list[str] = []
    create = db.create_engine_for

    def recording(url: str) -> Any:
        opened.append(url)
        return create(url)

    monkeypatch.setattr(db, "create_engine_for", recording)
    yield
    monkeypatch.setattr(db, "create_engine_for", create)
    from ledger_contract import audit_ledger

    problems: list[str] = []
    for url in dict.fromkeys(opened):
        path = url.removeprefix("sqlite:///")
        if url.startswith("sqlite:///") and Path(path).exists():
            problems += audit_ledger(url)
    assert not problems, "the ledger's books do not balance after this test: " + "; ".join(problems)
