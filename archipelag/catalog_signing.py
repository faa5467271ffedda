"""The signed catalog: Ed25519 keys, the detached signature of ``catalog.json``, and the host's check.

Flow: ``archipelag catalog build`` compiles the manifests (``catalog.compile_catalog``), ``catalog sign``
writes ``catalog.json.sig`` with a key kept offline in production, and every host verifies the file against
its trusted public keys (``Settings.trusted_catalog_keys``; several, so keys can rotate) before it runs
anything: ``CatalogGuard.admit(spec)`` refuses a workload the signed catalog does not hold, one whose
manifest disagrees with the signed entry, or an image from a source not allowed. Every refusal is a
``WorkloadRefused`` (code ``workload_refused``) whose ``reason`` detail says which check failed.

For ``archipelag up``, ``ensure_dev_signed_catalog`` makes a dev key in the state dir and signs with it.
"""

from __future__ import annotations

import base64
import binascii
import fnmatch
import hashlib
import json
import logging
import os
import threading
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import nacl.exceptions
import nacl.signing

from archipelag.catalog import Manifest, load_catalog, parse_compiled_catalog, write_catalog
from archipelag.errors import ConfigError, NotFound, WorkloadRefused
from archipelag.ids import WorkloadSlug
from archipelag.runtimes.base import JobSpec
from archipelag.sandbox import Limits, Tier
from archipelag.settings import Settings

log = logging.getLogger(__name__)

ALGORITHM = "ed25519"
CATALOG_FILE = "catalog.json"
DEV_KEY_FILE = "catalog_signing.key"

ImageResolver = Callable[[str], "str | None"]  # repository:tag → local image ID, None when absent


class CatalogRefused(WorkloadRefused):
    """The catalog itself failed verification (unsigned, bad signature, unknown key, malformed): this host
    runs nothing until it has a catalog signed by a key it trusts. ``reason`` says which."""


# --- keys -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PublicKey:
    raw: bytes

    @property
    def key_id(self) -> str:
        """A short fingerprint: the first 16 hex digits of SHA-256 of the raw key."""
        return hashlib.sha256(self.raw).hexdigest()[:16]

    def encoded(self) -> str:
        return base64.b64encode(self.raw).decode()

    @classmethod
    def parse(cls, text: str) -> PublicKey:
        """A key as printed by ``catalog keygen``: base64 (optionally ``ed25519:``-prefixed) or 64 hex digits."""
        value = text.strip().removeprefix(f"{ALGORITHM}:")
        try:
            raw = bytes.fromhex(value) if len(value) == 64 else base64.b64decode(value, validate=True)
        except (ValueError, binascii.Error):
            raw = b""
        if len(raw) != 32:
            raise ConfigError(f"{text!r} is not an Ed25519 public key (32 bytes, base64 or hex)")
        return cls(raw)


def trusted(keys: Iterable[str]) -> dict[str, PublicKey]:
    """Trusted keys by key id."""
    parsed = (PublicKey.parse(k) for k in keys)
    return {key.key_id: key for key in parsed}


def generate_signing_key(path: Path, overwrite: bool = False) -> PublicKey:
    """Write a new Ed25519 signing key (its 32-byte seed, base64) to ``path`` with mode 600."""
    if path.exists() and not overwrite:
        raise ConfigError(f"{path} already exists; pass --force to replace it (hosts trusting its public key "
                          "will refuse catalogs signed by the new one until they trust it too)")
    key = nacl.signing.SigningKey.generate()
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.partial")
    partial.unlink(missing_ok=True)
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(base64.b64encode(bytes(key)).decode() + "\n")
    os.replace(partial, path)
    return PublicKey(bytes(key.verify_key))


def load_signing_key(path: Path) -> nacl.signing.SigningKey:
    try:
        mode = path.stat().st_mode
        text = path.read_text().strip()
    except OSError as exc:
        raise ConfigError(f"cannot read the signing key {path} ({exc.strerror}); "
                          "make one with `archipelag catalog keygen`") from None
    if mode & 0o077:
        raise ConfigError(f"the signing key {path} is readable by others (mode {mode & 0o777:o}); "
                          f"run `chmod 600 {path}`")
    try:
        return nacl.signing.SigningKey(base64.b64decode(text, validate=True))
    except (ValueError, binascii.Error, nacl.exceptions.CryptoError):
        raise ConfigError(f"{path} is not an Ed25519 signing key written by `archipelag catalog keygen`") from None


def public_key_of(key: nacl.signing.SigningKey) -> PublicKey:
    return PublicKey(bytes(key.verify_key))


