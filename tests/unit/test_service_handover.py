"""Service.snapshot() / restore(): a unit carried over to a new image of hasupd keeps its state, counters
and timers (at their original deadlines), and its adopted process is supervised as before."""

from __future__ import annotations

import json
import signal

from hasupd import events as ev
from hasupd.config.model import ServiceConfig, StartLimit
from hasupd.service import Service
from hasupd.states import OutputMode
from hasupd.states import ServiceResult as R
from hasupd.states import ServiceState as S
from tests.unit.fakes import FakeClock, FakeProcess, FakeScope, FakeSpawner, Recorder


def make(clock: FakeClock, spawner: FakeSpawner) -> tuple[Service, Recorder]:
    config = ServiceConfig(
        name="web",
        command=("/bin/true",),
        restart_sec=3.0,
        restart_max_delay_sec=3.0,
        start_limit=StartLimit(burst=5, interval_sec=60.0),
    )
    bus = ev.EventBus()
    rec = Recorder(bus)
    svc = Service(config, spawner=spawner, clock=clock, bus=bus, output=OutputMode.INHERIT, rand=lambda: 0.0)
    return svc, rec


def carried(old: Service, clock: FakeClock, spawner: FakeSpawner, process: FakeProcess | None) -> Service:
    """Return the unit as a new image restores it from old's snapshot (through JSON, as on disk); the old
    image's timers are gone with it (the new one runs on ``clock``, which reads the same monotonic time)."""
    snap = json.loads(json.dumps(old.snapshot()))
    old._disarm_timer()
    new, _ = make(clock, spawner)
    new.restore(snap, process)
    return new


def test_a_restart_pending_in_the_backoff_delay_happens_at_its_original_deadline() -> None:
    clock, spawner = FakeClock(), FakeSpawner()
    old, _ = make(clock, spawner)
    old.start()
    spawner.last.exit(code=1)
    assert old.state is S.AUTO_RESTART
    clock.advance(1.0)  # 2 s of the 3 s delay left when hasupd re-executes
    new = carried(old, clock, spawner, None)
    assert new.state is S.AUTO_RESTART
    assert new.restarts == 1 and new.incident == old.incident
    clock.advance(1.99)
    assert len(spawner.spawned) == 1
    clock.advance(0.02)
    assert len(spawner.spawned) == 2 and new.state is S.RUNNING


def test_an_adopted_running_process_is_supervised_its_crash_restarts_it() -> None:
    clock, spawner = FakeClock(), FakeSpawner()
    old, _ = make(clock, spawner)
    old.start()
    first = spawner.last
    process = FakeProcess(
        pid=first.pid, scope=FakeScope(alive={first.pid}), on_exit=lambda s: None, spec=first.spec
    )
    new = carried(old, clock, spawner, process)
    process.on_exit = new.main_exited
    assert new.state is S.RUNNING and new.pid == first.pid and new.invocation == old.invocation
    process.exit(sig=signal.SIGKILL)
    assert new.result is R.SIGNAL and new.state is S.AUTO_RESTART
    clock.advance(3.01)
    assert spawner.last.pid != first.pid and new.state is S.RUNNING


def test_a_unit_recorded_running_whose_process_is_gone_is_dead_for_the_caller_to_start() -> None:
    clock, spawner = FakeClock(), FakeSpawner()
    old, _ = make(clock, spawner)
    old.start()
    new = carried(old, clock, spawner, None)
    assert new.state is S.DEAD


def test_the_start_limit_window_is_carried_over() -> None:
    clock, spawner = FakeClock(), FakeSpawner()
    old, _ = make(clock, spawner)
    old.start()
    snap = old.snapshot()
    assert snap["start_limit"] == [clock.now]


def test_a_unit_caught_mid_reload_is_carried_on_as_running() -> None:
    clock, spawner = FakeClock(), FakeSpawner()
    old, _ = make(clock, spawner)
    old.start()
    assert old.begin_reload("reload_command")  # the command's answer is lost with the old image
    assert old.state is S.RELOADING
    process = spawner.last
    new = carried(old, clock, spawner, process)
    assert new.state is S.RUNNING and new.pid == process.pid
    assert process.scope.signals == [] and process.scope.main_signals == []  # not stopped
