"""Ledger: the one facade the head's HTTP layer and scheduler call; everything else in this package is internal.

Every method is synchronous and thread-safe: each opens its own session and transaction, and returns frozen
dataclasses from ``records`` or plain values, never ORM rows. Errors come from ``archipelag.errors``
(NotFound, Unauthorized, PaymentRequired, InvalidTransition, Conflict, ValidationFailed, LedgerError).
Money is integer micro-credits (``catalog.MICRO`` per credit).

Schema: ``migrate()``, ``schema_version()``.
Accounts, keys, sessions, sign-up and administration: see ``people.People``, which ``Ledger`` includes.
Workloads: ``sync_catalog``, ``list_workloads``, ``get_workload``.
Jobs: ``create_job``, ``transition``, ``start_job``, ``requeue``, ``finish``, ``save_events``, ``get_job``, ``list_jobs``,
``unfinished_jobs``, ``job_events``, ``stored_output_events``.
Batches: ``create_batch``, ``get_batch``, ``queue_children``, ``job_statuses``, ``cancel_waiting_children``
(see ``batches``).
Credits: ``balance_micro``, ``host_earnings_micro``, ``total_is_zero``, ``audit``.
Earnings, payouts and usage: ``earnings``, ``payout``, ``payouts``, ``usage`` (see ``earnings``).
Hosts and karma: ``upsert_host``, ``set_host_status``, ``record_heartbeat``, ``list_hosts``, ``get_host``,
``suspend_host``, ``reinstate_host``, ``suspended_hosts`` (an operator's word), ``record_karma``, ``karma_events``, ``karma_event_count``, ``karma_score``, ``karma_state``, ``karma_states``.
The exchange: ``set_asking_prices``, ``asking_prices``, ``set_bid_preference``, ``bid_preferences``,
``all_bid_preferences``, ``market_history`` (see ``market``).
Enrolment: ``request_pairing``, ``approve_pairing``, ``enrol_host``, ``enrolment_status``, ``host_identity``,
``revoke_host``, ``owned_hosts`` (see ``enrolment``).
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping
from datetime import date, datetime
from typing import TYPE_CHECKING, Any

from archipelag.catalog import Manifest
from archipelag.errors import InvalidTransition
from archipelag.ids import AccountId, HostId, JobId
from archipelag.ledger import batches, credits, db, enrolment, hosts, jobs, market, workloads
from archipelag.ledger import earnings as earnings_ledger
from archipelag.ledger.karma_rules import DEFAULT_RULES, KarmaKind, KarmaRules, KarmaState
from archipelag.ledger.people import People
from archipelag.ledger.records import (
    Earnings,
    Host,
    HostIdentity,
    Job,
    JobBatch,
    JobEvent,
    KarmaEvent,
    Pairing,
    Payout,
    Usage,
    Workload,
    period,
)
from archipelag.ledger.tables import utcnow
from archipelag.lifecycle import TERMINAL_JOB_STATES, HostStatus, JobStatus
from archipelag.receipts import Receipt

if TYPE_CHECKING:
    from archipelag.settings import Settings

class Ledger(People):
    def __init__(self, url: str, *, karma_rules: KarmaRules = DEFAULT_RULES,
                 platform_fee_bps: int = credits.DEFAULT_PLATFORM_FEE_BPS) -> None:
        super().__init__(db.create_engine_for(url))
        self.karma_rules = karma_rules
        self.platform_fee_bps = platform_fee_bps

    @classmethod
    def from_settings(cls, settings: Settings) -> Ledger:
        return cls(settings.effective_database_url(), platform_fee_bps=settings.platform_fee_bps,
                   karma_rules=KarmaRules.from_settings(settings.karma))

    def close(self) -> None:
        self.engine.dispose()

    # --- schema -------------------------------------------------------------------------------------

    def migrate(self) -> int:
        """Create or upgrade the schema; returns the schema version. Idempotent."""
        return db.migrate(self.engine)

    def schema_version(self) -> int | None:
        return db.schema_version(self.engine)

    # --- workloads ------------------------------------------------------------------------------------

    def sync_catalog(self, manifests: Iterable[Manifest]) -> list[Workload]:
        """Upsert the catalog by slug (ids stay stable); slugs no longer in it are disabled. All rows by id."""
        with db.write_session(self.engine) as session:
            return workloads.sync(session, manifests)

    def list_workloads(self) -> list[Workload]:
        with db.read_session(self.engine) as session:
            return workloads.list_all(session)

    def get_workload(self, slug_or_id: str | int) -> Workload:
        with db.read_session(self.engine) as session:
            return workloads.record(workloads.get_row(session, slug_or_id))

    # --- jobs -----------------------------------------------------------------------------------------

    def create_job(
        self,
        account_id: int,
        workload_slug: str,
        input: Mapping[str, Any],
        region: str | None = None,
        priority: int = 0,
        reserve_micro: int = 0,
        queue: bool = False,
        job_id: str | None = None,
        bid_price_micro: int | None = None,
    ) -> Job:
        """A job in ``submitted`` with ``reserve_micro`` moved to escrow, in one transaction; with ``queue`` it
        moves on to ``queued`` in the same transaction (both events recorded). ``bid_price_micro``: the most it
        pays per job, kept with it. PaymentRequired (required/available, in credits) when the balance is short;
        nothing is written then."""
        with db.write_session(self.engine) as session:
            return jobs.create(session, account_id, workload_slug, input, region, priority, reserve_micro,
                               JobId(job_id) if job_id else None, queue=queue, bid_price_micro=bid_price_micro)

    def transition(self, job_id: str, to: JobStatus, reason: str | None = None, **fields: Any) -> Job:
        """The guarded move to ``to`` plus a JobEvent. ``fields`` may set host_id, attempt, started_at,
        completed_at, output, error, usage, events, credits_used_micro (started_at/completed_at default to now
        on entering started/a terminal state). InvalidTransition when the table forbids it or another writer won;
        NotFound when the job does not exist. Use ``finish`` for terminal states so credits are settled."""
        with db.write_session(self.engine) as session:
            jobs.transition(session, job_id, to, reason, fields)
            return jobs.get(session, job_id)

    def start_job(self, job_id: str, host_id: str, attempt: int, streaming: bool = False) -> None:
        """queued → assigned → started in one transaction (every event recorded), and on to streaming with
        ``streaming`` (the host's first batch held output): the host has begun the job's ``attempt``. One write
        where the dispatcher would otherwise make three."""
        with db.write_session(self.engine) as session:
            jobs.start(session, job_id, host_id, attempt, streaming)

    def requeue(self, job_id: str, reason: str) -> Job:
        """assigned/started/streaming → queued, attempt + 1, host cleared (its host was lost)."""
        with db.write_session(self.engine) as session:
            jobs.requeue(session, job_id, reason)
            return jobs.get(session, job_id)

    def finish(
        self,
        job_id: str,
        to: JobStatus,
        *,
        output: str | None = None,
        error: str | None = None,
        usage: Mapping[str, Any] | None = None,
        events: list[dict[str, Any]] | None = None,
        price_micro: int = 0,
        host_id: str | None = None,
        reason: str | None = None,
        karma: KarmaKind | None = None,
        compute_s: float = 0.0,
        clearing_price_micro: int | None = None,
        receipt: Receipt | None = None,
    ) -> Job:
        """The terminal move and the credit settlement in one transaction. ``succeeded`` charges ``price_micro``
        (capped at the reservation; the host earns it minus the platform fee) and releases the rest;
        failed/cancelled/timed_out refund the whole reservation. ``karma`` appends the host's karma event for
        this outcome in the same transaction. ``clearing_price_micro``: the per-job price the job cleared at
        (its host's effective ask), kept with a succeeded job for the market's history. ``receipt``: the host's
        signed receipt the coordinator accepted for it (receipts.py), kept with a succeeded job."""
        if to not in TERMINAL_JOB_STATES:
            raise InvalidTransition(f"finish() takes a terminal state, not {to}", job_id=job_id, to=str(to))
        with db.write_session(self.engine) as session:
            row = jobs.locked(session, job_id)
            account_id, reserved = row["account_id"], row["reserved_micro"]
            earner = host_id or row["host_id"]
            charged = max(0, min(price_micro, reserved)) if to is JobStatus.SUCCEEDED else 0
            values: dict[str, Any] = {
                "completed_at": utcnow(),  # set here, as the returned record is built from what was written
                "output": output,
                "error": error,
                "credits_used_micro": charged,
                "usage": dict(usage) if usage is not None else None,
                "events": events,
            }
            if host_id is not None:
                values["host_id"] = host_id
            if clearing_price_micro is not None and to is JobStatus.SUCCEEDED:
                values["clearing_price_micro"] = max(0, clearing_price_micro)
            if receipt is not None and to is JobStatus.SUCCEEDED:
                values["receipt"] = jobs.stored_receipt(receipt)
            jobs.transition(session, job_id, to, reason or str(to), values, source=JobStatus(row["status"]))
            if to is JobStatus.SUCCEEDED:
                credits.settle(session, account_id, job_id, reserved, charged, earner, self.platform_fee_bps)
            else:
                credits.refund(session, account_id, job_id, reserved)
            if karma is not None and earner is not None:
                hosts.add_karma(session, self.karma_rules, earner, karma, job_id=job_id, compute_s=compute_s,
                                adjustment=0.0, reason=None)
            return jobs.record({**row, **values, "status": to})

    def save_events(self, checkpoints: Mapping[str, list[dict[str, Any]]]) -> int:
        """Checkpoint running jobs' live events (what each stream has carried so far), in one transaction, so a
        restarted coordinator resumes their streams where they were. A job that has ended meanwhile keeps its
        final events. Returns how many were saved."""
        with db.write_session(self.engine) as session:
            return sum(jobs.save_events(session, job_id, events) for job_id, events in checkpoints.items())

    def create_batch(self, account_id: int, workload_slug: str, inputs: list[dict[str, Any]],
                     reserves_micro: list[int], region: str | None = None, priority: int = 0, *,
                     merge_strategy: str = "concat", fail_mode: str = "best_effort",
                     max_parallelism: int | None = None, bid_price_micro: int | None = None) -> JobBatch:
        """A batch's parent and one child per input, every child's reservation held, in one transaction;
        PaymentRequired for the whole batch's price when the balance is short (nothing written then)."""
        with db.write_session(self.engine) as session:
            return batches.create(session, account_id, workload_slug, inputs, reserves_micro, region, priority,
                                  merge_strategy=merge_strategy, fail_mode=fail_mode,
                                  max_parallelism=max_parallelism, bid_price_micro=bid_price_micro)

    def get_batch(self, parent_id: str, account_id: int | None = None) -> JobBatch:
        """The batch and its children; NotFound when absent, no batch, or (with ``account_id``) another's."""
        with db.read_session(self.engine) as session:
            return batches.read(session, parent_id, account_id)

    def cancel_waiting_children(self, parent_id: str, child_ids: list[str], reason: str) -> list[JobId]:
        """Cancel and refund those of ``child_ids`` no host has begun, in one transaction; their ids."""
        with db.write_session(self.engine) as session:
            return batches.cancel_waiting(session, parent_id, child_ids, reason)

    def queue_children(self, parent_id: str, child_ids: list[str]) -> list[Job]:
        """Release children of a batch: the ``submitted`` ones move to ``queued``, in one transaction; each
        child as it is now, in index order."""
        with db.write_session(self.engine) as session:
            return batches.queue_children(session, parent_id, child_ids)

    def job_statuses(self, job_ids: list[str]) -> dict[JobId, JobStatus]:
        """The status of each job (one read for many)."""
        with db.read_session(self.engine) as session:
            return batches.statuses(session, job_ids)

    def unfinished_jobs(self) -> list[Job]:
        """Every job not in a terminal state, oldest first: what a starting coordinator resumes."""
        with db.read_session(self.engine) as session:
            return jobs.unfinished(session)

    def get_job(self, job_id: str, account_id: int | None = None) -> Job:
        """NotFound when absent, or when ``account_id`` is given and the job is another account's."""
        with db.read_session(self.engine) as session:
            return jobs.get(session, job_id, account_id)

    def list_jobs(self, account_id: int, limit: int = 20, offset: int = 0) -> tuple[list[Job], int]:
        """One page of the account's jobs, newest first, and the total count."""
        with db.read_session(self.engine) as session:
            return jobs.list_for(session, account_id, max(0, limit), max(0, offset))

    def job_events(self, job_id: str) -> list[JobEvent]:
        """The job's state-transition history, oldest first."""
        with db.read_session(self.engine) as session:
            jobs.status_of(session, job_id)  # NotFound for an unknown job
            return jobs.events(session, job_id)

    def stored_output_events(self, job_id: str) -> list[dict[str, Any]]:
        """The protocol events stored with the finished job (empty while it runs)."""
        with db.read_session(self.engine) as session:
            return jobs.stored_output_events(session, job_id)

    # --- credits --------------------------------------------------------------------------------------

    def balance_micro(self, account_id: int) -> int:
        with db.read_session(self.engine) as session:
            return credits.balance_micro(session, account_id)

    def host_earnings_micro(self, host_id: str) -> int:
        with db.read_session(self.engine) as session:
            return credits.host_earnings_micro(session, host_id)

    def total_is_zero(self) -> bool:
        """The double-entry invariants hold (see ``credits.total_is_zero``)."""
        with db.read_session(self.engine) as session:
            return credits.total_is_zero(session)

    def audit(self) -> list[str]:
        """What is wrong with the books (empty when nothing): ``total_is_zero``, no held money below zero, and each
        host's kept karma total the sum of its events."""
        with db.read_session(self.engine) as session:
            return credits.audit(session) + hosts.karma_audit(session)

    # --- earnings, payouts, usage ---------------------------------------------------------------------

    def earnings(self, account_id: int, start: date | None = None, end: date | None = None,
                 host_id: str | None = None) -> Earnings:
        """The owner's hosts' earnings per day and host over ``[start, end]`` (default: the last 30 days)."""
        start, end = period(start, end, utcnow().date())
        with db.read_session(self.engine) as session:
            return earnings_ledger.earnings(session, account_id, start, end, host_id)

    def usage(self, account_id: int, start: date | None = None, end: date | None = None) -> Usage:
        """The account's spend per day and workload over ``[start, end]`` (default: the last 30 days)."""
        start, end = period(start, end, utcnow().date())
        with db.read_session(self.engine) as session:
            return earnings_ledger.usage(session, account_id, start, end)

    def payout(self, account_id: int, amount_micro: int) -> Payout:
        """Pay out unpaid earnings: Forbidden under the karma payout threshold, Conflict past what is unpaid."""
        with db.write_session(self.engine) as session:
            return earnings_ledger.payout(session, account_id, amount_micro, self.karma_rules)

    def payouts(self, account_id: int) -> list[Payout]:
        with db.read_session(self.engine) as session:
            return earnings_ledger.payouts(session, account_id)

    # --- hosts and karma ------------------------------------------------------------------------------

    def upsert_host(
        self,
        host_id: str,
        name: str,
        region: str,
        capabilities: Mapping[str, Any],
        status: HostStatus = HostStatus.JOINING,
    ) -> Host:
        """Record a host or update a known one; a status change must follow the host lifecycle."""
        with db.write_session(self.engine) as session:
            hosts.upsert(session, host_id, name, region, dict(capabilities), status)
            return self._host(session, host_id)

    def set_host_status(self, host_id: str, status: HostStatus) -> Host:
        """Guarded by lifecycle.HOST_TRANSITIONS; moving to the current state is a no-op."""
        with db.write_session(self.engine) as session:
            hosts.set_status(session, host_id, status)
            return self._host(session, host_id)

    def record_heartbeat(self, host_id: str, at: datetime | None = None) -> None:
        with db.write_session(self.engine) as session:
            hosts.record_heartbeat(session, host_id, at or utcnow())

    def list_hosts(self) -> list[Host]:
        with db.read_session(self.engine) as session:
            return self._hosts(session, hosts.all_rows(session))

    def suspend_host(self, host_id: str, reason: str) -> Host:
        """An operator's suspension: the host takes no new jobs until ``reinstate_host``, across its rejoins and
        placement's restarts. A host already suspended keeps its first reason; NotFound for an unknown host."""
        with db.write_session(self.engine) as session:
            hosts.suspend(session, host_id, reason, utcnow())
            return self._host(session, host_id)

    def reinstate_host(self, host_id: str) -> Host:
        """Lift an operator's suspension (karma's, if any, holds on its own); NotFound for an unknown host."""
        with db.write_session(self.engine) as session:
            hosts.reinstate(session, host_id)
            return self._host(session, host_id)

    def suspended_hosts(self) -> list[Host]:
        """The hosts an operator suspended, with why and since when, longest suspended first."""
        with db.read_session(self.engine) as session:
            return self._hosts(session, hosts.suspended_rows(session))

    def _hosts(self, session: Any, rows: list[Any]) -> list[Host]:
        totals = hosts.karma_totals(session, self.karma_rules)
        active = jobs.active_counts(session)
        return [hosts.record(row, self.karma_rules.score(totals.get(row.id, 0.0)), active.get(row.id, 0))
                for row in rows]

    def get_host(self, host_id: str) -> Host:
        with db.read_session(self.engine) as session:
            return self._host(session, host_id)

    def _host(self, session: Any, host_id: str) -> Host:
        row = hosts.get_row(session, host_id)
        score = self.karma_rules.score(hosts.karma_total(session, host_id, self.karma_rules))
        return hosts.record(row, score, jobs.active_counts(session).get(host_id, 0))

    def record_karma(
        self,
        host_id: str,
        kind: KarmaKind,
        *,
        job_id: str | None = None,
        compute_s: float = 0.0,
        adjustment: float = 0.0,
        reason: str | None = None,
    ) -> KarmaEvent:
        """Append one karma event; its points come from the karma rules."""
        with db.write_session(self.engine) as session:
            return hosts.add_karma(
                session,
                self.karma_rules,
                host_id,
                kind,
                job_id=job_id,
                compute_s=compute_s,
                adjustment=adjustment,
                reason=reason,
            )

    def karma_events(self, host_id: str, limit: int | None = None, offset: int = 0) -> list[KarmaEvent]:
        """All of a host's events oldest first; with ``limit``, one page of them newest first."""
        with db.read_session(self.engine) as session:
            return hosts.karma_events(session, host_id, limit, offset)

    def karma_event_count(self, host_id: str) -> int:
        with db.read_session(self.engine) as session:
            return hosts.karma_event_count(session, host_id)

    def karma_score(self, host_id: str) -> float:
        """The derived score in [0, 1] placement reads."""
        return self.karma_state(host_id).score

    def karma_state(self, host_id: str) -> KarmaState:
        """A host's karma now (recovery included): total, score, standing, placement share and why."""
        with db.read_session(self.engine) as session:
            hosts.get_row(session, host_id)
            return self.karma_rules.state(hosts.karma_total(session, host_id, self.karma_rules))

    def karma_states(self, host_ids: Collection[str]) -> dict[HostId, KarmaState]:
        """Each of these hosts' karma now, in one read (placement's fleet round); a host without events is neutral,
        known to the ledger or not."""
        with db.read_session(self.engine) as session:
            totals = hosts.karma_totals(session, self.karma_rules, host_ids=host_ids)
        return {HostId(host_id): self.karma_rules.state(totals.get(host_id, 0.0)) for host_id in host_ids}

    # --- the exchange --------------------------------------------------------------------------------

    def set_asking_prices(self, host_id: str, asks: Mapping[str, int]) -> dict[str, int]:
        """Replace what the host asks per job, by workload slug or fnmatch family (empty: the catalog's prices);
        the asks as stored. NotFound for an unknown host, ValidationFailed for a wrong pattern or price. The
        network's bounds are checked before this (``market.pricing.check_asks``)."""
        with db.write_session(self.engine) as session:
            market.set_asks(session, host_id, asks, utcnow())
            return market.asks(session, host_id).get(HostId(host_id), {})

    def asking_prices(self, host_id: str | None = None) -> dict[HostId, dict[str, int]]:
        """Every host's asks (or one host's), by host then pattern; a host that asks nothing is absent."""
        with db.read_session(self.engine) as session:
            return market.asks(session, host_id)

    def set_bid_preference(self, account_id: int, slug: str, price_micro: int | None) -> dict[str, int]:
        """Save the most the account pays per job of ``slug`` (a slug or a family) when a request names no bid;
        None forgets it. The account's saved bids as they are now."""
        with db.write_session(self.engine) as session:
            market.set_bid(session, account_id, slug, price_micro, utcnow())
            return market.bids(session, account_id).get(AccountId(account_id), {})

    def bid_preferences(self, account_id: int) -> dict[str, int]:
        with db.read_session(self.engine) as session:
            return market.bids(session, account_id).get(AccountId(account_id), {})

    def all_bid_preferences(self) -> dict[AccountId, dict[str, int]]:
        """Every account's saved bids: what the jobs service caches, so a submission reads none."""
        with db.read_session(self.engine) as session:
            return market.bids(session)

    def market_history(self, slug: str, since: datetime, bucket_s: int) -> list[dict[str, Any]]:
        """The clearing prices of ``slug``'s settled jobs since ``since`` per bucket of ``bucket_s`` seconds:
        ``start``, ``count``, ``min_micro``, ``median_micro``, ``avg_micro``, ``max_micro`` (see
        ``market.history``)."""
        with db.read_session(self.engine) as session:
            return market.history(session, slug, since, bucket_s)

    # --- enrolment ------------------------------------------------------------------------------------

    def request_pairing(self, public_key: str, name: str, region: str, hardware: Mapping[str, Any],
                        ttl_s: float) -> tuple[str, datetime]:
        """A pairing code for a host's key (shown once; stored hashed) and when it expires."""
        with db.write_session(self.engine) as session:
            return enrolment.request_pairing(session, public_key, name, region, dict(hardware), ttl_s, utcnow())

    def approve_pairing(self, account_id: int, code: str) -> Host:
        """Enrol the host waiting with ``code`` under ``account_id``; NotFound for a wrong, used or expired code."""
        with db.write_session(self.engine) as session:
            host_id = enrolment.approve_pairing(session, account_id, code, utcnow())
            return self._host(session, host_id)

    def enrol_host(self, host_id: str, public_key: str, owner_account_id: int, name: str, region: str,
                   capabilities: Mapping[str, Any] | None = None) -> Host:
        """The step an approval takes, for a host its owner starts directly (``archipelag up``'s local hosts)."""
        with db.write_session(self.engine) as session:
            enrolment.enrol(session, host_id, public_key, owner_account_id, name, region, dict(capabilities or {}),
                            utcnow())
            return self._host(session, host_id)

    def enrolment_status(self, public_key: str) -> HostIdentity | Pairing | None:
        with db.read_session(self.engine) as session:
            return enrolment.status_of_key(session, public_key, utcnow())

    def host_identity(self, host_id: str) -> HostIdentity | None:
        """The enrolled key and owner of a host, and whether it is revoked; None when it never enrolled."""
        with db.read_session(self.engine) as session:
            return enrolment.identity_of(session, host_id)

    def revoke_host(self, host_id: str, account_id: int, is_admin: bool, reason: str) -> Host:
        with db.write_session(self.engine) as session:
            enrolment.revoke(session, host_id, account_id, is_admin, reason, utcnow())
            return self._host(session, host_id)

    def owned_hosts(self, account_id: int) -> list[Host]:
        with db.read_session(self.engine) as session:
            totals = hosts.karma_totals(session, self.karma_rules)
            active = jobs.active_counts(session)
            return [hosts.record(row, self.karma_rules.score(totals.get(row.id, 0.0)), active.get(row.id, 0))
                    for row in enrolment.owned_by(session, account_id)]