# --- detached signatures --------------------------------------------------------------------------


def signature_path(catalog_path: Path) -> Path:
    return catalog_path.with_name(catalog_path.name + ".sig")


def signature_for(data: bytes, key: nacl.signing.SigningKey) -> bytes:
    """The detached signature document for ``data``: key id, algorithm, base64 signature."""
    signature = key.sign(data).signature
    document = {"algorithm": ALGORITHM, "key_id": public_key_of(key).key_id,
                "signature": base64.b64encode(signature).decode()}
    return json.dumps(document, sort_keys=True, indent=2).encode() + b"\n"


def sign_catalog(catalog_path: Path, key_path: Path) -> Path:
    """Sign the catalog file's exact bytes; writes and returns ``<catalog>.sig``."""
    try:
        data = catalog_path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read the catalog {catalog_path} ({exc.strerror}); "
                          "run `archipelag catalog build` first") from None
    out = signature_path(catalog_path)
    partial = out.with_name(f".{out.name}.partial")
    partial.write_bytes(signature_for(data, load_signing_key(key_path)))
    os.replace(partial, out)
    return out


def verify_signature(data: bytes, signature: bytes | None, trusted_keys: Sequence[str]) -> str:
    """The id of the trusted key that signed ``data``; raises CatalogRefused otherwise."""
    keys = trusted(trusted_keys)
    if not keys:
        raise CatalogRefused("no trusted catalog keys are configured, so no catalog can be verified; set "
                             "ARCHIPELAG_TRUSTED_CATALOG_KEYS to the network's public key(s)", reason="no_trusted_keys")
    if signature is None:
        raise CatalogRefused("the catalog is not signed (no catalog.json.sig beside it); "
                             "sign it with `archipelag catalog sign`", reason="unsigned")
    try:
        document = json.loads(signature)
        key_id, algorithm = str(document["key_id"]), document.get("algorithm", ALGORITHM)
        raw = base64.b64decode(document["signature"], validate=True)
    except (ValueError, KeyError, TypeError, binascii.Error):
        raise CatalogRefused("the catalog's signature file is malformed; sign the catalog again",
                             reason="bad_signature") from None
    if algorithm != ALGORITHM:
        raise CatalogRefused(f"the catalog is signed with {algorithm!r}; only {ALGORITHM} is accepted",
                             reason="bad_signature")
    key = keys.get(key_id)
    if key is None:
        raise CatalogRefused(f"the catalog is signed by key {key_id}, which this host does not trust "
                             f"(trusted: {', '.join(sorted(keys))})", reason="unknown_key", key_id=key_id)
    try:
        nacl.signing.VerifyKey(key.raw).verify(data, raw)
    except (nacl.exceptions.BadSignatureError, ValueError):
        raise CatalogRefused(f"the catalog does not match its signature by key {key_id}: it was changed after "
                             "signing, or the signature is corrupt", reason="bad_signature",
                             key_id=key_id) from None
    return key_id


# --- the verified catalog -------------------------------------------------------------------------


@dataclass(frozen=True)
class SignedCatalog:
    """A catalog whose signature checked out: what a host may run."""

    version: str
    built_at: str
    key_id: str  # the trusted key that signed it
    manifests: dict[WorkloadSlug, Manifest]


def verify_catalog(data: bytes, signature: bytes | None, trusted_keys: Sequence[str],
                   workloads_dir: Path) -> SignedCatalog:
    """Verify catalog bytes (e.g. fetched from GET /api/v1/catalog and /api/v1/catalog.sig), then parse them."""
    key_id = verify_signature(data, signature, trusted_keys)
    try:
        compiled = parse_compiled_catalog(data, workloads_dir)
    except ConfigError as exc:
        raise CatalogRefused(exc.message, reason="malformed") from None
    return SignedCatalog(compiled.version, compiled.built_at, key_id, compiled.manifests)


