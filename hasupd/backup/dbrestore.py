"""Database restores, with the discipline of file restores (``restore.py``): nothing live is touched until
the restored copy has loaded without error and passed the check query; the live database is then swapped
(renamed) with the restored one while the job's ``quiesce`` services are stopped, they are started and
must come up healthy, else the swap is undone. The original is kept as ``NAME_pre_TIMESTAMP`` (a file
``PATH.pre-restore-TIMESTAMP`` for SQLite) until an admin drops it.

``--target-db NEW`` loads the snapshot into a new database (an absolute file path for SQLite) and touches
nothing else. Every step is a ``restore.step`` record tagged with who asked.
"""

from __future__ import annotations

import os
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TypeVar

from hasupd import events as ev
from hasupd.backup.compat import ResticError
from hasupd.backup.databases import DumpItem, dump_items
from hasupd.backup.dbengines import Engine, EngineError
from hasupd.backup.restore import RestoreError, RestoreSource, SupervisionError, database_of
from hasupd.backup.streams import StreamCommand, StreamFailed
from hasupd.config.model import DatabaseKind, DatabaseSpec
from hasupd.host.procfs import DEFAULT_PATH
from hasupd.host.reaper import Reaper

T = TypeVar("T")
_DB_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_$-]{0,62}\Z")


class BadDatabaseRequest(RestoreError):
    """A usage error (unknown database, bad or existing target name): nothing was touched."""


@dataclass(frozen=True)
class DatabaseRestorePlan:
    job: str
    database: str  # the dump's name (databases: entry), e.g. postgresql-app
    kind: str
    snapshot: str
    snapshot_time: str
    filename: str
    mode: str  # "target-db" | "in-place"
    live: str  # the database (or file) the dump was taken from
    target: str  # where it is loaded: NEW, or the staging name of an in-place restore
    services: tuple[str, ...]

    def describe(self) -> list[str]:
        lines = [
            f"restore job {self.job}: database {self.database} from snapshot {self.snapshot[:8]} of "
            f"{self.snapshot_time}"
        ]
        if self.mode == "target-db":
            lines.append(f"  into the new {self.kind} database {self.target}; nothing live is touched")
        else:
            lines += [
                f"  in place: loaded into {self.target}, checked, then swapped with {self.live} "
                "(the original is kept under a new name)",
                f"  services stopped for the swap and started again: {', '.join(self.services) or 'none'}",
            ]
        return lines


def _item(job: RestoreSource, database: str) -> DumpItem:
    for spec in job.config.databases:
        for item in dump_items(spec, os.environ.get("PATH", DEFAULT_PATH)):
            if item.name == database:
                return item
    known = [i.name for s in job.config.databases for i in dump_items(s, DEFAULT_PATH)]
    raise BadDatabaseRequest(
        f"job {job.config.name} has no database {database!r} (it has: {', '.join(known) or 'none'})"
    )


