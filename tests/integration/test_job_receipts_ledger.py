"""A job's signed receipt in the ledger, on SQLite and PostgreSQL: kept with a succeeded job, never with another
end, read back as it was signed (it still verifies), and the upgrade of a version-6 database."""

# The fixtures are imported from ledger_contract, and test parameters of the same name look like redefinitions.
# ruff: noqa: F811

from __future__ import annotations

import pytest
from ledger_contract import (  # noqa: F401  (fixtures)
    a_manifest,
    an_account,
    ledger,
    ledger_url,
    path_to,
    postgres_schema_url,
    postgres_url,
    taken_back,
)

from archipelag import identity, receipts
from archipelag.ids import HostId
from archipelag.ledger import Ledger, db
from archipelag.lifecycle import JobStatus

HOST = HostId("h-1")
KEY = identity.generate_key()
USAGE = {"prompt_tokens": 2, "completion_tokens": 1}


def a_running_job(ledger: Ledger) -> str:
    job = ledger.create_job(an_account(ledger).id, "echo", {"text": "hi"}, region="eu", reserve_micro=10_000)
    for step in path_to(JobStatus.STREAMING):
        ledger.transition(job.id, step, reason="builder", **({"host_id": HOST} if step is JobStatus.ASSIGNED else {}))
    return job.id


def a_receipt(job_id: str, output: str) -> receipts.Receipt:
    done = {"type": "done", "usage": USAGE, "output": output}
    done["receipt"] = receipts.sign(identity.key_signer(KEY, HOST, lambda: 1_700_000_000.25), job_id, 1, [done])
    return receipts.Expected(job_id, 1, HOST, identity.public_hex(KEY)).accept(done, output)


def test_a_succeeded_job_keeps_its_receipt_and_it_still_verifies(ledger: Ledger) -> None:
    job_id = a_running_job(ledger)
    receipt = a_receipt(job_id, "ok")
    finished = ledger.finish(job_id, JobStatus.SUCCEEDED, output="ok", usage=USAGE, price_micro=5_000, host_id=HOST,
                             receipt=receipt)
    stored = ledger.get_job(job_id)
    assert stored.receipt == receipt and finished == stored
    assert receipts.mismatch(stored.receipt, job_id, stored.output) is None


@pytest.mark.parametrize("end", [JobStatus.FAILED, JobStatus.CANCELLED])
def test_a_job_that_did_not_succeed_keeps_no_receipt(ledger: Ledger, end: JobStatus) -> None:
    job_id = a_running_job(ledger)
    ledger.finish(job_id, end, output="ok", error="no", host_id=HOST, receipt=a_receipt(job_id, "ok"))
    assert ledger.get_job(job_id).receipt is None


def test_a_version_6_database_upgrades_with_its_jobs(ledger_url: str) -> None:
    old = Ledger(ledger_url)
    old.migrate()
    old.sync_catalog([a_manifest()])
    job_id = a_running_job(old)
    upgraded = taken_back(old, ledger_url, 6, {"jobs": ("receipt",)})  # no receipt column
    try:
        assert upgraded.schema_version() == 6
        assert upgraded.migrate() == db.SCHEMA_VERSION
        assert upgraded.get_job(job_id).receipt is None
        receipt = a_receipt(job_id, "ok")
        upgraded.finish(job_id, JobStatus.SUCCEEDED, output="ok", usage=USAGE, price_micro=5_000, host_id=HOST,
                        receipt=receipt)
        assert upgraded.get_job(job_id).receipt == receipt
        assert upgraded.migrate() == db.SCHEMA_VERSION  # and again: nothing to do
    finally:
        upgraded.close()
