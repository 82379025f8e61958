"""The service state machine, driven by a fake spawner and a fake clock."""

from __future__ import annotations

import signal

import pytest

from hasupd import events as ev
from hasupd.config.model import ServiceConfig, StartLimit
from hasupd.service import Service
from hasupd.states import OutputMode, RestartMode, ServiceType
from hasupd.states import ServiceResult as R
from hasupd.states import ServiceState as S
from tests.unit.fakes import FakeClock, FakeSpawner, Recorder


def make(**overrides: object) -> tuple[Service, FakeSpawner, FakeClock, Recorder]:
    fields: dict[str, object] = {
        "name": "web",
        "command": ("/bin/true",),
        "restart_sec": 0.1,
        "restart_max_delay_sec": 1.0,
        "timeout_stop_sec": 2.0,
        "start_limit": StartLimit(burst=5, interval_sec=60.0),
    }
    fields.update(overrides)
    config = ServiceConfig(**fields)  # type: ignore[arg-type]
    bus = ev.EventBus()
    rec = Recorder(bus)
    spawner = FakeSpawner()
    clock = FakeClock()
    svc = Service(config, spawner=spawner, clock=clock, bus=bus, output=OutputMode.INHERIT, rand=lambda: 0.0)
    return svc, spawner, clock, rec


def test_simple_start_runs_at_once() -> None:
    svc, spawner, _, rec = make()
    svc.start()
    assert svc.state is S.RUNNING
    assert svc.pid == spawner.last.pid
    assert rec.names() == ["service.started"]
    assert spawner.last.spec.invocation_id == svc.invocation


def test_crash_publishes_restart_before_the_delay_and_restarts_after_it() -> None:
    svc, spawner, clock, rec = make()
    svc.start()
    first = spawner.last
    first.exit(sig=signal.SIGKILL)
    assert svc.state is S.AUTO_RESTART
    assert svc.result is R.SIGNAL
    restart = rec.of(ev.ServiceRestartScheduled)[-1]
    assert isinstance(restart, ev.ServiceRestartScheduled)
    assert restart.delay_sec == pytest.approx(0.1)
    assert "on-failure" in restart.reason
    assert restart.incident is not None  # the crash opened an incident
    clock.advance(0.099)
    assert len(spawner.spawned) == 1
    clock.advance(0.002)
    assert len(spawner.spawned) == 2
    assert svc.state is S.RUNNING
    assert svc.restarts == 1


def test_backoff_grows_then_resets_after_a_stable_run() -> None:
    svc, spawner, clock, rec = make()
    svc.start()
    delays = []
    for _ in range(4):
        spawner.last.exit(code=1)
        delays.append(rec.of(ev.ServiceRestartScheduled)[-1].delay_sec)  # type: ignore[attr-defined]
        clock.advance(delays[-1] + 0.01)
    assert delays == pytest.approx([0.1, 0.2, 0.4, 0.8])
    assert svc.incident is not None
    clock.advance(svc.stable_sec + 0.01)  # ran stably: backoff and incident reset
    assert svc.incident is None
    assert rec.of(ev.IncidentClosed)[-1].outcome == "resolved"  # type: ignore[attr-defined]
    spawner.last.exit(code=1)
    assert rec.of(ev.ServiceRestartScheduled)[-1].delay_sec == pytest.approx(0.1)  # type: ignore[attr-defined]


def test_start_limit_sends_the_service_to_failed_and_stops_spawning() -> None:
    svc, spawner, clock, rec = make(start_limit=StartLimit(burst=3, interval_sec=60.0))
    svc.start()
    for _ in range(10):
        if svc.state is S.RUNNING:
            spawner.last.exit(code=3)
        clock.advance(5.0)
    assert len(spawner.spawned) == 3
    assert svc.state is S.FAILED
    assert svc.result is R.START_LIMIT_HIT
    assert svc.last_exit is not None and svc.last_exit.code == 3
    failed = rec.of(ev.ServiceFailed)[-1]
    assert failed.result == "start-limit-hit"  # type: ignore[attr-defined]
    assert clock.pending() == []  # nothing scheduled any more
    svc.reset_failed()
    assert svc.state is S.DEAD and svc.result is R.SUCCESS
    svc.start()
    assert len(spawner.spawned) == 4


def test_start_limit_hit_result_when_nothing_failed_before() -> None:
    svc, spawner, clock, _ = make(restart=RestartMode.ALWAYS, start_limit=StartLimit(2, 60.0))
    svc.start()
    for _ in range(3):
        if svc.state is S.RUNNING:
            spawner.last.exit(code=0)
        clock.advance(1.0)
    assert svc.state is S.FAILED
    assert svc.result is R.START_LIMIT_HIT


