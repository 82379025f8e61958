"""The daemon's lifecycle: one TaskGroup, signals, READY / RELOADING / STOPPING towards systemd, reload,
ordered shutdown. What it runs is built by ``hasupd.build``."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import signal
import sys
import time
import uuid
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

from hasupd import __version__, handover, state_record
from hasupd import events as ev
from hasupd.backup.units import BackupSetup, BackupUnits
from hasupd.build import DaemonTasks, Graph, build, build_backups
from hasupd.config.diff import ReloadPlan
from hasupd.config.issues import ConfigError, ConfigIssue
from hasupd.config.load import load_config
from hasupd.config.model import Config, DaemonConfig, LogFormat, LogTarget
from hasupd.config.unitstate import UnitStates, UnreadableState
from hasupd.config.watch import ConfigWatch
from hasupd.control.context import CommandError, Context
from hasupd.control.protocol import Exit
from hasupd.control.server import ControlServer
from hasupd.host.procfs import release_free_heap
from hasupd.host.sockets import HeldSocketStore
from hasupd.host.systemd import FdStoreChannel, SystemdNotifier, take_listen_fds
from hasupd.manager import Manager
from hasupd.runtimes.container import ContainerSpawner
from hasupd.timers import Timers

if TYPE_CHECKING:
    from hasupd.fleet.controller import Fleet


@dataclass(frozen=True)
class Options:
    config_dir: Path
    state_dir: Path | None = None
    runtime_dir: Path | None = None
    log_format: LogFormat | None = None
    log_target: LogTarget | None = None
    force_fallback_containment: bool = False
    no_watch: bool = False
    vendor_dir: Path | None = None  # packages' services.d lives below it (None: none is read)
    no_clone3: bool = False  # the subprocess spawn path even where clone3 works


MAX_UNIX_PATH = 107  # sun_path holds 108 bytes with the terminating NUL


def read_config(options: Options, *, strict: bool = True) -> Config:
    """Load and validate the config, with the directories given on the command line applied; the
    template instances enabled in the state dir (``units.json``) are services too.

    Raise ConfigError with every problem found, an unreadable units.json included; with ``strict``
    False (``check-config``, which may run as a user who cannot read the state dir) such a units.json
    only leaves its instances out.
    """

    def instances(settings: DaemonConfig) -> set[str]:
        try:
            return UnitStates.load(options.state_dir or settings.state_dir).instances
        except UnreadableState:
            if strict:
                raise
            return set()

    try:
        config = load_config(options.config_dir, vendor_dir=options.vendor_dir, instances=instances)
    except UnreadableState as error:  # enable/disable/mask marks: guessing would start the wrong things
        raise ConfigError([ConfigIssue(str(error).partition(": ")[0], 1, 1, "", str(error))]) from None
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
        self._tasks: DaemonTasks | None = None
        self._reload_lock = asyncio.Lock()
        self.manager: Manager | None = None
        self.fleet: Fleet | None = None  # with fleet: in hasupd.yaml, once running
        self.containers: ContainerSpawner | None = None
        self.backups: BackupUnits | None = None
        self.backup_setup: BackupSetup | None = None
        self._reexec = False
        self.image = uuid.uuid4().hex  # this image of hasupd: a re-exec makes a new one, same pid
        self.last_reexec: dict[str, object] | None = None

    def request_stop(self, reason: str) -> None:
        self._stop_reason = self._stop_reason or reason
        self._stop.set()

    async def run(self, config: Config) -> int:
        """Supervise until SIGTERM or SIGINT; return the exit code."""
        loop = asyncio.get_running_loop()
        runtime_dir = Path(config.daemon.runtime_dir)
        state_dir = Path(config.daemon.state_dir)
        reexec_path = os.environ.pop(state_record.REEXEC_ENV, None)
        record_path = Path(reexec_path) if reexec_path else runtime_dir / state_record.RECORD_NAME
        body: dict[str, object] | None
        try:
            body = state_record.read(record_path)
            record_note = "restored"
        except state_record.UnreadableRecord as error:
            body = None
            # No record (a clean stop removed it) is "none"; one that is there but damaged says so.
            present = reexec_path is not None or os.path.lexists(record_path)
            record_note = f"unreadable ({error}); adopted what runs instead" if present else "none"
        graph = await build(
            config,
            self.bus,
            log_target=self.options.log_target,
            log_format=self.options.log_format,
            force_fallback_containment=self.options.force_fallback_containment,
            native_spawn=not self.options.no_clone3,
            # Under systemd: held sockets a crashed hasupd left in the fd store come back here.
            socket_store=HeldSocketStore(FdStoreChannel(), take_listen_fds()),
            keep=lambda containment, manager: handover.kept_units(body, containment, manager),
        )
        manager = self.manager = graph.manager
        manager.unit_states = UnitStates.load(state_dir)  # read moments ago by read_config
        self.containers = graph.containers
        previous = state_record.write_marker(state_dir) if not reexec_path else None
        restored = handover.restore(
            body,
            reexec=reexec_path is not None,
            manager=manager,
            programs=graph.programs,
            containment=graph.containment,
            watchers=graph.watchers,
            bus=self.bus,
            record=record_note,
        )
        self._report_restore(restored, reexec_path is not None, previous, loop.time())
        # Placed services start only while this host owns them (nothing without fleet:). Built before
        # the loop runs anything else: the carried ones get their token back before any restart, and
        # the placed ones nobody handed over stop at once.
        fleet: Fleet | None = None
        if config.daemon.fleet is not None:  # the fleet stack (etcd client, http.client) only with fleet:
            from hasupd.fleet.controller import build_fleet  # noqa: PLC0415
            from hasupd.fleet.node import CRASH_RESTART, REEXEC  # noqa: PLC0415

            fleet = build_fleet(
                config.daemon.fleet,
                manager,
                self.bus.publish,
                handed_over=body.get("fleet") if body is not None else None,
                how=REEXEC if reexec_path else CRASH_RESTART,
            )
        keeper = handover.RecordKeeper(
            runtime_dir / state_record.RECORD_NAME, manager, graph.programs, self.bus
        )
        if fleet is not None:
            keeper.fleet = fleet.node.hand_over
        keeper.write_now()
        self.bus.subscribe(lambda event: self._schedule_status(loop, manager, event))
        watch = (
            None
            if self.options.no_watch
            else ConfigWatch(self.options.config_dir, loop, self._on_config_change)
        )
        try:
            async with asyncio.TaskGroup() as group:
                tasks = self._tasks = graph.tasks
                tasks.attach(group)
                context = Context(
                    manager=manager,
                    reloader=self,
                    records=graph.records,
                    alerts=graph.alerts,
                    errors=graph.errors,
                    vendor_dir=str(self.options.vendor_dir) if self.options.vendor_dir else None,
                )
                control = ControlServer(
                    runtime_dir / "control.sock",
                    context,
                    access=lambda: manager.config.daemon.access,
                    publish=self.bus.publish,
                    spawn=lambda coro: tasks.spawn(coro, "control connection"),
                )
                await control.start(restored.control_fd)
                self._handle_signals(loop)
                if watch is not None:
                    watch.start()
                pinger = tasks.spawn(self.notifier.run_watchdog(self.bus.publish), "systemd watchdog")
                observers = [
                    tasks.spawn(graph.capture.run(), "incident output capture"),
                    tasks.spawn(graph.metrics.run(), "metrics"),
                    tasks.spawn(graph.alerts.run(), "alerts"),
                    tasks.spawn(graph.errors.run(), "error groups"),
                ]
                if config.daemon.web is not None:
                    # Imported here, once the units are restored or adopted, and only when configured:
                    # aiohttp takes ~0.2 s to import, which check-config need not pay, nor a re-exec's
                    # unsupervised window. web: is read at start; a reload checks it but does not move it.
                    from hasupd.web.server import Dashboard  # noqa: PLC0415

                    dashboard = Dashboard(config.daemon.web, context, self.bus)
                    observers.append(tasks.spawn(dashboard.run(), "dashboard"))
                # Units a backup had stopped when the last hasupd ended run again with the others.
                resumed: list[str] = []

                def collect(event: ev.Event) -> None:
                    if isinstance(event, ev.BackupResumed):
                        resumed.extend(event.units)

                unsubscribe = self.bus.subscribe(collect)
                self.backup_setup = await build_backups(config, graph, self.bus, tasks.spawn_unnamed)
                unsubscribe()
                self.backups = context.backups = self.backup_setup.units
                manager.start_all([*restored.to_start, *resumed])
                timers = context.timers = Timers(manager, state_dir, loop)
                timers.sync()
                self.bus.subscribe(
                    lambda event: timers.sync() if isinstance(event, ev.ConfigApplied) else None
                )
                self.fleet = context.fleet = fleet
                fleet_task = tasks.spawn(fleet.node.run(), "fleet") if fleet is not None else None
                if fleet is not None:
                    graph.metrics.fleet_lease_age = fleet.node.lease_age
                self.bus.publish(ev.DaemonReady(services=len(manager.services)))
                self.notifier.ready(manager.summary())
                loop.call_later(SETTLE_SEC, settle_memory)
                while True:
                    await self._stop.wait()
                    if not self._reexec:
                        break
                    async with self._reload_lock:  # a reload under way is applied first, not cut off
                        self._exec_new_image(manager, graph, control)  # returns only if it failed
                    self._reexec = False
                    self._stop_reason = ""
                    self._stop.clear()
                keeper.close()
                timers.close()
                self.bus.publish(ev.DaemonStopping(reason=self._stop_reason))
                self.notifier.stopping()
                if watch is not None:
                    watch.stop()
                    watch = None
                await control.close()
                self.backups.close()
                if fleet is not None and fleet_task is not None:
                    fleet_task.cancel()
                    await fleet.leave()  # placed services stop first, then the lease is revoked
                await manager.stop_all("hasupd is stopping")
                await graph.containers.wait_idle(30.0)  # removals of stopped containers
                pinger.cancel()
                for observer in observers:
                    observer.cancel()
                # A clean stop: nothing runs, nothing to adopt, and the next start is no crash recovery.
                (runtime_dir / state_record.RECORD_NAME).unlink(missing_ok=True)
                state_record.clear_marker(state_dir)
        finally:
            graph.tasks.attach(None)
            for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                loop.remove_signal_handler(sig)
            if watch is not None:
                watch.stop()
            graph.containers.close()
            graph.programs.close()
            graph.containment.close()
            graph.reaper.close()
            graph.errors.close()
            self.notifier.close()
        self.bus.publish(ev.DaemonStopped())
        return 0

    # ------------------------------------------------------------------ re-exec and adoption

    def request_reexec(self) -> dict[str, object]:
        """Re-execute once the current request is answered (see ``_exec_new_image``)."""
        if self._stop.is_set():
            raise CommandError(Exit.FAILED, "hasupd is stopping or already re-executing")
        self._reexec = True
        self.request_stop("daemon-reexec")
        return {"pid": os.getpid(), "from_version": __version__, "image": self.image}

    def daemon_info(self) -> dict[str, object]:
        return {
            "version": __version__,
            "pid": os.getpid(),
            "image": self.image,
            "last_reexec": self.last_reexec,
        }

    def _exec_new_image(self, manager: Manager, graph: Graph, control: ControlServer) -> None:
        """Write the state record, keep the fds that must survive, and execve the same hasupd (same argv,
        same pid) with the record named in HASUPD_REEXEC_RECORD. Nothing is stopped or closed first:
        children stay children, sockets stay bound. Return only if execve failed (hasupd carries on)."""
        runtime_dir = Path(manager.config.daemon.runtime_dir)
        path = runtime_dir / "reexec.record"
        try:
            fleet = self.fleet.node.hand_over() if self.fleet is not None else None
            body = handover.capture(manager, graph.programs, "reexec", fleet=fleet)
            notify_fds = {
                unit: fd
                for unit, endpoint in graph.watchers.endpoints.items()
                if (fd := endpoint.fileno()) is not None
            }
            handover.keep_fds(
                body,
                manager=manager,
                programs=graph.programs,
                notify_fds=notify_fds,
                control_fd=control.listening_fd(),
            )
            state_record.write(path, body)
            for handler in (*logging.getLogger().handlers, *graph.logs.logger.handlers):
                handler.flush()  # every record so far is written before the image goes
            sys.stdout.flush()
            sys.stderr.flush()
            env = dict(os.environ)
            env[state_record.REEXEC_ENV] = str(path)
            env[state_record.REEXEC_FROM_ENV] = f"{__version__} {time.monotonic()}"
            os.execve(sys.executable, list(sys.orig_argv), env)
        except OSError as error:
            self.bus.publish(ev.DaemonReexecFailed(error=str(error)))

    def _report_restore(
        self, restored: handover.Restored, reexec: bool, previous: int | None, now: float
    ) -> None:
        """Publish daemon.reexec, or daemon.crashed with an incident when the last run did not stop."""
        if reexec:
            unsupervised = now - restored.written_monotonic if restored.written_monotonic else 0.0
            self.last_reexec = {
                "from_version": restored.from_version or "unknown",
                "to_version": __version__,
                "unsupervised_sec": round(unsupervised, 6),
                "record": restored.record,
                "carried": restored.carried,
                "adopted": restored.adopted,
                "lost": restored.lost,
            }
            self.bus.publish(
                ev.DaemonReexec(
                    from_version=restored.from_version or "unknown",
                    to_version=__version__,
                    unsupervised_sec=round(unsupervised, 6),
                    record=restored.record,
                    adopted=restored.carried,
                )
            )
            return
        if previous is None:
            return
        incident = uuid.uuid4().hex[:12]
        detail = (
            f"adopted {len(restored.adopted)} running unit(s)"
            + (f", restarted {len(restored.restarted)} whose config changed" if restored.restarted else "")
            + (f", {len(restored.lost)} recorded as running were gone" if restored.lost else "")
            + (
                f"; its state record was {restored.record}"
                if restored.record.startswith("unreadable")
                else ""
            )
        )
        reason = f"hasupd (pid {previous or 'unknown'}) did not stop cleanly: killed, crashed or aborted"
        self.bus.publish(ev.IncidentOpened(reason=reason, incident=incident))
        self.bus.publish(ev.DaemonCrashed(previous_pid=previous or None, detail=detail, incident=incident))
        self.bus.publish(ev.IncidentClosed(outcome="resolved", incident=incident))

    def _handle_signals(self, loop: asyncio.AbstractEventLoop) -> None:
        """SIGTERM and SIGINT stop hasupd; SIGHUP reloads its config."""
        for sig, reason in ((signal.SIGTERM, "SIGTERM"), (signal.SIGINT, "SIGINT")):
            loop.add_signal_handler(sig, self.request_stop, reason)
        loop.add_signal_handler(signal.SIGHUP, self._on_config_change)
        # Stopping hundreds of services sends a storm of SIGCHLD that fills asyncio's wake-up
        # pipe; the bytes it drops are surplus wake-ups (the reaper coalesces them anyway), not
        # worth a warning each on stderr. (asyncio sets the fd again with every handler added.)
        signal.set_wakeup_fd(signal.set_wakeup_fd(-1), warn_on_full_buffer=False)

    def _on_config_change(self) -> None:
        """SIGHUP or a file change: reload in the background (reloads queue up, never overlap)."""
        if self._tasks is not None and not self._stop.is_set():
            self._tasks.spawn(self._reload_quietly(), "reload")

    async def _reload_quietly(self) -> None:
        with contextlib.suppress(CommandError):  # already recorded as config.invalid
            await self.reload_plan(dry_run=False)

    async def reload_plan(self, dry_run: bool) -> ReloadPlan:
        """Re-read the config and return the one plan (services, backup jobs, alert channels); apply it
        unless ``dry_run``: the manager its services' part, the backup setup its jobs' part.

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
                if self.containers is not None:  # images of new or changed containers, off the loop
                    await self.containers.preflight(config.services)
                plan = await self.manager.apply(config)
                if self.fleet is not None:
                    # Placed services the reload replaced start again where they are owned. A change
                    # of fleet: itself (cluster, host, TTL) takes effect when hasupd restarts.
                    self.fleet.reconfigure(
                        {s.name for s in (*plan.services.changed, *plan.services.added)},
                        {s.name for s in plan.services.updated},
                    )
                if self.backup_setup is not None:
                    await self.backup_setup.apply(plan.jobs, config)
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


# After the start, once its burst is over: what reading the config and starting left behind is freed
# and handed back to the kernel (500 services: ~1.5 MB less resident for as long as hasupd runs).
SETTLE_SEC = 1.0


def settle_memory() -> None:
    """Collect the start's cyclic garbage (node trees of the config files, ...) and trim the C heap."""
    gc.collect()
    release_free_heap()


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
        read_config(options, strict=False)
    except ConfigError as error:
        print(str(error), file=sys.stderr)
        return 1
    return 0
