"""Ledger test fixtures and builders: one ``ledger`` fixture parametrized over SQLite and PostgreSQL.

PostgreSQL comes from ARCHIPELAG_TEST_POSTGRES_URL when set; otherwise ``tests/postgres.sh`` starts a
throwaway cluster under /tmp for the session (installing PostgreSQL with apt-get when it is missing and we
are root) and stops it at the end. When none can be had the postgres tests skip with the reason. Each
postgres test gets its own schema (dropped afterwards); each SQLite test its own file.
"""

from __future__ import annotations

import os
import subprocess
import tempfile
import uuid
from collections import deque
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path

import psycopg
import pytest
from sqlalchemy import text
from sqlalchemy.engine import make_url

from archipelag.catalog import Manifest
from archipelag.ids import WorkloadSlug
from archipelag.ledger import Account, Job, KarmaKind, Ledger
from archipelag.lifecycle import JOB_TRANSITIONS, JobStatus

POSTGRES_SCRIPT = Path(__file__).resolve().parent / "postgres.sh"
MICRO = 1_000_000


# --- backends ------------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """The base URL of a PostgreSQL server for this session, or a skip saying why there is none."""
    given = os.environ.get("ARCHIPELAG_TEST_POSTGRES_URL")
    if given:
        yield given
        return
    data_dir = tempfile.mkdtemp(prefix="archipelag-pg.", dir="/tmp")
    started = subprocess.run(
        [str(POSTGRES_SCRIPT), "start", data_dir], capture_output=True, text=True, timeout=600, check=False
    )
    if started.returncode != 0:
        subprocess.run([str(POSTGRES_SCRIPT), "stop", data_dir], capture_output=True, timeout=60, check=False)
        pytest.skip(
            f"PostgreSQL unavailable: tests/postgres.sh start failed: {started.stderr.strip()[-500:]}"
        )
    try:
        yield started.stdout.strip().splitlines()[-1]
    finally:
        subprocess.run([str(POSTGRES_SCRIPT), "stop", data_dir], capture_output=True, timeout=60, check=False)


def _psycopg_dsn(url: str) -> str:
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


@pytest.fixture
def postgres_schema_url(postgres_url: str) -> Iterator[str]:
    """A URL whose connections use a fresh schema of their own, dropped after the test."""
    with fresh_schema(postgres_url) as url:
        yield url


@contextmanager
def fresh_schema(postgres_url: str) -> Iterator[str]:
    """A URL whose connections use a new schema of their own, dropped at the end."""
    schema = f"t_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(_psycopg_dsn(postgres_url), autocommit=True) as conn:
        conn.execute(f'CREATE SCHEMA "{schema}"')
    url = (
        make_url(postgres_url)
        .update_query_dict({"options": f"-csearch_path={schema}"})
        .render_as_string(hide_password=False)
    )
    try:
        yield url
        problems = audit_ledger(url)  # the double-entry invariant, checked while the schema is still there
        assert not problems, "the ledger's books do not balance after this test: " + "; ".join(problems)
    finally:
        with psycopg.connect(_psycopg_dsn(postgres_url), autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA "{schema}" CASCADE')


def audit_ledger(url: str) -> list[str]:
    """What is wrong with the books of the ledger at ``url`` (see ``credits.audit``); nothing for a database that
    was never migrated. Opens an engine of its own, so it works after the test's ledger has closed."""
    from archipelag.ledger import credits, db

    engine = db.create_engine_for(url)
    try:
        if db.schema_version(engine) is None:
            return []
        with db.read_session(engine) as session:
            return [f"{url}: {problem}" for problem in credits.audit(session)]
    finally:
        engine.dispose()


@contextmanager
def network_database(request: pytest.FixtureRequest) -> Iterator[str]:
    """ARCHIPELAG_DATABASE_URL for a network on PostgreSQL: a fresh schema of the tests' own server. (`up` on
    SQLite, its own default, needs none.)"""
    with fresh_schema(request.getfixturevalue("postgres_url")) as url:
        yield url


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def ledger_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'ledger.db'}"
    url: str = request.getfixturevalue("postgres_schema_url")
    return url


