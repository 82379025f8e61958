"""The Prometheus rules and the Grafana dashboard that hasupd ships (share/prometheus, share/grafana):
their PromQL expressions, the metric names those use, and Debian's promtool to check them."""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import yaml

from tests.support.harness import REPO, require
from tests.support.restic_versions import fetched_binary, this_suite

RULES = REPO / "share" / "prometheus" / "hasupd-rules.yml"
RULES_TEST = REPO / "share" / "prometheus" / "hasupd-rules.test.yml"
DASHBOARD = REPO / "share" / "grafana" / "hasupd-dashboard.json"
PROMTOOL_OPT_OUT = "HASUPD_TEST_NO_PROMTOOL"
# Grafana's variables, replaced by what Grafana would put there, to give Prometheus plain PromQL.
GRAFANA_VARIABLES = {"$__rate_interval": "5m", "$instance": ".*"}
_METRIC = re.compile(r"\bhasupd_[a-z0-9_]+\b")


def promtool() -> str:
    """Return Debian's promtool: the installed one, else taken out of the prometheus .deb of this
    release (not installed: no Prometheus server starts on a developer's machine)."""
    found = shutil.which("promtool")
    if found is None and os.environ.get(PROMTOOL_OPT_OUT) != "1":
        try:
            found = str(fetched_binary(this_suite(), "prometheus", "usr/bin/promtool"))
        except RuntimeError as e:
            require(False, f"promtool could not be had: {e}", PROMTOOL_OPT_OUT)
    require(found is not None, "promtool is not installed (apt-get install prometheus)", PROMTOOL_OPT_OUT)
    assert found is not None
    return found


def rule_expressions() -> dict[str, str]:
    """Return {alert name: expression} of the shipped rules."""
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return {rule["alert"]: rule["expr"] for group in groups for rule in group["rules"]}


def dashboard_expressions() -> dict[str, str]:
    """Return {"panel title #refId" or "variable NAME": PromQL} of every query in the dashboard, with
    Grafana's variables replaced (label_values(METRIC, LABEL) becomes the selector METRIC)."""
    dashboard = json.loads(DASHBOARD.read_text())
    found = {}
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            found[f"{panel['title']} #{target['refId']}"] = target["expr"]
    for variable in dashboard["templating"]["list"]:
        if variable["type"] == "query":
            query = variable["query"]["query"] if isinstance(variable["query"], dict) else variable["query"]
            match = re.fullmatch(r"label_values\((\w+), *\w+\)", query)
            assert match, f"variable {variable['name']}: unexpected query {query!r}"
            found[f"variable {variable['name']}"] = match[1]
    for name, query in found.items():
        expr = query
        for variable, value in GRAFANA_VARIABLES.items():
            expr = expr.replace(variable, value)
        assert "$" not in expr.replace('"$1"', ""), f"{name}: unknown Grafana variable in {expr!r}"
        found[name] = expr
    return found


def metric_names(expressions: dict[str, str]) -> dict[str, set[str]]:
    """Return {metric name: the expressions' names that use it}; every expression must use one."""
    used: dict[str, set[str]] = {}
    for name, expr in expressions.items():
        metrics = set(_METRIC.findall(expr))
        assert metrics, f"{name}: no hasupd metric in {expr!r}"
        for metric in metrics:
            used.setdefault(metric, set()).add(name)
    return used


def as_recording_rules(expressions: dict[str, str], folder: Path) -> Path:
    """Write the expressions as recording rules (for `promtool check rules`, Prometheus' own parser)."""
    rules = [
        {"record": f"hasupd_dashboard:query_{i}", "expr": expr} for i, expr in enumerate(expressions.values())
    ]
    path = folder / "dashboard-queries.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    return path
