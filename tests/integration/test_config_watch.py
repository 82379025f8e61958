"""The file watcher reloads on changes only, never on reads, with Debian 12's watchdog 2.2 and the newest.

watchdog 5 and later report plain reads (``opened``, ``closed_no_write``); a watcher that took them for
changes reloaded forever, since every reload reads the files. The test runs a real hasupd under each
version: the newest is the one installed with the tests; 2.2.1 (the version in Debian 12) is fetched
once from PyPI into ``$HASUPD_TEST_CACHE`` (default /var/cache/hasupd-test) and put first on the
daemon's ``PYTHONPATH``. If it cannot be fetched the test FAILS with the reason, unless
``HASUPD_TEST_ONE_WATCHDOG=1`` says to test the installed version only.
"""

from __future__ import annotations

import fcntl
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from tests.support.harness import REPO, Hasupd, require, write_config
from tests.support.restic_versions import cache_root

OLD_WATCHDOG = "2.2.1"
SLEEP = ["/bin/sleep", "1000"]


def old_watchdog() -> Path:
    """Return a folder holding watchdog 2.2.1 (to go first on PYTHONPATH), fetching it once."""
    target = cache_root() / f"watchdog-{OLD_WATCHDOG}"
    if (target / "watchdog").is_dir():
        return target
    cache_root().mkdir(parents=True, exist_ok=True)
    with open(cache_root() / ".watchdog.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # parallel test runs fetch it once
        if (target / "watchdog").is_dir():
            return target
        with tempfile.TemporaryDirectory(prefix="watchdog-", dir=cache_root()) as tmp:
            staging = Path(tmp) / "lib"
            argv = [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(staging)]
            done = subprocess.run(
                [*argv, f"watchdog=={OLD_WATCHDOG}"], capture_output=True, text=True, timeout=300, check=False
            )
            if done.returncode != 0:
                raise RuntimeError(f"pip install watchdog=={OLD_WATCHDOG} failed: {done.stderr[-2000:]}")
            staging.rename(target)
    return target


def watchdog_version(pythonpath: str) -> str:
    done = subprocess.run(
        [sys.executable, "-c", "import watchdog.version as v; print(v.VERSION_STRING)"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
        env={**os.environ, "PYTHONPATH": pythonpath},
    )
    return done.stdout.strip()


@pytest.fixture(params=["installed", OLD_WATCHDOG])
def daemon_pythonpath(request: pytest.FixtureRequest) -> str:
    """Yield the PYTHONPATH that gives the daemon each watchdog version."""
    if request.param == "installed":
        return str(REPO)
    try:
        folder = old_watchdog()
    except (RuntimeError, OSError, subprocess.TimeoutExpired) as error:
        require(False, f"watchdog {OLD_WATCHDOG} is needed: {error}", "HASUPD_TEST_ONE_WATCHDOG")
        raise AssertionError("unreachable") from error
    pythonpath = f"{folder}{os.pathsep}{REPO}"
    assert watchdog_version(pythonpath) == OLD_WATCHDOG
    return pythonpath


def test_reads_do_not_reload_and_an_edit_reloads_once(
    tmp_path: Path, hasupd: Callable[..., Hasupd], daemon_pythonpath: str
) -> None:
    config = write_config(tmp_path / "etc", {"web": {"command": SLEEP}, "db": {"command": SLEEP}})
    d = hasupd(config, env={"PYTHONPATH": daemon_pythonpath})
    d.wait_ready()
    services = config / "services.d"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    check = [sys.executable, "-m", "hasupd", "check-config", "--config-dir", str(config)]
    # What an operator (or a backup of /etc) does that only reads the files, several times over.
    for _ in range(3):
        subprocess.run(["cat", str(services / "web.yaml")], capture_output=True, check=True, timeout=30)
        subprocess.run(["tar", "-cf", "/dev/null", str(config)], capture_output=True, check=True, timeout=30)
        assert subprocess.run(check, env=env, capture_output=True, timeout=60, check=False).returncode == 0
        dry = d.ctl("reload", "--dry-run")
        assert dry.returncode == 0, dry.stderr
    time.sleep(3.0)  # six debounce periods: a reload loop would have reloaded several times by now
    assert d.find("config.applied") == [], "reading the config made hasupd reload"
    pid = d.find("service.started", service="db")[0]["pid"]
    # A real edit still reloads, exactly once (the reload's own reading does not start another).
    (services / "web.yaml").write_text(yaml.safe_dump({"command": SLEEP, "restart_sec": "2s"}))
    applied = d.wait_for("config.applied", timeout=10)[0]
    assert applied["changed"] == ["web"]
    time.sleep(3.0)
    assert len(d.find("config.applied")) == 1
    assert len(d.find("service.started", service="db")) == 1 and pid
    assert d.stop() == 0
