"""Every (state, input) pair of the service state machine, with its explicit outcome.

Each state is reached on fakes (fake spawner, fake clock, fake watchers); then one input is applied
and the resulting state is compared with the table. "no-op" means: the state stays and nothing is
spawned or signalled. A pair that cannot happen (a process exit with no process) is listed as
``IMPOSSIBLE`` and asserted to be refused loudly rather than silently mishandled.
"""

from __future__ import annotations

import signal
from collections.abc import Callable

import pytest

from hasupd import events as ev
from hasupd.config.model import HealthProbe, HeartbeatFile, Limits, ProbeKind, ServiceConfig, StartLimit
from hasupd.host.notify import NotifyMessage
from hasupd.ports import ProbeOutcome
from hasupd.service import Service
from hasupd.states import OutputMode, RestartMode, ServiceType
from hasupd.states import ServiceResult as R
from hasupd.states import ServiceState as S
from tests.unit.fakes import FakeClock, FakeSpawner, FakeWatchers, Recorder

PROBE = HealthProbe(kind=ProbeKind.TCP, target="127.0.0.1:1")


class Rig:
    """One service on fakes, with every watcher configured so that every input has a source."""

    def __init__(self, type_: ServiceType, restart: RestartMode = RestartMode.ON_FAILURE) -> None:
        config = ServiceConfig(
            name="web",
            command=("/bin/true",),
            type=type_,
            restart=restart,
            restart_sec=0.5,
            restart_max_delay_sec=1.0,
            timeout_start_sec=1.0,
            timeout_stop_sec=2.0,
            watchdog_sec=100.0,
            heartbeat_file=HeartbeatFile(path="/run/hb", max_age_sec=100.0),
            limits=Limits(memory=1 << 30),
            health=(PROBE,),
            start_limit=StartLimit(burst=100, interval_sec=60.0),
        )
        self.bus = ev.EventBus()
        self.rec = Recorder(self.bus)
        self.spawner = FakeSpawner()
        self.clock = FakeClock()
        self.watchers = FakeWatchers()
        self.svc = Service(
            config,
            spawner=self.spawner,
            clock=self.clock,
            bus=self.bus,
            output=OutputMode.INHERIT,
            rand=lambda: 0.0,
            watchers=self.watchers,
        )

    def watcher(self, kind: str) -> Callable[..., None]:
        """The callback of the latest ``kind`` watcher (stopped or not: a late callback must be harmless)."""
        armed = [w for w in self.watchers.armed if w.kind == kind]
        return armed[-1].callback if armed else (lambda *a: None)

    def fire_next_timer(self) -> None:
        pending = self.clock.pending()
        if pending:
            self.clock.advance(pending[0] - self.clock.now)


# ---------------------------------------------------------------------------- reaching each state


def in_dead() -> Rig:
    return Rig(ServiceType.SIMPLE)


def in_start() -> Rig:
    rig = Rig(ServiceType.NOTIFY)
    rig.svc.start()
    return rig


def in_running() -> Rig:
    rig = Rig(ServiceType.SIMPLE)
    rig.svc.start()
    return rig


def in_stop_sigterm() -> Rig:
    rig = in_running()
    rig.svc.stop()
    return rig


def in_stop_watchdog() -> Rig:
    rig = in_running()
    rig.clock.advance(100.0)  # no WATCHDOG=1 within watchdog_sec
    return rig


def in_stop_sigkill() -> Rig:
    rig = in_stop_sigterm()
    rig.clock.advance(2.0)  # timeout_stop_sec: the process ignored the stop signal
    return rig


def in_failed() -> Rig:
    rig = Rig(ServiceType.SIMPLE, RestartMode.NO)
    rig.svc.start()
    rig.spawner.last.exit(1)
    return rig


def in_auto_restart() -> Rig:
    rig = in_running()
    rig.spawner.last.exit(sig=signal.SIGKILL)
    return rig


def in_reloading() -> Rig:
    rig = in_running()
    assert rig.svc.begin_reload("test")  # no reload_signal: it stays until end_reload or the timeout
    return rig


