"""Issue 22, must-show 4: a timer service with ``persistent: true`` whose run fell due while hasupd was
stopped runs once soon after start; its failure is an incident and an email alert like any service's
(a real SMTP server on loopback).

"hasupd was stopped for two hours" is played by moving the timer's stamp (``STATE/timers/NAME.last``,
written by the first hasupd) two hours back while hasupd is down: the one stand-in here, for the clock.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

from tests.support.harness import Hasupd, write_config
from tests.support.smtp import SmtpServer, free_port


def _channel(port: int) -> dict[str, object]:
    return {
        "email": {
            "smtp": {"host": "127.0.0.1", "port": port, "tls": "none", "timeout_sec": "5s"},
            "from": "hasupd@example.org",
            "to": ["ops@example.org"],
        },
        "coalesce_sec": "0s",
    }


def _timer(log: Path, persistent: bool) -> dict[str, object]:
    return {
        "type": "oneshot",
        "command": ["/bin/sh", "-c", f"date +%s >> {log}; echo 'disk check failed' >&2; exit 3"],
        "schedule": "@hourly",
        "persistent": persistent,
        "restart": "no",
    }


def test_persistent_timer_catches_up_once_and_its_failure_alerts(
    tmp_path: Path, hasupd: Callable[..., Hasupd]
) -> None:
    server = SmtpServer(free_port()).start()
    try:
        caught, skipped = tmp_path / "caught.log", tmp_path / "skipped.log"
        config = write_config(
            tmp_path / "etc",
            {"catchup": _timer(caught, persistent=True), "plain": _timer(skipped, persistent=False)},
            daemon={"alerts": {"ops": _channel(server.port)}},
        )
        state = tmp_path / "state"
        first = hasupd(config, state_dir=state, extra_args=("--no-watch",))
        first.wait_ready()
        # A timer is not started at boot; the first hasupd only notes when it began watching it.
        assert first.ctl("show", "catchup", "-p", "state", "--value").stdout.strip() == "dead"
        assert first.stop() == 0
        stamps = {name: state / "timers" / f"{name}.last" for name in ("catchup", "plain")}
        assert all(stamp.exists() for stamp in stamps.values())
        assert not caught.exists() and not skipped.exists()
        two_hours_ago = (datetime.now(UTC) - timedelta(hours=2)).isoformat()
        for stamp in stamps.values():
            stamp.write_text(two_hours_ago + "\n")  # hasupd was down for two hours: two slots passed

        started = time.monotonic()
        second = hasupd(config, state_dir=state, extra_args=("--no-watch",))
        triggered = second.wait_for("timer.triggered", service="catchup", timeout=15)[0]
        assert triggered["missed"] is True
        failed = second.wait_for("service.failed", service="catchup", timeout=15)[0]
        print(f"caught up {time.monotonic() - started:.2f}s after start")
        incident = failed["incident"]
        assert incident
        assert second.find("incident.opened", service="catchup", incident=incident)
        mail = server.mailbox.wait(1, timeout=20)[0]
        assert "catchup" in mail.subject
        assert mail.message["X-Hasupd-Incident"] == incident
        assert "exit-code" in mail.body
        time.sleep(1.0)  # a second catch-up run would show by now
        assert len(caught.read_text().splitlines()) == 1  # once, not once per missed slot
        assert len(second.find("timer.triggered", service="catchup")) == 1
        assert not second.find("timer.triggered", service="plain")
        assert not skipped.exists()  # without persistent: the missed slots are skipped
        assert second.ctl("is-failed", "catchup").returncode == 0
        shown = second.ctl("show", "catchup", "-p", "next_run", "--value").stdout.strip()
        assert datetime.fromisoformat(shown) > datetime.now(UTC)  # the next slot, ahead
        assert "catchup: timer, next run " in second.ctl("status", "catchup").stdout
        # The stamp moved to this run: the next start of hasupd does not run it again.
        assert datetime.fromisoformat(stamps["catchup"].read_text().strip()) > datetime.now(UTC) - timedelta(
            minutes=1
        )
    finally:
        server.stop()


def test_a_stamp_from_the_future_is_reset_to_now(tmp_path: Path, hasupd: Callable[..., Hasupd]) -> None:
    """A stamp written while the clock was wrong (years ahead; or junk at the end of the calendar) is
    taken as "now", as systemd resets a last trigger in the future: hasupd starts and the timer keeps
    its schedule, instead of waiting for that time (or hasupd dying on a date past year 9999)."""
    config = write_config(
        tmp_path / "etc",
        {
            name: {"type": "oneshot", "command": ["/bin/true"], "schedule": "* * * * *", "persistent": True}
            for name in ("ahead", "end")
        },
    )
    state = tmp_path / "state"
    (state / "timers").mkdir(parents=True)
    ahead = (datetime.now(UTC) + timedelta(days=3 * 365)).isoformat()
    (state / "timers" / "ahead.last").write_text(ahead + "\n")
    (state / "timers" / "end.last").write_text("9999-12-31T23:59:00+00:00\n")
    started = datetime.now(UTC)
    d = hasupd(config, state_dir=state, extra_args=("--no-watch",))
    d.wait_ready()
    for name in ("ahead", "end"):
        shown = d.ctl("show", name, "-p", "next_run", "--value")
        assert shown.returncode == 0, shown
        next_run = datetime.fromisoformat(shown.stdout.strip())
        assert started < next_run <= started + timedelta(minutes=2), (name, next_run)
        stamp = datetime.fromisoformat((state / "timers" / f"{name}.last").read_text().strip())
        assert stamp <= datetime.now(UTC), (name, stamp)
    assert d.stop() == 0
