"""Error groups from a real service's output, ranked by `hasupctl errors`, and alert rules on the real
daemon that mail a real SMTP server (aiosmtpd on loopback).

Must-show 2: 10,000 lines with 5 error shapes (numbers, ids, paths, quoted values and timestamps varying)
and 3 kinds of multi-line Python tracebacks -> exactly 5 + 3 groups with the right counts in the right
order; a sixth shape afterwards fires ONE "new error" alert.
Must-show 3 (real daemon): a rate rule over a seeded same-hour baseline; a burst is one incident with
one alert and one resolved notice.
"""

from __future__ import annotations

import json
import os
import sqlite3
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from hasupd.observe.error_store import HOUR, ErrorStore
from hasupd.observe.fingerprint import KIND_LINE, fingerprint
from tests.support.harness import REPO, Hasupd, write_config
from tests.support.journald import running_journald
from tests.support.smtp import SmtpServer, free_port

FROM, TO = "hasupd@test.example", "ops@test.example"
COUNTS = {"db": 900, "cache": 700, "payment": 500, "timeout": 300, "worker": 100}  # the 5 line shapes
TRACEBACKS = {"KeyError": 60, "ZeroDivisionError": 40, "ConnectionError": 20}  # the 3 traceback kinds
TOTAL_LINES = 10_000

# Prints TOTAL_LINES lines: INFO lines, the 5 error shapes (two marked with sd-daemon's <3>, three found
# by errors.match) and real tracebacks (real exceptions, printed by the traceback module), shuffled with a
# fixed seed. Then, once the file TRIGGER exists, a sixth shape three times.
PROGRAM = r"""
import os, random, sys, time, traceback, uuid

COUNTS = {counts}
TRACEBACKS = {tracebacks}
TOTAL = {total}
trigger, done = sys.argv[1], sys.argv[2]
rnd = random.Random(20)


def lookup(key):
    return {{}}[key]


def ratio(a, b):
    return a / b


def connect(port):
    raise ConnectionError(f"connection to 10.0.{{port % 250}}.7:{{port}} refused")


def handle(kind, i):
    if kind == "KeyError":
        lookup(f"user-{{i}}")
    elif kind == "ZeroDivisionError":
        ratio(i, 0)
    else:
        connect(5000 + i)


def shape(kind, i):
    if kind == "db":
        return f"ERROR db query failed after {{rnd.randint(1, 9999)}}ms on table orders_{{i % 7}}"
    if kind == "cache":
        return f"ERROR cannot open /var/lib/app/{{i}}/cache-{{i * 3}}.db: permission denied"
    if kind == "payment":
        return f"<3>payment {{uuid.uuid4()}} declined for user '{{rnd.choice(['ann', 'bob', 'cy'])}}'"
    if kind == "timeout":
        when = f"2026-12-02T07:{{i % 60:02d}}:{{i % 59:02d}}Z"
        return f"ERROR request id={{uuid.uuid4().hex[:16]}} timed out at {{when}}"
    return f"<3>worker {{i}} crashed with code 0x{{rnd.randint(1, 255):x}}"


items = [("line", k) for k, n in COUNTS.items() for _ in range(n)]
items += [("tb", k) for k, n in TRACEBACKS.items() for _ in range(n)]
rnd.shuffle(items)
chunks = []  # one item's lines stay together: a traceback is written in one piece
for i, (what, kind) in enumerate(items):
    if what == "line":
        chunk = [shape(kind, i)]
    else:
        try:
            handle(kind, i)
        except Exception:
            chunk = traceback.format_exc().rstrip("\n").split("\n")
    chunks.append(chunk + [f"INFO request {{i}} served in {{rnd.randint(1, 500)}}ms"])
lines = sum(len(c) for c in chunks)
for info in range(TOTAL - lines):
    chunks.insert(rnd.randrange(len(chunks) + 1), [f"<6>INFO heartbeat {{info}} at {{time.time()}}"])
out = [line for chunk in chunks for line in chunk]
assert len(out) == TOTAL, len(out)
sys.stdout.write("\n".join(out) + "\n")
sys.stdout.flush()
open(done, "w").close()
deadline = time.monotonic() + 120
while not os.path.exists(trigger) and time.monotonic() < deadline:
    time.sleep(0.05)
for i in range(3):
    print(f"ERROR disk /dev/sd{{'abc'[i]}} is {{90 + i}}% full", flush=True)
time.sleep(3600)
"""


