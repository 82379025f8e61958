"""The one reload plan against the real daemon: ``hasupctl reload --dry-run`` lists the changes to services,
backup jobs and alert channels and applies none; ``hasupctl reload`` applies all three (issue 16)."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import yaml

from tests.integration.backup.jobsupport import QUIET, Setup, stamp
from tests.support.harness import REPO, Hasupd
from tests.support.smtp import SmtpServer, free_port

FROM, TO = "hasupd@test.example", "ops@test.example"
SLEEP = ["/bin/sleep", "1000"]


def channel(port: int) -> dict[str, Any]:
    return {
        "email": {
            "smtp": {"host": "127.0.0.1", "port": port, "tls": "none", "timeout_sec": "5s"},
            "from": FROM,
            "to": [TO],
        },
        "coalesce_sec": "0s",
    }


def next_backup(d: Hasupd) -> datetime:
    result = d.ctl("backup", "status", "app-data", "--json")
    assert result.returncode == 0, result.stderr
    [status] = json.loads(result.stdout)
    return datetime.fromisoformat(status["next"]["backup"])


def alert_test(d: Hasupd, first: SmtpServer, second: SmtpServer) -> tuple[int, int]:
    """Send ``alert test ops``; return how many messages each server holds once it arrived."""
    before = len(first.mailbox.received) + len(second.mailbox.received)
    result = d.ctl("alert", "test", "ops")
    assert result.returncode == 0, result.stderr
    # The command returns once the server accepted the message: both counts are final.
    after = (len(first.mailbox.received), len(second.mailbox.received))
    assert sum(after) == before + 1
    return after


def test_reload_plans_and_applies_services_backup_jobs_and_alert_channels(
    setup: Setup, hasupd: Callable[..., Hasupd]
) -> None:
    first, second = SmtpServer(free_port()).start(), SmtpServer(free_port()).start()
    try:
        etc = setup.config(
            QUIET,
            services={"web": {"command": SLEEP}, "db": {"command": SLEEP}},
            daemon={"alerts": {"ops": channel(first.port)}},
        )
        # Every kind stamped now: nothing runs by itself, the next backup is tomorrow at 00:00 UTC.
        now = datetime.now(UTC)
        for kind in ("backup", "prune"):
            stamp(setup.tmp / "work0", kind, now)
        env = {"PYTHONPATH": os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)}
        d = hasupd(etc, env=env, extra_args=("--no-watch",))
        d.wait_ready()
        web = d.wait_for("service.started", service="web")[0]["pid"]
        db = d.wait_for("service.started", service="db")[0]["pid"]
        daily = next_backup(d)
        assert (daily.hour, daily.minute) == (0, 0)
        assert alert_test(d, first, second) == (1, 0)

        # A service's program, a job's schedule and a channel's server change.
        (etc / "services.d" / "web.yaml").write_text(json.dumps({"command": ["/bin/sleep", "2000"]}))
        job_file = etc / "backups.d" / "app-data.yaml"
        job = json.loads(job_file.read_text())
        job_file.write_text(json.dumps({**job, "schedule": "30 4 * * *"}))
        daemon_file = etc / "hasupd.yaml"
        daemon = yaml.safe_load(daemon_file.read_text())
        daemon["alerts"]["ops"] = channel(second.port)
        daemon_file.write_text(json.dumps(daemon))

        # --dry-run lists all three kinds of change ...
        dry = d.ctl("reload", "--dry-run")
        assert dry.returncode == 0, dry.stderr
        assert "restart web (changed: command)" in dry.stdout, dry.stdout
        assert "keep    db" in dry.stdout, dry.stdout
        assert "change  backup job app-data (changed: schedule)" in dry.stdout, dry.stdout
        assert "change  alert channel ops (changed: email)" in dry.stdout, dry.stdout
        plan = json.loads(d.ctl("reload", "--dry-run", "--json").stdout)
        assert plan["dry_run"] is True
        assert plan["services"]["restart"] == {"web": ["command"]} and plan["services"]["keep"] == ["db"]
        assert plan["backup_jobs"] == {"add": [], "remove": [], "change": {"app-data": ["schedule"]}}
        assert plan["alert_channels"] == {"add": [], "remove": [], "change": {"ops": ["email"]}}
        # ... and applies none of them.
        assert d.find("config.applied") == []
        assert d.find("service.started", service="web")[-1]["pid"] == web
        assert next_backup(d) == daily
        assert alert_test(d, first, second) == (2, 0)

        # reload applies all three.
        applied = d.ctl("reload")
        assert applied.returncode == 0, applied.stderr
        assert "restart web (changed: command)" in applied.stdout
        record = d.wait_for("config.applied", timeout=10)[0]
        assert record["changed"] == ["web"] and record["unchanged"] == 1
        assert record["jobs_changed"] == ["app-data"] and record["channels_changed"] == ["ops"]
        started = d.wait_for("service.started", service="web", count=2, timeout=10)
        assert started[-1]["pid"] != web
        assert d.find("service.started", service="db")[-1]["pid"] == db  # untouched
        nightly = next_backup(d)
        assert (nightly.hour, nightly.minute) == (4, 30)
        assert nightly - now < timedelta(days=1, minutes=1)
        assert alert_test(d, first, second) == (2, 1)
        assert d.stop() == 0
    finally:
        first.stop()
        second.stop()
