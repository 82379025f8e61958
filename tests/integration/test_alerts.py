"""Email alerts against a real SMTP server (aiosmtpd on loopback) and the real daemon.

Run against another aiosmtplib (Debian 12's 2.0, say) by putting it first on PYTHONPATH; the daemon
inherits it. ``HASUPD_TEST_AIOSMTPLIB=2.0.0`` makes the suite check which one it really ran with.
"""

from __future__ import annotations

import os
import signal
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import aiosmtplib
import pytest
from prometheus_client.parser import text_string_to_metric_families

from hasupd.alerts.mail import DeliveryError, SmtpMailer
from hasupd.config.model import SmtpConfig
from tests.support.harness import REPO, Hasupd, record_time, write_config
from tests.support.smtp import Cert, HangingServer, SmtpServer, free_port, self_signed

FROM, TO = "hasupd@test.example", "ops@test.example"
LOOP = {"restart_sec": "100ms", "restart_max_delay_sec": "200ms"}
# Crashes on its first run (after some output); later runs keep running.
CRASH_ONCE = """
import os, sys, time
marker = sys.argv[1]
if not os.path.exists(marker):
    open(marker, "w").close()
    for i in range(1, 31):
        print(f"line {i}", flush=True)
    print("fatal: out of cheese", flush=True)
    time.sleep(0.2)
    sys.exit(3)
while True:
    time.sleep(1)
"""


def environment() -> dict[str, str]:
    """The daemon sees the same aiosmtplib as the tests (PYTHONPATH is kept)."""
    return {"PYTHONPATH": os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)}


def channel(port: int, coalesce: str = "0s", on_crash: bool = True, **smtp: Any) -> dict[str, Any]:
    return {
        "email": {
            "smtp": {"host": "127.0.0.1", "port": port, "tls": "none", "timeout_sec": "5s", **smtp},
            "from": FROM,
            "to": [TO],
        },
        "coalesce_sec": coalesce,
        "on_crash": on_crash,
    }


def start(daemons: list[Hasupd], config: Path, work: Path) -> Hasupd:
    d = Hasupd(config, work, env=environment(), extra_args=("--no-watch",))
    daemons.append(d)
    d.wait_ready()
    return d


def spooled(work: Path) -> list[Path]:
    return sorted((work / "state" / "alerts").glob("*.json"))


def test_aiosmtplib_under_test() -> None:
    print(f"aiosmtplib {aiosmtplib.__version__} from {aiosmtplib.__file__}")
    expected = os.environ.get("HASUPD_TEST_AIOSMTPLIB")
    if expected:
        assert aiosmtplib.__version__ == expected
    probe = subprocess.run(
        [sys.executable, "-c", "import aiosmtplib; print(aiosmtplib.__version__)"],
        env={**os.environ, **environment()},
        capture_output=True,
        text=True,
        check=True,
    )
    assert probe.stdout.strip() == aiosmtplib.__version__  # the daemon runs with the same one


def test_crash_loop_of_20_restarts_is_two_messages_that_state_the_count(
    daemons: list[Hasupd], tmp_path: Path
) -> None:
    server = SmtpServer(free_port()).start()
    try:
        config = write_config(
            tmp_path / "etc",
            {
                "web": {
                    "command": ["/bin/sh", "-c", "echo starting; sleep 0.05; echo dying; exit 3"],
                    **LOOP,
                    "start_limit": {"burst": 20, "interval_sec": "60s"},
                }
            },
            daemon={"alerts": {"ops": channel(server.port, coalesce="12s")}},
        )
        d = start(daemons, config, tmp_path / "work")
        failed = d.wait_for("service.failed", service="web", timeout=30)[0]
        restarts = d.find("service.restart_scheduled", service="web")
        assert len(restarts) == 20
        loop_sec = record_time(failed) - record_time(restarts[0])
        assert loop_sec < 10, loop_sec

        messages = server.mailbox.wait(2, timeout=20)
        time.sleep(1.5)
        assert len(server.mailbox.received) == 2, [m.subject for m in server.mailbox.received]
        first, second = messages
        host = os.uname().nodename
        assert first.subject == f"[hasupd@{host}] web crashed and restarts (exit-code, restart #1)"
        assert second.subject == f"[hasupd@{host}] web: 20 more events: 19 x restart, 1 x failed"
        assert "web failed (start-limit-hit)" in second.body
        assert "Last exit: exit code 3" in second.body and "Restarts:  20" in second.body
        incident = failed["incident"]
        assert f"hasupctl incident {incident}" in second.body
        assert first.message["X-Hasupd-Incident"] == incident
        assert second.message["In-Reply-To"] == first.message["Message-ID"]
        assert "  | dying" in first.body  # the output before the first crash
        sent = d.wait_for("alert.sent", count=2)
        assert {r["message_id"] for r in sent} == {m.message["Message-ID"] for m in messages}
        assert spooled(tmp_path / "work") == []
        print(f"crash loop: {len(restarts)} restarts in {loop_sec:.2f}s -> 2 messages")
    finally:
        server.stop()


