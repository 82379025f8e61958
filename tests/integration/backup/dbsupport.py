"""Shared pieces of the database backup tests: a BackupJob bound to a real repository, a continuous
inserter, and finding a dump program among hasupd's descendants."""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from hasupd import events as ev
from hasupd.backup.jobs import BackupJob
from hasupd.config.model import BackupJobConfig, DatabaseKind, DatabaseSpec, RepositoryConfig
from hasupd.host.reaper import Reaper
from tests.support.postgres import BIN, Cluster, pg_cluster, require_postgres


class NoQuiesce:
    async def stop_for_backup(self, names: list[str], reason: str) -> list[str]:
        raise AssertionError(f"no service is stopped for a database dump ({names}, {reason})")

    def resume(self, units: list[str]) -> None:
        raise AssertionError("nothing to resume")


class JobMaker:
    """Makes BackupJobs (with the given databases, no paths) on one fresh repository."""

    def __init__(
        self, tmp: Path, repo: Path, password_file: Path, restic_binary: Path, reaper: Reaper
    ) -> None:
        self.tmp = tmp
        self.repo = repo
        self.password_file = password_file
        self.restic_binary = restic_binary
        self.reaper = reaper
        self.events: list[ev.Event] = []

    def job(self, *databases: DatabaseSpec, quiesce: tuple[str, ...] = ()) -> BackupJob:
        config = BackupJobConfig(
            name="app-db", repository="hot", paths=(), databases=databases, quiesce=quiesce
        )
        repo = RepositoryConfig(name="hot", url=str(self.repo), password_file=str(self.password_file))
        return BackupJob(
            config,
            {"hot": repo},
            state_dir=self.tmp / "state",
            reaper=self.reaper,
            publish=self.events.append,
            quiescer=NoQuiesce(),
            restic_binary=str(self.restic_binary),
        )


@pytest.fixture
def jobs(
    tmp_path: Path, fresh_repo: Path, password_file: Path, restic_binary: Path, reaper: Reaper
) -> JobMaker:
    return JobMaker(tmp_path, fresh_repo, password_file, restic_binary, reaper)


def pg_spec(cluster: Cluster, db: str, **extra: Any) -> DatabaseSpec:
    return DatabaseSpec(
        kind=DatabaseKind.POSTGRESQL,
        database=db,
        name=f"postgresql-{db}",
        user="postgres",
        host=str(cluster.socket_dir),
        port=cluster.port,
        bin_dir=str(BIN),
        **extra,
    )


@pytest.fixture
def cluster() -> Iterator[Cluster]:
    try:
        require_postgres()
    except RuntimeError as e:
        pytest.fail(str(e))
    with pg_cluster() as c:
        yield c


# Inserts one row per transaction from ONE session until a row appears in ``stop`` (bounded: 60 s and
# 200000 rows). One session means commits happen in id order, so a consistent snapshot of ``items``
# holds exactly ids 1..N: count(*) = max(id).
INSERTER = """
DO $$
DECLARE i int := 0; started timestamptz := clock_timestamp();
BEGIN
  WHILE i < 200000 AND clock_timestamp() < started + interval '60 seconds'
        AND NOT EXISTS (SELECT 1 FROM stop) LOOP
    INSERT INTO items(note) VALUES (md5(i::text));
    COMMIT;
    i := i + 1;
    PERFORM pg_sleep(0.001);
  END LOOP;
END $$;
"""


def start_inserter(cluster: Cluster, db: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [str(BIN / "psql"), "-XAtq", "-v", "ON_ERROR_STOP=1", *cluster.conn(), "-d", db, "-c", INSERTER],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def wait_rows(cluster: Cluster, db: str, at_least: int, timeout: float = 30.0) -> int:
    deadline = time.monotonic() + timeout
    while True:
        n = int(cluster.psql("SELECT count(*) FROM items", db))
        if n >= at_least:
            return n
        assert time.monotonic() < deadline, f"only {n} rows after {timeout}s"
        time.sleep(0.05)


def descendants_named(name: str, root: int | None = None) -> list[int]:
    """Return the pids of processes called ``name`` that descend from ``root`` (default: this one)."""
    root = root or os.getpid()
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            comm = Path(f"/proc/{entry}/comm").read_text().strip()
        except OSError:
            continue
        if comm != name:
            continue
        pid = int(entry)
        while pid > 1:
            try:
                stat = Path(f"/proc/{pid}/stat").read_text()
            except OSError:
                break
            pid = int(stat.rsplit(")", 1)[1].split()[1])
            if pid == root:
                found.append(int(entry))
                break
    return found


def written_bytes(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/io").read_text().splitlines():
            if line.startswith("wchar:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0
