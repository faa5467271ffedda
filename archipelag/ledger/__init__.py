"""Ledger: the head-only persistence library (jobs, accounts, credits, hosts, karma) on SQLite or PostgreSQL.

Callers use ``Ledger`` (see ``archipelag.ledger.ledger`` for its methods) and the records it returns; the
SQLModel tables stay inside this package.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from archipelag.ledger.karma_rules import KarmaKind, KarmaRules, Standing
from archipelag.ledger.records import Account, ApiKey, Host, Job, JobEvent, KarmaEvent, Workload

if TYPE_CHECKING:
    from archipelag.ledger.ledger import Ledger


def __getattr__(name: str) -> Any:
    if name == "Ledger":
        from archipelag.ledger.ledger import Ledger

        return Ledger
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "Account",
    "ApiKey",
    "Host",
    "Job",
    "JobEvent",
    "KarmaEvent",
    "KarmaKind",
    "KarmaRules",
    "Ledger",
    "Standing",
    "Workload",
]