def load_signed_catalog(path: Path, trusted_keys: Sequence[str], workloads_dir: Path) -> SignedCatalog:
    """Read ``path`` and ``path.sig`` and verify them; raises CatalogRefused (no signature, bad signature,
    unknown key, tampered bytes) or ConfigError (no catalog file). Manifests point into ``workloads_dir``
    (this machine's copy of the modules)."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read the catalog {path} ({exc.strerror}); "
                          "run `archipelag catalog build`") from None
    try:
        signature: bytes | None = signature_path(path).read_bytes()
    except FileNotFoundError:
        signature = None
    return verify_catalog(data, signature, trusted_keys, workloads_dir)


# --- the host's check -----------------------------------------------------------------------------

_COMPARED = ("runtime", "module", "sha256", "image", "trust_level", "limits")


def image_repository(image: str) -> str:
    """``archipelag/x:1`` → ``archipelag/x``; a digest (``@sha256:…``) is dropped too."""
    name = image.split("@", 1)[0]
    slash = name.rfind("/")
    colon = name.rfind(":")
    return name[:colon] if colon > slash else name


def image_source_allowed(image: str, patterns: Sequence[str]) -> bool:
    repository = image_repository(image)
    return any(fnmatch.fnmatchcase(repository, pattern) for pattern in patterns)


def check_workload(job: Manifest, catalog: SignedCatalog, allowed_image_sources: Sequence[str]) -> Manifest:
    """The signed entry for the job's workload, which is what the host should run; raises WorkloadRefused when
    the workload is unknown to the signed catalog, disagrees with it, or comes from an image source not
    allowed. A job manifest without ``image_id`` takes the signed one."""
    signed = catalog.manifests.get(job.slug)
    if signed is None:
        raise WorkloadRefused(f"workload {job.slug!r} is not in the signed catalog (version "
                              f"{catalog.version[:12]}); refusing to run it", reason="unknown_workload")
    for name in _COMPARED:
        ours, theirs = getattr(signed, name), getattr(job, name)
        if name == "sha256":
            ours, theirs = (ours or "").lower(), (theirs or "").lower()
        if ours != theirs:
            raise WorkloadRefused(f"workload {job.slug!r}: the job's {name} is {theirs!r} but the signed catalog "
                                  f"says {ours!r}; refusing to run it", reason="manifest_mismatch", field=name)
    if job.image_id is not None and job.image_id != signed.image_id:
        raise WorkloadRefused(f"workload {job.slug!r}: the job's image ID is {job.image_id} but the signed "
                              f"catalog pins {signed.image_id}; refusing to run it",
                              reason="manifest_mismatch", field="image_id")
    if signed.runtime == "container":
        image = signed.image or ""
        if not image_source_allowed(image, allowed_image_sources):
            raise WorkloadRefused(f"workload {job.slug!r}: image {image!r} is not from an allowed source "
                                  f"({', '.join(allowed_image_sources) or 'none allowed'}); refusing to run it",
                                  reason="image_source")
    return signed


class CatalogGuard:
    """A host's gate: holds the verified catalog and admits job specs. ``from_file`` re-verifies the file
    when it changes and keeps the last good catalog if the new one fails (a rebuild mid-write, a tamper)."""

    def __init__(self, catalog: SignedCatalog, allowed_image_sources: Sequence[str],
                 reload: Callable[[], SignedCatalog] | None = None, stamp: Callable[[], object] | None = None,
                 limits_for: Callable[[Tier], Limits] | None = None) -> None:
        self._catalog = catalog
        self._limits_for = limits_for  # the host's tiers: a job runs within its signed tier's limits
        self._allowed = tuple(allowed_image_sources)
        self._reload = reload
        self._stamp = stamp
        self._seen = stamp() if stamp else None
        self._lock = threading.Lock()

    @classmethod
    def from_file(cls, path: Path, trusted_keys: Sequence[str], workloads_dir: Path,
                  allowed_image_sources: Sequence[str], limits_for: Callable[[Tier], Limits] | None = None,
                  ) -> CatalogGuard:
        def load() -> SignedCatalog:
            return load_signed_catalog(path, trusted_keys, workloads_dir)

        def stamp() -> object:
            try:
                return tuple((p.stat().st_mtime_ns, p.stat().st_size) for p in (path, signature_path(path)))
            except OSError:
                return None

        return cls(load(), allowed_image_sources, load, stamp, limits_for)

    @classmethod
    def from_settings(cls, settings: Settings) -> CatalogGuard:
        return cls.from_file(catalog_path(settings), settings.trusted_catalog_keys, settings.workloads_dir,
                             settings.allowed_image_sources, settings.limits_for)

    @property
    def catalog(self) -> SignedCatalog:
        self._refresh()
        return self._catalog

    def admit(self, spec: JobSpec) -> JobSpec:
        """The spec to run, carrying the signed manifest and limits no wider than its signed tier's (whoever
        sent the spec: a request's limits can only narrow them); raises WorkloadRefused (nothing may run then)."""
        signed = check_workload(spec.workload, self.catalog, self._allowed)
        if self._limits_for is None:
            return replace(spec, workload=signed)
        tier = signed.limits_under(self._limits_for(signed.tier))
        return replace(spec, workload=signed, limits=spec.limits.within(tier))

    def _refresh(self) -> None:
        if self._reload is None or self._stamp is None:
            return
        with self._lock:
            stamp = self._stamp()
            if stamp == self._seen:
                return
            self._seen = stamp
            try:
                self._catalog = self._reload()
            except (CatalogRefused, ConfigError) as exc:
                log.warning("the catalog changed but does not verify (%s); keeping version %s",
                            exc.message, self._catalog.version[:12])


