"""The real daemon with its state dir on a full filesystem (a 2 MiB tmpfs): it supervises on, says once
that records are being dropped, and says when they are written again, with the count."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from tests.support.fullfs import fill, small_tmpfs
from tests.support.harness import Hasupd, write_config


def test_a_full_state_dir_gives_one_dropping_record_and_one_resumed_record(
    tmp_path: Path, hasupd: Callable[..., Hasupd]
) -> None:
    config = write_config(
        tmp_path / "etc",
        {
            "flappy": {
                "command": ["/bin/sh", "-c", "sleep 0.1; exit 1"],
                "restart_sec": "50ms",
                "restart_max_delay_sec": "100ms",
                "start_limit": {"burst": 10000, "interval_sec": "1s"},
            }
        },
    )
    with small_tmpfs() as mount:
        d = hasupd(config, state_dir=mount / "state")
        d.wait_for("service.started", service="flappy", count=3)
        filler = fill(mount)
        started = len(d.find("service.started", service="flappy"))
        # Supervision goes on: 30 more restarts, each a few records nobody can write to the file.
        d.wait_for("service.started", service="flappy", count=started + 30, timeout=30)
        dropping = d.find("records.dropping")
        assert len(dropping) == 1, dropping
        assert "No space left on device" in dropping[0]["error"]
        assert not [line for line in d.lines if "Traceback" in line]
        filler.unlink()
        resumed = d.wait_for("records.resumed", timeout=10)[0]
        assert resumed["dropped"] >= 30
        assert len(d.find("records.dropping")) == 1
        assert d.stop() == 0
        lines = (mount / "state" / "records" / "records.jsonl").read_text().splitlines()
    records = [json.loads(line) for line in lines if line.startswith("{") and line.endswith("}")]
    in_file = [r for r in records if r.get("event") == "records.resumed"]
    assert [r["dropped"] for r in in_file] == [resumed["dropped"]]
    assert records[-1]["event"] == "daemon.stopped"
    # Nothing garbled beyond, at most, the one line the disk cut.
    assert len(lines) - len(records) <= 1
