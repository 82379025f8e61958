"""Database dumps run by the real daemon (system restic): what an operator sees in ``hasupctl backup
list`` / ``status`` and in the alert mail when a dump is killed mid-way (must-show 2)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from tests.integration.backup.dbsupport import cluster, descendants_named, written_bytes
from tests.integration.backup.jobsupport import QUIET, Setup, stamp
from tests.support.harness import REPO, Hasupd
from tests.support.postgres import Cluster
from tests.support.smtp import SmtpServer, free_port

__all__ = ["cluster"]


def _config(setup: Setup, cluster: Cluster, smtp_port: int) -> Path:
    alerts = {
        "ops": {
            "email": {
                "smtp": {"host": "127.0.0.1", "port": smtp_port, "tls": "none", "timeout_sec": "5s"},
                "from": "hasupd@test.example",
                "to": ["ops@test.example"],
            },
            "coalesce_sec": "0s",
        }
    }
    etc = setup.config({}, daemon={"alerts": alerts})
    job: dict[str, Any] = {"repository": "hot", **QUIET, "databases": [cluster.spec("big")]}
    (etc / "backups.d" / "app-data.yaml").write_text(json.dumps(job))
    return etc


def test_pg_dump_killed_mid_dump_fails_the_job_with_a_record_an_alert_and_no_good_snapshot(
    setup: Setup, cluster: Cluster, hasupd: Callable[..., Hasupd]
) -> None:
    cluster.psql("CREATE DATABASE big")
    cluster.psql(
        "CREATE TABLE bulk AS SELECT g AS id, md5(g::text) || md5((g * 7)::text) AS v "
        "FROM generate_series(1, 1000000) g",
        "big",
    )
    server = SmtpServer(free_port()).start()
    try:
        d = hasupd(_config(setup, cluster, server.port))
        d.wait_ready(timeout=30)
        good = d.ctl("backup", "run", "app-data", timeout=300)
        assert good.returncode == 0, good.stderr
        listed = d.ctl("backup", "list", "app-data")
        assert listed.returncode == 0, listed.stderr
        [line] = listed.stdout.splitlines()
        assert line.split()[0] == "app-data" and line.endswith("database postgresql-big")
        first_id = line.split()[1]

        killed: list[int] = []

        def kill_when_streaming() -> None:
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline and not killed:
                for pid in descendants_named("pg_dump", d.proc.pid):
                    if written_bytes(pid) > 512 * 1024:
                        os.kill(pid, signal.SIGKILL)
                        killed.append(pid)
                        return
                time.sleep(0.005)

        killer = threading.Thread(target=kill_when_streaming)
        killer.start()
        bad = d.ctl("backup", "run", "app-data", timeout=300)
        killer.join(130)
        assert killed, "pg_dump was never seen writing"
        assert bad.returncode == 1
        assert "postgresql-big: pg_dump ended with SIGKILL" in bad.stderr, bad.stderr
        record = d.wait_for("backup.failed", step="database postgresql-big")[0]
        assert "SIGKILL" in record["error"]
        # No snapshot of that run, not even one hidden from hasupd: restic itself lists one.
        after = d.ctl("backup", "list", "app-data")
        assert [ln.split()[1] for ln in after.stdout.splitlines()] == [first_id]
        assert len(setup.snapshots()) == 1
        status = d.ctl("backup", "status", "app-data")
        assert "last backup: FAILED" in status.stdout, status.stdout
        mail = server.mailbox.wait(1, timeout=30)
        subjects = [m.subject for m in mail]
        assert any("app-data" in s and "failed" in s for s in subjects), subjects
        print(f"killed pg_dump {killed[0]}; alert: {subjects}; stderr: {bad.stderr.strip()[:200]}")
    finally:
        server.stop()


def test_hasupd_killed_mid_dump_leaves_no_snapshot_of_that_dump_after_its_next_start(
    setup: Setup, cluster: Cluster, hasupd: Callable[..., Hasupd]
) -> None:
    """kill -9 of hasupd while pg_dump streams: restic (SIGINT by PDEATHSIG) and pg_dump end with it;
    whatever restic made of the stream, the next start forgets it and says so (backup.interrupted)."""
    cluster.psql("CREATE DATABASE big")
    cluster.psql(
        "CREATE TABLE bulk AS SELECT g AS id, md5(g::text) || md5((g * 7)::text) AS v "
        "FROM generate_series(1, 1000000) g",
        "big",
    )
    config = _config(setup, cluster, free_port())  # no mail server: alerts stay spooled
    work = setup.tmp / "work0"
    for kind in ("backup", "prune"):
        stamp(work, kind, datetime.now(UTC))  # nothing runs at start but what the test asks for
    d = hasupd(config)
    d.wait_ready(timeout=30)
    run = subprocess.Popen(
        ["/usr/bin/python3", "-m", "hasupd.cli.ctl", "--socket", str(d.socket), "backup", "run", "app-data"],
        env={"PATH": os.environ["PATH"], "PYTHONPATH": str(REPO)},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 60
    while not any(written_bytes(p) > 512 * 1024 for p in descendants_named("pg_dump", d.proc.pid)):
        assert time.monotonic() < deadline, "pg_dump was never seen writing"
        time.sleep(0.005)
    d.kill()
    run.wait(30)
    journal = d.state_dir / "backup" / "app-data" / "dumping.json"
    assert journal.exists()
    again = hasupd(config, state_dir=d.state_dir)
    record = again.wait_for(
        "backup.interrupted", timeout=60, where=lambda r: "database dump postgresql-big" in r["operations"]
    )[0]
    assert "snapshot(s) of the dump made after it started" in record["cleaned"][0], record
    assert setup.snapshots() == []
    assert not journal.exists()
    print(f"after the restart: {record['cleaned']}")
