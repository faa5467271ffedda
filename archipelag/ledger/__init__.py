"""Ledger: the head-only persistence library (jobs, accounts, credits, hosts, karma) on SQLite or PostgreSQL.

Callers use ``Ledger`` (see ``archipelag.ledger.ledger`` for its methods) and the records it returns; the
SQLModel tables stay inside this package.
"""

from archipelag.ledger.karma_rules import KarmaKind, KarmaRules, Standing
from archipelag.ledger.ledger import Ledger
from archipelag.ledger.records import Account, ApiKey, Host, Job, JobEvent, KarmaEvent, Workload

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
