"""LedgerClient: the typed, async way to reach the ledger; callers never write `.remote()` or method names.

In a network the ledger lives in a named actor on the head (its own process: SQL never runs on an API or
scheduler event loop, and one call at a time suits SQLite). ``local`` runs the same ``Ledger`` in this
process, its calls in threads, for tests that do not start Ray.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from datetime import date, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from archipelag.errors import LedgerError
from archipelag.ids import AccountId, HostId, JobId
from archipelag.ledger.karma_rules import KarmaKind, KarmaRules, KarmaState
from archipelag.ledger.records import (
    Account,
    ApiKey,
    Earnings,
    Host,
    HostIdentity,
    Invite,
    Job,
    JobBatch,
    KarmaEvent,
    Pairing,
    Payout,
    Session,
    Usage,
    Workload,
)
from archipelag.lifecycle import HostStatus, JobStatus
from archipelag.nodes import services_dir
from archipelag.receipts import Receipt
from archipelag.remote import Calls, LocalCalls, RayCalls
from archipelag.settings import Settings
from archipelag.socket_calls import OrderedCalls

if TYPE_CHECKING:  # SQL: only the ledger's own process (and `start`, which creates it) loads it
    from archipelag.ledger.ledger import Ledger

ACTOR_NAME = "ledger"


def socket_path(settings: Settings) -> Path:
    return services_dir(settings.state_dir) / "ledger.sock"


class _SocketCalls:
    """Calls over the ledger's socket (``socket_calls.OrderedCalls``), in the order they are made. When nothing
    answers there (Ray is restarting the ledger), a call through Ray waits for it to be up, then it connects."""

    def __init__(self, path: Path, ray_calls: RayCalls) -> None:
        async def wake() -> None:
            await ray_calls.call("schema_version")

        self._socket = OrderedCalls(path, "ledger", wake)

    async def call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        return await self._socket.call(method, *args, **kwargs)

    def send(self, method: str, *args: Any, **kwargs: Any) -> None:
        self._socket.send(method, *args, **kwargs)  # never raises: a lost notice is logged

    def stream(self, method: str, *args: Any) -> AsyncIterator[Any]:
        raise NotImplementedError("the ledger streams nothing")


class LedgerClient:
    def __init__(self, calls: Calls) -> None:
        self._calls = calls

    @classmethod
    def start(cls, settings: Settings, resources: dict[str, float] | None = None) -> LedgerClient:
        """Create the named, detached ledger actor (or find the running one) and return at once: calls wait for
        it to be up (``Coordinator.start_services`` waits for every service together)."""
        import ray

        from archipelag.ledger.served import ServedLedger

        actor: Any = ray.remote(ServedLedger)
        handle = actor.options(
            name=ACTOR_NAME, namespace=settings.ray_namespace, lifetime="detached", get_if_exists=True,
            num_cpus=0, max_concurrency=1, max_restarts=-1, resources=resources or {},
        ).remote(settings.effective_database_url(), socket=socket_path(settings),
                 platform_fee_bps=settings.platform_fee_bps, karma_rules=KarmaRules.from_settings(settings.karma))
        return cls(RayCalls(handle, "ledger"))

    @classmethod
    def connect(cls, settings: Settings) -> LedgerClient:
        import ray

        try:
            return cls(RayCalls(ray.get_actor(ACTOR_NAME, namespace=settings.ray_namespace), "ledger"))
        except ValueError:
            raise LedgerError("the ledger actor is not running; start the coordinator first") from None

    @classmethod
    def nearby(cls, settings: Settings) -> LedgerClient:
        """The running ledger over its socket, for a caller on its machine that calls it from one event loop (the
        jobs service): its calls keep their order, as through Ray (``ledger/served.py``)."""
        import ray

        try:
            handle = ray.get_actor(ACTOR_NAME, namespace=settings.ray_namespace)
        except ValueError:
            raise LedgerError("the ledger actor is not running; start the coordinator first") from None
        return cls(_SocketCalls(socket_path(settings), RayCalls(handle, "ledger")))

    @classmethod
    def local(cls, ledger: Ledger) -> LedgerClient:
        return cls(LocalCalls(ledger))

    # --- accounts and keys ------------------------------------------------------------------------

    async def authenticate(self, full_key: str) -> tuple[Account, ApiKey]:
        account, key = await self._calls.call("authenticate", full_key)
        return account, key

    async def get_account(self, account_id: int) -> Account:
        account: Account = await self._calls.call("get_account", account_id)
        return account

    async def balance_micro(self, account_id: int) -> int:
        return int(await self._calls.call("balance_micro", account_id))

    async def create_api_key(self, account_id: int, name: str, scopes: tuple[str, ...],
                             expires_at: datetime | None, within: tuple[str, ...] | None = None,
                             ) -> tuple[ApiKey, str]:
        key, full = await self._calls.call("create_api_key", account_id, name, scopes, expires_at, within)
        return key, full

    async def list_api_keys(self, account_id: int) -> list[ApiKey]:
        return list(await self._calls.call("list_api_keys", account_id))

    async def revoke_api_key(self, account_id: int, key_id: int) -> ApiKey:
        key: ApiKey = await self._calls.call("revoke_api_key", account_id, key_id)
        return key

    # --- sign-up, sessions, administration (``people.People``) -------------------------------------

    async def sign_up(self, email: str, password_hash: str, *, invite_code: str | None, require_invite: bool,
                      verify_ttl_s: float) -> tuple[Account, str]:
        account, token = await self._calls.call("sign_up", email, password_hash, invite_code=invite_code,
                                                require_invite=require_invite, verify_ttl_s=verify_ttl_s)
        return account, token

    async def account_for_sign_in(self, email: str) -> tuple[Account, str] | None:
        found: tuple[Account, str] | None = await self._calls.call("account_for_sign_in", email)
        return found

    async def verify_email(self, token: str, grant_micro: int) -> Account:
        account: Account = await self._calls.call("verify_email", token, grant_micro)
        return account

    async def new_verification(self, account_id: int, ttl_s: float) -> str | None:
        token: str | None = await self._calls.call("new_verification", account_id, ttl_s)
        return token

    async def password_reset_token(self, email: str, ttl_s: float) -> tuple[Account, str] | None:
        found: tuple[Account, str] | None = await self._calls.call("password_reset_token", email, ttl_s)
        return found

    async def reset_password(self, token: str, password_hash: str) -> Account:
        account: Account = await self._calls.call("reset_password", token, password_hash)
        return account

    async def change_password(self, account_id: int, password_hash: str) -> None:
        await self._calls.call("change_password", account_id, password_hash)

    async def start_session(self, account_id: int, ttl_s: float) -> tuple[Session, str]:
        session, token = await self._calls.call("start_session", account_id, ttl_s)
        return session, token

    async def authenticate_session(self, token: str) -> tuple[Account, Session]:
        account, session = await self._calls.call("authenticate_session", token)
        return account, session

    async def end_session(self, session_id: int) -> None:
        await self._calls.call("end_session", session_id)

    async def find_account(self, email: str) -> Account | None:
        account: Account | None = await self._calls.call("find_account", email)
        return account

    async def list_accounts(self, query: str | None, limit: int, offset: int) -> tuple[list[Account], int]:
        found, total = await self._calls.call("list_accounts", query, limit, offset)
        return list(found), int(total)

    async def grant_credits(self, account_id: int, credits_micro: int, memo: str | None) -> Account:
        account: Account = await self._calls.call("grant_credits", account_id, credits_micro, memo)
        return account

    async def set_suspended(self, account_id: int, reason: str | None) -> Account:
        account: Account = await self._calls.call("set_suspended", account_id, reason)
        return account

    async def set_admin(self, account_id: int, is_admin: bool) -> Account:
        account: Account = await self._calls.call("set_admin", account_id, is_admin)
        return account

    async def create_invite(self, admin_id: int, email: str | None, ttl_s: float) -> Invite:
        invite: Invite = await self._calls.call("create_invite", admin_id, email, ttl_s)
        return invite

    async def network_stats(self) -> dict[str, Any]:
        stats: dict[str, Any] = await self._calls.call("network_stats")
        return stats

    # --- workloads --------------------------------------------------------------------------------

    async def list_workloads(self) -> list[Workload]:
        return list(await self._calls.call("list_workloads"))

    async def get_workload(self, slug_or_id: str | int) -> Workload:
        workload: Workload = await self._calls.call("get_workload", slug_or_id)
        return workload

    # --- jobs -------------------------------------------------------------------------------------

    async def create_job(self, account_id: int, workload_slug: str, job_input: Mapping[str, Any],
                         region: str | None, priority: int, reserve_micro: int, job_id: JobId,
                         bid_price_micro: int | None = None) -> Job:
        """The job, queued, with its maximum price reserved; PaymentRequired (402) when the balance is short."""
        job: Job = await self._calls.call("create_job", account_id, workload_slug, dict(job_input), region=region,
                                          priority=priority, reserve_micro=reserve_micro, queue=True,
                                          job_id=job_id, bid_price_micro=bid_price_micro)
        return job

    async def transition(self, job_id: JobId, to: JobStatus, reason: str | None = None, **fields: Any) -> Job:
        job: Job = await self._calls.call("transition", job_id, to, reason, **fields)
        return job

    async def start_job(self, job_id: JobId, host_id: str, attempt: int, streaming: bool = False) -> None:
        await self._calls.call("start_job", job_id, host_id, attempt, streaming)

    async def requeue(self, job_id: JobId, reason: str) -> Job:
        job: Job = await self._calls.call("requeue", job_id, reason)
        return job

    async def finish(self, job_id: JobId, to: JobStatus, *, output: str | None, error: str | None,
                     usage: Mapping[str, Any], events: list[dict[str, Any]], price_micro: int,
                     host_id: str | None, karma: KarmaKind | None = None, compute_s: float = 0.0,
                     clearing_price_micro: int | None = None, receipt: Receipt | None = None) -> Job:
        job: Job = await self._calls.call("finish", job_id, to, output=output, error=error, usage=dict(usage),
                                          events=events, price_micro=price_micro, host_id=host_id, karma=karma,
                                          compute_s=compute_s, clearing_price_micro=clearing_price_micro,
                                          receipt=receipt)
        return job

    async def save_events(self, checkpoints: Mapping[JobId, list[dict[str, Any]]]) -> None:
        await self._calls.call("save_events", dict(checkpoints))

    async def get_job(self, job_id: str, account_id: int | None = None) -> Job:
        job: Job = await self._calls.call("get_job", job_id, account_id)
        return job

    async def list_jobs(self, account_id: int, limit: int, offset: int) -> tuple[list[Job], int]:
        jobs, total = await self._calls.call("list_jobs", account_id, limit, offset)
        return list(jobs), int(total)

    async def create_batch(self, account_id: int, workload_slug: str, inputs: list[dict[str, Any]],
                           reserves_micro: list[int], region: str | None, priority: int, *, merge_strategy: str,
                           fail_mode: str, max_parallelism: int | None, bid_price_micro: int | None) -> JobBatch:
        """The batch, every child's maximum price reserved; PaymentRequired (402) for the whole when short."""
        batch: JobBatch = await self._calls.call(
            "create_batch", account_id, workload_slug, inputs, reserves_micro, region, priority,
            merge_strategy=merge_strategy, fail_mode=fail_mode, max_parallelism=max_parallelism,
            bid_price_micro=bid_price_micro)
        return batch

    async def get_batch(self, parent_id: str, account_id: int | None = None) -> JobBatch:
        batch: JobBatch = await self._calls.call("get_batch", parent_id, account_id)
        return batch

    async def cancel_waiting_children(self, parent_id: str, child_ids: list[str], reason: str) -> list[JobId]:
        return list(await self._calls.call("cancel_waiting_children", parent_id, child_ids, reason))

    async def queue_children(self, parent_id: str, child_ids: list[str]) -> list[Job]:
        return list(await self._calls.call("queue_children", parent_id, child_ids))

    async def job_statuses(self, job_ids: list[str]) -> dict[JobId, JobStatus]:
        return dict(await self._calls.call("job_statuses", job_ids))

    async def unfinished_jobs(self) -> list[Job]:
        return list(await self._calls.call("unfinished_jobs"))

    async def stored_output_events(self, job_id: str) -> list[dict[str, Any]]:
        return list(await self._calls.call("stored_output_events", job_id))

    # --- earnings, payouts, usage ----------------------------------------------------------------

    async def earnings(self, account_id: int, start: date | None, end: date | None,
                       host_id: str | None) -> Earnings:
        found: Earnings = await self._calls.call("earnings", account_id, start, end, host_id)
        return found

    async def usage(self, account_id: int, start: date | None, end: date | None) -> Usage:
        found: Usage = await self._calls.call("usage", account_id, start, end)
        return found

    async def payout(self, account_id: int, amount_micro: int) -> Payout:
        paid: Payout = await self._calls.call("payout", account_id, amount_micro)
        return paid

    async def payouts(self, account_id: int) -> list[Payout]:
        return list(await self._calls.call("payouts", account_id))

    # --- hosts and karma --------------------------------------------------------------------------

    async def upsert_host(self, host_id: str, name: str, region: str, capabilities: Mapping[str, Any],
                          status: HostStatus) -> None:
        await self._calls.call("upsert_host", host_id, name, region, dict(capabilities), status)

    async def record_karma(self, host_id: str, kind: KarmaKind, job_id: str | None = None,
                           reason: str | None = None) -> None:
        await self._calls.call("record_karma", host_id, kind, job_id=job_id, reason=reason)

    async def karma_score(self, host_id: str) -> float:
        return float(await self._calls.call("karma_score", host_id))

    async def list_hosts(self) -> list[Host]:
        return list(await self._calls.call("list_hosts"))

    async def get_host(self, host_id: str) -> Host:
        """The ledger's record of a host; NotFound when it never was recorded."""
        host: Host = await self._calls.call("get_host", host_id)
        return host

    async def suspend_host(self, host_id: str, reason: str) -> Host:
        """An operator's suspension, kept until ``reinstate_host`` (a suspended host keeps its first reason)."""
        host: Host = await self._calls.call("suspend_host", host_id, reason)
        return host

    async def reinstate_host(self, host_id: str) -> Host:
        host: Host = await self._calls.call("reinstate_host", host_id)
        return host

    async def suspended_hosts(self) -> list[Host]:
        """The hosts an operator suspended, with why and since when."""
        return list(await self._calls.call("suspended_hosts"))

    async def karma_events(self, host_id: str, limit: int | None = None, offset: int = 0) -> list[KarmaEvent]:
        return list(await self._calls.call("karma_events", host_id, limit, offset))

    async def karma_event_count(self, host_id: str) -> int:
        return int(await self._calls.call("karma_event_count", host_id))

    async def karma_state(self, host_id: str) -> KarmaState:
        state: KarmaState = await self._calls.call("karma_state", host_id)
        return state

    # --- the exchange ---------------------------------------------------------------------------

    async def set_asking_prices(self, host_id: str, asks: Mapping[str, int]) -> dict[str, int]:
        return dict(await self._calls.call("set_asking_prices", host_id, dict(asks)))

    async def asking_prices(self, host_id: str | None = None) -> dict[HostId, dict[str, int]]:
        return dict(await self._calls.call("asking_prices", host_id))

    async def set_bid_preference(self, account_id: int, slug: str, price_micro: int | None) -> dict[str, int]:
        return dict(await self._calls.call("set_bid_preference", account_id, slug, price_micro))

    async def bid_preferences(self, account_id: int) -> dict[str, int]:
        return dict(await self._calls.call("bid_preferences", account_id))

    async def all_bid_preferences(self) -> dict[AccountId, dict[str, int]]:
        return dict(await self._calls.call("all_bid_preferences"))

    async def market_history(self, slug: str, since: datetime, bucket_s: int) -> list[dict[str, Any]]:
        return list(await self._calls.call("market_history", slug, since, bucket_s))

    # --- enrolment --------------------------------------------------------------------------------

    async def request_pairing(self, public_key: str, name: str, region: str, hardware: Mapping[str, Any],
                              ttl_s: float) -> tuple[str, datetime]:
        code, expires_at = await self._calls.call("request_pairing", public_key, name, region, dict(hardware), ttl_s)
        return code, expires_at

    async def approve_pairing(self, account_id: int, code: str) -> Host:
        host: Host = await self._calls.call("approve_pairing", account_id, code)
        return host

    async def enrolment_status(self, public_key: str) -> HostIdentity | Pairing | None:
        status: HostIdentity | Pairing | None = await self._calls.call("enrolment_status", public_key)
        return status

    async def revoke_host(self, host_id: str, account_id: int, is_admin: bool, reason: str) -> Host:
        host: Host = await self._calls.call("revoke_host", host_id, account_id, is_admin, reason)
        return host

    async def host_identity(self, host_id: str) -> HostIdentity | None:
        """A host's enrolled key and owner, and whether it is revoked; None when it never enrolled."""
        found: HostIdentity | None = await self._calls.call("host_identity", host_id)
        return found

    async def owned_hosts(self, account_id: int) -> list[Host]:
        return list(await self._calls.call("owned_hosts", account_id))
