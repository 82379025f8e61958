"""Live databases dumped into restic while they serve (PostgreSQL 15, SQLite), against both restic
versions: 0.18 runs the dump itself (--stdin-from-command), 0.14 reads it through hasupd's pipe."""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
import subprocess
import threading
import time
from pathlib import Path

import pytest

from hasupd import events as ev
from hasupd.backup.dbjobs import dump_databases
from hasupd.backup.kinds import JobFailed
from hasupd.backup.streams import StreamCommand
from hasupd.config.model import DatabaseKind, DatabaseSpec
from tests.integration.backup.dbsupport import (
    JobMaker,
    cluster,
    descendants_named,
    jobs,
    pg_spec,
    start_inserter,
    wait_rows,
    written_bytes,
)
from tests.support.postgres import BIN, Cluster

__all__ = ["cluster", "jobs"]


def _restore_pg(cluster: Cluster, snapshot_dump: Path, db: str) -> None:
    cluster.psql(f"CREATE DATABASE {db}")
    subprocess.run(
        [str(BIN / "pg_restore"), *cluster.conn(), "--exit-on-error", "-d", db, str(snapshot_dump)],
        check=True,
        capture_output=True,
        timeout=120,
    )


async def test_postgresql_under_continuous_inserts_restores_to_the_dump_snapshot_point(
    cluster: Cluster, jobs: JobMaker, tmp_path: Path
) -> None:
    """Must-show 1: no quiesce, 0 failed inserts, the restored table is exactly the rows committed at
    the dump's snapshot point (ids 1..N with no gap), which lies after the marker written just before."""
    cluster.psql("CREATE DATABASE app")
    cluster.psql(
        "CREATE TABLE items (id bigserial PRIMARY KEY, note text NOT NULL);"
        "CREATE TABLE stop (x int); CREATE TABLE markers (seen bigint NOT NULL);"
        # Bulk so that the dump takes a while and inserts land during it.
        "CREATE TABLE bulk AS SELECT g AS id, md5(g::text) AS v FROM generate_series(1, 300000) g;",
        "app",
    )
    inserter = start_inserter(cluster, "app")
    try:
        wait_rows(cluster, "app", 100)
        marker = int(cluster.psql("INSERT INTO markers SELECT max(id) FROM items RETURNING seen", "app"))
        events = jobs.events
        job = jobs.job(pg_spec(cluster, "app"))
        started = time.monotonic()
        await job.backup()
        took = time.monotonic() - started
        after_backup = int(cluster.psql("SELECT max(id) FROM items", "app"))
    finally:
        cluster.psql("INSERT INTO stop VALUES (1)", "app")
        _, err = inserter.communicate(timeout=90)
    assert inserter.returncode == 0, f"the inserter failed (a failed insert): {err}"
    final = int(cluster.psql("SELECT count(*) FROM items", "app"))
    assert final == int(cluster.psql("SELECT max(id) FROM items", "app"))  # nothing failed, no gap

    dumped = [e for e in events if isinstance(e, ev.DatabaseDumped)]
    assert [d.database for d in dumped] == ["postgresql-app"]
    snapshots = await job.hot.snapshots(job.tags)
    assert [(s.paths, s.tags) for s in snapshots] == [
        (("/postgresql-app.pgdump",), ("hasupd", "job:app-db", "db:postgresql-app"))
    ]
    dump = tmp_path / "app.pgdump"
    await job.hot.dump_into(
        snapshots[0].id, "postgresql-app.pgdump", StreamCommand(("sh", "-c", f"cat > {dump}"))
    )
    _restore_pg(cluster, dump, "restored")
    count, top = cluster.psql("SELECT count(*), coalesce(max(id), 0) FROM items", "restored").split("|")
    restored = int(count)
    # The dump's snapshot point: every row committed before it and none after (one inserting session).
    assert restored == int(top), "the restored rows are not the rows of one snapshot point"
    seen = int(cluster.psql("SELECT seen FROM markers", "restored"))
    assert seen == marker
    assert marker <= restored <= after_backup < final
    assert cluster.psql("SELECT count(*) FROM bulk", "restored") == "300000"
    print(
        f"restic {jobs.restic_binary}: dump of {took:.2f}s while inserting; marker at row {marker}, "
        f"dump snapshot point {restored}, {after_backup} rows when the backup ended, {final} in all"
    )


async def test_pg_dump_killed_mid_dump_leaves_no_snapshot_and_fails_the_job(
    cluster: Cluster, jobs: JobMaker, tmp_path: Path
) -> None:
    """Must-show 2 (the job part): kill -9 of pg_dump after it has written output: no snapshot at all,
    a backup.failed record naming the signal, and the job fails."""
    cluster.psql("CREATE DATABASE big")
    cluster.psql(
        "CREATE TABLE bulk AS SELECT g AS id, md5(g::text) || md5((g * 7)::text) AS v "
        "FROM generate_series(1, 1500000) g",
        "big",
    )
    events = jobs.events
    job = jobs.job(pg_spec(cluster, "big"))
    killed: list[int] = []

    async def kill_when_streaming() -> None:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            for pid in descendants_named("pg_dump"):
                if written_bytes(pid) > 512 * 1024:
                    os.kill(pid, signal.SIGKILL)
                    killed.append(pid)
                    return
            await asyncio.sleep(0.005)

    killer = asyncio.ensure_future(kill_when_streaming())
    with pytest.raises(JobFailed) as failure:
        await job.backup()
    await killer
    assert killed, "pg_dump was never seen writing"
    assert failure.value.step == "databases"
    failed = [e for e in events if isinstance(e, ev.BackupFailed)]
    assert failed[0].step == "database postgresql-big"
    assert "pg_dump" in failed[0].error and ("SIGKILL" in failed[0].error or "killed" in failed[0].error)
    assert not [e for e in events if isinstance(e, ev.DatabaseDumped)]
    assert await job.hot.snapshots() == []
    print(f"pg_dump killed; record: {failed[0].error[:200]}")


