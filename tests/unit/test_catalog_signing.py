"""The signed catalog: keys, detached signatures, rotation, and the dev flow of `archipelag up`."""

from __future__ import annotations

import base64
import os
import pickle
import stat
from pathlib import Path

import pytest
from test_catalog_builders import a_key, a_signed_catalog, a_workloads_dir

from archipelag.catalog_signing import (
    CatalogRefused,
    PublicKey,
    SignedCatalog,
    catalog_files,
    ensure_dev_signed_catalog,
    generate_signing_key,
    load_signed_catalog,
    load_signing_key,
    signature_path,
)
from archipelag.errors import ConfigError, NotFound, WorkloadRefused
from archipelag.ids import WorkloadSlug
from archipelag.settings import Settings


def verified(path: Path, trusted_keys: list[str]) -> SignedCatalog:
    return load_signed_catalog(path, trusted_keys, path.parent / "workloads")


def refusal(path: Path, trusted_keys: list[str]) -> CatalogRefused:
    with pytest.raises(CatalogRefused) as caught:
        verified(path, trusted_keys)
    return caught.value


def test_keygen_writes_a_key_only_its_owner_can_read(tmp_path: Path) -> None:
    public = generate_signing_key(tmp_path / "keys" / "signing.key")
    assert stat.S_IMODE((tmp_path / "keys" / "signing.key").stat().st_mode) == 0o600
    assert len(public.key_id) == 16 and PublicKey.parse(public.encoded()) == public
    with pytest.raises(ConfigError, match="already exists"):
        generate_signing_key(tmp_path / "keys" / "signing.key")


def test_a_signing_key_readable_by_others_is_refused(tmp_path: Path) -> None:
    generate_signing_key(tmp_path / "k")
    os.chmod(tmp_path / "k", 0o644)
    with pytest.raises(ConfigError, match="chmod 600"):
        load_signing_key(tmp_path / "k")


def test_public_keys_parse_from_base64_hex_or_prefixed_and_nothing_else(tmp_path: Path) -> None:
    public = a_key(tmp_path / "k")
    assert PublicKey.parse(public.raw.hex()) == public
    assert PublicKey.parse(f"ed25519:{public.encoded()}") == public
    with pytest.raises(ConfigError, match="not an Ed25519 public key"):
        PublicKey.parse("not-a-key")
    with pytest.raises(ConfigError):
        PublicKey.parse(base64.b64encode(b"short").decode())


def test_a_signed_catalog_verifies_and_yields_its_manifests(tmp_path: Path) -> None:
    public = a_key(tmp_path / "k")
    path = a_signed_catalog(tmp_path, tmp_path / "k")
    signed = verified(path, [public.encoded()])
    assert signed.key_id == public.key_id
    assert sorted(signed.manifests) == ["boxed", "echo"]
    assert signed.manifests[WorkloadSlug("echo")].module_path() == tmp_path / "workloads" / "echo" / "module.wasm"


def test_one_changed_byte_is_refused(tmp_path: Path) -> None:
    public = a_key(tmp_path / "k")
    path = a_signed_catalog(tmp_path, tmp_path / "k")
    data = bytearray(path.read_bytes())
    index = data.index(b'"trust_level": 0') + len(b'"trust_level": ')
    data[index] = ord("3")
    path.write_bytes(bytes(data))
    refused = refusal(path, [public.encoded()])
    assert refused.details["reason"] == "bad_signature" and "changed after signing" in refused.message


def test_an_unsigned_catalog_is_refused(tmp_path: Path) -> None:
    public = a_key(tmp_path / "k")
    path = a_signed_catalog(tmp_path, tmp_path / "k")
    signature_path(path).unlink()
    refused = refusal(path, [public.encoded()])
    assert refused.details["reason"] == "unsigned" and "not signed" in refused.message


def test_a_catalog_signed_by_an_untrusted_key_is_refused(tmp_path: Path) -> None:
    a_key(tmp_path / "theirs")
    ours = a_key(tmp_path / "ours")
    path = a_signed_catalog(tmp_path, tmp_path / "theirs")
    refused = refusal(path, [ours.encoded()])
    assert refused.details["reason"] == "unknown_key" and "does not trust" in refused.message


