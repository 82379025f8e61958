"""``alerts.rules`` and a service's ``errors.match`` in the config: values, defaults, located errors."""

from __future__ import annotations

from pathlib import Path

from hasupd.config.load import load_config
from hasupd.config.model import AlertRule, Baseline, ErrorsConfig, RuleKind
from tests.unit.config.test_load import issues, write

CHANNEL = "  ops: {email: {from: a@example.org, to: [b@example.org]}}\n"


def test_rules_and_error_patterns_load(tmp_path: Path) -> None:
    write(
        tmp_path,
        {
            "hasupd.yaml": "alerts:\n"
            + CHANNEL
            + """\
  rules:
    - {name: new-errors, new_error: {}}
    - {name: burst, services: [app], error_rate: {window_sec: 10m, above: 20, factor: 5, days: 14}}
    - {name: restarts, restart_rate: {above: 3, factor: 2, baseline: moving_average}}
    - {name: quiet, services: [app], quiet: {after_sec: 30m}}
""",
            "services.d/app.yaml": "command: [true]\nerrors: {match: ['^ERROR', 'Traceback']}\n",
        },
    )
    config = load_config(tmp_path)
    assert [c.name for c in config.daemon.alerts] == ["ops"]  # rules is not a channel
    assert config.daemon.rules == (
        AlertRule(name="new-errors", kind=RuleKind.NEW_ERROR),
        AlertRule(
            name="burst",
            kind=RuleKind.ERROR_RATE,
            services=("app",),
            window_sec=600,
            above=20,
            factor=5,
            days=14,
        ),
        AlertRule(
            name="restarts", kind=RuleKind.RESTART_RATE, above=3, factor=2, baseline=Baseline.MOVING_AVERAGE
        ),
        AlertRule(name="quiet", kind=RuleKind.QUIET, services=("app",), window_sec=1800),
    )
    assert config.services[0].errors == ErrorsConfig(match=("^ERROR", "Traceback"))


def test_rule_errors_are_located(tmp_path: Path) -> None:
    write(
        tmp_path,
        {
            "hasupd.yaml": "alerts:\n"
            + CHANNEL
            + """\
  rules:
    - {name: a, error_rate: {window_sec: 10m}}
    - {name: b, new_error: {}, quiet: {after_sec: 1m}}
    - {name: c, quiet: {}}
    - {name: a, new_error: {group: xyz}}
    - {name: e, services: [app, nope], restart_rate: {above: 2, baseline: same_hour}}
    - {new_error: {}, sevrity: high}
    - just-a-string
""",
            "services.d/app.yaml": "command: [true]\nerrors: {match: ['(unclosed']}\n",
        },
    )
    assert issues(tmp_path) == [
        "hasupd.yaml:4:29: alerts.rules.0.error_rate: "
        "a rate rule needs above (a count), factor (times the baseline) or both",
        "hasupd.yaml:5:32: alerts.rules.1.quiet: "
        "a rule takes only one of new_error, error_rate, restart_rate, quiet",
        "hasupd.yaml:6:24: alerts.rules.2.quiet.after_sec: required key is missing",
        "hasupd.yaml:7:36: alerts.rules.3.new_error.group: "
        "expected an error group id (12 hex digits, see hasupctl errors), got a string",
        "hasupd.yaml:8:33: alerts.rules.4.services.1: unknown service 'nope'",
        "hasupd.yaml:8:65: alerts.rules.4.restart_rate.baseline: only used with factor",
        "hasupd.yaml:9:7: alerts.rules.5.name: required key is missing",
        "hasupd.yaml:9:23: alerts.rules.5.sevrity: unknown key 'sevrity'; expected one of: name, services, "
        "new_error, error_rate, restart_rate, quiet",
        "hasupd.yaml:10:7: alerts.rules.6: expected a rule (a mapping), got a string",
        "services.d/app.yaml:2:18: errors.match.0: invalid regular expression '(unclosed': "
        "missing ), unterminated subpattern at position 0",
    ]


def test_duplicate_rule_names(tmp_path: Path) -> None:
    write(
        tmp_path,
        {
            "hasupd.yaml": "alerts:\n  rules:\n"
            "    - {name: a, new_error: {}}\n    - {name: a, new_error: {}}\n"
        },
    )
    assert issues(tmp_path) == ["hasupd.yaml:4:14: alerts.rules.1.name: duplicate rule name 'a'"]


def test_the_options_of_a_second_kind_are_checked_too(tmp_path: Path) -> None:
    """A rule with two kinds is reported once for the second kind, and every problem in the options of
    both is reported as well (not only the first kind's)."""
    write(
        tmp_path,
        {
            "hasupd.yaml": "alerts:\n  rules:\n"
            "    - {name: a, new_error: {windw_sec: 1h}, error_rate: {above: -1}}\n"
        },
    )
    assert issues(tmp_path) == [
        "hasupd.yaml:3:29: alerts.rules.0.new_error.windw_sec: unknown key 'windw_sec', "
        "did you mean 'window_sec'?",
        "hasupd.yaml:3:45: alerts.rules.0.error_rate: "
        "a rule takes only one of new_error, error_rate, restart_rate, quiet",
        "hasupd.yaml:3:65: alerts.rules.0.error_rate.above: expected a number > 0 and <= 1e+12, got -1",
    ]
