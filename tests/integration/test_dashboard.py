"""The web dashboard in a real headless Chromium against a running hasupd (issue 19, must-show 1).

The overview lists every unit; a SIGKILLed service shows its crash and its restart on the open page
within 2 s, without a reload (server-sent events); its incident page shows the chain of events; the
errors page ranks a seeded set of errors; the backups page shows a real restic snapshot. Every page is
screenshotted (see ``tests.support.browser``: ``HASUPD_SCREENSHOTS`` or the test's tmp dir).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from tests.integration.backup import jobsupport
from tests.integration.backup.jobsupport import Setup, stamp
from tests.support.browser import chromium, screenshot_dir
from tests.support.harness import REPO, Hasupd, write_config
from tests.support.smtp import SmtpServer

# The daemon keeps the PYTHONPATH the test runs with: put Debian's python3-aiohttp and python3-jinja2
# first on it to run the dashboard on Debian 12's versions (see README, Dashboard).
KEEP_PYTHONPATH = {"PYTHONPATH": os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)}
repo_template = jobsupport.repo_template
setup = jobsupport.setup

FAST = {"restart_sec": "100ms", "restart_max_delay_sec": "200ms", "start_limit": {"burst": 50}}
TALKER = 'echo "api listening"; i=0; while :; do i=$((i+1)); echo "api served request $i"; sleep 0.5; done'
LIVE_WITHIN_SEC = 2.0
NONE = "\N{EN DASH}"  # an empty cell
# What the overview shows of one unit, read in one go from the page.
ROW_JS = """
const row = document.querySelector('tr[data-unit="' + arguments[0] + '"]');
const cell = (f) => row ? row.querySelector('[data-field="' + f + '"]').textContent.trim() : null;
return {
  state: row ? row.querySelector('[data-field="state"] .badge').textContent : null,
  pid: cell('pid'), restarts: cell('restarts'), last_exit: cell('last_exit'),
  events: Array.from(document.querySelectorAll('#latest li'))
    .map(li => [li.dataset.event, li.dataset.service || '']),
  marker: window.hasupdTestMarker || null,
  live: document.getElementById('live-status').textContent,
};
"""


def channel(port: int) -> dict[str, Any]:
    """An alert channel to the test's SMTP server that mails every crash at once."""
    smtp = {"host": "127.0.0.1", "port": port, "tls": "none", "timeout_sec": "5s"}
    to = {"from": "hasupd@example.invalid", "to": ["ops@example.invalid"]}
    return {"email": {"smtp": smtp, **to}, "coalesce_sec": "0s", "on_crash": True}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_page(driver: Any, script: str, ok: Callable[[Any], bool], timeout: float, *args: Any) -> Any:
    """Run ``script`` on the page until ``ok`` holds (bounded by ``timeout``); return its last value."""
    deadline = time.monotonic() + timeout
    value = driver.execute_script(script, *args)
    while not ok(value) and time.monotonic() < deadline:
        time.sleep(0.02)
        value = driver.execute_script(script, *args)
    return value


