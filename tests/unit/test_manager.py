"""The Manager on fakes: `after` ordering, apply(new config), waiters and rolling restarts."""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
from collections.abc import Sequence

import pytest

from hasupd import events as ev
from hasupd import manager as manager_module
from hasupd.config.model import Config
from hasupd.host.notify import NotifyMessage
from hasupd.manager import RollingRestartError
from hasupd.ports import Process, SpawnError, SpawnRequest
from hasupd.states import RestartMode, ServiceType
from hasupd.states import ServiceState as S
from tests.unit.fakes import ManagerRig as Rig
from tests.unit.fakes import ObedientSpawner, service


@pytest.fixture(autouse=True)
def quick_settle(monkeypatch: pytest.MonkeyPatch) -> None:
    # "Still running a moment later" need not be a real second here.
    monkeypatch.setattr(manager_module, "ROLLING_SETTLE_SEC", 0.01)


def test_a_unit_starts_only_once_the_services_it_comes_after_run() -> None:
    rig = Rig(service("api", after=("db",)), service("db", type=ServiceType.NOTIFY))
    rig.manager.start_all()
    assert [p.spec.unit_name for p in rig.spawner.spawned] == ["db"]
    assert rig.manager.is_pending("api")
    assert rig.manager.services["db"].state is S.START
    rig.watchers.on_notify["db"](NotifyMessage(pid=rig.spawner.last.pid, ready=True))
    assert [p.spec.unit_name for p in rig.spawner.spawned] == ["db", "api"]
    assert not rig.manager.is_pending("api")
    assert rig.manager.services["api"].state is S.RUNNING


def test_a_thousand_chained_services_start_in_order_without_recursion() -> None:
    # Each unit's "running" starts the next; the FIFO bus queues instead of recursing (a thousand
    # levels of it raised RecursionError before 29d715c; the bus now makes the manager's guard moot).
    names = [f"s{i:04d}" for i in range(1000)]
    rig = Rig(service(names[0]), *(service(n, after=(prev,)) for prev, n in itertools.pairwise(names)))
    rig.manager.start_all()
    assert [p.spec.unit_name for p in rig.spawner.spawned] == names
    assert all(s.state is S.RUNNING for s in rig.manager.services.values())
    # Every subscriber saw every state change, each unit's in order.
    changes = [
        (e.service, e.new)
        for e in rig.rec.of(ev.ServiceStateChanged)
        if isinstance(e, ev.ServiceStateChanged)
    ]
    assert [name for name, new in changes if new == "running"] == names


async def test_stop_all_stops_dependents_before_their_dependencies() -> None:
    rig = Rig(service("api", after=("db",)), service("db"), service("web", after=("api",)))
    rig.manager.start_all()
    seen: list[tuple[str, list[str]]] = []

    def on(event: ev.Event) -> None:
        if isinstance(event, ev.ServiceStopping):
            down = sorted(n for n, s in rig.manager.services.items() if s.is_inactive)
            seen.append((str(event.service), down))

    rig.bus.subscribe(on)
    await asyncio.wait_for(rig.manager.stop_all("shutdown"), 5)
    assert seen == [("web", []), ("api", ["web"]), ("db", ["api", "web"])]
    assert all(s.state is S.DEAD for s in rig.manager.services.values())


async def test_apply_starts_added_stops_removed_restarts_changed_and_updates_in_place() -> None:
    keep, gone, changed, updated = service("a"), service("b"), service("c"), service("d")
    rig = Rig(keep, gone, changed, updated)
    rig.manager.start_all()
    pid = {n: s.pid for n, s in rig.manager.services.items()}
    new = Config(
        config_dir="/nonexistent",
        services=(
            keep,
            dataclasses.replace(changed, command=("/bin/false",)),
            dataclasses.replace(updated, restart_sec=5.0),
            service("e"),
        ),
    )
    plan = (await asyncio.wait_for(rig.manager.apply(new), 5)).services
    assert ([s.name for s in plan.added], plan.removed) == (["e"], ("b",))
    assert ([s.name for s in plan.changed], [s.name for s in plan.updated]) == (["c"], ["d"])
    services = rig.manager.services
    assert sorted(services) == ["a", "c", "d", "e"]
    assert rig.spawner.of("b")[0].scope.alive == set()  # stopped, not left running
    assert services["a"].pid == pid["a"] and services["d"].pid == pid["d"]  # untouched
    assert services["d"].config.restart_sec == 5.0
    assert services["c"].pid != pid["c"] and rig.spawner.of("c")[-1].spec.service.command == ("/bin/false",)
    assert services["e"].state is S.RUNNING
    applied = rig.rec.of(ev.ConfigApplied)[-1]
    assert isinstance(applied, ev.ConfigApplied) and applied.added == ("e",) and applied.removed == ("b",)


