"""An operator's suspension of a host on SQLite and PostgreSQL: set with why and when, kept first-come, lifted,
listed, carried in the identity placement reads at registration, and the upgrade of a version-5 database."""

# The fixtures are imported from ledger_contract, and test parameters of the same name look like redefinitions.
# ruff: noqa: F811

from __future__ import annotations

import pytest
from ledger_contract import (  # noqa: F401  (fixtures)
    an_account,
    an_owned_host,
    ledger,
    ledger_url,
    postgres_schema_url,
    postgres_url,
    taken_back,
)

from archipelag import errors
from archipelag.ledger import KarmaKind, Ledger, db


def test_a_suspension_is_kept_with_why_and_when_until_reinstated(ledger: Ledger) -> None:
    owner = an_account(ledger)
    an_owned_host(ledger, owner, "h-1")
    an_owned_host(ledger, owner, "h-2")
    assert ledger.suspended_hosts() == [] and ledger.get_host("h-1").suspended_at is None
    suspended = ledger.suspend_host("h-1", "wrong answers")
    assert suspended.suspended_reason == "wrong answers" and suspended.suspended_at is not None
    again = ledger.suspend_host("h-1", "another admin's reason")  # the first word holds
    assert (again.suspended_reason, again.suspended_at) == ("wrong answers", suspended.suspended_at)
    assert [(h.id, h.suspended_reason) for h in ledger.suspended_hosts()] == [("h-1", "wrong answers")]
    reinstated = ledger.reinstate_host("h-1")
    assert reinstated.suspended_at is None and reinstated.suspended_reason is None
    assert ledger.suspended_hosts() == []
    ledger.reinstate_host("h-2")  # lifting what is not there is fine


def test_placement_reads_the_suspension_with_the_hosts_identity(ledger: Ledger) -> None:
    owner = an_account(ledger)
    an_owned_host(ledger, owner, "h-1")
    identity = ledger.host_identity("h-1")
    assert identity is not None and identity.suspended_reason is None
    ledger.suspend_host("h-1", "cheating")
    identity = ledger.host_identity("h-1")
    assert identity is not None and identity.suspended_reason == "cheating" and not identity.revoked
    ledger.reinstate_host("h-1")
    identity = ledger.host_identity("h-1")
    assert identity is not None and identity.suspended_reason is None


def test_an_unknown_host_cannot_be_suspended_or_reinstated(ledger: Ledger) -> None:
    with pytest.raises(errors.NotFound):
        ledger.suspend_host("nobody", "x")
    with pytest.raises(errors.NotFound):
        ledger.reinstate_host("nobody")
    assert ledger.suspended_hosts() == []


def test_a_version_7_database_upgrades_with_its_hosts_karma_totals_taken_from_their_events(ledger_url: str) -> None:
    old = Ledger(ledger_url)
    old.migrate()
    owner = an_account(old)
    for host_id in ("h-rich", "h-none"):
        an_owned_host(old, owner, host_id)
    for points in (3.0, -1.25, 0.5):
        old.record_karma("h-rich", KarmaKind.ADJUSTMENT, adjustment=points)
    state = old.karma_state("h-rich")
    upgraded = taken_back(old, ledger_url, 7, {"hosts": ("karma_points", "karma_at")})  # totals not on the rows
    try:
        assert upgraded.schema_version() == 7
        assert upgraded.migrate() == db.SCHEMA_VERSION
        assert upgraded.audit() == []  # each row's total is its events' sum, their last time its own
        assert upgraded.karma_state("h-rich").total == pytest.approx(state.total, abs=1e-9) == 2.25
        assert set(upgraded.karma_states(["h-rich", "h-none"])) == {"h-rich", "h-none"}
        upgraded.record_karma("h-none", KarmaKind.ADJUSTMENT, adjustment=-1.0)
        # a negative total recovers a point a day from its event on, so a busy machine reads it a little above -1
        assert -1.0 <= upgraded.karma_state("h-none").total < -0.999 and upgraded.audit() == []
        assert upgraded.migrate() == db.SCHEMA_VERSION  # and again: nothing to do
    finally:
        upgraded.close()


def test_a_version_5_database_upgrades_with_its_hosts(ledger_url: str) -> None:
    old = Ledger(ledger_url)
    old.migrate()
    owner = an_account(old)
    an_owned_host(old, owner, "h-old")
    upgraded = taken_back(old, ledger_url, 5, {"hosts": ("suspended_at", "suspended_reason")})  # no suspensions
    try:
        assert upgraded.schema_version() == 5
        assert upgraded.migrate() == db.SCHEMA_VERSION
        assert upgraded.get_host("h-old").suspended_at is None
        assert upgraded.suspend_host("h-old", "upgraded").suspended_reason == "upgraded"
        assert [h.id for h in upgraded.suspended_hosts()] == ["h-old"]
        assert upgraded.migrate() == db.SCHEMA_VERSION  # and again: nothing to do
    finally:
        upgraded.close()
