"""Probes, heartbeat and limits of a running service: re-armed by a reload, and incidents that name it."""

from __future__ import annotations

import dataclasses

from hasupd import events as ev
from hasupd.config.model import HealthProbe, HeartbeatFile, Limits, ProbeKind, ServiceConfig, StartLimit
from hasupd.ports import ProbeOutcome
from hasupd.service import Service
from hasupd.states import OutputMode
from hasupd.states import ServiceResult as R
from hasupd.states import ServiceState as S
from tests.unit.fakes import FakeClock, FakeSpawner, FakeWatchers, Recorder

EXEC_PROBE = HealthProbe(kind=ProbeKind.EXEC, argv=("/bin/true",), interval_sec=1.0, failures=2)
HEARTBEAT = HeartbeatFile(path="/run/web.beat", max_age_sec=5.0)


def make(**overrides: object) -> tuple[Service, FakeSpawner, FakeClock, Recorder, FakeWatchers]:
    fields: dict[str, object] = {
        "name": "web",
        "command": ("/bin/true",),
        "restart_sec": 0.1,
        "restart_max_delay_sec": 1.0,
        "timeout_stop_sec": 2.0,
        "start_limit": StartLimit(burst=5, interval_sec=60.0),
    }
    fields.update(overrides)
    bus = ev.EventBus()
    rec = Recorder(bus)
    spawner, clock, watchers = FakeSpawner(), FakeClock(), FakeWatchers()
    svc = Service(
        ServiceConfig(**fields),  # type: ignore[arg-type]
        spawner=spawner,
        clock=clock,
        bus=bus,
        output=OutputMode.INHERIT,
        rand=lambda: 0.0,
        watchers=watchers,
    )
    return svc, spawner, clock, rec, watchers


def test_reload_with_new_probes_stops_the_old_and_arms_the_new_keeping_the_process() -> None:
    svc, spawner, _, _, watchers = make()
    svc.start()
    pid = svc.pid
    assert watchers.active("health") == [] and svc.health is None
    svc.update_config(dataclasses.replace(svc.config, health=(EXEC_PROBE,)))
    [probe] = watchers.active("health")
    assert probe.spec == (EXEC_PROBE,)
    assert svc.health == "starting" and svc.pid == pid and len(spawner.spawned) == 1
    other = dataclasses.replace(EXEC_PROBE, argv=("/bin/false",))
    svc.update_config(dataclasses.replace(svc.config, health=(other,)))
    assert probe.stopped
    assert [w.spec for w in watchers.active("health")] == [(other,)]
    svc.update_config(dataclasses.replace(svc.config, health=()))
    assert watchers.active("health") == [] and svc.health is None
    assert svc.state is S.RUNNING and svc.pid == pid


def test_reload_re_arms_only_what_changed() -> None:
    svc, _, _, _, watchers = make(health=(EXEC_PROBE,), heartbeat_file=HEARTBEAT)
    svc.start()
    [probe], [beat] = watchers.active("health"), watchers.active("heartbeat")
    svc.update_config(dataclasses.replace(svc.config, restart_sec=2.0))
    assert not probe.stopped and not beat.stopped and len(watchers.armed) == 2
    longer = dataclasses.replace(HEARTBEAT, max_age_sec=60.0)
    svc.update_config(dataclasses.replace(svc.config, heartbeat_file=longer))
    assert beat.stopped and not probe.stopped
    assert [w.spec for w in watchers.active("heartbeat")] == [longer]


def test_reload_of_limits_arms_them_and_removing_them_lifts_memory_max() -> None:
    svc, _, _, _, watchers = make()
    svc.start()
    assert watchers.active("limits") == []  # none configured, nothing armed, memory.max untouched
    svc.update_config(dataclasses.replace(svc.config, limits=Limits(memory=64 << 20)))
    [limits] = watchers.active("limits")
    assert watchers.memory_max == [64 << 20]
    svc.update_config(dataclasses.replace(svc.config, limits=Limits()))
    assert limits.stopped and watchers.memory_max == [64 << 20, None]


def test_reload_while_not_running_arms_nothing_until_the_next_start() -> None:
    svc, spawner, clock, _, watchers = make()
    svc.start()
    spawner.last.exit(code=1)
    assert svc.state is S.AUTO_RESTART
    svc.update_config(dataclasses.replace(svc.config, health=(EXEC_PROBE,), heartbeat_file=HEARTBEAT))
    assert watchers.armed == []
    clock.advance(0.2)
    assert svc.state is S.RUNNING
    assert len(watchers.active("health")) == 1 and len(watchers.active("heartbeat")) == 1


def test_a_new_probe_that_fails_stops_the_service_after_the_reload() -> None:
    svc, spawner, _, _, watchers = make()
    svc.start()
    first = spawner.last
    svc.update_config(dataclasses.replace(svc.config, health=(EXEC_PROBE,)))
    [probe] = watchers.active("health")
    probe.callback(ProbeOutcome(EXEC_PROBE, False, "exit status 1", 2, True))
    assert svc.state is S.STOP_SIGTERM and svc.result is R.HEALTH
    first.exit(code=None, sig=15)
    assert svc.state is S.AUTO_RESTART


def test_incident_reasons_name_the_service() -> None:
    cases = [
        ("health", (ProbeOutcome(EXEC_PROBE, False, "exit status 1", 2, True),), "web unhealthy after 2"),
        ("heartbeat", ("heartbeat file /run/web.beat not touched for 9.0s",), "web (pid 100) watchdog: "),
        ("limits", ("memory", "RSS 70 MiB over the 64 MiB limit"), "web over its memory limit: RSS 70"),
    ]
    for kind, args, expected in cases:
        svc, _, _, rec, watchers = make(
            health=(EXEC_PROBE,), heartbeat_file=HEARTBEAT, limits=Limits(memory=64 << 20)
        )
        svc.start()
        watchers.active(kind)[0].callback(*args)
        [opened] = rec.of(ev.IncidentOpened)
        assert isinstance(opened, ev.IncidentOpened)
        assert opened.reason.startswith(expected), (kind, opened.reason)
        assert "None" not in opened.reason


def test_watchdog_incident_reason_names_the_service() -> None:
    svc, _, clock, rec, _ = make(watchdog_sec=1.0)
    svc.start()
    clock.advance(1.5)
    [opened] = rec.of(ev.IncidentOpened)
    assert isinstance(opened, ev.IncidentOpened)
    assert opened.reason == "web (pid 100) watchdog: no WATCHDOG=1 within 1s"
