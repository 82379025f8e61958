"""The supervisor core against real processes and signals."""

from __future__ import annotations

import itertools
import os
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.support.harness import Hasupd, pid_alive, record_time, require, write_config

PY = sys.executable
CONTAINMENT = ["cgroup", "process-group"]


def containment_args(kind: str) -> tuple[str, ...]:
    if kind == "cgroup":
        require(
            os.geteuid() == 0, "cgroup containment needs root and a writable cgroup2", "HASUPD_TEST_NO_CGROUP"
        )
        return ()
    return ("--no-cgroup",)


def test_sigkilled_service_runs_again_quickly_and_backoff_grows_then_resets(
    tmp_path: Path, hasupd: Callable[..., Hasupd]
) -> None:
    config = write_config(
        tmp_path / "etc",
        {
            "web": {
                "command": [PY, "-c", "import time; time.sleep(1000)"],
                "restart_sec": "100ms",
                "restart_max_delay_sec": "1s",
                "start_limit": {"burst": 50, "interval_sec": "60s"},
            },
        },
    )
    d = hasupd(config)
    pid = d.wait_for("service.started", service="web")[0]["pid"]
    # 1. One SIGKILL from outside: running again under a new pid within restart_sec + 50 ms.
    killed_at = time.time()
    os.kill(pid, signal.SIGKILL)
    again = d.wait_for("service.started", count=2, service="web")[1]
    assert again["pid"] != pid and pid_alive(again["pid"])
    assert record_time(again) - killed_at <= 0.100 + 0.050, record_time(again) - killed_at
    # 2. Crashes in quick succession: the delay doubles.
    for n in range(3, 6):
        os.kill(d.wait_for("service.started", count=n - 1, service="web")[-1]["pid"], signal.SIGKILL)
        d.wait_for("service.started", count=n, service="web")
    delays = [r["delay_sec"] for r in d.find("service.restart_scheduled", service="web")]
    assert len(delays) == 4
    for earlier, later in itertools.pairwise(delays):
        assert later > earlier * 1.5, delays  # doubling, less at most a fifth of jitter
    assert all(
        r["reason"] == "result signal and restart is 'on-failure'"
        for r in d.find("service.restart_scheduled")
    )
    # 3. A stable run (longer than restart_max_delay_sec) resets the backoff.
    time.sleep(1.3)
    os.kill(d.find("service.started", service="web")[-1]["pid"], signal.SIGKILL)
    d.wait_for("service.restart_scheduled", count=5, service="web")
    assert d.find("service.restart_scheduled")[-1]["delay_sec"] <= 0.100
    assert d.stop() == 0


def test_exits_at_once_reaches_failed_and_is_not_spawned_again(
    tmp_path: Path, hasupd: Callable[..., Hasupd]
) -> None:
    config = write_config(
        tmp_path / "etc",
        {
            "broken": {
                "command": ["/bin/false"],
                "restart": "always",
                "restart_sec": "50ms",
                "start_limit": {"burst": 4, "interval_sec": "30s"},
            },
            "fine": {"command": ["/bin/sleep", "1000"]},
        },
    )
    d = hasupd(config)
    failed = d.wait_for("service.failed", service="broken")[0]
    assert failed["result"] == "start-limit-hit"
    assert len(d.find("service.started", service="broken")) == 4
    time.sleep(1.0)
    assert len(d.find("service.started", service="broken")) == 4  # not spawned again
    assert d.find("service.state", service="broken") == []  # debug records are off by default
    assert len(d.find("service.started", service="fine")) == 1  # the others are untouched
    assert d.stop() == 0


@pytest.mark.parametrize("kind", CONTAINMENT)
def test_stop_leaves_nothing_of_the_tree_alive(
    kind: str, tmp_path: Path, hasupd: Callable[..., Hasupd]
) -> None:
    extra = containment_args(kind)
    pids = tmp_path / "pids"
    pids.mkdir()
    # main ignores SIGTERM; it starts a setsid'd grandchild and a double-forked daemon, both ignoring
    # SIGTERM too, and each records its pid.
    script = tmp_path / "stubborn.py"
    script.write_text(f"""
import os, signal, subprocess, sys, time
PIDS = {str(pids)!r}
signal.signal(signal.SIGTERM, signal.SIG_IGN)
open(PIDS + '/main', 'w').write(str(os.getpid()))
child = ("import os, signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN);"
         "open(%r + '/setsid', 'w').write(str(os.getpid())); time.sleep(1000)" % PIDS)
subprocess.Popen([sys.executable, '-c', child], start_new_session=True)
if os.fork() == 0:
    os.setsid()
    if os.fork() == 0:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        open(PIDS + '/daemon', 'w').write(str(os.getpid()))
        time.sleep(1000)
    os._exit(0)
time.sleep(1000)
""")
    config = write_config(
        tmp_path / "etc",
        {
            "stubborn": {"command": [PY, str(script)], "timeout_stop_sec": "1s"},
        },
    )
    d = hasupd(config, extra_args=extra)
    d.wait_for("service.started", service="stubborn")
    deadline = time.monotonic() + 10
    while len(list(pids.iterdir())) < 3 and time.monotonic() < deadline:
        time.sleep(0.02)
    tree = {p.name: int(p.read_text()) for p in pids.iterdir()}
    assert set(tree) == {"main", "setsid", "daemon"}
    assert all(pid_alive(p) for p in tree.values())
    stopped_at = time.monotonic()
    d.proc.send_signal(signal.SIGTERM)
    assert d.proc.wait(10) == 0
    assert time.monotonic() - stopped_at <= 1.0 + 1.0
    assert {n: p for n, p in tree.items() if pid_alive(p)} == {}
    killed = d.find("service.killed", service="stubborn")
    assert killed and killed[0]["signal"] == "SIGKILL" and killed[0]["processes"] >= 3
    d.stop()