def environment() -> dict[str, str]:
    return {"PYTHONPATH": os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)}


def channel(port: int, coalesce: str = "0s") -> dict[str, Any]:
    return {
        "email": {
            "smtp": {"host": "127.0.0.1", "port": port, "tls": "none", "timeout_sec": "5s"},
            "from": FROM,
            "to": [TO],
        },
        "coalesce_sec": coalesce,
    }


@pytest.fixture
def smtp() -> Iterator[SmtpServer]:
    server = SmtpServer(free_port()).start()
    yield server
    server.stop()


def ctl_json(d: Hasupd, *args: str) -> Any:
    result = d.ctl(*args, "--json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def journal_daemon(config: Path, tmp_path: Path, prefix: Any, daemons: list[Hasupd]) -> Hasupd:
    """hasupd on ``config`` next to a private journald (``prefix``: ``running_journald``'s), ready."""
    d = Hasupd(config, tmp_path / "work", env=environment(), extra_args=("--no-watch",), argv_prefix=prefix)
    daemons.append(d)
    d.wait_ready()
    return d


def wait_groups(d: Hasupd, service: str, total: int, timeout: float = 60.0) -> list[dict[str, Any]]:
    """Poll `hasupctl errors --service` until its counts add up to ``total`` (bounded)."""
    deadline = time.monotonic() + timeout
    groups: list[dict[str, Any]] = []
    while time.monotonic() < deadline:
        groups = ctl_json(d, "errors", "--service", service)
        if sum(g["count"] for g in groups) >= total:
            return groups
        time.sleep(0.3)
    pytest.fail(f"the error counts did not reach {total} within {timeout}s: {groups}")


def test_10000_lines_make_5_plus_3_groups_ranked_and_a_sixth_shape_mails_one_new_error_alert(
    daemons: list[Hasupd], smtp: SmtpServer, tmp_path: Path
) -> None:
    program = tmp_path / "app.py"
    program.write_text(PROGRAM.format(counts=COUNTS, tracebacks=TRACEBACKS, total=TOTAL_LINES))
    trigger, done = tmp_path / "trigger", tmp_path / "done"
    service = {
        "command": [sys.executable, str(program), str(trigger), str(done)],
        "output": "file",
        "errors": {"match": ["^ERROR "]},
    }
    daemon: dict[str, Any] = {"alerts": {"ops": channel(smtp.port)}}
    config = write_config(tmp_path / "etc", {"app": service}, daemon=daemon)
    d = Hasupd(config, tmp_path / "work", env=environment(), extra_args=("--no-watch",))
    daemons.append(d)
    d.wait_ready()
    deadline = time.monotonic() + 60
    while not done.exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert done.exists(), "the program did not print its lines"
    lines = (tmp_path / "work" / "state" / "logs" / "app.log").read_text().count("\n")
    assert lines == TOTAL_LINES

    expected = sum(COUNTS.values()) + sum(TRACEBACKS.values())
    groups = wait_groups(d, "app", expected)
    shown = [(g["kind"], g["count"]) for g in groups]
    assert shown == [
        ("line", 900),
        ("line", 700),
        ("line", 500),
        ("line", 300),
        ("line", 100),
        ("python", 60),
        ("python", 40),
        ("python", 20),
    ]
    patterns = [g["pattern"] for g in groups]
    assert patterns[:5] == [
        "ERROR db query failed after <n>ms on table orders_<n>",
        "ERROR cannot open <path>: permission denied",
        "payment <uuid> declined for user '<str>'",
        "ERROR request id=<id> timed out at <time>",
        "worker <n> crashed with code <hex>",
    ]
    assert patterns[5].startswith("KeyError: '<str>' (in lookup)")
    assert patterns[6].startswith("ZeroDivisionError: division by zero (in ratio)")
    assert patterns[7].startswith("ConnectionError: connection to <ip> refused (in connect)")
    traceback_sample = groups[5]["sample"]
    assert traceback_sample.startswith("Traceback (most recent call last):")
    assert traceback_sample.endswith("KeyError: 'user-" + traceback_sample.rsplit("user-", 1)[1])
    assert all(g["service"] == "app" and g["source"] == "output" for g in groups)
    # The same ranking without --service (hasupd's own error records join it: none here) and as text.
    assert [g["group"] for g in ctl_json(d, "errors") if g["service"] == "app"] == [
        g["group"] for g in groups
    ]
    text = d.ctl("errors", "--since", "1h")
    assert text.returncode == 0, text.stderr
    assert text.stdout.splitlines()[0].split() == [
        "COUNT", "GROUP", "SERVICE", "KIND", "FIRST", "SEEN", "LAST", "SEEN", "INCIDENT", "PATTERN",
    ]  # fmt: skip
    assert [row.split()[0] for row in text.stdout.splitlines()[1:9]] == [str(n) for _, n in shown]
    assert smtp.mailbox.received == []  # no rule yet: error groups alone do not alert

    # Now the rule: a new error group is news. Known groups are not new; one more shape is.
    daemon["alerts"]["rules"] = [{"name": "new-errors", "new_error": {"window_sec": "1h"}}]
    (config / "hasupd.yaml").write_text(yaml.safe_dump(daemon))
    reload = d.ctl("reload")
    assert reload.returncode == 0, reload.stderr
    trigger.touch()
    (message,) = smtp.mailbox.wait(1, timeout=30)
    assert "app new error (rule new-errors)" in message.subject
    assert "ERROR disk <path> is <n>% full" in message.subject
    fired = d.wait_for("rule.fired", rule="new-errors")[0]
    assert message.message["X-Hasupd-Incident"] == fired["incident"]
    assert "ERROR disk /dev/sda is 90% full" in message.body  # the sample: the evidence
    time.sleep(3)  # the two other lines of the same shape, and anything else, would have been mailed by now
    assert len(smtp.mailbox.received) == 1
    assert len(d.find("rule.fired")) == 1

    groups = ctl_json(d, "errors", "--service", "app")
    assert len(groups) == 9
    new = next(g for g in groups if g["pattern"] == "ERROR disk <path> is <n>% full")
    assert new["count"] == 3 and new["incident"] == fired["incident"]
    detail = ctl_json(d, "errors", "show", new["group"])
    assert [s["text"] for s in detail["samples"]] == [f"ERROR disk /dev/sd{c} is {90 + i}% full" for i, c in
                                                     reversed(list(enumerate("abc")))]  # fmt: skip
    assert [i["incident"] for i in detail["incidents"]] == [fired["incident"]]
    shown_text = d.ctl("errors", "show", new["group"])
    assert shown_text.returncode == 0
    assert fired["incident"] in shown_text.stdout and "| ERROR disk /dev/sda is 90% full" in shown_text.stdout
    missing = d.ctl("errors", "show", "0" * 12)
    assert missing.returncode == 3 and "no error group" in missing.stderr


BURST = r"""
import os, sys, time
trigger = sys.argv[1]
deadline = time.monotonic() + 120
i = 0
while time.monotonic() < deadline:
    burst = os.path.exists(trigger)
    for _ in range(40 if burst else 0):
        print(f"ERROR upstream 10.0.0.{i % 200} reset the connection after {i}ms", flush=True)
        i += 1
    print(f"INFO tick {i}", flush=True)
    if burst and os.path.exists(trigger + ".stop"):
        os.unlink(trigger)
    time.sleep(0.1)
"""


def test_a_burst_over_a_seeded_baseline_is_one_incident_one_alert_and_one_resolved_notice(
    daemons: list[Hasupd], smtp: SmtpServer, tmp_path: Path
) -> None:
    """Must-show 3 on the real daemon: the history of the group (a week of 60 an hour at this hour of
    the day) is seeded into STATE_DIR/errors.sqlite before hasupd starts."""
    program = tmp_path / "app.py"
    program.write_text(BURST)
    trigger = tmp_path / "burst"
    state = tmp_path / "work" / "state"
    group = fingerprint(KIND_LINE, "ERROR upstream 10.0.0.1 reset the connection after 5ms").group_id("app")
    store = ErrorStore(state)
    hour = int(time.time() // HOUR)
    for day in range(1, 8):
        for offset in (-1, 0, 1):
            store.count(group, (hour + offset - 24 * day) * HOUR, 60)
    store.close()
    rule = {
        "name": "upstream-burst",
        "services": ["app"],
        "error_rate": {"window_sec": "5s", "above": 10, "factor": 5, "baseline": "same_hour", "days": 7},
    }
    config = write_config(
        tmp_path / "etc",
        {"app": {"command": [sys.executable, str(program), str(trigger)], "output": "file",
                 "errors": {"match": ["^ERROR "]}}},
        daemon={"alerts": {"ops": channel(smtp.port), "rules": [rule]}},
    )  # fmt: skip
    d = Hasupd(config, tmp_path / "work", env=environment(), extra_args=("--no-watch",))
    daemons.append(d)
    d.wait_ready()
    time.sleep(1)
    trigger.touch()  # ~400 errors a second, for 4 seconds
    fired = d.wait_for("rule.fired", timeout=20)[0]
    assert fired["group"] == group and fired["baseline"] == pytest.approx(60 * 5 / 3600, abs=0.01)
    assert fired["threshold"] == 10  # 5 x the baseline is less than `above`
    time.sleep(4)
    (trigger.parent / "burst.stop").touch()
    resolved = d.wait_for("rule.resolved", timeout=20)[0]
    assert resolved["incident"] == fired["incident"]
    alert, notice = smtp.mailbox.wait(2, timeout=20)
    assert "error rate (rule upstream-burst)" in alert.subject
    assert notice.subject.endswith(f"app resolved (incident {fired['incident']})")
    assert alert.message["X-Hasupd-Incident"] == fired["incident"] == notice.message["X-Hasupd-Incident"]
    time.sleep(2)
    assert len(d.find("rule.fired")) == 1 and len(smtp.mailbox.received) == 2
    assert [i["incident"] for i in ctl_json(d, "errors", "show", group)["incidents"]] == [fired["incident"]]
    with sqlite3.connect(state / "errors.sqlite") as conn:
        (count,) = conn.execute("SELECT count FROM groups WHERE id = ?", (group,)).fetchone()
    assert count >= 400


JOURNAL_PROGRAM = r"""
import sys, time, traceback

def parse(text):
    return int(text)

for i in range(50):
    print(f"INFO request {i} ok")
    if i % 7 == 0:
        print(f"<3>disk /dev/sd{'abcdefgh'[i // 7]} failed after {i} retries")
    if i % 12 == 0:
        print(f"ERROR code {i} from upstream")
sys.stdout.flush()
for i in range(3):
    try:
        parse(f"x{i}")
    except ValueError:
        traceback.print_exc()  # to stderr: another journal stream
    print(f"INFO after traceback {i}", flush=True)
time.sleep(3600)
"""


def test_journal_output_is_grouped_from_the_journal_stream_by_stream(
    daemons: list[Hasupd], tmp_path: Path
) -> None:
    """``output: journal``: hasupd never sees the bytes; it follows the journal (one journalctl for all
    such units). stdout and stderr are separate journal streams: a traceback on stderr stays one event."""
    program = tmp_path / "app.py"
    program.write_text(JOURNAL_PROGRAM)
    with running_journald(tmp_path) as journald:
        config = write_config(
            tmp_path / "etc",
            {"app": {"command": [sys.executable, str(program)], "output": "journal",
                     "errors": {"match": ["^ERROR "]}}},
        )  # fmt: skip
        d = journal_daemon(config, tmp_path, journald.prefix, daemons)
        groups = wait_groups(d, "app", 8 + 5 + 3, timeout=30)
        assert [(g["kind"], g["count"], g["pattern"]) for g in groups] == [
            ("line", 8, "disk <path> failed after <n> retries"),
            ("line", 5, "ERROR code <n> from upstream"),
            ("python", 3, "ValueError: invalid literal for int() with base <n>: '<str>' (in parse)"),
        ]
        assert groups[2]["sample"].startswith("Traceback (most recent call last):")
        assert groups[2]["sample"].endswith("ValueError: invalid literal for int() with base 10: 'x0'")
        d.stop()


FLOOD_PROGRAM = r"""
import sys, time, traceback
for i in range(20000):  # ~1 MB of ordinary lines: the journal filter drops them, only counting
    print(f"INFO request {i} served in 3 ms", flush=False)
sys.stdout.flush()
time.sleep(0.5)
print("Exception in thread main: java.lang.IllegalStateException: boom", flush=True)
print("\tat com.example.Main.run(Main.java:10)", flush=True)
print("\tat com.example.Main.main(Main.java:3)", flush=True)
for i in range(5000):
    print(f"INFO after the stack {i}")
sys.stdout.flush()
time.sleep(0.5)
try:
    int("x")
except ValueError:
    traceback.print_exc(file=sys.stdout)
sys.stdout.flush()
for i in range(5000):
    print(f"INFO after the traceback {i}")
print("<3>disk full on /var", flush=True)
time.sleep(3600)
"""


def test_journal_output_without_patterns_is_filtered_out_of_process_and_stacks_stay_whole(
    daemons: list[Hasupd], tmp_path: Path
) -> None:
    """Ordinary lines of an ``output: journal`` service never reach hasupd (the journal filter counts
    them); a Java stack, a Python traceback and a <3> line among 30,000 of them are grouped whole."""
    program = tmp_path / "app.py"
    program.write_text(FLOOD_PROGRAM)
    with running_journald(tmp_path) as journald:
        config = write_config(
            tmp_path / "etc", {"app": {"command": [sys.executable, str(program)], "output": "journal"}}
        )
        d = journal_daemon(config, tmp_path, journald.prefix, daemons)
        groups = wait_groups(d, "app", 3, timeout=60)
        samples = {g["kind"]: g["sample"] for g in groups}
        assert samples["java"].splitlines() == [
            "Exception in thread main: java.lang.IllegalStateException: boom",
            "\tat com.example.Main.run(Main.java:10)",
            "\tat com.example.Main.main(Main.java:3)",
        ]
        assert samples["python"].startswith("Traceback (most recent call last):")
        assert samples["python"].endswith("ValueError: invalid literal for int() with base 10: 'x'")
        assert samples["line"] == "disk full on /var"
        assert sum(g["count"] for g in groups) == 3
        d.stop()


TALKER = r"""
import os, sys, time
hush = sys.argv[1]
deadline = time.monotonic() + 120
i = 0
while time.monotonic() < deadline:
    if not os.path.exists(hush):
        print(f"INFO still working {i}", flush=True)
        i += 1
    time.sleep(0.2)
"""


def test_a_service_that_goes_quiet_fires_the_dead_mans_switch_once_and_resolves_when_it_talks(
    daemons: list[Hasupd], smtp: SmtpServer, tmp_path: Path
) -> None:
    program = tmp_path / "worker.py"
    program.write_text(TALKER)
    hush = tmp_path / "hush"
    rule = {"name": "worker-quiet", "services": ["worker"], "quiet": {"after_sec": "2s"}}
    config = write_config(
        tmp_path / "etc",
        {"worker": {"command": [sys.executable, str(program), str(hush)], "output": "file"}},
        daemon={"alerts": {"ops": channel(smtp.port), "rules": [rule]}},
    )
    d = Hasupd(config, tmp_path / "work", env=environment(), extra_args=("--no-watch",))
    daemons.append(d)
    d.wait_ready()
    time.sleep(3)  # talking: the switch never fires
    assert d.find("rule.fired") == []
    hush.touch()
    hushed = time.time()
    fired = d.wait_for("rule.fired", timeout=10)[0]
    assert fired["kind"] == "quiet" and fired["service"] == "worker"
    assert time.time() - hushed >= 1.5  # 2s after its last line (written up to 0.2s before the hush)
    (alert,) = smtp.mailbox.wait(1, timeout=15)
    assert "worker quiet (rule worker-quiet): no output or other sign of life for" in alert.subject
    time.sleep(2.5)
    assert len(d.find("rule.fired")) == 1  # one incident while it stays quiet
    hush.unlink()
    resolved = d.wait_for("rule.resolved", timeout=10)[0]
    assert resolved["incident"] == fired["incident"]
    notice = smtp.mailbox.wait(2, timeout=15)[1]
    assert notice.subject.endswith(f"worker resolved (incident {fired['incident']})")
