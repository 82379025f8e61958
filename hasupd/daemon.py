"""The daemon: wires config, records, containment, the manager and systemd together under one TaskGroup."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import signal
import sys
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

from hasupd import __version__
from hasupd import events as ev
from hasupd.alerts.policy import Alerts
from hasupd.backup.units import BackupSetup, BackupUnits, setup_backups
from hasupd.config.diff import Plan
from hasupd.config.issues import ConfigError
from hasupd.config.load import load_config
from hasupd.config.model import DEFAULT_RUNTIME_DIR, Config, LogFormat, LogTarget
from hasupd.config.watch import ConfigWatch
from hasupd.control.context import CommandError, Context
from hasupd.control.protocol import Exit
from hasupd.control.server import ControlServer
from hasupd.host.containment import Containment
from hasupd.host.output import journal_available
from hasupd.host.reaper import Reaper
from hasupd.host.systemd import SystemdNotifier
from hasupd.manager import Manager
from hasupd.observe.logs import log_events, setup_logging
from hasupd.observe.metrics import Metrics
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


@dataclass(frozen=True)
class Options:
    config_dir: Path
    state_dir: Path | None = None
    runtime_dir: Path | None = None
    log_format: LogFormat | None = None
    log_target: LogTarget | None = None
    force_fallback_containment: bool = False
    no_watch: bool = False


def containment_name(runtime_dir: Path) -> str:
    """Return the name of hasupd's cgroup: "hasupd" for the default runtime dir, else one per runtime dir.

    Two hasupd instances with different runtime dirs (tests, a user's own) never touch each other's
    services, even when one cleans up what it believes an earlier run of itself left behind.
    """
    if runtime_dir == Path(DEFAULT_RUNTIME_DIR):
        return "hasupd"
    digest = hashlib.sha256(str(runtime_dir.resolve()).encode()).hexdigest()[:10]
    return f"hasupd-{digest}"


MAX_UNIX_PATH = 107  # sun_path holds 108 bytes with the terminating NUL


class LoopClock:
    """The event loop as the state machine's Clock."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop

    def time(self) -> float:
        return self._loop.time()

    def call_at(self, when: float, callback: Callable[[], object]) -> asyncio.TimerHandle:
        return self._loop.call_at(when, callback)


def read_config(options: Options) -> Config:
    """Load and validate the config, with the directories given on the command line applied.

    Raise ConfigError with every problem found.
    """
    config = load_config(options.config_dir)
    daemon = config.daemon
    if options.state_dir is not None:
        daemon = replace(daemon, state_dir=str(options.state_dir))
    if options.runtime_dir is not None:
        daemon = replace(daemon, runtime_dir=str(options.runtime_dir))
    return replace(config, daemon=daemon)


class Daemon:
    def __init__(self, options: Options) -> None:
        self.options = options
        self.bus = ev.EventBus()
        self.notifier = SystemdNotifier()
        self._stop = asyncio.Event()
        self._stop_reason = ""
        self._status_pending = False
        self._tasks: asyncio.TaskGroup | None = None
        self._reload_lock = asyncio.Lock()
        self.manager: Manager | None = None
        self.backups: BackupUnits | None = None
        self.backup_setup: BackupSetup | None = None

    def request_stop(self, reason: str) -> None:
        self._stop_reason = self._stop_reason or reason
        self._stop.set()

    async def run(self, config: Config) -> int:
        """Supervise until SIGTERM or SIGINT; return the exit code."""
        loop = asyncio.get_running_loop()
        log_cfg = config.daemon.log
        state_dir = Path(config.daemon.state_dir)
        runtime_dir = Path(config.daemon.runtime_dir)
        state_dir.mkdir(parents=True, exist_ok=True, mode=0o750)
        logs = setup_logging(
            self.options.log_target or log_cfg.target,
            self.options.log_format or log_cfg.format,
            records_dir=state_dir / "records",
            group=config.daemon.access.socket_group,
        )
        log_events(self.bus, logs.logger)
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
            force_fallback=self.options.force_fallback_containment,
            runtime_dir=runtime_dir,
        )
        containment.cleanup_stale()
        reaper = Reaper(loop)
        programs = ExecSpawner(loop, containment, reaper, state_dir)
        containers = ContainerSpawner(
            programs, reaper=reaper, name_prefix=container_prefix, engine_env=engine_env
        )
        spawner = RoutingSpawner(programs, containers)
        default_output = OutputMode.JOURNAL if journal_available() else OutputMode.FILE
        self.bus.publish(
            ev.DaemonStarted(
                version=__version__, config_dir=str(config.config_dir), containment=containment.describe()
            )
        )
        clock = LoopClock(loop)
        watchers = LoopWatchers(loop, clock, runtime_dir, reaper)
        manager = Manager(
            config,
            spawner=spawner,
            clock=clock,
            bus=self.bus,
            default_output=default_output,
            watchers=watchers,
        )
        self.manager = manager
        # Records read back, incident output tails, metrics.
        service_output = ServiceOutput(self.bus, state_dir / "logs", reaper, manager)
        records = RecordStore(logs, service_output, reaper, self.bus)
        capture = IncidentOutputCapture(self.bus, service_output)
        metrics = Metrics(self.bus, manager, config.daemon.metrics.listen)
        alerts = Alerts(self.bus, manager, state_dir / "alerts", clock)  # email alerts, spool, delivery
        metrics.alert_spool_depth = lambda: alerts.depth
        self.bus.subscribe(lambda event: self._schedule_status(loop, manager, event))
        watch = (
            None
            if self.options.no_watch
            else ConfigWatch(self.options.config_dir, loop, self._on_config_change)
        )

        try:
            async with asyncio.TaskGroup() as tasks:
                self._tasks = tasks
                context = Context(manager=manager, reloader=self, records=records, alerts=alerts)
                control = ControlServer(
                    runtime_dir / "control.sock",
                    context,
                    access=lambda: manager.config.daemon.access,
                    publish=self.bus.publish,
                    spawn=tasks.create_task,
                )
                await control.start()
                for sig, reason in ((signal.SIGTERM, "SIGTERM"), (signal.SIGINT, "SIGINT")):
                    loop.add_signal_handler(sig, self.request_stop, reason)
                loop.add_signal_handler(signal.SIGHUP, self._on_config_change)
                # Stopping hundreds of services sends a storm of SIGCHLD that fills asyncio's wake-up
                # pipe; the bytes it drops are surplus wake-ups (the reaper coalesces them anyway), not
                # worth a warning each on stderr. (asyncio sets the fd again with every handler added.)
                signal.set_wakeup_fd(signal.set_wakeup_fd(-1), warn_on_full_buffer=False)
                if watch is not None:
                    watch.start()
                pinger = tasks.create_task(self.notifier.run_watchdog(self.bus.publish))
                observers = (
                    tasks.create_task(capture.run()),
                    tasks.create_task(metrics.run()),
                    tasks.create_task(alerts.run()),
                )
                self.backup_setup = await setup_backups(
                    config.backups,
                    {r.name: r for r in config.daemon.repositories},
                    manager=manager,
                    loop=loop,
                    spawn_task=tasks.create_task,
                    bus=self.bus,
                    clock=clock,
                    state_dir=state_dir,
                    reaper=reaper,
                )
                self.backups = self.backup_setup.units
                context.backups = self.backups
                backups = self.backups
                Recovery(
                    manager,
                    bus=self.bus,
                    state_dir=state_dir,
                    reaper=reaper,
                    spawn_task=tasks.create_task,
                    restorer_for=lambda job: backups.data_restorer(job, manager),
                )
                manager.start_all()
                self.bus.publish(ev.DaemonReady(services=len(manager.services)))
                self.notifier.ready(manager.summary())
                await self._stop.wait()
                self.bus.publish(ev.DaemonStopping(reason=self._stop_reason))
                self.notifier.stopping()
                if watch is not None:
                    watch.stop()
                    watch = None
                await control.close()
                self.backups.close()
                await manager.stop_all("hasupd is stopping")
                await containers.wait_idle(30.0)  # removals of stopped containers
                pinger.cancel()
                for observer in observers:
                    observer.cancel()
        finally:
            for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                loop.remove_signal_handler(sig)
            if watch is not None:
                watch.stop()
            containers.close()
            programs.close()
            containment.close()
            reaper.close()
            self.notifier.close()
        self.bus.publish(ev.DaemonStopped())
        return 0

    def _on_config_change(self) -> None:
        """SIGHUP or a file change: reload in the background (reloads queue up, never overlap)."""
        if self._tasks is not None and not self._stop.is_set():
            self._tasks.create_task(self._reload_quietly())

    async def _reload_quietly(self) -> None:
        with contextlib.suppress(CommandError):  # already recorded as config.invalid
            await self.reload_plan(dry_run=False)

    async def reload_plan(self, dry_run: bool) -> Plan:
        """Re-read the config and return the plan; apply it unless ``dry_run``.

        Raise CommandError (after recording config.invalid) if the config is invalid: nothing changes.
        """
        assert self.manager is not None
        if dry_run:
            return self.manager.plan(await self._read_config_off_loop())
        # Held from reading to applying: two reloads read and apply in turn, so the newer files win.
        async with self._reload_lock:
            config = await self._read_config_off_loop()
            self.notifier.reloading()
            try:
                plan = await self.manager.apply(config)
                if self.backup_setup is not None:
                    await self.backup_setup.apply(
                        config.backups, {r.name: r for r in config.daemon.repositories}
                    )
            finally:
                self.notifier.ready(self.manager.summary())
        return plan

    async def _read_config_off_loop(self) -> Config:
        """Return the config read and validated in a worker thread, so that supervision (restarts,
        probes, the watchdog ping) goes on while a large or slow file is parsed.

        Raise CommandError (after recording config.invalid) if the config is invalid.
        """
        try:
            return await asyncio.to_thread(read_config, self.options)
        except ConfigError as error:
            self.bus.publish(ev.ConfigInvalid(errors=tuple(str(i) for i in error.issues)))
            raise CommandError(
                Exit.FAILED, "configuration invalid, nothing changed:\n" + str(error)
            ) from None

    def _schedule_status(self, loop: asyncio.AbstractEventLoop, manager: Manager, event: ev.Event) -> None:
        # One STATUS= per burst of state changes, not one per change.
        if isinstance(event, ev.ServiceStateChanged) and not self._status_pending:
            self._status_pending = True

            def send() -> None:
                self._status_pending = False
                self.notifier.status(manager.summary())

            loop.call_soon(send)


def run(options: Options) -> int:
    """Run the daemon in the foreground; return the process exit code."""
    try:
        config = read_config(options)
    except ConfigError as error:
        print(str(error), file=sys.stderr)
        return 1
    socket_path = os.fsencode(Path(config.daemon.runtime_dir) / "control.sock")
    if len(socket_path) > MAX_UNIX_PATH:
        print(
            f"{config.daemon.runtime_dir}: runtime_dir is too long for unix sockets "
            f"({len(socket_path)} bytes for control.sock, at most {MAX_UNIX_PATH}); choose a shorter one",
            file=sys.stderr,
        )
        return 1
    daemon = Daemon(options)
    return asyncio.run(daemon.run(config))


def check_config(options: Options) -> int:
    """Validate the configuration: exit code 0 quietly, or 1 with every error on stderr."""
    try:
        read_config(options)
    except ConfigError as error:
        print(str(error), file=sys.stderr)
        return 1
    return 0
