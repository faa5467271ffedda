"""Catalog commands: `archipelag catalog build | keygen | sign | verify` — the signed catalog's offline side.

Production keeps the signing key on a machine that is not part of the network: build and sign there, ship
``catalog.json`` and ``catalog.json.sig`` to the coordinator, and give hosts only the public key
(``ARCHIPELAG_TRUSTED_CATALOG_KEYS``). `archipelag up` does all of this by itself with a dev key.
Mount with ``register(app)``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from archipelag.catalog import parse_compiled_catalog
from archipelag.catalog_signing import (
    build_catalog,
    catalog_path,
    generate_signing_key,
    load_signed_catalog,
    sign_catalog,
    signing_key_path,
)
from archipelag.errors import ArchipelagError
from archipelag.settings import Settings

catalog_app = typer.Typer(help="The signed workload catalog: build, sign, verify.", no_args_is_help=True)

CatalogOption = Annotated[Path | None, typer.Option(
    "--catalog", help="The catalog file (default: <state_dir>/catalog.json).", show_default=False)]
KeyOption = Annotated[Path | None, typer.Option(
    "--key", help="The signing key file (default: <state_dir>/catalog_signing.key).", show_default=False)]


def register(app: typer.Typer) -> None:
    """Add `catalog …` to the `archipelag` command (or any Typer app)."""
    app.add_typer(catalog_app, name="catalog")


def _fail(exc: ArchipelagError) -> typer.Exit:
    typer.secho(f"error: {exc.message}", fg=typer.colors.RED, err=True)
    return typer.Exit(1)


@catalog_app.command("build")
def build(
    out: CatalogOption = None,
    workloads: Annotated[Path | None, typer.Option(help="The workloads folder (default: the repo's).",
                                                   show_default=False)] = None,
) -> None:
    """Compile every workloads/*/manifest.toml into one canonical catalog (same manifests, same bytes)."""
    settings = Settings()
    path = out or catalog_path(settings)
    try:
        changed = build_catalog(workloads or settings.workloads_dir, path)
        compiled = parse_compiled_catalog(path.read_bytes(), path.parent)
    except ArchipelagError as exc:
        raise _fail(exc) from None
    state = "written" if changed else "unchanged, so its signature (if any) still holds"
    typer.echo(f"{path}: {len(compiled.manifests)} workloads, version {compiled.version[:12]}, "
               f"built {compiled.built_at} — {state}")
    if changed:
        typer.echo("sign it with `archipelag catalog sign` before hosts will run it")


@catalog_app.command("keygen")
def keygen(
    key: KeyOption = None,
    force: Annotated[bool, typer.Option("--force", help="Replace an existing key.")] = False,
) -> None:
    """Write a new Ed25519 signing key (mode 600) and print its public key for hosts to trust."""
    path = key or signing_key_path(Settings())
    try:
        public = generate_signing_key(path, overwrite=force)
    except ArchipelagError as exc:
        raise _fail(exc) from None
    typer.echo(f"signing key written to {path} (keep it offline in production)")
    typer.echo(f"key id:     {public.key_id}")
    typer.echo(f"public key: {public.encoded()}")
    typer.echo(f"hosts trust it with ARCHIPELAG_TRUSTED_CATALOG_KEYS='[\"{public.encoded()}\"]'")


@catalog_app.command("sign")
def sign(catalog: CatalogOption = None, key: KeyOption = None) -> None:
    """Write the catalog's detached signature (catalog.json.sig: key id and signature)."""
    settings = Settings()
    try:
        out = sign_catalog(catalog or catalog_path(settings), key or signing_key_path(settings))
    except ArchipelagError as exc:
        raise _fail(exc) from None
    typer.echo(f"signed: {out}")


@catalog_app.command("verify")
def verify(
    catalog: CatalogOption = None,
    trusted_keys: Annotated[list[str] | None, typer.Option(
        "--trusted", help="A trusted public key; repeat for several (default: trusted_catalog_keys).",
        show_default=False)] = None,
) -> None:
    """Check the catalog's signature against trusted keys, as a host does; exit 1 when it fails."""
    settings = Settings()
    path = catalog or catalog_path(settings)
    try:
        signed = load_signed_catalog(path, trusted_keys or settings.trusted_catalog_keys, settings.workloads_dir)
    except ArchipelagError as exc:
        raise _fail(exc) from None
    typer.echo(f"{path}: valid, signed by key {signed.key_id}; {len(signed.manifests)} workloads, "
               f"version {signed.version[:12]}, built {signed.built_at}")
