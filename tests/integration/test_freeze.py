"""Freeze detection against real processes: sd_notify, watchdog, probes, limits, ordering."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import sys
import textwrap
import threading
import time
from collections.abc import Callable
from pathlib import Path

from tests.support.harness import Hasupd, record_time, write_config

PY = sys.executable


def script(folder: Path, name: str, body: str) -> str:
    path = folder / name
    path.write_text(textwrap.dedent(body))
    return str(path)


NOTIFY_APP = """
import os, sys, time, sdnotify
n = sdnotify.SystemdNotifier()
time.sleep(float(sys.argv[1]))
n.notify("READY=1\\nSTATUS=serving 3 clients")
interval = int(os.environ.get("WATCHDOG_USEC", "0")) / 4e6
while True:
    if interval:
        n.notify("WATCHDOG=1")
        time.sleep(interval)
    else:
        time.sleep(1000)
"""


def test_a_frozen_notify_service_is_killed_and_restarted(
    tmp_path: Path, hasupd: Callable[..., Hasupd]
) -> None:
    app = script(tmp_path, "app.py", NOTIFY_APP)
    config = write_config(
        tmp_path / "etc",
        {
            "api": {
                "command": [PY, app, "0.1"],
                "type": "notify",
                "watchdog_sec": "1s",
                "restart_sec": "100ms",
            },
        },
    )
    d = hasupd(config)
    first = d.wait_for("service.ready", service="api")[0]
    time.sleep(1.5)  # pings keep it alive well past watchdog_sec
    assert d.find("watchdog.timeout") == []
    # 6. A process outside the service's tree pings its socket: that is no heartbeat.
    stop_outsider = threading.Event()

    def outsider() -> None:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
            while not stop_outsider.is_set():
                with contextlib.suppress(OSError):
                    s.sendto(b"WATCHDOG=1", str(d.runtime_dir / "notify" / "api.sock"))
                time.sleep(0.1)

    pinger = threading.Thread(target=outsider)
    pinger.start()
    try:
        frozen_at = time.time()
        os.kill(first["pid"], signal.SIGSTOP)
        timeout = d.wait_for("watchdog.timeout", service="api", timeout=5)[0]
        again = d.wait_for("service.ready", service="api", count=2, timeout=5)[1]
    finally:
        stop_outsider.set()
        pinger.join()
    # 1. Running again within watchdog_sec + 1 s, with result watchdog.
    assert record_time(again) - frozen_at <= 1.0 + 1.0, record_time(again) - frozen_at
    assert timeout["pid"] == first["pid"]
    # Not before the deadline: the last ping came at most a quarter of watchdog_sec before the freeze.
    assert record_time(timeout) - frozen_at >= 1.0 - 0.25 - 0.05
    exited = d.find("service.exited", service="api")[0]
    assert exited["signal"] in ("SIGABRT", "SIGKILL") and exited["pid"] == first["pid"]
    restart = d.find("service.restart_scheduled", service="api")[0]
    assert restart["result"] == "watchdog"
    assert d.stop() == 0


def test_sdnotify_program_reaches_running_on_ready_with_its_status(
    tmp_path: Path, hasupd: Callable[..., Hasupd]
) -> None:
    app = script(tmp_path, "app.py", NOTIFY_APP)
    config = write_config(tmp_path / "etc", {"api": {"command": [PY, app, "1.0"], "type": "notify"}})
    d = hasupd(config)
    d.wait_for("service.started", service="api")
    early = json.loads(d.ctl("status", "--json").stdout)[0]
    assert early["state"] == "start"  # not running before READY=1
    d.wait_for("service.ready", service="api")
    status = d.ctl("status")
    assert status.returncode == 0
    assert "running" in status.stdout and "serving 3 clients" in status.stdout
    assert json.loads(d.ctl("status", "--json").stdout)[0]["status_text"] == "serving 3 clients"
    assert d.stop() == 0


HTTP_APP = """
import http.server, os, sys, time
flag, log, early = sys.argv[1], sys.argv[2], float(sys.argv[3])
start = time.monotonic()
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        bad = time.monotonic() - start < early or os.path.exists(flag)
        code = 500 if bad else 200
        with open(log, "a") as f:
            f.write(f"{code} {'flag' if os.path.exists(flag) else 'noflag'}\\n")
        self.send_response(code); self.end_headers()
    def log_message(self, *a): pass
