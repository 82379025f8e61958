"""Records as native journald fields, in a real systemd-journald (private mount namespace)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.harness import REPO, write_config
from tests.support.journald import Journald, running_journald
from tests.support.records_backend import Backend

# A record far over the datagram limit: journald gets it through a sealed memfd.
LARGE_RECORD = """
import json, sys
from hasupd import events as ev
from hasupd.config.model import LogFormat, LogTarget
from hasupd.observe.logs import log_events, setup_logging

setup = setup_logging(LogTarget.JOURNAL, LogFormat.JSON)
bus = ev.EventBus()
log_events(bus, setup.logger)
errors = tuple(f"services.d/x{i}.yaml:1:1: command: " + "y" * 100 for i in range(20000))
bus.publish(ev.ConfigInvalid(errors=errors))
bus.publish(ev.ConfigApplied(unchanged=1))
handler = setup.logger.handlers[0]
print(json.dumps({"memfd_sends": handler.memfd_sends}))
"""


@pytest.fixture
def journald(tmp_path: Path) -> Iterator[Journald]:
    with running_journald(tmp_path) as j:
        yield j


def test_crash_record_is_found_by_its_native_fields_and_message_is_the_json_record(
    journald: Journald, tmp_path: Path
) -> None:
    config = write_config(
        tmp_path / "etc", {"web": {"command": ["/bin/sleep", "1000"], "restart_sec": "100ms"}}
    )
    b = Backend("journal", tmp_path, journald)
    try:
        d = b.start(config)
        pid = b.wait_for(d, "service.started", service="web")[0]["pid"]
        os.kill(pid, signal.SIGKILL)
        b.wait_for(d, "service.started", count=2, service="web")
    finally:
        b.close()
    entries = journald.entries("HASUPD_SERVICE=web", "HASUPD_EVENT=service.exited")
    crash = [e for e in entries if e.get("HASUPD_PID") == str(pid)]
    assert len(crash) == 1, entries
    entry = crash[0]
    record = json.loads(entry["MESSAGE"])
    assert entry["SYSLOG_IDENTIFIER"] == "hasupd"
    assert entry["PRIORITY"] == "4"  # an unexpected exit is a warning
    assert record["event"] == "service.exited" and record["level"] == "warning"
    tags = {k.removeprefix("HASUPD_").lower(): v for k, v in entry.items() if k.startswith("HASUPD_")}
    assert {"event", "service", "incident", "pid", "result", "signal", "expected", "status"} <= tags.keys()
    for key, value in tags.items():
        expected = record[key] if isinstance(record[key], str) else json.dumps(record[key])
        assert value == expected, key
    assert record["pid"] == pid and record["signal"] == "SIGKILL" and record["result"] == "signal"
    assert record["expected"] is False
    # The whole chain of that incident is one match away.
    chain = journald.entries(f"HASUPD_INCIDENT={record['incident']}")
    assert [e["HASUPD_EVENT"] for e in chain][:3] == [
        "incident.opened",
        "service.exited",
        "service.restart_scheduled",
    ]


def test_a_record_larger_than_a_datagram_reaches_journald_whole(journald: Journald) -> None:
    done = subprocess.run(
        [*journald.prefix, sys.executable, "-c", LARGE_RECORD],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""
    assert json.loads(done.stdout) == {"memfd_sends": 1}
    [entry] = journald.wait_entries("HASUPD_EVENT=config.invalid")
    assert len(entry["MESSAGE"]) > 2_000_000
    record = json.loads(entry["MESSAGE"])
    assert len(record["errors"]) == 20000 and record["errors"][-1].startswith("services.d/x19999.yaml")
    assert len(json.loads(entry["HASUPD_ERRORS"])) == 20000
    assert entry["PRIORITY"] == "3"
    # The small record after it went as a plain datagram.
    assert journald.wait_entries("HASUPD_EVENT=config.applied")
