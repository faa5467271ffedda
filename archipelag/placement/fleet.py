"""Fleet: the live view of every host as numpy columns, so one placement decision over 100k hosts is a few
vectorized passes instead of a Python loop. Pure (numpy, no Ray).

Rows are dense: a host's row comes from ``_index``; removing a host moves the last row into its place, so
register, heartbeat and removal are O(1). The request-independent part of each score (``standing``) is kept
per row and refreshed whenever its inputs change. ``rank`` returns exactly what ``scoring.rank`` returns over
``snapshots()`` — same filters, same sums in the same order, same tie-break. Hosts' effective asks (the price
filter) are a column per workload and market, built when first asked, from a table per distinct ask list, and
kept per row afterwards.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from typing import Any, ClassVar

import numpy as np
import numpy.typing as npt

from archipelag.ids import HostId
from archipelag.lifecycle import HostStatus
from archipelag.market.pricing import NO_MARKET, Market
from archipelag.placement.measured import HardwareCheck, believed
from archipelag.placement.regions import proximity
from archipelag.placement.scoring import (
    STAGES,
    Funnel,
    HostSnapshot,
    JobRequest,
    Weights,
    accepts,
    fresh_since,
    host_ask,
    reason,
    standing,
)

_STATUSES: tuple[HostStatus, ...] = tuple(HostStatus)
_STATUS_CODE: dict[HostStatus, int] = {status: code for code, status in enumerate(_STATUSES)}
_ONLINE = _STATUS_CODE[HostStatus.ONLINE]
_MAX_RUNTIMES = 63
_BLOCK = 64  # rows per group when narrowing to the top k
_SUNK = 1e300  # subtracted from ineligible scores (finite: -inf · 0 would be NaN)

Mask = npt.NDArray[np.bool_]


def _warm_column(slug: str) -> str:
    """The bool column that says which hosts have ``slug`` cached."""
    return f"warm:{slug}"


_AskKey = tuple[str, int, Market]  # workload, its catalog price, the market's multipliers


def _ask_column(key: _AskKey) -> str:
    """The int column of every host's effective ask for a workload in one market (built when first asked)."""
    return f"ask:{key[0]}:{key[1]}:{key[2]!r}"


@dataclass(frozen=True)
class Heartbeat:
    """The live numbers a host reports; None leaves a value as it was."""

    free_ram_mb: int | None = None
    free_vram_mb: int | None = None
    active_jobs: int | None = None
    warm: frozenset[str] | None = None

    @classmethod
    def from_metrics(cls, metrics: dict[str, Any]) -> Heartbeat:
        """Read the fields placement uses from a host's metrics dict; other keys are ignored."""
        def whole(key: str) -> int | None:
            value = metrics.get(key)
            return None if value is None else max(0, int(value))

        warm = metrics.get("warm")
        return cls(free_ram_mb=whole("free_ram_mb"), free_vram_mb=whole("free_vram_mb"),
                   active_jobs=whole("active_jobs"), warm=None if warm is None else frozenset(map(str, warm)))


class _Interned:
    """Small dense codes for values that repeat across the fleet (regions, accept lists)."""

    def __init__(self) -> None:
        self.values: list[Any] = []
        self._codes: dict[Any, int] = {}

    def code(self, value: Any) -> int:
        code = self._codes.get(value)
        if code is None:
            code = self._codes[value] = len(self.values)
            self.values.append(value)
        return code


