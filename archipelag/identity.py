"""Host identity: a host's Ed25519 key pair, the host id bound to it, the reports it signs, and pairing codes.

A host is who holds its key. Its id is derived from its public key (``host_id_for``), so one host cannot claim
another's id without that host's key; the ledger binds every enrolled id to one key. What a host tells placement
(its registration, its heartbeats) and the receipt of each job it ends (receipts.py) travel with a ``Proof``: a
signature over the host id, the host's timestamp and the digest of what it reports. The credentials a newly approved host receives are sealed to its key
(``seal``/``unseal``), so only the machine that holds the key can read them.

Who signs is a ``Signer``: the key in this process (``key_signer``), or, where the host's Ray node runs as an
account of its own, the host's gate (gate/client.py ``gate_signer``), which keeps the key where that account cannot
read it and signs only what a node may ask for (``NODE_PURPOSES``: never the poll that fetches the cluster's
credentials, so a stolen answer cannot outlast a rotated token).

Pure: no Ray, no database, no HTTP; pynacl only.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import json
import math
import os
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from nacl.exceptions import BadSignatureError, CryptoError
from nacl.public import SealedBox
from nacl.signing import SigningKey, VerifyKey

from archipelag.errors import ConfigError, HostRefused
from archipelag.ids import HostId

# Pairing codes: no 0/O, 1/I/L, 5/S, 2/Z, 8/B — what people misread when they copy a code from a terminal.
CODE_ALPHABET = "ACDEFGHJKMNPQRTUVWXY34679"
CODE_LENGTH = 6
PUBLIC_KEY_HEX = 64  # an Ed25519 public key, hex


@dataclass(frozen=True)
class Proof:
    """A host's signature over (purpose, host id, its timestamp, the digest of what it reports)."""

    host_id: HostId
    at: float  # the host's clock, Unix seconds
    digest: str  # sha256 hex of the canonical JSON of the report
    signature: bytes


def generate_key() -> SigningKey:
    return SigningKey.generate()


def load_or_create_key(path: Path) -> SigningKey:
    """The key at ``path``, made (mode 0600) the first time. A key readable by others is refused."""
    if path.exists():
        if path.stat().st_mode & 0o077:
            raise ConfigError(f"the host key {path} is readable by others; `chmod 600 {path}` and retry")
        raw = path.read_bytes()
        if len(raw) != 32:
            raise ConfigError(f"{path} is not a host key (32 bytes); move it away to make a new one")
        return SigningKey(raw)
    path.parent.mkdir(parents=True, exist_ok=True)
    key = generate_key()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)  # never briefly readable by others
    with os.fdopen(fd, "wb") as out:
        out.write(bytes(key))
    return key


def public_hex(key: SigningKey) -> str:
    return bytes(key.verify_key).hex()


def verify_key(public_key_hex: str) -> VerifyKey:
    """The public key from its hex form; HostRefused for anything that is not one."""
    try:
        raw = bytes.fromhex(public_key_hex)
        if len(raw) != 32:
            raise ValueError
        return VerifyKey(raw)
    except (ValueError, CryptoError):
        raise HostRefused("the public key is not an Ed25519 key (64 hex characters)") from None


def host_id_for(public_key_hex: str) -> HostId:
    """The host id bound to a key: ``h-`` and 16 base32 characters (80 bits) of the key's SHA-256."""
    digest = hashlib.sha256(bytes.fromhex(public_key_hex)).digest()
    return HostId("h-" + base64.b32encode(digest[:10]).decode().lower())


def plain(value: Any) -> Any:
    """A report as JSON types, as its digest sees it (sets sorted, tuples as lists)."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (set, frozenset)):
        return sorted(plain(v) for v in value)
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


def digest(report: Any) -> str:
    """SHA-256 of the canonical JSON of a report (a dataclass, a dict): the same on both sides of the wire."""
    canonical = json.dumps(plain(report), sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()


def _message(purpose: str, host_id: str, at: float, report_digest: str) -> bytes:
    return f"archipelag/{purpose}/v1|{host_id}|{at!r}|{report_digest}".encode()


def sign(key: SigningKey, purpose: str, host_id: HostId, at: float, report: Any) -> Proof:
    return sign_digest(key, purpose, host_id, at, digest(report))


def sign_digest(key: SigningKey, purpose: str, host_id: HostId, at: float, report_digest: str) -> Proof:
    signature = key.sign(_message(purpose, host_id, at, report_digest)).signature
    return Proof(host_id, at, report_digest, bytes(signature))


Signer = Callable[[str, Any], Proof]
"""Signs ``report`` for ``purpose`` as its host, stamped with the signer's own clock."""

