"""Fakes for the core's unit tests: a fake clock, a fake spawner, fake watchers, and a Manager on them
(no OS effects)."""

from __future__ import annotations

import asyncio
import heapq
import itertools
import signal
from collections.abc import Callable
from dataclasses import dataclass, field

from hasupd import events as ev
from hasupd.config.model import Config, ServiceConfig
from hasupd.events import Event, EventBus
from hasupd.manager import Manager
from hasupd.ports import ExitStatus, SpawnError, SpawnSpec
from hasupd.states import OutputMode


class FakeTimer:
    def __init__(self) -> None:
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


class FakeClock:
    """Monotonic time that only moves when the test says so."""

    def __init__(self) -> None:
        self.now = 1000.0
        self._queue: list[tuple[float, int, FakeTimer, Callable[[], object]]] = []
        self._seq = itertools.count()

    def time(self) -> float:
        return self.now

    def call_at(self, when: float, callback: Callable[[], object]) -> FakeTimer:
        timer = FakeTimer()
        heapq.heappush(self._queue, (when, next(self._seq), timer, callback))
        return timer

    def pending(self) -> list[float]:
        return sorted(w for w, _, t, _ in self._queue if not t.cancelled)

    def advance(self, seconds: float) -> None:
        """Move time forward, firing due timers in order."""
        target = self.now + seconds
        while self._queue and self._queue[0][0] <= target:
            when, _, timer, callback = heapq.heappop(self._queue)
            if timer.cancelled:
                continue
            self.now = max(self.now, when)
            callback()
        self.now = target


@dataclass
class FakeScope:
    alive: set[int] = field(default_factory=set)
    signals: list[int] = field(default_factory=list)  # to every process
    main_signals: list[int] = field(default_factory=list)  # to the main process only
    released: bool = False
    # pids that ignore the stop signal and only die on SIGKILL
    stubborn: set[int] = field(default_factory=set)

    @property
    def kind(self) -> str:
        return "fake"

    def pids(self) -> set[int]:
        return set(self.alive)

    def signal_all(self, sig: int) -> int:
        self.signals.append(sig)
        return len(self.alive)

    def holds(self, pid: int) -> bool:
        return pid in self.alive

    def signal_main(self, sig: int) -> int:
        self.main_signals.append(sig)
        return len(self.alive)

    def kill_all(self) -> int:
        self.signals.append(signal.SIGKILL)
        count = len(self.alive)
        self.alive.clear()
        return count

    def release(self) -> None:
        self.released = True


@dataclass
class FakeProcess:
    pid: int
    scope: FakeScope
    on_exit: Callable[[ExitStatus], None]
    spec: SpawnSpec

    def send_signal(self, sig: int) -> None:
        self.scope.signals.append(sig)

    def exit(self, code: int | None = 0, sig: int | None = None, leave: set[int] | None = None) -> None:
        """The main process ends; ``leave`` are other pids of the tree that stay alive."""
        self.scope.alive.discard(self.pid)
        if leave:
            self.scope.alive |= leave
        self.on_exit(ExitStatus(self.pid, code=None if sig else code, signal=sig))


class FakeSpawner:
    def __init__(self) -> None:
        self.spawned: list[FakeProcess] = []
        self.fail_with: str | None = None
        self._pids = itertools.count(100)

    def spawn(self, spec: SpawnSpec, on_exit: Callable[[ExitStatus], None]) -> FakeProcess:
        if self.fail_with is not None:
            raise SpawnError(self.fail_with)
        pid = next(self._pids)
        proc = FakeProcess(pid=pid, scope=FakeScope(alive={pid}), on_exit=on_exit, spec=spec)
        self.spawned.append(proc)
        return proc

    @property
    def last(self) -> FakeProcess:
        return self.spawned[-1]


class Recorder:
    def __init__(self, bus: EventBus) -> None:
        self.events: list[Event] = []
        bus.subscribe(self.events.append)

    def names(self) -> list[str]:
        return [e.NAME for e in self.events if e.NAME != "service.state"]

    def of(self, cls: type[Event]) -> list[Event]:
        return [e for e in self.events if isinstance(e, cls)]


