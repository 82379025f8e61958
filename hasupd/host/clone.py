"""Starting a program without Python in the child: clone3(CLONE_INTO_CGROUP) through ``_spawn``.

``_spawn`` is a small C extension built with the package (optional: a machine without a C compiler
gets a working hasupd without it). The child is created inside its cgroup (no migration, so no wait
for an RCU grace period), shares hasupd's memory until it execs (vfork: no copy of hasupd's page
tables), and does everything a service needs in C: session, fds, directory, rlimits, umask, nice,
I/O priority, oom_score_adj, groups, user, no_new_privs. ``ExecSpawner`` uses it when ``usable()``
says so and keeps the subprocess path as the fallback.
"""

from __future__ import annotations

import errno
import os
import resource
from collections.abc import Sequence
from dataclasses import dataclass
from types import ModuleType
from typing import Any

_MODULE: ModuleType | None
try:
    from hasupd.host import _spawn as _MODULE
except ImportError:  # built without a C compiler, or an old build: the fallback path is used
    _MODULE = None

__all__ = ["ChildFailed", "ChildSettings", "CloneSpawner", "Launch", "ionice_value"]

# clone3 errors that mean "this kernel cannot do it" rather than "this start failed": the kernel has
# no clone3 (< 5.3) or no CLONE_INTO_CGROUP (< 5.7: E2BIG for the larger struct, or EINVAL).
UNSUPPORTED = frozenset({errno.ENOSYS, errno.E2BIG, errno.EINVAL})
RLIMITS = {"nofile": resource.RLIMIT_NOFILE, "nproc": resource.RLIMIT_NPROC, "core": resource.RLIMIT_CORE}
IONICE_CLASSES = {"realtime": 1, "best-effort": 2, "idle": 3}
_IOPRIO_CLASS_SHIFT = 13

# What failed in the child -> what the operator reads after "cannot start UNIT: ".
_STEPS = {
    "setsid": "cannot start a new session",
    "fds": "cannot set up the file descriptors",
    "chdir": "cannot enter the working directory",
    "rlimit": "cannot set the limits (raising a hard limit needs CAP_SYS_RESOURCE)",
    "umask": "cannot set the umask",
    "nice": "cannot set the nice value",
    "ioprio": "cannot set the I/O scheduling class",
    "oom_score_adj": "cannot set oom_score_adjust (lowering it needs CAP_SYS_RESOURCE)",
    "setgroups": "cannot set the supplementary groups",
    "setgid": "cannot switch to the service's group",
    "setuid": "cannot switch to the service's user",
    "no_new_privs": "cannot set no_new_privileges",
    "exec": "cannot execute",
}


def ionice_value(klass: str, level: int) -> int:
    """Return the ioprio_set(2) value for ``klass`` (realtime, best-effort, idle) at ``level`` 0..7."""
    return IONICE_CLASSES[klass] << _IOPRIO_CLASS_SHIFT | (0 if klass == "idle" else level)


@dataclass(frozen=True)
class ChildSettings:
    """The per-service process settings a child gets before exec (None / empty: hasupd's own)."""

    rlimits: tuple[tuple[int, int, int], ...] = ()  # (RLIMIT_*, soft, hard), -1 = infinity
    umask: int | None = None
    nice: int | None = None
    ioprio: int | None = None  # see ionice_value
    oom_score_adj: int | None = None
    no_new_privs: bool = False

    def apply_here(self) -> None:
        """Apply the settings to the calling process (the fallback's preexec_fn, after fork).

        Raise OSError if one cannot be applied. umask and groups are left to subprocess.
        """
        for res, soft, hard in self.rlimits:
            resource.setrlimit(res, (soft, hard))
        if self.nice is not None:
            os.setpriority(os.PRIO_PROCESS, 0, self.nice)
        if self.ioprio is not None:
            _ioprio_set(self.ioprio)
        if self.oom_score_adj is not None:
            with open("/proc/self/oom_score_adj", "w") as f:
                f.write(str(self.oom_score_adj))
        if self.no_new_privs:
            _no_new_privs()


@dataclass(frozen=True)
class Launch:
    """What to execute and as whom: the part of a start that both spawn paths take."""

    exe: str
    argv: list[str]
    env: dict[str, str]
    cwd: str
    uid: int | None  # None: hasupd's
    gid: int | None
    groups: list[int] | None  # None: hasupd's
    settings: ChildSettings


