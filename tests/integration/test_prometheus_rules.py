"""The shipped Prometheus alerting rules and Grafana dashboard, checked by Debian's promtool: the rules
parse and pass promtool's checks, their unit tests (share/prometheus/hasupd-rules.test.yml) prove each
alert fires on the series it is about and stays quiet on healthy ones, and every dashboard query is
valid PromQL. That every metric they name exists is proven on a real scrape in test_metrics.py."""

from __future__ import annotations

import subprocess
from pathlib import Path

from tests.support.monitoring import (
    RULES,
    RULES_TEST,
    as_recording_rules,
    dashboard_expressions,
    promtool,
    rule_expressions,
)

ALERTS = {
    "HasupdServiceFailed",
    "HasupdServiceCrashLooping",
    "HasupdBackupStale",
    "HasupdBackupDrillFailed",
    "HasupdAlertSpoolGrowing",
    "HasupdWatchdogLate",
}


def run(*argv: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False, cwd=cwd)


def test_promtool_check_rules_passes_on_the_shipped_rules() -> None:
    assert set(rule_expressions()) == ALERTS
    done = run(promtool(), "check", "rules", str(RULES))
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"SUCCESS: {len(ALERTS)} rules found" in done.stdout


def test_promtool_unit_tests_prove_every_alert_fires() -> None:
    tested = set()
    for line in RULES_TEST.read_text().splitlines():
        if line.strip().startswith("alertname:"):
            tested.add(line.split(":", 1)[1].strip())
    assert tested == ALERTS, f"alerts without a promtool unit test: {ALERTS - tested}"
    done = run(promtool(), "test", "rules", RULES_TEST.name, cwd=RULES_TEST.parent)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS" in done.stdout


def test_every_dashboard_query_is_valid_promql(tmp_path: Path) -> None:
    expressions = dashboard_expressions()
    assert len(expressions) >= 20
    done = run(promtool(), "check", "rules", str(as_recording_rules(expressions, tmp_path)))
    assert done.returncode == 0, done.stdout + done.stderr
