"""kill -9 of a real hasupd in the middle of an in-place restore and of a backup, then a restart on the
same state and runtime dirs: no restic left running, no staging folder, the live data as before, no
lock in the repository, a record of what was cleaned, and the quiesced service running once."""

from __future__ import annotations

import hashlib
import json
import os
import random
import subprocess
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

from tests.integration.backup.jobsupport import QUIET, Setup, stamp
from tests.support.harness import Hasupd, pid_alive


def restic_pids(repo: Path) -> set[int]:
    """Return the live restic processes working on ``repo`` (whoever started them)."""
    needle = f"RESTIC_REPOSITORY={repo}".encode()
    found = set()
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            if os.path.basename(os.readlink(f"/proc/{name}/exe")) != "restic":
                continue
            with open(f"/proc/{name}/environ", "rb") as f:
                if needle not in f.read().split(b"\0"):
                    continue
        except OSError:
            continue
        if pid_alive(int(name)):
            found.add(int(name))
    return found


def pids_running(argv: list[str]) -> set[int]:
    want = "\0".join(argv).encode()
    out = set()
    for name in os.listdir("/proc"):
        try:
            with open(f"/proc/{name}/cmdline", "rb") as f:
                if f.read().rstrip(b"\0") == want and pid_alive(int(name)):
                    out.add(int(name))
        except (OSError, ValueError):
            continue
    return out


