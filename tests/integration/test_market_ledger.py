"""The exchange's storage on SQLite and PostgreSQL: hosts' asks, accounts' saved bids, a job's bid and clearing
price, the market's history from settled jobs, and the upgrade of a version-4 database."""

# The fixtures are imported from ledger_contract, and test parameters of the same name look like redefinitions.
# ruff: noqa: F811

from __future__ import annotations

from datetime import timedelta

import pytest
from ledger_contract import (  # noqa: F401  (fixtures)
    MICRO,
    a_manifest,
    an_account,
    an_owned_host,
    ledger,
    ledger_url,
    path_to,
    postgres_schema_url,
    postgres_url,
)
from sqlalchemy import text

from archipelag import errors
from archipelag.ledger import Ledger, db
from archipelag.ledger.tables import utcnow
from archipelag.lifecycle import JobStatus


def test_a_hosts_asks_are_replaced_whole_and_read_back_by_host(ledger: Ledger) -> None:
    owner = an_account(ledger)
    an_owned_host(ledger, owner, "h-1")
    an_owned_host(ledger, owner, "h-2")
    assert ledger.asking_prices() == {}
    assert ledger.set_asking_prices("h-1", {"llm-*": 50_000, "echo": 20_000}) == {"echo": 20_000, "llm-*": 50_000}
    ledger.set_asking_prices("h-2", {"*": 7})
    assert ledger.set_asking_prices("h-1", {"echo": 30_000}) == {"echo": 30_000}  # the old family is gone
    assert ledger.asking_prices() == {"h-1": {"echo": 30_000}, "h-2": {"*": 7}}
    assert ledger.asking_prices("h-2") == {"h-2": {"*": 7}}
    ledger.set_asking_prices("h-2", {})
    assert ledger.asking_prices() == {"h-1": {"echo": 30_000}}


def test_asks_of_an_unknown_host_or_wrong_prices_store_nothing(ledger: Ledger) -> None:
    owner = an_account(ledger)
    an_owned_host(ledger, owner, "h-1")
    ledger.set_asking_prices("h-1", {"echo": 1})
    with pytest.raises(errors.NotFound):
        ledger.set_asking_prices("nobody", {"echo": 1})
    for wrong in ({"echo": -1}, {"": 5}, {"echo": 1.5}, {"x" * 101: 1}, {"echo": True}):
        with pytest.raises(errors.ValidationFailed):
            ledger.set_asking_prices("h-1", wrong)  # type: ignore[arg-type]
    assert ledger.asking_prices() == {"h-1": {"echo": 1}}


def test_saved_bids_are_per_account_and_none_forgets_one(ledger: Ledger) -> None:
    ada, bob = an_account(ledger), an_account(ledger)
    assert ledger.bid_preferences(ada.id) == {}
    ledger.set_bid_preference(ada.id, "echo", 40_000)
    assert ledger.set_bid_preference(ada.id, "llm-*", 90_000) == {"echo": 40_000, "llm-*": 90_000}
    ledger.set_bid_preference(ada.id, "echo", 45_000)
    ledger.set_bid_preference(bob.id, "*", 1)
    assert ledger.bid_preferences(ada.id) == {"echo": 45_000, "llm-*": 90_000}
    assert ledger.all_bid_preferences() == {ada.id: {"echo": 45_000, "llm-*": 90_000}, bob.id: {"*": 1}}
    assert ledger.set_bid_preference(ada.id, "echo", None) == {"llm-*": 90_000}
    ledger.set_bid_preference(ada.id, "never-saved", None)  # forgetting what is not there is fine
    with pytest.raises(errors.NotFound):
        ledger.set_bid_preference(999_999, "echo", 1)
    with pytest.raises(errors.ValidationFailed):
        ledger.set_bid_preference(ada.id, "echo", -5)


def _settled(ledger: Ledger, account_id: int, host_id: str, bid: int, clearing: int | None) -> str:
    job = ledger.create_job(account_id, "echo", {"text": "hi"}, reserve_micro=bid, bid_price_micro=bid)
    for step in path_to(JobStatus.STREAMING):
        ledger.transition(job.id, step, **({"host_id": host_id} if step is JobStatus.ASSIGNED else {}))
    ledger.finish(job.id, JobStatus.SUCCEEDED, price_micro=clearing or bid, clearing_price_micro=clearing)
    return job.id


