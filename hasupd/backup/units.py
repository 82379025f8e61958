"""Backup jobs as oneshot units: one state machine, one restart policy, one status view with services.

Each job is a ``Service`` of type oneshot whose "process" is an asyncio task running the job's steps
(JobSpawner): stopping it cancels the task, which stops restic with SIGINT and resumes quiesced
services. A retryable failure (restic failed before a snapshot existed) exits 1 and is restarted with
backoff; a failure that a retry cannot fix (a failing ``before`` command, a damaged repository, a
refused retention plan) exits 2, which the unit's ``restart_prevent_exit_status`` keeps from retrying.
Schedules are wall-clock timers per job, re-armed after each run; nothing ticks over all jobs.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
from collections.abc import Callable, Coroutine
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hasupd import events as ev
from hasupd.backup.kinds import JobFailed, Kind
from hasupd.backup.leftovers import recover_files, remove_stale_locks, stop_leftovers
from hasupd.config.diff import Changes
from hasupd.config.model import BackupJobConfig, Config, ServiceConfig, StartLimit
from hasupd.ports import ExitStatus, SpawnSpec
from hasupd.service import Service
from hasupd.states import OutputMode, RestartMode, ServiceState, ServiceType

if TYPE_CHECKING:
    # The backup stack proper (restic, plumbum, databases, drills) is imported with the first job
    # (BackupSetup.add) or restore: a config without backup jobs never loads it.
    from hasupd.backup.dbrestore import DatabaseRestorer
    from hasupd.backup.jobs import BackupJob
    from hasupd.backup.restore import LatestInPlace, Restorer

EXIT_RETRY = 1
EXIT_NO_RETRY = 2
# Long timers are re-armed at least this often, so a wall-clock jump is noticed within it.
MAX_TIMER_SEC = 3600.0


def job_unit_config(job: BackupJobConfig, retry_sec: float = 30.0) -> ServiceConfig:
    """Return the oneshot unit config that runs ``job``."""
    return ServiceConfig(
        name=job.name,
        source=job.source,
        description=f"backup job {job.name}",
        type=ServiceType.ONESHOT,
        restart=RestartMode.ON_FAILURE,
        restart_sec=retry_sec,
        restart_max_delay_sec=max(retry_sec, 600.0),
        restart_prevent_exit_status=(EXIT_NO_RETRY,),
        start_limit=StartLimit(burst=5, interval_sec=6 * 3600.0),
        timeout_stop_sec=60.0,
    )


class _JobScope:
    kind = "job"

    def __init__(self, cancel: Callable[[], bool]) -> None:
        self._cancel = cancel

    def pids(self) -> set[int]:
        return set()  # restic runs as a child of the job task and is stopped through it

    def signal_all(self, sig: int) -> int:
        return 1 if self._cancel() else 0

    def signal_main(self, sig: int) -> int:
        return self.signal_all(sig)

    def holds(self, pid: int) -> bool:
        return False  # a job has no processes of its own that could speak sd_notify

    def kill_all(self) -> int:
        return 1 if self._cancel() else 0

    def release(self) -> None:
        pass


class _JobProcess:
    def __init__(self, task: asyncio.Task[None]) -> None:
        self._task = task
        self.scope = _JobScope(self._cancel)

    @property
    def pid(self) -> int:
        return os.getpid()  # the work happens inside hasupd

    def _cancel(self) -> bool:
        if self._task.done():
            return False
        self._task.cancel()
        return True

    def send_signal(self, sig: int) -> None:
        self._cancel()


class JobRunner:
    """A job with its schedule: which kinds of work are due, and the timers that say when."""

    def __init__(self, job: BackupJob) -> None:
        self.job = job
        self.pending: list[Kind] = []
        self.attempted: dict[Kind, datetime] = {}  # in memory: after a restart every failed kind is retried
        self.unit: Service | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._stale_timer: asyncio.TimerHandle | None = None
        self._stale_reported = False
        self._restorable_timer: asyncio.TimerHandle | None = None
        self._restorable_reported = False

    def schedules(self) -> dict[Kind, str]:
        cfg = self.job.config
        out = {Kind.BACKUP: cfg.schedule, Kind.PRUNE: cfg.prune_schedule}
        if cfg.long_term is not None:
            out[Kind.LONG_TERM] = cfg.long_term.schedule
        if cfg.check is not None:
            out[Kind.CHECK] = cfg.check.schedule
        if cfg.drill is not None:
            out[Kind.DRILL] = cfg.drill.schedule
        return out

    def next_runs(self, now: datetime) -> dict[Kind, datetime]:
        """Return when each kind of work is next due: the slot after its last success or attempt
        (a failed attempt is retried by the unit's restart policy, then waits for the next slot)."""
        from hasupd.backup.schedule import next_due, stable_offset  # noqa: PLC0415  (with a job only)

        offset = stable_offset(self.job.config.name, self.job.config.randomized_delay_sec)
        out = {}
        for kind, expr in self.schedules().items():
            done = self.job.stamps.get(self.job.config.name, str(kind))
            tried = self.attempted.get(kind)
            last = max((t for t in (done, tried) if t is not None), default=None)
            out[kind] = next_due(expr, last, now, offset_sec=offset)
        return out

    def request(self, kind: Kind) -> None:
        if kind not in self.pending:
            self.pending.append(kind)

    def cancel_timers(self) -> None:
        for timer in (self._timer, self._stale_timer, self._restorable_timer):
            if timer is not None:
                timer.cancel()
        self._timer = self._stale_timer = self._restorable_timer = None


class BackupUnits:
    """Owns the job units: spawns their work, schedules them, watches max_age."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        spawn_task: Callable[[Coroutine[Any, Any, None]], asyncio.Task[None]],
        publish: Callable[[ev.Event], None],
    ) -> None:
        self._loop = loop
        self._spawn_task = self.spawn_task = spawn_task
        self._publish = publish
        self.runners: dict[str, JobRunner] = {}
        self._closed = False
        self._unlocking: set[asyncio.Task[None]] = set()

    # ------------------------------------------------------------------ Spawner

    def spawn(self, spec: SpawnSpec, on_exit: Callable[[ExitStatus], None]) -> _JobProcess:
        runner = self.runners[spec.service.name]
        kinds = list(runner.pending) or [Kind.BACKUP]
        task = self._spawn_task(self._run(runner, kinds, on_exit))
        return _JobProcess(task)

    async def _run(self, runner: JobRunner, kinds: list[Kind], on_exit: Callable[[ExitStatus], None]) -> None:
        pid = os.getpid()
        started = datetime.now(UTC)
        for kind in kinds:
            runner.attempted[kind] = started
        try:
            await runner.job.run(kinds)
        except JobFailed as failure:
            if not failure.retry:
                runner.pending.clear()  # the next scheduled slot tries again
            on_exit(ExitStatus(pid, code=EXIT_RETRY if failure.retry else EXIT_NO_RETRY))
            return
        except asyncio.CancelledError:
            on_exit(ExitStatus(pid, signal=signal.SIGTERM))
            raise
        for kind in kinds:
            if kind in runner.pending:
                runner.pending.remove(kind)
        on_exit(ExitStatus(pid, code=0))

    # ------------------------------------------------------------------ scheduling

    def add(self, runner: JobRunner, unit: Service, *, arm: bool = True) -> None:
        """Own ``runner``; with ``arm``, start its schedule (at start-up: after recover_interrupted)."""
        runner.unit = unit
        self.runners[runner.job.config.name] = runner
        if arm:
            self.arm(runner)

    def arm(self, runner: JobRunner) -> None:
        """Start the schedule and max_age timers of ``runner`` (due work starts at once)."""
        self._arm(runner)
        self._arm_stale(runner)

    async def recover_interrupted(self, owner: str, grace_sec: float = 30.0) -> None:
        """Before any job runs or service starts: stop the restic processes an earlier hasupd on this
        state dir left running, undo its interrupted restores, record it (leftovers.py); then arm the
        schedules: at once, or for an interrupted job once its stale locks are removed (in the
        background, so that an unreachable repository holds back no service)."""
        leftovers = await stop_leftovers(owner, grace_sec)
        for runner in self.runners.values():
            if recover_files(runner.job, leftovers, self._publish):
                task = self._spawn_task(self._unlock_then_arm(runner))
                self._unlocking.add(task)
                task.add_done_callback(self._unlocking.discard)
            else:
                self.arm(runner)
        known = {
            r.repo.url for runner in self.runners.values() for r in (runner.job.hot, runner.job.cold) if r
        }
        strays = [
            f"pid {lo.pid} ({how}): {lo.command}" for lo, how in leftovers if lo.repository not in known
        ]
        if strays:
            # A repository no job uses any more: its processes are stopped, its locks stay.
            self._publish(ev.BackupInterrupted(job="", operations=(), cleaned=tuple(strays)))

    async def _unlock_then_arm(self, runner: JobRunner) -> None:
        await remove_stale_locks(runner.job, self._publish)
        if not self._closed and self.runners.get(runner.job.config.name) is runner:
            self.arm(runner)

    def remove(self, name: str) -> JobRunner | None:
        runner = self.runners.pop(name, None)
        if runner is not None:
            runner.cancel_timers()
        return runner

    def close(self) -> None:
        self._closed = True
        for task in self._unlocking:
            task.cancel()  # restic is stopped with SIGINT by the cancellation
        for runner in self.runners.values():
            runner.cancel_timers()

    def restorer(self, name: str, manager: Any) -> Restorer | None:
        """Return a Restorer for job ``name`` acting on ``manager``'s services, or None if unknown."""
        runner = self.runners.get(name)
        if runner is None:
            return None
        from hasupd.backup.restore import Restorer  # noqa: PLC0415  (see TYPE_CHECKING above)

        return Restorer(runner.job, manager.publish, manager.stop_for_restore, manager.start_and_wait_healthy)

    def database_restorer(self, name: str, manager: Any) -> DatabaseRestorer | None:
        """Return a DatabaseRestorer for job ``name`` acting on ``manager``'s services, or None."""
        runner = self.runners.get(name)
        if runner is None:
            return None
        job = runner.job
        from hasupd.backup.dbrestore import DatabaseRestorer  # noqa: PLC0415

        return DatabaseRestorer(
            job, job.reaper, manager.publish, manager.stop_for_restore, manager.start_and_wait_healthy
        )

    def data_restorer(self, name: str, manager: Any) -> LatestInPlace | None:
        """Return the recovery action's view of job ``name`` (restore the latest in place), or None."""
        restorer = self.restorer(name, manager)
        if restorer is None:
            return None
        from hasupd.backup.restore import LatestInPlace  # noqa: PLC0415

        return LatestInPlace(restorer)

    def run_now(self, name: str, kind: Kind = Kind.BACKUP) -> None:
        """Queue ``kind`` for job ``name`` and start its unit if it is idle. Raise KeyError."""
        runner = self.runners[name]
        runner.request(kind)
        self._start(runner)

    def _start(self, runner: JobRunner) -> None:
        unit = runner.unit
        assert unit is not None
        if unit.state is ServiceState.FAILED:
            unit.reset_failed()
        if unit.state is ServiceState.DEAD:
            unit.start()

    def on_unit_inactive(self, name: str) -> None:
        """A job unit finished: schedule its next work (and run queued work at once)."""
        runner = self.runners.get(name)
        if runner is None or self._closed:
            return
        if runner.unit is not None and runner.unit.state is ServiceState.DEAD and runner.pending:
            self._start(runner)
        self._arm(runner)
        self._arm_stale(runner)

    def _arm(self, runner: JobRunner) -> None:
        if runner._timer is not None:
            runner._timer.cancel()
        now = datetime.now(UTC)
        runs = runner.next_runs(now)
        due = [kind for kind, when in runs.items() if when <= now]
        if due:
            for kind in due:
                runner.request(kind)
            if runner.unit is not None and runner.unit.is_inactive:
                self._start(runner)
            runs = {k: v for k, v in runs.items() if k not in due}
        if not runs:
            runner._timer = None
            return
        delay = min(MAX_TIMER_SEC, max(0.0, (min(runs.values()) - now).total_seconds()))
        runner._timer = self._loop.call_later(delay, self._arm, runner)

    def _arm_restorable(self, runner: JobRunner) -> None:
        """Boot drills: publish drill.stale when the snapshot that last booted is older than twice the
        drill schedule's period (one missed drill is tolerated); look again when that can change."""
        drill = runner.job.config.drill
        if drill is None or not drill.boot:
            return
        if runner._restorable_timer is not None:
            runner._restorable_timer.cancel()
        now = datetime.now(UTC)
        from hasupd.backup.schedule import schedule_period  # noqa: PLC0415  (with a job only)

        allowed = 2 * schedule_period(drill.schedule, now)
        job = runner.job.config.name
        since = runner.job.restorable_as_of()
        if since is None:
            since = runner.job.stamps.get(job, "watched") or now
            age, reported = (now - since).total_seconds(), None
        else:
            age = (now - since).total_seconds()
            reported = age
        if age >= allowed:
            if not runner._restorable_reported:
                runner._restorable_reported = True
                self._publish(ev.DrillStale(job=job, age_sec=reported, allowed_sec=allowed))
            delay = allowed
        else:
            runner._restorable_reported = False
            delay = allowed - age
        runner._restorable_timer = self._loop.call_later(
            min(delay, MAX_TIMER_SEC), self._arm_restorable, runner
        )

    def _arm_stale(self, runner: JobRunner) -> None:
        self._arm_restorable(runner)
        max_age = runner.job.config.max_age_sec
        if max_age is None:
            return
        if runner._stale_timer is not None:
            runner._stale_timer.cancel()
        job = runner.job.config.name
        last = runner.job.stamps.get(job, str(Kind.BACKUP))
        now = datetime.now(UTC)
        if last is None:
            # Never succeeded: measured from when hasupd started watching it.
            started = runner.job.stamps.get(job, "watched")
            if started is None:
                runner.job.stamps.set(job, "watched", now)
                started = now
            age = (now - started).total_seconds()
            reported_age = None
        else:
            age = (now - last).total_seconds()
            reported_age = age
        if age >= max_age:
            if not runner._stale_reported:
                runner._stale_reported = True
                self._publish(ev.BackupStale(job=job, age_sec=reported_age, max_age_sec=max_age))
            delay = max_age  # look again later; one record per stale period
        else:
            runner._stale_reported = False
            delay = max_age - age
        runner._stale_timer = self._loop.call_later(min(delay, MAX_TIMER_SEC), self._arm_stale, runner)


class BackupSetup:
    """Creates, replaces and removes job units (at start and on reload)."""

    def __init__(
        self,
        units: BackupUnits,
        *,
        manager: Any,
        bus: ev.EventBus,
        clock: Any,
        state_dir: Any,
        reaper: Any,
        restic_binary: str | None = None,
    ) -> None:
        self.units = units
        self._manager = manager
        self._bus = bus
        self._clock = clock
        self._state_dir = state_dir
        self._reaper = reaper
        # Found on hasupd's own PATH: services get a clean PATH, restic is hasupd's tool.
        self._restic = restic_binary or shutil.which("restic") or "restic"

    def _service_config(self, name: str) -> ServiceConfig | None:
        """Return the config of service ``name`` (its first instance's), or None if unknown."""
        units = self._manager.resolve(name)
        return self._manager.services[units[0]].config if units else None

    def add(self, job: BackupJobConfig, repositories: dict[str, Any], *, arm: bool = True) -> None:
        from hasupd.backup.jobs import BackupJob  # noqa: PLC0415  (see TYPE_CHECKING above)

        backup = BackupJob(
            job,
            repositories,
            state_dir=self._state_dir,
            reaper=self._reaper,
            publish=self._bus.publish,
            quiescer=self._manager,
            restic_binary=self._restic,
            spawn_task=self.units.spawn_task,
            service_config=self._service_config,
        )
        unit = Service(
            job_unit_config(job),
            spawner=self.units,
            clock=self._clock,
            bus=self._bus,
            output=OutputMode.INHERIT,
            unit_name=job.name,
        )
        self._manager.add_job_unit(unit)
        self.units.add(JobRunner(backup), unit, arm=arm)

    async def apply(self, plan: Changes, config: Config) -> None:
        """Reload: apply the backup jobs' part of the reload plan (``hasupd.config.diff``): stop and
        remove the removed and changed jobs (config or repository), then add the changed and new ones
        from ``config``, in its order."""
        gone = [*plan.removed, *plan.changed_names]
        await self._manager.stop_many(gone, "backup job configuration changed")
        for name in gone:
            self.units.remove(name)
            self._manager.remove_job_unit(name)
        repositories = {r.name: r for r in config.daemon.repositories}
        fresh = {*plan.added, *plan.changed_names}
        for job in config.backups:
            if job.name in fresh:
                self.add(job, repositories)


async def setup_backups(
    jobs: tuple[BackupJobConfig, ...],
    repositories: dict[str, Any],
    *,
    manager: Any,
    loop: asyncio.AbstractEventLoop,
    spawn_task: Callable[[Coroutine[Any, Any, None]], asyncio.Task[None]],
    bus: ev.EventBus,
    clock: Any,
    state_dir: Any,
    reaper: Any,
    restic_binary: str | None = None,
) -> BackupSetup:
    """Create the job units, register them with the manager, clean up what a killed hasupd left
    (before any job or service starts: see leftovers.py), then arm their schedules."""
    units = BackupUnits(loop, spawn_task, bus.publish)

    def on_event(event: ev.Event) -> None:
        if (
            isinstance(event, ev.ServiceStateChanged)
            and event.service in units.runners
            and event.new in (ServiceState.DEAD, ServiceState.FAILED)
        ):
            units.on_unit_inactive(event.service)

    bus.subscribe(on_event)
    setup = BackupSetup(
        units,
        manager=manager,
        bus=bus,
        clock=clock,
        state_dir=state_dir,
        reaper=reaper,
        restic_binary=restic_binary,
    )
    for job in jobs:
        setup.add(job, repositories, arm=False)
    await units.recover_interrupted(str(Path(state_dir).absolute()))
    return setup
