"""The ledger's contract, run against SQLite (a temp file) and PostgreSQL (a schema per test)."""

# The fixtures are imported from ledger_contract, and test parameters of the same name look like redefinitions.
# ruff: noqa: F811

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from ledger_contract import (  # noqa: F401  (fixtures: ledger, ledger_url, postgres_*)
    MICRO,
    a_job,
    a_manifest,
    an_account,
    ledger,
    ledger_url,
    postgres_schema_url,
    postgres_url,
)
from sqlalchemy import MetaData, select, text

from archipelag import errors
from archipelag.ledger import KarmaKind, Ledger, Standing, db, hosts
from archipelag.ledger.credits import platform_fee_micro
from archipelag.ledger.tables import utcnow
from archipelag.lifecycle import JOB_TRANSITIONS, TERMINAL_JOB_STATES, HostStatus, JobStatus

ALL_STATES = list(JobStatus)
FAILURES = [JobStatus.FAILED, JobStatus.CANCELLED, JobStatus.TIMED_OUT]


def race(n: int, action: Callable[[int], Any]) -> list[Any]:
    """Run ``action(i)`` in ``n`` threads released together; each result or the exception it raised."""
    barrier = threading.Barrier(n)

    def run(i: int) -> Any:
        barrier.wait()
        try:
            return action(i)
        except Exception as exc:  # noqa: BLE001 - the race's losers are the point
            return exc

    with ThreadPoolExecutor(n) as pool:
        return list(pool.map(run, range(n)))


# --- job lifecycle -------------------------------------------------------------------------------------


@pytest.mark.parametrize("source", ALL_STATES, ids=str)
def test_every_allowed_edge_succeeds_and_is_recorded(ledger: Ledger, source: JobStatus) -> None:
    for target in sorted(JOB_TRANSITIONS[source]):
        job = a_job(ledger, status=source)
        moved = ledger.transition(job.id, target, reason="table test")
        assert moved.status is target
        last = ledger.job_events(job.id)[-1]
        assert (last.from_status, last.to_status, last.reason) == (source, target, "table test")


@pytest.mark.parametrize("source", ALL_STATES, ids=str)
def test_every_forbidden_pair_raises_invalid_transition(ledger: Ledger, source: JobStatus) -> None:
    job = a_job(ledger, status=source)
    history = ledger.job_events(job.id)
    for target in ALL_STATES:
        if target in JOB_TRANSITIONS[source]:
            continue
        with pytest.raises(errors.InvalidTransition):
            ledger.transition(job.id, target)
    assert ledger.get_job(job.id).status is source
    assert ledger.job_events(job.id) == history


def test_terminal_states_have_no_exits(ledger: Ledger) -> None:
    for terminal in TERMINAL_JOB_STATES:
        job = a_job(ledger, status=terminal)
        for target in ALL_STATES:
            with pytest.raises(errors.InvalidTransition):
                ledger.transition(job.id, target)


def test_running_job_cannot_return_to_submitted(ledger: Ledger) -> None:
    job = a_job(ledger, status=JobStatus.STREAMING)
    with pytest.raises(errors.InvalidTransition):
        ledger.transition(job.id, JobStatus.SUBMITTED)


def test_transition_of_unknown_job_is_not_found(ledger: Ledger) -> None:
    with pytest.raises(errors.NotFound):
        ledger.transition("00000000-0000-0000-0000-000000000000", JobStatus.QUEUED)


def test_transition_sets_fields_and_start_and_end_times(ledger: Ledger) -> None:
    job = a_job(ledger, status=JobStatus.QUEUED)
    job = ledger.transition(job.id, JobStatus.ASSIGNED, host_id="host-a")
    job = ledger.transition(job.id, JobStatus.STARTED)
    assert job.host_id == "host-a" and job.started_at is not None and job.completed_at is None
    job = ledger.finish(job.id, JobStatus.SUCCEEDED, output="done", usage={"completion_tokens": 3})
    assert job.completed_at is not None and job.completed_at >= job.started_at
    assert job.duration_ms is not None and job.duration_ms >= 0
    assert job.usage == {"completion_tokens": 3} and job.output == "done"
    assert job.created_at.tzinfo is not None


def test_transition_refuses_unknown_fields(ledger: Ledger) -> None:
    job = a_job(ledger)
    with pytest.raises(TypeError):
        ledger.transition(job.id, JobStatus.QUEUED, status="succeeded")


