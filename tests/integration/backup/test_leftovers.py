"""Finding and stopping the processes an earlier hasupd on the same state dir left running."""

from __future__ import annotations

import contextlib
import os
import subprocess
import time
from pathlib import Path

from hasupd.backup.leftovers import find_leftovers, stop_leftovers
from tests.support.harness import pid_alive


def orphan(script: str, owner: str) -> int:
    """Start ``sh -c script`` as an orphan (its parent exits) carrying the owner tag; return its pid."""
    out = subprocess.run(
        ["setsid", "sh", "-c", f"sh -c {script!r} </dev/null >/dev/null 2>&1 & echo $!"],
        env={"PATH": os.environ["PATH"], "HASUPD_RESTIC_OWNER": owner, "RESTIC_REPOSITORY": "/srv/repo"},
        capture_output=True,
        text=True,
        check=True,
    )
    return int(out.stdout.strip())


def catches_sigint(pid: int) -> bool:
    with open(f"/proc/{pid}/status") as f:
        caught = next(line for line in f if line.startswith("SigCgt:"))
    return bool(int(caught.split()[1], 16) & (1 << (2 - 1)))


async def test_leftovers_of_this_state_dir_are_stopped_politely_then_killed(tmp_path: Path) -> None:
    owner = str(tmp_path / "state")
    # A background job of sh starts with SIGINT ignored; restic (Go) handles it again, like this one.
    polite = orphan(
        "exec python3 -c 'import signal, time; signal.signal(signal.SIGINT, signal.default_int_handler);"
        " time.sleep(1000)'",
        owner,
    )
    stubborn = orphan("trap '' INT; exec sleep 1001", owner)
    other = orphan("exec sleep 1002", str(tmp_path / "other-state"))  # another hasupd's: left alone
    try:
        deadline = time.monotonic() + 10
        while len(find_leftovers(owner)) < 2 or not catches_sigint(polite):
            assert time.monotonic() < deadline
            time.sleep(0.02)
        found = {lo.pid: lo for lo in find_leftovers(owner)}
        assert set(found) == {polite, stubborn}
        assert found[polite].repository == "/srv/repo" and "time.sleep(1000)" in found[polite].command
        stopped = dict((lo.pid, how) for lo, how in await stop_leftovers(owner, grace_sec=1.0))
        assert stopped == {polite: "SIGINT", stubborn: "SIGKILL"}
        assert find_leftovers(owner) == []
        assert pid_alive(other)
    finally:
        for pid in (polite, stubborn, other):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, 9)
