"""Builds hasupd's object graph from a Config: records, containment, spawners, the manager and its
observers (records read back, incident output, metrics, alerts), then backups and recovery.

Only construction lives here; ``hasupd.daemon`` owns the lifecycle (TaskGroup, signals, READY /
RELOADING / STOPPING, reload, ordered shutdown) and decides when each part starts and stops.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import sqlite3
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

from hasupd import __version__
from hasupd import events as ev
from hasupd.alerts.policy import Alerts
from hasupd.alerts.rules import Rules
from hasupd.backup.kinds import Kind
from hasupd.backup.units import BackupSetup, BackupUnits, setup_backups
from hasupd.config.model import DEFAULT_RUNTIME_DIR, Config, LogFormat, LogTarget
from hasupd.host.containment import Containment
from hasupd.host.output import journal_stream_available
from hasupd.host.reaper import Reaper
from hasupd.host.sockets import HeldSocketStore
from hasupd.manager import Manager
from hasupd.observe.error_groups import ErrorGroups
from hasupd.observe.error_store import ErrorStore, hourly_counts
from hasupd.observe.logs import LogSetup, log_events, setup_logging
from hasupd.observe.metrics import JobView, Metrics
from hasupd.observe.queries import RecordStore
from hasupd.observe.service_output import IncidentOutputCapture, ServiceOutput
from hasupd.recovery import Recovery
from hasupd.runtimes.container import (
    ContainerSpawner,
    EngineError,
    RoutingSpawner,
    cleanup_stale_containers,
    engine_environment,
)
from hasupd.runtimes.exec import ExecSpawner
from hasupd.states import OutputMode
from hasupd.watch.watchers import LoopWatchers


def containment_name(runtime_dir: Path) -> str:
    """Return the name of hasupd's cgroup: "hasupd" for the default runtime dir, else one per runtime dir.

    Two hasupd instances with different runtime dirs (tests, a user's own) never touch each other's
    services, even when one cleans up what it believes an earlier run of itself left behind.
    """
    if runtime_dir == Path(DEFAULT_RUNTIME_DIR):
        return "hasupd"
    digest = hashlib.sha256(str(runtime_dir.resolve()).encode()).hexdigest()[:10]
    return f"hasupd-{digest}"


T = TypeVar("T")

TASK_LOGGER = "hasupd.tasks"


class DaemonTasks:
    """The daemon's TaskGroup as a ``hasupd.ports.TaskSpawner``, handed down to every part that runs
    background work (so none of them imports or holds the TaskGroup itself).

    The parts are built before the daemon opens its TaskGroup, so it is attached later (``attach``). A
    task that raises an unexpected exception is recorded at CRITICAL level, naming the task, before the
    exception goes on into the TaskGroup, which cancels the rest and so stops hasupd (exit code 1).
    Outside the group's lifetime (stopping, or a standalone part) tasks run on the loop; their failures
    are recorded the same way.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._group: asyncio.TaskGroup | None = None
        self._loose: set[asyncio.Task[Any]] = set()
        self._log = logging.getLogger(TASK_LOGGER)

    def attach(self, group: asyncio.TaskGroup | None) -> None:
        """Start tasks in ``group`` from now on (None: the group has ended)."""
        self._group = group

    def spawn(self, coro: Coroutine[Any, Any, T], name: str) -> asyncio.Task[T]:
        """Run ``coro`` as task ``name`` under the TaskGroup; see the class docstring."""
        guarded = self._guard(coro, name)
        if self._group is not None:
            try:
                return self._group.create_task(guarded, name=name)
            except RuntimeError:  # the group is shutting down (a failure, or its end): run loose
                pass
        task = self._loop.create_task(guarded, name=name)
        self._loose.add(task)  # asyncio holds only weak references to tasks
        task.add_done_callback(self._loose.discard)
        return task

    def spawn_unnamed(self, coro: Coroutine[Any, Any, T]) -> asyncio.Task[T]:
        """``spawn`` for parts that take a plain ``spawn_task(coro)``: the task is named after the
        coroutine's function (``BackupUnits._run``)."""
        return self.spawn(coro, getattr(coro, "__qualname__", "task"))

    async def _guard(self, coro: Coroutine[Any, Any, T], name: str) -> T:
        try:
            return await coro
        except Exception as error:
            self._log.critical(
                "internal error in task %r: %s: %s; hasupd stops",
                name,
                type(error).__name__,
                error,
                exc_info=True,
            )
            raise


class LoopClock:
    """The event loop as the state machine's Clock."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop

    def time(self) -> float:
        return self._loop.time()

    def call_at(self, when: float, callback: Callable[[], object]) -> asyncio.TimerHandle:
        return self._loop.call_at(when, callback)


@dataclass
class Graph:
    """What ``build`` made: the parts the daemon starts, runs and closes (in reverse order)."""

    logs: LogSetup
    tasks: DaemonTasks
    containment: Containment
    reaper: Reaper
    programs: ExecSpawner
    containers: ContainerSpawner
    clock: LoopClock
    manager: Manager
    records: RecordStore
    capture: IncidentOutputCapture
    metrics: Metrics
    alerts: Alerts
    watchers: LoopWatchers
    errors: ErrorGroups
    rules: Rules


async def build(
    config: Config,
    bus: ev.EventBus,
    *,
    log_target: LogTarget | None = None,
    log_format: LogFormat | None = None,
    force_fallback_containment: bool = False,
    native_spawn: bool = True,
    socket_store: HeldSocketStore | None = None,
    keep: Callable[[Containment, Manager], frozenset[str]] | None = None,
) -> Graph:
    """Make the state and runtime dirs, set up logging, remove what an earlier run left behind (its
    containers, its cgroups) and build the object graph for ``config``; publish DaemonStarted.

    ``keep`` names the units whose processes survive that clean-up (to be adopted by the caller).
    ``log_target`` and ``log_format`` (from the command line) override the config's. Nothing is
    started: no service, no task (tasks go to ``Graph.tasks`` once the daemon attaches its TaskGroup).
    Must run on the event loop that will supervise.

    ``socket_store`` holds the listening sockets received back from systemd's fd store (a crashed
    hasupd's): services take theirs; the rest are closed and removed from the store here.
    """
    loop = asyncio.get_running_loop()
    log_cfg = config.daemon.log
    state_dir = Path(config.daemon.state_dir)
    runtime_dir = Path(config.daemon.runtime_dir)
    state_dir.mkdir(parents=True, exist_ok=True, mode=0o750)
    logs = setup_logging(
        log_target or log_cfg.target,
        log_format or log_cfg.format,
        records_dir=state_dir / "records",
        group=config.daemon.access.socket_group,
    )
    log_events(bus, logs.logger)
    # Traversable by everyone: services reach their notify sockets here; the control socket itself
    # is 0660.
    runtime_dir.mkdir(parents=True, exist_ok=True, mode=0o755)

    base_name = containment_name(runtime_dir)
    container_prefix = base_name + "-"
    engine_env = engine_environment(os.environ)
    # Before Containment.cleanup_stale: an engine removes a container best while its conmon lives.
    for engine in sorted({s.container.engine for s in config.services if s.container is not None}):
        try:
            removed = await cleanup_stale_containers(engine, container_prefix, engine_env=engine_env)
        except EngineError as error:
            logs.logger.warning("cannot remove the %s containers of an earlier run: %s", engine, error)
            continue
        if removed:
            logs.logger.info("removed %s containers of an earlier run: %s", engine, ", ".join(removed))
    containment = Containment.detect(
        base_name=base_name,
        force_fallback=force_fallback_containment,
        runtime_dir=runtime_dir,
    )
    reaper = Reaper(loop)
    programs = ExecSpawner(loop, containment, reaper, state_dir, native=native_spawn)
    tasks = DaemonTasks(loop)
    containers = ContainerSpawner(
        programs, reaper=reaper, name_prefix=container_prefix, engine_env=engine_env, tasks=tasks
    )
    await containers.preflight(config.services)  # spawn then never waits for the engine
    spawner = RoutingSpawner(programs, containers)
    default_output = OutputMode.JOURNAL if journal_stream_available() else OutputMode.FILE
    bus.publish(
        ev.DaemonStarted(
            version=__version__,
            config_dir=str(config.config_dir),
            containment=containment.describe(),
            spawn=programs.describe(),
        )
    )
    clock = LoopClock(loop)
    watchers = LoopWatchers(loop, clock, runtime_dir, reaper, tasks=tasks)
    manager = Manager(
        config,
        spawner=spawner,
        clock=clock,
        bus=bus,
        default_output=default_output,
        watchers=watchers,
        socket_store=socket_store,
    )
    if socket_store is not None:
        socket_store.release_unclaimed()
    # After the manager exists: what an earlier run left is killed, except the units to adopt.
    await containment.cleanup_stale(keep(containment, manager) if keep is not None else frozenset())
    # Records read back, incident output tails, metrics.
    service_output = ServiceOutput(bus, state_dir / "logs", reaper, manager)
    records = RecordStore(logs, service_output, reaper, bus)
    capture = IncidentOutputCapture(bus, service_output)
    metrics = Metrics(bus, manager, config.daemon.metrics.listen)
    alerts = Alerts(bus, manager, state_dir / "alerts", clock)  # email alerts, spool, delivery
    metrics.alert_spool_depth = lambda: alerts.depth
    # Error groups from the services' own output, and the rules evaluated on the event stream.
    store = ErrorStore(state_dir)
    if store.set_aside is not None:
        logs.logger.warning(
            "%s was not a database; moved to %s, error groups start afresh", store.path, store.set_aside
        )
    errors = ErrorGroups(bus, manager, state_dir, reaper, store=store)
    programs.watch_output(errors.wake)
    reader = errors.store.open_reader()

    class _History:
        def hourly(self, key: str, first_hour: int, last_hour: int) -> dict[int, int]:
            try:
                return hourly_counts(reader, key, first_hour, last_hour)
            except sqlite3.Error:  # no history readable: the baseline is 0, `above` still counts
                return {}

    def link(group: str, incident: str, when: float) -> None:
        errors.submit(errors.store.link, group, incident, when)

    rules = Rules(bus, manager, clock, _History(), link=link)
    return Graph(
        logs=logs,
        tasks=tasks,
        containment=containment,
        reaper=reaper,
        programs=programs,
        containers=containers,
        clock=clock,
        manager=manager,
        records=records,
        capture=capture,
        metrics=metrics,
        alerts=alerts,
        watchers=watchers,
        errors=errors,
        rules=rules,
    )


async def build_backups(
    config: Config,
    graph: Graph,
    bus: ev.EventBus,
    spawn_task: Callable[[Coroutine[Any, Any, None]], asyncio.Task[None]],
) -> BackupSetup:
    """Set up the backup job units of ``config`` and the recovery actions (which restore through
    them); tasks go to ``spawn_task`` (the daemon's TaskGroup). Return the backup setup."""
    state_dir = Path(config.daemon.state_dir)
    manager = graph.manager
    setup = await setup_backups(
        config.backups,
        {r.name: r for r in config.daemon.repositories},
        manager=manager,
        loop=asyncio.get_running_loop(),
        spawn_task=spawn_task,
        bus=bus,
        clock=graph.clock,
        state_dir=state_dir,
        reaper=graph.reaper,
    )
    backups = setup.units
    graph.metrics.backup_jobs = lambda: job_views(backups)
    Recovery(
        manager,
        bus=bus,
        state_dir=state_dir,
        reaper=graph.reaper,
        spawn_task=spawn_task,
        restorer_for=lambda job: backups.data_restorer(job, manager),
    )
    return setup


def job_views(units: BackupUnits) -> list[JobView]:
    """Return what the metrics show of each backup job: the age of its newest good backup (from the
    persisted stamps, so a restarted hasupd knows it) and its max_age."""
    now = datetime.now(UTC)
    views = []
    for name, runner in sorted(units.runners.items()):
        last = runner.job.stamps.get(name, str(Kind.BACKUP))
        age = (now - last).total_seconds() if last is not None else None
        views.append(JobView(job=name, age_sec=age, max_age_sec=runner.job.config.max_age_sec))
    return views