def test_two_threads_racing_the_same_transition_exactly_one_wins(ledger: Ledger) -> None:
    account = an_account(ledger)
    for _ in range(5):
        job = a_job(ledger, account, status=JobStatus.QUEUED)
        results = race(
            2, lambda i, job_id=job.id: ledger.transition(job_id, JobStatus.ASSIGNED, host_id=f"host-{i}")
        )
        winners = [r for r in results if not isinstance(r, Exception)]
        assert len(winners) == 1, results
        assert all(isinstance(r, errors.InvalidTransition) for r in results if isinstance(r, Exception))
        assert ledger.get_job(job.id).host_id == winners[0].host_id
        assert [e.to_status for e in ledger.job_events(job.id)].count(JobStatus.ASSIGNED) == 1


def test_racing_finishes_settle_exactly_once(ledger: Ledger) -> None:
    account = an_account(ledger, credits=1.0)
    job = a_job(ledger, account, status=JobStatus.STREAMING, reserve_micro=100_000, host_id="host-a")
    outcomes = [JobStatus.SUCCEEDED, JobStatus.CANCELLED]
    results = race(2, lambda i: ledger.finish(job.id, outcomes[i], price_micro=40_000))
    winners = [r for r in results if not isinstance(r, Exception)]
    assert len(winners) == 1
    expected = MICRO - 40_000 if winners[0].status is JobStatus.SUCCEEDED else MICRO
    assert ledger.balance_micro(account.id) == expected
    assert ledger.total_is_zero()


def test_requeue_sends_a_running_job_back_with_the_next_attempt(ledger: Ledger) -> None:
    for running in (JobStatus.ASSIGNED, JobStatus.STARTED, JobStatus.STREAMING):
        job = a_job(ledger, status=running, host_id="host-a")
        assert job.attempt == 1
        job = ledger.requeue(job.id, "host lost")
        assert (job.status, job.attempt, job.host_id) == (JobStatus.QUEUED, 2, None)
        assert ledger.job_events(job.id)[-1].reason == "host lost"


def test_queued_job_cannot_be_requeued(ledger: Ledger) -> None:
    job = a_job(ledger, status=JobStatus.QUEUED)
    with pytest.raises(errors.InvalidTransition):
        ledger.requeue(job.id, "host lost")


# --- credits ---------------------------------------------------------------------------------------------


def test_create_job_with_too_few_credits_raises_payment_required_and_writes_nothing(ledger: Ledger) -> None:
    account = an_account(ledger, credits=0.5)
    with pytest.raises(errors.PaymentRequired) as raised:
        ledger.create_job(account.id, "echo", {"text": "hi"}, reserve_micro=2 * MICRO)
    assert raised.value.details == {"required": 2.0, "available": 0.5}
    assert raised.value.http_status == 402
    assert ledger.list_jobs(account.id) == ([], 0)
    assert ledger.balance_micro(account.id) == MICRO // 2
    assert ledger.total_is_zero()


def test_create_job_reserves_credits_and_records_submission(ledger: Ledger) -> None:
    account = an_account(ledger, credits=1.0)
    job = ledger.create_job(
        account.id, "echo", {"text": "hi"}, region="eu", priority=3, reserve_micro=250_000
    )
    assert (job.status, job.workload_slug, job.reserved_micro, job.priority) == (
        JobStatus.SUBMITTED,
        "echo",
        250_000,
        3,
    )
    assert job.workload_id == ledger.get_workload("echo").id
    assert ledger.balance_micro(account.id) == 750_000
    assert [(e.from_status, e.to_status) for e in ledger.job_events(job.id)] == [(None, JobStatus.SUBMITTED)]


def test_concurrent_reservations_never_overdraw(ledger: Ledger) -> None:
    account = an_account(ledger, credits=1.0)
    results = race(4, lambda _: ledger.create_job(account.id, "echo", {}, reserve_micro=400_000))
    created = [r for r in results if not isinstance(r, Exception)]
    assert len(created) == 2
    assert all(isinstance(r, errors.PaymentRequired) for r in results if isinstance(r, Exception))
    assert ledger.balance_micro(account.id) == 200_000
    assert ledger.total_is_zero()