def test_alert_survives_a_dead_server_and_a_restart_of_hasupd_and_is_delivered_once(
    daemons: list[Hasupd], tmp_path: Path
) -> None:
    port = free_port()  # nothing listens here yet
    metrics_port = free_port()
    script = tmp_path / "web.py"
    script.write_text(CRASH_ONCE)
    config = write_config(
        tmp_path / "etc",
        {"web": {"command": [sys.executable, str(script), str(tmp_path / "crashed")], "restart": "no"}},
        daemon={"alerts": {"ops": channel(port)}, "metrics": {"listen": f"127.0.0.1:{metrics_port}"}},
    )
    work = tmp_path / "work"
    d1 = start(daemons, config, work)
    failed = d1.wait_for("service.failed", service="web", timeout=15)[0]
    first_try = d1.wait_for("alert.failed", timeout=15)[0]
    assert "127.0.0.1" in first_try["error"] and first_try["incident"] == failed["incident"]
    assert first_try["retry_in_sec"] >= 4  # 5 s minus jitter
    assert len(spooled(work)) == 1
    assert spool_depth(metrics_port) == 1
    assert d1.stop() == 0

    d2 = start(daemons, config, work)  # same state dir; the service runs fine this time
    d2.wait_for("alert.failed", timeout=15)  # tried at start: still down
    server = SmtpServer(port).start()
    try:
        sent = d2.wait_for("alert.sent", timeout=30)[0]
        assert sent["message_id"] == first_try["message_id"] and sent["incident"] == failed["incident"]
        time.sleep(2)
        assert len(server.mailbox.received) == 1
        mail = server.mailbox.received[0]
        assert mail.message["Message-ID"] == first_try["message_id"]
        assert mail.subject.endswith("web failed (exit-code)")
        assert "fatal: out of cheese" in mail.body and f"hasupctl incident {failed['incident']}" in mail.body
        assert spooled(work) == []
        assert spool_depth(metrics_port) == 0
    finally:
        server.stop()


def spool_depth(port: int) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        for family in text_string_to_metric_families(response.read().decode()):
            if family.name == "hasupd_alert_spool_depth":
                return float(family.samples[0].value)
    raise AssertionError("no hasupd_alert_spool_depth")


def test_resolved_message_follows_with_the_same_incident_id(daemons: list[Hasupd], tmp_path: Path) -> None:
    server = SmtpServer(free_port()).start()
    try:
        script = tmp_path / "web.py"
        script.write_text(CRASH_ONCE)
        config = write_config(
            tmp_path / "etc",
            {"web": {"command": [sys.executable, str(script), str(tmp_path / "crashed")], **LOOP}},
            daemon={"alerts": {"ops": channel(server.port, coalesce="500ms")}},
        )
        d = start(daemons, config, tmp_path / "work")
        closed = d.wait_for("incident.closed", service="web", timeout=15)[0]
        assert closed["outcome"] == "resolved"
        crash, resolved = server.mailbox.wait(2, timeout=15)
        incident = closed["incident"]
        assert crash.message["X-Hasupd-Incident"] == incident == resolved.message["X-Hasupd-Incident"]
        assert resolved.subject.endswith(f"web resolved (incident {incident})")
        assert resolved.message["In-Reply-To"] == crash.message["Message-ID"]
        assert "incident.closed" in resolved.body and "Restarts:  1" in resolved.body
        # An invalid config on reload alerts too (daemon-wide: every channel).
        (config / "services.d" / "bad.yaml").write_text("command: [/bin/true]\nrestart: sometimes\n")
        assert d.ctl("reload").returncode == 1
        invalid = server.mailbox.wait(3, timeout=10)[2]
        assert "configuration invalid (1 error(s)), running config kept" in invalid.subject
        assert "bad.yaml:2:10: restart:" in invalid.body
    finally:
        server.stop()


