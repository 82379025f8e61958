"""Type stub of the C extension hasupd/host/_spawn.c (see its header comment)."""

from collections.abc import Sequence

SHARES_MEMORY: int

class ChildError(OSError): ...

def spawn(
    exe: str,
    argv: Sequence[str],
    env: Sequence[str],
    cwd: str | None,
    fds: Sequence[int],
    cgroup_fd: int,
    uid: int,
    gid: int,
    groups: Sequence[int] | None,
    rlimits: Sequence[tuple[int, int, int]],
    umask: int,
    nice: int | None,
    ioprio: int,
    oom_score_adj: str | None,
    no_new_privs: bool,
    pid_vars: Sequence[int],
    /,
) -> tuple[int, int]: ...
