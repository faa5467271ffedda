"""Host identity: keys kept private on disk, ids bound to keys, signed reports, sealed credentials."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from builders import a_host

from archipelag import identity
from archipelag.errors import ConfigError, HostRefused
from archipelag.ids import HostId

NOW = 1_800_000_000.0


def test_a_key_is_made_once_with_mode_600_and_read_back(tmp_path: Path) -> None:
    path = tmp_path / "keys" / "host.key"
    key = identity.load_or_create_key(path)
    assert path.stat().st_mode & 0o777 == 0o600
    assert identity.public_hex(identity.load_or_create_key(path)) == identity.public_hex(key)
    os.chmod(path, 0o644)
    with pytest.raises(ConfigError, match="readable by others"):
        identity.load_or_create_key(path)


def test_the_host_id_is_derived_from_the_key() -> None:
    a, b = identity.public_hex(identity.generate_key()), identity.public_hex(identity.generate_key())
    assert identity.host_id_for(a) == identity.host_id_for(a) != identity.host_id_for(b)
    assert identity.host_id_for(a).startswith("h-") and len(identity.host_id_for(a)) == 18


def test_a_signed_report_checks_and_every_forgery_is_refused() -> None:
    key, other = identity.generate_key(), identity.generate_key()
    public = identity.public_hex(key)
    report = a_host("h-a")
    proof = identity.sign(key, "register", HostId("h-a"), NOW, report)
    identity.check(proof, "register", public, report, NOW + 1, 60, None)

    with pytest.raises(HostRefused, match="not by the host's enrolled key"):  # another host's key
        identity.check(identity.sign(other, "register", HostId("h-a"), NOW, report), "register", public, report,
                       NOW, 60, None)
    with pytest.raises(HostRefused, match="digest"):  # the report changed after signing (invented karma)
        identity.check(proof, "register", public, a_host("h-a", karma=1.0), NOW, 60, None)
    with pytest.raises(HostRefused, match="not by the host's enrolled key"):  # a heartbeat's proof as a register
        identity.check(proof, "heartbeat", public, report, NOW, 60, None)
    with pytest.raises(HostRefused, match="off the coordinator's"):
        identity.check(proof, "register", public, report, NOW + 61, 60, None)
    with pytest.raises(HostRefused, match="replayed"):
        identity.check(proof, "register", public, report, NOW, 60, after=NOW)
    with pytest.raises(HostRefused, match="not an Ed25519 key"):
        identity.check(proof, "register", "zz", report, NOW, 60, None)


def test_sealed_credentials_open_only_with_the_hosts_key() -> None:
    key = identity.generate_key()
    sealed = identity.seal(identity.public_hex(key), {"ray_token": "secret"})
    assert "secret" not in sealed
    assert identity.unseal(key, sealed) == {"ray_token": "secret"}
    with pytest.raises(HostRefused):
        identity.unseal(identity.generate_key(), sealed)


def test_codes_use_the_unambiguous_alphabet_and_normalise() -> None:
    codes = {identity.new_pairing_code() for _ in range(200)}
    assert len(codes) > 190
    assert all(len(c) == 6 and set(c) <= set(identity.CODE_ALPHABET) for c in codes)
    assert not set("01OILSZB258") & set(identity.CODE_ALPHABET)
    assert identity.code_hash(" acd-efg ") == identity.code_hash("ACDEFG")


def test_a_host_signs_with_its_named_key_or_the_machine_key_its_id_comes_from(tmp_path: Path) -> None:
    named = identity.load_or_create_key(identity.named_key_path(tmp_path, "island-1"))
    machine = identity.load_or_create_key(identity.machine_key_path(tmp_path))
    machine_id = identity.host_id_for(identity.public_hex(machine))
    assert bytes(identity.host_key(tmp_path, "island-1")) == bytes(named)
    assert bytes(identity.host_key(tmp_path, machine_id)) == bytes(machine)
    with pytest.raises(ConfigError, match="enrols first"):  # the machine key is not another id's
        identity.host_key(tmp_path, "h-someoneelse")
