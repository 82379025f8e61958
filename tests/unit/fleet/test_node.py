"""FleetNode against a fake etcd and a fake clock: election, fencing, take-over, prefer/avoid, replicas,
moves, drains, a host name used twice and the unowned alert."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any, TypeVar

import pytest

from hasupd import events as ev
from hasupd.config.fleet_timing import FENCE_MARGIN_SEC
from hasupd.config.model import EtcdConfig, FleetConfig, Placement
from hasupd.fleet.etcd import EtcdUnavailable
from hasupd.fleet.node import RETRY_PAUSE_SEC, FleetNode, Owned
from tests.unit.fleet.fake_etcd import FakeCluster, FakeEtcd

T = TypeVar("T")
TTL = 3.0
STOP = 0.5  # the placed services' timeout_stop_sec


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def now(self) -> float:
        return self.t


class Runner:
    """Placed services as the Manager would run them; stops take ``stop_delay`` fake seconds."""

    def __init__(self, clock: Clock, log: list[tuple[float, str, str, str]], host: str) -> None:
        self.clock, self.log, self.host = clock, log, host
        self.active: dict[str, dict[str, str]] = {}
        self.failed: set[str] = set()  # crash-looped here: failed with start-limit-hit

    def start_placed(self, name: str, environment: dict[str, str]) -> None:
        assert name not in self.active
        self.failed.discard(name)
        self.active[name] = environment
        self.log.append((self.clock.t, "start", name, self.host))

    def stop_placed(self, name: str, reason: str) -> None:
        if self.active.pop(name, None) is not None:
            self.log.append((self.clock.t, "stop", name, self.host))

    def placed_environment(self, name: str, environment: dict[str, str]) -> None:
        self.environments = getattr(self, "environments", {})
        self.environments[name] = environment

    def placed_inactive(self, name: str) -> bool:
        return name not in self.active

    def placed_given_up(self, name: str) -> bool:
        return name in self.failed and name not in self.active

    def crash_loop(self, name: str) -> None:
        """The service hit its start limit here: down, failed."""
        if self.active.pop(name, None) is not None:
            self.log.append((self.clock.t, "stop", name, self.host))
        self.failed.add(name)


class Host:
    def __init__(
        self, name: str, cluster: FakeCluster, clock: Clock, log: list[Any], **placements: Placement
    ) -> None:
        self.etcd = FakeEtcd(cluster)
        self.events: list[ev.Event] = []
        self.runner = Runner(clock, log, name)
        self.stalled = False
        self.lose_answers: list[bool] = []  # per call from now: True = its answer is lost
        self.clock = clock

        async def call(fn: Callable[[], T], timeout: float) -> T:
            if self.stalled:
                raise TimeoutError
            result = fn()
            if self.lose_answers and self.lose_answers.pop(0):
                raise TimeoutError  # done on etcd's side, the answer came too late
            return result

        async def sleep(delay: float) -> None:
            clock.t += delay

        self.node = FleetNode(
            FleetConfig(
                etcd=EtcdConfig(endpoints=("http://127.0.0.1:1",)), cluster="c", host=name, lease_ttl_sec=TTL
            ),
            placements or {"db": Placement(singleton=True)},
            {"db": 5.0, "web": 5.0},
            etcd=self.etcd,
            call=call,
            runner=self.runner,
            publish=self.events.append,
            now=clock.now,
            sleep=sleep,
            wall=clock.now,
            stop_timeouts={"db": STOP, "web": STOP},
        )

    def names(self) -> list[str]:
        return [e.NAME for e in self.events]


@pytest.fixture
def world() -> tuple[Clock, FakeCluster, list[Any]]:
    clock = Clock()
    return clock, FakeCluster(now=clock.now), []


def run(coro: Any) -> Any:
    return asyncio.run(coro)


async def advance(clock: Clock, hosts: list[Host], seconds: float, step: float = 0.25) -> None:
    end = clock.t + seconds
    while clock.t < end:
        clock.t += step
        for host in hosts:
            await host.node.step()


def overlaps(log: list[tuple[float, str, str, str]], name: str, limit: int = 1) -> bool:
    running: set[str] = set()
    for _, what, service, host in sorted(log, key=lambda e: e[0]):
        if service != name:
            continue
        if what == "start":
            running.add(host)
            if len(running) > limit:
                return True
        else:
            running.discard(host)
    return False


def test_a_singleton_runs_on_exactly_one_host_with_its_token(world: Any) -> None:
    clock, cluster, log = world
    hosts = [Host(n, cluster, clock, log) for n in ("a", "b", "c")]
    run(advance(clock, hosts, 2))
    owners = [h for h in hosts if "db" in h.runner.active]
    assert len(owners) == 1
    env = owners[0].runner.active["db"]
    assert env["HASUPD_FLEET_HOST"] == owners[0].node.host
    assert int(env["HASUPD_FLEET_TOKEN"]) == cluster.kvs["/hasupd/c/owner/db"].create_revision
    assert [n for n in owners[0].names() if n == "fleet.elected"] == ["fleet.elected"]


def test_partitioned_owner_fences_before_its_lease_expires_and_the_next_starts_after(world: Any) -> None:
    clock, cluster, log = world
    hosts = [Host(n, cluster, clock, log) for n in ("a", "b")]
    run(advance(clock, hosts, 1))
    owner = next(h for h in hosts if "db" in h.runner.active)
    other = next(h for h in hosts if h is not owner)
    token = int(owner.runner.active["db"]["HASUPD_FLEET_TOKEN"])
    owner.etcd.reachable = False
    cut = clock.t
    run(advance(clock, hosts, 3 * TTL))
    stop = next(t for t, what, _, h in log if what == "stop" and h == owner.node.host)
    start = next(t for t, what, _, h in log if what == "start" and h == other.node.host)
    # Fenced at the local deadline, so that even a stop that runs into its timeout (SIGKILL) ends a
    # margin before the lease (TTL after the last acknowledged send) can expire.
    assert stop - cut <= owner.node.fence_delay() + 0.3
    assert stop + STOP <= cut + TTL - FENCE_MARGIN_SEC + 0.3
    assert start >= cut + TTL - 0.3 > stop  # the other starts only once the old lease is gone
    assert "fleet.fenced" in owner.names()
    assert int(other.runner.active["db"]["HASUPD_FLEET_TOKEN"]) > token
    assert not overlaps(log, "db")


def test_a_stalled_keepalive_fences_too(world: Any) -> None:
    clock, cluster, log = world
    host = Host("a", cluster, clock, log)
    run(advance(clock, [host], 1))
    assert "db" in host.runner.active
    host.stalled = True
    run(advance(clock, [host], host.node.fence_delay() + 0.3))
    assert "db" not in host.runner.active and "fleet.fenced" in host.names()
    host.stalled = False  # etcd answers again: a new lease, a new election, a new token
    run(advance(clock, [host], TTL + 1))
    assert "db" in host.runner.active and host.names().count("fleet.joined") == 2


def test_an_etcd_leader_election_shorter_than_the_fencing_delay_moves_nothing(world: Any) -> None:
    """No leader for 1.7 s (more than TTL/2, the old fencing delay): the owner keeps retrying its
    keep-alive, says etcd was unreachable and answers again, and keeps its service and token."""
    clock, cluster, log = world
    hosts = [Host(n, cluster, clock, log) for n in ("a", "b")]
    run(advance(clock, hosts, 1))
    owner = next(h for h in hosts if "db" in h.runner.active)
    token = owner.runner.active["db"]["HASUPD_FLEET_TOKEN"]
    assert TTL / 2 < 1.7 < owner.node.fence_delay() - 0.25  # 0.25: a round's age; TTL/2 fenced here
    cluster.leaderless_until = clock.t + 1.7
    run(advance(clock, hosts, 3 * TTL))
    assert owner.runner.active["db"]["HASUPD_FLEET_TOKEN"] == token
    assert [h for h in hosts if "db" in h.runner.active] == [owner]
    assert "fleet.fenced" not in owner.names() and "fleet.lost" not in owner.names()
    unreachable = next(e for e in owner.events if isinstance(e, ev.FleetUnreachable))
    assert "no leader" in unreachable.error and unreachable.endpoints == ("http://127.0.0.1:1",)
    back = next(e for e in owner.events if isinstance(e, ev.FleetReachable))
    assert 1.4 <= back.after_sec <= 2.0


def test_a_keepalive_is_retried_within_one_round_until_the_deadline(world: Any) -> None:
    """One round retries a failed keep-alive (pausing briefly) instead of waiting for the next round,
    and gives up at the fencing deadline, where the round fences."""
    clock, cluster, log = world
    host = Host("a", cluster, clock, log)
    run(advance(clock, [host], 1))
    cluster.leaderless_until = clock.t + 0.6
    run(host.node.step())  # one round: the retries run into the end of the election
    assert host.node.lease_age() is not None and host.node.lease_age() < 0.1
    assert "db" in host.runner.active
    cluster.leaderless_until = clock.t + 3 * TTL
    started = clock.t
    run(host.node.step())
    assert started + host.node.fence_delay() - 0.6 <= clock.t <= started + host.node.fence_delay() + 0.1
    assert "db" not in host.runner.active
    fenced = next(e for e in host.events if isinstance(e, ev.FleetFenced))
    assert "no leader" in fenced.error


def test_dead_owner_is_replaced_after_its_lease_expires(world: Any) -> None:
    clock, cluster, log = world
    hosts = [Host(n, cluster, clock, log) for n in ("a", "b", "c")]
    run(advance(clock, hosts, 1))
    owner = next(h for h in hosts if "db" in h.runner.active)
    rest = [h for h in hosts if h is not owner]
    owner.runner.active.clear()  # kill -9 of hasupd and its service: no more keep-alives
    died = clock.t
    run(advance(clock, rest, TTL + 1))
    new = [h for h in rest if "db" in h.runner.active]
    assert len(new) == 1
    took = next(t for t, what, _, h in log if what == "start" and h == new[0].node.host)
    assert died + TTL - 0.3 <= took <= died + TTL + 0.6


def test_host_name_used_twice_is_refused_and_runs_nothing(world: Any) -> None:
    clock, cluster, log = world
    first, second = Host("a", cluster, clock, log), Host("a", cluster, clock, log)
    run(advance(clock, [first, second], 2))
    assert "db" in first.runner.active and not second.runner.active
    assert second.names() == ["fleet.join-refused"]  # recorded once, not every round
    assert second.node.view.refused


def test_prefer_and_avoid(world: Any) -> None:
    clock, cluster, log = world
    placement = Placement(singleton=True, prefer=("c",), avoid=("a",))
    a = Host("a", cluster, clock, log, db=placement)
    run(advance(clock, [a], 1))
    assert "db" in a.runner.active  # avoided, but nobody else is alive: a stopped singleton helps no one
    cluster2 = FakeCluster(now=clock.now)
    a2, b2, c2 = (Host(n, cluster2, clock, log, db=placement) for n in ("a", "b", "c"))
    for host in (b2, c2):
        host.node.placements = {}  # alive, placing nothing yet
    run(advance(clock, [b2, c2], 0.5))
    run(advance(clock, [a2], 1))
    assert not a2.runner.active  # avoided while others are alive
    b2.node.placements = {"db": placement}
    run(advance(clock, [a2, b2], 1))
    assert not b2.runner.active  # c is preferred and alive
    c2.node.placements = {"db": placement}
    run(advance(clock, [a2, b2, c2], 1))
    assert "db" in c2.runner.active


def test_replicas_never_exceed_their_count(world: Any) -> None:
    clock, cluster, log = world
    placement = Placement(replicas=2)
    hosts = [Host(n, cluster, clock, log, web=placement) for n in ("a", "b", "c")]
    run(advance(clock, hosts, 1))
    running = [h for h in hosts if "web" in h.runner.active]
    assert len(running) == 2
    assert {h.runner.active["web"]["HASUPD_FLEET_REPLICA"] for h in running} == {"0", "1"}
    victim = running[0]
    victim.runner.active.clear()
    log.append((clock.t, "stop", "web", victim.node.host))
    rest = [h for h in hosts if h is not victim]
    run(advance(clock, rest, TTL + 1))
    assert sum("web" in h.runner.active for h in rest) == 2
    assert not overlaps(log, "web", limit=2)


def test_move_stops_here_first_then_the_target_takes_it(world: Any) -> None:
    clock, cluster, log = world
    hosts = [Host(n, cluster, clock, log) for n in ("a", "b", "c")]
    run(advance(clock, hosts, 1))
    owner = next(h for h in hosts if "db" in h.runner.active)
    target = next(h for h in hosts if h is not owner)
    token = int(owner.runner.active["db"]["HASUPD_FLEET_TOKEN"])
    run(owner.node.request_move("db", target.node.host))
    run(advance(clock, hosts, 1))
    assert "db" in target.runner.active and "db" not in owner.runner.active
    assert int(target.runner.active["db"]["HASUPD_FLEET_TOKEN"]) > token
    assert "fleet.moved" in owner.names()
    assert "/hasupd/c/move/db" not in cluster.kvs
    assert not overlaps(log, "db")


def test_drain_gives_everything_away(world: Any) -> None:
    clock, cluster, log = world
    hosts = [Host(n, cluster, clock, log) for n in ("a", "b")]
    run(advance(clock, hosts, 1))
    owner = next(h for h in hosts if "db" in h.runner.active)
    run(owner.node.request_drain(owner.node.host))
    run(advance(clock, hosts, 1))
    assert not owner.runner.active and all("db" in h.runner.active for h in hosts if h is not owner)
    assert not overlaps(log, "db")


def test_unowned_alert_after_ttl_plus_start_timeout(world: Any) -> None:
    clock, cluster, log = world
    host = Host("a", cluster, clock, log)
    run(advance(clock, [host], 1))
    run(host.node.request_drain("a"))
    run(advance(clock, [host], 1))
    assert "db" in host.runner.active  # drained, but there is nobody to hand it to
    del cluster.kvs["/hasupd/c/owner/db"]  # the key deleted by hand: lost, and drained: not taken again
    run(advance(clock, [host], TTL + 5.0 - 0.5))
    assert "db" not in host.runner.active and "fleet.lost" in host.names()
    assert "fleet.unowned" not in host.names()
    run(advance(clock, [host], 1.0))
    assert host.names().count("fleet.unowned") == 1
    run(advance(clock, [host], 2.0))
    assert host.names().count("fleet.unowned") == 1  # once per outage


def test_reload_restarts_an_owned_service_with_its_token_and_releases_unplaced_ones(world: Any) -> None:
    clock, cluster, log = world
    host = Host("a", cluster, clock, log)
    run(advance(clock, [host], 1))
    env = dict(host.runner.active["db"])
    host.runner.active.clear()  # the reload replaced db (its program changed): stopped
    host.node.reconfigure({"db": Placement(singleton=True)}, {"db": 5.0}, {"db"}, set())
    assert host.runner.active["db"] == env  # started again here, same ownership, same token
    host.node.reconfigure({"db": Placement(singleton=True)}, {"db": 5.0}, set(), {"db"})
    assert host.runner.environments["db"] == env  # updated in place: the token stays in its config
    host.node.reconfigure({}, {}, set(), set())  # no longer placed: the key goes back
    run(advance(clock, [host], 0.5))
    assert "/hasupd/c/owner/db" not in cluster.kvs


def test_a_create_whose_answer_was_lost_is_still_ours(world: Any) -> None:
    clock, cluster, log = world
    lost = Host("a", cluster, clock, log)
    run(lost.node._join())
    lost.lose_answers = [False, False, True]  # keep-alive, range read, then the create's answer is lost
    run(lost.node.step())
    assert not lost.runner.active and "/hasupd/c/owner/db" in cluster.kvs
    run(lost.node.step())
    assert "db" in lost.runner.active  # found under its own lease at the next read
    token = int(lost.runner.active["db"]["HASUPD_FLEET_TOKEN"])
    assert token == cluster.kvs["/hasupd/c/owner/db"].create_revision


def test_a_crash_looping_singleton_is_handed_to_another_host(world: Any) -> None:
    """Failed with start-limit-hit on its owner: handed over (the preferred owner avoids it while
    another host can run it), never two at once; after the avoid time the mark is gone."""
    clock, cluster, log = world
    placement = Placement(singleton=True, prefer=("a",))
    hosts = [Host(n, cluster, clock, log, db=placement) for n in ("a", "b", "c")]
    run(advance(clock, hosts, 1))
    a = hosts[0]
    assert "db" in a.runner.active
    token = int(a.runner.active["db"]["HASUPD_FLEET_TOKEN"])
    a.runner.crash_loop("db")
    run(advance(clock, hosts, 2))
    now = [h for h in hosts if "db" in h.runner.active]
    assert len(now) == 1 and now[0] is not a
    assert int(now[0].runner.active["db"]["HASUPD_FLEET_TOKEN"]) > token
    gave_up = next(e for e in a.events if isinstance(e, ev.FleetGaveUp))
    assert gave_up.service == "db" and gave_up.token == token
    assert "/hasupd/c/failed/db/a" in cluster.kvs
    assert not overlaps(log, "db")
    run(advance(clock, hosts, gave_up.avoid_sec))
    assert "/hasupd/c/failed/db/a" not in cluster.kvs
    assert [h for h in hosts if "db" in h.runner.active] == now  # a running owner is not preempted


def test_a_crash_looping_singleton_stays_when_no_other_host_can_take_it(world: Any) -> None:
    clock, cluster, log = world
    host = Host("a", cluster, clock, log)
    run(advance(clock, [host], 1))
    host.runner.crash_loop("db")
    run(advance(clock, [host], 2))
    assert "fleet.gave-up" not in host.names()
    assert "/hasupd/c/owner/db" in cluster.kvs  # still owned here: failed, as a local service would be


# ---------------------------------------------------------------------- carried on across hasupd images


def new_image(old: Host, record: dict[str, Any], how: str) -> Host:
    """The next image of ``old``'s hasupd: a new node that carries on ``record`` (``hand_over()``, through
    JSON like the state record), its placed services still running with the environment they had."""
    record = json.loads(json.dumps(record))
    image = Host(old.node.host, old.etcd.cluster, old.clock, old.runner.log)
    owned = [Owned(**item) for item in record["owned"]]
    image.runner.active = {o.service: dict(o.environment) for o in owned}
    image.node.resume(record["lease"], owned, record["last_ack"], record["last_ack_wall"], how)
    return image


def test_a_reexec_carries_the_lease_and_ownership_on_without_a_stop(world: Any) -> None:
    clock, cluster, log = world
    hosts = [Host(n, cluster, clock, log) for n in ("a", "b", "c")]
    run(advance(clock, hosts, 2))
    owner = next(h for h in hosts if "db" in h.runner.active)
    token = owner.runner.active["db"]["HASUPD_FLEET_TOKEN"]
    record = owner.node.hand_over()
    assert record is not None and record["lease"] == owner.node.view.lease
    image = new_image(owner, record, "re-exec")
    others = [h for h in hosts if h is not owner]
    before = len(log)
    run(advance(clock, [image, *others], 4 * TTL))
    assert log[before:] == []  # nothing stopped, nothing started anywhere
    assert image.runner.active["db"]["HASUPD_FLEET_TOKEN"] == token
    assert image.node.view.lease == owner.node.view.lease and image.node.owns("db")
    assert cluster.kvs["/hasupd/c/owner/db"].create_revision == int(token)
    assert [e.NAME for e in image.events] == ["fleet.resumed"]
    resumed = image.events[0]
    assert isinstance(resumed, ev.FleetResumed) and resumed.slots == ("owner/db",)
    assert resumed.tokens == (int(token),) and resumed.services == ("db",)
    assert resumed.how == "re-exec" and 0 < resumed.lease_left_sec <= TTL


def test_a_crash_restart_within_the_ttl_carries_on_from_etcds_count(world: Any) -> None:
    """The record's keep-alive time is older than the fencing deadline (written at the election): the
    lease's remaining TTL from etcd sets the deadline, and the service runs on."""
    clock, cluster, log = world
    hosts = [Host(n, cluster, clock, log) for n in ("a", "b")]
    run(advance(clock, hosts, 1))
    owner = next(h for h in hosts if "db" in h.runner.active)
    other = next(h for h in hosts if h is not owner)
    record = owner.node.hand_over()  # the last record written before the crash
    assert record is not None
    run(advance(clock, hosts, 2 * TTL))  # keep-alives go on, the record is not rewritten
    died = clock.t
    run(advance(clock, [other], 1.0))  # hasupd is down for 1 s (its services run on)
    assert clock.t - record["last_ack"] > owner.node.fence_delay()
    image = new_image(owner, record, "crash restart")
    before = len(log)
    run(advance(clock, [image, other], 4 * TTL))
    assert log[before:] == []
    assert "fleet.resumed" in image.names() and "fleet.fenced" not in image.names()
    resumed = next(e for e in image.events if isinstance(e, ev.FleetResumed))
    assert resumed.how == "crash restart" and resumed.lease_left_sec <= TTL - 1.0 + (clock.t - died)
    assert not overlaps(log, "db")


