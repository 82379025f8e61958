"""``hasupd stop-post UNIT``: hasupd.service's ExecStopPost=, which leaves nothing behind after a stop
that was asked for, and everything running after a crash.

The unit has ``KillMode=process``: systemd signals hasupd alone, so a crash, a watchdog kill or an OOM
kill of hasupd leaves its services running for the next hasupd to adopt. A requested stop
(``systemctl stop``/``restart``, shutdown) still ends every service: hasupd stops them itself on
SIGTERM, in reverse dependency order; this command then kills whatever is left in the unit's cgroup
(a hasupd that hung and was SIGKILLed at TimeoutStopSec=, a process that escaped its service).

A stop was asked for when a ``stop`` or ``restart`` job of the unit is running while ExecStopPost=
runs: systemd keeps that job until the unit is inactive, while after a crash ExecStopPost= runs with
no job (the auto-restart job is only queued once the unit is dead). ``$SERVICE_RESULT`` alone cannot
tell them apart: "timeout" is also a start timeout, "success" is any clean exit, "signal" is both a
``kill -9`` and a stop that SIGKILLed a hung hasupd. If systemctl cannot answer, the services are left
running (a restarted hasupd adopts them; a stop job would be reported by systemd) unless hasupd
exited cleanly, which it only does after stopping every service.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from hasupd.host.containment import _find_own_cgroup

STOP_JOBS = frozenset({"stop", "restart"})
KILL_BOUND_SEC = 10.0  # processes still listed after this are reported, not waited for

Runner = Callable[[Sequence[str]], "subprocess.CompletedProcess[str]"]


def _systemctl(argv: Sequence[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(argv), capture_output=True, text=True, timeout=20, check=False)


def stop_requested(unit: str, environ: dict[str, str], run: Runner = _systemctl) -> tuple[bool, str]:
    """Return (whether a stop of ``unit`` was asked for, why it was decided so).

    ``systemctl list-jobs`` exit codes: 0 -> its answer counts; anything else (or no systemctl) ->
    undecided, and then only a clean exit of hasupd (``SERVICE_RESULT=success``) counts as a stop.
    """
    try:
        proc = run(["systemctl", "list-jobs", "--no-legend", "--plain", "--full", unit])
    except (OSError, subprocess.TimeoutExpired) as error:
        answer = None
        why = f"systemctl failed: {error}"
    else:
        if proc.returncode == 0:
            # One line per job: ID UNIT TYPE STATE.
            types = {
                f[2]
                for f in (line.split() for line in proc.stdout.splitlines())
                if len(f) >= 4 and f[1] == unit
            }
            answer = bool(types & STOP_JOBS)
            why = f"jobs of {unit}: {', '.join(sorted(types)) or 'none'}"
        else:
            answer = None
            why = f"systemctl list-jobs exited {proc.returncode}: {proc.stderr.strip()}"
    result = environ.get("SERVICE_RESULT", "")
    if answer is None:
        return result == "success", f"{why}; SERVICE_RESULT={result or 'unset'}"
    return answer, f"{why}; SERVICE_RESULT={result or 'unset'}"


def unit_cgroup(unit: str, path: Path) -> Path | None:
    """Return the cgroup2 directory of ``unit`` given this process's own, ``path`` (the unit's, or a
    subgroup of it: a delegated unit's control processes may run in one), or None."""
    for candidate in (path, *path.parents):
        if candidate.name == unit:
            return candidate
    return None


def kill_leftovers(cgroup: Path, own_group: Path, own_pid: int) -> list[int]:
    """SIGKILL every process in ``cgroup``'s subtree but ``own_pid`` (which runs in ``own_group``);
    return the pids that were there. Groups that do not contain ``own_group`` go with cgroup.kill
    (whole trees at once, no pid-reuse race); ``own_group`` and its ancestors pid by pid."""
    seen: list[int] = []
    deadline = time.monotonic() + KILL_BOUND_SEC
    while True:
        left = False
        for directory, _dirs, _files in os.walk(cgroup, topdown=False):
            group = Path(directory)
            try:
                pids = [int(p) for p in (group / "cgroup.procs").read_text().split() if int(p) != own_pid]
            except (FileNotFoundError, ValueError):
                continue
            if not pids:
                continue
            left = True
            seen.extend(p for p in pids if p not in seen)
            kill_file = group / "cgroup.kill"
            if not own_group.is_relative_to(group) and kill_file.exists():
                kill_file.write_text("1")
                continue
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        if not left or time.monotonic() > deadline:
            return seen
        time.sleep(0.05)


def main(unit: str) -> int:
    """ExecStopPost= of ``unit``: kill what is left of it if its stop was asked for. Return 0 (the
    decision and what was killed go to stderr, i.e. the journal); 1 if processes survived."""
    requested, why = stop_requested(unit, dict(os.environ))
    if not requested:
        print(f"hasupd stop-post: not a requested stop ({why}): services keep running", file=sys.stderr)
        return 0
    found = _find_own_cgroup()
    cgroup = unit_cgroup(unit, found[0]) if not isinstance(found, str) else None
    if cgroup is None or isinstance(found, str):
        print(f"hasupd stop-post: stop requested ({why}), but no cgroup of {unit} found", file=sys.stderr)
        return 1
    killed = kill_leftovers(cgroup, found[0], os.getpid())
    print(
        f"hasupd stop-post: stop requested ({why}): "
        + (f"killed {len(killed)} leftover processes {killed}" if killed else "nothing left"),
        file=sys.stderr,
    )
    survivors = _pids_below(cgroup) - {os.getpid()}
    if survivors:
        print(f"hasupd stop-post: still there after SIGKILL: {sorted(survivors)}", file=sys.stderr)
        return 1
    return 0


def _pids_below(cgroup: Path) -> set[int]:
    pids: set[int] = set()
    for directory, _dirs, _files in os.walk(cgroup):
        try:
            pids.update(int(p) for p in (Path(directory) / "cgroup.procs").read_text().split())
        except (FileNotFoundError, ValueError):
            continue
    return pids