async def test_waiters_wake_on_the_state_change_that_makes_them_true() -> None:
    rig = Rig(service("db", type=ServiceType.NOTIFY))
    rig.manager.start_all()
    db = rig.manager.services["db"]
    running = asyncio.ensure_future(rig.manager.wait_until(lambda: db.state is S.RUNNING))
    await asyncio.sleep(0)
    assert not running.done()
    rig.watchers.on_notify["db"](NotifyMessage(pid=rig.spawner.last.pid, ready=True))
    await asyncio.wait_for(running, 1)
    down = asyncio.ensure_future(rig.manager.wait_inactive(["db", "no-such-unit"]))
    await asyncio.sleep(0)
    assert not down.done()
    rig.manager.stop("db")
    await asyncio.wait_for(down, 1)
    assert db.state is S.DEAD
    assert rig.manager._waiters == []  # nothing left behind


async def test_rolling_restart_restarts_one_instance_at_a_time() -> None:
    rig = Rig(service("web", instances=3))
    rig.manager.start_all()
    done = await asyncio.wait_for(rig.manager.rolling_restart("web", lambda s: True), 5)
    assert done == ["web@0", "web@1", "web@2"]
    events = [
        (type(e).__name__, e.service)
        for e in rig.rec.events
        if isinstance(e, ev.ServiceStopping | ev.ServiceStarted)
    ]
    # Each instance is stopped only once the previous one has started again.
    assert events[3:] == [
        ("ServiceStopping", "web@0"),
        ("ServiceStarted", "web@0"),
        ("ServiceStopping", "web@1"),
        ("ServiceStarted", "web@1"),
        ("ServiceStopping", "web@2"),
        ("ServiceStarted", "web@2"),
    ]


async def test_rolling_restart_stops_at_an_instance_that_does_not_come_back() -> None:
    rig = Rig(service("web", instances=3, restart=RestartMode.NO))
    rig.manager.start_all()
    last = rig.spawner.of("web@2")[-1]
    rig.spawner.fail = {"web@1"}
    with pytest.raises(RollingRestartError, match="web@1 is failed"):
        await asyncio.wait_for(rig.manager.rolling_restart("web", lambda s: True), 5)
    services = rig.manager.services
    assert len(rig.spawner.of("web@0")) == 2 and services["web@0"].state is S.RUNNING
    assert services["web@1"].state is S.FAILED
    # The rest is left untouched.
    assert services["web@2"].pid == last.pid and last.scope.main_signals == [] and last.scope.signals == []


class _ManyRecorder(ObedientSpawner):
    """A ManySpawner: records the units of each spawn_many call; units in ``refuse`` cannot start."""

    def __init__(self, refuse: frozenset[str] = frozenset()) -> None:
        super().__init__()
        self.batches: list[list[str]] = []
        self.refuse = refuse

    def spawn_many(self, requests: Sequence[SpawnRequest]) -> list[Process | SpawnError]:
        self.batches.append([str(spec.unit_name) for spec, _ in requests])
        out: list[Process | SpawnError] = []
        for spec, on_exit in requests:
            if spec.unit_name in self.refuse:
                out.append(SpawnError(f"cannot start {spec.unit_name}: refused"))
            else:
                out.append(self.spawn(spec, on_exit))
        return out


def test_ready_units_are_spawned_together_and_dependents_in_a_later_batch() -> None:
    rig = Rig(
        service("a"), service("b", restart=RestartMode.NO), service("c"), service("web", after=("a", "b"))
    )
    many = _ManyRecorder(refuse=frozenset({"b"}))
    for s in rig.manager.services.values():
        s._spawner = many
    rig.manager.start_all()
    # a, b, c in one call; web waits for a and b; b failed, so web stays pending.
    assert many.batches == [["a", "b", "c"]]
    assert rig.manager.services["a"].state is S.RUNNING
    assert rig.manager.services["b"].state is S.FAILED
    assert rig.manager.services["b"].result.value == "resources"
    assert rig.manager.is_pending("web")
    failed = rig.rec.of(ev.ServiceSpawnFailed)
    assert [(e.service, getattr(e, "error", "")) for e in failed] == [("b", "cannot start b: refused")]


def test_a_batch_is_done_before_any_subscriber_reacts_to_its_first_start() -> None:
    rig = Rig(service("a"), service("b"), service("c"))
    seen: list[tuple[str, list[str]]] = []

    def on(event: ev.Event) -> None:
        if isinstance(event, ev.ServiceStarted):
            with_process = sorted(n for n, s in rig.manager.services.items() if s.pid is not None)
            seen.append((str(event.service), with_process))

    rig.bus.subscribe(on)
    rig.manager.start_all()
    assert seen == [(n, ["a", "b", "c"]) for n in ("a", "b", "c")]
    assert [s.state for s in rig.manager.services.values()] == [S.RUNNING] * 3