def test_a_crash_restart_after_the_lease_expired_stops_the_carried_service_first(world: Any) -> None:
    clock, cluster, log = world
    host = Host("a", cluster, clock, log)
    run(advance(clock, [host], 1))
    token = int(host.runner.active["db"]["HASUPD_FLEET_TOKEN"])
    record = host.node.hand_over()
    assert record is not None
    clock.t += TTL + 1  # hasupd down for longer than the TTL: the lease and its keys are gone
    image = new_image(host, record, "crash restart")
    before = len(log)
    run(image.node.step())
    # Stopped at the first round before anything else; then a new lease, a new election, a new token.
    assert [(what, name) for _, what, name, _ in log[before:]] == [("stop", "db"), ("start", "db")]
    lost = [e for e in image.events if isinstance(e, ev.FleetLost)]
    assert len(lost) == 1 and "expired" in lost[0].reason and "fleet.resumed" not in image.names()
    assert image.names().index("fleet.lost") < image.names().index("fleet.elected")
    assert int(image.runner.active["db"]["HASUPD_FLEET_TOKEN"]) > token


def test_a_crash_restart_without_etcd_fences_at_once_on_a_stale_record(world: Any) -> None:
    clock, cluster, log = world
    host = Host("a", cluster, clock, log)
    run(advance(clock, [host], 1))
    record = host.node.hand_over()
    assert record is not None
    clock.t += host.node.fence_delay() + 0.5
    image = new_image(host, record, "crash restart")
    image.etcd.reachable = False
    run(image.node.step())
    assert "db" not in image.runner.active and "fleet.fenced" in image.names()


