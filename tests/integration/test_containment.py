"""Containment against real processes and signals, in cgroup mode and in the process-group fallback.

cgroup mode needs root and a writable cgroup2; without them these tests fail with the reason, unless
HASUPD_TEST_NO_CGROUP=1 is set, which skips only the cgroup variants.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from hasupd.config.model import ServiceConfig
from hasupd.host.containment import Containment, make_subreaper
from hasupd.host.reaper import Reaper
from hasupd.ports import SpawnSpec
from hasupd.runtimes.exec import ExecProcess, ExecSpawner
from hasupd.states import OutputMode
from tests.support.exitwatch import Exit

PY = "/usr/bin/python3"  # Debian's: readable by every user, unlike a venv under /root

# Main ignores SIGTERM; a child that setsid()s; a double-forked daemon (re-parented when its parent
# exits). Each records its pid from inside the tree.
TREE = r"""
import os, signal, sys, time
d = sys.argv[1]
def rec(name):
    with open(os.path.join(d, name + ".tmp"), "w") as f:
        f.write(str(os.getpid()))
    os.rename(os.path.join(d, name + ".tmp"), os.path.join(d, name))
signal.signal(signal.SIGTERM, signal.SIG_IGN)
if os.fork() == 0:
    os.setsid()
    rec("setsid")
    while True:
        time.sleep(60)
if os.fork() == 0:
    os.setsid()
    if os.fork() == 0:
        rec("daemon")
        while True:
            time.sleep(60)
    os._exit(0)
rec("main")
while True:
    time.sleep(60)
"""


def require_cgroup(c: Containment | None = None) -> None:
    """Fail (or skip, with HASUPD_TEST_NO_CGROUP=1) unless cgroup mode is available here."""
    if c is None:
        c = Containment.detect(base_name=f"hasupd-test-{uuid.uuid4().hex[:12]}")
        c.close()
    if c.kind != "cgroup":
        if os.environ.get("HASUPD_TEST_NO_CGROUP") == "1":
            pytest.skip(f"HASUPD_TEST_NO_CGROUP=1 and no cgroup here: {c.describe()}")
        pytest.fail(
            "cgroup mode needs root and a writable cgroup2 (HASUPD_TEST_NO_CGROUP=1 skips it): "
            + c.describe()
        )


@pytest.fixture(params=["cgroup", "process-group"])
def containment(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Containment]:
    if request.param == "cgroup":
        c = Containment.detect(base_name=f"hasupd-test-{uuid.uuid4().hex[:12]}", runtime_dir=tmp_path / "run")
        require_cgroup(c)
    else:
        c = Containment.detect(force_fallback=True, runtime_dir=tmp_path / "run")
    yield c
    c.close()


@pytest.fixture
async def spawner(containment: Containment, reaper: Reaper, tmp_path: Path) -> AsyncIterator[ExecSpawner]:
    s = ExecSpawner(
        asyncio.get_running_loop(), containment, reaper, tmp_path / "state", tmp_path / "nojournal"
    )
    yield s
    s.close()


def make_spec(argv: list[str], name: str = "svc") -> SpawnSpec:
    return SpawnSpec(
        service=ServiceConfig(name=name, command=tuple(argv)),
        invocation_id=uuid.uuid4().hex,
        output=OutputMode.INHERIT,
    )


def dead(pid: int) -> bool:
    """Return True if ``pid`` is gone or a zombie (exited, not yet reaped)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True


def gone(pid: int) -> bool:
    return not os.path.exists(f"/proc/{pid}")