class CloneSpawner:
    """The native spawn path; ``usable()`` is False when the extension is missing or the kernel
    refused clone3 once (then it stays off: the fallback is used for every later start)."""

    def __init__(self) -> None:
        self._off: str | None = (
            None if _MODULE is not None else "the C extension hasupd.host._spawn is not built"
        )

    @classmethod
    def disabled(cls, why: str) -> CloneSpawner:
        """Return a spawner whose ``usable()`` is False, ``why`` naming the reason."""
        spawner = cls()
        spawner._off = why
        return spawner

    def usable(self) -> bool:
        return self._off is None

    def describe(self, cgroups: bool) -> str:
        """Return one line for the startup record: the spawn path in use."""
        if self._off is not None:
            return f"subprocess (fork or vfork; {self._off})"
        into = "clone3(CLONE_INTO_CGROUP)" if cgroups else "clone3"
        shared = (
            "vfork-style, shared memory" if _MODULE is not None and _MODULE.SHARES_MEMORY else "fork-style"
        )
        return f"{into}, {shared}, no Python in the child (C extension)"

    def spawn(
        self, launch: Launch, fds: list[int], cgroup_fd: int | None, pid_variables: tuple[str, ...] = ()
    ) -> tuple[int, int] | None:
        """Start ``launch`` as a session leader with target fd i = ``fds[i]``, inside the cgroup whose
        directory ``cgroup_fd`` is open; return (pid, pidfd), or None if the kernel cannot do this (the
        caller falls back; ``usable()`` is False from now on).

        ``pid_variables`` (LISTEN_PID, WATCHDOG_PID) are set to the child's own pid by the child.
        Raise ChildFailed if a step in the child failed (nothing is left running), OSError if no
        child could be made.
        """
        assert _MODULE is not None and self._off is None
        try:
            pid, pidfd = _MODULE.spawn(*_arguments(launch, fds, cgroup_fd, pid_variables))
        except OSError as e:  # ChildError is one too
            outcome = self._failure(e)
            if outcome is None:
                return None
            raise outcome from None
        return int(pid), int(pidfd)

    def start_many(
        self, starts: Sequence[tuple[Launch, list[int], int | None, tuple[str, ...]]], threads: int
    ) -> Starting:
        """Begin ``spawn(*start)`` for every start on up to ``threads`` threads of the extension and
        return at once: the caller goes on (it prepares the next group) while the children are made;
        ``wait()`` gives, in order, what each ``spawn`` would have returned or raised."""
        assert _MODULE is not None and self._off is None
        return Starting(self, _MODULE.start_many([_arguments(*start) for start in starts], threads))

    def _failure(self, error: BaseException) -> ChildFailed | OSError | None:
        """Return what a failure of the C call means: ChildFailed (a step in the child), OSError (no
        child), or None when the kernel cannot clone3 at all (then the path is off from now on)."""
        assert _MODULE is not None
        if isinstance(error, _MODULE.ChildError):
            step = str(error.filename)
            what = _STEPS.get(step, step)
            return ChildFailed(f"{what}: {error.strerror}", error.errno, step)
        if isinstance(error, OSError):
            if error.errno in UNSUPPORTED:
                self._off = f"clone3 refused by the kernel: {error.strerror}"
                return None
            return error
        raise error


class Starting:
    """Starts under way (``CloneSpawner.start_many``); ``wait()`` exactly once."""

    def __init__(self, spawner: CloneSpawner, batch: Any) -> None:
        self._spawner = spawner
        self._batch = batch

    def wait(self) -> list[tuple[int, int] | ChildFailed | OSError | None]:
        """Return, in order, what ``CloneSpawner.spawn`` would have returned for each start, or the
        ChildFailed or OSError it would have raised."""
        out: list[tuple[int, int] | ChildFailed | OSError | None] = []
        for result in self._batch.wait():
            if isinstance(result, BaseException):
                out.append(self._spawner._failure(result))
            else:
                out.append((int(result[0]), int(result[1])))
        return out


def _arguments(
    launch: Launch, fds: list[int], cgroup_fd: int | None, pid_variables: tuple[str, ...]
) -> tuple[Any, ...]:
    """Return the argument tuple of ``_spawn.spawn`` (see its doc) for one start."""
    settings = launch.settings
    env = dict(launch.env)
    for name in pid_variables:
        env.pop(name, None)
    entries = [f"{k}={v}" for k, v in env.items()]
    slots = []
    for name in pid_variables:
        slots.append(len(entries))
        entries.append(f"{name}=")
    return (
        launch.exe,
        launch.argv,
        entries,
        launch.cwd,
        fds,
        -1 if cgroup_fd is None else cgroup_fd,
        -1 if launch.uid is None else launch.uid,
        -1 if launch.gid is None else launch.gid,
        launch.groups,
        settings.rlimits,
        -1 if settings.umask is None else settings.umask,
        settings.nice,
        -1 if settings.ioprio is None else settings.ioprio,
        None if settings.oom_score_adj is None else str(settings.oom_score_adj),
        settings.no_new_privs,
        slots,
    )


class ChildFailed(Exception):
    """A step in the child failed before exec; ``str()`` says which and why."""

    def __init__(self, message: str, err: int, step: str) -> None:
        super().__init__(message)
        self.errno = err
        self.step = step


# ioprio_set's number per architecture (the fallback runs where the extension is missing).
_SYS_IOPRIO_SET = {
    "x86_64": 251,
    "aarch64": 30,
    "riscv64": 30,
    "i686": 289,
    "armv7l": 314,
    "ppc64le": 273,
    "s390x": 282,
}
_PR_SET_NO_NEW_PRIVS = 38
# ctypes and the machine name: loaded only by the fallback (the native path needs neither).
_LIBC: Any = None
_CTYPES: Any = None
_MACHINE = ""


def load_libc() -> None:
    """Load libc for ``apply_here`` in the parent: the forked child must not import or load anything."""
    global _LIBC, _CTYPES, _MACHINE  # noqa: PLW0603 (one handle per process)
    if _LIBC is None:
        import ctypes  # noqa: PLC0415
        import platform  # noqa: PLC0415

        _CTYPES = ctypes
        _LIBC = ctypes.CDLL(None, use_errno=True)
        _MACHINE = platform.machine()


def _check(result: int) -> None:
    if result != 0:
        err = _CTYPES.get_errno()
        raise OSError(err, os.strerror(err))


def _ioprio_set(value: int) -> None:
    number = _SYS_IOPRIO_SET.get(_MACHINE)
    if number is None or _LIBC is None:
        raise OSError(errno.ENOSYS, "ioprio_set is not known on this architecture")
    _check(_LIBC.syscall(number, 1, 0, value))


def _no_new_privs() -> None:
    if _LIBC is None:
        raise OSError(errno.ENOSYS, "libc not loaded")
    _check(_LIBC.prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0))