class DatabaseRestorer:
    """Runs database restores of one job."""

    def __init__(
        self,
        job: RestoreSource,
        reaper: Reaper | None,
        publish: Callable[[ev.Event], None],
        stop_services: Callable[[list[str], str], Awaitable[list[str]]],
        start_and_wait_healthy: Callable[[list[str]], Awaitable[bool]],
    ) -> None:
        self.job = job
        self._reaper = reaper
        self._publish = publish
        self._stop = stop_services
        self._start_healthy = start_and_wait_healthy

    def _step(self, step: str, detail: str, user: str, ok: bool = True) -> None:
        self._publish(ev.RestoreStep(job=self.job.config.name, step=step, detail=detail, user=user, ok=ok))

    async def plan(
        self, database: str, snapshot: str, target_db: str | None, in_place: bool
    ) -> DatabaseRestorePlan:
        """Return what the restore would do. Raise BadDatabaseRequest / RestoreError / ResticError."""
        item = _item(self.job, database)
        if item.spec.kind is DatabaseKind.MYSQL and in_place:
            raise BadDatabaseRequest("MariaDB/MySQL has no rename of a database: restore with --target-db")
        if target_db is not None:
            if item.spec.kind is DatabaseKind.SQLITE:
                if not target_db.startswith("/") or ".." in target_db.split("/"):
                    raise BadDatabaseRequest(
                        f"--target-db of a SQLite database is an absolute path: {target_db!r}"
                    )
            elif not _DB_NAME.match(target_db):
                raise BadDatabaseRequest(f"invalid database name {target_db!r}")
        snapshots = [s for s in await self.job.hot.snapshots(self.job.tags) if database_of(s) == database]
        if not snapshots:
            raise RestoreError(f"job {self.job.config.name} has no snapshot of database {database}")
        if snapshot == "latest":
            chosen = snapshots[-1]
        else:
            matches = [s for s in snapshots if s.id.startswith(snapshot)]
            if len(matches) != 1:
                raise BadDatabaseRequest(
                    f"snapshot {snapshot!r} of {database} {'is ambiguous' if matches else 'not found'}"
                )
            chosen = matches[0]
        stamp = datetime.now(UTC).strftime("%Y%m%d%H%M%S")
        live = item.spec.database if database == item.spec.name else ""
        if not live:
            raise BadDatabaseRequest(f"{database} holds globals, not a database: restore it with pg_restore")
        staged = target_db or self._staging_name(item, live, stamp)
        if await Engine(item.spec, self._reaper).exists(staged):
            raise BadDatabaseRequest(f"{staged} already exists")
        return DatabaseRestorePlan(
            job=self.job.config.name,
            database=database,
            kind=str(item.spec.kind),
            snapshot=chosen.id,
            snapshot_time=chosen.time.isoformat(),
            filename=item.filename,
            mode="in-place" if in_place else "target-db",
            live=live,
            target=staged,
            services=self.job.config.quiesce,
        )

    @staticmethod
    def _staging_name(item: DumpItem, live: str, stamp: str) -> str:
        if item.spec.kind is DatabaseKind.SQLITE:
            folder, name = os.path.split(live)
            return os.path.join(folder, f".{name}.hasupd-restore-{stamp}")
        return f"{live[:40]}_restore_{stamp}"

    async def _load_checked(self, plan: DatabaseRestorePlan, engine: Engine, user: str) -> str:
        """Load the snapshot into plan.target and run the check; drop it and raise RestoreError if either
        fails. Return the check's summary."""
        self._step("load", f"snapshot {plan.snapshot[:8]} into {plan.target}", user)

        async def feed(command: StreamCommand) -> None:
            await self.job.hot.dump_into(plan.snapshot, plan.filename, command)

        try:
            await engine.load(plan.target, feed)
            summary = await engine.check(plan.target, engine.spec.check_query)
        except (EngineError, StreamFailed, ResticError, OSError) as error:
            self._step("verify", f"{plan.target}: {error}", user, ok=False)
            try:
                await engine.drop(plan.target)
            except (EngineError, OSError) as drop_error:
                self._step("cleanup", f"could not drop {plan.target}: {drop_error}", user, ok=False)
            raise RestoreError(
                f"restored copy {plan.target} failed ({error}); nothing live was touched"
            ) from error
        self._step("verify", f"{plan.target} loaded; {summary}", user)
        return summary

    async def to_target(self, plan: DatabaseRestorePlan, user: str) -> str:
        """Load the snapshot into the new database plan.target; return its name."""
        await self._load_checked(plan, Engine(self._spec(plan), self._reaper), user)
        return plan.target

    def _spec(self, plan: DatabaseRestorePlan) -> DatabaseSpec:
        return _item(self.job, plan.database).spec

    async def _supervised(self, call: Awaitable[T]) -> T:
        try:
            return await call
        except Exception as error:
            raise SupervisionError(f"database restore of {self.job.config.name}: {error!r}") from error

    async def in_place(self, plan: DatabaseRestorePlan, user: str) -> str:
        """Load and check a copy, stop the services, swap, start them, wait healthy; swap back if not.

        Return the name the original database is kept under. Raise RestoreError when the copy fails
        (nothing live touched) or the services reject it (the original is live again).
        """
        engine = Engine(self._spec(plan), self._reaper)
        await self._load_checked(plan, engine, user)
        stamp = datetime.now(UTC).strftime("%Y%m%d%H%M%S")
        if engine.spec.kind is DatabaseKind.SQLITE:
            kept, rejected = f"{plan.live}.pre-restore-{stamp}", f"{plan.live}.rejected-restore-{stamp}"
        else:
            kept, rejected = f"{plan.live[:40]}_pre_{stamp}", f"{plan.live[:40]}_rejected_{stamp}"
        units = await self._supervised(self._stop(list(plan.services), f"restore of {plan.job}"))
        self._step("stop", f"stopped {', '.join(units) or 'nothing'}", user)
        try:
            await engine.swap(plan.live, plan.target, kept)
        except (EngineError, OSError) as error:
            await engine.drop(plan.target)
            back = await self._supervised(self._start_healthy(units))
            self._step("swap", f"failed: {error}; {plan.live} was not changed", user, ok=False)
            raise RestoreError(
                f"the swap failed ({error}); {plan.live} is as it was"
                f"{'' if back else ' (but the services are not healthy)'}"
            ) from error
        self._step("swap", f"{plan.live} is the restored database; the original is kept as {kept}", user)
        if await self._supervised(self._start_healthy(units)):
            self._step(
                "healthy", f"{', '.join(units) or 'no service'} running on the restored database", user
            )
            return kept
        await self._supervised(self._stop(units, f"restore of {plan.job} rejected"))
        try:
            await engine.swap(plan.live, kept, rejected)
        except (EngineError, OSError) as error:
            self._step("rolled-back", f"swapping back failed: {error}", user, ok=False)
            await self._supervised(self._start_healthy(units))
            raise RestoreError(
                f"the services rejected the restored database and swapping back failed: {error}"
            ) from error
        back = await self._supervised(self._start_healthy(units))
        self._step(
            "rolled-back",
            f"services did not come up healthy on the restored database; the original {plan.live} is live "
            f"again ({'and they run' if back else 'but they are not healthy either'}); the restored copy "
            f"is kept as {rejected}",
            user,
            ok=False,
        )
        raise RestoreError("the services rejected the restored database; the original is live again")
