"""Recovery with real restic and real processes: automatic restore after a crash loop, config
rollback, an in-place restore the service rejects, restore drills, and who may restore."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from tests.integration.backup.jobsupport import QUIET, Setup
from tests.support.harness import Hasupd, require_root
from tests.support.smtp import SmtpServer, free_port
from tests.support.users import temp_group, temp_user, world_dir


def checking_app(data: Path) -> dict[str, Any]:
    """A service that checks its data at start and exits if it is corrupt."""
    return {
        "command": ["/bin/sh", "-c", f"grep -q GOOD {data}/ok.txt || exit 2; exec sleep 1000"],
        "restart_sec": "100ms",
        "restart_max_delay_sec": "1s",
        "start_limit": {"burst": 3, "interval_sec": "60s"},
    }


def status(d: Hasupd, name: str) -> dict[str, Any]:
    result = d.ctl("status", name, "--json")
    assert result.returncode == 0, result.stderr
    return dict(json.loads(result.stdout)[0])


def test_crash_loop_on_corrupt_data_is_recovered_by_restoring_the_last_snapshot(
    setup: Setup, hasupd: Callable[..., Hasupd]
) -> None:
    (setup.data / "ok.txt").write_text("GOOD\n")
    app = {**checking_app(setup.data), "on_failure": [{"restore": "app-data"}]}
    smtp = SmtpServer(free_port()).start()
    channel = {
        "email": {
            "smtp": {"host": "127.0.0.1", "port": smtp.port},
            "from": "hasupd@test.invalid",
            "to": ["ops@test.invalid"],
        },
        "coalesce_sec": "2s",
    }
    d = hasupd(
        setup.config(
            {**QUIET, "quiesce": ["app"]}, services={"app": app}, daemon={"alerts": {"ops": channel}}
        )
    )
    d.wait_for("backup.finished", timeout=60)  # the first backup runs at start
    d.wait_for("service.started", service="app", count=2)  # stopped and resumed around it
    first_pid = status(d, "app")["pid"]
    (setup.data / "ok.txt").write_text("BAD\n")  # the data goes bad; the next start finds out
    subprocess.run(["kill", "-9", str(first_pid)], check=True)
    failed = d.wait_for("service.failed", service="app", timeout=20)[0]
    assert failed["result"] == "start-limit-hit", failed
    assert "incident" in failed, [
        (r["event"], r.get("incident")) for r in d.records if r.get("service") == "app"
    ]
    action = d.wait_for("recovery.action", service="app", timeout=60)[0]
    assert action["ok"] is True and action["action"] == "restore app-data", action
    assert (setup.data / "ok.txt").read_text() == "GOOD\n"
    aside = list(setup.tmp.glob("data.pre-restore-*"))
    assert len(aside) == 1 and (aside[0] / "ok.txt").read_text() == "BAD\n"  # kept, not deleted
    assert status(d, "app")["state"] == "running"
    # One incident holds every step, from the first crash to the recovery.
    incident = failed["incident"]
    assert incident and action["incident"] == incident
    steps = [r["step"] for r in d.find("restore.step") if r.get("incident") == incident]
    assert steps == ["stage", "verify", "stop", "swap", "healthy"], steps
    assert all(r["user"] == "hasupd (recovery)" for r in d.find("restore.step"))
    closed = d.wait_for("incident.closed", service="app", where=lambda r: r.get("incident") == incident)[0]
    assert closed["outcome"] == "resolved"
    # The alerts say what happened and what was done about it.
    mails = smtp.mailbox.wait(2, timeout=30)
    assert "app failed (start-limit-hit)" in mails[0].subject
    text = "\n".join(m.body for m in mails)
    assert "recovery action restore app-data worked" in text, text
    smtp.stop()
    chain = d.ctl("incident", incident, "--json")
    assert chain.returncode == 0
    events = [r["event"] for r in json.loads(chain.stdout)["records"]]
    for name in ("incident.opened", "service.failed", "restore.step", "recovery.action", "incident.closed"):
        assert name in events, (name, events)
    assert d.stop() == 0


def test_rollback_config_returns_to_the_config_that_ran_healthy(
    setup: Setup, hasupd: Callable[..., Hasupd]
) -> None:
    good = {
        "command": ["/bin/sleep", "1000"],
        "restart_sec": "100ms",
        "restart_max_delay_sec": "1s",
        "start_limit": {"burst": 3, "interval_sec": "60s"},
        "on_failure": ["rollback_config"],
    }
    etc = setup.config(QUIET, services={"web": good})
    d = hasupd(etc)
    d.wait_for("service.started", service="web")
    time.sleep(1.5)  # a stable run: this config is known to work
    edited = {**good, "command": ["/bin/sh", "-c", "echo broken config >&2; exit 1"]}
    text = yaml.safe_dump(edited)
    (etc / "services.d" / "web.yaml").write_text(text)
    action = d.wait_for("recovery.action", service="web", timeout=30)[0]
    assert action["action"] == "rollback_config" and action["ok"] is True, action
    st = status(d, "web")
    assert st["state"] == "running" and st["rolled_back"] and "crash loop" in st["rolled_back"]
    assert "rolled back" in d.ctl("status", "web").stdout
    assert (etc / "services.d" / "web.yaml").read_text() == text  # the edited file is left as it is
    assert d.stop() == 0


def test_in_place_restore_of_data_the_service_rejects_puts_the_original_back(
    setup: Setup, hasupd: Callable[..., Hasupd]
) -> None:
    (setup.data / "ok.txt").write_text("GOOD\n")
    d = hasupd(setup.config({**QUIET, "quiesce": ["app"]}, services={"app": checking_app(setup.data)}))
    d.wait_for("backup.finished", timeout=60)
    d.wait_for("service.started", service="app", count=2)  # resumed after the backup
    d.wait_for("service.stopped", service="app-data", timeout=60)  # the job (and its prune) is done
    time.sleep(0.5)  # the service has checked its data
    # A snapshot of bad data (taken behind the service's back), then good data live again.
    (setup.data / "ok.txt").write_text("BAD\n")
    setup.restic("backup", "--tag", "hasupd", "--tag", "job:app-data", str(setup.data))
    (setup.data / "ok.txt").write_text("GOOD\n")
    dry = d.ctl("restore", "app-data", "--in-place", "--dry-run")
    assert dry.returncode == 0 and "dry run" in dry.stdout and "app" in dry.stdout
    assert (setup.data / "ok.txt").read_text() == "GOOD\n"
    result = d.ctl("restore", "app-data", "--in-place", timeout=120)
    assert result.returncode == 1 and "original data is live again" in result.stderr, result
    assert (setup.data / "ok.txt").read_text() == "GOOD\n"
    rolled = d.find("restore.step", step="rolled-back")[0]
    assert rolled["level"] == "error" and rolled["user"] == "root"
    time.sleep(1.2)
    assert status(d, "app")["state"] == "running"
    assert list(setup.tmp.glob("data.rejected-restore-*"))  # the rejected copy is kept too
    target = setup.tmp / "elsewhere"
    elsewhere = d.ctl("restore", "app-data", "--target", str(target))
    assert elsewhere.returncode == 0, elsewhere.stderr
    assert (target / str(setup.data).lstrip("/") / "ok.txt").read_text() == "BAD\n"  # latest, elsewhere
    assert (setup.data / "ok.txt").read_text() == "GOOD\n"  # nothing live touched
    assert d.stop() == 0


def test_drill_passes_on_a_sound_repository_and_fails_on_a_corrupted_pack(
    setup: Setup, hasupd: Callable[..., Hasupd]
) -> None:
    d = hasupd(setup.config({**QUIET, "drill": {"schedule": "@monthly"}}))
    d.wait_for("backup.finished", timeout=60)
    d.wait_for("drill.finished", timeout=60)  # never drilled: due at start too
    assert d.find("drill.finished")[0]["ok"] is True
    for pack in (p for p in (setup.repo / "data").rglob("*") if p.is_file()):
        with open(pack, "r+b") as f:
            f.seek(40)
            f.write(b"\0" * 64)
    result = d.ctl("backup", "run", "app-data", "--kind", "drill")
    assert result.returncode == 1
    failed = d.find("drill.finished")[-1]
    assert failed["ok"] is False and failed["level"] == "error"
    assert not (d.state_dir / "drill" / "app-data").exists()  # scratch space removed either way
    assert d.stop() == 0


def test_a_non_admin_restore_is_refused_and_audited(setup: Setup, hasupd: Callable[..., Hasupd]) -> None:
    require_root()
    with (
        world_dir() as shared,
        temp_group() as sock,
        temp_group() as operators,
        temp_user(groups=(sock, operators)) as operator,
    ):
        shutil.copytree(Path(__file__).resolve().parents[3] / "hasupd", shared / "lib" / "hasupd")
        etc = setup.config(QUIET)
        daemon_yaml = yaml.safe_load((etc / "hasupd.yaml").read_text())
        daemon_yaml["access"] = {"operate": [operators], "admin": [], "socket_group": sock}
        (etc / "hasupd.yaml").write_text(yaml.safe_dump(daemon_yaml))
        d = hasupd(etc, runtime_dir=shared / "run")
        d.wait_ready()
        refused = d.ctl(
            "restore", "app-data", "--target", "/tmp/x", user=operator.pw_name, pythonpath=shared / "lib"
        )
        assert refused.returncode == 4, refused
        audit = d.wait_for("audit", uid=operator.pw_uid)[0]
        assert audit["outcome"].startswith("refused") and "--job=app-data" in audit["request"]
        assert d.stop() == 0