def test_a_job_keeps_its_bid_and_the_price_it_cleared_at(ledger: Ledger) -> None:
    account = an_account(ledger)
    an_owned_host(ledger, account, "h-1")
    job = ledger.get_job(_settled(ledger, account.id, "h-1", bid=50_000, clearing=30_000))
    assert (job.bid_price_micro, job.clearing_price_micro, job.credits_used_micro) == (50_000, 30_000, 30_000)
    failed = ledger.create_job(account.id, "echo", {}, reserve_micro=10, bid_price_micro=10)
    ended = ledger.finish(failed.id, JobStatus.FAILED, error="x", clearing_price_micro=10)
    assert (ended.bid_price_micro, ended.clearing_price_micro) == (10, None)  # nothing cleared: nothing kept
    assert ledger.total_is_zero()


def test_market_history_buckets_the_clearing_prices_of_settled_jobs(ledger: Ledger) -> None:
    ledger.sync_catalog([a_manifest(), a_manifest("other")])
    account = an_account(ledger, credits=100)
    an_owned_host(ledger, account, "h-1")
    for clearing in (10_000, 30_000, 20_000, 40_000):
        _settled(ledger, account.id, "h-1", bid=50_000, clearing=clearing)
    _settled(ledger, account.id, "h-1", bid=50_000, clearing=None)  # before the exchange: not in the history
    since = utcnow() - timedelta(hours=1)
    [bucket] = ledger.market_history("echo", since, 10 * 365 * 86_400)
    assert (bucket["count"], bucket["min_micro"], bucket["median_micro"], bucket["avg_micro"],
            bucket["max_micro"]) == (4, 10_000, 25_000, 25_000, 40_000)
    assert bucket["start"] <= utcnow() and bucket["start"].tzinfo is not None
    assert sum(b["count"] for b in ledger.market_history("echo", since, 1)) == 4
    assert ledger.market_history("echo", utcnow() + timedelta(seconds=5), 3600) == []
    assert ledger.market_history("other", since, 3600) == []
    with pytest.raises(errors.NotFound):
        ledger.market_history("no-such-workload", since, 3600)


def test_batch_children_carry_the_batchs_bid(ledger: Ledger) -> None:
    account = an_account(ledger)
    batch = ledger.create_batch(account.id, "echo", [{"a": 1}, {"a": 2}], [20_000, 20_000],
                                bid_price_micro=20_000)
    assert {ledger.get_job(child.id).bid_price_micro for child in batch.children} == {20_000}
    ledger.cancel_waiting_children(batch.parent.id, [c.id for c in batch.children], "done")


def test_a_version_4_database_upgrades_with_its_jobs(ledger_url: str) -> None:
    old = Ledger(ledger_url)
    old.migrate()
    old.sync_catalog([a_manifest()])
    account = an_account(old)
    job = old.create_job(account.id, "echo", {"text": "hi"}, reserve_micro=10_000)
    with old.engine.begin() as connection:  # back to version 4: no exchange tables, no price columns
        connection.exec_driver_sql("DROP TABLE asking_prices")
        connection.exec_driver_sql("DROP TABLE bid_preferences")
        connection.exec_driver_sql("DROP INDEX ix_jobs_workload_completed")
        for column in ("bid_price_micro", "clearing_price_micro"):
            connection.exec_driver_sql(f"ALTER TABLE jobs DROP COLUMN {column}")
        connection.execute(text("DELETE FROM schema_version WHERE version >= 5"))  # later steps: redone, no-ops
    old.close()
    upgraded = Ledger(ledger_url)
    try:
        assert upgraded.schema_version() == 4
        assert upgraded.migrate() == db.SCHEMA_VERSION
        assert upgraded.get_job(job.id).bid_price_micro is None
        upgraded.finish(job.id, JobStatus.CANCELLED, error="upgraded")
        upgraded.set_bid_preference(account.id, "echo", 3 * MICRO)
        assert upgraded.bid_preferences(account.id) == {"echo": 3 * MICRO}
        assert upgraded.migrate() == db.SCHEMA_VERSION  # and again: nothing to do
    finally:
        upgraded.close()