def test_a_reexec_without_etcd_keeps_the_honest_deadline_of_the_old_image(world: Any) -> None:
    """The carried keep-alive time is the real last one: the new image fences at the same deadline
    the old one had, not earlier (no blip) and not later (no overlap)."""
    clock, cluster, log = world
    host = Host("a", cluster, clock, log)
    run(advance(clock, [host], 1))
    record = host.node.hand_over()
    assert record is not None
    deadline = host.node.fence_deadline()
    image = new_image(host, record, "re-exec")
    image.etcd.reachable = False
    before = len(log)
    run(advance(clock, [image], TTL))  # the keep-alive is retried (fake sleeps) until the deadline
    assert [what for _, what, _, _ in log[before:]] == ["stop"]
    stopped = log[before][0]
    assert deadline - 0.01 <= stopped <= deadline + RETRY_PAUSE_SEC and "fleet.fenced" in image.names()


def test_no_election_on_a_lease_whose_keepalives_are_past_the_fencing_deadline(world: Any) -> None:
    """A host whose keep-alives reach etcd but whose answers are lost (its lease lives on in etcd) does
    not take a service once its own fencing deadline has passed: it would have to fence it at once. It
    takes it, once, when its keep-alives are answered again (seen in CI as etcd's quorum came back:
    elected, fenced 70 ms later, elected again)."""
    clock, cluster, log = world
    hosts = [Host(n, cluster, clock, log) for n in ("a", "b")]
    run(advance(clock, hosts, 1))
    owner = next(h for h in hosts if "db" in h.runner.active)
    other = next(h for h in hosts if h is not owner)
    real_keepalive = other.etcd.keepalive

    def answer_lost(lease: int) -> int:
        real_keepalive(lease)  # done on etcd's side: the lease lives on
        raise EtcdUnavailable("fake: the answer was lost")

    other.etcd.keepalive = answer_lost  # type: ignore[method-assign]
    run(advance(clock, hosts, other.node.fence_delay() + 0.5))
    owner.etcd.reachable = False  # the owner goes: it fences, its lease expires
    run(advance(clock, hosts, 3 * TTL))
    assert not [e for e in log if e[1] == "start" and e[3] == other.node.host]
    other.etcd.keepalive = real_keepalive  # type: ignore[method-assign]
    run(advance(clock, hosts, 2 * TTL))
    assert [e[1] for e in log if e[3] == other.node.host] == ["start"]
    assert "db" in other.runner.active and "fleet.fenced" not in other.names()