@pytest.fixture
def tls_setup(tmp_path: Path) -> tuple[Cert, Path]:
    """A self-signed certificate (its cert file is the ca_file) and a password file."""
    password_file = tmp_path / "smtp.pass"
    password_file.write_text("s3cret-Pa55\n")
    password_file.chmod(0o600)
    return self_signed(tmp_path), password_file


def test_starttls_with_auth_delivers_and_a_wrong_password_keeps_the_alert_spooled(
    daemons: list[Hasupd], tmp_path: Path, tls_setup: tuple[Cert, Path]
) -> None:
    cert, password_file = tls_setup
    ca = cert.cert
    server = SmtpServer(free_port(), "starttls", cert, users={"hasupd": "s3cret-Pa55"}).start()
    try:
        smtp = {
            "tls": "starttls",
            "username": "hasupd",
            "password_file": str(password_file),
            "ca_file": str(ca),
        }
        script = tmp_path / "web.py"
        script.write_text(CRASH_ONCE)
        config = write_config(
            tmp_path / "etc",
            {"web": {"command": [sys.executable, str(script), str(tmp_path / "crashed")], "restart": "no"}},
            daemon={"alerts": {"ops": channel(server.port, **smtp)}},
        )
        work = tmp_path / "work"
        d = start(daemons, config, work)
        # 1. STARTTLS + AUTH: hasupctl alert test reports the server's answer.
        ok = d.ctl("alert", "test", "ops")
        assert ok.returncode == 0, (ok.stderr, d.lines[-20:])
        assert "ops: accepted: 250 2.0.0 Ok: queued as test" in ok.stdout
        assert server.mailbox.wait(1, 5)[0].login == "hasupd"
        assert (
            d.wait_for("audit", where=lambda r: r["request"].startswith("alert-test"))[0]["outcome"] == "ok"
        )

        # 2. A wrong password (read at send time): the failure alert stays spooled, alert.failed says why.
        password_file.write_text("wrong\n")
        started = time.monotonic()
        d.ctl("start", "web")
        failed = d.wait_for("alert.failed", timeout=15)[0]
        assert time.monotonic() - started < 10
        assert "authentication as hasupd" in failed["error"] and "535" in failed["error"], failed
        assert len(spooled(work)) == 1
        bad = d.ctl("alert", "test")
        assert bad.returncode == 1 and "535" in bad.stderr, (bad.stdout, bad.stderr)
        assert len(server.mailbox.received) == 1  # nothing else got through

        # 3. Fixed: the next test goes through, and what stayed spooled with it (the failure alert and
        # the test message that could not be sent: a test goes through the spool like any alert).
        password_file.write_text("s3cret-Pa55")
        again = d.ctl("alert", "test", "ops")
        assert again.returncode == 0, again.stderr
        messages = server.mailbox.wait(4, timeout=15)
        assert sum(m.subject.endswith("web failed (exit-code)") for m in messages) == 1
        assert sum(m.subject.endswith("test alert on channel ops") for m in messages) == 3
        d.wait_for("alert.sent", count=4)
        assert spooled(work) == []
        assert d.ctl("alert", "test", "nope").returncode == 3
    finally:
        server.stop()
    assert not any("s3cret-Pa55" in line for line in d.lines)  # never in a record


def test_implicit_tls_delivers(daemons: list[Hasupd], tmp_path: Path, tls_setup: tuple[Cert, Path]) -> None:
    cert, _ = tls_setup
    ca = cert.cert
    server = SmtpServer(free_port(), "tls", cert).start()
    try:
        config = write_config(
            tmp_path / "etc",
            {"idle": {"command": ["/bin/sleep", "1000"]}},
            daemon={"alerts": {"ops": channel(server.port, tls="tls", ca_file=str(ca))}},
        )
        d = start(daemons, config, tmp_path / "work")
        result = d.ctl("alert", "test")
        assert result.returncode == 0, result.stderr
        assert server.mailbox.wait(1, 5)[0].subject.endswith("test alert on channel ops")
        # A server whose certificate is not trusted (no ca_file) is refused, and nothing hangs.
        untrusted = write_config(
            tmp_path / "etc2",
            {"idle": {"command": ["/bin/sleep", "1000"]}},
            daemon={"alerts": {"ops": channel(server.port, tls="tls")}},
        )
        d.stop()
        d2 = start(daemons, untrusted, tmp_path / "work2")
        refused = d2.ctl("alert", "test")
        assert refused.returncode == 1 and "certificate" in refused.stderr.lower(), refused.stderr
    finally:
        server.stop()