def test_overview_shows_a_crash_and_restart_live_and_the_incident_chain(
    tmp_path: Path, hasupd: Callable[..., Hasupd], request: pytest.FixtureRequest
) -> None:
    port = free_port()
    shots = screenshot_dir(tmp_path)
    smtp = SmtpServer(free_port()).start()
    request.addfinalizer(smtp.stop)
    config = write_config(
        tmp_path / "etc",
        {
            "api": {
                "command": ["/bin/sh", "-c", TALKER],
                "output": "file",
                "health": [{"exec": ["/bin/true"], "interval_sec": "200ms"}],
            },
            "victim": {
                "command": ["/bin/sh", "-c", 'echo "victim ready, pid $$"; exec /bin/sleep 1000'],
                "output": "file",
                "description": "gets SIGKILLed",
                **FAST,
            },
            "pool": {"command": ["/bin/sleep", "1000"], "instances": 2},
        },
        daemon={"web": {"listen": f"127.0.0.1:{port}"}, "alerts": {"ops": channel(smtp.port)}},
    )
    d = hasupd(config, extra_args=("--no-watch",), env=KEEP_PYTHONPATH)
    d.wait_ready()
    d.wait_for("web.listening", timeout=30)
    pid = d.wait_for("service.started", service="victim")[0]["pid"]
    base = f"http://127.0.0.1:{port}"
    with chromium() as driver:
        driver.get(base + "/")
        first = wait_page(driver, ROW_JS, lambda v: v["live"] == "live", 10, "victim")
        assert first["live"] == "live", first
        rows = driver.find_elements("css selector", "#units tbody tr")
        names = [tr.get_attribute("data-unit") for tr in rows]
        assert names == ["api", "pool@0", "pool@1", "victim"], names
        assert first["state"] == "running" and first["pid"] == str(pid) and first["restarts"] == "0"
        driver.execute_script("window.hasupdTestMarker = 'same page';")  # gone if the page reloads

        os.kill(pid, signal.SIGKILL)
        killed = time.monotonic()

        def crashed(v: Any) -> bool:
            return ["service.exited", "victim"] in v["events"] and "SIGKILL" in v["last_exit"]

        crash = wait_page(driver, ROW_JS, crashed, LIVE_WITHIN_SEC, "victim")
        crash_sec = time.monotonic() - killed

        def restarted(v: Any) -> bool:
            return (
                crashed(v)
                and v["state"] == "running"
                and v["pid"] not in (NONE, str(pid))
                and v["restarts"] == "1"
                and ["service.started", "victim"] in v["events"]
            )

        after = wait_page(driver, ROW_JS, restarted, LIVE_WITHIN_SEC - crash_sec, "victim")
        restart_sec = time.monotonic() - killed
        print(f"crash shown after {crash_sec:.3f}s, restart after {restart_sec:.3f}s")
        assert crashed(crash), crash
        assert restarted(after), after
        assert restart_sec < LIVE_WITHIN_SEC, restart_sec
        assert after["marker"] == "same page", "the page was reloaded"
        counts = "return ['unit-count', 'down-count'].map(id => document.getElementById(id).textContent)"
        assert driver.execute_script(counts) == ["4", "0"]  # units, not running
        new_pid = d.wait_for("service.started", count=2, service="victim")[1]["pid"]
        assert after["pid"] == str(new_pid)
        driver.save_screenshot(str(shots / "overview.png"))

        # The incident, reached with the keyboard from the crash in the latest events (the row's link goes
        # once the new run counts as stable and the incident closes).
        link = driver.find_element(
            "css selector", '#latest li[data-event="service.exited"][data-service="victim"] a'
        )
        incident = link.get_attribute("href").rsplit("/", 1)[1]
        tail = d.wait_for("incident.output", service="victim", timeout=10)[0]
        sent = d.wait_for("alert.sent", service="victim", timeout=30)[0]  # on_crash: one mail
        assert any("victim ready" in line for line in tail["lines"]), tail
        link.send_keys("\n")
        wait_page(driver, "return location.pathname", lambda p: p.startswith("/incident/"), 10)
        chain = [li.get_attribute("data-event") for li in driver.find_elements("css selector", "#chain li")]
        want = ["incident.opened", "service.exited", "service.restart_scheduled", "service.started"]
        positions = [chain.index(event) for event in want if event in chain]
        assert len(positions) == len(want) and positions == sorted(positions), chain
        assert incident in driver.find_element("tag name", "h1").text
        assert "SIGKILL" in driver.find_element("id", "chain").text
        assert "victim ready" in driver.find_element("id", "tail").text
        assert sent["incident"] == incident
        assert "victim crashed and restarts" in driver.find_element("id", "alerts").text
        driver.save_screenshot(str(shots / "incident.png"))

        driver.get(base + "/service/victim")
        chart = driver.find_element("css selector", "svg.chart")
        assert "1 exits" in chart.get_attribute("aria-label"), chart.get_attribute("aria-label")
        assert "2 starts" in chart.get_attribute("aria-label")
        driver.save_screenshot(str(shots / "service.png"))

        driver.get(base + "/service/api")
        output = wait_page(
            driver,
            "const pre = document.querySelector('pre.output'); return pre ? pre.textContent : '';",
            lambda text: "api served request" in text,
            5,
        )
        assert "api listening" in output or "api served request" in output, output
        d.wait_for("health.ok", service="api")
        driver.refresh()
        probes = driver.find_element("id", "probes").text
        assert "exec /bin/true" in probes and "api is healthy (exec probe passes)" in probes, probes
        health = driver.find_element("css selector", 'tr[data-unit="api"] [data-field="health"]').text
        assert health == "healthy", health

        # Phone-sized and dark: the overview still reads (no sideways scroll of the page itself), in
        # the dark colours the system asks for.
        driver.execute_cdp_cmd(
            "Emulation.setEmulatedMedia", {"features": [{"name": "prefers-color-scheme", "value": "dark"}]}
        )
        driver.set_window_size(390, 844)
        driver.get(base + "/")
        wait_page(driver, ROW_JS, lambda v: v["live"] == "live", 10, "victim")
        width = driver.execute_script("return document.documentElement.scrollWidth")
        assert width <= 400, width
        background = driver.execute_script("return getComputedStyle(document.body).backgroundColor")
        assert background == "rgb(13, 17, 23)", background
        driver.save_screenshot(str(shots / "overview-phone-dark.png"))
    print(f"screenshots in {shots}")


