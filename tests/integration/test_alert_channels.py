"""Chat, push and pager alerts against real receivers on loopback, and silences, with the real daemon.

The receivers (tests/support/receivers.py) stand in for a JSON webhook, an ntfy server and a PagerDuty
Events v2 endpoint: small HTTP servers that record what they are sent. The JSON webhook and ntfy go
through Apprise (the newest from PyPI in the test venv; Debian 12's 1.2 in ``test_debian_apprise_delivers``,
or in every test with ``HASUPD_TEST_APPRISE=debian``), the pager through hasupd's own Events v2 client.
"""

from __future__ import annotations

import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.harness import REPO, Hasupd, Record, record_time, write_config
from tests.support.receivers import Post, Receiver
from tests.support.smtp import free_port

DEBIAN_APPRISE = Path("/usr/lib/python3/dist-packages/apprise")
# Crashes until the marker (its argument) exists; then runs.
UNTIL_FIXED = """
import os, sys, time
if not os.path.exists(sys.argv[1]):
    print("fatal: the cheese is gone", flush=True)
    sys.exit(3)
while True:
    time.sleep(1)
"""


def debian_apprise(folder: Path) -> Path:
    """Return a folder that, first on PYTHONPATH, makes Debian's apprise the one imported."""
    if not DEBIAN_APPRISE.is_dir():
        pytest.fail(f"Debian's apprise is not installed ({DEBIAN_APPRISE}): apt-get install apprise")
    folder.mkdir(parents=True, exist_ok=True)
    if not (folder / "apprise").exists():
        (folder / "apprise").symlink_to(DEBIAN_APPRISE)
    return folder


def environment(extra: Path | None = None) -> dict[str, str]:
    """The daemon sees the same packages as the tests (PYTHONPATH is kept), ``extra`` first.
    ``HASUPD_TEST_APPRISE=debian`` runs every daemon here with Debian 12's apprise."""
    if extra is None and os.environ.get("HASUPD_TEST_APPRISE") == "debian":
        extra = debian_apprise(Path(tempfile.gettempdir()) / f"hasupd-test-apprise-{os.getpid()}")
    paths = [str(p) for p in (extra, REPO) if p] + [p for p in [os.environ.get("PYTHONPATH")] if p]
    return {"PYTHONPATH": os.pathsep.join(paths)}


@pytest.fixture
def receivers() -> Iterator[list[Receiver]]:
    made: list[Receiver] = []
    yield made
    for r in made:
        r.stop()


def start(daemons: list[Hasupd], config: Path, work: Path, extra: Path | None = None) -> Hasupd:
    d = Hasupd(config, work, env=environment(extra), extra_args=("--no-watch",))
    daemons.append(d)
    d.wait_ready()
    return d


def spooled(work: Path) -> list[Path]:
    return sorted((work / "state" / "alerts").glob("*.json"))