REACH: dict[S, Callable[[], Rig]] = {
    S.RELOADING: in_reloading,
    S.DEAD: in_dead,
    S.START: in_start,
    S.RUNNING: in_running,
    S.STOP_SIGTERM: in_stop_sigterm,
    S.STOP_WATCHDOG: in_stop_watchdog,
    S.STOP_SIGKILL: in_stop_sigkill,
    S.FAILED: in_failed,
    S.AUTO_RESTART: in_auto_restart,
}


# ---------------------------------------------------------------------------- inputs


def exited(rig: Rig) -> None:
    if rig.svc.pid is None:
        raise LookupError("no main process")  # nothing can exit
    rig.spawner.last.exit(1)


def notify_ready(rig: Rig) -> None:
    if "web" not in rig.watchers.on_notify:
        raise LookupError("no notify endpoint before the first start")  # nobody can send
    rig.watchers.on_notify["web"](NotifyMessage(pid=rig.spawner.last.pid, ready=True))


def watchdog_timeout(rig: Rig) -> None:
    # The watchdog's timer callback itself: also in states where it was disarmed in the same loop turn.
    rig.svc._on_watchdog()


def health_failure(rig: Rig) -> None:
    rig.watcher("health")(
        ProbeOutcome(PROBE, healthy=False, detail="refused", consecutive_failures=3, transition=True)
    )


def health_recovered(rig: Rig) -> None:
    rig.watcher("health")(
        ProbeOutcome(PROBE, healthy=True, detail="ok", consecutive_failures=0, transition=True)
    )


INPUTS: dict[str, Callable[[Rig], None]] = {
    "start request": lambda rig: rig.svc.start(),
    "stop request": lambda rig: rig.svc.stop(),
    "restart request": lambda rig: rig.svc.restart(),
    "reset-failed": lambda rig: rig.svc.reset_failed(),
    "main process exits": exited,
    "timeout (next timer)": Rig.fire_next_timer,
    "notify READY": notify_ready,
    "watchdog timeout": watchdog_timeout,
    "health failure": health_failure,
    "health recovered": health_recovered,
    "heartbeat stale": lambda rig: rig.watcher("heartbeat")("stale"),
    "limit exceeded": lambda rig: rig.watcher("limits")("memory", "too much"),
}


# ---------------------------------------------------------------------------- the table

NOOP = "no-op"  # the state stays; nothing spawned, nothing signalled
IMPOSSIBLE = "impossible"  # the input has no source in this state
ORDER = tuple(INPUTS)

# state -> outcome of each input, in the order of INPUTS:
#   start, stop, restart, reset-failed, exit, timeout, READY, watchdog,
#   health fail, health ok, heartbeat, limit
TABLE: dict[S, tuple[str, ...]] = {
    S.DEAD: (S.RUNNING, NOOP, S.RUNNING, NOOP, IMPOSSIBLE, NOOP, IMPOSSIBLE, NOOP, NOOP, NOOP, NOOP, NOOP),
    S.START: (
        NOOP,
        S.STOP_SIGTERM,
        S.STOP_SIGTERM,
        NOOP,
        S.AUTO_RESTART,  # the tree is gone at once: straight to the restart decision
        S.STOP_SIGTERM,  # start timeout
        S.RUNNING,
        S.STOP_WATCHDOG,
        NOOP,  # probes are armed on READY only
        NOOP,
        S.STOP_WATCHDOG,
        S.STOP_SIGTERM,
    ),
    S.RUNNING: (
        NOOP,
        S.STOP_SIGTERM,
        S.STOP_SIGTERM,
        NOOP,
        S.AUTO_RESTART,
        NOOP,  # the stable-run timer: backoff reset, no state change
        NOOP,  # READY again changes nothing
        S.STOP_WATCHDOG,
        S.STOP_SIGTERM,
        NOOP,
        S.STOP_WATCHDOG,
        S.STOP_SIGTERM,
    ),
    S.RELOADING: (
        NOOP,
        S.STOP_SIGTERM,
        S.STOP_SIGTERM,
        NOOP,
        S.AUTO_RESTART,
        S.RUNNING,  # the reload timeout: it failed, the service runs on
        S.RUNNING,  # READY=1 ends the reload
        S.STOP_WATCHDOG,
        NOOP,  # probes judge a running service, not one mid-reload
        NOOP,
        S.STOP_WATCHDOG,
        S.STOP_SIGTERM,
    ),
    S.STOP_SIGTERM: (
        NOOP,  # start after the stop: remembered, no state change yet
        NOOP,
        NOOP,
        NOOP,
        S.DEAD,  # a requested stop: not restarted
        S.STOP_SIGKILL,
        NOOP,
        NOOP,
        NOOP,
        NOOP,
        NOOP,
        NOOP,
    ),
    S.STOP_WATCHDOG: (
        NOOP,
        NOOP,
        NOOP,
        NOOP,
        S.AUTO_RESTART,  # result watchdog is restarted
        S.STOP_SIGKILL,
        NOOP,
        NOOP,
        NOOP,
        NOOP,
        NOOP,
        NOOP,
    ),
    S.STOP_SIGKILL: (NOOP, NOOP, NOOP, NOOP, S.DEAD, S.DEAD, NOOP, NOOP, NOOP, NOOP, NOOP, NOOP),
    S.FAILED: (S.RUNNING, NOOP, S.RUNNING, S.DEAD, IMPOSSIBLE, NOOP, NOOP, NOOP, NOOP, NOOP, NOOP, NOOP),
    S.AUTO_RESTART: (
        S.RUNNING,  # skips the rest of the delay
        S.DEAD,
        S.RUNNING,
        NOOP,
        IMPOSSIBLE,
        S.RUNNING,  # the restart is due
        NOOP,
        NOOP,
        NOOP,
        NOOP,
        NOOP,
        NOOP,
    ),
}