def _record(ts: float, event: str, level: str, message: str, **tags: Any) -> str:
    when = datetime.fromtimestamp(ts, UTC).isoformat()
    return json.dumps({"time": when, "level": level, "message": message, "event": event, **tags})


def seed_records(state_dir: Path, now: float) -> None:
    """Write a known set of records, as an earlier hasupd would have, into the records file."""
    h, day = 3600, 86400
    lines = [
        *(_record(now - (i + 1) * h, "backup.failed", "error", f"backup nightly failed: {i}", job="nightly")
          for i in range(5)),
        *(_record(now - 2 * day - i * 60, "health.failed", "error", "api unhealthy", service="api")
          for i in range(3)),
        *(_record(now - (i + 1) * 600, "service.spawn_failed", "error", "no such file", service="worker")
          for i in range(2)),
        *(_record(now - (i + 3) * h, "service.failed", "error", "api failed", service="api")
          for i in range(2)),
        # Warnings count too (as in `hasupctl errors`); info records do not.
        *(_record(now - i * 60, "service.exited", "warning", "api exited", service="api") for i in range(10)),
        *(_record(now - i * 60, "service.started", "info", "api started", service="api") for i in range(9)),
        # Older than 30 days: counted only in the 90-day range.
        *(_record(now - 40 * day - i, "limit.exceeded", "error", "db over memory", service="db")
          for i in range(7)),
    ]  # fmt: skip
    folder = state_dir / "records"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "records.jsonl").write_text("\n".join(lines) + "\n")


# A service printing error lines of a few shapes, a Python traceback and a line carrying markup, then
# idling: its error groups are counted from its output (``output: file``, ``errors.match``).
APP = r"""
import sys, time, traceback

def lookup(key):
    return {}[key]

out = [f"ERROR db query failed after {37 * i + 5}ms on table orders_{i % 3}" for i in range(12)]
out += [f"ERROR cannot open /var/lib/app/{i}/cache.db: permission denied" for i in range(6)]
for i in range(3):
    out.append(f"INFO request {i} started")  # else an error line just before is the traceback's heading
    try:
        lookup(f"user-{i}")
    except KeyError:
        out += traceback.format_exc().rstrip("\n").split("\n")
    out.append(f"INFO request {i} served")
out.append("<3>worker <b>7</b> crashed with code 0x1f")
print("\n".join(out), flush=True)
time.sleep(3600)
"""
APP_GROUPS = [("line", 12), ("line", 6), ("python", 3), ("line", 1)]  # in the order they rank
ERRORS_JS = """
return Array.from(document.querySelectorAll('#errors tbody tr')).map(tr =>
  [tr.dataset.group, parseInt(tr.querySelector('[data-field="count"]').textContent, 10)]);
"""
SAMPLES_JS = "return Array.from(document.querySelectorAll('pre.sample')).map(p => p.textContent);"


