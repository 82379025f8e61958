"""Small readers of /proc and signal loops, shared by containment and the reaper.

Children are found through /proc/PID/task/TID/children where the kernel has CONFIG_PROC_CHILDREN;
without it (this build machine) one pass over /proc/*/stat per lookup is the only way.
"""

from __future__ import annotations

import asyncio
import ctypes
import os
import signal
import time
from collections.abc import Callable, Iterable
from typing import Any, NamedTuple

# The PATH of every child hasupd starts with a clean environment (services, probes, engines, resets).
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
PR_SET_CHILD_SUBREAPER = 36
PR_SET_PDEATHSIG = 1
KILL_BOUND_SEC = 1.0  # how long a SIGKILL loop keeps going before it gives up on stuck (D state) tasks
_HAVE_CHILDREN_FILES = os.path.exists(f"/proc/self/task/{os.getpid()}/children")


def make_subreaper() -> bool:
    """Make this process a child subreaper (orphans of its descendants are re-parented to it).

    Return False if the kernel refused.
    """
    libc = ctypes.CDLL(None, use_errno=True)
    return int(libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)) == 0


def parent_death_signal(sig: int) -> Callable[[], None]:
    """Return a ``preexec_fn`` that makes the child receive ``sig`` when this process dies.

    The child's own check of its parent closes the race of a parent that died before the prctl: it
    then exits at once (status 1) instead of running on without a parent. libc is loaded here, before
    the fork, so the child only makes two system calls.
    """
    libc = ctypes.CDLL(None, use_errno=True)
    parent = os.getpid()

    def preexec() -> None:
        libc.prctl(PR_SET_PDEATHSIG, sig, 0, 0, 0)
        if os.getppid() != parent:
            os._exit(1)

    return preexec


def release_free_heap() -> bool:
    """Return the free memory of the C heap to the kernel (glibc's ``malloc_trim``); return False
    where the C library has none (musl).

    For after a large short-lived buffer: glibc serves one above its mmap threshold (128 KiB) from a
    mapping of its own only the first time; from then on it comes from the heap, and once freed it
    stays there (resident) unless trimmed. Costs a few microseconds.
    """
    try:
        trim = ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):
        return False
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    trim(0)
    return True


class Stat(NamedTuple):
    state: str
    ppid: int
    pgid: int
    sid: int
    starttime: int  # clock ticks after boot: with the pid, names one process even after pid reuse


def stat(pid: int | str) -> Stat | None:
    """Return the fields of /proc/PID/stat that hasupd uses, or None if the process is gone.

    The one parser of /proc/PID/stat in hasupd.
    """
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except (FileNotFoundError, ProcessLookupError):
        return None
    # comm may contain spaces and parentheses; the fields after the last ")" are fixed.
    fields = data[data.rindex(b")") + 2 :].split()
    return Stat(fields[0].decode(), int(fields[1]), int(fields[2]), int(fields[3]), int(fields[19]))


def signal_group(pgid: int, sig: int) -> bool:
    """Send ``sig`` to process group ``pgid`` (a command started in its own session: its pid); return
    False if the group is gone or not ours. The one "signal the tree" of commands hasupd runs."""
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        return False
    return True


async def stop_group(pgid: int, done: asyncio.Future[Any], *, stop_signal: int, kill_after: float) -> None:
    """Stop process group ``pgid`` politely, then by force: ``stop_signal``, and SIGKILL if ``done`` (what
    ends when the group's leader has exited) has not completed within ``kill_after``; return once it has.

    ``done`` is shielded, never cancelled here, and whoever reads the group's pipes goes on reading
    them meanwhile, so a program that reports while it cleans up (restic removing its lock) is not
    killed by SIGPIPE half-way. Cancelled while waiting: SIGKILL at once (nothing is left running), and
    the cancellation goes on.
    """
    signal_group(pgid, stop_signal)
    try:
        await asyncio.wait_for(asyncio.shield(done), kill_after)
        return
    except TimeoutError:
        signal_group(pgid, signal.SIGKILL)
    except asyncio.CancelledError:
        signal_group(pgid, signal.SIGKILL)
        raise
    await asyncio.shield(done)