http.server.HTTPServer(("127.0.0.1", int(sys.argv[4])), H).serve_forever()
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_http_service_answering_500_is_restarted_after_exactly_failures(
    tmp_path: Path, hasupd: Callable[..., Hasupd]
) -> None:
    port = free_port()
    flag, log = tmp_path / "flag", tmp_path / "requests.log"
    app = script(tmp_path, "app.py", HTTP_APP)
    config = write_config(
        tmp_path / "etc",
        {
            "web": {
                "command": [PY, app, str(flag), str(log), "1.0", str(port)],
                "health": [
                    {
                        "http": f"http://127.0.0.1:{port}/health",
                        "interval_sec": "200ms",
                        "timeout_sec": "1s",
                        "failures": 3,
                        "start_period_sec": "1500ms",
                    }
                ],
            },
        },
    )
    d = hasupd(config)
    d.wait_for("health.ok", service="web", timeout=10)
    # 3a. It answered 500 during its first second: inside start_period_sec, so nothing happened.
    assert log.read_text().split("\n").count("500 noflag") >= 3
    assert d.find("health.failed") == []
    flag.touch()
    failed = d.wait_for("health.failed", service="web", timeout=10)[0]
    assert failed["failures"] == 3 and "HTTP 500" in failed["detail"]
    d.wait_for("service.started", service="web", count=2, timeout=10)
    # 3b. Exactly `failures` consecutive 500s before the restart.
    lines = log.read_text().split("\n")
    first_flagged = lines.index("500 flag")
    assert lines[first_flagged : first_flagged + 4].count("500 flag") == 3
    assert d.find("service.restart_scheduled", service="web")[0]["result"] == "health"
    flag.unlink()
    assert d.stop() == 0


def test_memory_growth_past_the_limit_restarts_with_resources(
    tmp_path: Path, hasupd: Callable[..., Hasupd]
) -> None:
    hog = script(
        tmp_path,
        "hog.py",
        """
        import time
        blocks = []
        while True:
            blocks.append(bytearray(8 * 1024 * 1024))
            time.sleep(0.05)
            if len(blocks) > 40:
                time.sleep(1000)
    """,
    )
    config = write_config(tmp_path / "etc", {"hog": {"command": [PY, hog], "limits": {"memory": "100M"}}})
    d = hasupd(config)
    exceeded = d.wait_for("limit.exceeded", service="hog", timeout=20)[0]
    assert exceeded["limit"] == "memory"
    restart = d.wait_for("service.restart_scheduled", service="hog")[0]
    assert restart["result"] in ("resources", "oom-kill")
    assert d.stop() == 0


def test_after_waits_for_a_slow_ready(tmp_path: Path, hasupd: Callable[..., Hasupd]) -> None:
    app = script(tmp_path, "app.py", NOTIFY_APP)
    config = write_config(
        tmp_path / "etc",
        {
            "a": {"command": [PY, app, "1.5"], "type": "notify"},
            "b": {"command": ["/bin/sleep", "1000"], "after": ["a"]},
        },
    )
    d = hasupd(config)
    b = d.wait_for("service.started", service="b", timeout=10)[0]
    a_ready = d.find("service.ready", service="a")[0]
    a_started = d.find("service.started", service="a")[0]
    assert record_time(b) >= record_time(a_ready) >= record_time(a_started) + 1.4
    assert d.stop() == 0
    # Stopped in reverse: b before a.
    stopped = [r["service"] for r in d.records if r.get("event") == "service.stopped"]
    assert stopped == ["b", "a"]


def test_a_probe_added_by_a_reload_catches_a_freeze(tmp_path: Path, hasupd: Callable[..., Hasupd]) -> None:
    port = free_port()
    app = script(tmp_path, "app.py", HTTP_APP)
    body = {"command": [PY, app, str(tmp_path / "flag"), str(tmp_path / "log"), "0", str(port)]}
    config = write_config(tmp_path / "etc", {"web": body})
    d = hasupd(config, extra_args=("--no-watch",))  # the reload below is the explicit one
    pid = d.wait_for("service.started", service="web")[0]["pid"]
    probe = {
        "http": f"http://127.0.0.1:{port}/",
        "interval_sec": "200ms",
        "timeout_sec": "500ms",
        "failures": 2,
    }
    (config / "services.d" / "web.yaml").write_text(json.dumps({**body, "health": [probe]}))
    dry = d.ctl("reload", "--dry-run")
    assert "update  web in place (changed: health)" in dry.stdout, dry.stdout
    reload = d.ctl("reload")
    assert reload.returncode == 0, reload.stderr
    assert d.wait_for("config.applied")[0]["changed"] == ["web"]
    # The process was kept, and the new probe runs against it: healthy, so the status says so.
    d.wait_for("health.ok", service="web", timeout=10)
    [status] = json.loads(d.ctl("status", "--json").stdout)
    assert status["pid"] == pid and status["health"] == "healthy"
    assert len(d.find("service.started", service="web")) == 1
    frozen_at = time.time()
    os.kill(pid, signal.SIGSTOP)
    failed = d.wait_for("health.failed", service="web", timeout=10)[0]
    again = d.wait_for("service.started", service="web", count=2, timeout=10)[1]
    assert again["pid"] != pid
    # Two failed checks of at most interval + timeout each, then the stop.
    assert record_time(failed) - frozen_at < 2 * (0.2 + 0.5) + 1.0, record_time(failed) - frozen_at
    exited = d.find("service.exited", service="web")[0]
    assert exited["pid"] == pid and exited["expected"] is True
    assert d.find("service.restart_scheduled", service="web")[0]["result"] == "health"
    assert d.stop() == 0


