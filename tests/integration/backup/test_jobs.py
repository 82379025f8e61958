"""Backup jobs run by the real daemon against real restic repositories (the system's restic; the
restic layer itself is tested against 0.14 and 0.18 in the other files of this folder)."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import time
import urllib.request
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

from prometheus_client.parser import text_string_to_metric_families

from tests.integration.backup.conftest import RestServer
from tests.integration.backup.jobsupport import QUIET, Setup, stamp
from tests.support.harness import Hasupd


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_missed_run_retention_and_long_term_copies(
    setup: Setup, rest_server: RestServer, hasupd: Callable[..., Hasupd]
) -> None:
    cold = rest_server.repo_url()
    metrics_port = free_port()
    config = setup.config(
        {
            **QUIET,
            "keep": {"last": 3},
            "long_term": {"repository": "cold", "schedule": "@monthly", "keep": {"last": 1}},
        },
        cold=cold,
        daemon={"metrics": {"listen": f"127.0.0.1:{metrics_port}"}},
    )
    work = setup.tmp / "work0"
    now = datetime.now(UTC)
    # 6. The last backup was two days ago: hasupd was down at the daily slot, so it runs at start.
    stamp(work, "backup", now - timedelta(days=2))
    for kind in ("long_term", "prune"):
        stamp(work, kind, now)
    d = hasupd(config)
    first = d.wait_for("backup.finished", timeout=60)[0]
    assert first["job"] == "app-data"
    assert len(setup.snapshots()) == 1
    # Two more backups, then the long-term copy and its own retention in the cold repository.
    lt = d.ctl("backup", "run", "app-data", "--kind", "long_term")
    assert lt.returncode == 0, lt.stderr
    for n in (2, 3):
        (setup.data / f"c{n}.txt").write_text(str(n))
        result = d.ctl("backup", "run", "app-data")
        assert result.returncode == 0, result.stderr
    (setup.data / "c4.txt").write_text("4")
    assert d.ctl("backup", "run", "app-data").returncode == 0
    hot = setup.snapshots()
    assert len(hot) == 3  # 1. keep last 3 (computed here independently: the three newest of four)
    lt = d.ctl("backup", "run", "app-data", "--kind", "long_term")
    assert lt.returncode == 0, lt.stderr
    cold_ids = [s["id"] for s in setup.snapshots(cold)]
    # 2. The cold repository holds exactly the long-term set (last 1 = the newest hot snapshot); the
    # copy made earlier was forgotten by the cold repository's own retention.
    assert len(cold_ids) == 1
    assert setup.snapshots(cold)[0]["time"] == hot[-1]["time"]
    copies = d.find("backup.copied")
    assert len(copies) == 2 and len(copies[1]["forgot"]) == 1
    again = d.ctl("backup", "run", "app-data", "--kind", "long_term")
    assert again.returncode == 0
    assert d.find("backup.copied")[-1].get("copied", []) == []  # a second run copies nothing
    listing = d.ctl("backup", "list", "app-data", "--json")
    assert len(json.loads(listing.stdout)) == 3
    with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10) as scrape:
        samples = {
            (s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(scrape.read().decode())
            for s in family.samples
        }
    job = (("job", "app-data"),)
    assert abs(samples[("hasupd_backup_last_success_timestamp_seconds", job)] - time.time()) < 120
    assert samples[("hasupd_backup_bytes_added", job)] >= 0
    assert samples[("hasupd_backup_duration_seconds", job)] >= 0
    status = json.loads(d.ctl("backup", "status", "--json").stdout)[0]
    assert status["last"]["backup"]["ok"] and status["age_sec"] is not None and status["age_sec"] < 120
    assert d.stop() == 0


def test_failing_before_command_snapshots_nothing_and_alerts(
    setup: Setup, hasupd: Callable[..., Hasupd]
) -> None:
    config = setup.config(
        {**QUIET, "before": [["/bin/sh", "-c", "echo dump failed >&2; exit 4"]], "quiesce": ["app"]},
        services={"app": {"command": ["/bin/sleep", "1000"]}},
    )
    d = hasupd(config)
    app = d.wait_for("service.started", service="app")[0]
    failed = d.wait_for("backup.failed", timeout=30)[0]
    assert failed["step"] == "before" and "dump failed" in failed["error"]
    assert failed["level"] == "error"  # what the alert path picks up
    assert setup.snapshots() == []
    assert d.wait_for("service.failed", service="app-data")[0]["result"] == "exit-code"
    assert len(d.find("service.started", service="app-data")) == 1  # a retry cannot help: none
    status = json.loads(d.ctl("status", "app", "--json").stdout)[0]
    assert status["state"] == "running" and status["pid"] == app["pid"]
    assert d.stop() == 0


def test_hasupd_killed_mid_backup_resumes_the_service_and_the_next_backup_succeeds(
    setup: Setup, hasupd: Callable[..., Hasupd]
) -> None:
    slow = setup.tmp / "slow"
    slow.touch()
    # While `slow` exists, a backup freezes (SIGSTOP) once restic holds its lock: "mid-backup".
    env = setup.wrapper(
        f'case " $* " in *" backup "*) if [ -e {slow} ]; then $REAL "$@" & pid=$!;'
        f' while [ -z "$(ls {setup.repo}/locks 2>/dev/null)" ]; do sleep 0.05; done;'
        " kill -STOP $pid; wait $pid; exit $?; fi;; esac"
    )
    config = setup.config(
        {**QUIET, "quiesce": ["app"], "keep": {"last": 5}},
        services={"app": {"command": ["/bin/sleep", "1000"]}},
    )
    d = hasupd(config, env=env)
    d.wait_for("service.stopping", service="app", timeout=30)
    deadline = time.monotonic() + 20
    while not (setup.repo / "locks").exists() or not any((setup.repo / "locks").iterdir()):
        assert time.monotonic() < deadline, "restic never took its lock"
        time.sleep(0.1)
    # The host goes down mid-backup: hasupd and restic die at once, the lock stays.
    d.kill()
    subprocess.run(["pkill", "-9", "-f", "job:app-data"], check=False)  # the wrapper and restic
    assert any((setup.repo / "locks").iterdir())
    slow.unlink()
    d2 = hasupd(config, env=env, state_dir=d.state_dir)  # hasupd comes back on the same state
    resumed = d2.wait_for("backup.resumed", timeout=20)[0]
    assert resumed["units"] == ["app"]
    d2.wait_for("service.started", service="app")
    finished = d2.wait_for("backup.finished", timeout=60)[0]  # never succeeded: due at start again
    assert finished["job"] == "app-data"
    assert d2.wait_for("backup.retention", timeout=30)  # the exclusive step got past the stale lock
    assert json.loads(d2.ctl("status", "app", "--json").stdout)[0]["state"] == "running"
    assert d2.stop() == 0


def test_unreadable_file_is_a_warning_naming_the_file(setup: Setup, hasupd: Callable[..., Hasupd]) -> None:
    secret = setup.data / "locked" / "secret.txt"
    secret.parent.mkdir()
    secret.write_text("unreadable\n")
    secret.chmod(0o000)
    # As root every file is readable: restic runs without the capabilities that bypass permissions.
    env = setup.wrapper('REAL="setpriv --bounding-set=-dac_override,-dac_read_search -- $REAL"')
    d = hasupd(setup.config(QUIET), env=env)
    warning = d.wait_for("backup.warning", timeout=60)[0]
    assert any(str(secret) in line for line in warning["unreadable"]), warning
    finished = d.find("backup.finished")[0]
    assert finished["partial"] is True
    assert len(setup.snapshots()) == 1  # the snapshot exists
    assert d.wait_for("service.stopped", service="app-data")[0]["result"] == "success"  # no retry
    assert d.stop() == 0


def test_corrupted_pack_is_found_by_the_rotating_check(setup: Setup, hasupd: Callable[..., Hasupd]) -> None:
    for n in range(30):
        (setup.data / f"f{n}.bin").write_bytes(os.urandom(200 * 1024))
    config = setup.config({**QUIET, "check": {"schedule": "@monthly", "read_data_subset": "1/3"}})
    work = setup.tmp / "work0"
    stamp(work, "check", datetime.now(UTC))
    stamp(work, "prune", datetime.now(UTC))
    d = hasupd(config)
    d.wait_for("backup.finished", timeout=60)
    packs = sorted(p for p in (setup.repo / "data").rglob("*") if p.is_file())
    assert packs
    for pack in packs:  # damage every data pack: whichever third is read finds it
        with open(pack, "r+b") as f:
            f.seek(100)
            f.write(b"\0" * 64)
    found = None
    for run in range(1, 4):
        result = d.ctl("backup", "run", "app-data", "--kind", "check")
        if result.returncode != 0:
            found = run
            break
    assert found is not None, "three rotating checks never found the damage"
    damage = d.wait_for("backup.check_failed")[0]
    assert damage["level"] == "error" and damage["subset"] == f"{found}/3"
    assert d.stop() == 0


def test_a_job_that_never_succeeds_alerts_when_max_age_passes(
    setup: Setup, hasupd: Callable[..., Hasupd]
) -> None:
    shutil.rmtree(setup.data)  # every run fails: the source is gone
    d = hasupd(setup.config({**QUIET, "max_age": "2s"}))
    stale = d.wait_for("backup.stale", timeout=15)[0]
    assert stale["job"] == "app-data" and stale.get("age_sec") is None
    assert stale["level"] == "error"
    assert d.find("backup.failed")[0]["step"] == "paths"
    assert d.stop() == 0


def test_a_job_added_by_reload_runs_and_a_removed_one_stops(
    setup: Setup, hasupd: Callable[..., Hasupd]
) -> None:
    etc = setup.config(QUIET)
    job_file = etc / "backups.d" / "app-data.yaml"
    text = job_file.read_text()
    job_file.unlink()
    d = hasupd(etc, extra_args=("--no-watch",))
    d.wait_ready()
    job_file.write_text(text)
    assert d.ctl("reload").returncode == 0
    assert d.wait_for("backup.finished", timeout=60)[0]["job"] == "app-data"
    job_file.unlink()
    assert d.ctl("reload").returncode == 0
    assert d.ctl("backup", "status", "app-data").returncode == 3  # gone
    assert d.stop() == 0
