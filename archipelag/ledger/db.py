"""Database: engine creation (SQLite pragmas, PostgreSQL), sessions, and the schema migration.

- ``create_engine_for(url)``: SQLite (WAL, synchronous=NORMAL, busy_timeout, foreign keys) or PostgreSQL
  (``postgresql+psycopg://…``).
- ``read_session(engine)`` / ``write_session(engine)``: one transaction each, SQLAlchemy errors translated into
  ``LedgerError``. On SQLite a write transaction starts with ``BEGIN IMMEDIATE``, so writers queue on the
  busy timeout instead of failing on a stale snapshot; on PostgreSQL rows are locked with ``FOR UPDATE`` where
  a read decides a write.
- ``migrate(engine)``: creates or upgrades the schema and records each applied version in ``schema_version``.
  Idempotent. Run by ``archipelag db migrate`` (``Ledger.migrate``), never implicitly at import.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event, insert, inspect, select
from sqlalchemy.engine import Connection, make_url
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session
from sqlmodel import SQLModel, col

from archipelag.errors import ArchipelagError, LedgerError
from archipelag.ledger import tables
from archipelag.ledger.tables import CreditAccountRow, SchemaVersionRow, utcnow

log = logging.getLogger(__name__)

SQLITE_BUSY_TIMEOUT_MS = 10_000
_IMMEDIATE = "archipelag_begin_immediate"

# The platform's own books, created by migrate(): escrow holds reservations, platform collects fees,
# mint is where granted credits come from (its balance is minus everything ever granted).
PLATFORM_BOOKS = ("escrow", "platform", "mint")


def is_sqlite(engine: Engine) -> bool:
    return engine.dialect.name == "sqlite"


def create_engine_for(url: str) -> Engine:
    """An engine for ``url``. SQLite URLs must name a file (threads share it; ``:memory:`` cannot)."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        if not parsed.database or parsed.database == ":memory:":
            raise LedgerError("the ledger needs a SQLite file, e.g. sqlite:////path/archipelag.db")
        Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(
            url, connect_args={"check_same_thread": False, "timeout": SQLITE_BUSY_TIMEOUT_MS / 1000}
        )
        if not engine.dialect.update_returning:  # a transfer's legs are UPDATE … RETURNING (SQLite ≥ 3.35)
            raise LedgerError("the ledger needs SQLite 3.35 or newer; use a Python built with a newer SQLite")
        _install_sqlite_hooks(engine)
        return engine
    if parsed.get_backend_name() == "postgresql":
        return create_engine(url, pool_pre_ping=True, pool_size=10, max_overflow=20)
    raise LedgerError(
        f"unsupported database URL scheme {parsed.drivername!r}; use sqlite:/// or postgresql+psycopg://"
    )


