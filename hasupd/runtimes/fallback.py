"""The fallback spawn path: ``subprocess`` with a ``preexec_fn``.

Used by ``ExecSpawner`` where ``hasupd.host.clone`` cannot be (the C extension is not built, the kernel
has no clone3, or ``--no-clone3``). The child joins its cgroup by writing "0" into cgroup.procs (a
migration: it waits for an RCU grace period) and applies the service's process settings after
subprocess switched the user; any preexec_fn makes subprocess fork instead of vfork.
"""

from __future__ import annotations

import fcntl
import os
import subprocess
from collections.abc import Callable
from contextlib import suppress

from hasupd.host.clone import ChildSettings, load_libc
from hasupd.host.output import Output
from hasupd.ports import SpawnError

_ExecArgs = tuple[str, list[str], dict[str, str]]


def lift_fds(fds: tuple[int, ...]) -> tuple[list[int], list[int]]:
    """Prepare ``fds`` to be dup2'ed onto 3, 4, ... in the child; return (fillers, copies).

    The copies sit at or above 3+n, so the child's dup2 onto 3..3+n-1 cannot clobber a source.
    The fillers take every free fd below 3+n for the duration of the fork, so that subprocess's own
    exec-error pipe (and everything else opened meanwhile) also lands above the range.
    Raise SpawnError if one of ``fds`` is not open.
    """
    if not fds:
        return [], []
    top = 3 + len(fds)
    fillers: list[int] = []
    copies: list[int] = []
    try:
        while (fd := os.open("/dev/null", os.O_RDONLY | os.O_CLOEXEC)) < top:
            fillers.append(fd)
        os.close(fd)
        for fd in fds:
            copies.append(fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, top))
    except OSError as e:
        for held in fillers + copies:
            os.close(held)
        raise SpawnError(f"cannot pass fd {fd}: {e.strerror}") from e
    return fillers, copies


# Protocols whose pid variable must name the child itself (sd_listen_fds, sd_watchdog_enabled).
OWN_PID_VARIABLES = {"LISTEN_FDS": "LISTEN_PID", "WATCHDOG_USEC": "WATCHDOG_PID"}


def _preexec(
    procs_fd: int | None, copies: list[int], exec_args: _ExecArgs | None, settings: ChildSettings
) -> Callable[[], None] | None:
    """Return what the child runs between fork and exec (after subprocess switched user), or None.

    The cgroup write works after the user switch because the kernel checks the credentials the
    parent opened cgroup.procs with. With LISTEN_FDS or WATCHDOG_USEC the child must also learn its
    own pid (LISTEN_PID, WATCHDOG_PID), which only it knows: then it marks every other fd
    close-on-exec (subprocess's error pipe included, so the parent still learns of exec) and execs
    itself.
    """
    needs_settings = settings.rlimits or settings.nice is not None or settings.ioprio is not None
    needs_settings = needs_settings or settings.oom_score_adj is not None or settings.no_new_privs
    if procs_fd is None and not copies and exec_args is None and not needs_settings:
        return None  # lets subprocess use vfork
    top = 3 + len(copies)
    if needs_settings:
        load_libc()  # not in the child: it must not load anything

    def run() -> None:
        if procs_fd is not None:
            os.write(procs_fd, b"0")
        if needs_settings:
            # After subprocess switched user: with a `user:`, what needs privilege (a negative nice,
            # a lower oom_score_adjust, realtime I/O) fails here, where the native path applies it
            # before the switch. The fallback is for hosts without the extension or clone3.
            settings.apply_here()
        for i, fd in enumerate(copies):
            os.dup2(fd, 3 + i)
        if exec_args is not None:
            exe, argv, env = exec_args
            for name in os.listdir("/proc/self/fd"):
                # OSError: the directory fd that listdir used is closed by now.
                with suppress(OSError):
                    if int(name) >= top:
                        fcntl.fcntl(int(name), fcntl.F_SETFD, fcntl.FD_CLOEXEC)
            for variable, pid_variable in OWN_PID_VARIABLES.items():
                if variable in env:
                    env[pid_variable] = str(os.getpid())
            os.execve(exe, argv, env)

    return run


def popen(
    argv: list[str],
    *,
    exe: str,
    cwd: str,
    env: dict[str, str],
    output: Output,
    uid: int | None,
    gid: int | None,
    groups: list[int] | None,
    procs_fd: int | None,
    copies: list[int],
    exec_args: _ExecArgs | None,
    settings: ChildSettings,
) -> subprocess.Popen[bytes]:
    """Fork and exec; raise SpawnError with the reason if exec (or anything before it) failed."""
    try:
        return subprocess.Popen(
            argv,
            executable=exe,
            stdin=subprocess.DEVNULL,
            stdout=output.stdout,
            stderr=output.stderr,
            cwd=cwd,
            env=env,
            close_fds=True,
            pass_fds=tuple(range(3, 3 + len(copies))),
            start_new_session=True,
            # Unsafe with threads in general; ours only writes, dup2s and (with LISTEN_FDS) execs,
            # none of which takes a lock another thread could hold.
            preexec_fn=_preexec(procs_fd, copies, exec_args, settings),  # noqa: PLW1509
            user=uid,
            group=gid,
            extra_groups=groups,
            umask=-1 if settings.umask is None else settings.umask,
        )
    except FileNotFoundError as e:
        what = f"working directory {cwd}" if e.filename == cwd else exe
        raise SpawnError(f"{what} does not exist") from e
    except PermissionError as e:
        if e.filename == cwd:  # chdir, setgroups, setgid or setuid: all happen before exec
            raise SpawnError(f"cannot enter {cwd} or switch to the service's user: {e.strerror}") from e
        raise SpawnError(f"permission denied executing {exe}") from e
    except OSError as e:
        raise SpawnError(f"cannot execute {exe}: {e.strerror}") from e
    except subprocess.SubprocessError as e:
        raise SpawnError(
            f"the child failed before exec (cgroup placement, fd hand-off or process settings): {e}"
        ) from e