async def test_sqlite_under_concurrent_writes_restores_a_file_that_passes_integrity_check(
    jobs: JobMaker, tmp_path: Path
) -> None:
    """Must-show 5: the online backup API while another connection writes; the restored file passes
    PRAGMA integrity_check and holds a prefix of the writes; the scratch copy is gone."""
    db = tmp_path / "live" / "app.db"
    db.parent.mkdir()
    setup = sqlite3.connect(db)
    setup.execute("CREATE TABLE items (id INTEGER PRIMARY KEY, note TEXT NOT NULL)")
    setup.executemany("INSERT INTO items(note) VALUES (?)", [("x" * 200,)] * 20000)
    setup.commit()
    setup.close()
    stop = threading.Event()
    errors: list[BaseException] = []
    written = [0]

    def writer() -> None:
        con = sqlite3.connect(db, timeout=30)
        try:
            deadline = time.monotonic() + 60
            while not stop.is_set() and time.monotonic() < deadline:
                con.execute("INSERT INTO items(note) VALUES (?)", ("y" * 200,))
                con.commit()
                written[0] += 1
        except BaseException as e:
            errors.append(e)
        finally:
            con.close()

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        while written[0] < 50:
            await asyncio.sleep(0.01)
        before = written[0]
        spec = DatabaseSpec(kind=DatabaseKind.SQLITE, database=str(db), name="sqlite-app")
        job = jobs.job(spec)
        await job.backup()
        await asyncio.sleep(0.2)
        assert written[0] > before
    finally:
        stop.set()
        thread.join(30)
    assert errors == []
    snapshots = await job.hot.snapshots(job.tags)
    assert [s.paths for s in snapshots] == [("/sqlite-app.sqlite",)]
    restored = tmp_path / "restored.db"
    await job.hot.dump_into(
        snapshots[0].id, "sqlite-app.sqlite", StreamCommand(("sh", "-c", f"cat > {restored}"))
    )
    con = sqlite3.connect(restored)
    assert con.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
    rows = con.execute("SELECT count(*) FROM items").fetchone()[0]
    con.close()
    assert 20000 + before <= rows <= 20000 + written[0]
    assert list((tmp_path / "state" / "backup" / "app-db").glob("scratch/*")) == []
    print(f"sqlite: {rows} rows restored, {written[0]} written during the test")


async def test_a_failing_restic_is_named_as_the_cause_not_the_dump_it_cut_short(
    cluster: Cluster, jobs: JobMaker, tmp_path: Path
) -> None:
    """restic that cannot open the repository (wrong password) while pg_dump streams: the record names
    restic's error (on 0.14 pg_dump then dies of the closed pipe, which is not the cause)."""
    cluster.psql("CREATE DATABASE app")
    cluster.psql("CREATE TABLE t AS SELECT g FROM generate_series(1, 100000) g", "app")
    wrong = tmp_path / "wrong.pass"
    wrong.write_text("not the password\n")
    jobs.password_file = wrong
    job = jobs.job(pg_spec(cluster, "app"))
    # The dumps alone (job.backup() would stop at its repository check before any dump).
    [line] = await dump_databases(job, tmp_path / "scratch")
    [failed] = [e for e in jobs.events if isinstance(e, ev.BackupFailed)]
    assert line == f"postgresql-app: {failed.error}"
    assert "wrong password" in failed.error, failed.error
    assert "pg_dump ended" not in failed.error


async def test_postgresql_globals_are_a_snapshot_of_their_own(
    cluster: Cluster, jobs: JobMaker, tmp_path: Path
) -> None:
    cluster.psql("CREATE ROLE shopkeeper LOGIN")
    cluster.psql("CREATE DATABASE shop OWNER shopkeeper")
    job = jobs.job(pg_spec(cluster, "shop", globals=True))
    await job.backup()
    snapshots = {s.paths: s for s in await job.hot.snapshots(job.tags)}
    assert set(snapshots) == {("/postgresql-shop.pgdump",), ("/postgresql-shop-globals.sql",)}
    globals_sql = tmp_path / "globals.sql"
    await job.hot.dump_into(
        snapshots[("/postgresql-shop-globals.sql",)].id,
        "postgresql-shop-globals.sql",
        StreamCommand(("sh", "-c", f"cat > {globals_sql}")),
    )
    assert "CREATE ROLE shopkeeper;" in globals_sql.read_text()
