"""``hasupctl restore``: admin only, every step recorded with who asked.

A restore that fails for any reason of its own (restic, the file system, a bad path, even a bug in the
restore code) is an error reply and a ``restore.step`` record; it never stops hasupd. Only a failure of
the supervision itself (stopping or starting the services: SupervisionError) propagates, as every bug
in the supervision path does.
"""

from __future__ import annotations

from typing import Any

from hasupd import events as ev
from hasupd.backup.compat import ResticError
from hasupd.backup.dbrestore import BadDatabaseRequest
from hasupd.backup.restore import BadRestorePath, RestoreError, Restorer, SupervisionError
from hasupd.control.commands.backup import job_runner
from hasupd.control.context import CommandError, Context
from hasupd.control.protocol import Exit


def restorer_for(ctx: Context, job: str) -> Restorer:
    """Return the Restorer of ``job``. Raise CommandError (not found) for an unknown job."""
    job_runner(ctx, {"job": job})  # raises for an unknown job or before backups are set up
    assert ctx.backups is not None
    restorer = ctx.backups.restorer(job, ctx.manager)
    assert restorer is not None
    return restorer


async def restore(ctx: Context, args: dict[str, Any]) -> Any:
    if args.get("database") is not None:
        return await restore_database(ctx, args)
    job = args.get("job")
    snapshot = args.get("snapshot") or "latest"
    path, target = args.get("path"), args.get("target")
    in_place, dry_run = bool(args.get("in_place")), bool(args.get("dry_run"))
    user = str(args.get("_user", "?"))
    if not isinstance(job, str) or not isinstance(snapshot, str):
        raise CommandError(Exit.USAGE, "restore needs a job name")
    if in_place == (target is not None):
        raise CommandError(Exit.USAGE, "give exactly one of --target DIR or --in-place")
    if args.get("target_db") is not None:
        raise CommandError(Exit.USAGE, "--target-db goes with --database")
    if target is not None and (not isinstance(target, str) or not target.startswith("/")):
        raise CommandError(Exit.USAGE, "--target must be an absolute path")
    restorer = restorer_for(ctx, job)
    try:
        plan = await restorer.plan(snapshot, path if isinstance(path, str) else None, target, in_place)
        if dry_run:
            return {"dry_run": True, "plan": plan.describe()}
        if in_place:
            aside = await restorer.in_place(plan, user)
            return {"plan": plan.describe(), "moved_aside": aside}
        return {"plan": plan.describe(), "restored_to": await restorer.to_target(plan, user)}
    except BadRestorePath as error:
        raise CommandError(Exit.USAGE, str(error)) from None
    except (RestoreError, ResticError) as error:
        raise CommandError(Exit.FAILED, str(error)) from None
    except SupervisionError:
        raise
    # A bug in the restore code costs one failed request, not every service on the host.
    except Exception as error:  # noqa: BLE001
        detail = f"unexpected {type(error).__name__}: {error}"
        ctx.manager.publish(ev.RestoreStep(job=job, step="error", detail=detail, user=user, ok=False))
        raise CommandError(Exit.FAILED, f"restore failed: {detail}") from None


async def restore_database(ctx: Context, args: dict[str, Any]) -> Any:
    """``restore JOB --database NAME (--target-db NEW | --in-place) [--snapshot ID] [--dry-run]``."""
    job, database = args.get("job"), args.get("database")
    snapshot = args.get("snapshot") or "latest"
    target_db, in_place = args.get("target_db"), bool(args.get("in_place"))
    dry_run, user = bool(args.get("dry_run")), str(args.get("_user", "?"))
    if not isinstance(job, str) or not isinstance(database, str) or not isinstance(snapshot, str):
        raise CommandError(Exit.USAGE, "restore --database needs a job and a database name")
    if args.get("target") is not None or args.get("path") is not None:
        raise CommandError(Exit.USAGE, "--target and --path are for files; a database takes --target-db")
    if in_place == (target_db is not None):
        raise CommandError(Exit.USAGE, "give exactly one of --target-db NEW or --in-place")
    if target_db is not None and not isinstance(target_db, str):
        raise CommandError(Exit.USAGE, "--target-db must be a name")
    job_runner(ctx, {"job": job})
    assert ctx.backups is not None
    restorer = ctx.backups.database_restorer(job, ctx.manager)
    assert restorer is not None
    try:
        plan = await restorer.plan(database, snapshot, target_db, in_place)
        if dry_run:
            return {"dry_run": True, "plan": plan.describe()}
        if in_place:
            return {"plan": plan.describe(), "kept_as": await restorer.in_place(plan, user)}
        return {"plan": plan.describe(), "restored_to": await restorer.to_target(plan, user)}
    except BadDatabaseRequest as error:
        raise CommandError(Exit.USAGE, str(error)) from None
    except (RestoreError, ResticError) as error:
        raise CommandError(Exit.FAILED, str(error)) from None
    except SupervisionError:
        raise
    except Exception as error:  # noqa: BLE001  (as for files: a bug costs one request)
        detail = f"unexpected {type(error).__name__}: {error}"
        ctx.manager.publish(ev.RestoreStep(job=job, step="error", detail=detail, user=user, ok=False))
        raise CommandError(Exit.FAILED, f"restore failed: {detail}") from None