@pytest.mark.parametrize("ending", FAILURES, ids=str)
def test_a_job_that_does_not_succeed_is_refunded_in_full(ledger: Ledger, ending: JobStatus) -> None:
    account = an_account(ledger, credits=1.0)
    job = a_job(ledger, account, status=JobStatus.STREAMING, reserve_micro=300_000, host_id="host-a")
    done = ledger.finish(job.id, ending, error="it broke", price_micro=100_000)
    assert (done.status, done.error, done.credits_used_micro) == (ending, "it broke", 0)
    assert ledger.balance_micro(account.id) == MICRO
    assert ledger.host_earnings_micro("host-a") == 0
    assert ledger.total_is_zero()


def test_a_submitted_job_can_be_cancelled_with_a_refund(ledger: Ledger) -> None:
    account = an_account(ledger, credits=1.0)
    job = a_job(ledger, account, reserve_micro=300_000)
    assert ledger.finish(job.id, JobStatus.CANCELLED).status is JobStatus.CANCELLED
    assert ledger.balance_micro(account.id) == MICRO
    assert ledger.total_is_zero()


def test_a_succeeded_job_is_charged_its_price_and_its_host_earns_it_less_the_fee(ledger: Ledger) -> None:
    account = an_account(ledger, credits=1.0)
    job = a_job(ledger, account, status=JobStatus.STREAMING, reserve_micro=300_000, host_id="host-a")
    done = ledger.finish(
        job.id,
        JobStatus.SUCCEEDED,
        output="ok",
        price_micro=100_000,
        events=[{"type": "token", "content": "ok", "seq": 0}, {"type": "done", "seq": 1}],
    )
    assert done.credits_used_micro == 100_000
    assert ledger.balance_micro(account.id) == MICRO - 100_000
    assert ledger.host_earnings_micro("host-a") == 100_000 - platform_fee_micro(100_000)
    assert ledger.stored_output_events(job.id)[-1] == {"type": "done", "seq": 1}
    assert ledger.total_is_zero()


def test_a_job_can_be_created_straight_into_the_queue_in_one_transaction(ledger: Ledger) -> None:
    account = an_account(ledger, credits=1.0)
    job = ledger.create_job(account.id, "echo", {"text": "hi"}, reserve_micro=100_000, queue=True)
    assert job.status == JobStatus.QUEUED
    assert [(e.from_status, e.to_status) for e in ledger.job_events(job.id)] == [
        (None, JobStatus.SUBMITTED), (JobStatus.SUBMITTED, JobStatus.QUEUED)]


def test_the_settle_path_returns_each_job_as_it_is_stored(ledger: Ledger) -> None:
    # create_job and finish build the jobs they return from what they wrote; a read gives the same job.
    account = an_account(ledger, credits=1.0)
    ledger.upsert_host("host-r", "r", "eu", {})
    created = ledger.create_job(account.id, "echo", {"text": "hi", "n": [1, 2]}, region="eu", priority=3,
                                reserve_micro=100_000, queue=True, bid_price_micro=90_000)
    assert created == ledger.get_job(created.id)
    ledger.start_job(created.id, "host-r", 2)
    started = ledger.get_job(created.id)
    assert (started.status, started.host_id, started.attempt) == (JobStatus.STARTED, "host-r", 2)
    assert started.started_at is not None
    finished = ledger.finish(created.id, JobStatus.SUCCEEDED, output="hi", usage={"completion_tokens": 3},
                             events=[{"type": "done", "seq": 1}], price_micro=40_000, host_id="host-r",
                             clearing_price_micro=35_000)
    assert finished == ledger.get_job(created.id)
    assert (finished.credits_used_micro, finished.clearing_price_micro) == (40_000, 35_000)
    assert [(e.from_status, e.to_status, e.reason) for e in ledger.job_events(created.id)] == [
        (None, JobStatus.SUBMITTED, "submitted"), (JobStatus.SUBMITTED, JobStatus.QUEUED, "queued"),
        (JobStatus.QUEUED, JobStatus.ASSIGNED, "assigned to host-r"),
        (JobStatus.ASSIGNED, JobStatus.STARTED, "started on host-r"),
        (JobStatus.STARTED, JobStatus.SUCCEEDED, "succeeded")]
    assert ledger.audit() == []


def test_a_host_whose_first_word_holds_output_starts_the_job_streaming_in_one_write(ledger: Ledger) -> None:
    job = a_job(ledger, an_account(ledger), status=JobStatus.QUEUED)
    ledger.start_job(job.id, "host-s", 1, streaming=True)
    started = ledger.get_job(job.id)
    assert (started.status, started.host_id, started.started_at is not None) == (JobStatus.STREAMING, "host-s", True)
    assert [(e.from_status, e.to_status) for e in ledger.job_events(job.id)][-3:] == [
        (JobStatus.QUEUED, JobStatus.ASSIGNED), (JobStatus.ASSIGNED, JobStatus.STARTED),
        (JobStatus.STARTED, JobStatus.STREAMING)]
    assert ledger.audit() == []


