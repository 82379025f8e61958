"""Process-group containment after a crash of hasupd: a damaged scope record (bytes that are not UTF-8,
an empty file, a folder) is reported naming the file, and adoption goes on for every service (found
through the state record); hasupd died at start with UnicodeDecodeError, and a folder as the record
of a unit no longer configured killed it with IsADirectoryError."""

from __future__ import annotations

import json
import time
import zlib
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.support.harness import Hasupd, pid_alive, write_config


@pytest.mark.parametrize("damage", ["bytes", "empty", "folder"])
def test_damaged_scope_records_are_reported_and_every_service_adopted(
    tmp_path: Path, hasupd: Callable[..., Hasupd], damage: str
) -> None:
    tag = 2_000_000 + zlib.crc32(str(tmp_path).encode()) % 1_000_000
    services = {name: {"command": ["/bin/sleep", str(tag + i)]} for i, name in enumerate(("a", "b"))}
    config = write_config(tmp_path / "etc", services)
    d = hasupd(config, extra_args=("--no-cgroup",))
    pids = {name: d.wait_for("service.started", service=name)[0]["pid"] for name in services}
    d.wait_ready()
    record = d.runtime_dir / "state.record"

    def recorded() -> dict[str, object]:
        try:
            units = json.loads(record.read_bytes().partition(b"\n")[2])["units"]
        except (OSError, ValueError, KeyError):
            return {}
        return {name: snap.get("main_pid") for name, snap in units.items()}

    deadline = time.monotonic() + 10
    while recorded() != pids:  # the state record knows both: adoption can find a without its scope record
        assert time.monotonic() < deadline, recorded()
        time.sleep(0.05)
    d.kill()  # SIGKILL: the services live on, their scope records stay
    scopes = d.runtime_dir / "scopes"
    damaged = [scopes / "a", scopes / "gone"]  # a unit's own, and one of a unit no longer configured
    for path in damaged:
        path.unlink(missing_ok=True)
        if damage == "bytes":
            path.write_bytes(b"\xff\xfe\x00garbage")
        elif damage == "empty":
            path.write_bytes(b"")
        else:
            path.mkdir()
    again = hasupd(config, state_dir=d.state_dir, runtime_dir=d.runtime_dir, extra_args=("--no-cgroup",))
    again.wait_ready()
    for path in damaged:
        assert any(f"{path}: damaged scope record" in line for line in again.lines), again.lines[-20:]
    adopted = {r["service"]: r["pid"] for r in again.wait_for("service.adopted", count=2)}
    assert adopted == pids
    status = {s["name"]: s for s in json.loads(again.ctl("status", "--json").stdout)}
    assert {n: (s["state"], s["pid"]) for n, s in status.items()} == {
        n: ("running", p) for n, p in pids.items()
    }
    assert again.stop() == 0
    assert not any(pid_alive(p) for p in pids.values())
