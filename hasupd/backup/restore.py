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
from typing import TYPE_CHECKING

from hasupd import events as ev
from hasupd.backup.compat import ResticError
from hasupd.backup.models import LsEntry

if TYPE_CHECKING:
    from hasupd.backup.jobs import BackupJob


class RestoreError(Exception):
    """The restore could not be done; what was live is live again."""


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
        job: BackupJob,
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
        snapshots = await hot.snapshots(self.job.tags)
        if not snapshots:
            raise RestoreError(f"job {self.job.config.name} has no snapshot")
        if snapshot == "latest":
            chosen = snapshots[-1]
        else:
            matches = [s for s in snapshots if s.id.startswith(snapshot) or s.short_id == snapshot]
            if len(matches) != 1:
                raise RestoreError(f"snapshot {snapshot!r} {'is ambiguous' if matches else 'not found'}")
            chosen = matches[0]
        paths = chosen.paths
        if path is not None:
            if not any(path == p or path.startswith(p.rstrip("/") + "/") for p in paths):
                raise RestoreError(f"{path} is not in snapshot {chosen.short_id} (it has {', '.join(paths)})")
            paths = (path,)
        entries = await hot.ls(chosen.id)
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

    async def _restore_verified(self, plan: RestorePlan, root: Path, user: str, incident: str | None) -> None:
        root.mkdir(parents=True, exist_ok=True, mode=0o700)
        await self.job.hot.restore(plan.snapshot, root, include_paths=plan.paths)
        checked = verify_tree(await self.job.hot.ls(plan.snapshot), root, plan.paths)
        if checked.problems:
            self._step("verify", "; ".join(checked.problems[:10]), user, incident, ok=False)
            raise RestoreError(
                "restored data does not match the snapshot: " + "; ".join(checked.problems[:5])
            )
        self._step(
            "verify", f"{checked.files} files, {checked.bytes} bytes match the snapshot", user, incident
        )

    async def to_target(self, plan: RestorePlan, user: str) -> str:
        """Restore into plan.target, touching nothing live. Return the folder."""
        assert plan.target is not None
        target = Path(plan.target)
        if target.exists() and any(target.iterdir()):
            raise RestoreError(f"{target} is not empty")
        self._step("restore", f"snapshot {plan.snapshot[:8]} into {target}", user)
        await self._restore_verified(plan, target, user, None)
        return str(target)

    async def in_place(self, plan: RestorePlan, user: str, incident: str | None = None) -> list[str]:
        """Stage, verify, stop services, swap, start, wait healthy; swap back if they are not.

        Return the folders the live data was moved aside to. Raise RestoreError (after putting the old
        data back and starting the services again) when the restore fails or is rejected.
        """
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
        stagings: list[Path] = []
        for live in map(Path, plan.paths):
            # Same filesystem as the live data, so the swap is a rename.
            stagings.append(live.parent / f".{live.name}.hasupd-restore-{stamp}")
        try:
            for staging in stagings:
                self._step("stage", f"restoring snapshot {plan.snapshot[:8]} into {staging}", user, incident)
                await self._restore_verified(plan, staging, user, incident)
        except (ResticError, RestoreError, OSError) as error:
            for staging in stagings:
                shutil.rmtree(staging, ignore_errors=True)
            self._step("stage", f"failed: {error}", user, incident, ok=False)
            raise RestoreError(f"staging failed, nothing live was touched: {error}") from error
        units = await self._stop(list(plan.services), f"restore of {plan.job}")
        self._step("stop", f"stopped {', '.join(units) or 'nothing'}", user, incident)
        aside: list[tuple[Path, Path]] = []
        for live, staging in zip(map(Path, plan.paths), stagings, strict=True):
            kept = live.with_name(f"{live.name}.pre-restore-{stamp}")
            if live.exists():
                os.rename(live, kept)
            aside.append((live, kept))
            os.rename(staging / str(live).lstrip("/"), live)
            shutil.rmtree(staging, ignore_errors=True)
            self._step("swap", f"{live} is the restored data; the old data is kept at {kept}", user, incident)
        healthy = await self._start_healthy(units)
        if healthy:
            self._step(
                "healthy", f"{', '.join(units) or 'no service'} running on the restored data", user, incident
            )
            return [str(kept) for _, kept in aside]
        # The service rejects the restored data: the original goes back.
        await self._stop(units, f"restore of {plan.job} rejected")
        for live, kept in aside:
            rejected = live.with_name(f"{live.name}.rejected-restore-{stamp}")
            os.rename(live, rejected)
            if kept.exists():
                os.rename(kept, live)
        back = await self._start_healthy(units)
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


async def run_drill(job: BackupJob, scratch: Path) -> str:
    """Restore the latest snapshot of ``job`` into ``scratch``, verify it against the snapshot's file
    list and sizes, and delete it. Return a summary; raise RestoreError or ResticError on failure."""
    shutil.rmtree(scratch, ignore_errors=True)
    try:
        snapshots = await job.hot.snapshots(job.tags)
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