def test_stop_signals_the_rest_of_the_tree_only_once_the_main_has_exited() -> None:
    svc, spawner, clock, rec = make(kill_signal=signal.SIGTERM)
    svc.start()
    proc = spawner.last
    proc.scope.alive.add(4242)  # a worker the main would respawn
    svc.stop()
    assert (proc.scope.main_signals, proc.scope.signals) == ([signal.SIGTERM], [])
    proc.exit(sig=signal.SIGTERM, leave={4242})
    assert svc.state is S.STOP_SIGTERM
    assert proc.scope.signals == [signal.SIGTERM, signal.SIGCONT]
    proc.scope.alive.clear()  # the worker obeyed
    clock.advance(0.5)
    assert svc.state is S.DEAD and svc.result is R.SUCCESS
    assert "service.killed" not in rec.names()


def test_stop_sends_kill_signal_then_sigkill_after_timeout() -> None:
    svc, spawner, clock, rec = make(kill_signal=signal.SIGINT)
    svc.start()
    proc = spawner.last
    proc.scope.alive.add(4242)  # a grandchild
    svc.stop()
    assert svc.state is S.STOP_SIGTERM
    # KillMode=mixed: the main first; the grandchild is left alone while the main is alive.
    assert proc.scope.main_signals == [signal.SIGINT]
    assert proc.scope.signals == []
    clock.advance(1.9)
    assert svc.state is S.STOP_SIGTERM
    clock.advance(0.2)
    assert proc.scope.signals[-1] == signal.SIGKILL
    assert svc.state is S.STOP_SIGKILL
    proc.exit(sig=signal.SIGKILL)
    assert svc.state is S.DEAD  # requested stop: dead, never restarted
    assert svc.result is R.TIMEOUT
    assert proc.scope.released
    assert "service.killed" in rec.names()
    clock.advance(100)
    assert len(spawner.spawned) == 1


def test_main_exit_kills_the_rest_of_the_tree_before_restarting() -> None:
    svc, spawner, clock, _ = make()
    svc.start()
    proc = spawner.last
    proc.exit(code=1, leave={777})
    assert svc.state is S.STOP_SIGTERM  # leftovers get the stop signal first
    proc.scope.alive.clear()
    clock.advance(0.05)  # the poll notices the tree is empty
    assert svc.state is S.AUTO_RESTART


def test_spawn_failure_is_result_resources_not_a_crash() -> None:
    svc, spawner, _clock, rec = make(restart=RestartMode.NO)
    spawner.fail_with = "executable '/nope' not found"
    svc.start()
    assert svc.state is S.FAILED
    assert svc.result is R.RESOURCES
    failed = rec.of(ev.ServiceSpawnFailed)[0]
    assert "/nope" in failed.error  # type: ignore[attr-defined]


def test_oneshot_success_is_dead_and_not_restarted() -> None:
    svc, spawner, clock, _ = make(type=ServiceType.ONESHOT)
    svc.start()
    assert svc.state is S.START
    spawner.last.exit(code=0)
    assert svc.state is S.DEAD and svc.result is R.SUCCESS
    clock.advance(10)
    assert len(spawner.spawned) == 1


def test_notify_start_timeout() -> None:
    svc, spawner, clock, _ = make(type=ServiceType.NOTIFY, timeout_start_sec=3.0, restart=RestartMode.NO)
    svc.start()
    assert svc.state is S.START
    clock.advance(3.01)
    assert svc.state is S.STOP_SIGTERM
    spawner.last.exit(sig=signal.SIGTERM)
    assert svc.state is S.FAILED and svc.result is R.TIMEOUT


def test_restart_command_stops_then_starts() -> None:
    svc, spawner, _clock, _ = make()
    svc.start()
    svc.restart()
    assert svc.state is S.STOP_SIGTERM
    spawner.last.exit(sig=signal.SIGTERM)
    assert svc.state is S.RUNNING
    assert len(spawner.spawned) == 2


def test_stop_during_auto_restart_cancels_the_restart() -> None:
    svc, spawner, clock, _ = make()
    svc.start()
    spawner.last.exit(code=1)
    svc.stop()
    assert svc.state is S.DEAD
    clock.advance(10)
    assert len(spawner.spawned) == 1


def test_start_during_stop_starts_again_once_down() -> None:
    svc, spawner, _clock, _ = make()
    svc.start()
    svc.stop()
    svc.start()
    spawner.last.exit(sig=signal.SIGTERM)
    assert svc.state is S.RUNNING
    assert len(spawner.spawned) == 2


@pytest.mark.parametrize("state_setup", ["dead", "failed"])
def test_stop_when_inactive_is_a_no_op(state_setup: str) -> None:
    svc, spawner, _, rec = make(restart=RestartMode.NO)
    if state_setup == "failed":
        svc.start()
        spawner.last.exit(code=1)
        assert svc.state is S.FAILED
    before = list(rec.events)
    svc.stop()
    assert rec.events == before


def test_clean_exit_with_on_failure_is_dead_without_incident() -> None:
    svc, spawner, _, rec = make()
    svc.start()
    spawner.last.exit(code=0)
    assert svc.state is S.DEAD
    assert "incident.opened" not in rec.names()
