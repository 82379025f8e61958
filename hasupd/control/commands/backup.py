"""Handlers of the backup commands: run now, list snapshots, status."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from hasupd.backup.compat import ResticError
from hasupd.backup.kinds import Kind
from hasupd.backup.restore import database_of
from hasupd.control.context import CommandError, Context
from hasupd.control.protocol import Exit
from hasupd.states import ServiceState

if TYPE_CHECKING:
    from hasupd.backup.units import BackupUnits, JobRunner

# `backup run` waits this long for the job to finish before answering "still running".
RUN_WAIT_SEC = 540.0


def _units(ctx: Context) -> BackupUnits:
    if ctx.backups is None:
        raise CommandError(Exit.FAILED, "backups are not set up yet")
    return ctx.backups


def job_runner(ctx: Context, args: dict[str, Any]) -> JobRunner:
    name = args.get("job")
    units = _units(ctx)
    if not isinstance(name, str) or name not in units.runners:
        known = ", ".join(sorted(units.runners)) or "none"
        raise CommandError(Exit.NOT_FOUND, f"no such backup job: {name!r} (jobs: {known})")
    return units.runners[name]


def _job_status(runner: JobRunner) -> dict[str, Any]:
    job = runner.job
    now = datetime.now(UTC)
    last_backup = job.stamps.get(job.config.name, str(Kind.BACKUP))
    unit = runner.unit
    return {
        "job": job.config.name,
        "state": str(unit.state) if unit else None,
        "result": str(unit.result) if unit else None,
        "repository": job.config.repository,
        "last": job.status.last,
        "last_good_backup": last_backup.isoformat() if last_backup else None,
        "age_sec": round((now - last_backup).total_seconds()) if last_backup else None,
        "max_age_sec": job.config.max_age_sec,
        "next": {str(k): v.isoformat() for k, v in runner.next_runs(now).items()},
        "newest_snapshot": job.status.newest_snapshot,
        "bytes_added": job.status.bytes_added,
        "pending": [str(k) for k in runner.pending],
        "restorable_as_of": _iso(job.restorable_as_of()),
    }


def _iso(when: datetime | None) -> str | None:
    return when.isoformat() if when is not None else None


async def run(ctx: Context, args: dict[str, Any]) -> Any:
    runner = job_runner(ctx, args)
    try:
        kind = Kind(args.get("kind", "backup"))
    except ValueError:
        raise CommandError(
            Exit.USAGE, f"unknown kind {args.get('kind')!r}; known: {[k.value for k in Kind]}"
        ) from None
    unit = runner.unit
    assert unit is not None
    _units(ctx).run_now(runner.job.config.name, kind)

    def finished() -> bool:
        return kind not in runner.pending and unit.state in (ServiceState.DEAD, ServiceState.FAILED)

    try:
        await asyncio.wait_for(ctx.manager.wait_until(finished), RUN_WAIT_SEC)
    except TimeoutError:
        return {**_job_status(runner), "note": f"still running after {RUN_WAIT_SEC:g}s"}
    status = _job_status(runner)
    last = runner.job.status.last.get(str(kind), {})
    if not last.get("ok"):
        raise CommandError(Exit.FAILED, f"{kind} of {runner.job.config.name} failed: {last.get('detail')}")
    return status


async def list_snapshots(ctx: Context, args: dict[str, Any]) -> Any:
    runners = [job_runner(ctx, args)] if args.get("job") else list(_units(ctx).runners.values())
    out = []
    for runner in runners:
        try:
            snapshots = await runner.job.hot.snapshots(runner.job.tags)
        except ResticError as error:
            raise CommandError(Exit.FAILED, str(error)) from None
        out += [
            {
                "job": runner.job.config.name,
                "id": s.short_id,
                "time": s.time.isoformat(),
                "paths": list(s.paths),
                "database": database_of(s),
            }
            for s in snapshots
        ]
    return out


async def status(ctx: Context, args: dict[str, Any]) -> Any:
    runners = [job_runner(ctx, args)] if args.get("job") else list(_units(ctx).runners.values())
    return [_job_status(r) for r in runners]
