"""Accounts API: sign-up, sign-in and sessions, email verification, password reset, the caller's account, and
API keys.

People sign in with email and password and get a session cookie (HttpOnly, SameSite=Lax, Secure) plus a CSRF
token that every state-changing request sends back in ``X-CSRF-Token``; programs use Bearer keys. Answers
never tell whether an address has an account (reset requests answer the same either way; a wrong password
and an unknown address fail alike and take as long). Passwords are hashed in a thread (argon2 is slow on
purpose); nothing here logs a password, token or key.
"""

from __future__ import annotations

import asyncio
from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path, Query, Request, Response
from pydantic import BaseModel, ConfigDict, Field

from archipelag.accounts import passwords
from archipelag.accounts.mail import reset_mail, verification_mail
from archipelag.accounts.revocations import Notice
from archipelag.catalog import MICRO
from archipelag.errors import Forbidden, NotFound, SignupClosed, Unauthorized
from archipelag.ledger.records import Account
from archipelag.serve.api_jobs import Reader, Svc, Writer
from archipelag.serve.auth import (
    CSRF_COOKIE,
    SESSION_COOKIE,
    Caller,
    client_address,
    require,
)
from archipelag.serve.responses import FastJSON, data, page
from archipelag.serve.services import Services
from archipelag.serve.views import account_view, api_key_view, iso

router = APIRouter(prefix="/api/v1")

KeyMaker = Annotated[Caller, Depends(require("keys"))]
Email = Annotated[str, Field(min_length=3, max_length=320)]
Password = Annotated[str, Field(min_length=1, max_length=passwords.MAX_BYTES)]
Token = Annotated[str, Field(min_length=1, max_length=100)]


def person_view(account: Account) -> dict[str, Any]:
    """The account as its owner (and an admin) sees it."""
    return {**account_view(account, account.credits_micro), "is_admin": account.is_admin,
            "email_verified": account.verified, "suspended": account.suspended,
            "suspended_reason": account.suspended_reason}


class SignUp(BaseModel):
    model_config = ConfigDict(extra="forbid")

    email: Email
    password: Password
    invite_code: Token | None = None


class SignIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    email: Email
    password: Password


class VerifyBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    token: Token


class ResetRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    email: Email


class ResetConfirm(BaseModel):
    model_config = ConfigDict(extra="forbid")

    token: Token
    password: Password


class PasswordChange(BaseModel):
    model_config = ConfigDict(extra="forbid")

    current_password: Password
    new_password: Password


# --- sign-up and verification ---------------------------------------------------------------------------


@router.post("/auth/signup", status_code=201)
async def sign_up(body: SignUp, request: Request, svc: Svc) -> Response:
    """Open an account. It receives its sign-up credits once its address is verified (by the mailed link)."""
    policy = svc.settings.signup_policy
    if policy == "closed":
        raise SignupClosed("this network does not take new accounts; ask its operator")
    svc.auth_failures.check(client_address(request))  # sign-ups count against the address's limit
    passwords.check_new(body.password, body.email)
    password_hash = await asyncio.to_thread(passwords.hash_password, body.password)
    account, token = await svc.ledger.sign_up(body.email, password_hash, invite_code=body.invite_code,
                                              require_invite=policy == "invite",
                                              verify_ttl_s=svc.settings.verify_link_ttl_s)
    await svc.mailer.send(verification_mail(svc.settings, account.email, token))
    return data({"account": person_view(account), "verification": "sent"}, status_code=201)


async def _verify(token: str, svc: Services) -> Response:
    account = await svc.ledger.verify_email(token, round(svc.settings.signup_credits * MICRO))
    return data({"account": person_view(account), "verified": True})


@router.get("/auth/verify")
async def verify_by_link(svc: Svc, token: Annotated[str, Query(min_length=1, max_length=100)]) -> Response:
    """The link in the verification mail."""
    return await _verify(token, svc)


@router.post("/auth/verify")
async def verify(body: VerifyBody, svc: Svc) -> Response:
    return await _verify(body.token, svc)


@router.post("/auth/verify/resend", status_code=202)
async def resend_verification(caller: Reader, svc: Svc) -> Response:
    token = await svc.ledger.new_verification(caller.account_id, svc.settings.verify_link_ttl_s)
    if token is not None:
        account = await svc.ledger.get_account(caller.account_id)
        await svc.mailer.send(verification_mail(svc.settings, account.email, token))
    return data({"verification": "sent" if token else "not needed, or enough links are pending"}, status_code=202)


# --- sessions -------------------------------------------------------------------------------------------


@router.post("/auth/signin")
async def sign_in(body: SignIn, request: Request, svc: Svc) -> Response:
    """Sign in: a session cookie, and the CSRF token to send in ``X-CSRF-Token`` on state-changing requests."""
    address = client_address(request)
    svc.auth_failures.ensure_open(address)
    found = await svc.ledger.account_for_sign_in(body.email)
    matches = await asyncio.to_thread(passwords.verify, found[1] if found else None, body.password)
    if found is None or not matches:
        svc.auth_failures.check(address)
        raise Unauthorized("wrong email or password")
    account, password_hash = found
    if await asyncio.to_thread(passwords.needs_rehash, password_hash):
        await svc.ledger.change_password(account.id, await asyncio.to_thread(passwords.hash_password, body.password))
    session, token = await svc.ledger.start_session(account.id, svc.settings.session_ttl_s)
    response = data({"account": person_view(account), "csrf_token": session.csrf_token,
                     "expires_at": iso(session.expires_at)})
    max_age = int(svc.settings.session_ttl_s)
    secure = svc.settings.session_cookie_secure
    response.set_cookie(SESSION_COOKIE, token, max_age=max_age, httponly=True, secure=secure, samesite="lax",
                        path="/")
    response.set_cookie(CSRF_COOKIE, session.csrf_token, max_age=max_age, httponly=False, secure=secure,
                        samesite="strict", path="/")
    return response