@pytest.fixture
def ledger(ledger_url: str) -> Iterator[Ledger]:
    """A migrated ledger holding the builders' catalog."""
    instance = Ledger(ledger_url)
    instance.migrate()
    instance.sync_catalog([a_manifest()])
    try:
        yield instance
    finally:
        instance.close()


# --- builders --------------------------------------------------------------------------------------------


def a_manifest(slug: str = "echo", price_micro: int = 10_000, name: str | None = None) -> Manifest:
    return Manifest(
        slug=WorkloadSlug(slug),
        name=name or slug.title(),
        description=f"the {slug} workload",
        runtime="wasm",
        trust_level=0,
        price_micro=price_micro,
    )


def an_account(ledger: Ledger, credits: float = 10.0, email: str | None = None) -> Account:
    return ledger.create_account(email or f"{uuid.uuid4().hex[:8]}@example.com", round(credits * MICRO))


def path_to(target: JobStatus) -> list[JobStatus]:
    """The shortest sequence of moves from submitted to ``target`` (empty for submitted)."""
    previous: dict[JobStatus, JobStatus] = {}
    seen = {JobStatus.SUBMITTED}
    queue = deque([JobStatus.SUBMITTED])
    while queue:
        state = queue.popleft()
        for nxt in sorted(JOB_TRANSITIONS[state]):
            if nxt not in seen:
                seen.add(nxt)
                previous[nxt] = state
                queue.append(nxt)
    steps: list[JobStatus] = []
    while target is not JobStatus.SUBMITTED:
        steps.append(target)
        target = previous[target]
    return steps[::-1]


def a_job(
    ledger: Ledger,
    account: Account | None = None,
    status: JobStatus = JobStatus.SUBMITTED,
    reserve_micro: int = 50_000,
    host_id: str | None = None,
) -> Job:
    """A job walked from submitted to ``status`` through the lifecycle (terminal states via transition)."""
    account = account or an_account(ledger)
    job = ledger.create_job(account.id, "echo", {"text": "hi"}, region="eu", reserve_micro=reserve_micro)
    for step in path_to(status):
        fields = {"host_id": host_id} if step is JobStatus.ASSIGNED and host_id else {}
        job = ledger.transition(job.id, step, reason="builder", **fields)
    return job


def a_host_key() -> str:
    from archipelag import identity

    return identity.public_hex(identity.generate_key())


def an_owned_host(ledger: Ledger, owner: Account, host_id: str, karma: float = 0.0) -> str:
    """``host_id`` enrolled under ``owner``, with ``karma`` points given by an operator's adjustment."""
    ledger.enrol_host(host_id, a_host_key(), owner.id, host_id, "eu-west")
    if karma:
        ledger.record_karma(host_id, KarmaKind.ADJUSTMENT, adjustment=karma, reason="builder")
    return host_id


def taken_back(old: Ledger, url: str, version: int, dropped: Mapping[str, Sequence[str]]) -> Ledger:
    """``old``'s database (at ``url``) as an older release left it at schema ``version``: the ``dropped`` columns
    of each table gone and the later versions forgotten; ``old`` closed, the database opened again unmigrated."""
    with old.engine.begin() as connection:
        for table, columns in dropped.items():
            for column in columns:
                connection.exec_driver_sql(f"ALTER TABLE {table} DROP COLUMN {column}")
        connection.execute(text("DELETE FROM schema_version WHERE version > :version"), {"version": version})
    old.close()
    return Ledger(url)


def a_settled_job(ledger: Ledger, account: Account, host_id: str | None, price_micro: int,
                  reserve_micro: int | None = None, workload: str = "echo") -> Job:
    """A job of ``account`` run on ``host_id`` and succeeded, charged ``price_micro``."""
    job = ledger.create_job(account.id, workload, {"text": "hi"}, region="eu",
                            reserve_micro=reserve_micro if reserve_micro is not None else price_micro)
    for step in path_to(JobStatus.STREAMING):
        fields = {"host_id": host_id} if step is JobStatus.ASSIGNED and host_id else {}
        job = ledger.transition(job.id, step, reason="builder", **fields)
    return ledger.finish(job.id, JobStatus.SUCCEEDED, output="ok", price_micro=price_micro)
