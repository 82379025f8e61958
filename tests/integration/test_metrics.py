"""A full scrape of a running daemon (services restarted, failed and probed, a backup and a restore
drill, an alert waiting in the spool, reloads) read by Prometheus' own tools: prometheus_client's text
and OpenMetrics parsers and ``promtool check metrics``; the shipped rules and dashboard name only
metrics this scrape holds."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import urllib.request
from collections.abc import Callable
from datetime import UTC, datetime

from tests.integration.backup import jobsupport
from tests.integration.backup.jobsupport import QUIET, Setup, stamp
from tests.support.harness import REPO, Hasupd
from tests.support.metrics_families import FAMILIES, check_families
from tests.support.monitoring import dashboard_expressions, metric_names, promtool, rule_expressions

# The fixtures of the daemon-level backup tests: an initialised restic repository and data.
repo_template = jobsupport.repo_template
setup = jobsupport.setup

SLEEP = ["/bin/sleep", "1000"]
FAST_RESTARTS = {
    "restart_sec": "100ms",
    "restart_max_delay_sec": "200ms",
    "start_limit": {"burst": 50, "interval_sec": "60s"},
}
# What Prometheus 2.x sends when it scrapes: OpenMetrics preferred.
PROMETHEUS_ACCEPT = (
    "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,"
    "text/plain;version=0.0.4;q=0.5,*/*;q=0.1"
)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def scrape(port: int, accept: str | None = None) -> tuple[str, str]:
    """Return (content type, body) of GET /metrics."""
    request = urllib.request.Request(f"http://127.0.0.1:{port}/metrics")
    if accept is not None:
        request.add_header("Accept", accept)
    with urllib.request.urlopen(request, timeout=10) as response:
        return response.headers["Content-Type"], response.read().decode()


def promtool_check(body: str) -> None:
    """Assert that ``promtool check metrics`` (Prometheus' parser and linter) finds nothing to say."""
    done = subprocess.run(
        [promtool(), "check", "metrics"], input=body, capture_output=True, text=True, timeout=60, check=False
    )
    assert (done.returncode, done.stdout, done.stderr) == (0, "", ""), body


def test_full_scrape_is_typed_documented_and_passes_promtool(
    setup: Setup, hasupd: Callable[..., Hasupd]
) -> None:
    port, smtp_port = free_port(), free_port()  # nothing listens on smtp_port: the alert stays spooled
    channel = {
        "email": {
            "smtp": {"host": "127.0.0.1", "port": smtp_port, "tls": "none", "timeout_sec": "2s"},
            "from": "hasupd@example.invalid",
            "to": ["ops@example.invalid"],
        },
        "coalesce_sec": "0s",
    }
    config = setup.config(
        {**QUIET, "max_age": "26h", "drill": {"schedule": "@monthly"}},
        services={
            "web": {"command": SLEEP, **FAST_RESTARTS},
            "probed": {"command": SLEEP, "health": [{"exec": ["/bin/true"], "interval_sec": "200ms"}]},
            "broken": {"command": ["/bin/false"], "restart_sec": "100ms", "start_limit": {"burst": 2}},
            "shadowed": {"command": SLEEP},
        },
        daemon={"metrics": {"listen": f"127.0.0.1:{port}"}, "alerts": {"ops": channel}},
    )
    # app-data runs when asked; "failing" runs at start (it never ran) and fails in its before hook.
    for kind in ("backup", "prune", "drill"):
        stamp(setup.tmp / "work0", kind, datetime.now(UTC))
    failing = {**QUIET, "repository": "hot", "paths": [str(setup.data)], "before": [["/bin/false"]]}
    (config / "backups.d" / "failing.yaml").write_text(json.dumps(failing))
    # "booted" runs at start too, then its boot drill (a shadow of "shadowed"): restorable-as-of.
    # Its own data: had it backed up app-data's into the same repository, app-data's backup below would
    # add nothing (restic deduplicates) and hasupd_backup_bytes_added would rightly be 0.
    booted_data = setup.tmp / "booted-data"
    booted_data.mkdir()
    (booted_data / "state").write_text("booted\n")
    booted = {
        **failing,
        "paths": [str(booted_data)],
        "before": [],
        "quiesce": ["shadowed"],
        "drill": {"boot": True},
    }
    (config / "backups.d" / "booted.yaml").write_text(json.dumps(booted))
    # The daemon sees the same prometheus_client as the parsers here (PYTHONPATH is kept): put Debian's
    # first on PYTHONPATH to run both on it.
    pythonpath = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)
    d = hasupd(config, extra_args=("--no-watch",), env={"PYTHONPATH": pythonpath})
    d.wait_for("backup.failed", job="failing", timeout=60)
    d.wait_for("metrics.listening", timeout=30)
    for n in range(2):
        pid = d.wait_for("service.started", count=n + 1, service="web", timeout=30)[n]["pid"]
        os.kill(pid, signal.SIGKILL)
    d.wait_for("service.started", count=3, service="web", timeout=30)
    d.wait_for("service.failed", service="broken", timeout=30)
    d.wait_for("alert.failed", channel="ops", timeout=60)
    d.wait_for("health.ok", service="probed", timeout=30)
    assert d.wait_for("drill.finished", job="booted", timeout=120)[0]["ok"]
    backup = d.ctl("backup", "run", "app-data")
    assert backup.returncode == 0, backup.stderr
    drill = d.ctl("backup", "run", "app-data", "--kind", "drill")
    assert drill.returncode == 0, drill.stderr
    (config / "services.d" / "extra.yaml").write_text('command: ["/bin/sleep", "1000"]\n')
    assert d.ctl("reload").returncode == 0
    d.wait_for("service.started", service="extra", timeout=30)

    content_type, text = scrape(port)
    assert content_type == "text/plain; version=0.0.4; charset=utf-8"
    got = check_families(text)
    promtool_check(text)
    assert "# TYPE hasupd_service_restarts_total counter" in text
    assert got[("hasupd_service_restarts_total", (("result", "signal"), ("service", "web")))] == 2
    assert got[("hasupd_service_restarts_total", (("result", "exit-code"), ("service", "broken")))] >= 1
    assert got[("hasupd_service_state", (("service", "broken"), ("state", "failed")))] == 1
    assert got[("hasupd_service_up", (("service", "extra"),))] == 1
    assert got[("hasupd_service_last_exit_code", (("service", "web"),))] == 128 + signal.SIGKILL
    assert got[("hasupd_health_status", (("service", "probed"),))] == 1
    assert got[("hasupd_watchdog_timeouts_total", (("service", "web"),))] == 0
    assert got[("hasupd_config_reloads_total", (("outcome", "applied"),))] == 1
    assert got[("hasupd_alert_spool_depth", ())] >= 1
    assert got[("hasupd_backup_bytes_added", (("job", "app-data"),))] > 0
    assert got[("hasupd_backup_duration_seconds", (("job", "app-data"),))] > 0
    assert ("hasupd_backup_last_success_timestamp_seconds", (("job", "app-data"),)) in got
    assert got[("hasupd_backup_failures_total", (("job", "failing"),))] >= 1
    assert 0 <= got[("hasupd_backup_age_seconds", (("job", "app-data"),))] < 600
    assert got[("hasupd_backup_max_age_seconds", (("job", "app-data"),))] == 26 * 3600
    assert ("hasupd_backup_age_seconds", (("job", "failing"),)) not in got  # it never succeeded
    assert got[("hasupd_backup_drill_ok", (("job", "app-data"),))] == 1
    assert got[("hasupd_systemd_watchdog_late_total", ())] == 0
    # Every metric the shipped Prometheus rules and Grafana dashboard name is in this real scrape.
    scraped = {name for name, _ in got}
    for source, expressions in (("rules", rule_expressions()), ("dashboard", dashboard_expressions())):
        unknown = {m: where for m, where in metric_names(expressions).items() if m not in scraped}
        assert not unknown, f"the shipped {source} use metrics hasupd does not serve: {unknown}"
    assert ("hasupd_backup_restorable_as_of_timestamp_seconds", (("job", "booted"),)) in got

    # OpenMetrics, asked for as Prometheus itself asks; the same families and values.
    for accept in ("application/openmetrics-text", PROMETHEUS_ACCEPT):
        content_type, body = scrape(port, accept)
        assert content_type.startswith("application/openmetrics-text; version="), content_type
        assert body.endswith("# EOF\n")
        om = check_families(body, openmetrics=True)
        assert om.keys() == got.keys()
        assert om[("hasupd_service_restarts_total", (("result", "signal"), ("service", "web")))] == 2
    assert len(FAMILIES) == len({name for name, _ in got})  # every family has samples in this scrape
    # A header newer prometheus_client releases raise on gets the text format (0.16 reads no version
    # and answers OpenMetrics); hasupd carries on.
    content_type, body = scrape(port, "application/openmetrics-text; version=abc")
    openmetrics = content_type.startswith("application/openmetrics-text")
    assert openmetrics or content_type == "text/plain; version=0.0.4; charset=utf-8"
    assert check_families(body, openmetrics=openmetrics).keys() == got.keys()
    assert scrape(port)[0] == "text/plain; version=0.0.4; charset=utf-8" and d.proc.poll() is None
    assert d.stop() == 0
