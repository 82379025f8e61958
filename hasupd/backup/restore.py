"""Safe restores: into a separate folder, or in place with staging, verification, an atomic swap,
a health check, and a swap back when the service rejects the restored data. Nothing is deleted: the
live data is moved aside as ``PATH.pre-restore-TIMESTAMP`` and kept until an admin removes it.

Also restore drills: the latest snapshot restored into scratch space, verified, and removed.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Protocol, TypeVar

from hasupd import events as ev
from hasupd.backup.compat import ResticError
from hasupd.backup.databases import DB_TAG
from hasupd.backup.journal import (
    ROLLBACK,
    STARTED,
    STOP,
    SWAP,
    Journal,
    RestoreEntry,
    SwapPath,
    undo_restore,
)
from hasupd.backup.models import LsEntry, Snapshot
from hasupd.ports import DataRestoreFailed, RestoredData

if TYPE_CHECKING:
    from hasupd.backup.restic import Restic
    from hasupd.config.model import BackupJobConfig


class RestoreSource(Protocol):
    """What a restore or a drill needs of a backup job (``hasupd.backup.jobs.BackupJob`` is one).

    Only these: the job's config (name, paths, quiesce list), its hot repository, the tags of its
    snapshots and its journal. Declared here so that jobs imports restore and never the reverse.
    """

    @property
    def config(self) -> BackupJobConfig: ...

    @property
    def hot(self) -> Restic: ...

    @property
    def tags(self) -> list[str]: ...

    @property
    def journal(self) -> Journal: ...


T = TypeVar("T")


class RestoreError(Exception):
    """The restore could not be done; what was live is live again."""


class BadRestorePath(RestoreError):
    """The requested path is not one this restore may touch (a usage error): nothing was touched."""


class SupervisionError(Exception):
    """Stopping or starting the services around a swap failed inside hasupd: a bug, not a failed
    restore. It propagates (hasupd exits and is restarted; the journal undoes the swap)."""


@dataclass(frozen=True)
class RestorePlan:
    job: str
    snapshot: str  # full id
    snapshot_time: str
    paths: tuple[str, ...]  # live paths that get restored
    files: int
    bytes: int
    services: tuple[str, ...]  # stopped for the swap (the job's quiesce list)
    mode: str  # "target" | "in-place"
    target: str | None = None

    def describe(self) -> list[str]:
        where = (
            f"into {self.target}"
            if self.mode == "target"
            else "in place (live data moved aside, not deleted)"
        )
        lines = [
            f"restore job {self.job}: snapshot {self.snapshot[:8]} of {self.snapshot_time}",
            f"  {where}: {', '.join(self.paths)} ({self.files} files, {self.bytes} bytes)",
        ]
        if self.mode == "in-place":
            lines.append(f"  services stopped and started again: {', '.join(self.services) or 'none'}")
        return lines


@dataclass
class Verified:
    files: int = 0
    bytes: int = 0
    problems: list[str] = field(default_factory=list)


def file_snapshots(snapshots: list[Snapshot]) -> list[Snapshot]:
    """Return the snapshots of the job's paths: not the database dumps (tagged ``db:NAME``)."""
    return [s for s in snapshots if database_of(s) is None]


def database_of(snapshot: Snapshot) -> str | None:
    """Return the database dump name a snapshot holds (its ``db:NAME`` tag), or None for files."""
    for tag in snapshot.tags:
        if tag.startswith(DB_TAG):
            return tag[len(DB_TAG) :]
    return None


def _under(entry: LsEntry, paths: tuple[str, ...]) -> bool:
    return any(entry.path == p or entry.path.startswith(p.rstrip("/") + "/") for p in paths)


def verify_tree(entries: list[LsEntry], root: Path, paths: tuple[str, ...]) -> Verified:
    """Compare restored files under ``root`` (snapshot paths re-rooted there) with the snapshot's
    file list and sizes; return what was checked and every difference."""
    out = Verified()
    for entry in entries:
        if not _under(entry, paths):
            continue
        local = root / entry.path.lstrip("/")
        if entry.type == "dir":
            if not local.is_dir():
                out.problems.append(f"missing directory {entry.path}")
        elif entry.type == "file":
            try:
                size = local.stat().st_size
            except FileNotFoundError:
                out.problems.append(f"missing file {entry.path}")
                continue
            out.files += 1
            out.bytes += size
            if entry.size is not None and size != entry.size:
                out.problems.append(f"{entry.path}: {size} bytes, snapshot has {entry.size}")
    return out


