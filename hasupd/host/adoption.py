"""OS mechanisms for carrying services over a re-exec or a crash of hasupd: finding a unit's processes
without having started them, the pid's identity (start time), keeping fds across ``execve`` and
copying a listening socket out of a running process (``pidfd_getfd``).

Nothing here knows about service states; ``hasupd.handover`` decides what to do with what is found.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import os
import socket
import stat as stat_
from dataclasses import dataclass
from pathlib import Path

from hasupd.host.procfs import pids_with_env, stat

_SYS_PIDFD_GETFD = 438  # the same number on every architecture (unified syscall table since 5.3)
_libc = ctypes.CDLL(None, use_errno=True)


def start_time(pid: int) -> int | None:
    """Return the process's start time (clock ticks since boot, field 22 of /proc/PID/stat) or None if it
    is gone. With the pid it names one process for the life of the system: a reused pid differs here."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except (FileNotFoundError, ProcessLookupError):
        return None
    # The command name (field 2) may contain spaces and parentheses: split after the last ")".
    fields = data[data.rindex(b")") + 2 :].split()
    return int(fields[19])


def environment_value(pid: int, key: str) -> str | None:
    """Return ``key`` from the environment the process started with, or None."""
    prefix = key.encode() + b"="
    try:
        with open(f"/proc/{pid}/environ", "rb") as f:
            for entry in f.read().split(b"\0"):
                if entry.startswith(prefix):
                    return entry[len(prefix) :].decode(errors="replace")
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    return None


def is_child(pid: int) -> bool:
    """Return True if ``pid`` is alive (or a zombie) and hasupd is its parent: its exit status is ours."""
    st = stat(pid)
    return st is not None and st.ppid == os.getpid()


@dataclass(frozen=True)
class Found:
    """A unit's main process found without a record from the hasupd that started it."""

    pid: int
    invocation: str | None
    how: str  # "cgroup <path>" or "INVOCATION_ID + session"


def find_in_cgroup(path: Path) -> Found | None:
    """Return the main process of a service cgroup: the session leader (every main starts its own
    session) with the lowest pid, or None if the cgroup holds no live session leader."""
    try:
        pids = [int(line) for line in (path / "cgroup.procs").read_text().split()]
    except OSError:
        return None
    leaders = sorted(
        pid for pid in pids if (st := stat(pid)) is not None and st.sid == pid and st.state != "Z"
    )
    if not leaders:
        return None
    pid = leaders[0]
    return Found(pid, environment_value(pid, "INVOCATION_ID"), f"cgroup {path}")


def find_by_invocation(invocation: str) -> Found | None:
    """Return the main process of a start without cgroups: the session leader among the processes whose
    environment has ``INVOCATION_ID=invocation``, or None."""
    pids = pids_with_env([f"INVOCATION_ID={invocation}".encode()])
    leaders = sorted(pid for pid in pids if (st := stat(pid)) is not None and st.sid == pid)
    if not leaders:
        return None
    return Found(leaders[0], invocation, "INVOCATION_ID + session leader")


def plain(address: object) -> object:
    """Return a socket address as a bind address names it: (host, port) without IPv6's flow info and
    scope id, a unix path as str."""
    if isinstance(address, tuple):
        return tuple(address[:2])
    if isinstance(address, bytes):
        return os.fsdecode(address)
    return address


def keep_across_exec(fd: int) -> None:
    """Clear FD_CLOEXEC on ``fd`` so that the next ``execve`` keeps it open at the same number."""
    os.set_inheritable(fd, True)


def pidfd_getfd(pidfd: int, target_fd: int) -> int:
    """Return a close-on-exec copy of the fd ``target_fd`` of the process behind ``pidfd``.

    Raise OSError (EPERM without ptrace rights over it, EBADF if it has no such fd, ENOSYS before 5.6).
    """
    fd = _libc.syscall(_SYS_PIDFD_GETFD, pidfd, target_fd, 0)
    if fd < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    return int(fd)


def listening_copy(pid: int, target_fd: int, family: int, address: object) -> socket.socket | None:
    """Return a copy of the listening socket at fd ``target_fd`` of process ``pid`` if it is a stream
    socket listening on ``address`` (as ``getsockname`` gives it), else None. Needs the right to ptrace
    ``pid`` (root); a refusal is None too."""
    try:
        pidfd = os.pidfd_open(pid)
    except OSError:
        return None
    try:
        fd = pidfd_getfd(pidfd, target_fd)
    except OSError as e:
        if e.errno not in (errno.EPERM, errno.EBADF, errno.ENOSYS, errno.ESRCH):
            raise
        return None
    finally:
        os.close(pidfd)
    try:
        sock = socket.socket(fileno=fd)
    except OSError:
        os.close(fd)
        return None
    try:
        listening = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN) == 1
        same = (
            sock.family == family
            and sock.type == socket.SOCK_STREAM
            and plain(sock.getsockname()) == plain(address)
        )
    except OSError:
        listening = same = False
    if listening and same:
        return sock
    sock.close()
    return None


@dataclass(frozen=True)
class Inherited:
    """An fd this process got across ``execve`` (no FD_CLOEXEC): what it is, so that it can be matched
    to its use without a record: a socket by family, type, bound address and whether it listens; a
    pipe by its inode (the same one a child's stdout names in /proc/PID/fd/1)."""

    fd: int
    pipe_inode: int | None = None
    family: int | None = None
    type: int | None = None
    address: object = None
    listening: bool = False


def inherited_fds() -> list[Inherited]:
    """Return every fd above 2 without FD_CLOEXEC (Python opens all of its own fds close-on-exec, so
    after a re-exec these are exactly what the old image kept)."""
    out: list[Inherited] = []
    for name in os.listdir("/proc/self/fd"):
        fd = int(name)
        if fd <= 2:
            continue
        try:
            if fcntl.fcntl(fd, fcntl.F_GETFD) & fcntl.FD_CLOEXEC:
                continue
            st = os.fstat(fd)
        except OSError:
            continue  # the directory fd listdir used
        if stat_.S_ISFIFO(st.st_mode):
            out.append(Inherited(fd, pipe_inode=st.st_ino))
        elif stat_.S_ISSOCK(st.st_mode):
            sock = socket.socket(fileno=fd)
            try:
                address = plain(sock.getsockname())
                listening = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN) == 1
                out.append(
                    Inherited(fd, family=sock.family, type=sock.type, address=address, listening=listening)
                )
            except OSError:
                pass
            finally:
                sock.detach()
    return out


def stdout_pipe_inode(pid: int) -> int | None:
    """Return the inode of the pipe a process's stdout is connected to, or None."""
    try:
        st = os.stat(f"/proc/{pid}/fd/1")
    except OSError:
        return None
    return st.st_ino if stat_.S_ISFIFO(st.st_mode) else None
