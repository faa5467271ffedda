"""LedgerActor: the ledger in a process of its own on the head, so the API's event loop never
spends its time in SQL. One call at a time: SQLite takes one writer, and callers' order is kept."""

from __future__ import annotations

from typing import Any

from archipelag.errors import ArchipelagError
from archipelag.ledger.ledger import Ledger


class LedgerActor:
    """A plain class; ``LedgerClient.start`` runs it as a named Ray actor."""

    def __init__(self, url: str) -> None:
        self._ledger = Ledger(url)

    def call(self, method: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[bool, Any]:
        """(True, result) or (False, the ArchipelagError raised), so errors cross Ray unwrapped."""
        if method.startswith("_"):
            raise AttributeError(method)
        try:
            return True, getattr(self._ledger, method)(*args, **kwargs)
        except ArchipelagError as exc:
            return False, exc

    def ping(self) -> bool:
        return True