@router.get("/auth/session")
async def current_session(caller: Reader, svc: Svc) -> Response:
    """Who is signed in (by cookie or key), with the session's CSRF token."""
    account = await svc.ledger.get_account(caller.account_id)
    return data({"account": person_view(account), "csrf_token": caller.csrf_token,
                 "via": "session" if caller.session_id is not None else "api_key", "scopes": sorted(caller.scopes)})


@router.post("/auth/signout")
async def sign_out(caller: Reader, svc: Svc) -> Response:
    if caller.session_id is None:
        raise Forbidden("sign-out ends a browser session; revoke an API key with DELETE /api/v1/api-keys/{id}")
    await svc.ledger.end_session(caller.session_id)
    await svc.revoked(Notice("session", caller.session_id))
    response = data({"signed_out": True})
    response.delete_cookie(SESSION_COOKIE, path="/")
    response.delete_cookie(CSRF_COOKIE, path="/")
    return response


@router.post("/auth/password")
async def change_password(body: PasswordChange, caller: Writer, svc: Svc) -> Response:
    """A signed-in person changes their password; every session of the account ends (sign in again)."""
    if caller.session_id is None:
        raise Forbidden("sign in to change your password")
    account = await svc.ledger.get_account(caller.account_id)
    found = await svc.ledger.account_for_sign_in(account.email)
    if found is None or not await asyncio.to_thread(passwords.verify, found[1], body.current_password):
        raise Unauthorized("the current password is wrong")
    passwords.check_new(body.new_password, account.email)
    await svc.ledger.change_password(account.id, await asyncio.to_thread(passwords.hash_password, body.new_password))
    await svc.revoked(Notice("account", account.id))
    return data({"changed": True})


# --- password reset -------------------------------------------------------------------------------------


@router.post("/auth/password-reset", status_code=202)
async def request_reset(body: ResetRequest, request: Request, svc: Svc) -> Response:
    """Mail a reset token to the address if it has an account. The answer is the same either way."""
    svc.auth_failures.check(client_address(request))
    found = await svc.ledger.password_reset_token(body.email, svc.settings.reset_link_ttl_s)
    if found is not None:
        account, token = found
        await svc.mailer.send(reset_mail(svc.settings, account.email, token))
    return data({"reset": "if the address has an account, a reset token was sent to it"}, status_code=202)


@router.post("/auth/password-reset/confirm")
async def confirm_reset(body: ResetConfirm, svc: Svc) -> Response:
    # The new password is checked before the token is spent, so a rejected password does not burn the link.
    passwords.check_new(body.password, "")
    account = await svc.ledger.reset_password(body.token,
                                              await asyncio.to_thread(passwords.hash_password, body.password))
    await svc.revoked(Notice("account", account.id))
    return data({"account": person_view(account), "reset": True})


# --- the caller's account and keys ---------------------------------------------------------------------


@router.get("/account")
async def get_account(caller: Reader, svc: Svc) -> Response:
    return data(person_view(await svc.ledger.get_account(caller.account_id)))


class KeyCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=100)
    scopes: list[Annotated[str, Field(pattern="^(read|write|keys)$")]] = Field(
        default_factory=lambda: ["read", "write"], min_length=1, max_length=3)
    expires_at: datetime | None = None


@router.get("/api-keys")
async def list_keys(caller: Reader, svc: Svc) -> Response:
    keys = await svc.ledger.list_api_keys(caller.account_id)
    return page([api_key_view(k) for k in keys], len(keys), len(keys), 0)


@router.post("/api-keys", status_code=201)
async def create_key(body: KeyCreate, caller: KeyMaker, svc: Svc) -> Response:
    """A new key, shown once (as ``data.key`` and, for the reference network's clients, ``key``). A key can
    only make keys with scopes it holds itself."""
    key, full = await svc.ledger.create_api_key(caller.account_id, body.name, tuple(sorted(set(body.scopes))),
                                                body.expires_at, within=_sorted(caller.key_scopes))
    return FastJSON({"data": api_key_view(key, full), "key": full}, status_code=201)


@router.delete("/api-keys/{key_id}")
async def revoke_key(key_id: Annotated[str, Path(max_length=40)], caller: KeyMaker, svc: Svc) -> Response:
    """Revoke a key; it stops working at once, on every replica."""
    if not key_id.isdigit() or len(key_id) > 18:
        raise NotFound(f"api key {key_id!r} does not exist")
    key = await svc.ledger.revoke_api_key(caller.account_id, int(key_id))
    await svc.revoked(Notice("key", key.id))
    return data(api_key_view(key))


def _sorted(scopes: frozenset[str] | None) -> tuple[str, ...] | None:
    return tuple(sorted(scopes)) if scopes is not None else None
