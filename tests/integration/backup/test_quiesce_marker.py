"""A damaged quiesce marker (hasupd died mid-backup with services stopped, and the file that names them
is not a list of names) is recorded as such, naming the file, and the job's quiesce services run again:
hasupd neither dies at start (TypeError) nor forgets them silently."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import pytest

from tests.integration.backup.jobsupport import QUIET, Setup, stamp
from tests.support.harness import Hasupd


@pytest.mark.parametrize("content", [b"3", b"{}", b'"x"', b"[1, 2]", b"\xff\xfe[", b"[[[["])
def test_a_damaged_quiesce_marker_is_recorded_and_the_quiesced_service_resumed(
    setup: Setup, hasupd: Callable[..., Hasupd], tmp_path: Path, content: bytes
) -> None:
    work = tmp_path / "w"
    for kind in ("backup", "prune"):
        stamp(work, kind, datetime.now(UTC))  # no backup runs by itself during the test
    config = setup.config(
        {**QUIET, "quiesce": ["app"]}, services={"app": {"command": ["/bin/sleep", "1007"]}}
    )
    d = hasupd(config, state_dir=work / "state", runtime_dir=work / "run")
    d.wait_for("service.started", service="app")
    d.wait_ready()
    assert d.ctl("stop", "app").returncode == 0  # as a backup's quiesce stops it
    d.kill()  # ... and hasupd died mid-backup, its marker damaged
    marker = work / "state" / "backup" / "app-data" / "quiesced.json"
    marker.parent.mkdir(parents=True, exist_ok=True)
    marker.write_bytes(content)
    d2 = hasupd(config, state_dir=work / "state", runtime_dir=work / "run")
    record = d2.wait_for("backup.interrupted", timeout=30)[0]
    cleaned = " ".join(record["cleaned"])
    assert f"{marker}: damaged quiesce marker" in cleaned, record
    assert "resumed the job's quiesce services: app" in cleaned, record
    assert d2.wait_for("backup.resumed", timeout=10)[0]["units"] == ["app"]
    d2.wait_for("service.started", service="app")
    d2.wait_ready()
    status = json.loads(d2.ctl("status", "--json", "app").stdout)[0]
    assert status["state"] == "running"
    assert not marker.exists()  # forgotten: not reported again at the next start
    assert d2.stop() == 0
