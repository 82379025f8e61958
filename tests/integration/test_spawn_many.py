"""ExecSpawner.spawn_many (start-up and reload: many children made together, their execs in parallel)
against real processes, on both spawn paths and both kinds of containment.

What a user would notice: every service of a large start gets its own running process in its own
cgroup, in the order asked; one that cannot start fails with the same sentence as a lone start would
give and leaves nothing behind, and does not disturb the others.
"""

from __future__ import annotations

import asyncio
import os
import stat
from pathlib import Path

import pytest

from hasupd.host.containment import Containment
from hasupd.host.reaper import Reaper
from hasupd.ports import SpawnError
from hasupd.runtimes.exec import _GROUP, ExecProcess, ExecSpawner
from tests.integration.test_spawn import make_spec, new_spawner
from tests.support.exitwatch import Exit


@pytest.fixture(params=["clone3", "subprocess"])
async def spawner(
    request: pytest.FixtureRequest, containment: Containment, reaper: Reaper, tmp_path: Path
) -> ExecSpawner:
    s = new_spawner(containment, reaper, tmp_path, native=request.param == "clone3")
    if request.param == "clone3":
        assert s._clone.usable(), s.describe()
    return s


def _comm(pid: int) -> str:
    return Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0].decode()


def _blocked_signals(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("SigBlk:"):
            return int(line.split()[1], 16)
    raise AssertionError(f"no SigBlk in /proc/{pid}/status")


async def test_many_starts_each_get_their_own_process_in_order(spawner: ExecSpawner) -> None:
    count = 2 * _GROUP + 5  # more than one group
    specs = [make_spec(["/bin/sleep", "30"], name=f"s{i}") for i in range(count)]
    exits = [Exit() for _ in specs]
    fds_before = len(os.listdir("/proc/self/fd"))
    try:
        outcomes = spawner.spawn_many(list(zip(specs, exits, strict=True)))
        assert len(outcomes) == count
        procs = [o for o in outcomes if isinstance(o, ExecProcess)]
        assert len(procs) == count, [o for o in outcomes if not isinstance(o, ExecProcess)]
        assert len({p.pid for p in procs}) == count
        for proc in procs:
            # A live sleep, already exec'd (not hasupd's image), inside its own scope, blocking no
            # signal (whichever thread made it): SIGTERM stops it.
            assert _comm(proc.pid) == "/bin/sleep"
            assert proc.scope.pids() == {proc.pid}
            assert _blocked_signals(proc.pid) == 0, proc.pid
        scopes = {id(p.scope) for p in procs}
        assert len(scopes) == count
    finally:
        for o in outcomes:
            if isinstance(o, ExecProcess):
                o.send_signal(15)
    for exit_ in exits:
        status = await asyncio.wait_for(exit_.wait(), 10)
        assert status.signal == 15
    for proc in procs:
        proc.scope.release()
    await asyncio.sleep(0)
    spawner.close()
    # Every pidfd, pipe and cgroup fd of the batch was closed (the log file's drains are gone too).
    assert len(os.listdir("/proc/self/fd")) <= fds_before


async def test_one_failing_start_does_not_disturb_the_others(spawner: ExecSpawner, tmp_path: Path) -> None:
    garbage = tmp_path / "not-a-program"
    garbage.write_bytes(b"\x7fELF this is not a program\n")
    garbage.chmod(garbage.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    specs = [
        make_spec(["/bin/sleep", "30"], name="first"),
        make_spec([str(garbage)], name="broken"),  # exec itself fails: ENOEXEC
        make_spec(["/no/such/program"], name="missing"),  # found missing before any child is made
        make_spec(["/bin/sleep", "30"], name="last"),
    ]
    exits = [Exit() for _ in specs]
    outcomes = spawner.spawn_many(list(zip(specs, exits, strict=True)))
    try:
        first, broken, missing, last = outcomes
        assert isinstance(first, ExecProcess) and isinstance(last, ExecProcess)
        assert isinstance(broken, SpawnError)
        assert str(broken).startswith(f"cannot start broken: cannot execute {garbage}")
        assert isinstance(missing, SpawnError)
        assert str(missing) == "cannot start missing: /no/such/program does not exist"
        # The same sentence a lone start gives.
        with pytest.raises(SpawnError) as lone:
            spawner.spawn(make_spec([str(garbage)], name="broken"), Exit())
        assert str(lone.value) == str(broken)
        assert _comm(first.pid) == "/bin/sleep" and _comm(last.pid) == "/bin/sleep"
    finally:
        for o in outcomes:
            if isinstance(o, ExecProcess):
                o.send_signal(9)
    for exit_, outcome in zip(exits, outcomes, strict=True):
        if isinstance(outcome, ExecProcess):
            await asyncio.wait_for(exit_.wait(), 10)
            outcome.scope.release()
        else:
            assert not exit_.calls  # a start that failed never reports an exit
    spawner.close()


def test_a_batch_never_waited_for_leaves_no_fd_behind() -> None:
    # The extension's Batch dropped without wait() (a bug path): its pidfds are closed when it goes.
    from hasupd.host import clone  # noqa: PLC0415

    module = clone._MODULE
    assert module is not None, "the C extension hasupd.host._spawn must be built for the tests"
    devnull = os.open(os.devnull, os.O_RDWR | os.O_CLOEXEC)
    start = (
        "/bin/true",
        ["true"],
        ["PATH=/bin"],
        "/",
        [devnull] * 3,
        -1,
        -1,
        -1,
        None,
        (),
        -1,
        None,
        -1,
        None,
        False,
        [],
    )
    before = set(os.listdir("/proc/self/fd"))
    batch = module.start_many([start] * 5, 2)
    del batch
    after = set(os.listdir("/proc/self/fd"))
    os.close(devnull)
    assert after == before
