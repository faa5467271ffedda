"""PlacementActor: the one named actor on the head that holds the fleet and answers placement requests.

A thin shell over ``Fleet``: it stamps heartbeats with the coordinator's clock (hosts' clocks are not
trusted), turns an empty ranking into ``NoCapacity`` with the reason, and hides stale hosts as offline.
Ray lets any joined node call it, so it believes only what it can check: hosts' signed reports (``_check``), the
ledger's word on suspensions, revocations, karma and asks (a caller may ask placement to read it again, never say
what it is), a host's own heartbeat against a report that it was lost (placement/suspects.py) or against the jobs
it was said to be handed (``Fleet.heartbeat``). The class imports no Ray; ``PlacementClient.start`` wraps it with
``ray.remote``, and unit tests use it as is.

Ray runs it with ``max_concurrency=1``: calls execute one at a time in the order each caller sent them, so a
fire-and-forget ``job_assigned`` is always counted before its ``job_released``, and the fleet needs no lock. Its
calls to the ledger's book run on a thread of their own (placement/book.py), so a ranking never waits on the
ledger; their answers are applied on the actor's thread, at its next call.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable, Mapping
from dataclasses import replace
from typing import Any

from archipelag import identity
from archipelag.catalog import Manifest, load_catalog
from archipelag.errors import HostRefused, InvalidTransition, NoCapacity, NotFound
from archipelag.identity import Proof
from archipelag.ids import HostId, WorkloadSlug
from archipelag.ledger.karma_rules import KarmaRules, KarmaState, Standing
from archipelag.ledger.records import HostIdentity
from archipelag.lifecycle import HostStatus, host_can_move
from archipelag.market import pricing
from archipelag.market.pricing import Market
from archipelag.placement.book import Answer, Book, LedgerCalls, Word
from archipelag.placement.fleet import Fleet, Heartbeat
from archipelag.placement.measured import Measurement, Measurements, Rules, claims_of
from archipelag.placement.prober import Prober
from archipelag.placement.scoring import HostSnapshot, JobRequest, Weights, blocking_stage, cooled, reason
from archipelag.placement.suspects import Suspects, Witness
from archipelag.settings import Settings

log = logging.getLogger(__name__)
NEUTRAL_KARMA = KarmaRules().neutral_score  # a new host's score until the ledger's first word on it

# A host's enrolled identity by its id (None: never enrolled), from the ledger; a dict's ``get`` in unit tests.
Identities = Callable[[HostId], HostIdentity | None]


class PlacementActor:
    def __init__(self, settings: Settings, clock: Callable[[], float] = time.time,
                 prober: Prober | None = None, *, identities: Identities | None = None,
                 draw: Callable[[], float] | None = None,
                 catalog: Mapping[WorkloadSlug, Manifest] | None = None, witness: Witness | None = None,
                 book: Book | None = None, book_thread: bool = False) -> None:
        self._clock = clock
        # Who may report: with ``identities`` (always in a network) only enrolled, unrevoked hosts, by signed
        # reports; None is the in-process stand-in for tests that script hosts without keys.
        self._identities = identities
        self._keys: dict[HostId, HostIdentity] = {}
        self._last_report_at: dict[HostId, float] = {}  # a report no later than this is a replay
        self._max_skew_s = settings.report_max_skew_s
        self._prober = prober  # runs the join benchmark on a registering host's node (None: hosts stay unmeasured)
        self._hardware = Measurements(Rules.from_settings(settings.benchmark))
        self._limit = settings.placement.max_candidates
        stale_after_s = settings.heartbeat_interval_s * settings.missed_heartbeats_offline
        self._fleet = Fleet(Weights.from_settings(settings.placement), stale_after_s=stale_after_s)
        # Reports that a host was lost, checked with the host (None: believed, the in-process stand-in's way).
        self._witness = witness
        self._suspects = Suspects(settings.placement.loss_doubt_s, settings.placement.loss_answer_within_s)
        self._suspended: dict[HostId, str] = {}  # by an operator, with why; kept across the host's rejoins
        # Karma and asks are the ledger's word, read when asked to (``refresh_karma``, ``refresh_asks``) and at
        # registration; None: hosts keep the neutral score, and the asks they register with (the stand-in's way).
        # ``book_thread``: calls to the book run on a thread of their own (the Ray actor's: the ledger may hang).
        self._ledger = None if book is None else LedgerCalls(book, settings.placement.ledger_read_timeout_s,
                                                             thread=book_thread)
        # Hosts this placement has not read the ledger's karma or asks of since they joined: held out of placement
        # (``Fleet.hold``), so a host the ledger suspended, or whose karma it could not read, is never ranked on
        # the neutral score in the meantime.
        self._unread: dict[HostId, set[Word]] = {}
        # By karma, apart from the operator's: neither lifts the other. ``_shares`` holds cooled-down hosts'
        # placement shares (scoring.cooled); absent means 1.
        self._karma_suspended: dict[HostId, str] = {}
        self._shares: dict[HostId, float] = {}
        self._draw = draw or random.random  # a seeded one in tests
        # The exchange: the catalog bounds hosts' asks and says which runtime a workload needs; the queue's
        # length (the dispatcher's word, ``set_queued``) against the free slots makes the surge.
        self._market_settings = settings.market
        self._workloads_dir = settings.workloads_dir
        self._catalog = catalog
        self._queued = 0
        self._tiers = Market.of(settings.market)  # the tiers' multipliers alone

    def _known(self, host_id: HostId) -> None:
        if host_id not in self._fleet:
            raise NotFound(f"placement knows no host {host_id!r}", host_id=host_id)

    def register(self, snapshot: HostSnapshot, proof: Proof | None = None) -> None:
        """Add or refresh a host; its heartbeat clock starts now. A suspended host stays suspended, and one the
        ledger says an operator suspended joins suspended. HostRefused unless the report is signed by the host's
        enrolled key (see ``_check``)."""
        self._check("register", snapshot.host_id, snapshot, proof)
        host_id = snapshot.host_id
        # Karma is the ledger's word, never the host's: a signature proves who reports, not that it is true. A
        # known host keeps what the ledger last gave it; a new one is held out of placement until the ledger's
        # karma and asks for it are read below (however long the ledger takes to answer).
        known = self._fleet.get(host_id) if host_id in self._fleet else None
        asks = self._registered_asks(snapshot)
        if known is None and self._ledger is not None:
            self._unread[host_id] = set(Word)
        # Asks too, once the ledger holds them; without a ledger, those it names, else those it had.
        kept = dict(known.asks) if known is not None else {}
        snapshot = replace(snapshot, karma=known.karma if known is not None else NEUTRAL_KARMA,
                           asks=asks if asks is not None and self._ledger is None else kept)
        if self._out(host_id):
            snapshot = replace(snapshot, status=HostStatus.SUSPENDED)
        snapshot, ticket = self._hardware.registered(snapshot)  # measured hardware, not the host's claims
        self._fleet.upsert(replace(snapshot, last_heartbeat_at=self._clock()), held=host_id in self._unread)
        self._suspects.forget(host_id)
        if self._ledger is not None:
            if asks is not None:  # stored first, as an owner's are; what the ledger stored is applied
                self._ledger.store_asks(host_id, asks)
            else:  # its owner's, set while it was away or before placement restarted
                self._ledger.asks([host_id])
            self._ledger.karma([host_id])  # a host karma suspended stays out when it rejoins a new placement
            self._settle(wait=True)
        log.info("host %s registered in %s", host_id, snapshot.region)
        if ticket is not None and self._prober is not None:
            self._prober.probe(snapshot.host_id, snapshot.node_id, claims_of(snapshot), ticket)

    def _registered_asks(self, snapshot: HostSnapshot) -> dict[str, int] | None:
        """The asks a host's signed registration names (`host join --price`), None when it names none (it asks
        what the ledger holds; without a ledger, what it had). HostRefused for asks out of bounds."""
        if not snapshot.asks:
            return None
        reasons = self._ask_reasons(snapshot.asks)
        if reasons:
            raise HostRefused(f"host {snapshot.host_id} asks prices the network does not take: "
                              + "; ".join(reasons), host_id=snapshot.host_id)
        return dict(snapshot.asks)

    def measured(self, host_id: HostId, node_id: str, ticket: str, measurement: Measurement) -> None:
        """The join benchmark's answer from the prober (its ticket proves it): cap what it contradicts, set the
        speed term. An answer without the awaited ticket is ignored."""
        verdict = self._hardware.measured(host_id, node_id, ticket, measurement)
        if verdict is not None and host_id in self._fleet:
            self._fleet.set_hardware(host_id, verdict)
            if verdict.flags:
                log.warning("host %s: claims capped by its join benchmark: %s", host_id, ", ".join(verdict.flags))

    def measure_failed(self, host_id: HostId, node_id: str, ticket: str, why: str) -> None:
        verdict = self._hardware.failed(host_id, node_id, ticket, why)
        if verdict is not None and host_id in self._fleet:
            self._fleet.set_hardware(host_id, verdict)

    def heartbeat(self, host_id: HostId, metrics: dict[str, Any], proof: Proof | None = None) -> bool:
        """Record a heartbeat; False for a host placement does not know (it should register again).
        HostRefused for a report its enrolled key did not sign, a stale or replayed one, a revoked host."""
        if host_id not in self._fleet:
            log.warning("heartbeat from unregistered host %s", host_id)
            return False
        self._check("heartbeat", host_id, metrics, proof)
        now = self._clock()
        self._fleet.heartbeat(host_id, now, Heartbeat.from_metrics(metrics))  # an offline host is back online
        if self._suspects.heard(host_id, now):
            log.warning("host %s answered: the report that it was lost was false", host_id)
        return True

    def set_status(self, host_id: HostId, status: HostStatus, proof: Proof | None = None) -> None:
        """A host's own change of status (paused, draining, left), signed by its key like its other reports: no
        other node can pause or drain a host here. (Losing a host is ``mark_offline``; an operator's word is
        ``suspend``.)"""
        self._settle()
        self._known(host_id)
        self._check("status", host_id, identity.status_report(status), proof)
        if self._out(host_id) and status != HostStatus.OFFLINE:
            why = self._suspended.get(host_id) or self._karma_suspended[host_id]
            raise InvalidTransition(f"host {host_id} is suspended ({why}); it takes no jobs",
                                    host_id=host_id, current=str(HostStatus.SUSPENDED), target=str(status))
        current = self._fleet.status(host_id)
        if current == status:
            return
        if not host_can_move(current, status):
            raise InvalidTransition(f"host {host_id} cannot go from {current} to {status}",
                                    host_id=host_id, current=str(current), target=str(status))
        self._fleet.set_status(host_id, status)

    def mark_offline(self, host_id: HostId, reason: str) -> None:
        """Someone says a host was lost (the dispatcher, when its agent died mid-job): out of placement at once,
        without waiting for missed heartbeats, and asked to report now. Any joined node can say it, so with a
        witness it is a suspicion (placement/suspects.py): the host's signed heartbeat puts it back, and one that
        proved such a report false lately stays in until its check goes unanswered."""
        if not self._in_placement(host_id):
            return
        if self._witness is None:
            self._take_out(host_id, reason)
            return
        suspicion = self._suspects.suspect(host_id, self._clock())
        if suspicion.believed:
            self._take_out(host_id, reason)
        if suspicion.ticket is not None:  # one check, and one line in the log, however often it is said
            if not suspicion.believed:
                log.warning("host %s reported lost again (%s), soon after it proved such a report false: it stays "
                            "in while it is asked", host_id, reason)
            self._witness.ask(host_id, suspicion.ticket)

    def checked(self, host_id: HostId, ticket: str) -> None:
        """The witness's check of a host reported lost is over (its ticket proves it): unless the host reported
        meanwhile, it is lost after all. A call without the awaited ticket changes nothing."""
        if self._suspects.unanswered(host_id, ticket) and self._in_placement(host_id):
            self._take_out(host_id, "it did not report when asked")

    def _in_placement(self, host_id: HostId) -> bool:
        return host_id in self._fleet and self._fleet.status(host_id) not in (HostStatus.OFFLINE,
                                                                              HostStatus.SUSPENDED)

    def _take_out(self, host_id: HostId, reason: str) -> None:
        log.warning("host %s marked offline: %s", host_id, reason)
        self._fleet.set_status(host_id, HostStatus.OFFLINE)

    def suspend(self, host_id: HostId, reason: str) -> None:
        """An operator takes a host out of placement (it may be unknown now: it stays out when it joins).
        Its running jobs finish; it gets no new ones until ``reinstate``. A host already suspended keeps its
        first reason. The ledger holds it first (``Ledger.suspend_host``): this is placement hearing of it, and
        checking it there, with the ledger's reason (HostRefused when the ledger holds no such suspension: any
        joined node can call this)."""
        if self._identities is not None:
            held = self._ledger_word(host_id)
            if held is None or held.suspended_reason is None:
                raise HostRefused(f"host {host_id}: the ledger holds no suspension of it; placement suspends a "
                                  "host on the ledger's word only")
            reason = held.suspended_reason
        self._suspended.setdefault(host_id, reason)
        if host_id in self._fleet:
            self._fleet.set_status(host_id, HostStatus.SUSPENDED)
        log.warning("host %s suspended: %s", host_id, reason)

    def reinstate(self, host_id: HostId) -> None:
        """Lift an operator's suspension: the host takes jobs again (while it heartbeats) unless its karma
        keeps it suspended. HostRefused while the ledger still holds the suspension (``Ledger.reinstate_host``
        lifts it first)."""
        enrolled = self._ledger_word(host_id)
        if enrolled is not None and enrolled.suspended_reason is not None:
            raise HostRefused(f"host {host_id}: the ledger still holds its suspension ({enrolled.suspended_reason})"
                              "; an admin lifts it there first")
        self._suspended.pop(host_id, None)
        self._back_online(host_id)

    def suspensions(self) -> dict[HostId, str]:
        """The operator's suspensions placement applies: the ledger's (``Ledger.suspended_hosts``), for the hosts
        it has heard of (karma's are ``Ledger.karma_state``)."""
        return dict(self._suspended)

    def refresh_karma(self, host_ids: list[HostId] | None = None) -> None:
        """Act on the ledger's karma for these hosts (None: every host placement knows), read in one call
        (``Ledger.karma_states``): the jobs service asks each fleet round, and after a fault of a host's own. Any
        joined node can ask; none can say what a host's karma is. Hosts placement does not know are skipped."""
        if self._ledger is None:
            return
        known = [host_id for host_id in (self._fleet.ids() if host_ids is None else host_ids)
                 if host_id in self._fleet]
        if known:
            self._ledger.karma(known)
            self._settle(wait=True)

    def _settle(self, wait: bool = False) -> None:
        """Apply the ledger's answers come since the last call (``wait``: after waiting a moment for those just
        asked for; placement/book.py), in the order they were asked for. A host read for the first time since
        it joined takes jobs once both its karma and its asks are read."""
        if self._ledger is None:
            return
        for answer in self._ledger.answers(wait):
            for host_id in answer.hosts:
                if host_id in self._fleet:
                    self._apply(host_id, answer)

    def _apply(self, host_id: HostId, answer: Answer) -> None:
        if answer.word is Word.KARMA:
            if host_id not in answer.karma:
                return
            self._apply_karma(host_id, answer.karma[host_id])
        else:
            held, applied = dict(answer.asks.get(host_id, {})), self._fleet.asks(host_id)
            if held != applied:
                self._fleet.set_asks(host_id, self._ledger_asks(host_id, held, applied))
        unread = self._unread.get(host_id)
        if unread is not None:
            unread.discard(answer.word)
            if not unread:
                del self._unread[host_id]
                self._fleet.hold(host_id, False)

    def _apply_karma(self, host_id: HostId, state: KarmaState) -> None:
        """A host's karma: its score, its share while cooled down (``scoring.cooled``), and the reason it is
        suspended. A host whose karma recovers re-enters cooled down (its probation share), unless an operator's
        suspension still holds it."""
        self._fleet.set_karma(host_id, state.score)
        if state.share < 1.0:
            self._shares[host_id] = state.share
        else:
            self._shares.pop(host_id, None)
        suspended = state.reason if state.standing is Standing.SUSPENDED else None
        if suspended is not None:
            if host_id not in self._karma_suspended:
                log.warning("host %s suspended: %s", host_id, suspended)
            self._karma_suspended[host_id] = suspended
            self._fleet.set_status(host_id, HostStatus.SUSPENDED)
        elif self._karma_suspended.pop(host_id, None) is not None:
            log.info("host %s reinstated: its karma recovered", host_id)
            self._back_online(host_id)

    def _out(self, host_id: HostId) -> bool:
        """Suspended by the operator or by karma."""
        return host_id in self._suspended or host_id in self._karma_suspended

    def _back_online(self, host_id: HostId) -> None:
        if not self._out(host_id) and host_id in self._fleet and self._fleet.status(host_id) == HostStatus.SUSPENDED:
            self._fleet.set_status(host_id, HostStatus.ONLINE)

    def rank(self, request: JobRequest) -> list[HostId]:
        """Hosts for ``request``, best first; NoCapacity with the reason when none can take it."""
        self._settle()
        now = self._clock()
        market = self._tiers  # the filter weighs asks without the surge: see ``quote``
        ranked = cooled(self._fleet.rank(request, now, self._limit, market), self._shares, self._draw)
        if not ranked:
            funnel = self._fleet.funnel(request, now, market)
            # `full`: hosts could run it but every slot is taken; the job can wait in the queue.
            raise NoCapacity(reason(funnel, request), workload=request.workload,
                             full=funnel.total > 0 and blocking_stage(funnel) == "slots")
        return ranked

    # --- the exchange ---------------------------------------------------------------------------------

    def refresh_asks(self, host_id: HostId | None = None) -> None:
        """Apply what the ledger holds of a host's asks now (None: every host's, in one read; the jobs service
        asks each fleet round). An owner's asks reach placement only after the ledger holds them
        (``Exchange.set_asks`` stores them, then asks for this). Any joined node can ask; none can say what a
        host asks. A host placement does not know reads them when it registers."""
        if self._ledger is None or (host_id is not None and host_id not in self._fleet):
            return
        self._ledger.asks([host_id] if host_id is not None else self._fleet.ids(), every=host_id is None)
        self._settle(wait=True)

    def _ledger_asks(self, host_id: HostId, held: dict[str, int], kept: dict[str, int]) -> dict[str, int]:
        """The asks the ledger holds for a host, or ``kept`` when they are out of the network's bounds (the
        exchange checks before it stores, so only a write around it, or bounds changed since, leads here)."""
        reasons = self._ask_reasons(held)
        if reasons:
            log.warning("host %s: the asks the ledger holds are not applied: %s", host_id, "; ".join(reasons))
            return kept
        return held

    def set_queued(self, queued: int) -> None:
        """How many jobs wait in the dispatcher's queue now (what the surge weighs against free slots)."""
        self._queued = max(0, queued)

    def quote(self, host_id: HostId, request: JobRequest) -> int | None:
        """What ``host_id`` asks in effect for ``request`` now, surge included: the clearing price when it runs
        the job, up to the job's bid (None: placement does not know the host).

        The surge raises what a host earns and the market rate (so the bids the chain makes from it), but not
        the bar a job's bid must clear in ``rank``: filtering on surged asks refused new jobs of a full network
        that would otherwise wait their turn (503 instead of the queue), and left a freed slot idle beside queued
        jobs bidding the unsurged ask until they timed out, as the queue they formed kept the surge on."""
        self._settle()
        if host_id not in self._fleet:
            return None
        return self._fleet.ask(host_id, request, self._market(self._clock()))

    def market_rates(self, catalog_prices: dict[str, int]) -> dict[str, dict[str, Any]]:
        """Per workload: the market rate (the median effective ask of the online hosts that could run it, else
        the catalog price × surge), how many hosts, the lowest and highest effective ask, and the surge."""
        self._settle()
        now = self._clock()
        market = self._market(now)
        catalog = self._manifests()
        rates: dict[str, dict[str, Any]] = {}
        for slug, price in catalog_prices.items():
            manifest = catalog.get(WorkloadSlug(slug))
            request = JobRequest(WorkloadSlug(slug), manifest.runtime if manifest else "", catalog_price_micro=price)
            offers = self._fleet.offers(request, now, market, runtime=manifest is not None).tolist()
            rates[slug] = {"rate_micro": pricing.market_rate(offers, price, market.surge), "hosts": len(offers),
                           "lowest_micro": min(offers, default=None), "highest_micro": max(offers, default=None),
                           "surge": market.surge}
        return rates

    def _market(self, now: float) -> Market:
        """The multipliers now: the tiers' (settings) and the surge (the queue against the free slots)."""
        surge = 1.0
        if self._queued:  # no queue, no surge: the free slots need not be counted
            surge = pricing.surge(self._queued, self._fleet.free_slots(now), self._market_settings)
        return Market.of(self._market_settings, surge)

    def _manifests(self) -> Mapping[WorkloadSlug, Manifest]:
        if self._catalog is None:
            self._catalog = load_catalog(self._workloads_dir)
        return self._catalog

    def _ask_reasons(self, asks: Mapping[str, int]) -> list[str]:
        prices = {str(slug): manifest.price_micro for slug, manifest in self._manifests().items()}
        return pricing.check_asks(asks, prices, self._market_settings)

    def job_assigned(self, host_id: HostId) -> None:
        """The dispatcher handed a host a job: counted until the host's own heartbeats bound it (any joined node
        can say this, so what the host does not count is gone by its second heartbeat: ``Fleet.heartbeat``)."""
        if host_id in self._fleet:
            self._fleet.job_assigned(host_id)

    def job_released(self, host_id: HostId) -> None:
        if host_id in self._fleet:
            self._fleet.job_released(host_id)

    def hosts(self) -> list[HostSnapshot]:
        """Every known host; one whose heartbeats stopped reads as offline, one placement has not read the
        ledger's word on since it joined as joining."""
        self._settle()
        return self._fleet.snapshots(self._clock())

    def get(self, host_id: HostId) -> HostSnapshot:
        self._settle()
        self._known(host_id)
        return self._fleet.get(host_id, self._clock())

    def forget(self, host_id: HostId) -> None:
        """A host was revoked: out of placement at once, and its key forgotten, so its next report is checked
        against the ledger again (and refused there). HostRefused when the ledger says it is enrolled and not
        revoked (any joined node can call this)."""
        enrolled = self._ledger_word(host_id)
        if enrolled is not None and not enrolled.revoked:
            raise HostRefused(f"host {host_id} is not revoked in the ledger; placement forgets a host on the "
                              "ledger's word only")
        self._keys.pop(host_id, None)
        self._last_report_at.pop(host_id, None)
        self._suspects.forget(host_id)
        self._unread.pop(host_id, None)
        if host_id in self._fleet:
            self._fleet.remove(host_id)
        log.warning("host %s revoked: removed from placement", host_id)

    def _check(self, purpose: str, host_id: HostId, report: Any, proof: Proof | None) -> None:
        """Believe a report only when the enrolled key of ``host_id`` signed this very report, lately, once."""
        if self._identities is None:
            return
        if proof is None or proof.host_id != host_id:
            raise HostRefused(f"host {host_id}: placement takes only reports signed by the host's own key")
        enrolled = self._keys.get(host_id) or self._lookup(host_id)
        identity.check(proof, purpose, enrolled.public_key, report, self._clock(), self._max_skew_s,
                       self._last_report_at.get(host_id))
        self._keys[host_id] = enrolled
        self._last_report_at[host_id] = proof.at

    def _ledger_word(self, host_id: HostId) -> HostIdentity | None:
        """What the ledger holds of a host now (None without ``identities``, or for a host it does not know): the
        word placement checks an operator's or an owner's call against."""
        return self._identities(host_id) if self._identities is not None else None

    def _lookup(self, host_id: HostId) -> HostIdentity:
        assert self._identities is not None
        enrolled = self._identities(host_id)
        if enrolled is None:
            raise HostRefused(f"host {host_id} is not enrolled: its owner approves its pairing code first "
                              "(`archipelag hosts approve CODE`)")
        if enrolled.revoked:
            if host_id in self._fleet:
                self._fleet.remove(host_id)
            raise HostRefused(f"host {host_id} was revoked by its owner or an admin; it takes no more jobs")
        # The operator's suspension is the ledger's: after a restart of placement this read is its first word on
        # it. Later ``suspend`` and ``reinstate`` follow the ledger's writes (the admin API makes both), and only
        # ``reinstate`` lifts one: a read never does.
        if enrolled.suspended_reason is not None:
            self._suspended.setdefault(host_id, enrolled.suspended_reason)
        return enrolled

    def ping(self) -> int:
        """The number of known hosts (a cheap liveness call)."""
        return len(self._fleet)