def verify_spec(spec: JobSpec, catalog: SignedCatalog, allowed_image_sources: Sequence[str]) -> JobSpec:
    """``CatalogGuard.admit`` without a guard: the spec to run, or WorkloadRefused."""
    return replace(spec, workload=check_workload(spec.workload, catalog, allowed_image_sources))


# --- building, serving, and the dev flow ----------------------------------------------------------


def catalog_path(settings: Settings) -> Path:
    return settings.state_dir / CATALOG_FILE


def signing_key_path(settings: Settings) -> Path:
    return settings.catalog_signing_key or settings.state_dir / DEV_KEY_FILE


def docker_image_id(image: str) -> str | None:
    """The local engine's ID for ``image`` (repository:tag); None when the image or the engine is absent."""
    try:
        import docker
        import docker.errors
    except ImportError:
        return None
    try:
        client = docker.from_env()
        try:
            return str(client.images.get(image).id)
        finally:
            client.close()
    except docker.errors.DockerException:
        return None


def pin_images(manifests: Iterable[Manifest], resolve: ImageResolver, skip_unbuilt: bool = False
               ) -> list[Manifest]:
    """Container manifests with their ``image_id`` filled from the local engine (a pinned one is kept). An
    image not built here is a ConfigError, or left out of the catalog (with a warning) when ``skip_unbuilt``."""
    pinned: list[Manifest] = []
    for manifest in manifests:
        if manifest.runtime == "container" and not manifest.image_id:
            if not manifest.image:
                raise ConfigError(f"workload {manifest.slug}: a container workload needs `image` (repository:tag)")
            image_id = resolve(manifest.image)
            if image_id is None:
                message = f"workload {manifest.slug}: image {manifest.image} is not built on this machine"
                if skip_unbuilt:
                    log.warning("%s; it is left out of the signed catalog, so hosts will refuse it", message)
                    continue
                raise ConfigError(f"{message}; build it, or pin image_id in its manifest")
            manifest = replace(manifest, image_id=image_id)
        pinned.append(manifest)
    return pinned


def build_catalog(workloads_dir: Path, out: Path, resolve: ImageResolver = docker_image_id,
                  skip_unbuilt: bool = False) -> bool:
    """Compile ``workloads_dir/*/manifest.toml`` into ``out``; False when ``out`` already held the same."""
    manifests = pin_images(load_catalog(workloads_dir).values(), resolve, skip_unbuilt)
    return write_catalog(out, manifests)


def ensure_dev_signed_catalog(settings: Settings, resolve: ImageResolver = docker_image_id) -> tuple[Path, str]:
    """For `archipelag up`: build the catalog into the state dir, make a dev signing key there if none
    exists, sign when needed, and return (catalog path, public key hosts should trust). Production does not
    use this: it builds and signs with `archipelag catalog` on a machine that keeps the key offline."""
    path = catalog_path(settings)
    key_path = signing_key_path(settings)
    if key_path.exists():
        public = public_key_of(load_signing_key(key_path))
    else:
        public = generate_signing_key(key_path)
        log.info("made a dev catalog signing key at %s (key id %s)", key_path, public.key_id)
    changed = build_catalog(settings.workloads_dir, path, resolve, skip_unbuilt=True)
    if changed or not _signed_by(path, public):
        sign_catalog(path, key_path)
    return path, public.encoded()


def _signed_by(path: Path, key: PublicKey) -> bool:
    try:
        load_signed_catalog(path, [key.encoded()], path.parent)
    except (CatalogRefused, ConfigError):
        return False
    return True


def catalog_files(settings: Settings) -> tuple[bytes, bytes]:
    """The catalog and its signature as the coordinator serves them (GET /api/v1/catalog, /catalog.sig)."""
    path = catalog_path(settings)
    try:
        return path.read_bytes(), signature_path(path).read_bytes()
    except FileNotFoundError:
        raise NotFound("this network has no signed catalog yet; run `archipelag catalog build` and "
                       "`archipelag catalog sign` on the coordinator") from None
