"""The spawn path and the process settings through a real ``hasupd run``: the first record names the
path, the child reports its limits, nice and umask from the inside (issue 22 must-show 5), its cgroup
is the service's, ``hasupctl status`` shows the settings, and a crash is restarted into a fresh
cgroup. ``--no-clone3`` and ``--no-cgroup`` cover the other paths."""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.support.harness import Hasupd, require_root, write_config

PROBE = r"""
{
echo "nofile=$(grep '^Max open files' /proc/self/limits | tr -s ' ' | cut -d' ' -f4,5)"
echo "nice=$(cut -d' ' -f19 /proc/$$/stat)"
echo "cgroup=$(grep '^0::' /proc/$$/cgroup | cut -c4-)"
echo "pid=$$"
touch "$1/made-$$"
echo "mode=$(stat -c %a "$1/made-$$")"
} > "$1/report-$$.tmp"
mv "$1/report-$$.tmp" "$1/report-$$"
exec sleep infinity
"""


def reports(folder: Path) -> dict[int, dict[str, str]]:
    out = {}
    for path in folder.glob("report-*"):
        if path.name.endswith(".tmp"):
            continue
        fields = dict(line.split("=", 1) for line in path.read_text().splitlines())
        out[int(fields["pid"])] = fields
    return out


def wait_report(folder: Path, pid: int, timeout: float = 10.0) -> dict[str, str]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = reports(folder).get(pid)
        if found is not None:
            return found
        time.sleep(0.02)
    pytest.fail(f"no report from pid {pid} in {folder}: {sorted(p.name for p in folder.iterdir())}")


@pytest.mark.parametrize(
    ("args", "spawn"),
    [
        ((), "clone3(CLONE_INTO_CGROUP)"),
        (("--no-clone3",), "subprocess"),
        (("--no-cgroup",), "clone3,"),
    ],
)
def test_settings_inside_a_child_of_hasupd_run(
    hasupd: Callable[..., Hasupd], tmp_path: Path, args: tuple[str, ...], spawn: str
) -> None:
    require_root()
    out = tmp_path / "out"
    out.mkdir()
    config = write_config(
        tmp_path / "conf",
        {
            "probe": {
                "command": ["/bin/sh", "-c", PROBE, "probe", str(out)],
                "limits": {"nofile": 4096},
                "nice": 10,
                "umask": "0027",
                "restart": "always",
                "restart_sec": "0",
                "output": "file",
            }
        },
    )
    h = hasupd(config, extra_args=args)
    started = h.wait_for("daemon.started")[0]
    assert started["spawn"].startswith(spawn), started
    first = h.wait_for("service.started", service="probe")[0]["pid"]
    seen = wait_report(out, first)
    assert seen["nofile"] == "4096 4096"
    assert seen["nice"] == "10"
    assert seen["mode"] == "640"
    if "--no-cgroup" not in args:
        assert seen["cgroup"].endswith("/probe.service"), seen
    status = h.ctl("status", "--json", "probe")
    assert status.returncode == 0, status.stderr
    (row,) = json.loads(status.stdout)
    assert row["process"] == {"limits.nofile": "4096", "nice": 10, "umask": "0027"}
    text = h.ctl("status", "probe")
    assert "probe: process limits.nofile=4096 nice=10 umask=0027" in text.stdout, text.stdout
    # A crash: the new child is in the service's (new) cgroup with the same settings.
    os.kill(first, signal.SIGKILL)
    second = h.wait_for("service.started", service="probe", count=2)[1]["pid"]
    again = wait_report(out, second)
    assert (again["nofile"], again["nice"], again["mode"]) == ("4096 4096", "10", "640")
    assert again["cgroup"] == seen["cgroup"]
    assert h.stop() == 0
