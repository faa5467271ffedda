"""A host's signed reports to placement — its registration, heartbeats and status changes — sent to the
coordinator's API (``POST /api/v1/hosts/{host_id}/reports``), never to an actor of the coordinator's: a host
needs nothing of the coordinator's Ray cluster but its own agent's work. The API hands each report to placement,
which believes only what the host's enrolled key signed (``PlacementActor._check``)."""

from __future__ import annotations

from typing import Any

import httpx

from archipelag import identity
from archipelag.errors import ArchipelagError, NoCapacity
from archipelag.gate import wire as gate_wire
from archipelag.identity import Proof
from archipelag.ids import HostId
from archipelag.lifecycle import HostStatus
from archipelag.placement.scoring import HostSnapshot
from archipelag.settings import Settings

TIMEOUT_S = 10.0


def report_body(purpose: str, report: Any, proof: Proof) -> dict[str, Any]:
    """A report as the API takes it: the report as it was signed (``identity.plain``) and the proof beside it."""
    return {"purpose": purpose, "report": identity.plain(report),
            "proof": {"host_id": proof.host_id, "at": proof.at, "digest": proof.digest,
                      "signature": proof.signature.hex()}}


class Reports:
    """What a host's agent and its driver tell placement, through the API at ``api_url``; each call raises what
    placement raised (HostRefused, NotFound), and NoCapacity when the API does not answer (starting, restarting):
    the next heartbeat tries again."""

    def __init__(self, api_url: str, timeout_s: float = TIMEOUT_S) -> None:
        self._api_url = api_url.rstrip("/")
        self._http = httpx.Client(base_url=self._api_url, timeout=timeout_s)

    @classmethod
    def from_settings(cls, settings: Settings) -> Reports:
        return cls(settings.api_for_hosts())

    def register(self, snapshot: HostSnapshot, proof: Proof) -> None:
        self._post(snapshot.host_id, "register", snapshot, proof)

    def beat(self, host_id: HostId, report: dict[str, Any], proof: Proof) -> bool:
        """A heartbeat: False when placement does not know the host (it restarted), so the host registers again."""
        return self._post(host_id, "heartbeat", report, proof).get("known") is True

    def set_status(self, host_id: HostId, status: HostStatus, proof: Proof) -> None:
        self._post(host_id, "status", identity.status_report(status), proof)

    def close(self) -> None:
        self._http.close()

    def _post(self, host_id: HostId, purpose: str, report: Any, proof: Proof) -> dict[str, Any]:
        try:
            answer = self._http.post(f"/api/v1/hosts/{host_id}/reports", json=report_body(purpose, report, proof))
        except httpx.TransportError as exc:
            raise NoCapacity(f"the coordinator's API at {self._api_url} does not answer: {exc}") from None
        try:
            body = answer.json()
        except ValueError:
            body = {}
        if answer.status_code == 200 and isinstance(body.get("data"), dict):
            return dict(body["data"])
        error = body.get("error") if isinstance(body, dict) else None
        if not isinstance(error, dict) or (answer.status_code >= 500 and answer.status_code != 503):
            raise NoCapacity(f"the coordinator's API answered {answer.status_code} to a {purpose} report")
        raised: ArchipelagError = gate_wire.raised({"code": str(error.get("code")),
                                                   "message": str(error.get("message", ""))[:1000]})
        raise raised
