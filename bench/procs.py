"""Process plumbing for the benchmark: /proc readers, a line reader on a FIFO, and the clean-up that
kills every process the harness started, however the run ends.

The harness makes itself a child subreaper, so whatever a supervisor leaves behind (its children, when
the supervisor itself is killed) is re-parented to the harness and found again by walking /proc from
the harness's own pid. Nothing is killed by name: only the pids of that tree.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import select
import signal
import time
from collections.abc import Iterable
from pathlib import Path

PR_SET_CHILD_SUBREAPER = 36
PR_SET_PDEATHSIG = 1
CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE_KB = os.sysconf("SC_PAGE_SIZE") // 1024
_LIBC = ctypes.CDLL(None, use_errno=True)  # loaded once: die_with_parent runs between fork and exec


def make_subreaper() -> None:
    """Make this process a child subreaper. Raise OSError if the kernel refuses."""
    if _LIBC.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"prctl(PR_SET_CHILD_SUBREAPER): {os.strerror(err)}")


def die_with_parent() -> None:
    """preexec_fn: the child gets SIGKILL when the harness's main thread dies (even by SIGKILL).

    Only calls into an already loaded libc, so it is safe between fork and exec.
    """
    _LIBC.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


def _stat_fields(pid: int) -> list[bytes] | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except (FileNotFoundError, ProcessLookupError):
        return None
    # comm may hold spaces and parentheses; the fields after the last ")" are fixed.
    return data[data.rindex(b")") + 2 :].split()


def cpu_seconds(pid: int) -> float:
    """Return utime + stime of the whole process (all its threads, live and exited) in seconds.

    Raise ProcessLookupError if the process is gone.
    """
    fields = _stat_fields(pid)
    if fields is None:
        raise ProcessLookupError(pid)
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def rss_mb(pid: int) -> float:
    """Return the resident set size of ``pid`` in MiB. Raise ProcessLookupError if it is gone."""
    try:
        with open(f"/proc/{pid}/statm") as f:
            pages = int(f.read().split()[1])
    except (FileNotFoundError, ProcessLookupError):
        raise ProcessLookupError(pid) from None
    return pages * PAGE_KB / 1024


def children_map() -> dict[int, list[int]]:
    """Return {ppid: [pid, ...]} for every live (non-zombie) process, from one pass over /proc."""
    out: dict[int, list[int]] = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        fields = _stat_fields(int(name))
        if fields is None or fields[0] == b"Z":
            continue
        out.setdefault(int(fields[1]), []).append(int(name))
    return out


def descendants(root: int, skip: Iterable[int] = ()) -> set[int]:
    """Return the live descendants of ``root``, leaving out the subtrees rooted at ``skip``."""
    tree = children_map()
    skipped = set(skip)
    found: set[int] = set()
    stack = list(tree.get(root, []))
    while stack:
        pid = stack.pop()
        if pid in found or pid in skipped:
            continue
        found.add(pid)
        stack.extend(tree.get(pid, []))
    return found


def count_descendants(root: int, comm: str) -> int:
    """Return how many live descendants of ``root`` have the command name ``comm``."""
    n = 0
    for pid in descendants(root):
        with contextlib.suppress(FileNotFoundError, ProcessLookupError):
            if Path(f"/proc/{pid}/comm").read_text().strip() == comm:
                n += 1
    return n


def reap_zombies() -> None:
    """Collect every exited child (adopted orphans included) without blocking."""
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def kill_tree(skip: Iterable[int] = (), bound_sec: float = 10.0) -> int:
    """SIGKILL every descendant of this process except the subtrees at ``skip``; return how many.

    Repeats until none is left, because a process may fork (or be re-parented to us) meanwhile.
    """
    me = os.getpid()
    skipped = set(skip)
    seen: set[int] = set()
    deadline = time.monotonic() + bound_sec
    while True:
        pids = descendants(me, skipped)
        if not pids or time.monotonic() > deadline:
            break
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        seen |= pids
        time.sleep(0.01)
        reap_zombies()
    reap_zombies()
    return len(seen)


def remove_cgroup_tree(path: Path) -> None:
    """Kill whatever is left in the cgroup ``path`` and its children, then remove them (deepest first)."""
    if not path.is_dir():
        return
    for sub in sorted((p for p in path.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts)):
        _kill_and_rmdir(sub)
    _kill_and_rmdir(path)


def _kill_and_rmdir(path: Path) -> None:
    with contextlib.suppress(OSError):
        (path / "cgroup.kill").write_text("1")
    for _ in range(100):
        try:
            path.rmdir()
        except FileNotFoundError:
            return
        except OSError:  # EBUSY until the kernel has finished the kill
            time.sleep(0.01)
        else:
            return


class LineReader:
    """Reads newline-terminated records from a FIFO that many writers share.

    The FIFO is opened read-write so that it never reports EOF between writers and a writer's open
    never blocks. Writes below PIPE_BUF are atomic, so records of concurrent writers never mix.
    """

    def __init__(self, path: Path) -> None:
        if not path.exists():
            os.mkfifo(path)
        self.path = path
        self._fd = os.open(path, os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
        self._buf = b""

    def next_line(self, timeout: float) -> bytes | None:
        """Return the next record without its newline, or None if none came within ``timeout`` s."""
        deadline = time.monotonic() + timeout
        while b"\n" not in self._buf:
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            ready, _, _ = select.select([self._fd], [], [], left)
            if ready:
                with contextlib.suppress(BlockingIOError):
                    self._buf += os.read(self._fd, 65536)
        line, self._buf = self._buf.split(b"\n", 1)
        return line

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
