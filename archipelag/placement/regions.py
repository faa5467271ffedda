"""Regions: how near two regions are, as a proximity in [0, 1] for placement's score. Pure.

A region name starts with its continent's prefix (``eu-west``, ``us-east``, ``ap-south``…). The same region is
1.0, the same continent 0.6, other continents less the farther apart they are. When either side is unknown the
term is neutral (0.5), so a caller who gives no region neither helps nor hurts any host.
"""

from __future__ import annotations

from functools import lru_cache

SAME_REGION = 1.0
SAME_CONTINENT = 0.6
NEUTRAL = 0.5
FAR = 0.1  # continents with no entry below: the other side of the world

# Region-name prefix → continent.
CONTINENTS: dict[str, str] = {
    "eu": "europe",
    "us": "north-america",
    "ca": "north-america",
    "na": "north-america",
    "sa": "south-america",
    "ap": "asia-pacific",
    "me": "middle-east",
    "af": "africa",
}

# Proximity between neighbouring continents (symmetric); pairs not listed are FAR.
_BETWEEN: dict[frozenset[str], float] = {
    frozenset({"europe", "north-america"}): 0.3,
    frozenset({"europe", "africa"}): 0.35,
    frozenset({"europe", "middle-east"}): 0.4,
    frozenset({"middle-east", "africa"}): 0.3,
    frozenset({"middle-east", "asia-pacific"}): 0.3,
    frozenset({"north-america", "south-america"}): 0.35,
    frozenset({"north-america", "asia-pacific"}): 0.2,
    frozenset({"europe", "asia-pacific"}): 0.15,
}


def continent(region: str) -> str | None:
    """The continent of a region name by its prefix, or None for a name we cannot place."""
    return CONTINENTS.get(region.split("-", 1)[0].lower())


@lru_cache(maxsize=4096)
def proximity(caller_region: str | None, host_region: str) -> float:
    """How near a host's region is to the caller's, in [0, 1]; 0.5 when we cannot tell."""
    if caller_region is None:
        return NEUTRAL
    if caller_region == host_region:
        return SAME_REGION
    a, b = continent(caller_region), continent(host_region)
    if a is None or b is None:
        return NEUTRAL
    if a == b:
        return SAME_CONTINENT
    return _BETWEEN.get(frozenset({a, b}), FAR)