async def wait_for(cond: object, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    assert callable(cond)
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {cond}")
        await asyncio.sleep(0.01)


async def start_tree(
    spawner: ExecSpawner, tmp_path: Path, name: str = "svc"
) -> tuple[ExecProcess, Exit, dict[str, int]]:
    d = tmp_path / f"pids-{name}"
    d.mkdir()
    exit_ = Exit()
    proc = spawner.spawn(make_spec([PY, "-c", TREE, str(d)], name), exit_)
    names = ("main", "setsid", "daemon")
    await wait_for(lambda: all((d / n).exists() for n in names))
    return proc, exit_, {n: int((d / n).read_text()) for n in names}


async def test_kill_all_ends_the_whole_tree(
    containment: Containment, spawner: ExecSpawner, reaper: Reaper, tmp_path: Path
) -> None:
    proc, exit_, pids = await start_tree(spawner, tmp_path)
    scope = proc.scope
    assert pids["main"] == proc.pid
    assert set(pids.values()) <= scope.pids()

    assert scope.signal_all(signal.SIGTERM) >= 3
    await asyncio.sleep(0.1)
    assert not any(dead(p) for p in pids.values()), "they ignore SIGTERM"

    start = time.monotonic()
    scope.kill_all()
    await wait_for(lambda: all(dead(p) for p in pids.values()), timeout=1.0)
    assert time.monotonic() - start < 1.0
    assert scope.pids() == set()

    status = await exit_.wait()
    assert status.signal == signal.SIGKILL
    # The grandchildren were adopted by us (subreaper): the Reaper reaps them.
    await wait_for(lambda: all(gone(p) for p in pids.values()), timeout=2.0)
    scope.release()
    if containment.kind == "cgroup":
        assert containment.parent is not None
        assert not (containment.parent / "svc.service").exists()


async def test_holds_places_a_pid_by_cgroup_or_ancestry_never_by_a_copied_invocation_id(
    containment: Containment, spawner: ExecSpawner, tmp_path: Path
) -> None:
    proc, exit_, pids = await start_tree(spawner, tmp_path)
    scope = proc.scope
    # A process outside the tree, a child of "hasupd" (this process) like an adopted orphan, that
    # carries the scope's INVOCATION_ID copied from /proc.
    foreign = subprocess.Popen(
        ["/bin/sleep", "1000"], env={"INVOCATION_ID": scope.invocation_id}, start_new_session=True
    )
    try:
        assert scope.holds(pids["main"]) and scope.holds(pids["setsid"])  # its parent is the main
        assert not scope.holds(foreign.pid)
        assert not scope.holds(os.getpid()) and not scope.holds(1)
        if containment.kind == "cgroup":
            assert scope.holds(pids["daemon"])  # the kernel keeps it in the cgroup
        else:
            # Left the session and lost its parent: without cgroups nothing the kernel says ties it
            # to the service any more (the README says so); it is still killed with the scope.
            assert not scope.holds(pids["daemon"])
            assert foreign.pid in scope.pids()  # killed with the scope, but never heard
    finally:
        foreign.kill()
        foreign.wait()
        scope.kill_all()
        await exit_.wait()
        scope.release()


async def test_new_scope_of_same_unit_kills_leftovers(
    containment: Containment, spawner: ExecSpawner, tmp_path: Path
) -> None:
    _, exit_, pids = await start_tree(spawner, tmp_path)
    scope = containment.scope("svc", uuid.uuid4().hex)
    await wait_for(lambda: all(dead(p) for p in pids.values()), timeout=1.5)
    assert (await exit_.wait()).signal == signal.SIGKILL
    assert scope.pids() == set()
    scope.release()


async def test_cleanup_stale_kills_what_an_earlier_hasupd_left(
    containment: Containment, spawner: ExecSpawner, tmp_path: Path
) -> None:
    proc, exit_, pids = await start_tree(spawner, tmp_path, "old")
    # A second hasupd starting over the same cgroup parent / runtime dir, as after a crash.
    if containment.kind == "cgroup":
        assert containment.parent is not None
        again = Containment.detect(base_name=containment.parent.name)
    else:
        again = Containment.detect(force_fallback=True, runtime_dir=tmp_path / "run")
    assert again.kind == containment.kind
    assert await again.cleanup_stale() == ["old"]
    await wait_for(lambda: all(dead(p) for p in pids.values()), timeout=1.5)
    assert (await exit_.wait()).signal == signal.SIGKILL
    if containment.kind == "cgroup":
        assert containment.parent is not None
        assert not (containment.parent / "old.service").exists()
    assert await again.cleanup_stale() == []
    proc.scope.release()
    again.close()


async def test_release_waits_for_an_empty_scope(containment: Containment, spawner: ExecSpawner) -> None:
    exit_ = Exit()
    proc = spawner.spawn(make_spec(["/bin/sleep", "100"]), exit_)
    proc.scope.release()  # busy: kept
    assert proc.scope.pids() == {proc.pid}
    proc.scope.kill_all()
    await exit_.wait()
    await wait_for(lambda: not proc.scope.pids())
    proc.scope.release()
    if containment.kind == "cgroup":
        assert containment.parent is not None
        assert not (containment.parent / "svc.service").exists()


async def test_memory_max_only_where_the_controller_is(containment: Containment) -> None:
    scope = containment.scope("mem", uuid.uuid4().hex)
    try:
        if containment.kind == "cgroup":
            assert containment.parent is not None
            available = (containment.parent / "mem.service" / "memory.max").exists()
            assert scope.set_memory_max(64 * 1024 * 1024) is available
            if available:
                assert (containment.parent / "mem.service" / "memory.max").read_text().strip() == str(
                    64 << 20
                )
        else:
            assert scope.set_memory_max(64 * 1024 * 1024) is False
    finally:
        scope.release()
    assert containment.kind in containment.describe() or "process groups" in containment.describe()


async def test_reaper_reaps_adopted_orphans_and_never_a_tracked_pid() -> None:
    assert make_subreaper()
    reaper = Reaper(asyncio.get_running_loop(), grace_sec=0.1)
    try:
        # An orphan: the parent prints its child's pid and exits; the child exits a bit later.
        script = (
            "import os, time\npid = os.fork()\nif pid == 0:\n    time.sleep(0.3)\n    os._exit(7)\nprint(pid)"
        )
        parent = subprocess.run([PY, "-c", script], capture_output=True, check=True, start_new_session=True)
        orphan = int(parent.stdout)
        # A tracked child that exits at once; its owner (here: the test) reaps it, not the Reaper.
        tracked = subprocess.Popen(["/bin/true"], start_new_session=True)
        reaper.track(tracked.pid)

        await wait_for(lambda: gone(orphan), timeout=3.0)
        assert reaper.reaped >= 1
        await asyncio.sleep(0.5)  # several grace periods
        assert dead(tracked.pid) and not gone(tracked.pid), "a tracked zombie must be left to its owner"
        assert tracked.wait(timeout=1) == 0
        reaper.untrack(tracked.pid)
    finally:
        reaper.close()


DETECT = r"""
import json, os, sys
from hasupd.host.containment import Containment
c = Containment.detect(base_name=sys.argv[1])
with open("/proc/self/cgroup") as f:
    own = next(line.strip()[3:] for line in f if line.startswith("0::"))
print(json.dumps({"kind": c.kind, "describe": c.describe(), "own": own,
                  "parent": str(c.parent) if c.parent else None}))
"""


def cgroup2_mount() -> Path:
    with open("/proc/self/mountinfo") as f:
        points = [ln.split(" - ")[0].split()[4] for ln in f if ln.split(" - ")[1].startswith("cgroup2 ")]
    return Path("/sys/fs/cgroup") if "/sys/fs/cgroup" in points else Path(points[0])


def test_delegated_layout_moves_hasupd_into_a_supervisor_leaf() -> None:
    require_cgroup()
    # A fresh cgroup that a process is started in, as systemd does with Delegate=yes (and marks so).
    delegated = cgroup2_mount() / f"hasupd-deleg-{uuid.uuid4().hex[:8]}"
    delegated.mkdir()
    try:
        os.setxattr(delegated, "trusted.delegate", b"1")
        fd = os.open(delegated / "cgroup.procs", os.O_WRONLY | os.O_CLOEXEC)
        try:
            env = {"PYTHONPATH": str(Path(__file__).resolve().parents[2]), "PATH": "/usr/bin:/bin"}
            out = subprocess.run(
                [PY, "-c", DETECT, "unused"],
                env=env,
                capture_output=True,
                text=True,
                check=True,
                preexec_fn=lambda: os.write(fd, b"0") and None,
            ).stdout
        finally:
            os.close(fd)
        got = json.loads(out)
        assert got["kind"] == "cgroup", got
        assert "delegated layout" in got["describe"]
        assert got["own"].endswith(f"/{delegated.name}/supervisor")
        assert got["parent"] == str(delegated)
    finally:
        for sub in delegated.iterdir():
            if sub.is_dir():
                sub.rmdir()
        delegated.rmdir()


def test_without_permission_the_fallback_is_used_and_says_why() -> None:
    if os.geteuid() != 0:
        pytest.fail("this test switches to the user nobody and needs root")
    env = {"PYTHONPATH": str(Path(__file__).resolve().parents[2]), "PATH": "/usr/bin:/bin"}
    out = subprocess.run(
        [PY, "-c", DETECT, f"hasupd-test-{uuid.uuid4().hex[:8]}"],
        env=env,
        cwd="/",
        capture_output=True,
        text=True,
        check=True,
        user="nobody",
        group="nogroup",
        extra_groups=[],
    ).stdout
    got = json.loads(out)
    assert got["kind"] == "process-group"
    assert "Permission denied" in got["describe"] or "no cgroup2" in got["describe"]