def ctl_json(d: Hasupd, *args: str) -> Any:
    done = d.ctl(*args, "--json")
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def wait_output_groups(d: Hasupd, service: str, total: int, timeout: float = 30.0) -> None:
    """Wait until ``hasupctl errors --service`` counts ``total`` errors of ``service`` (bounded)."""
    deadline = time.monotonic() + timeout
    groups: list[dict[str, Any]] = []
    while time.monotonic() < deadline:
        groups = ctl_json(d, "errors", "--service", service)
        if sum(g["count"] for g in groups if g["source"] == "output") >= total:
            return
        time.sleep(0.2)
    pytest.fail(f"the error counts of {service} did not reach {total} within {timeout}s: {groups}")


def test_errors_page_ranks_seeded_errors_by_range(tmp_path: Path, hasupd: Callable[..., Hasupd]) -> None:
    port = free_port()
    shots = screenshot_dir(tmp_path)
    program = tmp_path / "app.py"
    program.write_text(APP)
    app = {"command": [sys.executable, str(program)], "output": "file", "errors": {"match": ["^ERROR "]}}
    config = write_config(tmp_path / "etc", {"app": app}, daemon={"web": {"listen": f"127.0.0.1:{port}"}})
    state = tmp_path / "state"
    seed_records(state, time.time())
    d = hasupd(config, extra_args=("--no-watch",), env=KEEP_PYTHONPATH, state_dir=state)
    d.wait_ready()
    d.wait_for("web.listening", timeout=30)
    wait_output_groups(d, "app", sum(n for _, n in APP_GROUPS))
    month = ctl_json(d, "errors")  # --since 30d, as the page by default
    mine = [g for g in month if g["service"] == "app"]
    assert [(g["kind"], g["count"]) for g in mine] == APP_GROUPS, mine
    own = [(g["service"], g["kind"], g["count"]) for g in month if g["source"] == "hasupd"]
    assert own[:5] == [
        ("api", "service.exited", 10),
        (None, "backup.failed", 5),
        ("api", "health.failed", 3),
        ("worker", "service.spawn_failed", 2),  # seen later than service.failed of api: ranked first
        ("api", "service.failed", 2),
    ], own
    base = f"http://127.0.0.1:{port}"
    with chromium() as driver:
        driver.get(base + "/errors")
        assert driver.execute_script(ERRORS_JS) == [[g["group"], g["count"]] for g in month]
        chart = driver.find_element("css selector", "svg.ranking")
        bars = [t.get_attribute("textContent") for t in chart.find_elements("css selector", "rect title")]
        assert bars == [f"{g['service'] or 'hasupd'} · {g['pattern']}: {g['count']}" for g in month[:20]]
        # The sample with markup in it is shown as text.
        worker = driver.find_element(
            "css selector", f'tr[data-group="{mine[3]["group"]}"] [data-field="sample"]'
        )
        assert "worker <b>7</b> crashed" in worker.text and not driver.find_elements(
            "css selector", "#errors b"
        )
        driver.save_screenshot(str(shots / "errors.png"))
        # The range, chosen with the keyboard: the same ranking as `hasupctl errors --since RANGE`.
        for label in ("24h", "90d", "30d"):
            driver.find_element("css selector", f'.ranges a[href="/errors?range={label}"]').send_keys("\n")
            wait_page(driver, "return location.search", lambda s, q=f"?range={label}": s == q, 10)
            ranked = ctl_json(d, "errors", "--since", label)
            assert driver.execute_script(ERRORS_JS) == [[g["group"], g["count"]] for g in ranked], label
            kinds = {g["kind"] for g in ranked}
            assert ("limit.exceeded" in kinds) == (label == "90d") and ("health.failed" in kinds) != (
                label == "24h"
            ), label
        # A group's page, reached with the keyboard from the ranking: what `hasupctl errors show` prints.
        for group in (mine[0]["group"], mine[2]["group"], own_group(month, "backup.failed")):
            link = driver.find_element("css selector", f'tr[data-group="{group}"] [data-field="pattern"] a')
            link.send_keys("\n")
            wait_page(driver, "return location.pathname", lambda p, g=group: p == f"/errors/{g}", 10)
            show = ctl_json(d, "errors", "show", group)
            samples = driver.execute_script(SAMPLES_JS)
            assert samples == [s["text"] for s in show["samples"]] and samples, (samples, show)
            assert driver.find_element("id", "pattern").text == show["pattern"]
            if group == mine[2]["group"]:
                assert samples[0].startswith("Traceback (most recent call last):")
                assert samples[0].endswith("KeyError: 'user-2'")
                driver.save_screenshot(str(shots / "error-group.png"))
            driver.back()
            wait_page(driver, "return location.pathname", lambda p: p == "/errors", 10)
        # Phone-sized: neither page scrolls sideways (the table scrolls inside its box).
        driver.set_window_size(390, 844)
        for path in ("/errors", f"/errors/{mine[2]['group']}"):
            driver.get(base + path)
            width = driver.execute_script("return document.documentElement.scrollWidth")
            assert width <= 400, (path, width)