def test_only_a_queued_job_can_be_started(ledger: Ledger) -> None:
    for status in (JobStatus.SUBMITTED, JobStatus.STARTED, JobStatus.CANCELLED):
        job = a_job(ledger, status=status)
        with pytest.raises(errors.InvalidTransition) as refused:
            ledger.start_job(job.id, "host-a", 1)
        assert (refused.value.details["status"], refused.value.details["to"]) == (str(status), "assigned")
        assert ledger.get_job(job.id) == job
    with pytest.raises(errors.NotFound):
        ledger.start_job("00000000-0000-0000-0000-000000000000", "host-a", 1)


def test_two_hosts_racing_to_start_a_job_exactly_one_wins(ledger: Ledger) -> None:
    account = an_account(ledger)
    for _ in range(5):
        job = a_job(ledger, account, status=JobStatus.QUEUED)
        results = race(2, lambda i, job_id=job.id: ledger.start_job(job_id, f"host-{i}", 1))
        assert [type(r) for r in results].count(errors.InvalidTransition) == 1, results
        assert [e.to_status for e in ledger.job_events(job.id)].count(JobStatus.STARTED) == 1


def test_finish_can_record_the_hosts_karma_in_the_same_transaction(ledger: Ledger) -> None:
    ledger.upsert_host("host-k", "k", "eu", {})
    job = a_job(ledger, an_account(ledger), status=JobStatus.STREAMING, host_id="host-k")
    ledger.finish(job.id, JobStatus.SUCCEEDED, price_micro=10_000, karma=KarmaKind.JOB_SUCCEEDED, compute_s=60.0)
    events = ledger.karma_events("host-k")
    assert [(e.kind, e.job_id) for e in events] == [(KarmaKind.JOB_SUCCEEDED, job.id)]
    assert ledger.karma_score("host-k") > 0.5


def test_a_price_above_the_reservation_is_capped_at_it(ledger: Ledger) -> None:
    account = an_account(ledger, credits=1.0)
    job = a_job(ledger, account, status=JobStatus.STREAMING, reserve_micro=300_000, host_id="host-a")
    assert ledger.finish(job.id, JobStatus.SUCCEEDED, price_micro=900_000).credits_used_micro == 300_000
    assert ledger.balance_micro(account.id) == 700_000
    assert ledger.total_is_zero()


def test_finish_takes_only_terminal_states_and_finishes_once(ledger: Ledger) -> None:
    job = a_job(ledger, status=JobStatus.STREAMING)
    with pytest.raises(errors.InvalidTransition):
        ledger.finish(job.id, JobStatus.QUEUED)
    ledger.finish(job.id, JobStatus.FAILED, error="boom")
    with pytest.raises(errors.InvalidTransition):
        ledger.finish(job.id, JobStatus.SUCCEEDED, price_micro=1)
    assert ledger.total_is_zero()


def test_a_database_made_anew_at_an_address_used_before_gets_its_own_books(tmp_path: Path) -> None:
    # Nothing about a book is remembered across transactions: a process that meets a new database where it used
    # one before (the file deleted and made again) posts into the new one's books, though their ids differ.
    # On SQLite, where a database is easiest to make anew.
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    first = Ledger(url)
    first.migrate()
    first.sync_catalog([a_manifest()])
    account = an_account(first, credits=1.0)
    first.create_job(account.id, "echo", {}, reserve_micro=100_000, queue=True)
    first.close()
    for path in tmp_path.glob("ledger.db*"):
        path.unlink()
    again = Ledger(url)
    try:
        again.migrate()
        again.sync_catalog([a_manifest()])
        again.upsert_host("host-a", "a", "eu", {})  # the host's book takes the id the account's book had
        account = an_account(again, credits=1.0)
        job = again.create_job(account.id, "echo", {}, reserve_micro=100_000, queue=True)
        again.start_job(job.id, "host-a", 1)
        again.finish(job.id, JobStatus.SUCCEEDED, price_micro=100_000)
        assert again.balance_micro(account.id) == 900_000
        assert again.host_earnings_micro("host-a") == 100_000 - platform_fee_micro(100_000)
        assert again.audit() == []
    finally:
        again.close()


