"""Helpers for the Manager and Recovery unit tests: processes on fakes that obey stop signals."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from hasupd import events as ev
from hasupd.config.model import Config, ServiceConfig
from hasupd.manager import Manager
from hasupd.ports import ExitStatus, SpawnError, SpawnSpec
from hasupd.states import OutputMode
from tests.unit.fakes import FakeClock, FakeProcess, FakeSpawner, FakeWatchers, Recorder


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


class Rig:
    """A Manager on fakes."""

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
