"""Timer services on fakes (a Manager on fake processes, a settable wall clock): catch-up of missed slots
with persistent, skipping without it, random delays, masked and busy timers, reloads; and the
reload/kill inputs of a service."""

from __future__ import annotations

import asyncio
import signal
from datetime import UTC, datetime, timedelta
from pathlib import Path

from hasupd import events as ev
from hasupd.config.model import Config
from hasupd.config.unitstate import UnitStates
from hasupd.host.notify import NotifyMessage
from hasupd.states import ServiceState as S
from hasupd.states import ServiceType
from hasupd.timers import Timers
from tests.unit.fakes import ManagerRig, service

T0 = datetime(2026, 3, 1, 12, 30, tzinfo=UTC)


def timer(name: str, **fields: object) -> object:
    return service(name, type=ServiceType.ONESHOT, schedule="@hourly", **fields)


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> datetime:
        return self.now


def _rig(tmp_path: Path, *configs: object, delay: float = 0.0) -> tuple[ManagerRig, Timers, Clock]:
    rig = ManagerRig(*configs)  # type: ignore[arg-type]
    rig.manager.unit_states = UnitStates.load(tmp_path)
    clock = Clock()
    timers = Timers(rig.manager, tmp_path, asyncio.get_running_loop(), rand=lambda a, b: delay, now=clock)
    return rig, timers, clock


def _stamp(tmp_path: Path, name: str, when: datetime) -> None:
    (tmp_path / "timers").mkdir(exist_ok=True)
    (tmp_path / "timers" / f"{name}.last").write_text(when.isoformat())


async def test_a_persistent_timer_runs_a_missed_slot_once_and_a_plain_one_skips_it(tmp_path: Path) -> None:
    rig, timers, _ = _rig(tmp_path, timer("caught", persistent=True), timer("plain"))
    for name in ("caught", "plain"):
        _stamp(tmp_path, name, T0 - timedelta(hours=5))  # five slots passed while hasupd was down
    rig.manager.start_all()
    assert rig.spawner.spawned == []  # timers are not started at boot
    timers.sync()
    assert [p.spec.unit_name for p in rig.spawner.spawned] == ["caught"]
    triggered = rig.rec.of(ev.TimerTriggered)
    assert len(triggered) == 1 and triggered[0].missed  # type: ignore[attr-defined]
    assert triggered[0].scheduled == (T0 - timedelta(hours=4, minutes=30)).isoformat()  # type: ignore[attr-defined]
    assert timers.last_run("caught") == T0
    assert timers.next_run("caught") == timers.next_run("plain") == T0 + timedelta(minutes=30)
    timers.close()


async def test_a_new_timer_waits_for_its_first_slot_plus_its_random_delay(tmp_path: Path) -> None:
    rig, timers, _ = _rig(tmp_path, timer("t", persistent=True, randomized_delay_sec=600.0), delay=42.0)
    timers.sync()
    assert rig.spawner.spawned == []  # no stamp: nothing was missed, the first slot is ahead
    assert timers.last_run("t") == T0
    assert timers.next_run("t") == T0 + timedelta(minutes=30, seconds=42)
    timers.close()


async def test_masked_and_busy_timers_skip_their_slot(tmp_path: Path) -> None:
    rig, timers, clock = _rig(tmp_path, timer("t", persistent=True))
    _stamp(tmp_path, "t", T0 - timedelta(hours=2))
    assert rig.manager.unit_states is not None
    rig.manager.unit_states.masked.add("t")
    timers.sync()
    assert rig.spawner.spawned == []
    assert [e.reason for e in rig.rec.of(ev.TimerSkipped)] == ["masked"]  # type: ignore[attr-defined]
    rig.manager.unit_states.masked.clear()
    rig.manager.start("t")  # by hand; a oneshot stays in start until it exits
    assert rig.manager.services["t"].state is S.START
    timers.close()
    clock.now = T0 + timedelta(hours=1)
    timers2 = Timers(rig.manager, tmp_path, asyncio.get_running_loop(), now=clock)
    _stamp(tmp_path, "t", T0 - timedelta(hours=2))
    timers2.sync()
    assert [e.reason for e in rig.rec.of(ev.TimerSkipped)][-1] == "the previous run is still going"
    assert len(rig.spawner.spawned) == 1
    timers2.close()


async def test_a_reload_rearms_changed_timers_and_drops_removed_ones(tmp_path: Path) -> None:
    rig, timers, _ = _rig(tmp_path, timer("a"), timer("b"))
    timers.sync()
    assert timers.next_run("a") == T0 + timedelta(minutes=30)
    changed = service("a", type=ServiceType.ONESHOT, schedule="45 * * * *")
    rig.manager.config = Config(config_dir="/nonexistent", services=(changed,))  # what apply() leaves
    timers.sync()
    assert timers.next_run("a") == T0 + timedelta(minutes=15)
    assert timers.next_run("b") is None
    timers.close()


def test_kill_and_reload_of_a_running_service() -> None:
    rig = ManagerRig(service("web", reload_signal=signal.SIGHUP), service("ntf", type=ServiceType.NOTIFY))
    rig.manager.start_all()
    web = rig.manager.services["web"]
    process = next(p for p in rig.spawner.spawned if p.spec.unit_name == "web")
    assert web.kill(signal.SIGUSR1, main_only=True) == 1
    assert process.scope.signals == [signal.SIGUSR1] and process.scope.main_signals == []  # via the pid
    web.kill(signal.SIGUSR2, main_only=False)
    assert process.scope.signals[-1] == signal.SIGUSR2
    assert web.begin_reload("test")
    assert process.scope.signals[-1] == signal.SIGHUP
    assert web.state is S.RUNNING  # a plain service's signal reload is done once sent
    assert [e.new for e in rig.rec.of(ev.ServiceStateChanged) if e.service == "web"][-2:] == [  # type: ignore[attr-defined]
        "reloading",
        "running",
    ]
    starting = rig.manager.services["ntf"]
    assert not starting.begin_reload("test")  # only a running service reloads (ntf waits for READY=1)
    assert starting.kill(signal.SIGTERM, main_only=True) == 1


def test_a_notify_reload_lasts_until_ready_or_fails_at_the_start_timeout() -> None:
    rig = ManagerRig(service("ntf", type=ServiceType.NOTIFY, reload_signal=signal.SIGHUP))
    rig.manager.start_all()
    ntf = rig.manager.services["ntf"]
    pid = rig.spawner.last.pid
    rig.watchers.on_notify["ntf"](NotifyMessage(pid=pid, ready=True))
    assert ntf.begin_reload("test")
    rig.watchers.on_notify["ntf"](NotifyMessage(pid=pid, reloading=True))
    assert ntf.state is S.RELOADING
    rig.watchers.on_notify["ntf"](NotifyMessage(pid=pid, ready=True))
    assert ntf.state is S.RUNNING and ntf.last_reload == (True, "READY=1")
    assert ntf.begin_reload("test")  # this time the service never answers
    rig.clock.advance(1.0)  # timeout_start_sec
    assert ntf.state is S.RUNNING
    assert ntf.last_reload == (False, "not done within 1s")
    # A service that starts a reload itself (RELOADING=1) is reloading until its READY=1.
    rig.watchers.on_notify["ntf"](NotifyMessage(pid=pid, reloading=True))
    assert ntf.state is S.RELOADING
