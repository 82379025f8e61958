"""What one backup job does, step by step: backup (with before commands and quiesce), retention,
long-term copies, rotating checks and prune. Each step publishes typed records; the unit that runs
it (hasupd.backup.units) turns the outcome into a state and a restart decision.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Protocol

from hasupd import events as ev
from hasupd.backup.bootdrill import ServiceLookup, run_boot_drill
from hasupd.backup.check_rotation import CheckRotation
from hasupd.backup.compat import ResticError
from hasupd.backup.dbjobs import dump_databases
from hasupd.backup.journal import Journal
from hasupd.backup.kinds import JobFailed, Kind
from hasupd.backup.restic import Restic
from hasupd.backup.restore import RestoreError, run_drill
from hasupd.backup.retention import RetentionRefused, long_term_set, safe_plan
from hasupd.backup.runner import SpawnTask
from hasupd.backup.schedule import Stamps
from hasupd.config.model import BackupJobConfig, RepositoryConfig
from hasupd.files import atomic_write_text
from hasupd.host.procfs import DEFAULT_PATH
from hasupd.host.reaper import Reaper
from hasupd.runtimes.command import run_command

BEFORE_TIMEOUT_SEC = 3600.0
RESTORABLE_STAMP = "restorable_as_of"


class Quiescer(Protocol):
    """Stops and restarts services around a snapshot (the manager implements it)."""

    async def stop_for_backup(self, names: list[str], reason: str) -> list[str]:
        """Stop the named services; return the units that were running and must be resumed."""
        ...

    def resume(self, units: list[str]) -> None:
        """Start the units again (returns at once)."""
        ...


@dataclass
class JobStatus:
    """What ``hasupctl backup status`` shows of a job."""

    last: dict[str, dict[str, object]] = field(default_factory=dict)  # kind -> {time, ok, detail}
    newest_snapshot: str | None = None
    bytes_added: int | None = None
    restorable_as_of: datetime | None = None  # the snapshot time of the last boot drill that passed


class BackupJob:
    """One job of backups.d, bound to its repositories."""

    def __init__(
        self,
        config: BackupJobConfig,
        repositories: dict[str, RepositoryConfig],
        *,
        state_dir: Path,
        reaper: Reaper | None,
        publish: Callable[[ev.Event], None],
        quiescer: Quiescer,
        restic_binary: str = "restic",
        spawn_task: SpawnTask | None = None,
        service_config: ServiceLookup | None = None,
    ) -> None:
        """``service_config`` finds the config of a service by name (boot drills start a shadow of
        the job's quiesce services); None: no service is known."""
        self.config = config
        self._service_config: ServiceLookup = service_config or (lambda _name: None)
        self._publish = publish
        self._quiescer = quiescer
        self._state_dir = state_dir
        self._reaper = reaper
        cache = state_dir / "restic-cache"
        owner = str(state_dir.absolute())  # a leftover restic of this state dir is found by it
        self.hot = Restic(
            repositories[config.repository],
            reaper=reaper,
            binary=restic_binary,
            cache_dir=cache,
            owner=owner,
            spawn_task=spawn_task,
        )
        self.cold = (
            Restic(
                repositories[config.long_term.repository],
                reaper=reaper,
                binary=restic_binary,
                cache_dir=cache,
                owner=owner,
                spawn_task=spawn_task,
            )
            if config.long_term is not None
            else None
        )
        self.stamps = Stamps(state_dir)
        self.status = JobStatus()
        self._marker = state_dir / "backup" / config.name / "quiesced.json"
        self._backup_detail = ""
        self.journal = Journal(state_dir, config.name)

    @property
    def tags(self) -> list[str]:
        return ["hasupd", f"job:{self.config.name}"]

    @property
    def reaper(self) -> Reaper | None:
        return self._reaper

    def record(self, event: ev.Event) -> None:
        """Publish ``event`` (a typed record of this job)."""
        self._publish(event)

    def _record(self, event: ev.Event) -> None:
        self._publish(event)

    def _done(self, kind: Kind, ok: bool, detail: str) -> None:
        now = datetime.now(UTC)
        self.status.last[str(kind)] = {"time": now.isoformat(), "ok": ok, "detail": detail}
        if ok:
            self.stamps.set(self.config.name, str(kind), now)

    async def run(self, kinds: Iterable[Kind]) -> None:
        """Do the given kinds of work in order. Raise JobFailed at the first failing step.

        While it runs, a journal entry (fsynced) tells a later hasupd that this job was interrupted
        if hasupd dies meanwhile (``leftovers.py`` then removes the stale locks it left).
        """
        kinds = list(kinds)
        try:
            self.journal.begin_run([str(k) for k in kinds])
        except OSError as error:  # a full or read-only state dir: no unrecorded restic run
            self._fail("journal", f"cannot write {self.journal.run_file}: {error}", retry=True)
        try:
            for kind in kinds:
                try:
                    await self._run_one(kind)
                except JobFailed as failure:
                    self._done(kind, False, str(failure))
                    raise
                except ResticError as error:
                    self._done(kind, False, str(error))
                    self._record(ev.BackupFailed(job=self.config.name, step=str(kind), error=str(error)))
                    raise JobFailed(str(kind), str(error), retry=True) from error
        finally:
            self.journal.end_run()

    async def _run_one(self, kind: Kind) -> None:
        match kind:
            case Kind.BACKUP:
                await self.backup()
                await self.retention()
            case Kind.LONG_TERM:
                await self.long_term()
            case Kind.CHECK:
                await self.check()
            case Kind.PRUNE:
                await self.hot.prune()
                if self.cold is not None:
                    await self.cold.prune()
                self._done(kind, True, "pruned")
            case Kind.DRILL:
                await self.drill()

    # ------------------------------------------------------------------ backup

    async def backup(self) -> None:
        """before commands, quiesce, snapshot of the paths, resume, then one snapshot per database dump
        (made while the databases serve). Raise JobFailed on failure: a failed database dump leaves no
        snapshot of its own, the others are still made."""
        job = self.config
        self._backup_detail = ""
        if job.paths:
            await self._backup_paths()
        else:
            await self.hot.init_if_absent()
        if job.databases:
            await self._backup_databases()
        self._done(Kind.BACKUP, True, self._backup_detail)

    async def _backup_databases(self) -> None:
        failed = await dump_databases(self, self._state_dir / "backup" / self.config.name / "scratch")
        if failed:
            # Each failed dump has its own backup.failed record (and alert) already.
            raise JobFailed("databases", "; ".join(failed), retry=False)
        self._backup_detail = ", ".join(
            x for x in (self._backup_detail, f"{len(self.config.databases)} database(s) dumped") if x
        )

    async def _backup_paths(self) -> None:
        job = self.config
        missing = [p for p in job.paths if not os.path.exists(p)]
        if missing:
            # restic would skip a missing top-level path and still exit 0 on some versions.
            self._fail("paths", f"source path(s) missing: {', '.join(missing)}", retry=True)
        for argv in job.before:
            result = await run_command(
                argv, reaper=self._reaper, env={"PATH": DEFAULT_PATH}, timeout=BEFORE_TIMEOUT_SEC
            )
            if not result.ok:
                self._fail(
                    "before",
                    f"{' '.join(argv)} failed with {result.describe()}: {result.tail(500)}",
                    retry=False,
                )
        await self.hot.init_if_absent()
        resumed: list[str] = []
        try:
            if job.quiesce:
                resumed = await self._quiescer.stop_for_backup(list(job.quiesce), f"backup {job.name}")
                # If hasupd dies now, the next start knows these were stopped for a backup.
                atomic_write_text(self._marker, json.dumps(resumed))
            summary = await self.hot.backup(job.paths, job.exclude, self.tags)
        finally:
            if resumed:
                self._quiescer.resume(resumed)
            self._marker.unlink(missing_ok=True)
        self.status.newest_snapshot = summary.snapshot_id
        self.status.bytes_added = summary.data_added
        self._record(
            ev.BackupFinished(
                job=job.name,
                snapshot=summary.snapshot_id,
                files_new=summary.files_new,
                files_changed=summary.files_changed,
                bytes_added=summary.data_added,
                duration_sec=round(summary.total_duration, 3),
                partial=summary.partial,
            )
        )
        if summary.partial:
            unreadable = tuple(f"{u.path}: {u.message}" for u in summary.unreadable)
            self._record(ev.BackupWarning(job=job.name, snapshot=summary.snapshot_id, unreadable=unreadable))
        partial = " (partial)" if summary.partial else ""
        self._backup_detail = f"snapshot {summary.snapshot_id[:8]}{partial}"

    def interrupted_quiesce(self) -> list[str]:
        """Return the units a backup stopped when hasupd died mid-run (and forget the marker).

        Raise ValueError (saying which file and why; the marker is forgotten too) if the marker is
        damaged: not readable, not JSON, or not a list of names. It was there, so the job's quiesce
        services were stopped: the caller resumes those.
        """
        try:
            raw = self._marker.read_bytes()
        except FileNotFoundError:
            return []
        except OSError as error:
            problem = error.strerror or str(error)
        else:
            try:
                units = json.loads(raw)  # bytes that are not UTF-8 too (UnicodeDecodeError: ValueError)
            except (ValueError, RecursionError) as error:
                problem = f"not JSON ({error})"
            else:
                if isinstance(units, list) and all(isinstance(u, str) for u in units):
                    self._marker.unlink(missing_ok=True)
                    return list(units)
                problem = f"not a list of service names (a {type(units).__name__})"
        with contextlib.suppress(OSError):  # a directory stays: reported again at the next start
            self._marker.unlink(missing_ok=True)
        raise ValueError(f"{self._marker}: damaged quiesce marker: {problem}")

    async def retention(self) -> None:
        """Forget exactly what the short-term policy plans, after refusing dangerous plans."""
        keep = self.config.keep
        if keep == type(keep)():
            return  # no policy: keep everything
        snapshots = await self.hot.snapshots(self.tags)
        plan = await self.hot.forget_plan(keep, tags=self.tags)
        try:
            ids = safe_plan(plan, snapshots)
        except RetentionRefused as refused:
            self._fail("retention", f"plan refused: {refused}", retry=False)
        await self.hot.forget_ids(ids)
        self._record(
            ev.BackupRetention(job=self.config.name, repository=self.config.repository, forgot=tuple(ids))
        )

    # ------------------------------------------------------------------ long-term, check

    async def long_term(self) -> None:
        """Copy exactly the long-term set to the cold repository, then apply its own retention there."""
        lt = self.config.long_term
        assert lt is not None and self.cold is not None
        await self.cold.init_if_absent(copy_chunker_params_from=self.hot)
        features = await self.hot.features()
        snapshots = await self.hot.snapshots(self.tags)
        chosen = long_term_set(
            snapshots, lt.keep, datetime.now(UTC), keep_oldest=features.forget_keeps_oldest
        )
        copied = await self.hot.copy(sorted(chosen), self.cold)
        cold_snapshots = await self.cold.snapshots(self.tags)
        plan = await self.cold.forget_plan(lt.keep, tags=self.tags)
        try:
            ids = safe_plan(plan, cold_snapshots) if cold_snapshots else []
        except RetentionRefused as refused:
            self._fail("long_term", f"cold retention plan refused: {refused}", retry=False)
        await self.cold.forget_ids(ids)
        self._record(
            ev.BackupCopied(
                job=self.config.name, repository=lt.repository, copied=tuple(copied), forgot=tuple(ids)
            )
        )
        self._done(Kind.LONG_TERM, True, f"copied {len(copied)}, forgot {len(ids)}")

    async def check(self) -> None:
        """Structure check plus the next rotating slice of the data. Raise JobFailed on damage."""
        spec = self.config.check
        assert spec is not None
        rotation = CheckRotation(self._state_dir, self.config.name, spec.read_data_subset_n or 1)
        subset = rotation.current() if spec.read_data_subset_n else None
        result = await self.hot.check(subset)
        rotation.advance()
        if not result.ok:
            self._record(
                ev.BackupCheckFailed(job=self.config.name, subset=subset or "", detail=result.output_tail)
            )
            self._fail(
                "check", f"repository damaged (subset {subset}): {result.output_tail[-300:]}", retry=False
            )
        self._record(ev.BackupChecked(job=self.config.name, subset=subset or ""))
        self._done(Kind.CHECK, True, f"ok (subset {subset})" if subset else "ok")

    async def drill(self) -> None:
        """Restore the latest snapshot into scratch space and verify it (with ``boot: true``, also start
        the job's services on it: ``bootdrill.py``). Raise JobFailed if it fails."""
        scratch = self._state_dir / "drill" / self.config.name
        boot = self.config.drill is not None and self.config.drill.boot
        restorable: datetime | None = None
        try:
            if boot:
                result = await run_boot_drill(self, scratch, self._service_config, self._reaper)
                summary, restorable = f"booted: {result.detail}", result.snapshot_time
            elif self.config.databases:  # each dump is loaded into a drill copy and checked too
                result = await run_boot_drill(self, scratch, self._service_config, self._reaper, boot=False)
                summary = result.detail
            else:
                summary = await run_drill(self, scratch)
        except (RestoreError, ResticError) as error:
            self._record(ev.DrillFinished(job=self.config.name, ok=False, detail=str(error), boot=boot))
            raise JobFailed("drill", str(error), retry=False) from error
        if restorable is not None:
            self.status.restorable_as_of = restorable
            self.stamps.set(self.config.name, RESTORABLE_STAMP, restorable)
        self._record(
            ev.DrillFinished(
                job=self.config.name,
                ok=True,
                detail=summary,
                boot=boot,
                restorable_as_of=restorable.timestamp() if restorable else None,
            )
        )
        self._done(Kind.DRILL, True, summary)

    def restorable_as_of(self) -> datetime | None:
        """Return the snapshot time of the last boot drill that passed (kept across restarts)."""
        if self.status.restorable_as_of is None:
            self.status.restorable_as_of = self.stamps.get(self.config.name, RESTORABLE_STAMP)
        return self.status.restorable_as_of

    def _fail(self, step: str, message: str, *, retry: bool) -> None:
        self._record(ev.BackupFailed(job=self.config.name, step=step, error=message))
        raise JobFailed(step, message, retry=retry)
