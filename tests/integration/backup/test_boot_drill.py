"""Boot drills run by the real daemon (must-show 4): the job's service starts as a shadow instance on the
restored files and SQLite database, in a private network namespace (it binds the port the live instance
holds), and its own probes decide. A backup that lacks a file the application needs fails the drill with
the application's own error in the record and an alert; a job whose last booted snapshot is older than
its drill schedule allows gets a drill.stale alert."""

from __future__ import annotations

import json
import sqlite3
import sys
import urllib.request
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

from tests.integration.backup.jobsupport import QUIET, Setup
from tests.support.harness import Hasupd
from tests.support.smtp import SmtpServer, free_port

APP = r"""
import http.server, json, os, sqlite3, sys

mode, data, db = sys.argv[1], sys.argv[2], sys.argv[3]
port = int(sys.argv[4])
settings = os.path.join(data, "settings.json")


def check():
    if not os.path.exists(settings):
        return f"unhealthy: {settings} is missing"
    rows = sqlite3.connect(f"file:{db}?mode=ro", uri=True).execute("SELECT count(*) FROM items").fetchone()[0]
    return None if rows else "unhealthy: no items"


if mode == "check":  # the application's own health check command
    problem = check()
    print(problem or "healthy")
    sys.exit(1 if problem else 0)

problem = check()
if problem:
    print(f"app cannot start: {problem}", file=sys.stderr, flush=True)
    sys.exit(2)
name = json.load(open(settings))["name"]


class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        rows = sqlite3.connect(db).execute("SELECT count(*) FROM items").fetchone()[0]
        body = f"{name} {rows}".encode()
        self.send_response(200)
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


print(f"app serving {name} on {port}", flush=True)
http.server.HTTPServer(("127.0.0.1", port), Handler).serve_forever()
"""


def _config(setup: Setup, smtp_port: int, port: int) -> Path:
    app = setup.tmp / "app.py"
    app.write_text(APP)
    db = setup.tmp / "db" / "app.db"
    db.parent.mkdir()
    con = sqlite3.connect(db)
    con.execute("CREATE TABLE items (id INTEGER PRIMARY KEY)")
    con.executemany("INSERT INTO items VALUES (?)", [(i,) for i in range(5)])
    con.commit()
    con.close()
    (setup.data / "settings.json").write_text(json.dumps({"name": "shop"}))
    args = [str(setup.data), str(db), str(port)]
    service = {
        "command": [sys.executable, str(app), "serve", *args],
        "health": [
            {"exec": [sys.executable, str(app), "check", *args], "interval_sec": "500ms"},
            {"http": f"http://127.0.0.1:{port}/", "interval_sec": "500ms"},
        ],
        "timeout_start_sec": "20s",
    }
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
    drill = {"schedule": "@weekly", "boot": True}
    etc = setup.config(
        {"quiesce": ["app"], "databases": [{"sqlite": str(db)}], "drill": drill},
        services={"app": service},
        daemon={"alerts": alerts},
    )
    bad = {
        "repository": "hot",
        "paths": [str(setup.data)],
        **QUIET,
        "exclude": ["settings.json"],  # the backup lacks a file the application needs
        "quiesce": ["app"],
        "databases": [{"sqlite": str(db)}],
        "drill": drill,
    }
    (etc / "backups.d" / "bad-data.yaml").write_text(json.dumps(bad))
    return etc


def test_boot_drill_passes_on_a_good_backup_and_fails_with_the_apps_own_error_on_a_bad_one(
    setup: Setup, hasupd: Callable[..., Hasupd]
) -> None:
    port = free_port()
    server = SmtpServer(free_port()).start()
    try:
        config = _config(setup, server.port, port)
        work = setup.tmp / "work0"
        now = datetime.now(UTC)
        for job in ("app-data", "bad-data"):
            for kind in ("backup", "prune", "drill"):
                stamp_job(work, job, kind, now)
        # bad-data last booted on a snapshot 30 days old: more than twice its weekly drill allows.
        stamp_job(work, "bad-data", "restorable_as_of", now - timedelta(days=30))
        d = hasupd(config)
        d.wait_for("health.ok", service="app", timeout=30)
        stale = d.wait_for("drill.stale", job="bad-data", timeout=30)[0]
        assert stale["allowed_sec"] == 2 * 7 * 86400 and stale["age_sec"] > 29 * 86400
        for job in ("app-data", "bad-data"):
            ran = d.ctl("backup", "run", job, timeout=300)
            assert ran.returncode == 0, ran.stderr
        # The live instance keeps serving on its port while the drills run.
        live = urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5).read().decode()
        assert live == "shop 5"

        good = d.ctl("backup", "run", "app-data", "--kind", "drill", timeout=300)
        assert good.returncode == 0, good.stderr
        passed = d.wait_for("drill.finished", job="app-data")[0]
        assert passed["ok"] and passed["boot"], passed
        assert "app: healthy on the restored data (probes passed: exec, http)" in passed["detail"]
        status = d.ctl("backup", "status", "app-data").stdout
        assert "restorable as of " in status, status
        assert urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5).read().decode() == "shop 5"

        bad = d.ctl("backup", "run", "bad-data", "--kind", "drill", timeout=300)
        assert bad.returncode == 1
        failed = d.wait_for("drill.finished", job="bad-data")[0]
        assert not failed["ok"] and failed["boot"]
        detail = failed["detail"]
        assert "exec probe failed" in detail and "settings.json is missing" in detail, detail
        assert "app cannot start" in detail, detail  # the shadow's own output
        # Still restorable only as of the old snapshot.
        old = (now - timedelta(days=30)).date().isoformat()
        assert f"restorable as of {old}" in d.ctl("backup", "status", "bad-data").stdout
        mails = server.mailbox.wait(2, timeout=30)
        subjects = [m.subject for m in mails]
        assert any("bad-data: no snapshot has booted" in s for s in subjects), subjects
        [alert] = [m for m in mails if "boot drill of bad-data failed" in m.subject]
        assert "settings.json is missing" in alert.body, alert.body
        # Torn down: no shadow left, no scratch space.
        assert not list((work / "state" / "drill").glob("*/*"))
        print(f"good drill: {passed['detail'][:300]}\nbad drill: {detail[:400]}")
    finally:
        server.stop()


def stamp_job(work: Path, job: str, kind: str, when: datetime) -> None:
    path = work / "state" / "backup" / job / f"{kind}.last"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(when.isoformat() + "\n")
