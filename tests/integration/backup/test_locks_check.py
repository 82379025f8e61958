"""Locks (stale, live, left by a stop) and the rotating integrity check, against real restic."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from hasupd.backup.check_rotation import CheckRotation
from hasupd.backup.compat import ErrorKind, ResticError
from hasupd.backup.restic import Restic


def locks(repo: Path) -> list[Path]:
    # Only complete lock files: the local backend writes "<id>-tmp-<n>" first, then renames it.
    return [p for p in (repo / "locks").iterdir() if re.fullmatch(r"[0-9a-f]{64}", p.name)]


def wait_for(predicate: Callable[[], bool], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.02)


def big_source(tmp_path: Path, megabytes: int = 96) -> Path:
    src = tmp_path / "big"
    src.mkdir()
    with open(src / "blob", "wb") as f:
        for _ in range(megabytes):
            f.write(os.urandom(1 << 20))
    return src


async def test_stale_lock_from_killed_backup_is_cleared(
    make_restic: Callable[..., Restic], fresh_repo: Path, tmp_path: Path
) -> None:
    restic = make_restic(fresh_repo)
    src = big_source(tmp_path)
    argv = [restic._binary, "backup", "-q", str(src)]
    proc = subprocess.Popen(
        argv, env=restic.environment(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        await asyncio.to_thread(wait_for, lambda: bool(locks(fresh_repo)))
    finally:
        proc.kill()  # SIGKILL: restic cannot remove its lock
        proc.wait()
    assert len(locks(fresh_repo)) == 1
    await restic.prune()  # exclusive: plain unlock first removes the stale lock (its process is gone)
    assert locks(fresh_repo) == []
    small = tmp_path / "small"
    small.mkdir()
    (small / "f").write_text("x\n")
    summary = await restic.backup([str(small)])
    assert [s.id for s in await restic.snapshots()] == [summary.snapshot_id]


async def test_live_lock_is_waited_for_then_reported(
    make_restic: Callable[..., Restic], fresh_repo: Path
) -> None:
    restic = make_restic(fresh_repo, lock_wait_sec=2.0)
    # A backup reading stdin holds its (non-exclusive) lock while it waits for input.
    argv = [restic._binary, "backup", "--stdin", "--stdin-filename", "held"]
    holder = subprocess.Popen(
        argv,
        env=restic.environment(),
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        await asyncio.to_thread(wait_for, lambda: bool(locks(fresh_repo)))
        started = time.monotonic()
        with pytest.raises(ResticError) as err:
            await restic.prune()
        waited = time.monotonic() - started
        assert err.value.kind is ErrorKind.LOCKED, err.value
        assert err.value.code == (11 if (await restic.features()).exit_codes_10_11 else 1)
        assert 1.0 <= waited < 30.0
        assert len(locks(fresh_repo)) == 1  # plain unlock left the live lock alone
    finally:
        assert holder.stdin is not None
        holder.stdin.write(b"data\n")  # 0.14 refuses an empty snapshot
        holder.stdin.close()
        holder.wait(30)
    assert holder.returncode == 0
    await restic.prune()  # the lock is gone now


async def test_cancelled_backup_is_stopped_with_sigint_and_leaves_no_lock(
    make_restic: Callable[..., Restic], fresh_repo: Path, tmp_path: Path
) -> None:
    """hasupd stops restic with SIGINT: 0.14 removes its lock then (it would leave it on SIGTERM)."""
    restic = make_restic(fresh_repo)
    src = big_source(tmp_path, megabytes=128)
    task = asyncio.create_task(restic.backup([str(src)]))
    deadline = time.monotonic() + 20
    while not locks(fresh_repo):
        assert not task.done(), "the backup ended before it could be cancelled"
        assert time.monotonic() < deadline
        await asyncio.sleep(0.02)
    # restic 0.14 leaves its lock when interrupted while still creating it (the file exists before
    # restic holds it): that race is restic's; the stale lock would go at the next exclusive command.
    await asyncio.sleep(0.5)
    assert not task.done(), "the backup ended before it could be cancelled"
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await asyncio.to_thread(wait_for, lambda: not locks(fresh_repo))


async def test_timeout_stops_restic_with_sigint(make_restic: Callable[..., Restic]) -> None:
    """A server that accepts connections and never answers: restic hangs until hasupd's timeout."""
    with socket.socket() as blackhole:
        blackhole.bind(("127.0.0.1", 0))
        blackhole.listen(16)
        port = blackhole.getsockname()[1]
        restic = make_restic(f"rest:http://127.0.0.1:{port}/repo/", quick_timeout_sec=1.0)
        started = time.monotonic()
        with pytest.raises(ResticError) as err:
            await restic.snapshots()
    assert err.value.kind is ErrorKind.TIMEOUT, err.value
    # restic exited by itself after SIGINT (130, or 1 for "context canceled"): it was not SIGKILLed.
    assert err.value.code in (1, 130), err.value
    assert time.monotonic() - started < 20