class Fleet:
    """Every known host, with O(1) updates and vectorized ``rank``."""

    # Small types where a column is scanned per decision: the scan is bound by memory bandwidth.
    _COLUMNS: ClassVar[dict[str, type[np.generic]]] = {
        "status": np.int8, "heartbeat_at": np.float64, "runtimes": np.int64, "accepts": np.intp,
        "region": np.intp, "karma": np.float64, "cores": np.int32, "free_ram": np.int64, "free_vram": np.int64,
        "slots": np.int32, "reported": np.int32, "active": np.int32,
        # Jobs placement was told it handed the host (``job_assigned``), by heartbeat: since the last one, and
        # before it. Any joined node can say it, so a heartbeat's signed count bounds the older ones.
        "inflight": np.int32, "carried": np.int32,
        "has_room": np.bool_,  # active < slots
        "held": np.bool_,  # held out of placement until it may take jobs (``hold``); reads as joining
        "gpu": np.bool_,  # lends a GPU: its hardware tier (market.pricing.tier_of) is gpu
        "asks": np.intp,  # its asks' code in ``_ask_lists``
        "speed": np.float64, "standing": np.float64,  # standing: scoring.standing(), refreshed on change
        "free_ram_f": np.float64, "free_vram_f": np.float64,  # max(free, 1) as floats: the fit's divisor
    }

    def __init__(self, weights: Weights, stale_after_s: float, capacity: int = 1024) -> None:
        self.weights = weights
        self.stale_after_s = stale_after_s
        self._n = 0
        self._ids: list[HostId] = []
        self._static: list[HostSnapshot] = []  # as registered; live fields are read from the columns
        self._warm: list[frozenset[str]] = []
        self._index: dict[HostId, int] = {}
        self._runtime_bits: dict[str, int] = {}
        self._regions = _Interned()
        self._accept_lists = _Interned()
        self._ask_lists = _Interned()  # hosts' asks as sorted (pattern, price) tuples: few distinct ones
        self._cols: dict[str, npt.NDArray[Any]] = {}
        self._ask_keys: dict[str, _AskKey] = {}  # the effective-ask columns built so far (kept per row after)
        self._ask_names: dict[_AskKey, str] = {}  # their names, by key (a decision looks one up)
        self._buffers: dict[str, npt.NDArray[np.float64]] = {}
        for name, dtype in self._COLUMNS.items():
            self._cols[name] = np.zeros(capacity, dtype=dtype)

    # --- reading ------------------------------------------------------------------------------------

    def ids(self) -> list[HostId]:
        return list(self._ids)

    def asks(self, host_id: HostId) -> dict[str, int]:
        """What the host asks now (cheaper than ``get`` for a pass over the whole fleet)."""
        return dict(self._static[self._row(host_id)].asks)

    def __len__(self) -> int:
        return self._n

    def __contains__(self, host_id: object) -> bool:
        return host_id in self._index

    def _col(self, name: str) -> npt.NDArray[Any]:
        return self._cols[name][: self._n]

    def _row(self, host_id: HostId) -> int:
        return self._index[host_id]  # KeyError for a host the fleet does not know

    def get(self, host_id: HostId, now: float | None = None) -> HostSnapshot:
        """The host as placement sees it; with ``now``, a stale host reads as offline."""
        row = self._row(host_id)
        c = self._cols
        status = _STATUSES[int(c["status"][row])]
        if status == HostStatus.ONLINE and c["held"][row]:
            status = HostStatus.JOINING
        heartbeat_at = float(c["heartbeat_at"][row])
        if now is not None and heartbeat_at < fresh_since(now, self.stale_after_s):
            status = HostStatus.OFFLINE
        return replace(
            self._static[row], status=status, free_ram_mb=int(c["free_ram"][row]),
            free_vram_mb=int(c["free_vram"][row]), active_jobs=int(c["active"][row]),
            karma=float(c["karma"][row]), warm=self._warm[row], last_heartbeat_at=heartbeat_at,
        )

    def snapshots(self, now: float | None = None) -> list[HostSnapshot]:
        return [self.get(host_id, now) for host_id in self._ids]

    def status(self, host_id: HostId) -> HostStatus:
        return _STATUSES[int(self._cols["status"][self._row(host_id)])]

    # --- writing ------------------------------------------------------------------------------------

    def upsert(self, snapshot: HostSnapshot, held: bool = False) -> None:
        """Add a host, or replace what is known about it (a re-register resets its live counts); ``held``: see
        ``hold``."""
        row = self._index.get(snapshot.host_id)
        if row is None:
            row = self._append(snapshot.host_id)
        c = self._cols
        self._static[row] = snapshot
        c["status"][row] = _STATUS_CODE[snapshot.status]
        c["held"][row] = held
        c["heartbeat_at"][row] = snapshot.last_heartbeat_at
        c["cores"][row] = snapshot.cpu_cores
        c["slots"][row] = snapshot.slots
        c["karma"][row] = snapshot.karma
        c["speed"][row] = snapshot.speed
        c["runtimes"][row] = self._runtime_mask(snapshot.runtimes)
        c["region"][row] = self._regions.code(snapshot.region)
        c["accepts"][row] = self._accept_lists.code(snapshot.accepts)
        c["inflight"][row] = c["carried"][row] = 0
        self._set_live(row, Heartbeat(snapshot.free_ram_mb, snapshot.free_vram_mb, snapshot.active_jobs,
                                      snapshot.warm))
        self._refresh_asks(row)

    def heartbeat(self, host_id: HostId, at: float, beat: Heartbeat) -> None:
        """Record a heartbeat; a joining or offline host comes online.

        Its count of jobs bounds the assignments placement was told of before the previous heartbeat: those had a
        whole interval to start, so any the host does not count now are dropped, and a job a node only said it
        handed the host (any node can) stops counting by the second heartbeat after. Those told since the
        previous one are kept until the next: the host may not have started them when it counted."""
        row = self._row(host_id)
        c = self._cols
        c["heartbeat_at"][row] = at
        if self.status(host_id) in (HostStatus.JOINING, HostStatus.OFFLINE):
            c["status"][row] = _ONLINE
        if beat.active_jobs is not None:
            c["carried"][row] = min(int(c["carried"][row]), beat.active_jobs) + c["inflight"][row]
            c["inflight"][row] = 0
        self._set_live(row, beat)

    def set_status(self, host_id: HostId, status: HostStatus) -> None:
        self._cols["status"][self._row(host_id)] = _STATUS_CODE[status]

    def hold(self, host_id: HostId, held: bool) -> None:
        """Hold a host out of placement, whatever its status and heartbeats say, or let it in: placement holds a
        host it has not read the ledger's word on yet. A held host that is online reads as joining."""
        self._cols["held"][self._row(host_id)] = held

    def set_hardware(self, host_id: HostId, verdict: HardwareCheck) -> None:
        """Believe the join benchmark's verdict on a host: its capped cores, RAM and GPU memory, and its speed.
        Live counts stay as they are (a job handed to it meanwhile is still counted)."""
        row = self._row(host_id)
        c = self._cols
        self._static[row] = believed(self._static[row], verdict)
        c["cores"][row] = verdict.cpu_cores
        c["speed"][row] = verdict.speed
        self._set_live(row, Heartbeat(free_ram_mb=int(c["free_ram"][row]), free_vram_mb=int(c["free_vram"][row])))
        self._refresh_asks(row)  # a GPU the benchmark did not find changes the host's tier

    def set_asks(self, host_id: HostId, asks: Mapping[str, int]) -> None:
        """Replace what the host asks (checked by the caller: market.pricing.check_asks)."""
        row = self._row(host_id)
        self._static[row] = replace(self._static[row], asks=dict(asks))
        self._refresh_asks(row)

    def set_karma(self, host_id: HostId, karma: float) -> None:
        row = self._row(host_id)
        self._cols["karma"][row] = min(1.0, max(0.0, karma))
        self._refresh_standing(row)

    def job_assigned(self, host_id: HostId) -> None:
        """Count a job handed to the host until its heartbeats count it (see ``heartbeat``)."""
        row = self._row(host_id)
        self._cols["inflight"][row] += 1
        self._refresh_load(row)

    def job_released(self, host_id: HostId) -> None:
        row = self._row(host_id)
        c = self._cols
        older = "carried" if c["carried"][row] > 0 else "inflight"  # jobs end roughly in the order they began
        c[older][row] = max(0, int(c[older][row]) - 1)
        c["reported"][row] = max(0, int(c["reported"][row]) - 1)
        self._refresh_load(row)

    def remove(self, host_id: HostId) -> None:
        """Forget a host: the last row moves into its place."""
        row = self._index.pop(host_id)
        last = self._n - 1
        if row != last:
            moved = self._ids[last]
            for column in self._cols.values():
                column[row] = column[last]
            self._ids[row], self._static[row], self._warm[row] = moved, self._static[last], self._warm[last]
            self._index[moved] = row
        for slug in self._warm[last]:  # the freed row must read as cold when it is reused
            self._cols[_warm_column(slug)][last] = False
        self._ids.pop()
        self._static.pop()
        self._warm.pop()
        self._n -= 1

    def _append(self, host_id: HostId) -> int:
        row = self._n
        if row == len(self._cols["status"]):
            for name, column in self._cols.items():
                grown = np.zeros(2 * len(column), dtype=column.dtype)
                grown[:row] = column
                self._cols[name] = grown
        self._n += 1
        self._ids.append(host_id)
        self._static.append(None)  # type: ignore[arg-type]  # filled by upsert at once
        self._warm.append(frozenset())
        self._index[host_id] = row
        return row

    def _set_live(self, row: int, beat: Heartbeat) -> None:
        c = self._cols
        static = self._static[row]
        if beat.free_ram_mb is not None:
            c["free_ram"][row] = min(beat.free_ram_mb, static.ram_mb)
            c["free_ram_f"][row] = max(c["free_ram"][row], 1)
        if beat.free_vram_mb is not None:
            c["free_vram"][row] = min(beat.free_vram_mb, static.vram_mb)
            c["free_vram_f"][row] = max(c["free_vram"][row], 1)
        if beat.active_jobs is not None:
            c["reported"][row] = beat.active_jobs
        if beat.warm is not None and beat.warm != self._warm[row]:
            for slug in self._warm[row] - beat.warm:
                self._cols[_warm_column(slug)][row] = False
            for slug in beat.warm - self._warm[row]:
                name = _warm_column(slug)
                if name not in c:
                    c[name] = np.zeros(len(c["status"]), dtype=np.bool_)
                c[name][row] = True
            self._warm[row] = beat.warm
        self._refresh_load(row)

    def _refresh_asks(self, row: int) -> None:
        """Keep the row's effective asks in every column built so far (the others are built from ``_static``)."""
        static = self._static[row]
        self._cols["gpu"][row] = static.gpu_model is not None
        self._cols["asks"][row] = self._ask_lists.code(tuple(sorted(static.asks.items())))
        for name, (slug, price, market) in self._ask_keys.items():
            self._cols[name][row] = market.effective(market.ask(static.asks, slug, price),
                                                     "gpu" if self._cols["gpu"][row] else "cpu")

    def _asks(self, request: JobRequest, market: Market) -> npt.NDArray[np.int64]:
        """Every host's effective ask for the request's workload in ``market``: a column kept per workload and
        market, so a decision reads it instead of pricing every host again."""
        key: _AskKey = (request.workload, request.catalog_price_micro, market)
        name = self._ask_names.get(key)
        column = None if name is None else self._cols[name]
        if column is None:
            name = self._ask_names[key] = _ask_column(key)
            # Priced once per distinct ask list and tier, then spread over the rows by their codes.
            slug, price = request.workload, request.catalog_price_micro
            base = [market.ask(dict(items), slug, price) for items in self._ask_lists.values]
            codes = self._col("asks")
            column = np.zeros(len(self._cols["status"]), dtype=np.int64)
            column[: self._n] = np.where(
                self._col("gpu"),
                np.take(np.array([market.effective(ask, "gpu") for ask in base], dtype=np.int64), codes),
                np.take(np.array([market.effective(ask, "cpu") for ask in base], dtype=np.int64), codes))
            self._cols[name] = column
            self._ask_keys[name] = key
        return column[: self._n]

    def _refresh_load(self, row: int) -> None:
        """Load is what the host last reported or what placement was told it handed it, whichever is more."""
        c = self._cols
        c["active"][row] = max(c["reported"][row], c["carried"][row] + c["inflight"][row])
        c["has_room"][row] = c["active"][row] < c["slots"][row]
        self._refresh_standing(row)

    def _refresh_standing(self, row: int) -> None:
        c = self._cols
        c["standing"][row] = standing(float(c["karma"][row]), float(c["speed"][row]), int(c["slots"][row]),
                                      int(c["active"][row]), self.weights)

    def _runtime_mask(self, runtimes: Iterable[str]) -> int:
        mask = 0
        for runtime in runtimes:
            bit = self._runtime_bits.get(runtime)
            if bit is None:
                if len(self._runtime_bits) >= _MAX_RUNTIMES:
                    raise ValueError(f"more than {_MAX_RUNTIMES} distinct runtimes in the fleet")
                bit = self._runtime_bits[runtime] = len(self._runtime_bits)
            mask |= 1 << bit
        return mask

    # --- placing ------------------------------------------------------------------------------------

    def _stage_mask(self, stage: str, request: JobRequest, now: float, market: Market) -> Mask | None:
        """One filter stage as a boolean column; None when it passes every host."""
        c = self._col
        if stage == "online":
            return self._online(now)
        if stage == "runtime":
            bit = self._runtime_bits.get(request.runtime)
            if bit is None:
                return np.zeros(self._n, dtype=np.bool_)
            supports: Mask = (c("runtimes") & (1 << bit)) != 0
            return supports
        if stage == "accepts":
            table = np.fromiter((accepts(p, request.workload) for p in self._accept_lists.values), np.bool_)
            return None if table.all() else np.take(table, c("accepts"))
        if stage == "region":
            if request.allowed_regions is None:
                return None
            table = np.fromiter((r in request.allowed_regions for r in self._regions.values), np.bool_)
            return np.take(table, c("region"))
        if stage == "karma":
            return None if request.min_karma <= 0 else c("karma") >= request.min_karma
        if stage == "cores":
            return None if request.required_cores <= 0 else c("cores") >= request.required_cores
        if stage == "ram":
            return None if request.required_ram_mb <= 0 else c("free_ram") >= request.required_ram_mb
        if stage == "vram":
            return None if request.required_vram_mb <= 0 else c("free_vram") >= request.required_vram_mb
        if stage == "price":
            return None if request.bid_micro is None else self._asks(request, market) <= request.bid_micro
        if stage == "slots":
            return c("has_room")
        raise ValueError(f"unknown filter stage {stage!r}")

    def _online(self, now: float) -> Mask:
        online: Mask = ((self._col("status") == _ONLINE) & ~self._col("held")
                        & (self._col("heartbeat_at") >= fresh_since(now, self.stale_after_s)))
        return online

    def _eligible(self, request: JobRequest, now: float, market: Market) -> Mask:
        mask = np.ones(self._n, dtype=np.bool_)
        for stage in STAGES:
            stage_mask = self._stage_mask(stage, request, now, market)
            if stage_mask is not None:
                np.logical_and(mask, stage_mask, out=mask)
        return mask

    def _scratch(self, name: str) -> npt.NDArray[np.float64]:
        """A reusable float buffer of the fleet's length (the actor runs one call at a time)."""
        buffer = self._buffers.get(name)
        if buffer is None or len(buffer) < self._n:
            size = -(-len(self._cols["status"]) // _BLOCK) * _BLOCK
            buffer = self._buffers[name] = np.empty(size, dtype=np.float64)
        return buffer[: self._n]

    def _peak_into(self, out: npt.NDArray[np.float64], required: int, free: npt.NDArray[np.float64]) -> None:
        """``scoring.peak(required / max(free, 1))`` per row, in place."""
        np.divide(required, free, out=out)
        out -= 0.5
        np.abs(out, out=out)
        out *= 2.0
        np.subtract(1.0, out, out=out)

    def _scores(self, request: JobRequest) -> npt.NDArray[np.float64]:
        """``scoring.score`` for every row, with the same operations in the same order.

        Terms that are 0.0 for every host (fit with nothing required, warm with no warm host) are skipped:
        adding 0.0 changes no sum, so the bits stay the reference's.
        """
        w = self.weights
        total = self._scratch("total")
        regions = np.fromiter((proximity(request.caller_region, r) for r in self._regions.values), np.float64)
        np.take(w.proximity * regions, self._col("region"), out=total)
        total += self._col("standing")
        if w.fit != 0 and (request.required_ram_mb > 0 or request.required_vram_mb > 0):
            fit = self._scratch("fit")
            self._peak_into(fit, request.required_ram_mb, self._col("free_ram_f"))
            if request.required_vram_mb > 0:
                vram = self._scratch("vram")
                self._peak_into(vram, request.required_vram_mb, self._col("free_vram_f"))
                fit += vram
                fit *= 0.5
            fit *= w.fit
            total += fit
        warm = self._cols.get(_warm_column(request.workload))
        if warm is not None and w.warm != 0:
            total += warm[: self._n] * w.warm  # cold rows add 0.0: no change
        return total

    def _candidates(self, scores: npt.NDArray[np.float64], mask: Mask, k: int) -> npt.NDArray[np.intp]:
        """Rows that surely hold the best ``k`` eligible ones (ties included), found without a full sort.

        ``scores`` is the "total" scratch buffer. Ineligible rows sink to about -1e300 (eligible rows subtract
        0.0, which changes nothing; a masked write would cost several times more). Split into ``_BLOCK``
        groups, the k-th best of the groups' maxima is a score that at least k eligible hosts reach, so every
        host in the top k (and any tied with the k-th) scores at least that much.
        """
        n = self._n
        groups = -(-n // _BLOCK)
        if groups <= k:
            return np.flatnonzero(mask)
        scores -= ~mask * _SUNK
        padded = self._buffers["total"][: groups * _BLOCK]
        padded[n:] = -_SUNK
        best = padded.reshape(_BLOCK, groups).max(axis=0)  # group j: rows j, j + groups, j + 2·groups…
        floor = np.partition(best, groups - k)[groups - k]
        if floor <= -_SUNK / 2:
            return np.flatnonzero(mask)
        return np.flatnonzero(scores >= floor)

    def rank(self, request: JobRequest, now: float, limit: int, market: Market = NO_MARKET) -> list[HostId]:
        """The best ``limit`` eligible hosts, best first; equal scores go to the smaller host id."""
        mask = self._eligible(request, now, market)
        if limit <= 0 or not mask.any():
            return []
        all_scores = self._scores(request)
        rows = self._candidates(all_scores, mask, limit)
        scores = all_scores[rows]
        ids = self._ids
        k = min(limit, rows.size)
        if rows.size == k:
            chosen = [(-s, ids[r]) for r, s in zip(rows.tolist(), scores.tolist(), strict=True)]
        else:
            cut = np.partition(scores, rows.size - k)[rows.size - k]  # the k-th best score
            above = scores > cut
            chosen = [(-s, ids[r]) for r, s in zip(rows[above].tolist(), scores[above].tolist(), strict=True)]
            tied = heapq.nsmallest(k - len(chosen), rows[scores == cut].tolist(), key=ids.__getitem__)
            chosen += [(-float(cut), ids[r]) for r in tied]
        return [host_id for _, host_id in sorted(chosen)]

    def funnel(self, request: JobRequest, now: float, market: Market = NO_MARKET) -> Funnel:
        mask = np.ones(self._n, dtype=np.bool_)
        survivors = []
        lowest = None
        for stage in STAGES:
            if stage == "price" and request.bid_micro is not None and mask.any():
                lowest = int(self._asks(request, market)[mask].min())
            stage_mask = self._stage_mask(stage, request, now, market)
            if stage_mask is not None:
                mask &= stage_mask
            survivors.append(int(np.count_nonzero(mask)))
        return Funnel(total=self._n, survivors=tuple(survivors), lowest_ask_micro=lowest)

    def explain(self, request: JobRequest, now: float, market: Market = NO_MARKET) -> str:
        """Why ``rank`` came back empty, in words for the API's 503."""
        return reason(self.funnel(request, now, market), request)

    def free_slots(self, now: float) -> int:
        """Free slots of the online hosts (what the surge compares the queue with)."""
        online = self._online(now)
        free = self._col("slots")[online].astype(np.int64) - self._col("active")[online]
        return int(np.clip(free, 0, None).sum())

    def offers(self, request: JobRequest, now: float, market: Market, runtime: bool = True) -> npt.NDArray[np.int64]:
        """The effective asks of the online hosts that could run ``request``'s workload (its runtime unless
        ``runtime`` is False, its accept lists; paused, draining and suspended hosts are not online): what the
        market rate is the median of."""
        mask = np.ones(self._n, dtype=np.bool_)
        for stage in ("online", "runtime", "accepts") if runtime else ("online", "accepts"):
            stage_mask = self._stage_mask(stage, request, now, market)
            if stage_mask is not None:
                np.logical_and(mask, stage_mask, out=mask)
        return self._asks(request, market)[mask]

    def ask(self, host_id: HostId, request: JobRequest, market: Market) -> int:
        """One host's effective ask for ``request`` now (the clearing price when it runs the job)."""
        return host_ask(self._static[self._row(host_id)], request, market)
