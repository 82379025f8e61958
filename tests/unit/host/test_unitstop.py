"""hasupd stop-post: a requested stop (a stop/restart job of the unit) from a crash (no job)."""

from __future__ import annotations

import subprocess
from collections.abc import Sequence
from pathlib import Path

import pytest

from hasupd.host.unitstop import stop_requested, unit_cgroup

UNIT = "hasupd.service"


def answer(stdout: str, returncode: int = 0):  # type: ignore[no-untyped-def]
    def run(argv: Sequence[str]) -> subprocess.CompletedProcess[str]:
        assert list(argv[:2]) == ["systemctl", "list-jobs"] and argv[-1] == UNIT
        return subprocess.CompletedProcess(list(argv), returncode, stdout, "no bus")

    return run


@pytest.mark.parametrize(
    ("jobs", "result", "requested"),
    [
        ("17 hasupd.service stop running\n", "success", True),
        ("17 hasupd.service stop running\n", "timeout", True),  # hung hasupd, SIGKILLed by systemd
        ("18 hasupd.service restart running\n", "success", True),  # systemctl restart: all stop
        ("", "signal", False),  # kill -9: Restart= queues its job only after ExecStopPost=
        ("", "watchdog", False),
        ("", "success", False),
        ("19 other.service stop waiting\n", "signal", False),
        ("20 hasupd.service start waiting\n", "signal", False),
    ],
)
def test_a_stop_is_requested_when_a_stop_or_restart_job_runs(jobs: str, result: str, requested: bool) -> None:
    decided, why = stop_requested(UNIT, {"SERVICE_RESULT": result}, answer(jobs))
    assert decided is requested, why
    assert f"SERVICE_RESULT={result}" in why


def test_without_an_answer_only_a_clean_exit_counts_as_a_stop() -> None:
    assert stop_requested(UNIT, {"SERVICE_RESULT": "success"}, answer("", 1))[0] is True
    assert stop_requested(UNIT, {"SERVICE_RESULT": "signal"}, answer("", 1))[0] is False


def test_the_unit_cgroup_is_found_from_a_control_subgroup() -> None:
    root = Path("/sys/fs/cgroup/system.slice/hasupd.service")
    assert unit_cgroup(UNIT, root / ".control") == root
    assert unit_cgroup(UNIT, root) == root
    assert unit_cgroup(UNIT, Path("/sys/fs/cgroup/system.slice/other.service")) is None
