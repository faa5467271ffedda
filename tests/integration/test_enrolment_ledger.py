"""Enrolment in the ledger, against SQLite and PostgreSQL: pairing codes, approval, keys bound to ids, owners,
revocation, and the upgrade of a version-2 database."""

# The fixtures are imported from ledger_contract, and test parameters of the same name look like redefinitions.
# ruff: noqa: F811

from __future__ import annotations

import time

import pytest
from ledger_contract import (  # noqa: F401  (fixtures: ledger, ledger_url, postgres_*)
    an_account,
    ledger,
    ledger_url,
    postgres_schema_url,
    postgres_url,
)
from sqlalchemy import text

from archipelag import identity
from archipelag.errors import Conflict, HostRefused, NotFound
from archipelag.ledger import Ledger, db
from archipelag.ledger.records import HostIdentity, Pairing

HARDWARE = {"cpu_cores": 4, "ram_mb": 8192}


def a_key() -> str:
    return identity.public_hex(identity.generate_key())


def test_an_approved_code_enrols_the_host_under_its_keys_id_owned_by_the_approver(ledger: Ledger) -> None:
    owner = an_account(ledger)
    key = a_key()
    code, expires_at = ledger.request_pairing(key, "attic", "eu-west", HARDWARE, 600)
    assert len(code) == identity.CODE_LENGTH and set(code) <= set(identity.CODE_ALPHABET)
    waiting = ledger.enrolment_status(key)
    assert isinstance(waiting, Pairing) and waiting.host_id is None and waiting.expires_at == expires_at

    host = ledger.approve_pairing(owner.id, code.lower())  # people type codes in any case
    assert host.id == identity.host_id_for(key) and host.owner_account_id == owner.id and host.name == "attic"
    assert ledger.host_identity(host.id) == HostIdentity(host.id, key, owner.id, revoked=False)
    assert ledger.enrolment_status(key) == HostIdentity(host.id, key, owner.id, revoked=False)
    assert [h.id for h in ledger.owned_hosts(owner.id)] == [host.id]


def test_a_code_is_single_use_and_a_wrong_or_expired_code_is_refused(ledger: Ledger) -> None:
    owner = an_account(ledger)
    code, _ = ledger.request_pairing(a_key(), "a", "eu-west", HARDWARE, 600)
    ledger.approve_pairing(owner.id, code)
    with pytest.raises(NotFound):
        ledger.approve_pairing(owner.id, code)
    with pytest.raises(NotFound):
        ledger.approve_pairing(owner.id, "ACDEFG" if code != "ACDEFG" else "ACDEFH")
    stale, _ = ledger.request_pairing(a_key(), "b", "eu-west", HARDWARE, 0.5)
    time.sleep(0.6)
    with pytest.raises(NotFound):
        ledger.approve_pairing(owner.id, stale)


def test_a_new_code_replaces_the_keys_old_one(ledger: Ledger) -> None:
    owner = an_account(ledger)
    key = a_key()
    first, _ = ledger.request_pairing(key, "a", "eu-west", HARDWARE, 600)
    second, _ = ledger.request_pairing(key, "a", "eu-west", HARDWARE, 600)
    with pytest.raises(NotFound):
        ledger.approve_pairing(owner.id, first)
    assert ledger.approve_pairing(owner.id, second).id == identity.host_id_for(key)
    with pytest.raises(Conflict, match="already enrolled"):
        ledger.request_pairing(key, "a", "eu-west", HARDWARE, 600)


def test_an_id_stays_bound_to_its_first_key_and_its_owner(ledger: Ledger) -> None:
    owner, other = an_account(ledger), an_account(ledger)
    key = a_key()
    ledger.enrol_host("island-1", key, owner.id, "island-1", "eu-west")
    ledger.enrol_host("island-1", key, owner.id, "island-1", "eu-west")  # again, the same: fine
    with pytest.raises(Conflict, match="another key"):
        ledger.enrol_host("island-1", a_key(), owner.id, "island-1", "eu-west")
    with pytest.raises(Conflict, match="already enrolled as host island-1"):
        ledger.enrol_host("island-2", key, owner.id, "island-2", "eu-west")
    with pytest.raises(Conflict, match="another account"):
        ledger.enrol_host("island-1", key, other.id, "island-1", "eu-west")
    assert ledger.host_identity("never-enrolled") is None


def test_only_the_owner_or_an_admin_revokes_and_a_revoked_host_stays_out(ledger: Ledger) -> None:
    owner, stranger = an_account(ledger), an_account(ledger)
    key = a_key()
    ledger.enrol_host("h-1", key, owner.id, "h-1", "eu-west")
    with pytest.raises(NotFound):
        ledger.revoke_host("h-1", stranger.id, False, "not mine")
    host = ledger.revoke_host("h-1", owner.id, False, "stolen laptop")
    assert host.revoked_at is not None
    assert ledger.host_identity("h-1") == HostIdentity("h-1", key, owner.id, revoked=True)  # type: ignore[arg-type]
    with pytest.raises(HostRefused, match="revoked"):
        ledger.enrol_host("h-1", key, owner.id, "h-1", "eu-west")
    ledger.enrol_host("h-2", a_key(), owner.id, "h-2", "eu-west")
    ledger.revoke_host("h-2", stranger.id, True, "admin")  # an admin may


def test_a_version_2_database_upgrades_with_its_hosts(ledger_url: str) -> None:
    engine = db.create_engine_for(ledger_url)
    with engine.begin() as connection:  # version 2's hosts table, with a host in it
        db._v1_initial(connection)
        connection.exec_driver_sql("DROP TABLE host_pairings")
        for column in ("owner_account_id", "public_key", "enrolled_at", "revoked_at", "revoked_reason"):
            if column == "owner_account_id":
                connection.exec_driver_sql("DROP INDEX ix_hosts_owner_account_id")
            connection.exec_driver_sql(f"ALTER TABLE hosts DROP COLUMN {column}")
        db._v2_people(connection)
        connection.execute(text("INSERT INTO schema_version (version, applied_at) VALUES (1, :t), (2, :t)"),
                           {"t": "2026-01-01 00:00:00"})
        connection.execute(text("INSERT INTO hosts (id, name, region, status, created_at) "
                                "VALUES ('old', 'old', 'eu-west', 'offline', '2026-01-01 00:00:00')"))
    engine.dispose()
    upgraded = Ledger(ledger_url)
    try:
        assert upgraded.migrate() == db.SCHEMA_VERSION
        assert upgraded.host_identity("old") is None  # recorded, never enrolled: placement refuses it
        owner = an_account(upgraded)
        upgraded.enrol_host("old", a_key(), owner.id, "old", "eu-west")
        assert upgraded.get_host("old").owner_account_id == owner.id
    finally:
        upgraded.close()
