"""Receipts: what a host signs for a job attempt it ends with ``done``, and how the coordinator and the job's
owner check it. Pure: no Ray, no database; pynacl through ``identity``.

A receipt binds the job, the attempt, the host, the usage the host reports (its counts: what is charged) and the
SHA-256 of the job's output — ``protocol.collect_output`` over the attempt's events, which is the ``output`` the
API gives the user. A retried attempt says the stream's text again from its start (the relay's ``Replay``
swallows what was already sent, and fails an attempt that says anything else), so the host that ends a job
produced all of its output itself and signs all of it; the user recomputes the same digest from the job.

The host's signature travels in the done event's ``receipt`` field (``protocol.RECEIPT_FIELDS``); the
coordinator checks it against the host's enrolled key before anything is charged (``Expected.accept``) and keeps
the accepted ``Receipt`` with the job; ``mismatch`` is the check both the coordinator and the owner make.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from archipelag import identity
from archipelag.errors import BadReceipt, HostRefused
from archipelag.ids import HostId
from archipelag.protocol import Event, collect_output, usage_counts

PURPOSE = "receipt"


@dataclass(frozen=True)
class Receipt:
    """An accepted receipt, as the ledger keeps it with its job and ``GET /jobs/{id}`` shows it."""

    host_id: HostId
    host_public_key: str  # Ed25519, hex: the host's enrolled key when the coordinator accepted it
    attempt: int
    usage: dict[str, int]
    output_sha256: str
    signed_at: float  # the host's clock, Unix seconds
    signature: str  # base64


def output_sha256(output: str | None) -> str:
    """The digest of a job's output as the API gives it (no output digests as the empty string)."""
    return hashlib.sha256((output or "").encode("utf-8", "surrogatepass")).hexdigest()


def report(job_id: str, attempt: int, usage: dict[str, Any], output_digest: str) -> dict[str, Any]:
    """What a receipt signs (its digest, ``identity.digest``)."""
    return {"job_id": job_id, "attempt": attempt, "usage": usage, "output_sha256": output_digest}


def sign(signer: identity.Signer, job_id: str, attempt: int, events: Sequence[Event]) -> dict[str, Any]:
    """The host's ``receipt`` field for the done event that ends ``events`` (this attempt's events, in order)."""
    done = events[-1]
    digest = output_sha256(collect_output(list(events)))
    proof = signer(PURPOSE, report(job_id, attempt, usage_counts(done.get("usage")), digest))
    return {"signed_at": proof.at, "output_sha256": digest, "signature": base64.b64encode(proof.signature).decode()}


def mismatch(receipt: Receipt, job_id: str, output: str | None) -> str | None:
    """What does not hold of ``receipt`` for job ``job_id`` whose output is ``output``, or None: the digest is the
    output's, and the host's key signed this job, attempt, usage and digest."""
    digest = output_sha256(output)
    if receipt.output_sha256 != digest:
        return (f"the job's output has SHA-256 {digest}, but host {receipt.host_id}'s receipt says "
                f"{receipt.output_sha256}")
    try:
        signature = base64.b64decode(receipt.signature, validate=True)
    except (binascii.Error, ValueError):
        return f"host {receipt.host_id}'s receipt signature is not base64"
    signed = report(job_id, receipt.attempt, dict(receipt.usage), receipt.output_sha256)
    proof = identity.Proof(receipt.host_id, receipt.signed_at, identity.digest(signed), signature)
    try:
        identity.verify(proof, PURPOSE, receipt.host_public_key, signed)
    except HostRefused:
        return (f"the receipt is not host {receipt.host_id}'s signature (key {receipt.host_public_key[:16]}…) over "
                f"job {job_id}, attempt {receipt.attempt}, usage {dict(receipt.usage)} and this output")
    return None


@dataclass(frozen=True)
class Expected:
    """Whose receipt ends an attempt: the coordinator's side of the check. ``public_key``: the host's enrolled
    key (None: it has none, and nothing it signs can be believed)."""

    job_id: str
    attempt: int
    host_id: HostId
    public_key: str | None

    def accept(self, done: Event, output: str | None) -> Receipt:
        """The receipt of ``done`` (whose usage is already checked) for a job whose output is ``output``;
        BadReceipt when it is missing, forged, or says another output, usage, job, attempt or host."""
        field = done.get("receipt")
        if field is None:
            raise BadReceipt(f"host {self.host_id} ended the job without a signed receipt")
        if self.public_key is None:
            raise BadReceipt(f"host {self.host_id} has no enrolled key: its receipt cannot be checked")
        receipt = Receipt(self.host_id, self.public_key, self.attempt, usage_counts(done.get("usage")),
                          field["output_sha256"], float(field["signed_at"]), field["signature"])
        why = mismatch(receipt, self.job_id, output)
        if why is not None:
            raise BadReceipt(f"the host's receipt was refused: {why}")
        return receipt