def test_incident_reasons_name_the_service(tmp_path: Path, hasupd: Callable[..., Hasupd]) -> None:
    hog = script(
        tmp_path,
        "hog.py",
        """
        import time
        block = bytearray(96 * 1024 * 1024)
        time.sleep(1000)
        """,
    )
    sleep = ["/bin/sleep", "1000"]
    slow = {"restart_sec": "30s"}  # one incident each is enough
    config = write_config(
        tmp_path / "etc",
        {
            "probed": {
                "command": sleep,
                "health": [{"exec": ["/bin/false"], "interval_sec": "200ms", "failures": 2}],
                **slow,
            },
            "pinged": {"command": sleep, "watchdog_sec": "500ms", **slow},
            "beating": {
                "command": sleep,
                "heartbeat_file": {"path": str(tmp_path / "beat"), "max_age_sec": "500ms"},
                **slow,
            },
            "hog": {"command": [PY, hog], "limits": {"memory": "32M"}, **slow},
        },
    )
    d = hasupd(config)
    expected = {
        "probed": "probed unhealthy after 2 failed exec probe(s): ",
        "pinged": "pinged (pid {pid}) watchdog: no WATCHDOG=1 within 0.5s",
        "beating": "beating (pid {pid}) watchdog: heartbeat file ",
        "hog": "hog over its memory limit: ",
    }
    for name, start in expected.items():
        opened = d.wait_for("incident.opened", service=name, timeout=20)[0]
        pid = d.find("service.started", service=name)[0]["pid"]
        shown = d.ctl("incident", opened["incident"])
        assert shown.returncode == 0, shown.stderr
        line = next(li for li in shown.stdout.splitlines() if li.startswith("  opened "))
        reason = line.split(": ", 1)[1]
        assert reason.startswith(start.format(pid=pid)), (name, shown.stdout)
        assert "None" not in reason
    assert d.stop() == 0


def test_a_heartbeat_and_a_limit_added_by_a_reload_act_on_the_running_process(
    tmp_path: Path, hasupd: Callable[..., Hasupd]
) -> None:
    hog = script(tmp_path, "hog.py", "import time\nblock = bytearray(96 * 1024 * 1024)\ntime.sleep(1000)\n")
    beat = {"command": ["/bin/sleep", "1000"]}
    hogged = {"command": [PY, hog]}
    config = write_config(tmp_path / "etc", {"beat": beat, "hog": hogged})
    d = hasupd(config, extra_args=("--no-watch",))
    d.wait_ready()
    pids = {name: d.find("service.started", service=name)[0]["pid"] for name in ("beat", "hog")}
    time.sleep(1.5)  # the hog has its memory now; nothing watches it yet
    assert d.find("limit.exceeded") == [] and d.find("watchdog.timeout") == []
    services = config / "services.d"
    heartbeat = {"path": str(tmp_path / "never-touched"), "max_age_sec": "500ms"}
    (services / "beat.yaml").write_text(json.dumps({**beat, "heartbeat_file": heartbeat}))
    (services / "hog.yaml").write_text(json.dumps({**hogged, "limits": {"memory": "32M"}}))
    dry = d.ctl("reload", "--dry-run").stdout
    assert "update  beat in place (changed: heartbeat_file)" in dry, dry
    assert "update  hog in place (changed: limits)" in dry, dry
    assert d.ctl("reload").returncode == 0
    timeout = d.wait_for("watchdog.timeout", service="beat", timeout=10)[0]
    exceeded = d.wait_for("limit.exceeded", service="hog", timeout=15)[0]
    # Caught on the very processes that ran before the reload: the reload itself restarted nothing.
    assert timeout["pid"] == pids["beat"] and "never-touched" in timeout["reason"]
    assert exceeded["limit"] == "memory"
    exited = {name: d.wait_for("service.exited", service=name)[0] for name in pids}
    assert {name: r["pid"] for name, r in exited.items()} == pids
    assert d.stop() == 0