def has_env(pid: int, entry: bytes) -> bool:
    """Return True if the process started with ``entry`` ("KEY=VALUE") in its environment."""
    try:
        with open(f"/proc/{pid}/environ", "rb") as f:
            return entry in f.read().split(b"\0")
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return False


class Children:
    """Children of processes, from /proc/PID/task/TID/children (CONFIG_PROC_CHILDREN) when the kernel
    has them; without them one pass over /proc/*/stat per lookup set, since nothing else can tell."""

    def __init__(self) -> None:
        self._map: dict[int, list[int]] | None = None

    def of(self, pid: int) -> list[int]:
        if _HAVE_CHILDREN_FILES:
            out: list[int] = []
            try:
                for tid in os.listdir(f"/proc/{pid}/task"):
                    with open(f"/proc/{pid}/task/{tid}/children") as f:
                        out.extend(int(c) for c in f.read().split())
            except (FileNotFoundError, ProcessLookupError):
                pass
            return out
        if self._map is None:
            self._map = {}
            for name in os.listdir("/proc"):
                if name.isdigit() and (st := stat(int(name))) is not None:
                    self._map.setdefault(st.ppid, []).append(int(name))
        return self._map.get(pid, [])


def signal_each(pids: Iterable[int], sig: int) -> int:
    n = 0
    for pid in pids:
        try:
            os.kill(pid, sig)
            n += 1
        except ProcessLookupError:
            pass
    return n


KILL_PASSES_NOW = 3  # SIGKILL passes made at once, before the rest goes to loop timers
KILL_RETRY_SEC = 0.005  # between later passes


def _kill_pass(list_pids: Callable[[], set[int]], seen: set[int]) -> bool:
    """SIGKILL what ``list_pids`` returns now; return False if it returned nothing."""
    pids = list_pids()
    if pids:
        signal_each(pids, signal.SIGKILL)
        seen |= pids
    return bool(pids)


def kill_loop(list_pids: Callable[[], set[int]], *, block: bool = False) -> int:
    """SIGKILL what ``list_pids`` returns until it returns nothing (bounded by KILL_BOUND_SEC); return
    how many were hit by the passes made before returning.

    Repeats because a process may fork between the listing and the kill. A few passes are made at
    once; if something is still there, the next passes run from timers of the running event loop, so
    the loop never sleeps here. ``block`` (or no running loop): sleep between passes instead, for
    callers that must see the processes gone before they go on and have nothing else to run (hasupd
    exiting, tools).
    """
    seen: set[int] = set()
    for _ in range(KILL_PASSES_NOW):
        if not _kill_pass(list_pids, seen):
            return len(seen)
    deadline = time.monotonic() + KILL_BOUND_SEC
    try:
        loop = None if block else asyncio.get_running_loop()
    except RuntimeError:
        loop = None
    if loop is None:
        while _kill_pass(list_pids, seen) and time.monotonic() <= deadline:
            time.sleep(KILL_RETRY_SEC)
        return len(seen)

    def again() -> None:
        if _kill_pass(list_pids, seen) and time.monotonic() <= deadline:
            loop.call_later(KILL_RETRY_SEC, again)

    loop.call_later(KILL_RETRY_SEC, again)
    return len(seen)


async def kill_until_gone(list_pids: Callable[[], set[int]]) -> int:
    """``kill_loop`` for coroutines: return once ``list_pids`` returns nothing (or after
    KILL_BOUND_SEC), with how many processes were hit; the loop runs on meanwhile."""
    seen: set[int] = set()
    deadline = time.monotonic() + KILL_BOUND_SEC
    while _kill_pass(list_pids, seen) and time.monotonic() <= deadline:
        await asyncio.sleep(KILL_RETRY_SEC)
    return len(seen)


def pids_with_env(entries: Iterable[bytes]) -> set[int]:
    wanted = set(entries)
    me = os.getpid()
    out: set[int] = set()
    for name in os.listdir("/proc"):
        if not name.isdigit() or int(name) == me:
            continue
        try:
            with open(f"/proc/{name}/environ", "rb") as f:
                if wanted.intersection(f.read().split(b"\0")):
                    st = stat(int(name))
                    if st is not None and st.state != "Z":
                        out.add(int(name))
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            continue
    return out