def test_no_trusted_keys_means_nothing_verifies(tmp_path: Path) -> None:
    a_key(tmp_path / "k")
    path = a_signed_catalog(tmp_path, tmp_path / "k")
    assert refusal(path, []).details["reason"] == "no_trusted_keys"


def test_a_garbled_signature_file_is_refused(tmp_path: Path) -> None:
    public = a_key(tmp_path / "k")
    path = a_signed_catalog(tmp_path, tmp_path / "k")
    signature_path(path).write_text("{not json")
    assert refusal(path, [public.encoded()]).details["reason"] == "bad_signature"


def test_keys_rotate_new_verifies_beside_old_and_a_retired_key_no_longer_does(tmp_path: Path) -> None:
    old, new = a_key(tmp_path / "old"), a_key(tmp_path / "new")
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    signed_old = a_signed_catalog(tmp_path / "a", tmp_path / "old")
    signed_new = a_signed_catalog(tmp_path / "b", tmp_path / "new")
    both = [old.encoded(), new.encoded()]
    assert verified(signed_new, both).key_id == new.key_id
    assert verified(signed_old, both).key_id == old.key_id
    assert refusal(signed_old, [new.encoded()]).details["reason"] == "unknown_key"


def test_a_catalog_refusal_is_a_workload_refusal_that_survives_pickling(tmp_path: Path) -> None:
    a_key(tmp_path / "k")
    path = a_signed_catalog(tmp_path, tmp_path / "k")
    signature_path(path).unlink()
    back = pickle.loads(pickle.dumps(refusal(path, [a_key(tmp_path / "k2").encoded()])))
    assert isinstance(back, CatalogRefused) and isinstance(back, WorkloadRefused)
    assert back.code == "workload_refused" and back.details["reason"] == "unsigned"


def test_dev_flow_builds_makes_a_key_signs_and_is_stable(tmp_path: Path) -> None:
    settings = Settings(state_dir=tmp_path / "state", workloads_dir=a_workloads_dir(tmp_path))
    path, public = ensure_dev_signed_catalog(settings, resolve=lambda image: None)
    assert sorted(load_signed_catalog(path, [public], settings.workloads_dir).manifests) == ["boxed", "echo"]
    assert stat.S_IMODE((tmp_path / "state" / "catalog_signing.key").stat().st_mode) == 0o600
    catalog_bytes, signature = catalog_files(settings)
    again = ensure_dev_signed_catalog(settings, resolve=lambda image: None)
    assert again == (path, public) and catalog_files(settings) == (catalog_bytes, signature)


def test_dev_flow_leaves_unbuilt_images_out_of_the_catalog(tmp_path: Path) -> None:
    settings = Settings(state_dir=tmp_path / "state", workloads_dir=a_workloads_dir(tmp_path, pin_image=False))
    path, public = ensure_dev_signed_catalog(settings, resolve=lambda image: None)
    assert sorted(load_signed_catalog(path, [public], settings.workloads_dir).manifests) == ["echo"]


def test_dev_flow_re_signs_a_catalog_that_was_tampered_with(tmp_path: Path) -> None:
    settings = Settings(state_dir=tmp_path / "state", workloads_dir=a_workloads_dir(tmp_path))
    path, public = ensure_dev_signed_catalog(settings, resolve=lambda image: None)
    path.write_bytes(path.read_bytes().replace(b'"price_micro": 1000', b'"price_micro": 1'))
    ensure_dev_signed_catalog(settings, resolve=lambda image: None)
    assert b'"price_micro": 1000' in path.read_bytes()
    load_signed_catalog(path, [public], settings.workloads_dir)


def test_serving_a_catalog_that_was_never_built_is_not_found(tmp_path: Path) -> None:
    with pytest.raises(NotFound, match="catalog build"):
        catalog_files(Settings(state_dir=tmp_path))
