"""The set of services: instances, held sockets, ordered start and stop, reload plans, rolling restarts.

A configured service with ``instances: N`` becomes N units ``NAME@0`` .. ``NAME@N-1``, each its own
state machine; ``services`` is keyed by unit name. Commands accept a service name (all its units) or
one unit name.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections import Counter
from collections.abc import Callable, Iterable

from hasupd import events as ev
from hasupd.config.diff import ReloadPlan, plan_reload
from hasupd.config.model import Config, ServiceConfig
from hasupd.config.unitstate import UnitStates
from hasupd.host.sockets import HeldSocketStore, SocketSet
from hasupd.ports import Clock, Spawner, Watchers
from hasupd.service import Service, StartBatch
from hasupd.states import Health, OutputMode, ServiceResult, ServiceState

log = logging.getLogger(__name__)

INSTANCE_PLACEHOLDER = "{instance}"
# A restarted instance without health probes must stay running this long to count as back.
ROLLING_SETTLE_SEC = 1.0


def _fill(text: str, index: int) -> str:
    return text.replace(INSTANCE_PLACEHOLDER, str(index))


def instance_config(config: ServiceConfig, index: int) -> ServiceConfig:
    """Return ``config`` with ``{instance}`` replaced by ``index`` in command, environment and probes."""
    probes = tuple(
        dataclasses.replace(p, target=_fill(p.target, index), argv=tuple(_fill(a, index) for a in p.argv))
        for p in config.health
    )
    return dataclasses.replace(
        config,
        command=tuple(_fill(a, index) for a in config.command),
        environment=tuple((k, _fill(v, index)) for k, v in config.environment),
        health=probes,
        heartbeat_file=(
            dataclasses.replace(config.heartbeat_file, path=_fill(config.heartbeat_file.path, index))
            if config.heartbeat_file
            else None
        ),
    )


def expand(config: ServiceConfig) -> list[tuple[str, ServiceConfig]]:
    """Return the units of a configured service: [(unit name, its config)]."""
    if config.instances == 1:
        return [(config.name, config)]
    return [(f"{config.name}@{i}", instance_config(config, i)) for i in range(config.instances)]


class RollingRestartError(Exception):
    """A rolling restart stopped because an instance did not come back."""


class Manager:
    """Owns every unit; starts a unit once every unit of the services it comes ``after`` runs."""

    def __init__(
        self,
        config: Config,
        *,
        spawner: Spawner,
        clock: Clock,
        bus: ev.EventBus,
        default_output: OutputMode,
        watchers: Watchers | None = None,
        socket_store: HeldSocketStore | None = None,
    ) -> None:
        self.config = config
        # Held sockets a crashed hasupd left in systemd's fd store; new ones are kept there too.
        self._socket_store = socket_store
        self._spawner = spawner
        self._clock = clock
        self._bus = bus
        self._default_output = default_output
        self._watchers = watchers
        self.services: dict[str, Service] = {}  # by unit name
        self.units: dict[str, list[str]] = {}  # service name -> its unit names
        self._sockets: dict[str, SocketSet] = {}  # service name -> its held sockets
        # Units that should run but wait for their `after` dependencies to be running.
        self._pending: set[str] = set()
        self._waiters: list[tuple[Callable[[], bool], asyncio.Future[None]]] = []
        self._reload_lock = asyncio.Lock()
        self._stopping = False
        # hasupctl enable/disable/mask (None: every service is enabled, none masked).
        self.unit_states: UnitStates | None = None
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

    def publish(self, event: ev.Event) -> None:
        """Publish a record on the manager's bus (for procedures that act on services)."""
        self._bus.publish(event)

    def resolve(self, name: str) -> list[str]:
        """Return the unit names ``name`` stands for (a service: all its units). Raise KeyError."""
        if name in self.units:
            return list(self.units[name])
        if name in self.services:
            return [name]
        raise KeyError(name)

    def starts_at_boot(self, name: str) -> bool:
        """Return whether service ``name`` is started at boot and by a reload that adds it: not when it
        is disabled or masked, nor when it runs on a schedule (a timer starts it)."""
        config = self.config.service(name)
        if config is not None and config.schedule is not None:
            return False
        return self.unit_states is None or self.unit_states.starts_at_boot(name)

    def is_masked(self, name: str) -> bool:
        """Return whether service (or unit) ``name`` is masked: it cannot be started."""
        service = self.services.get(name)
        base = service.config.name if service is not None else name
        return self.unit_states is not None and base in self.unit_states.masked

    def is_pending(self, name: str) -> bool:
        """Return True if unit ``name`` should run but waits for its dependencies."""
        return name in self._pending

    # ------------------------------------------------------------------ start / stop

    def _add(self, config: ServiceConfig, sockets: SocketSet | None = None) -> None:
        if config.sockets and sockets is None:
            sockets = SocketSet(config.name, config.sockets, self._socket_store)
        if sockets is not None:
            self._sockets[config.name] = sockets
        units = expand(config)
        self.units[config.name] = [unit for unit, _ in units]
        for unit, unit_config in units:
            self.services[unit] = Service(
                unit_config,
                spawner=self._spawner,
                clock=self._clock,
                bus=self._bus,
                output=config.output or self._default_output,
                watchers=self._watchers,
                unit_name=unit,
                sockets=sockets,
            )

    def _remove(self, name: str, keep_sockets: bool) -> SocketSet | None:
        for unit in self.units.pop(name):
            self.services.pop(unit).close()
            self._pending.discard(unit)
        sockets = self._sockets.pop(name, None)
        if sockets is not None and not keep_sockets:
            sockets.close()
            return None
        return sockets

    def held_sockets(self) -> dict[str, SocketSet]:
        """Return service name -> its held listening sockets (for the state record)."""
        return dict(self._sockets)

    def start_all(self, only: Iterable[str] | None = None) -> None:
        """Start every service unit (or those of ``only``: the rest were carried over from an earlier
        image of hasupd in the state they had), each once its dependencies are running (backup jobs run
        on their schedules, not here)."""
        wanted = set(only) if only is not None else None
        for name, units in self.units.items():
            if self.is_placed(name) or not self.starts_at_boot(name):
                continue  # the fleet starts it while this host owns it; disabled: by hand only
            self._pending.update(u for u in units if wanted is None or u in wanted)
        self._start_ready()

    # ------------------------------------------------------------------ the fleet's part

    def is_placed(self, name: str) -> bool:
        """Return True if service ``name`` runs where the fleet places it (``fleet:`` and ``placement:``
        are both configured): this manager then starts it only through ``start_placed``."""
        config = self.config.service(name)
        return self.config.daemon.fleet is not None and config is not None and config.placement is not None

    def placed(self) -> dict[str, ServiceConfig]:
        """Return the placed services by name (empty without ``fleet:``)."""
        return {s.name: s for s in self.config.services if self.is_placed(s.name)}

    def start_placed(self, name: str, environment: dict[str, str]) -> None:
        """Start placed service ``name`` with ``environment`` added to its own (the fencing token and
        host); a restart after a crash keeps it. Raise KeyError if unknown."""
        self.placed_environment(name, environment)
        for unit in self.units[name]:
            self.start(unit)

    def placed_environment(self, name: str, environment: dict[str, str]) -> None:
        """Add ``environment`` to the config of placed service ``name``'s units (the next spawn, a
        restart after a crash, gets it); a running process keeps its own. Raise KeyError if unknown."""
        extra = tuple(environment.items())
        for unit in self.units[name]:
            service = self.services[unit]
            base = tuple((k, v) for k, v in service.config.environment if k not in environment)
            service.update_config(dataclasses.replace(service.config, environment=base + extra))

    def stop_placed(self, name: str, reason: str) -> None:
        """Stop every unit of placed service ``name`` (ownership lost, fenced, moved)."""
        for unit in self.units.get(name, ()):
            self.stop(unit, reason)

    def placed_inactive(self, name: str) -> bool:
        """Return True if no unit of ``name`` has a process (stopped, failed or never started)."""
        return all(self.services[u].is_inactive for u in self.units.get(name, ()))

    def placed_given_up(self, name: str) -> bool:
        """Return True if placed service ``name`` crash-looped here for good: every unit is failed with
        start-limit-hit and no recovery holds it (another host may do better)."""
        units = [self.services[u] for u in self.units.get(name, ())]
        return bool(units) and all(
            s.state is ServiceState.FAILED
            and s.result is ServiceResult.START_LIMIT_HIT
            and not s.incident_held
            for s in units
        )

    def add_job_unit(self, unit: Service) -> None:
        """Add a backup job's unit: listed and controlled like the others, started by its schedule."""
        self.services[unit.name] = unit

    def remove_job_unit(self, name: str) -> None:
        self.services.pop(name).close()

    async def stop_for_backup(self, names: list[str], reason: str) -> list[str]:
        """Stop the named services for a snapshot; return the units that ran and must be resumed."""
        units = [u for n in names for u in self.resolve(n) if not self.services[u].is_inactive]
        await self.stop_many(units, reason)
        return units

    async def stop_for_restore(self, names: list[str], reason: str) -> list[str]:
        """Stop the named services for a data swap; return the units to start on the restored data:
        those that ran and those that failed (a restore is often what they need), not those an
        operator stopped."""
        units = [u for n in names for u in self.resolve(n) if self.services[u].state is not ServiceState.DEAD]
        await self.stop_many(units, reason)
        return units

    def resume(self, units: list[str]) -> None:
        """Start units stopped for a backup again (unless hasupd is stopping everything)."""
        if self._stopping:
            return
        for unit in units:
            if unit in self.services:
                self.start(unit)

    def start(self, unit: str) -> None:
        """Start one unit (after its dependencies). Raise KeyError if unknown."""
        service = self.services[unit]
        if self._deps_running(service.config):
            self._pending.discard(unit)
            service.start()
        else:
            self._pending.add(unit)

    def stop(self, unit: str, reason: str = "stop requested") -> None:
        """Stop one unit. Raise KeyError if unknown."""
        self._pending.discard(unit)
        self.services[unit].stop(reason)

    def _deps_running(self, config: ServiceConfig) -> bool:
        return all(
            dep in self.units and all(self.services[u].state is ServiceState.RUNNING for u in self.units[dep])
            for dep in config.after
        )

    def _start_ready(self) -> None:
        # Starting a unit may publish "running" at once; the bus queues it behind the event being
        # delivered (FIFO), so this never recurses, however many units start.
        # The ready units are spawned together (StartBatch): their children exec in parallel.
        batch = StartBatch(self._bus)
        for unit in sorted(self._pending):
            service = self.services.get(unit)
            if service is None:
                self._pending.discard(unit)
            elif unit in self._pending and self._deps_running(service.config):
                self._pending.discard(unit)
                service.start(batch)
        batch.run()

    def _on_event(self, event: ev.Event) -> None:
        if not isinstance(event, ev.ServiceStateChanged | ev.HealthRecovered):
            return
        if isinstance(event, ev.ServiceStateChanged) and event.new == ServiceState.RUNNING and self._pending:
            self._start_ready()
        for condition, future in list(self._waiters):
            if not future.done() and condition():
                future.set_result(None)
                self._waiters.remove((condition, future))

    async def wait_until(self, condition: Callable[[], bool]) -> None:
        """Return once ``condition()`` is true; it is re-checked on every state or health change."""
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

    async def wait_inactive(self, units: Iterable[str]) -> None:
        """Return once every named unit that still exists is dead or failed."""
        units = tuple(units)
        await self.wait_until(
            lambda: all(n not in self.services or self.services[n].is_inactive for n in units)
        )

    def _stop_order(self, units: Iterable[str]) -> list[list[str]]:
        """Return ``units`` in layers: each layer only holds units nothing left depends on."""
        left = set(units)
        layers: list[list[str]] = []
        while left:
            depended = {
                dep_unit
                for u in left
                for dep in self.services[u].config.after
                for dep_unit in self.units.get(dep, ())
                if dep_unit in left
            }
            layer = sorted(left - depended) or sorted(left)  # a cycle cannot pass validation
            layers.append(layer)
            left -= set(layer)
        return layers

    async def stop_all(self, reason: str) -> None:
        """Stop every unit, dependents before their dependencies; return when all are down.

        Notify endpoints and held sockets are closed too: the manager is done after this.
        """
        self._stopping = True
        await self.stop_many(self.services, reason)
        for service in self.services.values():
            service.close()
        for sockets in self._sockets.values():
            sockets.close()

    async def stop_many(self, units: Iterable[str], reason: str) -> None:
        """Stop the named units in reverse dependency order and wait until they are down."""
        for layer in self._stop_order(units):
            for unit in layer:
                self.stop(unit, reason)
            await self.wait_inactive(layer)

    async def start_and_wait_healthy(self, units: list[str]) -> bool:
        """Start ``units`` and return whether all are running and healthy within their start timeouts
        (and, without probes, still running a moment later)."""
        services = [self.services[u] for u in units if u in self.services]
        if not services:
            return True
        for service in services:
            self.start(service.name)

        def up(s: Service) -> bool:
            return s.state is ServiceState.RUNNING and s.health in (None, Health.HEALTHY)

        def settled() -> bool:
            return all(s.state is ServiceState.FAILED or up(s) for s in services)

        bound = max(s.config.timeout_start_sec for s in services) + ROLLING_SETTLE_SEC
        try:
            await asyncio.wait_for(self.wait_until(settled), bound)
        except TimeoutError:
            return False
        invocations = [s.invocation for s in services]
        await asyncio.sleep(ROLLING_SETTLE_SEC)
        return all(up(s) and s.invocation == inv for s, inv in zip(services, invocations, strict=True))

    async def rolling_restart(self, name: str, healthy: Callable[[Service], bool]) -> list[str]:
        """Restart the units of ``name`` one at a time, each only after the previous one is back.

        Return the units restarted. Raise RollingRestartError (the rest left untouched) when a unit
        does not come back (running and ``healthy``) within its start timeout.
        """
        done: list[str] = []
        for unit in self.resolve(name):
            service = self.services[unit]
            service.restart()

            def back(s: Service = service) -> bool:
                return s.state is ServiceState.FAILED or (s.state is ServiceState.RUNNING and healthy(s))

            try:
                await asyncio.wait_for(
                    self.wait_until(back), service.config.timeout_start_sec + service.config.timeout_stop_sec
                )
            except TimeoutError:
                raise RollingRestartError(
                    f"{unit} did not come back within its timeouts; stopped after {done or 'none'}"
                ) from None
            if service.state is not ServiceState.RUNNING:
                raise RollingRestartError(f"{unit} is {service.state} ({service.result}); stopped there")
            if not service.config.health:
                # Without probes "back" can only mean "still running a moment later".
                invocation = service.invocation
                await asyncio.sleep(ROLLING_SETTLE_SEC)
                if service.state is not ServiceState.RUNNING or service.invocation != invocation:
                    raise RollingRestartError(
                        f"{unit} did not stay running ({service.state}, {service.result}); stopped there"
                    )
            done.append(unit)
        return done

    async def replace_config(self, name: str, config: ServiceConfig, reason: str) -> None:
        """Run service ``name`` with ``config`` instead of the one from its file (a rollback), keeping
        its sockets; status shows ``reason``. A later reload that changes its file replaces it again."""
        await self.stop_many(self.units[name], reason)
        # The open incident and its hold carry over to the replacement units.
        previous = {u: self.services[u] for u in self.units[name]}
        held = self._remove(name, keep_sockets=True)
        self._add(config, held)
        for unit in self.units[name]:
            service = self.services[unit]
            service.roll_back(reason)
            if unit in previous:
                service.carry_over(previous[unit])

    # ------------------------------------------------------------------ reload

    def plan(self, new: Config) -> ReloadPlan:
        """Return what applying ``new`` would do (services, backup jobs, alert channels), changing nothing."""
        return plan_reload(self.config, new)

    async def apply(self, new: Config) -> ReloadPlan:
        """Turn the running services into those of ``new``: only what changed is touched. Return the
        whole plan: its backup jobs' part is the backup setup's to apply; the alerts read the channels
        of ``self.config`` and learn of changed ones from config.applied."""
        async with self._reload_lock:
            whole = plan_reload(self.config, new)
            plan = whole.services
            old = {s.name: s for s in self.config.services}
            gone = [*plan.removed, *(s.name for s in plan.changed)]
            # A changed service that ran runs again, even if disabled (only boot and new ones ask).
            was_active = {n for n in gone if any(not self.services[u].is_inactive for u in self.units[n])}
            await self.stop_many([u for name in gone for u in self.units[name]], "configuration changed")
            kept_sockets: dict[str, SocketSet] = {}
            for name in plan.removed:
                self._remove(name, keep_sockets=False)
            for config in plan.changed:
                # Unchanged sockets stay bound across the restart: no connection is refused.
                same = old[config.name].sockets == config.sockets
                held = self._remove(config.name, keep_sockets=same)
                if held is not None:
                    kept_sockets[config.name] = held
            for config in plan.updated:
                for unit, unit_config in expand(config):
                    self.services[unit].update_config(unit_config)
            self.config = new
            for config in (*plan.changed, *plan.added):
                self._add(config, kept_sockets.get(config.name))
                wanted = self.starts_at_boot(config.name) or (
                    config.name in was_active and not self.is_masked(config.name)
                )
                if not self.is_placed(config.name) and wanted:
                    self._pending.update(self.units[config.name])
            self._start_ready()
            self._bus.publish(
                ev.ConfigApplied(
                    added=tuple(s.name for s in plan.added),
                    removed=plan.removed,
                    changed=tuple(s.name for s in (*plan.changed, *plan.updated)),
                    unchanged=len(plan.unchanged),
                    jobs_added=whole.jobs.added,
                    jobs_removed=whole.jobs.removed,
                    jobs_changed=whole.jobs.changed_names,
                    channels_added=whole.channels.added,
                    channels_removed=whole.channels.removed,
                    channels_changed=whole.channels.changed_names,
                )
            )
            return whole
