"""People on the real API app and ledger (scripted hosts): sign-up under each policy, verification and the
sign-up grant, sessions with CSRF, password reset, key scopes and expiry, admins, suspension, rate limits."""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from model_network import ModelNetwork, a_model_network

from archipelag.ledger.records import Account

PASSWORD = "correct horse battery"


@pytest.fixture
def net(tmp_path: Path) -> ModelNetwork:
    return a_model_network(tmp_path, signup_policy="open", session_cookie_secure=False)


@pytest.fixture
def anon(net: ModelNetwork) -> Iterator[TestClient]:
    with TestClient(net.app) as client:
        yield client


@pytest.fixture
def admin(net: ModelNetwork) -> Iterator[TestClient]:
    with net.client() as client:
        yield client


def mailed_tokens(net: ModelNetwork, to: str) -> list[str]:
    """The tokens of the mail sent to ``to`` (no SMTP server here: the coordinator's mail log)."""
    outbox = net.services.mailer.outbox
    if not outbox.exists():
        return []
    tokens = []
    for message in outbox.read_text().split("--- ")[1:]:
        if f" to: {to}\n" in message:
            tokens.append(re.findall(r"token=([\w-]+)|\n\n([\w-]{20,})\n\n", message)[0])
    return [a or b for a, b in tokens]


def sign_up(client: TestClient, email: str, password: str = PASSWORD, **extra: Any) -> httpx.Response:
    return client.post("/api/v1/auth/signup", json={"email": email, "password": password, **extra})


def signed_in(net: ModelNetwork, email: str, password: str = PASSWORD) -> TestClient:
    """A browser-like client: its session cookie in the jar, its CSRF token in every request's headers."""
    client = TestClient(net.app)
    answer = client.post("/api/v1/auth/signin", json={"email": email, "password": password})
    assert answer.status_code == 200, answer.text
    client.headers["X-CSRF-Token"] = answer.json()["data"]["csrf_token"]
    return client


def a_verified_person(net: ModelNetwork, anon: TestClient, email: str) -> TestClient:
    assert sign_up(anon, email).status_code == 201
    token = mailed_tokens(net, email)[-1]
    assert anon.get("/api/v1/auth/verify", params={"token": token}).status_code == 200
    return signed_in(net, email)


def account(net: ModelNetwork, email: str) -> Account:
    found = net.ledger.find_account(email)
    assert found is not None
    return found


def test_stranger_signs_up_verifies_and_receives_the_grant(net: ModelNetwork, anon: TestClient) -> None:
    answer = sign_up(anon, "Grace@Example.org")
    assert answer.status_code == 201, answer.text
    person = answer.json()["data"]["account"]
    assert person["email"] == "grace@example.org" and person["credits"] == 0 and not person["email_verified"]
    assert not person["is_admin"]  # the network's first account (its operator's) is the admin

    token = mailed_tokens(net, "grace@example.org")[-1]
    verified = anon.get("/api/v1/auth/verify", params={"token": token})
    assert verified.status_code == 200, verified.text
    assert verified.json()["data"]["account"]["credits"] == 10_000
    again = anon.post("/api/v1/auth/verify", json={"token": token})
    assert again.status_code == 422  # single use: the grant comes once
    assert account(net, "grace@example.org").credits == 10_000
    assert net.ledger.total_is_zero()


def test_an_address_has_one_account_whatever_its_case(anon: TestClient) -> None:
    assert sign_up(anon, "ada2@example.org").status_code == 201
    assert sign_up(anon, "ADA2@example.org").status_code == 409


@pytest.mark.parametrize("password,problem", [("short", "at least"), ("aaaaaaaaaaaa", "easy"),
                                              ("x" * 2000, "at most")])
def test_weak_passwords_are_refused(anon: TestClient, password: str, problem: str) -> None:
    answer = sign_up(anon, "weak@example.org", password)
    assert answer.status_code == 422 and problem in answer.json()["error"]["errors"]["password"]


def test_invite_policy_admits_only_with_an_invitation(tmp_path: Path) -> None:
    net = a_model_network(tmp_path, signup_policy="invite")
    with TestClient(net.app) as anon, net.client() as admin:
        refused = sign_up(anon, "bob@example.org")
        assert refused.status_code == 422 and "invite_code" in refused.json()["error"]["errors"]
        invite = admin.post("/api/v1/admin/invites", json={"email": "bob@example.org"}).json()["data"]
        assert sign_up(anon, "eve@example.org", invite_code=invite["invite_code"]).status_code == 422
        assert sign_up(anon, "bob@example.org", invite_code=invite["invite_code"]).status_code == 201
        assert sign_up(anon, "bob2@example.org", invite_code=invite["invite_code"]).status_code == 422  # spent


