"""The ledger's batch functions, run against SQLite (a temp file) and PostgreSQL (a schema per test)."""

# The fixtures are imported from ledger_contract, and test parameters of the same name look like redefinitions.
# ruff: noqa: F811

from __future__ import annotations

import pytest
from ledger_contract import (  # noqa: F401  (fixtures: ledger, ledger_url, postgres_*)
    MICRO,
    an_account,
    ledger,
    ledger_url,
    postgres_schema_url,
    postgres_url,
)

from archipelag import errors
from archipelag.ledger import Ledger
from archipelag.lifecycle import JobStatus


def test_a_batch_is_a_parent_and_its_children_with_every_reservation_held(ledger: Ledger) -> None:
    account = an_account(ledger, credits=1.0)
    batch = ledger.create_batch(account.id, "echo", [{"n": i} for i in range(300)], [2_000] * 300, "eu-west", 7,
                                merge_strategy="flatten", fail_mode="fail_fast", max_parallelism=4,
                                bid_price_micro=1_500)
    assert batch.parent.is_batch and batch.parent.batch_size == 300 and batch.parent.reserved_micro == 0
    assert (batch.merge_strategy, batch.fail_mode, batch.max_parallelism, batch.bid_price_micro) == (
        "flatten", "fail_fast", 4, 1_500)
    assert [c.batch_index for c in batch.children] == list(range(300))
    child = ledger.get_job(batch.children[299].id)
    assert child.parent_id == batch.parent.id and child.input == {"n": 299} and child.priority == 7
    assert child.reserved_micro == 2_000 and child.status is JobStatus.SUBMITTED and child.attempt == 1
    assert ledger.balance_micro(account.id) == MICRO - 600_000 and ledger.total_is_zero()
    assert [e.to_status for e in ledger.job_events(child.id)] == [JobStatus.SUBMITTED]


def test_a_batch_beyond_the_balance_writes_nothing(ledger: Ledger) -> None:
    account = an_account(ledger, credits=0.5)
    with pytest.raises(errors.PaymentRequired) as short:
        ledger.create_batch(account.id, "echo", [{"n": i} for i in range(3)], [200_000] * 3)
    assert short.value.details == {"required": 0.6, "available": 0.5}
    assert ledger.list_jobs(account.id)[1] == 0 and ledger.balance_micro(account.id) == MICRO // 2


def test_children_are_queued_settled_refunded_and_the_books_balance(ledger: Ledger) -> None:
    account = an_account(ledger, credits=1.0)
    batch = ledger.create_batch(account.id, "echo", [{"n": i} for i in range(4)], [10_000] * 4)
    ids = [c.id for c in batch.children]
    ledger.finish(ids[3], JobStatus.CANCELLED, error="by hand")  # cancelled before its turn
    queued = ledger.queue_children(batch.parent.id, ids[:2] + ids[3:])
    assert [j.status for j in queued] == [JobStatus.QUEUED, JobStatus.QUEUED, JobStatus.CANCELLED]
    assert ledger.queue_children(batch.parent.id, ids[:1])[0].status is JobStatus.QUEUED  # again: no move
    ledger.upsert_host("h", "h", "eu-west", {})
    ledger.start_job(ids[0], "h", 1)
    ledger.finish(ids[0], JobStatus.SUCCEEDED, output="done", price_micro=10_000, host_id="h")
    assert ledger.cancel_waiting_children(batch.parent.id, ids, "fail_fast") == [ids[1], ids[2]]
    assert ledger.job_statuses(ids) == {ids[0]: JobStatus.SUCCEEDED, ids[1]: JobStatus.CANCELLED,
                                        ids[2]: JobStatus.CANCELLED, ids[3]: JobStatus.CANCELLED}
    assert ledger.balance_micro(account.id) == MICRO - 10_000 and ledger.total_is_zero()
    assert ledger.get_batch(batch.parent.id).children[1].error == "fail_fast"


def test_only_its_owner_reads_a_batch_and_a_single_job_is_no_batch(ledger: Ledger) -> None:
    owner, other = an_account(ledger), an_account(ledger)
    batch = ledger.create_batch(owner.id, "echo", [{"n": 1}], [1_000])
    assert ledger.get_batch(batch.parent.id, owner.id).parent.id == batch.parent.id
    with pytest.raises(errors.NotFound):
        ledger.get_batch(batch.parent.id, other.id)
    with pytest.raises(errors.NotFound):
        ledger.get_batch(batch.children[0].id)
