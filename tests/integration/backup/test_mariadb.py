"""MariaDB 10.11 (Debian 12's) dumped with mysqldump --single-transaction while it serves, on both
restic versions: the restored copy is one snapshot point; a killed mysqldump leaves no snapshot."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import time
from collections.abc import Iterator

import pytest

from hasupd import events as ev
from hasupd.backup.dbrestore import BadDatabaseRequest, DatabaseRestorer
from hasupd.backup.kinds import JobFailed
from hasupd.config.model import DatabaseKind, DatabaseSpec
from tests.integration.backup.dbsupport import JobMaker, descendants_named, jobs, written_bytes
from tests.support.mariadb import CLIENT, MariaDB, mariadb_server, require_mariadb

__all__ = ["jobs"]

# One session inserting one row per (autocommit) transaction until ``stop`` has a row; bounded.
INSERTER = """
BEGIN NOT ATOMIC
  DECLARE i INT DEFAULT 0;
  DECLARE started DOUBLE DEFAULT UNIX_TIMESTAMP(NOW(6));
  WHILE i < 200000 AND UNIX_TIMESTAMP(NOW(6)) < started + 60 AND NOT EXISTS (SELECT 1 FROM stop) DO
    INSERT INTO items(note) VALUES (md5(i));
    SET i = i + 1;
    DO SLEEP(0.001);
  END WHILE;
END
"""


@pytest.fixture
def mariadb() -> Iterator[MariaDB]:
    try:
        require_mariadb()
    except RuntimeError as e:
        pytest.fail(str(e))
    with mariadb_server() as server:
        yield server


async def _no_stop(names: list[str], reason: str) -> list[str]:
    raise AssertionError("a --target-db restore stops nothing")


async def _no_start(units: list[str]) -> bool:
    raise AssertionError("a --target-db restore starts nothing")


def _spec(server: MariaDB, db: str) -> DatabaseSpec:
    return DatabaseSpec(
        kind=DatabaseKind.MYSQL, database=db, name=f"mysql-{db}", user="root", host=str(server.socket)
    )


async def test_mariadb_under_continuous_inserts_restores_to_one_snapshot_point(
    mariadb: MariaDB, jobs: JobMaker
) -> None:
    mariadb.sql("CREATE DATABASE shop")
    mariadb.sql(
        "CREATE TABLE items (id BIGINT AUTO_INCREMENT PRIMARY KEY, note TEXT NOT NULL) ENGINE=InnoDB;"
        "CREATE TABLE stop (x INT) ENGINE=InnoDB; CREATE TABLE markers (seen BIGINT) ENGINE=InnoDB;"
        "CREATE TABLE bulk ENGINE=InnoDB AS SELECT seq AS id, md5(seq) AS v FROM seq_1_to_200000;",
        "shop",
    )
    inserter = subprocess.Popen(
        [CLIENT, f"--socket={mariadb.socket}", "--user=root", "shop"],
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert inserter.stdin is not None
    inserter.stdin.write(f"DELIMITER //\n{INSERTER}//\n")
    inserter.stdin.close()
    try:
        deadline = time.monotonic() + 30
        while int(mariadb.sql("SELECT count(*) FROM items", "shop")) < 100:
            assert time.monotonic() < deadline and inserter.poll() is None, inserter.communicate()
            await asyncio.sleep(0.05)
        marker = int(
            mariadb.sql("INSERT INTO markers SELECT max(id) FROM items; SELECT seen FROM markers", "shop")
        )
        job = jobs.job(_spec(mariadb, "shop"))
        await job.backup()
        after_backup = int(mariadb.sql("SELECT max(id) FROM items", "shop"))
    finally:
        mariadb.sql("INSERT INTO stop VALUES (1)", "shop")
        inserter.wait(90)
        assert inserter.stderr is not None
        with inserter.stderr:
            err = inserter.stderr.read()
    assert inserter.returncode == 0, f"the inserter failed: {err}"
    final = int(mariadb.sql("SELECT count(*) FROM items", "shop"))
    [snapshot] = await job.hot.snapshots(job.tags)
    assert snapshot.paths == ("/mysql-shop.sql",)
    restorer = DatabaseRestorer(job, jobs.reaper, jobs.events.append, _no_stop, _no_start)
    with pytest.raises(BadDatabaseRequest, match="no rename of a database"):
        await restorer.plan("mysql-shop", "latest", None, in_place=True)
    assert await restorer.to_target(await restorer.plan("mysql-shop", "latest", "restored", False), "root")
    count, top = mariadb.sql("SELECT count(*), max(id) FROM items", "restored").split()
    assert int(count) == int(top), "the restored rows are not the rows of one snapshot point"
    assert int(mariadb.sql("SELECT seen FROM markers", "restored")) == marker
    assert marker <= int(count) <= after_backup < final
    print(f"mariadb: marker {marker}, dump point {count}, {after_backup} after the backup, {final} in all")


async def test_mysqldump_killed_mid_dump_leaves_no_snapshot(mariadb: MariaDB, jobs: JobMaker) -> None:
    mariadb.sql("CREATE DATABASE big")
    mariadb.sql(
        "CREATE TABLE bulk ENGINE=InnoDB AS SELECT seq AS id, concat(md5(seq), md5(seq * 7)) AS v "
        "FROM seq_1_to_1000000",
        "big",
    )
    job = jobs.job(_spec(mariadb, "big"))
    killed: list[int] = []

    async def kill_when_streaming() -> None:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            for pid in descendants_named("mariadb-dump") + descendants_named("mysqldump"):
                if written_bytes(pid) > 512 * 1024:
                    os.kill(pid, signal.SIGKILL)
                    killed.append(pid)
                    return
            await asyncio.sleep(0.005)

    killer = asyncio.ensure_future(kill_when_streaming())
    with pytest.raises(JobFailed):
        await job.backup()
    await killer
    assert killed, "mysqldump was never seen writing"
    failed = [e for e in jobs.events if isinstance(e, ev.BackupFailed)]
    assert failed and failed[0].step == "database mysql-big" and "-dump" in failed[0].error
    assert await job.hot.snapshots() == []