def wait_spool_empty(work: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while spooled(work) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert spooled(work) == [], f"still spooled after {timeout}s"


def pager_channel(receiver: Receiver, key_file: Path, **fields: Any) -> dict[str, Any]:
    key_file.write_text("R0UTING-KEY\n")
    return {
        "pagerduty": {
            "routing_key_file": str(key_file),
            "url": f"{receiver.url}/v2/enqueue",
            "timeout_sec": "2s",
        },
        "coalesce_sec": "0s",
        **fields,
    }


def text_of(post: Post) -> str:
    """The words a person sees: title and message (Apprise), or summary and details (Events v2)."""
    body = post.body
    if "payload" in body:
        return body["payload"]["summary"] + "\n" + body["payload"]["custom_details"]["text"]
    return f"{body.get('title', '')}\n{body.get('message', '')}"


def crash_loop_service(tmp_path: Path, marker: Path, burst: int) -> dict[str, Any]:
    """A service that crash-loops until its recovery action creates ``marker``."""
    script = tmp_path / "web.py"
    script.write_text(UNTIL_FIXED)
    return {
        "command": [sys.executable, str(script), str(marker)],
        "restart_sec": "100ms",
        "restart_max_delay_sec": "200ms",
        "start_limit": {"burst": burst, "interval_sec": "60s"},
        "on_failure": [{"exec": ["/bin/touch", str(marker)]}],
    }


# --------------------------------------------------------------------------- must-show 1


def test_a_crash_loop_is_one_message_per_channel_with_the_count_then_resolved(
    daemons: list[Hasupd], receivers: list[Receiver], tmp_path: Path
) -> None:
    hook, push, pager = (Receiver(free_port()).start() for _ in range(3))
    pager.status = 202
    receivers += [hook, push, pager]
    config = write_config(
        tmp_path / "etc",
        {"web": crash_loop_service(tmp_path, tmp_path / "fixed", burst=5)},
        daemon={
            "alerts": {
                # chat: only failures (events filter); push: error and worse (min_level); the pager too.
                "hook": {"apprise": [f"json://127.0.0.1:{hook.port}/hook"], "coalesce_sec": "0s",
                         "events": ["service.failed"]},
                "push": {"apprise": [f"ntfy://127.0.0.1:{push.port}/ops"], "coalesce_sec": "0s",
                         "min_level": "error"},
                "pager": pager_channel(pager, tmp_path / "pd.key", events=["service.failed"]),
            }
        },
    )  # fmt: skip
    d = start(daemons, config, tmp_path / "work")
    failed = d.wait_for("service.failed", service="web", timeout=30)[0]
    incident = failed["incident"]
    closed = d.wait_for("incident.closed", service="web", timeout=30)[0]
    assert closed["outcome"] == "resolved" and closed["incident"] == incident
    restarts = d.find("service.restart_scheduled", service="web")
    assert len(restarts) == 5

    host = os.uname().nodename
    for receiver in (hook, push, pager):
        first = receiver.wait(2, timeout=20)[0]
        assert f"[hasupd@{host}] web failed (start-limit-hit)" in text_of(first)
        assert re.search(r"Restarts: +5\n", text_of(first))  # the count of the crash loop
        assert incident in text_of(first)
    assert hook.received[1].body["title"].endswith(f"web resolved (incident {incident})")
    assert hook.received[0].body["type"] == "failure" and hook.received[1].body["type"] == "success"
    assert push.received[0].body["topic"] == "ops"
    assert push.received[1].body["title"].endswith(f"web resolved (incident {incident})")
    trigger, resolve = (p.body for p in pager.received)
    assert (trigger["event_action"], resolve["event_action"]) == ("trigger", "resolve")
    assert trigger["dedup_key"] == resolve["dedup_key"] == incident
    assert trigger["routing_key"] == "R0UTING-KEY" and trigger["payload"]["severity"] == "error"
    assert pager.received[0].path == "/v2/enqueue"
    time.sleep(1.5)  # nothing more arrives
    assert [len(r.received) for r in (hook, push, pager)] == [2, 2, 2]
    assert len(d.wait_for("alert.sent", count=6)) == 6
    assert spooled(tmp_path / "work") == []
    assert not any("R0UTING-KEY" in line for line in d.lines)  # never in a record


def test_the_pager_sees_one_dedup_key_per_incident_across_a_restart_while_it_was_down(
    daemons: list[Hasupd], receivers: list[Receiver], tmp_path: Path
) -> None:
    pager = Receiver(free_port(), status=202)  # not started: down
    receivers.append(pager)
    marker = tmp_path / "fixed"
    service = crash_loop_service(tmp_path, marker, burst=3)
    service["on_failure"] = [{"exec": ["/bin/false"]}]  # recovery fails: the incident stays failed
    config = write_config(
        tmp_path / "etc",
        {"web": service},
        daemon={"alerts": {"pager": pager_channel(pager, tmp_path / "pd.key", on_crash=True)}},
    )
    work = tmp_path / "work"
    d1 = start(daemons, config, work)
    first = d1.wait_for("service.failed", service="web", timeout=30)[0]["incident"]
    d1.wait_for("alert.failed", timeout=15)  # tried, refused: the receiver is down
    spooled_before = len(spooled(work))
    assert spooled_before >= 2  # the restarts (on_crash) and the failure, all of incident `first`
    assert d1.stop() == 0

    d2 = start(daemons, config, work)  # same state dir; the service crash-loops again: a new incident
    second = d2.wait_for("service.failed", service="web", timeout=30)[0]["incident"]
    assert second != first
    d2.wait_for("alert.failed", timeout=15)  # still down
    pager.start()
    wait_spool_empty(work, 60)
    sent = d2.find("alert.sent")
    keys = [p.body["dedup_key"] for p in pager.received]
    print(f"pager: {len(keys)} events, dedup keys {sorted(set(keys))}; incidents {first}, {second}")
    assert set(keys) == {first, second}  # one key per incident, none made up by a retry or restart
    assert len(keys) == len(sent) >= spooled_before + 2
    by_key = {k: [p.body["payload"]["custom_details"]["incident"] for p in pager.received
                  if p.body["dedup_key"] == k] for k in set(keys)}  # fmt: skip
    assert all(set(incidents) == {k} for k, incidents in by_key.items())


def test_a_pager_endpoint_that_does_not_speak_http_is_retried_and_hasupd_runs_on(
    daemons: list[Hasupd], receivers: list[Receiver], tmp_path: Path
) -> None:
    """A receiver answering a line that is not HTTP (a wrong port, a proxy's banner) is a failed delivery
    like a refused connection: kept in the spool and retried. It used to end hasupd (BadStatusLine
    escaped the channel's task), and a restarted hasupd died again on the spooled message."""
    pager = Receiver(free_port(), status=202, mode="garbage").start()
    receivers.append(pager)
    config = write_config(
        tmp_path / "etc",
        {"bad": {"command": ["/bin/false"], "restart_sec": "100ms", "start_limit": {"burst": 2}}},
        daemon={"alerts": {"pager": pager_channel(pager, tmp_path / "pd.key")}},
    )
    work = tmp_path / "work"
    d = start(daemons, config, work)
    d.wait_for("service.failed", service="bad", timeout=30)
    failed = d.wait_for("alert.failed", timeout=30)[0]
    assert "did not answer in HTTP" in failed["message"], failed
    assert d.proc.poll() is None and spooled(work)
    pager.set_mode("ok")
    wait_spool_empty(work, 60)
    assert not spooled(work) and [p.body["event_action"] for p in pager.received] == ["trigger"]
    assert d.stop() == 0


# --------------------------------------------------------------------------- must-show 4


def test_a_silence_suppresses_matching_alerts_is_audited_survives_a_restart_and_expires(
    daemons: list[Hasupd], receivers: list[Receiver], tmp_path: Path
) -> None:
    hook = Receiver(free_port()).start()
    receivers.append(hook)
    config = write_config(
        tmp_path / "etc",
        {
            "web": {"command": ["/bin/sh", "-c", "exit 3"], "restart": "no"},
            "db": {"command": ["/bin/sh", "-c", "exit 4"], "restart": "no"},
        },
        daemon={"alerts": {"hook": {"apprise": [f"json://127.0.0.1:{hook.port}/h"], "coalesce_sec": "0s"}}},
    )
    work = tmp_path / "work"
    d = start(daemons, config, work)
    d.wait_for("service.failed", service="web", timeout=15)
    d.wait_for("service.failed", service="db", timeout=15)
    hook.wait(2, timeout=20)  # both alert: no silence yet

    silence_sec = 12.0
    ok = d.ctl("alert", "silence", "web", f"{silence_sec:g}s", "--reason", "deploying web")
    assert ok.returncode == 0, ok.stderr
    silenced_at = time.time()
    assert "alerts about web silenced until" in ok.stdout
    audit = d.wait_for("audit", where=lambda r: r["request"].startswith("alert-silence"))[0]
    assert audit["outcome"] == "ok" and audit["role"] == "admin" and audit["user"] == "root"
    assert "--target=web" in audit["request"] and "--reason=deploying web" in audit["request"]
    bad = d.ctl("alert", "silence", "web", "soon")
    assert bad.returncode == 2 and "invalid duration" in bad.stderr

    d.ctl("start", "web", "db")  # they fail again (exit 1)
    suppressed = d.wait_for("alert.suppressed", service="web", timeout=15)[0]
    assert suppressed["silence"] == "web" and suppressed["reason"] == "deploying web"
    hook.wait(3, timeout=20)  # db's alert went through
    time.sleep(1.5)
    assert [p.body["title"].split("] ")[1] for p in hook.received[2:]] == ["db failed (exit-code)"]
    listed = d.ctl("alert", "list")
    assert listed.returncode == 0, listed.stderr
    assert "web" in listed.stdout and "deploying web" in listed.stdout and "alert.suppressed" in listed.stdout

    # A restart of hasupd keeps the silence (state dir).
    assert d.stop() == 0
    d2 = start(daemons, config, work)
    d2.wait_for("alert.suppressed", service="web", timeout=15)  # web failed again at start
    hook.wait(4, timeout=20)  # db did too, and alerted
    assert sum("web failed" in p.body["title"] for p in hook.received) == 1  # only the one before

    # Expired: alerts about web go through again.
    left = silenced_at + silence_sec - time.time()
    assert left > 0, "the machine was too slow to check the silence while it held"
    time.sleep(left + 0.5)
    d2.ctl("start", "web")
    d2.wait_for("service.failed", service="web", count=2, timeout=15)
    posts = hook.wait(5, timeout=20)
    assert posts[-1].body["title"].endswith("web failed (exit-code)")
    assert "silences: none" in d2.ctl("alert", "list").stdout


# --------------------------------------------------------------------------- must-show 5


def _kill_to_restart(d: Hasupd, name: str, times: int) -> tuple[list[float], list[float]]:
    """SIGKILL the service ``times`` times; return (seconds from each kill to the next start record,
    seconds from the exit record to that start record)."""
    from_kill, from_exit = [], []
    for _ in range(times):
        starts = d.wait_for("service.started", service=name)
        time.sleep(0.3)
        pid = starts[-1]["pid"]
        exits = len(d.find("service.exited", service=name))
        killed_at = time.time()
        os.kill(pid, signal.SIGKILL)
        started = d.wait_for("service.started", count=len(starts) + 1, service=name, timeout=10)[-1]
        exited: Record = d.wait_for("service.exited", count=exits + 1, service=name)[-1]
        assert started["pid"] != pid
        from_kill.append(record_time(started) - killed_at)
        from_exit.append(record_time(started) - record_time(exited))
    return from_kill, from_exit


def test_a_hanging_or_failing_endpoint_delays_no_restart_and_its_messages_go_out_later(
    daemons: list[Hasupd], receivers: list[Receiver], tmp_path: Path
) -> None:
    hook = Receiver(free_port(), mode="hang").start()  # reads the request, never answers
    pager = Receiver(free_port(), status=202, mode="fail").start()  # 500 to everything
    receivers += [hook, pager]
    restart_sec = 0.2
    config = write_config(
        tmp_path / "etc",
        {
            "web": {
                "command": ["/bin/sleep", "1000"],
                "restart_sec": f"{restart_sec:g}s",
                "restart_max_delay_sec": f"{restart_sec:g}s",
                "start_limit": {"burst": 100, "interval_sec": "60s"},
            }
        },
        daemon={
            "alerts": {
                "hook": {"apprise": [f"json://127.0.0.1:{hook.port}/h"], "coalesce_sec": "0s",
                         "on_crash": True, "timeout_sec": "30s"},
                "pager": pager_channel(pager, tmp_path / "pd.key", on_crash=True),
            }
        },
    )  # fmt: skip
    work = tmp_path / "work"
    d = start(daemons, config, work)
    kills = 6
    from_kill, from_exit = _kill_to_restart(d, "web", kills)
    incident = d.find("service.restart_scheduled")[0]["incident"]
    hook.wait_attempts(1, timeout=10)  # a delivery hung the whole time
    pager.wait_attempts(1, timeout=10)
    assert pager.received == []
    assert d.find("alert.sent") == []
    failed = d.wait_for("alert.failed", where=lambda r: r["channel"] == "pager")[0]
    assert "500" in failed["error"], failed
    print(
        f"kill-to-restart with a hanging and a failing endpoint (restart_sec {restart_sec * 1000:.0f} ms): "
        f"median {statistics.median(from_kill) * 1000:.0f} ms, max {max(from_kill) * 1000:.0f} ms; "
        f"exit record to start record max {max(from_exit) * 1000:.0f} ms"
    )
    assert max(from_kill) <= restart_sec + 0.1, from_kill
    assert max(from_exit) <= restart_sec + 0.1, from_exit
    d.wait_for("incident.closed", service="web", timeout=10)  # the last run was stable: resolved
    deadline = time.monotonic() + 10
    while len(spooled(work)) < 2 * (kills + 1) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert len(spooled(work)) == 2 * (kills + 1)  # every alert of both channels waits

    # hasupd stops at once though a delivery hangs, and the messages stay spooled for the next start.
    assert hook.attempts == 1 and d.find("alert.failed", channel="hook") == []  # still hanging
    stopping = time.monotonic()
    assert d.stop() == 0
    stop_sec = time.monotonic() - stopping
    print(f"stop with a hanging delivery: {stop_sec:.2f}s")
    assert stop_sec < 5
    assert len(spooled(work)) == 2 * (kills + 1)
    d2 = start(daemons, config, work)

    # Both endpoints recover: what waited goes out on the channels' own retries, once each.
    hook.set_mode("ok")
    pager.set_mode("ok")
    hook_posts = hook.wait(kills + 1, timeout=90)
    pager_posts = pager.wait(kills + 1, timeout=90)
    wait_spool_empty(work, 30)
    time.sleep(1)
    assert len(hook.received) == len(pager.received) == kills + 1
    assert len(d2.find("alert.sent")) == 2 * (kills + 1)
    titles = [p.body["title"] for p in hook_posts]
    assert sum("web crashed and restarts" in t for t in titles) == kills
    assert sum(t.endswith("resolved (incident " + incident + ")") for t in titles) == 1
    # Killed every 0.3 s: no run was stable, so one incident, one dedup key: the pager pages once.
    assert {p.body["dedup_key"] for p in pager_posts} == {incident}
    assert [p.body["event_action"] for p in pager_posts][-1] == "resolve"


# --------------------------------------------------------------------------- Debian 12's Apprise


def test_debian_apprise_delivers(daemons: list[Hasupd], receivers: list[Receiver], tmp_path: Path) -> None:
    shadow = debian_apprise(tmp_path / "debian-apprise")
    probe = subprocess.run(
        [sys.executable, "-c", "import apprise; print(apprise.__version__)"],
        env={**os.environ, **environment(shadow)},
        capture_output=True,
        text=True,
        check=True,
    )
    print(f"the daemon runs with apprise {probe.stdout.strip()}")
    assert probe.stdout.strip().startswith("1.2")
    hook, push = Receiver(free_port()).start(), Receiver(free_port()).start()
    receivers += [hook, push]
    config = write_config(
        tmp_path / "etc",
        {"idle": {"command": ["/bin/sleep", "1000"]}},
        daemon={
            "alerts": {
                "hook": {"apprise": [f"json://127.0.0.1:{hook.port}/h"]},
                "push": {"apprise": [f"ntfy://127.0.0.1:{push.port}/ops"]},
            }
        },
    )
    d = start(daemons, config, tmp_path / "work", extra=shadow)
    result = d.ctl("alert", "test")
    assert result.returncode == 0, (result.stdout, result.stderr)
    assert hook.wait(1, 10)[0].body["title"].endswith("test alert on channel hook")
    assert push.wait(1, 10)[0].body["topic"] == "ops"
    # A dead endpoint: the test says why, the message stays spooled.
    push.stop()
    down = d.ctl("alert", "test", "push")
    assert down.returncode == 1 and "push: failed: ntfy-" in down.stderr, down.stderr
    assert "Connection error" in down.stderr and " - WARNING - " not in down.stderr, down.stderr
    assert len(spooled(tmp_path / "work")) == 1


# --------------------------------------------------------------------------- the local MTA

# Stands in for /usr/sbin/sendmail (no MTA on a build machine): keeps its arguments and the message,
# exits with the code in the file next to it (sysexits: 0 queued, 75 try later, 67 no such user).
FAKE_SENDMAIL = """#!/bin/sh
dir=$(dirname "$0")
n=$(ls "$dir"/out/*.args 2>/dev/null | wc -l)
printf '%s\\n' "$@" > "$dir/out/$n.args"
cat > "$dir/out/$n.eml"
exit $(cat "$dir/exit")
"""


def test_sendmail_hands_the_message_to_the_local_mta_and_keeps_it_while_the_mta_cannot(
    daemons: list[Hasupd], tmp_path: Path
) -> None:
    mta = tmp_path / "mta"
    (mta / "out").mkdir(parents=True)
    (mta / "sendmail").write_text(FAKE_SENDMAIL)
    (mta / "sendmail").chmod(0o755)
    (mta / "exit").write_text("75")
    config = write_config(
        tmp_path / "etc",
        {"idle": {"command": ["/bin/sleep", "1000"]}},
        daemon={
            "alerts": {
                "mta": {
                    "sendmail": {"path": str(mta / "sendmail"), "from": "hasupd@x.org", "to": ["ops@x.org"]}
                }
            }
        },
    )
    work = tmp_path / "work"
    d = start(daemons, config, work)
    later = d.ctl("alert", "test", "mta")
    assert later.returncode == 1 and "exited 75" in later.stderr, later.stderr
    assert len(spooled(work)) == 1
    (mta / "exit").write_text("0")
    ok = d.ctl("alert", "test", "mta")
    assert ok.returncode == 0, ok.stderr
    assert "accepted" in ok.stdout
    wait_spool_empty(work, 30)  # the one kept from before went with it
    args = (mta / "out" / "1.args").read_text().split()
    assert args == ["-i", "-f", "hasupd@x.org", "--", "ops@x.org"]
    message = (mta / "out" / "1.eml").read_text()
    assert "Subject: [hasupd@" in message and "test alert on channel mta" in message
    assert "To: ops@x.org" in message and "Message-ID: <" in message