def test_granted_credits_raise_the_balance(ledger: Ledger) -> None:
    account = an_account(ledger, credits=1.0)
    assert ledger.grant_credits(account.id, 500_000).credits_micro == 1_500_000
    assert ledger.get_account(account.id).credits == 1.5
    assert ledger.total_is_zero()


# --- accounts and keys -------------------------------------------------------------------------------------


def _all_stored_text(ledger: Ledger) -> str:
    metadata = MetaData()
    metadata.reflect(ledger.engine)
    with ledger.engine.connect() as conn:
        return "\n".join(repr(row) for table in metadata.sorted_tables for row in conn.execute(select(table)))


def test_api_key_round_trip_keeps_only_a_hash_at_rest(ledger: Ledger) -> None:
    account = an_account(ledger)
    key, full_key = ledger.create_api_key(account.id, "laptop")
    assert full_key.startswith("ak_") and len(full_key) > 40
    assert key.prefix == full_key[:10] and key.scopes == ("read", "write")
    found_account, found_key = ledger.authenticate(full_key)
    assert (found_account.id, found_key.id) == (account.id, key.id)
    assert full_key not in _all_stored_text(ledger)
    assert full_key[10:] not in _all_stored_text(ledger)


def test_authenticate_records_last_use(ledger: Ledger) -> None:
    account = an_account(ledger)
    key, full_key = ledger.create_api_key(account.id, "ci")
    assert key.last_used_at is None
    _, used = ledger.authenticate(full_key)
    assert used.last_used_at is not None
    assert ledger.list_api_keys(account.id)[0].last_used_at == used.last_used_at


def test_revoked_key_is_unauthorized(ledger: Ledger) -> None:
    account = an_account(ledger)
    key, full_key = ledger.create_api_key(account.id, "old")
    ledger.revoke_api_key(account.id, key.id)
    with pytest.raises(errors.Unauthorized):
        ledger.authenticate(full_key)
    assert ledger.list_api_keys(account.id) == []


def test_unknown_and_expired_keys_are_unauthorized(ledger: Ledger) -> None:
    account = an_account(ledger)
    with pytest.raises(errors.ValidationFailed):  # a key that is born expired is a mistake
        ledger.create_api_key(account.id, "gone", expires_at=utcnow() - timedelta(seconds=1))
    _, expired = ledger.create_api_key(account.id, "brief", expires_at=utcnow() + timedelta(milliseconds=300))
    time.sleep(0.4)
    for bad in (expired, "ak_not-a-real-key", "Bearer nonsense", ""):
        with pytest.raises(errors.Unauthorized):
            ledger.authenticate(bad)


def test_a_key_can_only_be_revoked_by_its_account(ledger: Ledger) -> None:
    owner, other = an_account(ledger), an_account(ledger)
    key, full_key = ledger.create_api_key(owner.id, "mine", scopes=("read",))
    with pytest.raises(errors.NotFound):
        ledger.revoke_api_key(other.id, key.id)
    assert ledger.authenticate(full_key)[1].scopes == ("read",)


def test_a_second_account_with_the_same_email_conflicts(ledger: Ledger) -> None:
    ledger.create_account("same@example.com", 0)
    with pytest.raises(errors.Conflict):
        ledger.create_account("same@example.com", 0)


def test_unknown_account_is_not_found(ledger: Ledger) -> None:
    with pytest.raises(errors.NotFound):
        ledger.get_account(999_999)


def test_sign_up_verification_grants_once_and_tokens_are_single_use_under_races(ledger: Ledger) -> None:
    an_account(ledger)  # the operator's, so the stranger is not the network's first (admin) account
    person, token = ledger.sign_up("Ann@Example.org", "argon2-hash", invite_code=None, require_invite=False,
                                   verify_ttl_s=60)
    assert person.email == "ann@example.org" and not person.verified and not person.is_admin
    assert token not in _all_stored_text(ledger)
    results = race(8, lambda _: ledger.verify_email(token, 7 * MICRO))
    assert sum(1 for r in results if not isinstance(r, Exception)) == 1
    assert all(isinstance(r, errors.ValidationFailed) for r in results if isinstance(r, Exception))
    assert ledger.get_account(person.id).credits_micro == 7 * MICRO
    assert ledger.total_is_zero()