def own_group(groups: list[dict[str, Any]], event: str) -> str:
    """Return the id of hasupd's own group of ``event`` in ``groups``."""
    return next(g["group"] for g in groups if g["event"] == event)


def test_backups_page_shows_a_real_snapshot(setup: Setup, hasupd: Callable[..., Hasupd]) -> None:
    port = free_port()
    shots = screenshot_dir(setup.tmp)
    # Yearly schedules, stamped two minutes ago: nothing is due (no catch-up run) unless asked for, and
    # the newest good snapshot is older than max_age until the test's backup.
    yearly = {"schedule": "@yearly"}
    job = {**yearly, "prune_schedule": "@yearly", "max_age": "1m", "check": yearly, "drill": yearly}
    config = setup.config(
        job,
        services={"app": {"command": ["/bin/sleep", "1000"]}},
        daemon={"web": {"listen": f"127.0.0.1:{port}"}},
    )
    for kind in ("backup", "prune", "check", "drill"):
        stamp(setup.tmp / "work0", kind, datetime.now(UTC) - timedelta(minutes=2))
    d = hasupd(config, extra_args=("--no-watch",), env=KEEP_PYTHONPATH)
    d.wait_ready()
    d.wait_for("web.listening", timeout=30)
    with chromium() as driver:
        driver.get(f"http://127.0.0.1:{port}/")
        live = "return document.getElementById('live-status').textContent"
        wait_page(driver, live, lambda s: s == "live", 10)
        stale = driver.find_element("css selector", '#backups tr[data-job="app-data"]').get_attribute("class")
        assert stale == "stale"  # two minutes old, max_age 1m
        done = d.ctl("backup", "run", "app-data")
        assert done.returncode == 0, done.stderr
        snapshot = d.wait_for("backup.finished", job="app-data", timeout=60)[0]["snapshot"]
        (setup.data / "c.txt").write_text("charlie\n" * 5000)
        for kind in ("backup", "check", "drill"):
            done = d.ctl("backup", "run", "app-data", "--kind", kind)
            assert done.returncode == 0, done.stderr
        row = wait_page(
            driver,
            "return document.querySelector('#backups tr[data-job=\"app-data\"]').className",
            lambda c: c == "",
            5,
        )
        assert row == "", "the backups row did not turn fresh without a reload"
        driver.get(f"http://127.0.0.1:{port}/backups")
        text = driver.find_element("id", "job-app-data").text
        assert snapshot[:8] in text, text
        sizes = driver.find_element("css selector", "#job-app-data svg.chart")
        assert len(sizes.find_elements("css selector", "rect")) == 2  # one bar per backup
        assert "check passed" in driver.find_element("id", "checks-app-data").text
        assert "drill of app-data passed" in driver.find_element("id", "drills-app-data").text
        driver.save_screenshot(str(shots / "backups.png"))
