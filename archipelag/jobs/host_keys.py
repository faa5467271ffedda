"""HostKeys: the enrolled public key of each host the dispatcher sends jobs to, read from the ledger once.

A host's key never changes for its id (the ledger binds one key to an id for good), so a key once read is kept for
the service's life: every job's receipt is checked against it with no ledger read per job — one the first time a
host gets a job, none after. A host the ledger has no key for is asked about again next time (it may enrol).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from archipelag.ids import HostId
from archipelag.ledger.records import HostIdentity

# A host's enrolled identity by its id (None: never enrolled): the ledger's ``host_identity``.
Identities = Callable[[HostId], Awaitable[HostIdentity | None]]


class HostKeys:
    def __init__(self, identities: Identities) -> None:
        self._identities = identities
        self._keys: dict[HostId, str] = {}

    async def public_key(self, host_id: HostId) -> str | None:
        """The host's enrolled Ed25519 key (hex), or None when it has none."""
        key = self._keys.get(host_id)
        if key is None:
            found = await self._identities(host_id)
            if found is not None:
                key = self._keys[host_id] = found.public_key
        return key