def _install_sqlite_hooks(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Take transaction control from the sqlite3 module; the "begin" hook below emits BEGIN itself.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(connection: Connection) -> None:
        immediate = connection.get_execution_options().get(_IMMEDIATE, False)
        connection.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")


@contextmanager
def _translated() -> Iterator[None]:
    try:
        yield
    except ArchipelagError:
        raise
    except SQLAlchemyError as exc:
        log.warning("ledger database error: %s", type(exc).__name__)
        raise LedgerError(f"database error ({type(exc).__name__}); check the database and retry") from exc


@contextmanager
def read_session(engine: Engine) -> Iterator[Session]:
    """One read transaction."""
    with _translated(), Session(engine, expire_on_commit=False) as session, session.begin():
        yield session


@contextmanager
def write_session(engine: Engine) -> Iterator[Session]:
    """One write transaction: committed when the block ends, rolled back when it raises."""
    bind = engine.execution_options(**{_IMMEDIATE: True}) if is_sqlite(engine) else engine
    with _translated(), Session(bind, expire_on_commit=False) as session, session.begin():
        yield session


# --- migrations -------------------------------------------------------------------------------------


def _v1_initial(connection: Connection) -> None:
    SQLModel.metadata.create_all(connection, tables=_ledger_tables())
    existing = {
        (row.kind, row.owner)
        for row in connection.execute(select(col(CreditAccountRow.kind), col(CreditAccountRow.owner)))
    }
    for kind in PLATFORM_BOOKS:
        if (kind, "") not in existing:
            connection.execute(insert(CreditAccountRow).values(kind=kind, owner="", balance_micro=0))


def _ledger_tables() -> list[Any]:
    return [
        model.__table__
        for model in vars(tables).values()
        if isinstance(model, type) and issubclass(model, SQLModel) and hasattr(model, "__table__")
    ]


def _timestamp(connection: Connection) -> str:
    return "TIMESTAMP WITH TIME ZONE" if connection.dialect.name == "postgresql" else "DATETIME"


def _add_columns(connection: Connection, table: str, added: dict[str, str]) -> None:
    """Add the columns a table lacks (a database made before them); a new database has them from its tables."""
    have = {column["name"] for column in inspect(connection).get_columns(table)}
    for name, sql_type in added.items():
        if name not in have:
            connection.exec_driver_sql(f"ALTER TABLE {table} ADD COLUMN {name} {sql_type}")


def _add_index(connection: Connection, table: str, name: str, columns: str, unique: bool = False) -> None:
    if name not in {index["name"] for index in inspect(connection).get_indexes(table)}:
        connection.exec_driver_sql(f"CREATE {'UNIQUE ' if unique else ''}INDEX {name} ON {table} ({columns})")


def _v2_people(connection: Connection) -> None:
    """Accounts people sign in to: passwords, verified addresses, admins, suspension; sessions and tokens.
    A database made at version 1 gets the new columns; a new one already has them from version 1's tables."""
    _add_columns(connection, tables.AccountRow.__tablename__, {
        "password_hash": "VARCHAR(255)", "email_verified_at": _timestamp(connection),
        "is_admin": "BOOLEAN NOT NULL DEFAULT FALSE", "suspended_at": _timestamp(connection),
        "suspended_reason": "VARCHAR(500)"})
    SQLModel.metadata.create_all(connection, tables=[tables.SessionRow.__table__,  # type: ignore[attr-defined]
                                                     tables.AccountTokenRow.__table__])  # type: ignore[attr-defined]


def _v3_host_identity(connection: Connection) -> None:
    """Hosts enrol: each has an owner account and an Ed25519 key (one key per id, for good), may be revoked;
    pairing requests wait for their owner's approval."""
    hosts = tables.HostRow.__tablename__
    _add_columns(connection, hosts, {
        "owner_account_id": "INTEGER", "public_key": "VARCHAR(64)", "enrolled_at": _timestamp(connection),
        "revoked_at": _timestamp(connection), "revoked_reason": "VARCHAR(500)"})
    _add_index(connection, hosts, "ix_hosts_owner_account_id", "owner_account_id")
    _add_index(connection, hosts, "uq_hosts_public_key", "public_key", unique=True)  # one key, one host, for good
    SQLModel.metadata.create_all(connection, tables=[tables.PairingRow.__table__])  # type: ignore[attr-defined]


def _v4_batches(connection: Connection) -> None:
    """Batch jobs: a child names its parent and its index, a parent its number of children; a batch's settings
    have a table of their own."""
    jobs = tables.JobRow.__tablename__
    _add_columns(connection, jobs, {"parent_id": "VARCHAR(36)", "batch_index": "INTEGER", "batch_size": "INTEGER"})
    _add_index(connection, jobs, "ix_jobs_parent_id", "parent_id")
    SQLModel.metadata.create_all(connection, tables=[tables.BatchRow.__table__])  # type: ignore[attr-defined]


def _v5_exchange(connection: Connection) -> None:
    """The exchange: hosts' asking prices and accounts' saved bids have tables of their own; a job keeps its bid
    and the price it cleared at, and the market's history reads settled jobs by workload and time."""
    jobs = tables.JobRow.__tablename__
    _add_columns(connection, jobs, {"bid_price_micro": "BIGINT", "clearing_price_micro": "BIGINT"})
    _add_index(connection, jobs, "ix_jobs_workload_completed", "workload_id, completed_at")
    SQLModel.metadata.create_all(connection, tables=[tables.AskingPriceRow.__table__,  # type: ignore[attr-defined]
                                                     tables.BidPreferenceRow.__table__])  # type: ignore[attr-defined]


def _v6_host_suspension(connection: Connection) -> None:
    """An operator's suspension of a host is the ledger's, with why and since when, so placement's restarts keep it."""
    _add_columns(connection, tables.HostRow.__tablename__, {
        "suspended_at": _timestamp(connection), "suspended_reason": "VARCHAR(500)"})


def _v7_job_receipts(connection: Connection) -> None:
    """A succeeded job keeps its host's signed receipt (job, attempt, usage, output digest), for its owner to check."""
    _add_columns(connection, tables.JobRow.__tablename__, {"receipt": "JSON"})  # as a new database's column


# Append new steps; never edit an applied one.
def _v8_karma_totals(connection: Connection) -> None:
    """Each host's karma total (its events' points summed) and its last event's time on its row, kept with every
    event from now on: settling a job summed the host's whole history twice (25 ms a job at 100,000 events)."""
    hosts, events = tables.HostRow.__tablename__, tables.KarmaEventRow.__tablename__
    _add_columns(connection, hosts, {"karma_points": "FLOAT NOT NULL DEFAULT 0", "karma_at": _timestamp(connection)})
    connection.exec_driver_sql(
        f"UPDATE {hosts} SET karma_points = COALESCE((SELECT SUM(points) FROM {events} WHERE host_id = {hosts}.id), 0),"
        f" karma_at = (SELECT MAX(at) FROM {events} WHERE host_id = {hosts}.id)")


MIGRATIONS: tuple[tuple[int, Callable[[Connection], None]], ...] = (
    (1, _v1_initial), (2, _v2_people), (3, _v3_host_identity), (4, _v4_batches), (5, _v5_exchange),
    (6, _v6_host_suspension), (7, _v7_job_receipts), (8, _v8_karma_totals))
SCHEMA_VERSION = MIGRATIONS[-1][0]


def migrate(engine: Engine) -> int:
    """Bring the schema up to ``SCHEMA_VERSION``; returns the version. Safe to run any number of times."""
    with _translated():
        with engine.begin() as connection:
            SQLModel.metadata.create_all(connection, tables=[SchemaVersionRow.__table__])  # type: ignore[attr-defined]
        for version, step in MIGRATIONS:
            with engine.execution_options(**{_IMMEDIATE: True}).begin() as connection:
                done = connection.execute(
                    select(col(SchemaVersionRow.version)).where(col(SchemaVersionRow.version) == version)
                ).first()
                if done:
                    continue
                log.info("applying ledger schema version %d", version)
                step(connection)
                connection.execute(insert(SchemaVersionRow).values(version=version, applied_at=utcnow()))
    return SCHEMA_VERSION


def schema_version(engine: Engine) -> int | None:
    """The highest applied version, or None for a database that was never migrated."""
    with _translated(), engine.connect() as connection:
        if not inspect(connection).has_table(SchemaVersionRow.__tablename__):
            return None
        versions = connection.execute(select(col(SchemaVersionRow.version))).scalars().all()
        return max(versions) if versions else None
