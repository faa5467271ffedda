"""The coordinator's services that never run SQL start without the SQL layer: SQLAlchemy, SQLModel and the ledger's
tables cost ~0.8 s of CPU to import, paid by every placement, jobs-service and API-replica process a network
starts (README, Benchmarks). Only the ledger's own process loads them."""

from __future__ import annotations

import json
import subprocess
import sys

SERVICES = ("archipelag.placement.actor", "archipelag.jobs.actor", "archipelag.serve.app", "archipelag.cli")
SQL = ("sqlalchemy", "sqlmodel", "archipelag.ledger.tables", "archipelag.ledger.ledger")


def test_the_services_that_run_no_sql_do_not_import_the_sql_layer() -> None:
    check = f"import json, sys, {', '.join(SERVICES)}; print(json.dumps([m for m in {SQL!r} if m in sys.modules]))"
    loaded = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True, check=True, timeout=60)
    assert json.loads(loaded.stdout) == [], f"{', '.join(SERVICES)} import {loaded.stdout.strip()}"


def test_the_ledger_class_is_still_where_callers_find_it() -> None:
    from archipelag.ledger import Ledger
    from archipelag.ledger.ledger import Ledger as Defined

    assert Ledger is Defined