@dataclass
class FakeWatcher:
    """One armed watcher: what it watches, its callback, and whether it was stopped."""

    kind: str
    spec: object
    callback: Callable[..., None]
    stopped: bool = False

    def stop(self) -> None:
        self.stopped = True


class FakeNotify:
    environment: dict[str, str] = {}

    def drain(self) -> None:
        pass

    def close(self) -> None:
        pass


class FakeWatchers:
    """Records every watcher the state machine arms (hasupd.ports.Watchers), arming nothing real."""

    def __init__(self) -> None:
        self.armed: list[FakeWatcher] = []
        self.memory_max: list[int | None] = []
        self.on_notify: dict[str, Callable[..., None]] = {}

    def _arm(self, kind: str, spec: object, callback: Callable[..., None]) -> FakeWatcher:
        watcher = FakeWatcher(kind, spec, callback)
        self.armed.append(watcher)
        return watcher

    def active(self, kind: str) -> list[FakeWatcher]:
        return [w for w in self.armed if w.kind == kind and not w.stopped]

    def notify(
        self, config: object, unit: str, on_message: Callable[..., None], allowed: object
    ) -> FakeNotify:
        self.on_notify[unit] = on_message  # a test sends "datagrams" by calling it
        return FakeNotify()

    def probes(self, probes: object, on_outcome: Callable[..., None]) -> FakeWatcher:
        return self._arm("health", probes, on_outcome)

    def heartbeat(self, spec: object, on_stale: Callable[[str], None]) -> FakeWatcher:
        return self._arm("heartbeat", spec, on_stale)

    def resources(
        self, limits: object, scope: object, on_exceeded: Callable[[str, str], None]
    ) -> FakeWatcher:
        self.memory_max.append(getattr(limits, "memory", None))
        return self._arm("limits", limits, on_exceeded)

    def oom_killed(self, scope: object) -> bool:
        return False


class ObedientSpawner(FakeSpawner):
    """Fake processes whose main process ends soon after a stop signal (on the next loop turn, as a
    real one would: never inside the state machine's own call); units in ``fail`` cannot be spawned."""

    def __init__(self) -> None:
        super().__init__()
        self.fail: set[str] = set()

    def spawn(self, spec: SpawnSpec, on_exit: Callable[[ExitStatus], None]) -> FakeProcess:
        if spec.unit_name in self.fail:
            raise SpawnError(f"{spec.unit_name} cannot be spawned")
        proc = super().spawn(spec, on_exit)
        plain = proc.scope.signal_main

        def signal_main(sig: int) -> int:
            count = plain(sig)

            def end() -> None:
                if proc.pid in proc.scope.alive:
                    proc.exit(sig=sig)

            asyncio.get_running_loop().call_soon(end)
            return count

        proc.scope.signal_main = signal_main  # type: ignore[method-assign]
        return proc

    def of(self, unit: str) -> list[FakeProcess]:
        """Every process spawned for ``unit``, oldest first."""
        return [p for p in self.spawned if p.spec.unit_name == unit]


class ManagerRig:
    """A Manager on fakes, with a recorder of every event."""

    def __init__(self, *services: ServiceConfig) -> None:
        self.bus = ev.EventBus()
        self.rec = Recorder(self.bus)
        self.spawner = ObedientSpawner()
        self.clock = FakeClock()
        self.watchers = FakeWatchers()
        self.manager = Manager(
            Config(config_dir="/nonexistent", services=tuple(sorted(services, key=lambda s: s.name))),
            spawner=self.spawner,
            clock=self.clock,
            bus=self.bus,
            default_output=OutputMode.INHERIT,
            watchers=self.watchers,
        )

    def order(self, cls: type[ev.Event]) -> list[str]:
        """The units that published ``cls`` records, in order."""
        return [str(e.service) for e in self.rec.of(cls)]


def service(name: str, **fields: object) -> ServiceConfig:
    values: dict[str, object] = {
        "name": name,
        "command": ("/bin/true",),
        "restart_sec": 0.1,
        "timeout_start_sec": 1.0,
        "timeout_stop_sec": 1.0,
    }
    values.update(fields)
    return ServiceConfig(**values)  # type: ignore[arg-type]