def test_an_invitation_admits_one_sign_up(ledger: Ledger) -> None:
    admin = an_account(ledger)
    invite = ledger.create_invite(admin.id, None, 60)
    results = race(4, lambda i: ledger.sign_up(f"p{i}@example.org", "h", invite_code=invite.code,
                                               require_invite=True, verify_ttl_s=60))
    assert sum(1 for r in results if not isinstance(r, Exception)) == 1
    assert ledger.list_accounts(None, 10, 0)[1] == 2


def test_sessions_end_on_sign_out_password_change_and_suspension(ledger: Ledger) -> None:
    account = an_account(ledger)
    session, token = ledger.start_session(account.id, 60)
    assert ledger.authenticate_session(token)[1].id == session.id and token not in _all_stored_text(ledger)
    ledger.end_session(session.id)
    with pytest.raises(errors.Unauthorized):
        ledger.authenticate_session(token)
    _, second = ledger.start_session(account.id, 60)
    ledger.change_password(account.id, "new-hash")
    with pytest.raises(errors.Unauthorized):
        ledger.authenticate_session(second)
    _, third = ledger.start_session(account.id, 60)
    _, key = ledger.create_api_key(account.id, "k")
    ledger.set_suspended(account.id, "abuse")
    with pytest.raises(errors.AccountSuspended):
        ledger.authenticate_session(third)
    with pytest.raises(errors.AccountSuspended):
        ledger.authenticate(key)
    with pytest.raises(errors.AccountSuspended):
        ledger.start_session(account.id, 60)
    ledger.set_suspended(account.id, None)
    assert ledger.authenticate(key)[0].id == account.id


def test_a_key_never_makes_a_stronger_key(ledger: Ledger) -> None:
    account = an_account(ledger)
    with pytest.raises(errors.Forbidden):
        ledger.create_api_key(account.id, "k", ("read", "write"), within=("keys", "read"))
    key, _ = ledger.create_api_key(account.id, "k", ("read",), within=("keys", "read"))
    assert key.scopes == ("read",)
    with pytest.raises(errors.ValidationFailed):
        ledger.create_api_key(account.id, "k", ("admin",))


def test_admins_find_accounts_by_part_of_their_address(ledger: Ledger) -> None:
    for name in ("x_1", "x%2", "y3"):
        an_account(ledger, email=f"{name}@example.org")
    assert [a.email for a in ledger.list_accounts("x_", 10, 0)[0]] == ["x_1@example.org"]  # `_` is no wildcard
    assert [a.email for a in ledger.list_accounts("%", 10, 0)[0]] == ["x%2@example.org"]
    assert ledger.list_accounts("EXAMPLE", 2, 1)[1] == 3
    stats = ledger.network_stats()
    assert stats["accounts"] == 3 and stats["admins"] == 1


# --- workloads -----------------------------------------------------------------------------------------------


def test_catalog_sync_is_idempotent_with_stable_ids(ledger: Ledger) -> None:
    catalog = [a_manifest("echo"), a_manifest("wasm-hash", price_micro=5_000), a_manifest("llm-chat")]
    first = {w.slug: w.id for w in ledger.sync_catalog(catalog)}
    again = {w.slug: w.id for w in ledger.sync_catalog(reversed(catalog))}
    assert first == again and len(set(first.values())) == 3
    assert ledger.get_workload("wasm-hash").price_micro == 5_000
    assert ledger.get_workload(first["llm-chat"]).slug == "llm-chat"


def test_a_slug_gone_from_the_catalog_is_disabled_and_keeps_its_id(ledger: Ledger) -> None:
    echo_id = ledger.get_workload("echo").id
    ledger.sync_catalog([a_manifest("other")])
    assert not ledger.get_workload("echo").is_enabled
    with pytest.raises(errors.NotFound):
        ledger.create_job(an_account(ledger).id, "echo", {})
    restored = {w.slug: w for w in ledger.sync_catalog([a_manifest("echo", name="Echo 2")])}
    assert (
        restored["echo"].id == echo_id and restored["echo"].is_enabled and restored["echo"].name == "Echo 2"
    )


def test_unknown_workload_is_not_found(ledger: Ledger) -> None:
    with pytest.raises(errors.NotFound):
        ledger.get_workload("nope")


# --- reading jobs ----------------------------------------------------------------------------------------------


