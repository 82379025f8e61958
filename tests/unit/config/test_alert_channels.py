"""hasupd.yaml: alert channels beyond email (apprise, sendmail, pagerduty) and their filters."""

from __future__ import annotations

from pathlib import Path

from hasupd.config.load import load_config
from hasupd.config.model import AlertChannel, PagerDutyChannel, SendmailChannel
from tests.unit.config.test_load import issues, write


def test_every_transport_and_the_filters_load(tmp_path: Path) -> None:
    write(
        tmp_path,
        {
            "hasupd.yaml": """
                alerts:
                  chat:
                    apprise: ["ntfy://127.0.0.1:8080/ops", "json://127.0.0.1:9000/hook"]
                    timeout_sec: 5s
                  mta:
                    sendmail: {from: hasupd@x.org, to: [ops@x.org], timeout_sec: 10s}
                  pager:
                    pagerduty: {routing_key_file: /etc/hasupd/pd.key, url: "http://127.0.0.1:9/v2/enqueue"}
                    min_level: error
                    events: [service.failed, fleet.unowned, backup.stale]
            """
        },
    )
    chat, mta, pager = load_config(tmp_path).daemon.alerts
    assert chat == AlertChannel(
        name="chat", apprise=("ntfy://127.0.0.1:8080/ops", "json://127.0.0.1:9000/hook"), timeout_sec=5.0
    )
    assert chat.transport == "apprise" and mta.transport == "sendmail" and pager.transport == "pagerduty"
    assert mta.sendmail == SendmailChannel(from_addr="hasupd@x.org", to=("ops@x.org",), timeout_sec=10.0)
    assert pager.pagerduty == PagerDutyChannel(
        routing_key_file="/etc/hasupd/pd.key", url="http://127.0.0.1:9/v2/enqueue"
    )
    assert pager.min_level == "error"
    assert pager.events == ("service.failed", "fleet.unowned", "backup.stale")


def test_bad_channels_are_reported_at_their_place(tmp_path: Path) -> None:
    write(
        tmp_path,
        {
            "hasupd.yaml": """
                alerts:
                  none: {coalesce_sec: 1m}
                  two: {apprise: ["ntfy://h/t"], sendmail: {from: a@b.org, to: [c@d.org]}}
                  bad:
                    apprise: ["not a url", "slack://T/B/C"]
                    min_level: loud
                    events: [failed]
                  pd:
                    pagerduty: {url: "ftp://x/y"}
            """
        },
    )
    assert issues(tmp_path) == [
        "hasupd.yaml:2:9: alerts.none: a channel needs exactly one of email, apprise, sendmail, pagerduty "
        "(got none)",
        "hasupd.yaml:3:8: alerts.two: a channel needs exactly one of email, apprise, sendmail, pagerduty "
        "(got apprise and sendmail)",
        "hasupd.yaml:5:15: alerts.bad.apprise.0: "
        "expected an Apprise URL such as ntfy://host/topic or json://host:port/path",
        "hasupd.yaml:6:16: alerts.bad.min_level: "
        "invalid value 'loud': expected one of debug, info, warning, error, critical",
        "hasupd.yaml:7:14: alerts.bad.events.0: expected an event name such as service.failed, got 'failed'",
        "hasupd.yaml:9:16: alerts.pd.pagerduty.routing_key_file: required key is missing",
        "hasupd.yaml:9:22: alerts.pd.pagerduty.url: expected an http:// or https:// URL, got 'ftp://x/y'",
    ]


def test_a_pagerduty_url_python_cannot_split_is_a_located_error(tmp_path: Path) -> None:
    """urlsplit raises for these: check-config printed a traceback, a reload with one failed inside."""
    write(
        tmp_path,
        {
            "hasupd.yaml": """
                alerts:
                  a: {pagerduty: {routing_key_file: /k, url: "http://[::1/v2/enqueue"}}
                  b: {pagerduty: {routing_key_file: /k, url: "http://127.0.0.1:99999/v2/enqueue"}}
            """
        },
    )
    assert issues(tmp_path) == [
        "hasupd.yaml:2:46: alerts.a.pagerduty.url: "
        "expected an http:// or https:// URL, got 'http://[::1/v2/enqueue'",
        "hasupd.yaml:3:46: alerts.b.pagerduty.url: "
        "expected an http:// or https:// URL, got 'http://127.0.0.1:99999/v2/enqueue'",
    ]
