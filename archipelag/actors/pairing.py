"""Pairing: the host's side of enrolment over the API — nothing carried to the machine by hand.

``pair`` makes this machine's key (once, ``identity.machine_key_path``), asks the network's API for a pairing code,
shows it, and polls (signed with the key) until the owner approves it. The answer is sealed to the key: the Ray
address, the join credential (written to this host's state dir, mode 0600), the Ray namespace and the catalog keys
to trust; the signed catalog is fetched from the API and checked by the host as it always is. The same API becomes
the host's image source (unless ``ARCHIPELAG_IMAGE_SOURCE`` names another): images it lacks come from there,
checked against the catalog's pins (runtimes/image_fetch.py). A key that is already enrolled gets its credentials
at the first poll, without a new code.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx
from nacl.signing import SigningKey

from archipelag import identity
from archipelag.catalog_signing import catalog_path, signature_path
from archipelag.errors import ConfigError, HostRefused
from archipelag.ids import HostId
from archipelag.settings import Settings

log = logging.getLogger(__name__)

POLL_INTERVAL_S = 3.0
API = "/api/v1"


@dataclass(frozen=True)
class Enrolled:
    host_id: HostId
    ray_address: str
    settings: Settings  # the caller's, with the network's Ray namespace, auth and trusted catalog keys


def is_api_url(coordinator: str) -> bool:
    return coordinator.startswith(("http://", "https://"))


def show_code(code: str, host_id: str, expires_in_s: float) -> None:
    print(f"pairing code: {code}\n  approve it within {expires_in_s / 60:.0f} minutes, signed in as the owner of "
          f"this machine:\n    archipelag hosts approve {code}\n  (this machine will be host {host_id})",
          flush=True)


def _answer(response: httpx.Response) -> dict[str, Any]:
    try:
        body: dict[str, Any] = response.json()
    except ValueError:
        body = {}
    if response.status_code >= 400:
        message = (body.get("error") or {}).get("message") or response.text[:200]
        if response.status_code == 403:
            raise HostRefused(message)
        raise ConfigError(f"the network's API answered {response.status_code}: {message}")
    return dict(body.get("data") or {})


def _poll(http: httpx.Client, key: SigningKey) -> httpx.Response:
    public = identity.public_hex(key)
    proof = identity.sign(key, "poll", identity.host_id_for(public), time.time(), {"public_key": public})
    return http.post(f"{API}/hosts/enrol/poll",
                     json={"public_key": public, "at": proof.at, "signature": proof.signature.hex()})


def pair(settings: Settings, api_url: str, name: str | None, region: str, claims: dict[str, Any],
         show: Callable[[str, str, float], None] = show_code, poll_s: float = POLL_INTERVAL_S) -> Enrolled:
    """Enrol this machine with the network at ``api_url`` and return how to join it."""

    def until_approved(http: httpx.Client, key: SigningKey, answer: httpx.Response) -> httpx.Response:
        if answer.status_code == 404:  # no request yet (a pending one, 202, is waited for as it is)
            public = identity.public_hex(key)
            host_id = identity.host_id_for(public)
            scalars = {k: v for k, v in claims.items() if v is None or isinstance(v, (bool, int, float, str))}
            asked = _answer(http.post(f"{API}/hosts/enrol", json={
                "public_key": public, "name": name or host_id, "region": region, "hardware": scalars}))
            show(str(asked["pairing_code"]), host_id, settings.pairing_ttl_s)
        return _wait(http, key, poll_s)

    return _enrolled(settings, api_url, until_approved)


def refresh(settings: Settings, api_url: str) -> Enrolled:
    """The credentials of this machine's approved key as the network gives them now (after the cluster's token
    was rotated, say), without a new code: HostRefused once it is revoked, ConfigError while the API does not
    answer or has no approval for it."""

    def refuse(http: httpx.Client, key: SigningKey, answer: httpx.Response) -> httpx.Response:
        raise ConfigError(f"the network at {api_url} has no approval for this machine's key")

    return _enrolled(settings, api_url, refuse)


Unapproved = Callable[[httpx.Client, SigningKey, httpx.Response], httpx.Response]


def _enrolled(settings: Settings, api_url: str, unapproved: Unapproved) -> Enrolled:
    """Poll with this machine's key; past ``unapproved`` (a 202 or 404 answer), install the sealed credentials."""
    key = identity.load_or_create_key(identity.machine_key_path(settings.state_dir))
    try:
        with httpx.Client(base_url=api_url.rstrip("/"), timeout=15) as http:
            answer = _poll(http, key)
            if answer.status_code in (202, 404):
                answer = unapproved(http, key, answer)
            approved = _answer(answer)
            credentials = identity.unseal(key, str(approved["credentials"]))
            catalog = (http.get(f"{API}/catalog"), http.get(f"{API}/catalog.sig"))
    except httpx.TransportError as exc:
        raise ConfigError(f"cannot reach the network's API at {api_url}: {exc}") from None
    joined = _install(settings, credentials, catalog)
    joined = joined.model_copy(update={"coordinator_api": api_url.rstrip("/")})
    if not joined.image_source:
        joined = joined.model_copy(update={"image_source": api_url.rstrip("/")})
    return Enrolled(HostId(str(approved["host_id"])), str(credentials["ray_address"]), joined)


def _wait(http: httpx.Client, key: SigningKey, poll_s: float) -> httpx.Response:
    while True:
        time.sleep(poll_s)
        answer = _poll(http, key)
        if answer.status_code == 404:
            raise HostRefused("the pairing code expired before it was approved; run `archipelag host join` again")
        if answer.status_code == 429:
            time.sleep(float(answer.headers.get("retry-after", poll_s)))
            continue
        if answer.status_code != 202:
            return answer


def _install(settings: Settings, credentials: dict[str, Any], catalog: tuple[httpx.Response, httpx.Response],
             ) -> Settings:
    """Keep what joining needs in this host's state dir; the settings the host runs with from now on."""
    joined = settings.model_copy(update={
        "ray_namespace": str(credentials["ray_namespace"]), "ray_auth": credentials["ray_auth"],
        "trusted_catalog_keys": sorted({*settings.trusted_catalog_keys, *credentials["trusted_catalog_keys"]}),
        "trusted_ticket_keys": sorted({*settings.trusted_ticket_keys, *credentials.get("ticket_keys", [])})})
    token_path = joined.ray_env().get("RAY_AUTH_TOKEN_PATH")
    if token_path and credentials.get("ray_token"):
        fd = os.open(token_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as out:
            out.write(str(credentials["ray_token"]))
    body, signature = catalog
    if body.status_code == 200 and signature.status_code == 200:
        path = catalog_path(joined)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(body.content)
        signature_path(path).write_bytes(signature.content)
    else:
        log.warning("the network serves no signed catalog yet; this host will refuse every workload until it does")
    return joined


