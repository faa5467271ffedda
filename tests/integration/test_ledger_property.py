"""The double-entry invariant under concurrent load with failures, property-based (hypothesis), on SQLite and
PostgreSQL: several threads, each with its own plan of jobs (reserved, run, then succeeded, failed, cancelled or
timed out, each finish tried twice), payouts, and write transactions that fail after moving money, all released
at once against one user and one host owner. Whatever the interleaving, the books balance, no book that holds
money goes below zero, and every balance is what the outcomes say it must be."""

# The fixtures are imported from ledger_contract, and test parameters of the same name look like redefinitions.
# ruff: noqa: F811

from __future__ import annotations

import threading
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from ledger_contract import (  # noqa: F401  (fixtures: ledger, ledger_url, postgres_*)
    an_account,
    an_owned_host,
    ledger,
    ledger_url,
    path_to,
    postgres_schema_url,
    postgres_url,
)

from archipelag import errors
from archipelag.ledger import Ledger, credits, db
from archipelag.ledger.credits import platform_fee_micro
from archipelag.lifecycle import TERMINAL_JOB_STATES, JobStatus

USER_CREDITS_MICRO = 1_000_000
Op = tuple[Any, ...]  # ("job", reserve, price, outcome) | ("payout", amount) | ("abort", amount)
OUTCOMES = sorted(TERMINAL_JOB_STATES)


class Injected(RuntimeError):
    """A failure in the middle of a write transaction, after money moved in it."""


@dataclass
class Outcomes:
    """What the threads saw happen; the balances must follow from it."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    charged_micro: list[int] = field(default_factory=list)
    paid_micro: list[int] = field(default_factory=list)

    def add(self, into: list[int], amount: int) -> None:
        with self.lock:
            into.append(amount)


JOB = st.tuples(st.just("job"), st.integers(0, 400_000), st.integers(0, 500_000), st.sampled_from(OUTCOMES))
PAYOUT = st.tuples(st.just("payout"), st.integers(1, 300_000))
ABORT = st.tuples(st.just("abort"), st.integers(1, 200_000))
PLANS = st.lists(st.lists(st.one_of(JOB, PAYOUT, ABORT), max_size=5), min_size=2, max_size=4)


def run_job(ledger: Ledger, user: int, host: str, reserve: int, price: int, to: JobStatus, seen: Outcomes) -> None:
    try:
        job = ledger.create_job(user, "echo", {"text": "hi"}, reserve_micro=reserve)
    except errors.PaymentRequired:
        return  # the user is short: nothing was written
    for step in path_to(JobStatus.STREAMING):
        job = ledger.transition(job.id, step, **({"host_id": host} if step is JobStatus.ASSIGNED else {}))
    done = ledger.finish(job.id, to, price_micro=price, host_id=host)
    seen.add(seen.charged_micro, done.credits_used_micro)
    try:  # a second finish (a late retry, a cancel racing the end) must change nothing
        ledger.finish(job.id, JobStatus.SUCCEEDED, price_micro=price, host_id=host)
        raise AssertionError("a finished job was finished again")
    except errors.InvalidTransition:
        pass


def run_payout(ledger: Ledger, owner: int, amount: int, seen: Outcomes) -> None:
    try:
        seen.add(seen.paid_micro, ledger.payout(owner, amount).amount_micro)
    except errors.Conflict:
        pass  # more than is unpaid right now


def run_abort(ledger: Ledger, user: int, amount: int) -> None:
    """Reserve, then fail inside the same transaction: nothing of it may remain."""
    try:
        with db.write_session(ledger.engine) as session:
            credits.reserve(session, user, str(uuid.uuid4()), amount)
            raise Injected("the coordinator died mid-write")
    except (Injected, errors.PaymentRequired):
        pass


@settings(max_examples=25, deadline=None, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(plans=PLANS)
def test_the_books_balance_under_any_interleaving(ledger: Ledger, plans: list[list[Op]]) -> None:
    user = an_account(ledger, credits=USER_CREDITS_MICRO / 1_000_000)
    owner = an_account(ledger, credits=0.0)
    host = an_owned_host(ledger, owner, f"h-{uuid.uuid4().hex[:8]}", karma=10.0)
    seen = Outcomes()
    barrier = threading.Barrier(len(plans))

    def work(plan: list[Op]) -> None:
        barrier.wait()
        for op in plan:
            if op[0] == "job":
                run_job(ledger, user.id, host, op[1], op[2], op[3], seen)
            elif op[0] == "payout":
                run_payout(ledger, owner.id, op[1], seen)
            else:
                run_abort(ledger, user.id, op[1])

    with ThreadPoolExecutor(len(plans)) as pool:
        list(pool.map(work, plans))  # re-raises any thread's unexpected error

    assert ledger.audit() == []
    charged = sum(seen.charged_micro)
    earned = sum(amount - platform_fee_micro(amount) for amount in seen.charged_micro)
    assert ledger.balance_micro(user.id) == USER_CREDITS_MICRO - charged
    found = ledger.earnings(owner.id)
    assert (found.earned_micro, found.paid_out_micro) == (earned, sum(seen.paid_micro))
    assert found.unpaid_micro == earned - sum(seen.paid_micro) >= 0