def test_closed_policy_admits_nobody(tmp_path: Path) -> None:
    net = a_model_network(tmp_path, signup_policy="closed")
    with TestClient(net.app) as anon:
        answer = sign_up(anon, "bob@example.org")
    assert answer.status_code == 403 and answer.json()["error"]["code"] == "signup_closed"


def test_session_cookie_is_httponly_secure_and_csrf_guards_changes(tmp_path: Path) -> None:
    net = a_model_network(tmp_path, signup_policy="open")  # cookies Secure, as deployed
    with TestClient(net.app) as anon:
        assert sign_up(anon, "cleo@example.org").status_code == 201
        anon.get("/api/v1/auth/verify", params={"token": mailed_tokens(net, "cleo@example.org")[-1]})
        answer = anon.post("/api/v1/auth/signin", json={"email": "cleo@example.org", "password": PASSWORD})
    cookies = answer.headers.get_list("set-cookie")
    session = next(c for c in cookies if c.startswith("archipelag_session="))
    assert "HttpOnly" in session and "Secure" in session and "SameSite=lax" in session
    token = session.split(";")[0].split("=", 1)[1]
    csrf = answer.json()["data"]["csrf_token"]
    with TestClient(net.app, cookies={"archipelag_session": token}) as browser:
        assert browser.get("/api/v1/account").status_code == 200  # reading needs no CSRF token
        forged = browser.post("/api/v1/api-keys", json={"name": "from another site"})
        assert forged.status_code == 403 and forged.json()["error"]["code"] == "csrf_failed"
        made = browser.post("/api/v1/api-keys", json={"name": "mine"}, headers={"X-CSRF-Token": csrf})
        assert made.status_code == 201, made.text
        out = browser.post("/api/v1/auth/signout", headers={"X-CSRF-Token": csrf})
        assert out.status_code == 200
        assert browser.get("/api/v1/account").status_code == 401  # the session ended at once


def test_wrong_password_and_unknown_address_fail_alike(net: ModelNetwork, anon: TestClient) -> None:
    a_verified_person(net, anon, "dan@example.org")
    wrong = anon.post("/api/v1/auth/signin", json={"email": "dan@example.org", "password": "not the password"})
    nobody = anon.post("/api/v1/auth/signin", json={"email": "nobody@example.org", "password": PASSWORD})
    assert wrong.status_code == nobody.status_code == 401
    assert wrong.json() == nobody.json()


def test_password_reset_by_mailed_token_ends_old_sessions(net: ModelNetwork, anon: TestClient) -> None:
    browser = a_verified_person(net, anon, "erin@example.org")
    asked = anon.post("/api/v1/auth/password-reset", json={"email": "erin@example.org"})
    unknown = anon.post("/api/v1/auth/password-reset", json={"email": "nobody@example.org"})
    assert asked.status_code == unknown.status_code == 202 and asked.json() == unknown.json()
    token = mailed_tokens(net, "erin@example.org")[-1]
    done = anon.post("/api/v1/auth/password-reset/confirm", json={"token": token, "password": "a new long secret"})
    assert done.status_code == 200, done.text
    assert browser.get("/api/v1/account").status_code == 401
    assert anon.post("/api/v1/auth/signin", json={"email": "erin@example.org", "password": PASSWORD}).status_code == 401
    signed_in(net, "erin@example.org", "a new long secret")
    reused = anon.post("/api/v1/auth/password-reset/confirm", json={"token": token, "password": "another secret!"})
    assert reused.status_code == 422


def test_unverified_accounts_cannot_make_keys(net: ModelNetwork, anon: TestClient) -> None:
    assert sign_up(anon, "fay@example.org").status_code == 201
    browser = signed_in(net, "fay@example.org")
    refused = browser.post("/api/v1/api-keys", json={"name": "k"})
    assert refused.status_code == 403 and refused.json()["error"]["code"] == "email_unverified"


