"""Per-service process settings and the clone3 spawn path, observed from inside real children.

Both spawn paths (clone3 through the C extension, and the subprocess fallback) in both containments
(cgroup, process groups). The child reports what the kernel says about it: /proc/self/limits,
/proc/self/stat, /proc/self/cgroup, /proc/self/fd, the mode of a file it creates, its ids.
"""

from __future__ import annotations

import errno
import os
import resource
import socket
import stat
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from hasupd.config.model import IoNice, Limits, RLimit
from hasupd.host import clone
from hasupd.host.containment import Containment
from hasupd.host.reaper import Reaper
from hasupd.ports import SpawnError
from hasupd.runtimes.exec import ExecSpawner
from tests.integration.test_spawn import make_spec, new_spawner, run

SH = "/bin/sh"


@pytest.fixture(params=["clone3", "subprocess"])
async def spawner(
    request: pytest.FixtureRequest, containment: Containment, reaper: Reaper, tmp_path: Path
) -> AsyncIterator[ExecSpawner]:
    s = new_spawner(containment, reaper, tmp_path, native=request.param == "clone3")
    if request.param == "clone3":
        # Built by `pip install -e .` (scripts/test) or `python3 setup.py build_ext --inplace`.
        assert s._clone.usable(), s.describe()
        assert s.describe().startswith(
            "clone3(CLONE_INTO_CGROUP)" if containment.kind == "cgroup" else "clone3"
        )
    else:
        assert s.describe().startswith("subprocess")
    yield s
    s.close()


def report(lines: bytes) -> dict[str, str]:
    """Parse the child's "KEY=VALUE" lines."""
    out = {}
    for line in lines.decode().splitlines():
        key, sep, value = line.partition("=")
        if sep:
            out[key] = value
    return out


# The child: what the kernel says about it, one KEY=VALUE line each.
PROBE = r"""
echo "nofile=$(grep '^Max open files' /proc/self/limits | tr -s ' ' | cut -d' ' -f4,5)"
echo "nproc=$(grep '^Max processes' /proc/self/limits | tr -s ' ' | cut -d' ' -f3,4)"
echo "core=$(grep '^Max core file size' /proc/self/limits | tr -s ' ' | cut -d' ' -f5,6)"
echo "nice=$(cut -d' ' -f19 /proc/$$/stat)"
echo "oom=$(cat /proc/$$/oom_score_adj)"
echo "nnp=$(grep NoNewPrivs /proc/$$/status | cut -f2)"
echo "cgroup=$(grep '^0::' /proc/$$/cgroup | cut -c4-)"
echo "fds=$(ls /proc/$$/fd | sort -n | tr '\n' ' ')"
echo "ids=$(id -u) $(id -g) $(id -G)"
echo "sid=$(cut -d' ' -f6 /proc/$$/stat)"
echo "pid=$$"
echo "ioprio=$(ionice -p $$)"
touch "$1"
echo "mode=$(stat -c %a "$1")"
"""


async def test_settings_are_seen_inside_the_child(
    spawner: ExecSpawner, containment: Containment, tmp_path: Path
) -> None:
    """issue 22 must-show 5: limits.nofile 4096, nice 10, umask 0027 (and the other settings)."""
    tmp_path.chmod(0o777)
    created = tmp_path / "created"
    spec = make_spec(
        [SH, "-c", PROBE, "probe", str(created)],
        limits=Limits(nofile=RLimit(4096, 4096), nproc=RLimit(512, 1024), core=RLimit(0, 0)),
        nice=10,
        umask=0o027,
        oom_score_adjust=500,
        ionice=IoNice("idle", 0),
        no_new_privileges=True,
    )
    proc, status, out = await run(spawner, spec)
    assert status.code == 0, out
    seen = report(out)
    assert seen["nofile"] == "4096 4096", out
    assert seen["nproc"] == "512 1024", out
    assert seen["core"] == "0 0", out
    assert seen["nice"] == "10"
    assert seen["oom"] == "500"
    assert seen["nnp"] == "1"
    assert seen["ioprio"] == "idle"
    assert seen["mode"] == "640"  # 0666 & ~0027
    assert stat.S_IMODE(created.stat().st_mode) == 0o640
    # A new session led by the child itself.
    assert seen["sid"] == seen["pid"] == str(proc.pid)
    if containment.kind == "cgroup":
        assert containment.parent is not None
        mount_rel = str(containment.parent / "svc.service")
        assert mount_rel.endswith(seen["cgroup"]), (mount_rel, seen["cgroup"])
        assert seen["cgroup"].endswith("/svc.service")


