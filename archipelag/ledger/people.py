"""People: the ledger's facade for accounts, API keys, browser sessions, sign-up and administration.

``Ledger`` includes this class; like the rest of the facade, each method is synchronous and thread-safe, opens
its own transaction and returns records (``records.py``), never rows. Passwords arrive hashed.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable
from datetime import datetime, timedelta

from sqlalchemy import Engine, func, select
from sqlmodel import col

from archipelag.errors import Conflict, Forbidden, ValidationFailed
from archipelag.ledger import accounts, credits, db
from archipelag.ledger.records import Account, ApiKey, Invite, Session
from archipelag.ledger.tables import JobRow, TransferRow, utcnow

KEY_TOUCH_INTERVAL_S = 5.0  # authenticate() writes last_used_at at most this often per key (per process)
MAX_PENDING_MAILS = 5  # unexpired verify/reset links one account may have at once (bounds mail sent for it)


class People:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._touched: dict[int, float] = {}
        self._touched_lock = threading.Lock()

    # --- accounts -------------------------------------------------------------------------------------

    def create_account(self, email: str, credits_micro: int, home_region: str | None = None, *,
                       password_hash: str | None = None, verified: bool = True,
                       is_admin: bool | None = None) -> Account:
        """A new account holding ``credits_micro`` granted credits (made by the operator: verified unless
        told otherwise). Conflict when the email is taken; the network's first account is its admin."""
        with db.write_session(self.engine) as session:
            return accounts.create_account(session, email, credits_micro, home_region, password_hash=password_hash,
                                           verified=verified, is_admin=is_admin)

    def get_account(self, account_id: int) -> Account:
        with db.read_session(self.engine) as session:
            return accounts.get_account(session, account_id)

    def find_account(self, email: str) -> Account | None:
        with db.read_session(self.engine) as session:
            return accounts.find_account(session, email)

    def grant_credits(self, account_id: int, credits_micro: int, memo: str | None = None) -> Account:
        """Credits from the mint to the account: one double-entry transfer."""
        if credits_micro <= 0:
            raise ValidationFailed("a grant must be positive", errors={"amount": "must be > 0"})
        with db.write_session(self.engine) as session:
            accounts.get_account(session, account_id)
            credits.grant(session, account_id, credits_micro, memo)
            return accounts.get_account(session, account_id)

    # --- sign-up, sign-in, verification, reset --------------------------------------------------------------

    def sign_up(self, email: str, password_hash: str, *, invite_code: str | None, require_invite: bool,
                verify_ttl_s: float) -> tuple[Account, str]:
        """A new, unverified account without credits, and the token of its verification link. With
        ``require_invite`` the invite code is spent in the same transaction (an invite for one address only
        admits that address)."""
        with db.write_session(self.engine) as session:
            if require_invite or invite_code:
                if not invite_code:
                    raise ValidationFailed("this network admits new accounts by invitation: send `invite_code`",
                                           errors={"invite_code": "required"})
                invite = accounts.use_token(session, invite_code, "invite")
                if invite.email and invite.email != accounts.normalized_email(email):
                    raise ValidationFailed("this invitation is for another address",
                                           errors={"invite_code": "for another address"})
            account = accounts.create_account(session, email, 0, None, password_hash=password_hash)
            token, _ = accounts.issue_token(session, account.id, "verify", timedelta(seconds=verify_ttl_s))
            return account, token

    def account_for_sign_in(self, email: str) -> tuple[Account, str] | None:
        """The account with this address and its password hash (None when there is none to sign in to)."""
        with db.read_session(self.engine) as session:
            return accounts.account_for_sign_in(session, email)

    def verify_email(self, token: str, grant_micro: int) -> Account:
        """Spend a verification token; the first verification brings the sign-up grant."""
        with db.write_session(self.engine) as session:
            spent = accounts.use_token(session, token, "verify")
            return accounts.mark_verified(session, spent.account_id, grant_micro)

    def new_verification(self, account_id: int, ttl_s: float) -> str | None:
        """Another verification token (None when the account is verified or has enough pending links)."""
        with db.write_session(self.engine) as session:
            account = accounts.get_account(session, account_id)
            if account.verified or accounts.pending_tokens(session, account_id, "verify") >= MAX_PENDING_MAILS:
                return None
            return accounts.issue_token(session, account_id, "verify", timedelta(seconds=ttl_s))[0]

    def password_reset_token(self, email: str, ttl_s: float) -> tuple[Account, str] | None:
        """A reset token for the account with this address; None when there is none (the caller answers the
        same either way, so nobody learns which addresses have accounts) or it has enough pending links."""
        with db.write_session(self.engine) as session:
            found = accounts.account_for_sign_in(session, email)
            if found is None or found[0].suspended:
                return None
            account = found[0]
            if accounts.pending_tokens(session, account.id, "reset") >= MAX_PENDING_MAILS:
                return None
            return account, accounts.issue_token(session, account.id, "reset", timedelta(seconds=ttl_s))[0]

    def reset_password(self, token: str, password_hash: str) -> Account:
        """Spend a reset token and set the new password; every session of the account ends."""
        with db.write_session(self.engine) as session:
            spent = accounts.use_token(session, token, "reset")
            accounts.set_password(session, spent.account_id, password_hash)
            return accounts.get_account(session, spent.account_id)

    def change_password(self, account_id: int, password_hash: str) -> None:
        with db.write_session(self.engine) as session:
            accounts.set_password(session, account_id, password_hash)

    # --- sessions -------------------------------------------------------------------------------------

    def start_session(self, account_id: int, ttl_s: float) -> tuple[Session, str]:
        with db.write_session(self.engine) as session:
            return accounts.create_session(session, account_id, timedelta(seconds=ttl_s))

    def authenticate_session(self, token: str) -> tuple[Account, Session]:
        with db.read_session(self.engine) as session:
            return accounts.find_session(session, token, utcnow())

    def end_session(self, session_id: int) -> None:
        with db.write_session(self.engine) as session:
            accounts.end_session(session, session_id)

    # --- api keys -------------------------------------------------------------------------------------

    def create_api_key(
        self,
        account_id: int,
        name: str,
        scopes: Iterable[str] = ("read", "write"),
        expires_at: datetime | None = None,
        within: Iterable[str] | None = None,
    ) -> tuple[ApiKey, str]:
        """A new key and its full text (``ak_…``), which is shown once and never stored. ``within``: the
        scopes of the key asking for it (None: a signed-in person or the operator)."""
        with db.write_session(self.engine) as session:
            return accounts.create_api_key(session, account_id, name, scopes, expires_at,
                                           tuple(within) if within is not None else None)

    def authenticate(self, full_key: str) -> tuple[Account, ApiKey]:
        """The account and key behind a bearer key; Unauthorized when unknown, revoked or expired, Forbidden
        when the account is suspended."""
        now = utcnow()
        with db.read_session(self.engine) as session:
            account, key = accounts.find_key(session, full_key, now)
        if self._due_for_touch(key.id):
            with db.write_session(self.engine) as session:
                accounts.touch_key(session, key.id, now)
            key = ApiKey(**{**key.__dict__, "last_used_at": now})
        return account, key

    def _due_for_touch(self, key_id: int) -> bool:
        clock = time.monotonic()
        with self._touched_lock:
            last = self._touched.get(key_id)
            if last is not None and clock - last < KEY_TOUCH_INTERVAL_S:
                return False
            self._touched[key_id] = clock
            return True

    def list_api_keys(self, account_id: int) -> list[ApiKey]:
        """The account's keys that are not revoked, oldest first."""
        with db.read_session(self.engine) as session:
            return accounts.list_api_keys(session, account_id)

    def revoke_api_key(self, account_id: int, key_id: int) -> ApiKey:
        """Revoke one of the account's keys; NotFound when it is not theirs (or already revoked)."""
        with db.write_session(self.engine) as session:
            return accounts.revoke_api_key(session, account_id, key_id)

    # --- administration -------------------------------------------------------------------------------

    def list_accounts(self, query: str | None = None, limit: int = 50, offset: int = 0) -> tuple[list[Account], int]:
        with db.read_session(self.engine) as session:
            return accounts.list_accounts(session, query, limit, offset)

    def set_suspended(self, account_id: int, reason: str | None) -> Account:
        """Suspend an account (``reason``) or reinstate it (None)."""
        with db.write_session(self.engine) as session:
            return accounts.set_suspended(session, account_id, reason)

    def set_admin(self, account_id: int, is_admin: bool) -> Account:
        with db.write_session(self.engine) as session:
            return accounts.set_admin(session, account_id, is_admin)

    def create_invite(self, admin_id: int, email: str | None, ttl_s: float) -> Invite:
        with db.write_session(self.engine) as session:
            if not accounts.get_account(session, admin_id).is_admin:
                raise Forbidden("only an admin invites")
            if email and accounts.find_account(session, email):
                raise Conflict(f"an account with email {email!r} already exists")
            return accounts.create_invite(session, admin_id, email, timedelta(seconds=ttl_s))

    def network_stats(self) -> dict[str, object]:
        """Counts an operator watches: accounts, jobs by status, credits granted and spent."""
        with db.read_session(self.engine) as session:
            jobs_by_status = {status: int(count) for status, count in session.execute(
                select(col(JobRow.status), func.count()).group_by(col(JobRow.status)))}
            transfers = {kind: int(count) for kind, count in session.execute(
                select(col(TransferRow.kind), func.count()).group_by(col(TransferRow.kind)))}
            return {
                **accounts.account_stats(session),
                "jobs": sum(jobs_by_status.values()),
                "jobs_by_status": jobs_by_status,
                "credits_granted_micro": -credits.book_balance_micro(session, "mint"),
                "platform_fees_micro": credits.book_balance_micro(session, "platform"),
                "escrow_micro": credits.book_balance_micro(session, "escrow"),
                "transfers_by_kind": transfers,
            }