def test_list_jobs_pages_newest_first_with_the_total(ledger: Ledger) -> None:
    account = an_account(ledger)
    made = [a_job(ledger, account, reserve_micro=0).id for _ in range(5)]
    a_job(ledger)  # someone else's
    first, total = ledger.list_jobs(account.id, limit=2, offset=0)
    rest, _ = ledger.list_jobs(account.id, limit=10, offset=2)
    assert total == 5
    assert [j.id for j in first + rest] == made[::-1]


def test_another_accounts_job_is_not_found(ledger: Ledger) -> None:
    job = a_job(ledger)
    stranger = an_account(ledger)
    with pytest.raises(errors.NotFound):
        ledger.get_job(job.id, account_id=stranger.id)
    assert ledger.get_job(job.id, account_id=job.account_id).id == job.id


# --- hosts and karma --------------------------------------------------------------------------------------------


def test_host_status_follows_the_host_lifecycle(ledger: Ledger) -> None:
    host = ledger.upsert_host("host-a", "attic", "eu-west", {"cpu_cores": 4, "runtimes": ["wasm"]})
    assert host.status is HostStatus.JOINING and host.capabilities["cpu_cores"] == 4
    assert ledger.set_host_status("host-a", HostStatus.ONLINE).status is HostStatus.ONLINE
    assert (
        ledger.set_host_status("host-a", HostStatus.ONLINE).status is HostStatus.ONLINE
    )  # same state: no-op
    ledger.set_host_status("host-a", HostStatus.DRAINING)
    with pytest.raises(errors.InvalidTransition):
        ledger.set_host_status("host-a", HostStatus.ONLINE)
    with pytest.raises(errors.NotFound):
        ledger.set_host_status("host-zzz", HostStatus.ONLINE)


def test_heartbeats_and_active_jobs_show_in_the_host_list(ledger: Ledger) -> None:
    ledger.upsert_host("host-a", "attic", "eu-west", {}, HostStatus.ONLINE)
    ledger.upsert_host("host-b", "garage", "us-east", {}, HostStatus.ONLINE)
    at = utcnow()
    ledger.record_heartbeat("host-a", at)
    a_job(ledger, status=JobStatus.STARTED, host_id="host-a")
    hosts = {h.id: h for h in ledger.list_hosts()}
    assert hosts["host-a"].last_heartbeat_at == at and hosts["host-a"].active_jobs == 1
    assert hosts["host-b"].last_heartbeat_at is None and hosts["host-b"].active_jobs == 0
    with pytest.raises(errors.NotFound):
        ledger.record_heartbeat("host-zzz")


def test_karma_events_append_and_move_the_score(ledger: Ledger) -> None:
    ledger.upsert_host("host-a", "attic", "eu-west", {}, HostStatus.ONLINE)
    neutral = ledger.karma_score("host-a")
    ledger.record_karma("host-a", KarmaKind.JOB_SUCCEEDED, compute_s=3600, job_id=None)
    assert ledger.karma_score("host-a") > neutral
    ledger.record_karma("host-a", KarmaKind.VERIFICATION_FAILED, reason="mismatch")
    assert ledger.karma_score("host-a") < neutral
    assert [e.kind for e in ledger.karma_events("host-a")] == ["job_succeeded", "verification_failed"]
    # a negative total recovers with time, so two reads a moment apart may differ in the last digits
    assert ledger.get_host("host-a").karma_score == pytest.approx(ledger.karma_score("host-a"), abs=1e-6)


# --- schema ----------------------------------------------------------------------------------------------------


def test_migrate_twice_is_fine_and_keeps_data(ledger: Ledger) -> None:
    account = an_account(ledger, credits=2.0)
    assert ledger.migrate() == ledger.migrate() == ledger.schema_version()
    assert ledger.get_account(account.id).credits == 2.0
    assert ledger.total_is_zero()


def test_a_second_ledger_on_the_same_database_sees_the_same_data(ledger: Ledger, ledger_url: str) -> None:
    job = a_job(ledger)
    other = Ledger(ledger_url)
    try:
        assert other.get_job(job.id) == job
    finally:
        other.close()