def test_the_table_covers_every_state_and_every_input() -> None:
    assert set(TABLE) == set(S)
    assert all(len(row) == len(ORDER) for row in TABLE.values())


def _activity(rig: Rig) -> tuple[int, list[list[int]]]:
    return len(rig.spawner.spawned), [[*p.scope.main_signals, *p.scope.signals] for p in rig.spawner.spawned]


@pytest.mark.parametrize(("state", "name"), [(state, name) for state in REACH for name in ORDER], ids=str)
def test_state_x_input(state: S, name: str) -> None:
    expected = TABLE[state][ORDER.index(name)]
    rig = REACH[state]()
    assert rig.svc.state is state
    before = _activity(rig)
    if expected == IMPOSSIBLE:
        with pytest.raises(LookupError):
            INPUTS[name](rig)
        return
    INPUTS[name](rig)
    if expected == NOOP:
        assert rig.svc.state is state
        assert _activity(rig) == before, "a no-op spawned or signalled something"
    else:
        assert rig.svc.state is expected


# A start request whose spawn fails (missing binary, unknown user ...): result resources, then the
# restart policy decides (the FAILED rig has restart: no).
SPAWN_FAILS: dict[S, str] = {
    S.DEAD: S.AUTO_RESTART,
    S.START: NOOP,  # already started
    S.RUNNING: NOOP,
    S.RELOADING: NOOP,
    S.STOP_SIGTERM: NOOP,  # the start comes after the stop
    S.STOP_WATCHDOG: NOOP,
    S.STOP_SIGKILL: NOOP,
    S.FAILED: S.FAILED,
    S.AUTO_RESTART: S.AUTO_RESTART,
}


@pytest.mark.parametrize("state", list(REACH), ids=str)
def test_state_x_spawn_failure(state: S) -> None:
    assert set(SPAWN_FAILS) == set(S)
    rig = REACH[state]()
    before = _activity(rig)
    spawn_failures = len(rig.rec.of(ev.ServiceSpawnFailed))
    rig.spawner.fail_with = "no such file"
    rig.svc.start()
    expected = SPAWN_FAILS[state]
    if expected == NOOP:
        assert rig.svc.state is state
        assert len(rig.rec.of(ev.ServiceSpawnFailed)) == spawn_failures
    else:
        assert rig.svc.state is expected
        assert rig.svc.result is R.RESOURCES
        assert len(rig.rec.of(ev.ServiceSpawnFailed)) == spawn_failures + 1
    assert _activity(rig) == before  # nothing was spawned