async def test_rotating_check_finds_a_corrupted_pack(
    make_restic: Callable[..., Restic], fresh_repo: Path, tmp_path: Path
) -> None:
    restic = make_restic(fresh_repo)
    src = tmp_path / "src"
    src.mkdir()
    for i in range(6):
        (src / f"blob{i}").write_bytes(os.urandom(2 << 20))
    await restic.backup([str(src)])
    # A data pack (the big ones hold file contents; small ones hold trees, read by every check).
    pack = max((fresh_repo / "data").rglob("*"), key=lambda p: p.stat().st_size if p.is_file() else 0)
    with open(pack, "r+b") as f:
        f.seek(pack.stat().st_size // 2)
        f.write(b"\0" * 64)

    assert (await restic.check()).ok  # the structure is fine: only reading the data finds it
    rotation = CheckRotation(tmp_path / "state", "job", 3)
    results = []
    for _ in range(3):
        subset = rotation.current()
        results.append(await restic.check(subset))
        rotation.advance()
    assert [r.read_data_subset for r in results] == ["1/3", "2/3", "3/3"]
    damaged = [r for r in results if not r.ok]
    assert len(damaged) == 1, [r.output_tail for r in results]
    assert pack.name in damaged[0].output_tail or "does not match" in damaged[0].output_tail
    assert rotation.current() == "1/3"


_PARENT = """
import asyncio, sys
from pathlib import Path
from hasupd.backup.restic import Restic
from hasupd.config.model import RepositoryConfig

repo = RepositoryConfig(name="hot", url=sys.argv[1], password_file=sys.argv[2])
restic = Restic(repo, reaper=None, binary=sys.argv[3], cache_dir=Path(sys.argv[4]), owner=sys.argv[4])
asyncio.run(restic.backup([sys.argv[5]]))
"""


async def test_restic_gets_sigint_when_hasupd_dies_and_leaves_no_lock(
    make_restic: Callable[..., Restic], fresh_repo: Path, tmp_path: Path, password_file: Path
) -> None:
    """kill -9 of the process that runs restic (hasupd): restic does not run on without it
    (PR_SET_PDEATHSIG with SIGINT). Its lock may stay (with its parent gone, restic can die of SIGPIPE
    writing "cleaning up" to the closed stderr pipe), but it is stale and a plain unlock removes it."""
    restic = make_restic(fresh_repo)
    src = big_source(tmp_path, megabytes=128)
    owner = tmp_path / "state"
    parent = subprocess.Popen(
        [
            sys.executable,
            "-c",
            _PARENT,
            str(fresh_repo),
            str(password_file),
            restic._binary,
            str(owner),
            str(src),
        ],
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[3])},
    )
    try:
        await asyncio.to_thread(wait_for, lambda: bool(locks(fresh_repo)))
        await asyncio.sleep(0.5)  # past 0.14's window where the lock file exists before it is held
        children = _pids_with_env(f"HASUPD_RESTIC_OWNER={owner}")
        assert children, "restic is not running under its parent"
    finally:
        parent.kill()
        parent.wait()
    await asyncio.to_thread(wait_for, lambda: not _pids_with_env(f"HASUPD_RESTIC_OWNER={owner}"), 10.0)
    for pid in children:
        # Re-parented to this test process if it is a subreaper (the Reaper fixture makes it one), else
        # reaped by PID 1: until then the zombie keeps the lock looking alive to restic.
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, 0)
    await asyncio.to_thread(wait_for, lambda: not any(os.path.exists(f"/proc/{p}") for p in children), 60.0)
    # Left or not, the lock is now stale: the plain unlock of hasupd's next start removes it.
    await restic.unlock()
    assert await restic.locks() == [] and locks(fresh_repo) == []


def _pids_with_env(entry: str) -> set[int]:
    out = set()
    for name in os.listdir("/proc"):
        try:
            with open(f"/proc/{name}/environ", "rb") as f:
                if entry.encode() not in f.read().split(b"\0"):
                    continue
            with open(f"/proc/{name}/stat") as f:
                if f.read().rsplit(")", 1)[1].split()[0] == "Z":
                    continue
        except OSError:
            continue
        out.add(int(name))
    return out
