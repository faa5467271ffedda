"""People of a running network for the browser tests, made over HTTP as a person would make them: sign-up, the
link from the coordinator's mail log, verification; admins made by the network's first account (the one
`archipelag up` made, whose key it saved in its state dir — an account with no password, so no browser session)."""

from __future__ import annotations

import re
import secrets
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

PASSWORD = "a long secret phrase"


@dataclass(frozen=True)
class Person:
    email: str
    password: str
    account_id: str


@dataclass(frozen=True)
class Network:
    url: str
    state_dir: Path
    docker_missing: str | None = None  # why this network has no Docker engine (no chat, no images), or None

    @property
    def admin_key(self) -> str:
        return (self.state_dir / "api_key").read_text().strip()

    def http(self, key: str | None = None) -> httpx.Client:
        """A client of the API, with ``key`` (or none)."""
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=60)

    def mailed_link(self, email: str, page: str = "verify", timeout_s: float = 20) -> str:
        """The newest link to ``page`` (``verify`` or ``reset/confirm``) mailed to ``email``."""
        mail_log = self.state_dir / "logs" / "mail.log"
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            mails = re.split(r"^(?=--- )", mail_log.read_text(), flags=re.MULTILINE) if mail_log.exists() else []
            links = [re.search(rf"http\S+/{page}\?token=[\w-]+", mail) for mail in mails
                     if mail.partition("\n")[0].endswith(f" to: {email}")]
            if found := [link.group(0) for link in links if link]:
                return found[-1]
            time.sleep(0.1)
        raise AssertionError(f"no /{page} link was mailed to {email} within {timeout_s} s")

    def person(self, name: str, *, admin: bool = False, verified: bool = True) -> Person:
        """A new account, ``name-RANDOM@example.org``, verified by its mailed link; made an admin if asked."""
        email = f"{name}-{secrets.token_hex(4)}@example.org"
        with self.http() as http:
            made = http.post("/api/v1/auth/signup", json={"email": email, "password": PASSWORD})
            assert made.status_code == 201, made.text
            account_id = str(made.json()["data"]["account"]["id"])
            if verified:
                token = self.mailed_link(email).rsplit("token=", 1)[1]
                done = http.post("/api/v1/auth/verify", json={"token": token})
                assert done.status_code == 200, done.text
        if admin:
            with self.http(self.admin_key) as http:
                role = http.post(f"/api/v1/admin/accounts/{account_id}/role", json={"is_admin": True})
                assert role.status_code == 200, role.text
        return Person(email, PASSWORD, account_id)