class Restorer:
    """Runs restores of one job, publishing a record for each step (tagged with who asked)."""

    def __init__(
        self,
        job: RestoreSource,
        publish: Callable[[ev.Event], None],
        stop_services: Callable[[list[str], str], Awaitable[list[str]]],
        start_and_wait_healthy: Callable[[list[str]], Awaitable[bool]],
    ) -> None:
        self.job = job
        self._publish = publish
        self._stop = stop_services
        self._start_healthy = start_and_wait_healthy

    def _step(self, step: str, detail: str, user: str, incident: str | None = None, ok: bool = True) -> None:
        self._publish(
            ev.RestoreStep(
                job=self.job.config.name, step=step, detail=detail, user=user, ok=ok, incident=incident
            )
        )

    async def plan(self, snapshot: str, path: str | None, target: str | None, in_place: bool) -> RestorePlan:
        """Return what a restore would do. Raise RestoreError for a bad snapshot or path."""
        hot = self.job.hot
        snapshots = file_snapshots(await hot.snapshots(self.job.tags))
        if not snapshots:
            raise RestoreError(f"job {self.job.config.name} has no snapshot")
        if snapshot == "latest":
            chosen = snapshots[-1]
        else:
            matches = [s for s in snapshots if s.id.startswith(snapshot) or s.short_id == snapshot]
            if len(matches) != 1:
                raise RestoreError(f"snapshot {snapshot!r} {'is ambiguous' if matches else 'not found'}")
            chosen = matches[0]
        entries = await hot.ls(chosen.id)
        if path is not None:
            paths: tuple[str, ...] = (self._checked_path(path, chosen, entries, in_place),)
        else:
            paths = chosen.paths
            if in_place:
                for live in paths:
                    self._check_live(live)
        files = [e for e in entries if e.type == "file" and _under(e, paths)]
        return RestorePlan(
            job=self.job.config.name,
            snapshot=chosen.id,
            snapshot_time=chosen.time.isoformat(),
            paths=tuple(paths),
            files=len(files),
            bytes=sum(e.size or 0 for e in files),
            services=self.job.config.quiesce,
            mode="in-place" if in_place else "target",
            target=target,
        )

    def _check_live(self, live: str) -> None:
        """Raise BadRestorePath unless ``live`` lies under one of the job's paths on disk too: the
        folders above it, symlinks resolved, must stay inside that job path (a symlinked folder would
        make the swap move data elsewhere)."""
        for configured in self.job.config.paths:
            root = os.path.normpath(configured)
            if live == root:
                return
            if live.startswith(root.rstrip("/") + "/"):
                parent = os.path.realpath(os.path.dirname(live))
                real_root = os.path.realpath(root)
                if parent == real_root or parent.startswith(real_root.rstrip("/") + "/"):
                    return
                raise BadRestorePath(
                    f"{live} leads outside the job's path {root} through a symbolic link (to {parent})"
                )
        raise BadRestorePath(
            f"{live} is not under the paths of job {self.job.config.name} "
            f"({', '.join(self.job.config.paths)})"
        )

    def _checked_path(self, path: str, chosen: Snapshot, entries: list[LsEntry], in_place: bool) -> str:
        """Return ``path`` normalised if a restore may touch it; raise BadRestorePath otherwise.

        It must be absolute, without ``..``, inside the snapshot's paths (and, in place, inside the
        job's paths on disk, see _check_live), and present in the snapshot.
        """
        if not path.startswith("/"):
            raise BadRestorePath(f"--path must be an absolute path: {path!r}")
        if ".." in path.split("/"):
            raise BadRestorePath(f"--path must not contain '..': {path!r}")
        if "\0" in path:
            raise BadRestorePath("--path must not contain a NUL byte")
        normal = os.path.normpath(path)
        if normal.startswith("//"):
            normal = "/" + normal.lstrip("/")
        if not any(normal == p or normal.startswith(p.rstrip("/") + "/") for p in chosen.paths):
            raise BadRestorePath(
                f"{normal} is not in snapshot {chosen.short_id} (it has {', '.join(chosen.paths)})"
            )
        if in_place:
            self._check_live(normal)
        if not any(e.path == normal for e in entries):
            raise BadRestorePath(f"{normal} does not exist in snapshot {chosen.short_id}")
        return normal

    async def _supervised(self, call: Awaitable[T]) -> T:
        try:
            return await call
        except Exception as e:
            raise SupervisionError(f"restore of {self.job.config.name}: {e!r}") from e

    def _journal(self, entry: RestoreEntry) -> None:
        try:
            self.job.journal.write_restore(entry)
        except OSError as e:
            raise RestoreError(f"cannot write the restore journal: {e}") from e

    async def _restore_verified(self, plan: RestorePlan, root: Path, user: str, incident: str | None) -> None:
        root.mkdir(parents=True, exist_ok=True, mode=0o700)
        await self.job.hot.restore(plan.snapshot, root, include_paths=plan.paths)
        checked = verify_tree(await self.job.hot.ls(plan.snapshot), root, plan.paths)
        for path in plan.paths:
            if not os.path.lexists(root / path.lstrip("/")):
                checked.problems.append(f"nothing was restored at {path}")
        if checked.problems:
            self._step("verify", "; ".join(checked.problems[:10]), user, incident, ok=False)
            raise RestoreError(
                "restored data does not match the snapshot: " + "; ".join(checked.problems[:5])
            )
        self._step(
            "verify", f"{checked.files} files, {checked.bytes} bytes match the snapshot", user, incident
        )

    async def to_target(self, plan: RestorePlan, user: str) -> str:
        """Restore into plan.target, touching nothing live. Return the folder.

        A failed (or interrupted, see journal.py) restore leaves the target as it was.
        """
        assert plan.target is not None
        target = Path(plan.target)
        existed = os.path.lexists(target)
        try:
            if existed and (not target.is_dir() or any(target.iterdir())):
                raise RestoreError(f"{target} is not an empty folder")
        except OSError as e:
            raise RestoreError(f"cannot use {target}: {e}") from e
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
        entry = RestoreEntry(
            self.job.config.name, user, stamp, "target", "stage", target=str(target), target_existed=existed
        )
        self._journal(entry)
        self._step("restore", f"snapshot {plan.snapshot[:8]} into {target}", user)
        try:
            await self._restore_verified(plan, target, user, None)
        except BaseException as error:
            self._abandon(entry, user, None)
            if isinstance(error, ResticError | OSError):
                raise RestoreError(f"restore into {target} failed: {error}") from error
            raise
        self.job.journal.end_restore()
        return str(target)

    def _abandon(self, entry: RestoreEntry, user: str, incident: str | None) -> list[str]:
        """Undo what ``entry`` left (see undo_restore) and drop the journal; return what was done.
        If the file system refuses, the journal stays for the next start and the refusal is recorded."""
        try:
            done = undo_restore(entry)
        except OSError as e:
            self._step("undo", f"failed, left for the next start: {e}", user, incident, ok=False)
            return []
        self.job.journal.end_restore()
        return done

    async def in_place(self, plan: RestorePlan, user: str, incident: str | None = None) -> list[str]:
        """Stage, verify, stop services, swap, start, wait healthy; swap back if they are not.

        Return the folders the live data was moved aside to. Raise RestoreError (after putting the old
        data back and starting the services again) when the restore fails or is rejected; raise
        SupervisionError when stopping or starting the services fails inside hasupd. Each phase is
        journaled first: a hasupd killed mid-way puts the old data back at its next start.
        """
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
        swaps = [
            # Same filesystem as the live data, so the swap is a rename.
            SwapPath(
                live=str(live),
                staging=str(live.parent / f".{live.name}.hasupd-restore-{stamp}"),
                kept=str(live.with_name(f"{live.name}.pre-restore-{stamp}")),
            )
            for live in map(Path, plan.paths)
        ]
        entry = RestoreEntry(self.job.config.name, user, stamp, "in-place", "stage", swaps)
        self._journal(entry)
        try:
            for sp in swaps:
                self._step(
                    "stage", f"restoring snapshot {plan.snapshot[:8]} into {sp.staging}", user, incident
                )
                await self._restore_verified(plan, Path(sp.staging), user, incident)
        except BaseException as error:
            self._abandon(entry, user, incident)
            if isinstance(error, ResticError | RestoreError | OSError):
                self._step("stage", f"failed: {error}", user, incident, ok=False)
                raise RestoreError(f"staging failed, nothing live was touched: {error}") from error
            raise
        entry.phase = STOP
        self._journal(entry)
        units = await self._supervised(self._stop(list(plan.services), f"restore of {plan.job}"))
        self._step("stop", f"stopped {', '.join(units) or 'nothing'}", user, incident)
        for sp in swaps:
            sp.existed = os.path.lexists(sp.live)
        entry.phase = SWAP
        self._journal(entry)
        try:
            for sp in swaps:
                live = Path(sp.live)
                if sp.existed:
                    os.rename(live, sp.kept)
                os.rename(Path(sp.staging) / sp.live.lstrip("/"), live)
                shutil.rmtree(sp.staging, ignore_errors=True)
                self._step(
                    "swap", f"{live} is the restored data; the old data is kept at {sp.kept}", user, incident
                )
        except Exception as error:
            # Whatever broke the swap (the file system refusing, or a bug here), the original data
            # goes back and the services run again before the failure goes on.
            self._abandon(entry, user, incident)
            back = await self._supervised(self._start_healthy(units))
            self._step("swap", f"failed: {error}; the original data is live again", user, incident, ok=False)
            if not isinstance(error, OSError):
                raise
            running = "they run" if back else "they are not healthy"
            raise RestoreError(
                f"the swap failed ({error}); the original data is live again and {running}"
            ) from error
        entry.phase = STARTED
        self._journal(entry)
        healthy = await self._supervised(self._start_healthy(units))
        if healthy:
            self.job.journal.end_restore()
            self._step(
                "healthy", f"{', '.join(units) or 'no service'} running on the restored data", user, incident
            )
            return [sp.kept for sp in swaps if sp.existed]
        # The service rejects the restored data: the original goes back.
        await self._supervised(self._stop(units, f"restore of {plan.job} rejected"))
        entry.phase = ROLLBACK
        self._journal(entry)
        try:
            for sp in swaps:
                live = Path(sp.live)
                os.rename(live, live.with_name(f"{live.name}.rejected-restore-{stamp}"))
                if sp.existed:
                    os.rename(sp.kept, live)
        except Exception as error:
            self._abandon(entry, user, incident)  # finishes the swap back from the journal
            self._step("rolled-back", f"putting the original back: {error}", user, incident, ok=False)
            if not isinstance(error, OSError):  # a bug: the services run again, then it goes on
                await self._supervised(self._start_healthy(units))
                raise
        else:
            self.job.journal.end_restore()
        back = await self._supervised(self._start_healthy(units))
        self._step(
            "rolled-back",
            "services did not come up healthy on the restored data; original data is live again "
            f"({'and they run' if back else 'but they are not healthy either'}); "
            f"restored copy kept as *.rejected-restore-{stamp}",
            user,
            incident,
            ok=False,
        )
        raise RestoreError("the services rejected the restored data; the original data is live again")