def _kill_to_restart(d: Hasupd, name: str, times: int) -> list[float]:
    """SIGKILL the service ``times`` times; return the seconds from each kill to the next start record."""
    latencies = []
    for _ in range(times):
        starts = d.wait_for("service.started", service=name)
        time.sleep(0.3)
        pid = starts[-1]["pid"]
        killed_at = time.time()
        os.kill(pid, signal.SIGKILL)
        started = d.wait_for("service.started", count=len(starts) + 1, service=name, timeout=10)[-1]
        assert started["pid"] != pid
        latencies.append(record_time(started) - killed_at)
    return latencies


def test_a_hanging_mail_server_does_not_delay_supervision(daemons: list[Hasupd], tmp_path: Path) -> None:
    service = {
        "web": {
            "command": ["/bin/sleep", "1000"],
            "restart_sec": "200ms",
            "restart_max_delay_sec": "200ms",
            "start_limit": {"burst": 100, "interval_sec": "60s"},
        }
    }
    healthy = SmtpServer(free_port()).start()
    hanging = HangingServer(free_port()).start()
    try:
        base = start(
            daemons,
            write_config(tmp_path / "etc1", service, daemon={"alerts": {"ops": channel(healthy.port)}}),
            tmp_path / "work1",
        )
        without = _kill_to_restart(base, "web", 6)
        healthy.mailbox.wait(6, timeout=10)
        assert base.stop() == 0

        config = write_config(
            tmp_path / "etc2", service, daemon={"alerts": {"ops": channel(hanging.port, timeout_sec="60s")}}
        )
        d = start(daemons, config, tmp_path / "work2")
        with_hang = _kill_to_restart(d, "web", 6)
        assert hanging.connections >= 1  # a delivery was stuck the whole time
        assert d.find("alert.sent") == [] and d.find("alert.failed") == []
        stopping = time.monotonic()
        assert d.stop() == 0
        stop_sec = time.monotonic() - stopping
    finally:
        healthy.stop()
        hanging.stop()
    print(
        f"kill-to-restart without: median {statistics.median(without) * 1000:.0f} ms, "
        f"max {max(without) * 1000:.0f} ms; with a hanging server: median "
        f"{statistics.median(with_hang) * 1000:.0f} ms, max {max(with_hang) * 1000:.0f} ms; "
        f"stop took {stop_sec:.2f}s"
    )
    assert max(without) <= 0.2 + 0.1, without
    assert max(with_hang) <= 0.2 + 0.1, with_hang
    assert stop_sec < 5


async def test_the_mailer_gives_up_on_a_server_that_never_answers() -> None:
    hanging = HangingServer(free_port()).start()
    try:
        started = time.monotonic()
        with pytest.raises(
            DeliveryError, match=r"cannot connect at 127\.0\.0\.1:\d+: no answer within 0\.5s"
        ) as error:
            async with SmtpMailer("test").session(
                SmtpConfig(host="127.0.0.1", port=hanging.port, timeout_sec=0.5)
            ):
                pass
        assert error.value.session and time.monotonic() - started < 2.5
        assert hanging.connections == 1
    finally:
        hanging.stop()


async def test_the_mailer_names_an_unreadable_password_file_and_a_refused_connection(tmp_path: Path) -> None:
    smtp = SmtpConfig(
        host="127.0.0.1", port=free_port(), username="u", password_file=str(tmp_path / "missing")
    )
    with pytest.raises(DeliveryError, match=r"cannot prepare the connection .*: No such file or directory"):
        async with SmtpMailer("test").session(smtp):
            pass
    with pytest.raises(DeliveryError, match=r"cannot connect at 127\.0\.0\.1:\d+: .*Connect call failed"):
        async with SmtpMailer("test").session(SmtpConfig(host="127.0.0.1", port=smtp.port)):
            pass