def test_only_sessions_and_keys_scoped_keys_make_keys_and_never_stronger_ones(net: ModelNetwork,
                                                                             anon: TestClient) -> None:
    browser = a_verified_person(net, anon, "gus@example.org")
    made = browser.post("/api/v1/api-keys", json={"name": "ops", "scopes": ["read", "keys"]})
    assert made.status_code == 201
    assert made.json()["key"] == made.json()["data"]["key"]  # the reference network's clients read `key`
    ops_key = made.json()["key"]
    writer = browser.post("/api/v1/api-keys", json={"name": "w", "scopes": ["read", "write"]}).json()["key"]
    with TestClient(net.app, headers={"Authorization": f"Bearer {writer}"}) as as_writer:
        refused = as_writer.post("/api/v1/api-keys", json={"name": "more"})
        assert refused.status_code == 403  # no `keys` scope
    with TestClient(net.app, headers={"Authorization": f"Bearer {ops_key}"}) as as_ops:
        stronger = as_ops.post("/api/v1/api-keys", json={"name": "s", "scopes": ["read", "write"]})
        assert stronger.status_code == 403  # it does not hold `write`
        weaker = as_ops.post("/api/v1/api-keys", json={"name": "r", "scopes": ["read"]})
        assert weaker.status_code == 201
        key_id = weaker.json()["data"]["id"]
        assert as_ops.delete(f"/api/v1/api-keys/{key_id}").status_code == 200
        assert as_ops.delete("/api/v1/api-keys/not-a-number").status_code == 404


def test_keys_expire(net: ModelNetwork, admin: TestClient) -> None:
    past = admin.post("/api/v1/api-keys", json={"name": "old", "expires_at": "2020-01-01T00:00:00Z"})
    assert past.status_code == 422
    soon = (datetime.now(UTC) + timedelta(seconds=1)).isoformat()
    key = admin.post("/api/v1/api-keys", json={"name": "brief", "expires_at": soon}).json()["key"]
    with TestClient(net.app, headers={"Authorization": f"Bearer {key}"}) as client:
        assert client.get("/api/v1/account").status_code == 200
        net.services.credentials.clear()  # past the cache, as after its time-to-live
        import time
        time.sleep(1.1)
        expired = client.get("/api/v1/account")
    assert expired.status_code == 401 and "expired" in expired.json()["error"]["message"]


def test_admin_lists_grants_suspends_and_reinstates(net: ModelNetwork, anon: TestClient, admin: TestClient) -> None:
    person = a_verified_person(net, anon, "hal@example.org")
    key = person.post("/api/v1/api-keys", json={"name": "k"}).json()["key"]
    found = admin.get("/api/v1/admin/accounts", params={"q": "HAL@"}).json()
    assert found["meta"]["total"] == 1
    hal = found["data"][0]["id"]
    granted = admin.post(f"/api/v1/admin/accounts/{hal}/credits", json={"amount": 250, "memo": "welcome"})
    assert granted.status_code == 200 and granted.json()["data"]["credits"] == 10_250
    assert net.ledger.total_is_zero()

    with TestClient(net.app, headers={"Authorization": f"Bearer {key}"}) as program:
        assert program.get("/api/v1/account").status_code == 200  # cached now
        suspended = admin.post(f"/api/v1/admin/accounts/{hal}/suspend", json={"reason": "abuse"})
        assert suspended.status_code == 200 and suspended.json()["data"]["suspended"]
        refused = program.get("/api/v1/account")
        assert refused.status_code == 403 and refused.json()["error"]["code"] == "account_suspended"
        ended = person.get("/api/v1/account")  # the session ended too, and says why
        assert ended.status_code == 403 and ended.json()["error"]["code"] == "account_suspended"
        assert admin.post(f"/api/v1/admin/accounts/{hal}/reinstate").status_code == 200
        assert program.get("/api/v1/account").status_code == 200
    stats = admin.get("/api/v1/admin/stats").json()["data"]
    assert stats["accounts"] == 2 and stats["credits_granted"] >= 10_250


def test_admin_routes_refuse_everyone_else(net: ModelNetwork, anon: TestClient) -> None:
    person = a_verified_person(net, anon, "ivy@example.org")
    assert person.get("/api/v1/admin/accounts").status_code == 403
    assert anon.get("/api/v1/admin/stats").status_code == 401
    grant = person.post("/api/v1/admin/accounts/2/credits", json={"amount": 1e6})
    assert grant.status_code == 403