async def run_drill(job: RestoreSource, scratch: Path) -> str:
    """Restore the latest snapshot of ``job`` into ``scratch``, verify it against the snapshot's file
    list and sizes, and delete it. Return a summary; raise RestoreError or ResticError on failure."""
    shutil.rmtree(scratch, ignore_errors=True)
    try:
        snapshots = file_snapshots(await job.hot.snapshots(job.tags))
        if not snapshots:
            raise RestoreError("there is no snapshot to drill")
        latest = snapshots[-1]
        await job.hot.restore(latest.id, scratch, include_paths=latest.paths)
        checked = verify_tree(await job.hot.ls(latest.id), scratch, latest.paths)
        if checked.problems:
            raise RestoreError("drill restore does not match: " + "; ".join(checked.problems[:5]))
        return (
            f"snapshot {latest.short_id}: {checked.files} files, {checked.bytes} bytes restored and verified"
        )
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


class LatestInPlace:
    """A ``hasupd.ports.DataRestorer``: the newest snapshot of a job, restored in place by ``restorer``."""

    def __init__(self, restorer: Restorer) -> None:
        self._restorer = restorer

    async def restore_latest(self, user: str, incident: str | None) -> RestoredData:
        """Plan and run an in-place restore of the latest snapshot. Raise DataRestoreFailed on a
        RestoreError or ResticError (SupervisionError, a bug, propagates)."""
        try:
            plan = await self._restorer.plan("latest", None, None, in_place=True)
            aside = await self._restorer.in_place(plan, user, incident)
        except (RestoreError, ResticError) as error:
            raise DataRestoreFailed(str(error)) from error
        return RestoredData(plan.snapshot, aside)
