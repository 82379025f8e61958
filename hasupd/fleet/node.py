"""One host's part in the fleet: the lease keeper, elections, self-fencing and hand-overs.

``FleetNode.run`` is one bounded-step loop on the event loop. Every etcd call goes through ``call``
(a worker thread with a timeout in production), and every wait is cut at the fencing deadline, so a
stalled keep-alive never stalls supervision and never delays fencing by more than the call timeout.

Safety argument: a service is started only by the host whose create-if-absent transaction made the
ownership key (bound to that host's lease); the key disappears only when its owner deletes it after
the service stopped, or when the lease expires. An owner that cannot get a keep-alive acknowledged
stops its placed services at ``last acknowledged send + fence_delay`` (fencing; see
``hasupd/config/fleet_timing.py``), timed so that the stop, escalating to SIGKILL, ends a margin before
etcd can expire the lease (at the earliest ``TTL`` after that send): the old owner is down before
anyone can win the key.

Liveness: a failed or slow keep-alive is retried at once on the next endpoint, again and again until
one is acknowledged or the fencing deadline passes, so an etcd leader election (no member renews
leases until a new leader is elected) costs no fencing when the TTL is sized for it.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

from hasupd import events as ev
from hasupd.config.fleet_timing import call_timeout, fence_delay, keepalive_interval
from hasupd.config.model import FleetConfig, Placement
from hasupd.fleet import keys
from hasupd.fleet.etcd import Etcd, EtcdError, EtcdRefused, Snapshot

log = logging.getLogger(__name__)
T = TypeVar("T")

MAX_STEP_SEC = 1.0  # bound on one sleep of the loop (the loop also wakes on request)
CALL_GRACE_SEC = 0.25  # the client gives up (naming each endpoint) this much before the loop stops waiting
RETRY_PAUSE_SEC = 0.05  # between two keep-alive attempts (a refused connection fails at once)
MAX_KEEPALIVE_ATTEMPTS = 400  # bound on the attempts of one keep-alive round (the deadline ends it first)
REEXEC, CRASH_RESTART = "re-exec", "crash restart"  # how a membership was carried on (``resume``)
GIVE_UP_AVOID_TTLS = 10  # a host that handed over a crash-looping service avoids it for this many TTLs


class Runner(Protocol):
    """What the node needs from the Manager (placed services by name)."""

    def start_placed(self, name: str, environment: dict[str, str]) -> None: ...

    def placed_environment(self, name: str, environment: dict[str, str]) -> None: ...

    def stop_placed(self, name: str, reason: str) -> None: ...

    def placed_inactive(self, name: str) -> bool: ...

    def placed_given_up(self, name: str) -> bool: ...


Call = Callable[[Callable[[], T], float], Awaitable[T]]


@dataclass
class Owned:
    service: str
    key: str
    token: int
    since: float  # wall clock
    releasing: str | None = None  # a hand-over under way: the target ("" for any host)
    environment: dict[str, str] = field(default_factory=dict)  # what the service was started with


@dataclass
class NodeView:
    """What ``fleet status`` and the metrics read (local view, updated every round)."""

    joined: bool = False
    lease: int = 0
    last_ack_wall: float = 0.0
    elections: int = 0
    refused: str = ""
    snapshot: Snapshot | None = None
    owned: dict[str, Owned] = field(default_factory=dict)  # by key


def _decode(value: str) -> dict[str, Any]:
    try:
        data = json.loads(value)
    except ValueError:
        return {}
    return data if isinstance(data, dict) else {}


class FleetNode:
    def __init__(
        self,
        config: FleetConfig,
        placements: dict[str, Placement],
        start_timeouts: dict[str, float],
        *,
        etcd: Etcd,
        call: Call[Any],
        runner: Runner,
        publish: Callable[[ev.Event], None],
        now: Callable[[], float],
        sleep: Callable[[float], Awaitable[None]],
        wall: Callable[[], float] = time.time,
        stop_timeouts: dict[str, float] | None = None,
    ) -> None:
        self.config = config
        self.placements = dict(placements)
        self._start_timeouts = start_timeouts
        self._etcd = etcd
        self._call = call
        self._runner = runner
        self._publish = publish
        self._now = now
        self._sleep = sleep
        self._wall = wall
        self.ttl = config.lease_ttl_sec
        self._call_timeout = call_timeout(self.ttl)
        self._interval = keepalive_interval(self.ttl)
        self._stop_timeouts = dict(stop_timeouts or {})
        self._endpoints = config.etcd.endpoints
        self.view = NodeView()
        self._last_ack = 0.0  # monotonic send time of the last acknowledged keep-alive
        self._unreachable = False
        self._unreachable_since = 0.0  # when the first failed call of this outage was sent
        self._call_sent = 0.0
        self._last_error = ""  # the last failed call's error (each endpoint tried), for fleet.fenced
        self._refused_logged = False
        self._unowned_since: dict[str, float] = {}
        self._unowned_alerted: set[str] = set()
        self._wake = asyncio.Event()
        self._stale_leases: list[int] = []  # leases given up (fenced, refused) to revoke when etcd answers
        self._stale_keys: list[tuple[str, int]] = []  # keys of services no longer placed, to delete
        self._failing_since: dict[str, float] = {}  # placed services seen crash-looped here, since when
        self._gave_up: dict[str, tuple[float, str]] = {}  # service -> (avoid until, our failed/ key)
        self._resumed = ""  # carried on from an earlier image ("re-exec", "crash restart"): lease unchecked

    # ------------------------------------------------------------------ helpers

    @property
    def host(self) -> str:
        return self.config.host

    @property
    def cluster(self) -> str:
        return self.config.cluster

    def fence_delay(self) -> float:
        """Return the time from the send of the last acknowledged keep-alive to fencing."""
        return fence_delay(self.ttl, max(self._stop_timeouts.values(), default=0.0))

    def fence_deadline(self) -> float:
        """Return the monotonic time at which placed services must be stopped without a newer ack."""
        return self._last_ack + self.fence_delay()

    async def _etcd_call(self, fn: Callable[[], T]) -> T:
        """Run ``fn`` off the loop; stop waiting a little after the client's own call timeout (it gives
        up first and says why per endpoint) and at the fencing deadline."""
        timeout = self._call_timeout + CALL_GRACE_SEC
        self._call_sent = self._now()
        if self.view.owned:
            timeout = max(0.0, min(timeout, self.fence_deadline() - self._now()))
        result: T = await self._call(fn, timeout)
        return result

    def owns(self, service: str) -> bool:
        """Return True while this host owns (a slot of) ``service`` and is not handing it over."""
        return any(o.service == service and o.releasing is None for o in self.view.owned.values())

    def lease_age(self) -> float | None:
        """Return the seconds since the last acknowledged keep-alive was sent (None: not joined)."""
        return self._now() - self._last_ack if self.view.joined else None

    def start_timeout(self, service: str) -> float:
        """Return the start timeout of placed ``service`` (how long a new owner may take to start it)."""
        return self._start_timeouts.get(service, 90.0)

    def wake(self) -> None:
        """Run the next round now (a move or drain was requested)."""
        self._wake.set()

    # ------------------------------------------------------------------ the loop

    async def run(self, rounds: int | None = None) -> None:
        """Keep the lease, elect, fence; ``rounds`` bounds the loop (tests), None: until cancelled."""
        done = 0
        try:
            while rounds is None or done < rounds:
                done += 1
                await self.step()
                delay = self._interval
                if self.view.owned:
                    delay = min(delay, max(0.0, self.fence_deadline() - self._now()))
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), timeout=min(delay, MAX_STEP_SEC))
        finally:
            self.stop_all("hasupd is leaving the fleet")

    async def step(self) -> None:
        """One round: join or keep alive, then fence or elect."""
        if self._resumed:
            await self._check_resumed_lease()
        if not self.view.joined:
            await self._join()
        else:
            await self._keepalive()
        if self.view.owned and self._now() >= self.fence_deadline():
            self._fence()
        # No round (no election) on a lease whose last acknowledged keep-alive is past the fencing
        # deadline: a service won then would be fenced at once (seen: elected as etcd's quorum came
        # back, fenced 70 ms later, elected again on the new lease: two starts instead of one).
        if self.view.joined and self._now() < self.fence_deadline():
            await self._round()

    async def _join(self) -> None:
        await self._revoke_stale()
        lease = 0
        try:
            sent = self._now()
            lease = await self._etcd_call(lambda: self._etcd.grant(max(2, int(self.ttl))))
            value = json.dumps({"lease": lease, "joined": self._wall()})
            key = keys.host_key(self.cluster, self.host)
            created, _ = await self._etcd_call(lambda: self._etcd.create(key, value, lease))
        except EtcdRefused as exc:
            if lease:
                self._revoke_later(lease)
            self._refuse(f"etcd refused this host's credentials: {exc}"[:600])
            return
        except (EtcdError, TimeoutError) as exc:
            self._note_unreachable(exc)
            if lease:
                self._revoke_later(lease)
            return
        self._reachable()
        if not created:
            self._revoke_later(lease)
            self._refuse(f"host name {self.host!r} is held by another live lease (another hasupd uses it)")
            return
        self._refused_logged = False
        self.view.refused = ""
        self.view.joined, self.view.lease = True, lease
        self._last_ack, self.view.last_ack_wall = sent, self._wall()
        self._publish(
            ev.FleetJoined(host=self.host, cluster=self.cluster, lease=str(lease), ttl_sec=self.ttl)
        )

    # ------------------------------------------------------------------ carried on across hasupd images

    def hand_over(self) -> dict[str, Any] | None:
        """Return the membership for the next image of hasupd (JSON-able; None: not joined): the lease,
        the owned keys with their tokens and environments, and the send time (CLOCK_MONOTONIC, the
        loop's clock, the same in every process of the boot) of the last acknowledged keep-alive."""
        if not self.view.joined:
            return None
        return {
            "cluster": self.cluster,
            "host": self.host,
            "lease": self.view.lease,
            "last_ack": self._last_ack,
            "last_ack_wall": self.view.last_ack_wall,
            "owned": [dataclasses.asdict(o) for o in self.view.owned.values()],
            "gave_up": {s: [until, key] for s, (until, key) in self._gave_up.items()},
        }

    def resume(self, lease: int, owned: list[Owned], last_ack: float, last_ack_wall: float, how: str) -> None:
        """Carry on the membership an earlier image handed over: ``lease`` and ``owned`` (whose services
        still run here, with their tokens), fenced from ``last_ack`` (an acknowledged send: the real
        last one or an earlier one, so the deadline is never late). The first round checks the lease
        with LeaseTimeToLive before anything else; a lease gone stops every carried service."""
        self.view.joined, self.view.lease = True, lease
        self.view.owned = {o.key: o for o in owned}
        self._last_ack, self.view.last_ack_wall = last_ack, last_ack_wall
        self._resumed = how

    def resume_keys(self, gave_up: dict[str, tuple[float, str]], stale: list[tuple[str, int]]) -> None:
        """Carry on the crash-loop marks (``failed/`` keys bound to the carried lease, deleted when
        their time is up) and give back ``stale`` keys (key, token) of services no longer so placed."""
        self._gave_up.update(gave_up)
        self._stale_keys.extend(stale)

    async def _check_resumed_lease(self) -> None:
        """Ask etcd how long the carried lease has left. Gone: every carried service stops (its keys
        went with the lease, another host may own them). Alive: the fencing deadline is set from etcd's
        own count (an ack sent ``granted - left`` before the question, so never late). No answer: keep
        asking; the deadline from the carried ack decides (a stale one fences at once: if in doubt, stop).

        After a re-exec the call is cut at that deadline, like every call; after a crash it is not: the
        carried ack is only as recent as the last state record (a deadline possibly long past), and the
        services ran unfenced while no hasupd was there anyway."""
        lease, timeout = self.view.lease, self._call_timeout + CALL_GRACE_SEC
        self._call_sent = sent = self._now()
        if self._resumed == REEXEC:
            timeout = max(0.0, min(timeout, self.fence_deadline() - sent))
        try:
            left, granted = await self._call(lambda: self._etcd.time_to_live(lease), timeout)
        except (EtcdError, TimeoutError) as exc:
            self._note_unreachable(exc)
            if self._now() >= self.fence_deadline():
                self._resumed = ""
                self._fence()
            return
        self._reachable()
        how, self._resumed = self._resumed, ""
        if left < 0:
            self._lose_lease(f"the lease expired during the {how} of hasupd")
            return
        # etcd truncates the remaining TTL to whole seconds: the lease lives at least ``left`` more.
        ack = sent + left - max(granted, self.ttl)
        if ack > self._last_ack:
            self._last_ack, self.view.last_ack_wall = ack, self._wall() - (self._now() - ack)
        owned = list(self.view.owned.values())
        self._publish(
            ev.FleetResumed(
                host=self.host,
                cluster=self.cluster,
                lease=str(lease),
                how=how,
                slots=tuple(keys.slot_name(self.cluster, o.key) for o in owned),
                tokens=tuple(o.token for o in owned),
                services=tuple(o.service for o in owned),
                lease_left_sec=float(left),
            )
        )

    def _refuse(self, reason: str) -> None:
        """Record (once until a join succeeds) why this host cannot join: it keeps trying every round."""
        self.view.refused = reason
        if not self._refused_logged:
            self._refused_logged = True
            self._publish(ev.FleetJoinRefused(host=self.host, reason=reason))

    def _revoke_later(self, lease: int) -> None:
        """Remember ``lease`` to revoke before the next join (a leaked lease expires on its own anyway)."""
        if lease:
            self._stale_leases.append(lease)

    async def _revoke_stale(self) -> None:
        while self._stale_leases:
            lease = self._stale_leases[0]
            try:
                await self._etcd_call(lambda lease=lease: self._etcd.revoke(lease))  # type: ignore[misc]
            except (EtcdError, TimeoutError):
                return  # etcd is away; the lease expires by itself
            self._stale_leases.pop(0)

    async def _keepalive(self) -> None:
        """Refresh the lease; a failed or late attempt is retried at once (the client starts at the
        next endpoint) until one is acknowledged or the fencing deadline passes."""
        lease = self.view.lease
        for attempt in range(MAX_KEEPALIVE_ATTEMPTS):
            if attempt and self._now() >= self.fence_deadline():
                return  # the caller fences
            sent = self._now()
            try:
                ttl = await self._etcd_call(lambda: self._etcd.keepalive(lease))
            except (EtcdError, TimeoutError) as exc:
                self._note_unreachable(exc)
                await self._sleep(RETRY_PAUSE_SEC)
                continue
            self._reachable()
            if ttl <= 0:
                self._lose_lease("the lease expired on etcd")
                return
            self._last_ack, self.view.last_ack_wall = sent, self._wall()
            return

    def _note_unreachable(self, exc: BaseException) -> None:
        """Remember the error; record ``fleet.unreachable`` once per outage, naming each endpoint."""
        error = str(exc) or type(exc).__name__
        if isinstance(exc, TimeoutError):
            waited = self._call_timeout + CALL_GRACE_SEC
            error = f"no answer from {', '.join(self._endpoints)} within {waited:.2g}s"
        self._last_error = error[:600]
        if not self._unreachable:
            self._unreachable, self._unreachable_since = True, self._call_sent
            self._publish(
                ev.FleetUnreachable(host=self.host, error=self._last_error, endpoints=tuple(self._endpoints))
            )

    def _reachable(self) -> None:
        if self._unreachable:
            self._unreachable = False
            after = self._now() - self._unreachable_since
            self._publish(ev.FleetReachable(host=self.host, after_sec=after))

    def _lose_lease(self, reason: str) -> None:
        for owned in list(self.view.owned.values()):
            self._drop(owned, reason)
        self.view.joined, self.view.lease = False, 0

    def _drop(self, owned: Owned, reason: str) -> None:
        self.view.owned.pop(owned.key, None)
        self._runner.stop_placed(owned.service, f"fleet: {reason}")
        self._publish(
            ev.FleetLost(
                service=owned.service,
                host=self.host,
                slot=keys.slot_name(self.cluster, owned.key),
                token=owned.token,
                reason=reason,
            )
        )

    def _fence(self) -> None:
        """Stop every placed service here now and forget the lease (a new one is granted later)."""
        stopped = tuple(sorted({o.service for o in self.view.owned.values()}))
        since = self._now() - self._last_ack
        for owned in list(self.view.owned.values()):
            self.view.owned.pop(owned.key)
            self._runner.stop_placed(owned.service, "fleet: fenced (keep-alive not acknowledged in time)")
        self._publish(
            ev.FleetFenced(host=self.host, since_ack_sec=since, stopped=stopped, error=self._last_error)
        )
        lease = self.view.lease
        self.view.joined, self.view.lease = False, 0
        # The old lease's keys must not outlive the fenced services needlessly: revoke it if etcd answers.
        self._revoke_later(lease)

    def stop_all(self, reason: str) -> None:
        """Stop every placed service this host runs (hasupd stops or leaves the fleet)."""
        for owned in list(self.view.owned.values()):
            self.view.owned.pop(owned.key)
            self._runner.stop_placed(owned.service, reason)

    # ------------------------------------------------------------------ elections

    def reconfigure(
        self,
        placements: dict[str, Placement],
        start_timeouts: dict[str, float],
        restarted: set[str],
        updated: set[str],
        stop_timeouts: dict[str, float] | None = None,
    ) -> None:
        """Take a reloaded config: ``restarted`` services were replaced (stopped) by the reload, and
        start again here if this host owns them; ``updated`` ones keep running and keep their token in
        their config; services no longer placed give their keys back (at the next round)."""
        self.placements = dict(placements)
        self._start_timeouts = dict(start_timeouts)
        if stop_timeouts is not None:
            self._stop_timeouts = dict(stop_timeouts)
        for owned in list(self.view.owned.values()):
            if owned.service not in self.placements:
                self.view.owned.pop(owned.key)
                self._stale_keys.append((owned.key, owned.token))
            elif owned.service in restarted and owned.releasing is None:
                self._runner.start_placed(owned.service, owned.environment)
            elif owned.service in updated:
                self._runner.placed_environment(owned.service, owned.environment)
        self.wake()

    async def _delete_stale_keys(self) -> None:
        while self._stale_keys:
            key, token = self._stale_keys[0]
            try:
                await self._etcd_call(lambda key=key, token=token: self._etcd.delete_if(key, token))  # type: ignore[misc]
            except (EtcdError, TimeoutError):
                return  # next round; or the key goes with the lease
            self._stale_keys.pop(0)

    async def _round(self) -> None:
        await self._delete_stale_keys()
        await self._expire_gave_up()
        prefix = keys.root(self.cluster)
        try:
            snapshot = await self._etcd_call(lambda: self._etcd.range_prefix(prefix))
        except (EtcdError, TimeoutError) as exc:
            self._note_unreachable(exc)
            return
        self.view.snapshot = snapshot
        kv = {item.key: item for item in snapshot.kvs}
        lease = self.view.lease
        # Lost: a key of ours that is gone or was re-created by someone else.
        for owned in list(self.view.owned.values()):
            item = kv.get(owned.key)
            if item is None or item.create_revision != owned.token or item.lease != lease:
                self._drop(owned, "the ownership key is gone or belongs to another host")
        alive = {k.removeprefix(prefix + "hosts/") for k in kv if k.startswith(prefix + "hosts/")}
        drained = {k.removeprefix(prefix + "drain/") for k in kv if k.startswith(prefix + "drain/")}
        for service, placement in sorted(self.placements.items()):
            slots = keys.slot_keys(self.cluster, service, placement)
            owners = {k: _decode(kv[k].value).get("host", "?") for k in slots if k in kv}
            for k in slots:
                if k in kv and kv[k].lease == lease and k not in self.view.owned:
                    # Our own create whose answer was lost (timed out): it is ours, bound to our lease;
                    # a second slot of the same service here (one replica per host) is given back.
                    if any(o.service == service for o in self.view.owned.values()):
                        self._stale_keys.append((k, kv[k].create_revision))
                    else:
                        self._own(service, placement, k, kv[k].create_revision)
            mine = [k for k in slots if k in self.view.owned]
            target = (
                kv[keys.move_key(self.cluster, service)].value
                if keys.move_key(self.cluster, service) in kv
                else ""
            )
            self._watch_unowned(service, slots, owners, alive)
            failed_prefix = keys.failed_prefix(self.cluster, service)
            gave_up = {k.removeprefix(failed_prefix) for k in kv if k.startswith(failed_prefix)}
            if mine:
                owned = self.view.owned[mine[0]]
                if owned.releasing is None and self._should_release(
                    target, alive, drained, set(owners.values())
                ):
                    owned.releasing = target if target != self.host else ""
                    self._runner.stop_placed(service, f"fleet: moving to {target or 'another host'}")
                elif owned.releasing is None and self._crash_looped(service, alive, drained, owners, gave_up):
                    await self._give_up(owned)
                if owned.releasing is not None and self._runner.placed_inactive(service):
                    await self._release(owned)
                continue
            free = [k for k in slots if k not in kv]
            eligible = self._eligible(placement, alive, drained, target, owners, gave_up=gave_up)
            if not free or self.host not in eligible:
                continue
            await self._take(service, placement, free[0], target)

    def _eligible(
        self,
        placement: Placement,
        alive: set[str],
        drained: set[str],
        target: str,
        owners: dict[str, str],
        *,
        gave_up: set[str],
    ) -> set[str]:
        """Return the hosts that may take a free slot now: the move target if it can; else, among the
        hosts where the service did not just crash-loop (those only when nobody else can), the
        preferred ones; else those not avoided; avoided hosts only when nobody else can."""
        candidates = alive - drained - set(owners.values())
        if target in candidates:
            return {target}
        pool = (candidates - gave_up) or candidates
        preferred = pool & set(placement.prefer)
        if preferred:
            return preferred
        allowed = pool - set(placement.avoid)
        return allowed or pool

    def _crash_looped(
        self, service: str, alive: set[str], drained: set[str], owners: dict[str, str], gave_up: set[str]
    ) -> bool:
        """Return True when ``service`` crash-looped here for good (seen so for a whole round, so that
        a recovery about to start holds it first) and another host could take it."""
        if not self._runner.placed_given_up(service):
            self._failing_since.pop(service, None)
            return False
        since = self._failing_since.setdefault(service, self._now())
        others = alive - drained - set(owners.values()) - gave_up - {self.host}
        return self._now() - since >= self._interval and bool(others)

    async def _give_up(self, owned: Owned) -> None:
        """Mark ``owned``'s service as crash-looped here (a key bound to our lease, so other hosts
        prefer any other), then hand it over like a move to any host (the caller releases it)."""
        avoid = GIVE_UP_AVOID_TTLS * self.ttl
        key = keys.failed_key(self.cluster, owned.service, self.host)
        value = json.dumps({"until": self._wall() + avoid})
        lease = self.view.lease
        try:
            await self._etcd_call(lambda: self._etcd.put(key, value, lease))
        except (EtcdError, TimeoutError) as exc:
            self._note_unreachable(exc)
            return  # next round
        self._gave_up[owned.service] = (self._now() + avoid, key)
        self._failing_since.pop(owned.service, None)
        owned.releasing = ""
        self._publish(
            ev.FleetGaveUp(
                service=owned.service,
                host=self.host,
                slot=keys.slot_name(self.cluster, owned.key),
                token=owned.token,
                avoid_sec=avoid,
            )
        )

    async def _expire_gave_up(self) -> None:
        """Delete our failed/ marks whose time is up: this host may take those services again."""
        for service, (until, key) in list(self._gave_up.items()):
            if self._now() < until:
                continue
            try:
                await self._etcd_call(lambda key=key: self._etcd.delete(key))  # type: ignore[misc]
            except (EtcdError, TimeoutError) as exc:
                self._note_unreachable(exc)
                return
            self._gave_up.pop(service, None)

    def _should_release(self, target: str, alive: set[str], drained: set[str], owners: set[str]) -> bool:
        if target and target != self.host and target in alive and target not in drained:
            return target not in owners
        if self.host in drained:
            return bool(alive - drained - owners)
        return False

    async def _take(self, service: str, placement: Placement, key: str, target: str) -> None:
        value = json.dumps({"host": self.host, "since": self._wall()})
        lease = self.view.lease
        try:
            created, revision = await self._etcd_call(lambda: self._etcd.create(key, value, lease))
        except (EtcdError, TimeoutError) as exc:
            # The transaction may have happened: the next round sees the key and owns or drops it.
            self._note_unreachable(exc)
            return
        if not created:
            return
        self._own(service, placement, key, revision)
        if target == self.host:
            move = keys.move_key(self.cluster, service)
            try:
                await self._etcd_call(lambda: self._etcd.delete(move))
            except (EtcdError, TimeoutError) as exc:
                self._note_unreachable(exc)

    def _own(self, service: str, placement: Placement, key: str, revision: int) -> None:
        """Record that this host owns ``key`` with token ``revision`` and start the service."""
        owned = Owned(service=service, key=key, token=revision, since=self._wall())
        self.view.owned[key] = owned
        self.view.elections += 1
        self._unowned_since.pop(service, None)
        self._unowned_alerted.discard(service)
        slot = keys.slot_name(self.cluster, key)
        self._publish(ev.FleetElected(service=service, host=self.host, slot=slot, token=revision))
        environment = {"HASUPD_FLEET_TOKEN": str(revision), "HASUPD_FLEET_HOST": self.host}
        if not placement.singleton:
            environment["HASUPD_FLEET_REPLICA"] = key.rsplit("/", 1)[-1]
        owned.environment = environment
        self._runner.start_placed(service, environment)

    async def _release(self, owned: Owned) -> None:
        """Delete the key of a service stopped for a hand-over (it is down here: checked by the caller).

        Until this succeeds the key stays ours and is kept alive, so nobody starts the service early.
        """
        try:
            await self._etcd_call(lambda: self._etcd.delete_if(owned.key, owned.token))
        except (EtcdError, TimeoutError) as exc:
            self._note_unreachable(exc)
            return
        self.view.owned.pop(owned.key, None)
        self._publish(
            ev.FleetMoved(
                service=owned.service,
                host=self.host,
                target=owned.releasing or "",
                slot=keys.slot_name(self.cluster, owned.key),
            )
        )

    def _watch_unowned(self, service: str, slots: list[str], owners: dict[str, str], alive: set[str]) -> None:
        """Alert (once per outage, from the first live host by name) when a slot stays without owner
        longer than TTL + the service's start timeout."""
        if len(owners) == len(slots):
            self._unowned_since.pop(service, None)
            self._unowned_alerted.discard(service)
            return
        since = self._unowned_since.setdefault(service, self._now())
        limit = self.ttl + self._start_timeouts.get(service, 90.0)
        waited = self._now() - since
        if waited > limit and service not in self._unowned_alerted and self.host == min(alive, default=""):
            self._unowned_alerted.add(service)
            self._publish(ev.FleetUnowned(service=service, seconds=waited))

    # ------------------------------------------------------------------ operations (hasupctl)

    async def request_move(self, service: str, target: str) -> None:
        """Ask the owner of ``service`` to hand it to ``target`` (a key every host reads)."""
        key = keys.move_key(self.cluster, service)
        await self._etcd_call(lambda: self._etcd.put(key, target))
        self.wake()

    async def request_drain(self, host: str) -> None:
        """Ask ``host`` to give its placed services away until its lease ends (hasupd restarts)."""
        snapshot = await self._etcd_call(lambda: self._etcd.range_prefix(keys.host_key(self.cluster, host)))
        match = [kv for kv in snapshot.kvs if kv.key == keys.host_key(self.cluster, host)]
        if not match:
            raise LookupError(f"host {host!r} is not alive in fleet {self.cluster}")
        lease = match[0].lease
        drain = keys.drain_key(self.cluster, host)
        await self._etcd_call(lambda: self._etcd.put(drain, "1", lease))
        self.wake()