async def test_without_settings_the_child_keeps_hasupds(spawner: ExecSpawner, tmp_path: Path) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    _, _, out = await run(spawner, make_spec([SH, "-c", PROBE, "probe", str(tmp_path / "f")]))
    seen = report(out)
    assert seen["nofile"] == f"{soft} {hard}"
    assert seen["nice"] == str(os.getpriority(os.PRIO_PROCESS, 0))
    assert seen["nnp"] == "0"
    mask = os.umask(0)
    os.umask(mask)
    assert seen["mode"] == f"{0o666 & ~mask:o}"


async def test_fds_user_and_groups(spawner: ExecSpawner, tmp_path: Path) -> None:
    """The child has exactly 0, 1, 2 and the passed sockets (at 3, 4), runs as the service's user with
    its supplementary groups, and a held socket still accepts through it."""
    tmp_path.chmod(0o777)
    a = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    b = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    for s in (a, b):
        s.bind(("127.0.0.1", 0))
        s.listen()
    spare = os.open(os.devnull, os.O_RDONLY)  # an fd of hasupd's without CLOEXEC: must not leak
    try:
        spec = make_spec(
            [SH, "-c", PROBE, "probe", str(tmp_path / "f")],
            user="nobody",
            supplementary_groups=("daemon",),
            pass_fds=(b.fileno(), a.fileno()),
            extra_env={"LISTEN_FDS": "2"},
        )
        _, status, out = await run(spawner, spec)
    finally:
        os.close(spare)
        a.close()
        b.close()
    assert status.code == 0, out
    seen = report(out)
    # ls lists its own directory fd too (the highest).
    fds = seen["fds"].split()
    assert fds[:5] == ["0", "1", "2", "3", "4"] and len(fds) == 6, seen["fds"]
    uid, gid, *groups = seen["ids"].split()
    assert (uid, gid) == ("65534", "65534")
    assert "1" in groups  # daemon
    assert "0" not in groups  # none of root's


async def test_listen_pid_is_the_childs_own(spawner: ExecSpawner, tmp_path: Path) -> None:
    spec = make_spec(
        [SH, "-c", 'echo "LISTEN_PID=$LISTEN_PID"; echo "pid=$$"'], extra_env={"LISTEN_FDS": "0"}
    )
    _, _, out = await run(spawner, spec)
    seen = report(out)
    assert seen["LISTEN_PID"] == seen["pid"]


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        # Raising the hard limit needs CAP_SYS_RESOURCE, which root lacks on the build machines. The
        # fallback only learns that "an exception occurred in preexec_fn".
        ({"limits": Limits(nofile=RLimit(10**9, 10**9))}, "cannot set the limits|process settings"),
        ({"oom_score_adjust": -1000}, "cannot set oom_score_adjust|process settings"),
    ],
)
async def test_a_setting_the_kernel_refuses_is_a_clear_spawn_error(
    spawner: ExecSpawner, kw: dict[str, Any], match: str
) -> None:
    before = set(os.listdir("/proc/self/fd"))
    with pytest.raises(SpawnError, match=match):
        await run(spawner, make_spec(["/bin/true"], **kw))
    assert set(os.listdir("/proc/self/fd")) == before


async def test_a_kernel_without_clone3_falls_back_for_good(
    containment: Containment, reaper: Reaper, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Stand-in for a kernel before 5.7 (this machine's has clone3): the extension's call answers
    ENOSYS as such a kernel does. That start and every later one go through subprocess."""
    assert clone._MODULE is not None
    calls = []

    def old_kernel(*args: Any) -> tuple[int, int]:
        calls.append(args)
        raise OSError(errno.ENOSYS, os.strerror(errno.ENOSYS), "clone3")

    monkeypatch.setattr(clone._MODULE, "spawn", old_kernel)
    s = new_spawner(containment, reaper, tmp_path)
    try:
        assert s.describe().startswith("clone3")
        for _ in range(2):
            argv = [SH, "-c", "echo started; grep '^0::' /proc/$$/cgroup"]
            _, status, out = await run(s, make_spec(argv))
            assert status.code == 0 and out.startswith(b"started\n"), out
            if containment.kind == "cgroup":
                assert out.rstrip().endswith(b"/svc.service"), out
        assert len(calls) == 1  # not asked again
        assert s.describe().startswith("subprocess (fork or vfork; clone3 refused by the kernel")
    finally:
        s.close()


async def test_without_the_extension_the_subprocess_path_is_used(
    containment: Containment, reaper: Reaper, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """As after `pip install` on a machine without a C compiler (the extension is optional)."""
    monkeypatch.setattr(clone, "_MODULE", None)
    s = new_spawner(containment, reaper, tmp_path)
    try:
        assert s.describe() == "subprocess (fork or vfork; the C extension hasupd.host._spawn is not built)"
        _, status, out = await run(
            s, make_spec([SH, "-c", PROBE, "probe", str(tmp_path / "f")], nice=10, umask=0o027)
        )
        seen = report(out)
        assert (status.code, seen["nice"], seen["mode"]) == (0, "10", "640")
    finally:
        s.close()
