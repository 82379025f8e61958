"""hasupd stop-post's kill: every process below the unit's cgroup goes, except the caller itself
(real cgroups, real processes; hasupd's own cgroup2 mount)."""

from __future__ import annotations

import os
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from hasupd.host.containment import _find_own_cgroup
from hasupd.host.unitstop import kill_leftovers
from tests.support.harness import require_root


@pytest.fixture
def unit() -> Iterator[Path]:
    require_root()
    found = _find_own_cgroup()
    assert not isinstance(found, str), found
    own, _root = found
    base = own.parent if (own / "cgroup.type").exists() else own
    path = base / f"hasupd-test-{uuid.uuid4().hex[:8]}.service"
    path.mkdir()
    yield path
    for directory, _dirs, _files in sorted(os.walk(path), key=lambda w: -len(w[0])):
        for _ in range(50):
            try:
                Path(directory).rmdir()
                break
            except OSError:
                time.sleep(0.05)


def spawn_in(group: Path) -> subprocess.Popen[bytes]:
    group.mkdir(exist_ok=True)
    procs = str(group / "cgroup.procs")
    # The child moves itself in before exec, so nothing of it ever runs outside the group.
    return subprocess.Popen(["sh", "-c", f"echo $$ > {procs} && exec sleep 1000"])


def test_every_process_below_the_unit_is_killed_but_the_caller(unit: Path) -> None:
    service = spawn_in(unit / "web.service")
    nested = spawn_in(unit / "web.service" / "sub")
    control = unit / ".control"
    helper = spawn_in(control)  # shares the caller's group: killed pid by pid, not by cgroup.kill
    groups = {service: unit / "web.service", nested: unit / "web.service" / "sub", helper: control}
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and not all(
        str(proc.pid) in (group / "cgroup.procs").read_text().split() for proc, group in groups.items()
    ):
        time.sleep(0.01)
    killed = kill_leftovers(unit, control, own_pid=os.getpid())
    assert sorted(killed) == sorted([service.pid, nested.pid, helper.pid])
    for proc in (service, nested, helper):
        assert proc.wait(5) < 0  # killed by a signal
