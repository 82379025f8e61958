"""DatabaseRestorer on real files and a real repository (both restic versions): SQLite in place with
the swap back when the service rejects the restored copy, and the refusals that touch nothing.
The daemon-level PostgreSQL restore is test_database_restore.py."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from hasupd import events as ev
from hasupd.backup.dbrestore import BadDatabaseRequest, DatabaseRestorer
from hasupd.backup.restore import RestoreError
from hasupd.config.model import DatabaseKind, DatabaseSpec
from tests.integration.backup.dbsupport import JobMaker, jobs

__all__ = ["jobs"]


class Services:
    """The manager's side of a restore: which units were stopped and started, and what health says."""

    def __init__(self) -> None:
        self.calls: list[str] = []
        self.healthy = True
        self.live: Path | None = None

    async def stop(self, names: list[str], reason: str) -> list[str]:
        self.calls.append(f"stop {','.join(names)}")
        return names

    async def start_healthy(self, units: list[str]) -> bool:
        rows = _rows(self.live) if self.live else None
        self.calls.append(f"start {','.join(units)} on {rows} rows")
        return self.healthy


def _rows(path: Path) -> int | None:
    con = sqlite3.connect(path)
    try:
        return int(con.execute("SELECT count(*) FROM items").fetchone()[0])
    except sqlite3.OperationalError:
        return None
    finally:
        con.close()


async def test_sqlite_in_place_restore_swaps_and_swaps_back_when_rejected(
    jobs: JobMaker, tmp_path: Path
) -> None:
    live = tmp_path / "srv" / "app.db"
    live.parent.mkdir()
    con = sqlite3.connect(live)
    con.execute("CREATE TABLE items (id INTEGER PRIMARY KEY)")
    con.executemany("INSERT INTO items VALUES (?)", [(i,) for i in range(1, 101)])
    con.commit()
    con.close()
    spec = DatabaseSpec(
        DatabaseKind.SQLITE, str(live), "sqlite-app", check_query="SELECT count(*) FROM items"
    )
    job = jobs.job(spec, quiesce=("app",))
    await job.backup()
    services = Services()
    services.live = live
    restorer = DatabaseRestorer(job, jobs.reaper, jobs.events.append, services.stop, services.start_healthy)

    sqlite3.connect(live).execute("DROP TABLE items").connection.commit()  # the damage
    plan = await restorer.plan("sqlite-app", "latest", None, in_place=True)
    kept = await restorer.in_place(plan, "root")
    assert _rows(live) == 100 and _rows(Path(kept)) is None  # restored; the damaged file kept
    assert services.calls == ["stop app", "start app on 100 rows"]
    assert not Path(plan.target).exists()  # the staging file became the live one

    # The service rejects the restored copy: the live file goes back as it was.
    con = sqlite3.connect(live)
    con.execute("INSERT INTO items VALUES (101)")
    con.commit()
    con.close()
    services.healthy, services.calls = False, []
    plan = await restorer.plan("sqlite-app", "latest", None, in_place=True)
    with pytest.raises(RestoreError, match="rejected"):
        await restorer.in_place(plan, "root")
    assert _rows(live) == 101
    assert services.calls == ["stop app", "start app on 100 rows", "stop app", "start app on 101 rows"]
    rejected = list(live.parent.glob("app.db.rejected-restore-*"))
    assert len(rejected) == 1 and _rows(rejected[0]) == 100

    # Into a new file; an existing one, a relative path or an unknown database are refused.
    copy = tmp_path / "copy.db"
    assert await restorer.to_target(await restorer.plan("sqlite-app", "latest", str(copy), False), "root")
    assert _rows(copy) == 100
    for database, target, match in (
        ("sqlite-app", str(copy), "already exists"),
        ("sqlite-app", "copy.db", "absolute path"),
        ("nope", str(tmp_path / "x.db"), "has no database 'nope'"),
    ):
        with pytest.raises(BadDatabaseRequest, match=match):
            await restorer.plan(database, "latest", target, False)
    steps = [e.step for e in jobs.events if type(e).__name__ == "RestoreStep"]
    assert steps[:5] == ["load", "verify", "stop", "swap", "healthy"]

    # A plain drill of a job with databases loads each dump into a drill copy and checks it.
    await job.drill()
    [drill] = [e for e in jobs.events if isinstance(e, ev.DrillFinished)]
    assert drill.ok and "database sqlite-app" in drill.detail and "loaded as" in drill.detail, drill
    assert not (tmp_path / "state" / "drill" / "app-db").exists()
