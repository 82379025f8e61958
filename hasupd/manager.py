"""The set of services: ordered start and stop, and applying reload plans."""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import Callable, Iterable

from hasupd import events as ev
from hasupd.config.diff import Plan, plan_reload
from hasupd.config.model import Config, ServiceConfig
from hasupd.runtimes.base import Clock, Spawner
from hasupd.service import Service
from hasupd.states import OutputMode, ServiceState

log = logging.getLogger(__name__)


class Manager:
    """Owns every Service; starts a service once the services it comes ``after`` are running."""

    def __init__(
        self,
        config: Config,
        *,
        spawner: Spawner,
        clock: Clock,
        bus: ev.EventBus,
        default_output: OutputMode,
    ) -> None:
        self.config = config
        self._spawner = spawner
        self._clock = clock
        self._bus = bus
        self._default_output = default_output
        self.services: dict[str, Service] = {}
        # Services that should run but wait for their `after` dependencies to be running.
        self._pending: set[str] = set()
        self._waiters: list[tuple[Callable[[], bool], asyncio.Future[None]]] = []
        self._reload_lock = asyncio.Lock()
        bus.subscribe(self._on_event)
        for service in config.services:
            self._add(service)

    # ------------------------------------------------------------------ views

    def summary(self) -> str:
        """Return a one-line summary such as "3 running, 1 failed"."""
        counts = Counter(str(s.state) for s in self.services.values())
        if not counts:
            return "no services configured"
        parts = [f"{n} {state}" for state, n in sorted(counts.items())]
        if self._pending:
            parts.append(f"{len(self._pending)} waiting for dependencies")
        return ", ".join(parts)

    # ------------------------------------------------------------------ start / stop

    def _add(self, config: ServiceConfig) -> Service:
        service = Service(
            config,
            spawner=self._spawner,
            clock=self._clock,
            bus=self._bus,
            output=config.output or self._default_output,
        )
        self.services[config.name] = service
        return service

    def start_all(self) -> None:
        """Start every service, each once its dependencies are running."""
        self._pending.update(self.services)
        self._start_ready()

    def start(self, name: str) -> None:
        """Start one service (after its dependencies). Raise KeyError if unknown."""
        service = self.services[name]
        if self._deps_running(service.config):
            self._pending.discard(name)
            service.start()
        else:
            self._pending.add(name)

    def is_pending(self, name: str) -> bool:
        """Return True if ``name`` should run but waits for its dependencies."""
        return name in self._pending

    def stop(self, name: str, reason: str = "stop requested") -> None:
        """Stop one service. Raise KeyError if unknown."""
        self._pending.discard(name)
        self.services[name].stop(reason)

    def _deps_running(self, config: ServiceConfig) -> bool:
        return all(
            dep in self.services and self.services[dep].state is ServiceState.RUNNING for dep in config.after
        )

    def _start_ready(self) -> None:
        for name in sorted(self._pending):
            service = self.services.get(name)
            if service is None:
                self._pending.discard(name)
            elif self._deps_running(service.config):
                self._pending.discard(name)
                service.start()

    def _on_event(self, event: ev.Event) -> None:
        if not isinstance(event, ev.ServiceStateChanged):
            return
        if event.new == ServiceState.RUNNING and self._pending:
            self._start_ready()
        for condition, future in list(self._waiters):
            if not future.done() and condition():
                future.set_result(None)
                self._waiters.remove((condition, future))

    async def wait_until(self, condition: Callable[[], bool]) -> None:
        """Return once ``condition()`` is true; it is re-checked on every state change."""
        if condition():
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        entry = (condition, future)
        self._waiters.append(entry)
        try:
            await future
        finally:
            if entry in self._waiters:
                self._waiters.remove(entry)

    async def wait_inactive(self, names: Iterable[str]) -> None:
        """Return once every named service that still exists is dead or failed."""
        names = tuple(names)
        await self.wait_until(
            lambda: all(n not in self.services or self.services[n].is_inactive for n in names)
        )

    def _stop_order(self, names: Iterable[str]) -> list[list[str]]:
        """Return ``names`` in layers: each layer only holds services nothing left depends on."""
        left = set(names)
        layers: list[list[str]] = []
        while left:
            depended = {dep for n in left for dep in self.services[n].config.after if dep in left}
            layer = sorted(left - depended) or sorted(left)  # a cycle cannot pass validation
            layers.append(layer)
            left -= set(layer)
        return layers

    async def stop_all(self, reason: str) -> None:
        """Stop every service, dependents before their dependencies; return when all are down."""
        await self.stop_many(self.services, reason)

    async def stop_many(self, names: Iterable[str], reason: str) -> None:
        """Stop the named services in reverse dependency order and wait until they are down."""
        for layer in self._stop_order(names):
            for name in layer:
                self.stop(name, reason)
            await self.wait_inactive(layer)

    # ------------------------------------------------------------------ reload

    def plan(self, new: Config) -> Plan:
        """Return what applying ``new`` would do, changing nothing."""
        return plan_reload(self.config, new)

    async def apply(self, new: Config) -> Plan:
        """Turn the running services into those of ``new``: only what changed is touched."""
        async with self._reload_lock:
            plan = plan_reload(self.config, new)
            gone = [*plan.removed, *(s.name for s in plan.changed)]
            await self.stop_many(gone, "configuration changed")
            for name in plan.removed:
                del self.services[name]
            for config in plan.updated:
                self.services[config.name].update_config(config)
            self.config = new
            for config in (*plan.changed, *plan.added):
                self._add(config)
                self._pending.add(config.name)
            self._start_ready()
            self._bus.publish(
                ev.ConfigApplied(
                    added=tuple(s.name for s in plan.added),
                    removed=plan.removed,
                    changed=tuple(s.name for s in (*plan.changed, *plan.updated)),
                    unchanged=len(plan.unchanged),
                )
            )
            return plan