def test_karma_state_cools_down_suspends_and_recovers_from_event_times(ledger: Ledger) -> None:
    """The state is derived from the events and their times alone: a negative total rises with no writer."""
    ledger.upsert_host("host-s", "shed", "eu-west", {}, HostStatus.ONLINE)
    assert ledger.karma_state("host-s").standing is Standing.GOOD
    for _ in range(4):
        ledger.record_karma("host-s", KarmaKind.JOB_FAILED, reason="internal error")
    cooled = ledger.karma_state("host-s")
    assert cooled.standing is Standing.COOLDOWN and cooled.share < 1 and "cool-down" in (cooled.reason or "")
    for _ in range(7):
        ledger.record_karma("host-s", KarmaKind.JOB_TIMED_OUT)
    suspended = ledger.karma_state("host-s")
    assert suspended.standing is Standing.SUSPENDED and suspended.total == pytest.approx(-11.0, abs=1e-3)
    states = ledger.karma_states(["host-s", "host-never"])  # placement's one read per fleet round
    assert states["host-s"].standing is Standing.SUSPENDED and states["host-s"].reason == suspended.reason
    assert states["host-never"] == ledger.karma_rules.state(0.0)
    ledger.karma_rules = replace(ledger.karma_rules, recovery_per_day=86_400.0 * 100)  # 100 points a second
    time.sleep(0.2)
    assert ledger.karma_state("host-s").standing is Standing.GOOD and ledger.karma_state("host-s").total == 0.0
    assert [h.karma_score for h in ledger.list_hosts() if h.id == "host-s"] == [0.5]


def test_a_hosts_row_keeps_its_karma_total_with_each_event_and_the_audit_checks_it(ledger: Ledger) -> None:
    """Settling a job reads the host's total from its row, not from a sum over its whole history; the row keeps
    the events' sum and the last one's time, recovery banked included, and ``audit`` says when it does not."""
    ledger.upsert_host("host-t", "tally", "eu-west", {}, HostStatus.ONLINE)
    ledger.karma_rules = replace(ledger.karma_rules, recovery_per_day=86_400.0 * 10)  # 10 points a second
    for points in (-4.0, 1.5, -2.0):
        ledger.record_karma("host-t", KarmaKind.ADJUSTMENT, adjustment=points)
        time.sleep(0.1)
    events = ledger.karma_events("host-t")
    assert KarmaKind.RECOVERY in [e.kind for e in events]
    with db.read_session(ledger.engine) as session:
        row = hosts.get_row(session, "host-t")
    assert row.karma_points == pytest.approx(sum(e.points for e in events), abs=1e-9)
    assert row.karma_at == max(e.at for e in events)
    assert ledger.audit() == []
    with ledger.engine.begin() as connection:
        connection.execute(text("UPDATE hosts SET karma_points = karma_points + 1 WHERE id = 'host-t'"))
    (problem,) = ledger.audit()
    assert problem.startswith("host host-t keeps karma")


def test_karma_history_pages_newest_first(ledger: Ledger) -> None:
    ledger.upsert_host("host-h", "hall", "eu-west", {}, HostStatus.ONLINE)
    for n in range(5):
        ledger.record_karma("host-h", KarmaKind.ADJUSTMENT, adjustment=float(n), reason=f"n{n}")
    assert ledger.karma_event_count("host-h") == 5
    assert [e.reason for e in ledger.karma_events("host-h", 2, 0)] == ["n4", "n3"]
    assert [e.reason for e in ledger.karma_events("host-h", 2, 4)] == ["n0"]
    assert [e.reason for e in ledger.karma_events("host-h")] == ["n0", "n1", "n2", "n3", "n4"]
    with pytest.raises(errors.NotFound):
        ledger.karma_event_count("host-zzz")


def test_banked_recovery_is_the_rules_walk_over_the_events(ledger: Ledger) -> None:
    """The ledger's total (a sum with recovery banked as events, plus the recovery since the last one) is
    ``KarmaRules.total_at`` over the host's own events and their times."""
    ledger.upsert_host("host-r", "roof", "eu-west", {}, HostStatus.ONLINE)
    rules = ledger.karma_rules = replace(ledger.karma_rules, recovery_per_day=86_400.0 * 10)  # 10 points a second
    for points, pause_s in ((-5.0, 0.2), (-5.0, 0.1), (1.0, 0.0), (-2.0, 0.3)):
        ledger.record_karma("host-r", KarmaKind.ADJUSTMENT, adjustment=points)
        time.sleep(pause_s)
    events = ledger.karma_events("host-r")
    assert KarmaKind.RECOVERY in [e.kind for e in events]
    now = utcnow()
    own = [(e.at, e.points) for e in events if e.kind != KarmaKind.RECOVERY]
    with db.read_session(ledger.engine) as session:
        assert hosts.karma_total(session, "host-r", rules, now) == pytest.approx(rules.total_at(own, now), abs=1e-6)