NODE_PURPOSES: Final = frozenset({"register", "heartbeat", "status", "receipt"})  # what a host's agent signs


def key_signer(key: SigningKey, host_id: HostId, clock: Callable[[], float] = time.time) -> Signer:
    def signer(purpose: str, report: Any) -> Proof:
        return sign(key, purpose, host_id, clock(), report)

    return signer


def verify(proof: Proof, purpose: str, public_key_hex: str, report: Any) -> None:
    """Raise HostRefused unless ``proof`` is ``public_key_hex``'s signature over this very report, whenever it was
    made (a job receipt is checked again later, by its job's owner)."""
    if proof.digest != digest(report):
        raise HostRefused(f"host {proof.host_id}: the signed digest does not match the report")
    try:
        verify_key(public_key_hex).verify(_message(purpose, proof.host_id, proof.at, proof.digest), proof.signature)
    except BadSignatureError:
        raise HostRefused(f"host {proof.host_id}: the signature is not by the host's enrolled key") from None


def check(proof: Proof, purpose: str, public_key_hex: str, report: Any, now: float, max_skew_s: float,
          after: float | None) -> None:
    """Raise HostRefused unless ``proof`` is ``public_key_hex``'s signature over this very report, made within
    ``max_skew_s`` of ``now`` and later than ``after`` (the last report accepted: a replay is refused)."""
    verify(proof, purpose, public_key_hex, report)
    if not math.isfinite(proof.at) or abs(now - proof.at) > max_skew_s:
        raise HostRefused(f"host {proof.host_id}: the report's time is {proof.at - now:+.0f} s off the "
                          f"coordinator's (more than {max_skew_s:g} s); check the host's clock")
    if after is not None and proof.at <= after:
        raise HostRefused(f"host {proof.host_id}: a replayed or out-of-order report was refused")


def status_report(status: str) -> dict[str, str]:
    """What a host signs to change its own status in placement (pause, resume, drain, leave)."""
    return {"status": str(status)}


def new_pairing_code() -> str:
    return "".join(secrets.choice(CODE_ALPHABET) for _ in range(CODE_LENGTH))


def normal_code(code: str) -> str:
    """What people type, as it was issued: upper case, without spaces or dashes."""
    return code.strip().upper().replace("-", "").replace(" ", "")


def code_hash(code: str) -> str:
    return hashlib.sha256(f"archipelag-pairing|{normal_code(code)}".encode()).hexdigest()


def seal(public_key_hex: str, payload: dict[str, Any]) -> str:
    """``payload`` encrypted to the host's key (its Curve25519 form), base64: only that host can read it."""
    box = SealedBox(verify_key(public_key_hex).to_curve25519_public_key())
    return base64.b64encode(box.encrypt(json.dumps(payload).encode())).decode()


def unseal(key: SigningKey, sealed: str) -> dict[str, Any]:
    try:
        opened = SealedBox(key.to_curve25519_private_key()).decrypt(base64.b64decode(sealed))
    except (CryptoError, ValueError):
        raise HostRefused("the coordinator's answer was not sealed to this host's key") from None
    payload: dict[str, Any] = json.loads(opened)
    return payload


def machine_key_path(state_dir: Path) -> Path:
    """The key `host join --coordinator https://…` makes once for this machine; its id is derived from it."""
    return state_dir / "host.key"


def named_key_path(state_dir: Path, host_id: str) -> Path:
    """The key of a host whose id its owner chose (the local hosts of `archipelag up`)."""
    return state_dir / "keys" / f"{host_id}.key"


def host_key(state_dir: Path, host_id: str) -> SigningKey:
    """The key ``host_id`` signs with on this machine: its named key, else the machine key if the id is its."""
    named = named_key_path(state_dir, host_id)
    if named.exists():
        return load_or_create_key(named)
    machine = machine_key_path(state_dir)
    if machine.exists():
        key = load_or_create_key(machine)
        if host_id_for(public_hex(key)) == host_id:
            return key
    raise ConfigError(f"no key for host {host_id} in {state_dir}: a host enrols first "
                      "(`archipelag host join --coordinator https://API`)")
