"""Several instances behind sockets hasupd holds: crashes refuse no connection, rolling restarts lose
no request. A load generator on loopback measures it; set HASUPD_BENCH_OUT=FILE to keep the numbers
(bench/REDUNDANCY.md records a run)."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tests.support.harness import REPO, Hasupd, write_config
from tests.support.loadgen import Load

APP = str(REPO / "examples" / "listen_http.py")
KILL_PHASE_SEC = 60.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def record(name: str, numbers: dict[str, Any]) -> None:
    out = os.environ.get("HASUPD_BENCH_OUT")
    if out:
        path = Path(out)
        data = json.loads(path.read_text()) if path.exists() else {}
        data[name] = numbers
        path.write_text(json.dumps(data, indent=2) + "\n")
    print(name, numbers)


def service(port: int, instances: int) -> dict[str, Any]:
    return {
        "command": [sys.executable, APP],
        "instances": instances,
        "environment": {"INSTANCE": "{instance}"},
        "sockets": [{"listen": f"127.0.0.1:{port}"}],
        "restart_sec": "100ms",
        "restart_max_delay_sec": "200ms",
        "start_limit": {"burst": 1000, "interval_sec": "60s"},
    }


def pids(d: Hasupd) -> dict[str, int]:
    result = d.ctl("status", "--json")
    assert result.returncode == 0, result.stderr
    return {s["name"]: s["pid"] for s in json.loads(result.stdout) if s["pid"]}


def wait_serving(port: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with Load(port, workers=1) as load:
            time.sleep(0.2)
        if load.result.requests and not load.result.failed:
            return
    raise AssertionError(f"nothing serves on {port}")


def test_killing_instances_one_after_another_refuses_nothing(
    tmp_path: Path, hasupd: Callable[..., Hasupd]
) -> None:
    port = free_port()
    d = hasupd(write_config(tmp_path / "etc", {"hello": service(port, 3)}))
    d.wait_for("service.started", count=3)
    wait_serving(port)
    kills = 0
    with Load(port) as load:
        started = time.monotonic()
        while time.monotonic() - started < KILL_PHASE_SEC:
            unit = f"hello@{kills % 3}"
            # The newest start record of that instance (cheaper than a status call per kill).
            starts = d.find("service.started", service=unit)
            pid = starts[-1]["pid"] if starts else None
            if pid:
                with contextlib.suppress(ProcessLookupError):  # still restarting: try the next one
                    os.kill(pid, signal.SIGKILL)
                    kills += 1
            time.sleep(1.0)
    result = load.result
    numbers = {**result.summary(), "kills": kills, "seconds": KILL_PHASE_SEC}
    record("three_instances_sigkilled_in_turn", numbers)
    assert kills >= 45  # one a second, less what the machine's load takes
    assert result.refused == 0, numbers
    assert result.failed == 0, (numbers, result.errors[:5])
    assert result.requests > 1000
    status = d.ctl("status")
    assert "hello: 3/3 instances running" in status.stdout, status.stdout
    assert d.stop() == 0


def test_single_instance_sigkilled_under_load_keeps_connections_waiting(
    tmp_path: Path, hasupd: Callable[..., Hasupd]
) -> None:
    port = free_port()
    d = hasupd(write_config(tmp_path / "etc", {"solo": service(port, 1)}))
    d.wait_for("service.started")
    wait_serving(port)
    with Load(port) as load:
        for n in range(5):
            time.sleep(1.0)
            os.kill(pids(d)["solo"], signal.SIGKILL)
            d.wait_for("service.started", count=n + 2)
        time.sleep(1.0)
    result = load.result
    numbers = {**result.summary(), "kills": 5, "longest_wait_ms": result.summary()["max_ms"]}
    record("single_instance_sigkilled", numbers)
    assert result.refused == 0, numbers
    assert result.failed == 0, (numbers, result.errors[:5])
    assert d.stop() == 0


def test_rolling_restart_under_load_fails_no_request(tmp_path: Path, hasupd: Callable[..., Hasupd]) -> None:
    port = free_port()
    config = service(port, 3)
    config["health"] = [{"http": f"http://127.0.0.1:{port}/", "interval_sec": "200ms", "failures": 2}]
    d = hasupd(write_config(tmp_path / "etc", {"hello": config}))
    d.wait_for("health.ok", count=3, timeout=15)
    before = pids(d)
    with Load(port) as load:
        time.sleep(0.5)
        rolled = d.ctl("restart", "--rolling", "hello")
        time.sleep(0.5)
    assert rolled.returncode == 0, rolled.stderr
    after = pids(d)
    assert all(after[u] != before[u] for u in before)
    # One at a time: each instance was stopped only after the previous one was healthy again.
    order = [
        (r["event"], r["service"]) for r in d.records if r.get("event") in ("service.stopping", "health.ok")
    ]
    rolled_part = order[order.index(("service.stopping", "hello@0")) :]
    assert rolled_part == [
        ("service.stopping", "hello@0"),
        ("health.ok", "hello@0"),
        ("service.stopping", "hello@1"),
        ("health.ok", "hello@1"),
        ("service.stopping", "hello@2"),
        ("health.ok", "hello@2"),
    ], rolled_part
    result = load.result
    record("rolling_restart", result.summary())
    assert result.refused == 0 and result.failed == 0, (result.summary(), result.errors[:5])
    assert d.stop() == 0


def test_rolling_restart_stops_at_an_instance_that_does_not_come_back(
    tmp_path: Path, hasupd: Callable[..., Hasupd]
) -> None:
    port = free_port()
    flag = tmp_path / "broken"
    config = service(port, 2)
    # Instances refuse to start once the flag exists.
    config["command"] = ["/bin/sh", "-c", f"test -e {flag} && exit 1; exec {sys.executable} {APP}"]
    config["start_limit"] = {"burst": 2, "interval_sec": "60s"}
    d = hasupd(write_config(tmp_path / "etc", {"hello": config}))
    d.wait_for("service.started", count=2)
    wait_serving(port)
    time.sleep(0.5)  # both shells have looked for the flag and exec'd the server
    flag.touch()
    rolled = d.ctl("restart", "--rolling", "hello")
    assert rolled.returncode == 1
    assert "hello@0" in rolled.stderr and "stopped" in rolled.stderr
    assert pids(d).get("hello@1")  # the second instance was left alone
    assert d.stop() == 0


def test_a_socket_in_use_is_a_clear_start_error(tmp_path: Path, hasupd: Callable[..., Hasupd]) -> None:
    port = free_port()
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", port))
        squatter.listen()
        config = service(port, 1)
        config["restart"] = "no"
        d = hasupd(
            write_config(tmp_path / "etc", {"web": config, "other": {"command": ["/bin/sleep", "100"]}})
        )
        failed = d.wait_for("service.spawn_failed", service="web")[0]
        assert f"cannot listen on 127.0.0.1:{port}: address already in use" in failed["error"]
        assert d.wait_for("service.failed", service="web")[0]["result"] == "resources"
        assert d.proc.poll() is None and "other" in pids(d)
        assert d.stop() == 0