def digest(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def wait(condition: Callable[[], object], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.01)


def big_data(data: Path, megabytes: int) -> None:
    for n in range(megabytes // 4):
        (data / f"blob{n:03}.bin").write_bytes(os.urandom(4 * 1024 * 1024))


def app_argv() -> tuple[list[str], list[str]]:
    """Return a service command and the command line it runs as. Unique, to count this test's
    instances only; it ignores SIGTERM, so stopping it for the swap takes its whole timeout_stop_sec:
    the kill lands before the swap at the latest."""
    seconds = str(random.randint(10**6, 10**7))
    return ["/bin/sh", "-c", f"trap '' TERM; exec /bin/sleep {seconds}"], ["/bin/sleep", seconds]


def locks(setup: Setup) -> list[str]:
    return str(setup.restic("list", "locks", "--no-lock")).split()


def test_kill_9_mid_in_place_restore_then_restart_undoes_it(
    setup: Setup, hasupd: Callable[..., Hasupd]
) -> None:
    big_data(setup.data, 160)  # restic takes a while restoring it: the kill lands while it runs
    setup.restic("backup", "--tag", "hasupd", "--tag", "job:app-data", str(setup.data))
    (setup.data / "a.txt").write_text("changed after the snapshot\n")
    for kind in ("backup", "prune"):
        stamp(setup.tmp / "work0", kind, datetime.now(UTC))
    argv, runs_as = app_argv()
    app = {"command": argv, "timeout_stop_sec": "20s"}
    config = setup.config({**QUIET, "quiesce": ["app"]}, services={"app": app})
    d = hasupd(config)
    d.wait_for("service.started", service="app")
    before = digest(setup.data)
    ctl = subprocess.Popen(
        [
            "/usr/bin/python3",
            "-m",
            "hasupd.cli.ctl",
            "--socket",
            str(d.socket),
            "restore",
            "app-data",
            "--in-place",
        ],
        env={"PATH": os.environ["PATH"], "PYTHONPATH": str(Path(__file__).resolve().parents[3])},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    d.wait_for("restore.step", step="stage", timeout=60)
    wait(lambda: restic_pids(setup.repo), 60, "restic never ran the restore")
    staging = list(setup.tmp.glob(".data.hasupd-restore-*"))
    d.kill()  # the host's admin, or the OOM killer
    _, err = ctl.communicate(timeout=30)
    assert ctl.returncode != 0, err
    assert staging, "there was a staging folder"
    # restic got SIGINT with its parent's death: it does not run on without it.
    wait(lambda: not restic_pids(setup.repo), 15, "restic outlived hasupd")
    d2 = hasupd(config, state_dir=d.state_dir, runtime_dir=d.runtime_dir)
    record = d2.wait_for("backup.interrupted", timeout=60)[0]
    assert record["job"] == "app-data"
    assert any("in-place restore by root" in op for op in record["operations"]), record
    assert any("removed the staging folder" in line for line in record["cleaned"]), record
    d2.wait_for("daemon.ready", timeout=30)
    d2.wait_for("backup.unlocked", repository="hot", timeout=60)  # in the background, after ready
    assert not list(setup.tmp.glob(".data.hasupd-restore-*"))  # no staging left
    assert not list(setup.tmp.glob("data.*"))  # nothing moved aside either
    assert digest(setup.data) == before  # the live data as it was
    assert locks(setup) == []
    assert not restic_pids(setup.repo)
    # It ran on through hasupd's crash (the restore had not stopped it yet): adopted, not started again.
    d2.wait_for("service.adopted", service="app", timeout=30)
    time.sleep(1.0)
    assert len(pids_running(runs_as)) == 1  # the service runs, once
    status = json.loads(d2.ctl("status", "app", "--json").stdout)[0]
    assert status["state"] == "running"
    assert d2.stop(timeout=60) == 0


def test_kill_9_mid_backup_then_restart_resumes_the_service_once(
    setup: Setup, hasupd: Callable[..., Hasupd]
) -> None:
    big_data(setup.data, 200)
    argv = ["/bin/sleep", str(random.randint(10**6, 10**7))]
    config = setup.config({**QUIET, "quiesce": ["app"]}, services={"app": {"command": argv}})
    d = hasupd(config)
    d.wait_for("service.stopping", service="app", timeout=30)  # quiesced for the first backup
    wait(lambda: restic_pids(setup.repo) and list((setup.repo / "locks").iterdir()), 60, "no backup ran")
    before = digest(setup.data)
    d.kill()
    assert not d.find("backup.finished")  # it was killed mid-backup
    wait(lambda: not restic_pids(setup.repo), 15, "restic outlived hasupd")
    d2 = hasupd(config, state_dir=d.state_dir, runtime_dir=d.runtime_dir)
    record = d2.wait_for("backup.interrupted", timeout=60)[0]
    assert "backup" in record["operations"], record
    assert d2.wait_for("backup.resumed", timeout=10)[0]["units"] == ["app"]
    unlocked = d2.wait_for("backup.unlocked", timeout=60)[0]
    assert unlocked["repository"] == "hot" and "error" not in unlocked, unlocked
    d2.wait_for("backup.finished", timeout=120)  # the interrupted backup runs again, alone
    d2.wait_for("service.stopped", service="app-data", timeout=120)
    assert locks(setup) == []
    assert not restic_pids(setup.repo)
    assert digest(setup.data) == before
    wait(lambda: len(pids_running(argv)) == 1, 10, "the quiesced service does not run")
    time.sleep(1.0)
    assert len(pids_running(argv)) == 1  # once, not twice
    assert d2.stop() == 0


def test_restic_that_survived_hasupd_is_stopped_before_anything_restarts(
    setup: Setup, hasupd: Callable[..., Hasupd]
) -> None:
    """A restic that does not get the parent-death signal (here: a grandchild, under a wrapper, with
    its writes throttled so it runs for a while) is found by the restarted hasupd and stopped before
    the quiesced service and a new backup start."""
    big_data(setup.data, 20)
    slow = setup.tmp / "slow"
    slow.touch()
    env = setup.wrapper(
        f'case " $* " in *" backup "*) if [ -e {slow} ]; then'
        ' $REAL --limit-upload 500 "$@" & wait $!; exit $?; fi;; esac'
    )
    argv = ["/bin/sleep", str(random.randint(10**6, 10**7))]
    config = setup.config({**QUIET, "quiesce": ["app"]}, services={"app": {"command": argv}})
    d = hasupd(config, env=env)
    d.wait_for("service.stopping", service="app", timeout=30)
    wait(lambda: restic_pids(setup.repo) and list((setup.repo / "locks").iterdir()), 60, "no backup ran")
    d.kill()
    slow.unlink()
    time.sleep(0.5)
    old = restic_pids(setup.repo)
    assert old, "the grandchild restic should have survived hasupd here"
    d2 = hasupd(config, env=env, state_dir=d.state_dir, runtime_dir=d.runtime_dir)
    record = d2.wait_for("backup.interrupted", timeout=60)[0]
    assert any(f"pid {pid}" in line for line in record["cleaned"] for pid in old), record
    assert not any(pid_alive(pid) for pid in old)
    # The old restic was gone before the service and the new backup started.
    started = d2.wait_for("service.started", service="app", timeout=30)[0]
    assert d2.records.index(record) < d2.records.index(started)
    d2.wait_for("backup.finished", timeout=120)
    d2.wait_for("service.stopped", service="app-data", timeout=120)
    assert locks(setup) == []
    assert not restic_pids(setup.repo)
    wait(lambda: len(pids_running(argv)) == 1, 10, "the quiesced service does not run")
    assert d2.stop() == 0