@pytest.mark.parametrize("amount", [0, -5, 1e308, "lots", True])
def test_grants_are_positive_finite_numbers(admin: TestClient, amount: Any) -> None:
    assert admin.post("/api/v1/admin/accounts/1/credits", json={"amount": amount}).status_code == 422


def test_rate_limit_is_per_account_not_per_key(tmp_path: Path) -> None:
    net = a_model_network(tmp_path, rate_limit_per_min=10, ingress_replicas=1)
    keys = [net.key] + [net.ledger.create_api_key(net.account_id, f"k{i}")[1] for i in range(3)]
    answers = []
    for round_ in range(4):
        for key in keys:
            with TestClient(net.app, headers={"Authorization": f"Bearer {key}"}) as client:
                answers.append(client.get("/api/v1/account"))
    assert [a.status_code for a in answers].count(200) == 10
    limited = next(a for a in answers if a.status_code == 429)
    assert int(limited.headers["Retry-After"]) >= 1 and limited.json()["error"]["code"] == "rate_limited"


def test_a_replica_counts_the_whole_limit_for_the_client_it_serves(tmp_path: Path) -> None:
    # The kernel spreads connections over the replicas: a client on one connection meets one of them, which
    # must not hold it to a fraction of its limit.
    net = a_model_network(tmp_path, rate_limit_per_min=10, ingress_replicas=2)
    with net.client() as client:
        answers = [client.get("/api/v1/account").status_code for _ in range(11)]
    assert answers == [200] * 10 + [429]


def test_failed_authentication_is_limited_per_client_address(tmp_path: Path) -> None:
    net = a_model_network(tmp_path, auth_failures_per_min=5, ingress_replicas=1)
    with TestClient(net.app) as client:
        codes = [client.get("/api/v1/account", headers={"Authorization": f"Bearer ak_guess{i}"}).status_code
                 for i in range(7)]
        assert codes == [401] * 5 + [429] * 2
        # the right key from the same address waits too: guessing must not be cheap to interleave
        blocked = client.get("/api/v1/account", headers={"Authorization": f"Bearer {net.key}"})
        assert blocked.status_code == 429 and "Retry-After" in blocked.headers


def test_database_made_before_accounts_had_passwords_is_upgraded(tmp_path: Path) -> None:
    from sqlalchemy import text

    from archipelag.ledger import Ledger
    from archipelag.ledger.db import SCHEMA_VERSION

    url = f"sqlite:///{tmp_path / 'old.db'}"
    ledger = Ledger(url)
    ledger.migrate()
    ledger.create_account("old@example.org", 5)
    with ledger.engine.begin() as connection:  # back to version 1's accounts table
        for column in ("password_hash", "email_verified_at", "is_admin", "suspended_at", "suspended_reason"):
            connection.execute(text(f"ALTER TABLE accounts DROP COLUMN {column}"))
        connection.execute(text("DROP TABLE sessions"))
        connection.execute(text("DELETE FROM schema_version WHERE version = 2"))
    assert Ledger(url).migrate() == SCHEMA_VERSION  # every later version was applied already: 2 is redone
    old = Ledger(url).find_account("old@example.org")
    assert old is not None and old.credits_micro == 5 and not old.is_admin


def test_behind_a_trusted_proxy_each_client_address_has_its_own_limit(tmp_path: Path) -> None:
    net = a_model_network(tmp_path, auth_failures_per_min=2, ingress_replicas=1, trusted_proxies=["testclient"])
    with TestClient(net.app) as proxy:
        def guess(client_ip: str) -> int:
            return proxy.get("/api/v1/account", headers={"Authorization": "Bearer ak_guess",
                                                          "X-Forwarded-For": f"6.6.6.6, {client_ip}"}).status_code
        assert [guess("10.0.0.1") for _ in range(3)] == [401, 401, 429]
        assert guess("10.0.0.2") == 401  # another client behind the same proxy is not blocked


def test_an_untrusted_peer_cannot_choose_its_address_with_x_forwarded_for(tmp_path: Path) -> None:
    net = a_model_network(tmp_path, auth_failures_per_min=2, ingress_replicas=1)
    with TestClient(net.app) as client:
        codes = [client.get("/api/v1/account", headers={"Authorization": "Bearer ak_x",
                                                         "X-Forwarded-For": f"10.0.0.{i}"}).status_code
                 for i in range(3)]
    assert codes == [401, 401, 429]
