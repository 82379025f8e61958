"""At start, before any job runs or any service starts: finish what an earlier hasupd, killed mid-way,
left of its backups and restores.

1. restic processes it started on the same state dir (found by ``HASUPD_RESTIC_OWNER`` in their
   environment; normally PR_SET_PDEATHSIG has stopped them already) get SIGINT (and SIGCONT: a stopped
   restic cannot clean up), time to remove their locks, then SIGKILL. Nothing new starts beside them.
2. An interrupted in-place restore is undone from its journal: the original data live again, staging
   removed (journal.undo_restore); a partial ``--target`` restore is removed.
3. One ``backup.interrupted`` record per job says what was interrupted and what was done.
4. In the background (an unreachable repository must hold back no service), a plain ``restic unlock``
   (never ``--remove-all``) removes the stale locks of each repository of an interrupted job, recorded
   as ``backup.unlocked``; only then is the job's schedule armed again.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from hasupd import events as ev
from hasupd.backup.compat import ResticError
from hasupd.backup.journal import undo_restore
from hasupd.backup.kinds import OWNER_ENV
from hasupd.host.procfs import kill_until_gone, signal_group, stat

if TYPE_CHECKING:  # a job exists only when the backup stack is imported (hasupd.backup.units)
    from hasupd.backup.jobs import BackupJob

POLL_SEC = 0.05


@dataclass(frozen=True)
class Leftover:
    pid: int
    pgid: int
    command: str  # the restic command line, shortened
    repository: str  # its RESTIC_REPOSITORY


def find_leftovers(owner: str) -> list[Leftover]:
    """Return the live processes carrying ``HASUPD_RESTIC_OWNER=owner`` that are not this hasupd's own
    children (those started by an earlier hasupd on the same state dir)."""
    needle = f"{OWNER_ENV}={owner}".encode()
    me = os.getpid()
    found = []
    for name in os.listdir("/proc"):
        if not name.isdigit() or int(name) == me:
            continue
        pid = int(name)
        try:
            with open(f"/proc/{pid}/environ", "rb") as f:
                environ = f.read().split(b"\0")
            if needle not in environ:
                continue
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                argv = f.read().rstrip(b"\0").split(b"\0")
        except OSError:
            continue  # gone meanwhile, or not ours to read
        st = stat(pid)
        if st is None or st.state == "Z" or st.ppid == me:
            continue
        repo = next(
            (e[len(b"RESTIC_REPOSITORY=") :] for e in environ if e.startswith(b"RESTIC_REPOSITORY=")), b""
        )
        command = b" ".join(argv).decode("utf-8", "replace")[:200]
        found.append(Leftover(pid, st.pgid, command, repo.decode("utf-8", "replace")))
    return found


async def stop_leftovers(owner: str, grace_sec: float) -> list[tuple[Leftover, str]]:
    """Stop every leftover of ``owner`` (SIGINT to its group, SIGKILL after ``grace_sec``); return each
    with how it ended. Return only once none is left."""
    leftovers = find_leftovers(owner)
    if not leftovers:
        return []
    for group in {lo.pgid for lo in leftovers}:
        for sig in (signal.SIGINT, signal.SIGCONT):
            signal_group(group, sig)
    deadline = time.monotonic() + grace_sec
    while find_leftovers(owner) and time.monotonic() < deadline:
        await asyncio.sleep(POLL_SEC)
    stubborn = {lo.pid for lo in find_leftovers(owner)}
    if stubborn:
        await kill_until_gone(lambda: {lo.pid for lo in find_leftovers(owner)})
    return [(lo, "SIGKILL" if lo.pid in stubborn else "SIGINT") for lo in leftovers]


def recover_files(
    job: BackupJob, leftovers: list[tuple[Leftover, str]], publish: Callable[[ev.Event], None]
) -> bool:
    """Undo what an interrupted run or restore of ``job`` left on disk and record it all (the
    leftover restic processes of its repositories included) as ``backup.interrupted``.

    Return True if something was interrupted: the job's repositories then need their stale locks
    removed (remove_stale_locks) before it runs again.
    """
    repos = [job.hot] + ([job.cold] if job.cold is not None else [])
    urls = {r.repo.url for r in repos}
    cleaned = [
        f"stopped restic left running by an earlier hasupd (pid {lo.pid}, {how}): {lo.command}"
        for lo, how in leftovers
        if lo.repository in urls
    ]
    operations: list[str] = []
    kinds = job.journal.interrupted_run()
    if kinds is not None:
        operations += kinds or ["job run"]
    try:
        restore = job.journal.interrupted_restore()
    except ValueError as error:
        restore = None
        cleaned.append(f"{error}; left for an admin")
    if restore is not None:
        operations.append(f"{restore.mode} restore by {restore.user} (phase {restore.phase})")
        try:
            cleaned += undo_restore(restore)
            job.journal.end_restore()
        except OSError as error:
            cleaned.append(f"undoing the interrupted restore failed, journal kept: {error}")
    try:
        resumed = job.interrupted_quiesce()
    except ValueError as error:
        # A run was stopped mid-quiesce but the marker of what it stopped is lost: its quiesce services.
        resumed = list(job.config.quiesce)
        cleaned.append(f"{error}; resumed the job's quiesce services: {', '.join(resumed) or 'none'}")
    if resumed:
        # Started with all the other services, now that nothing of the old run is left.
        publish(ev.BackupResumed(job=job.config.name, units=tuple(resumed)))
    if not (operations or cleaned or resumed):
        return False
    names = ", ".join(r.repo.name for r in repos)
    cleaned.append(f"stale locks in {names} are removed before the job runs again")
    publish(ev.BackupInterrupted(job=job.config.name, operations=tuple(operations), cleaned=tuple(cleaned)))
    return True


async def forget_interrupted_dump(job: BackupJob, publish: Callable[[ev.Event], None]) -> None:
    """Forget the snapshots of a database dump hasupd died during (made since it started): restic 0.14
    may have taken the end of its input at hasupd's death for the end of the dump. Recorded as
    ``backup.interrupted``; the journal entry stays until the repository could be asked."""
    found = job.journal.interrupted_dump()
    if found is None:
        return
    tag, since = found
    try:
        doubtful = [s for s in await job.hot.snapshots([*job.tags, tag]) if s.time >= since]
        await job.hot.forget_ids([s.id for s in doubtful])
    except ResticError as error:
        cleaned = (
            f"could not forget what the interrupted dump left ({error}); tried again at the next start",
        )
    else:
        job.journal.end_dump()
        cleaned = (
            f"forgot {len(doubtful)} snapshot(s) of the dump made after it started: "
            + (", ".join(s.short_id for s in doubtful) or "none was made"),
        )
    from hasupd.backup.databases import DB_TAG  # noqa: PLC0415  (urllib, sqlite3: with a job only)

    name = tag.removeprefix(DB_TAG)
    publish(ev.BackupInterrupted(job=job.config.name, operations=(f"database dump {name}",), cleaned=cleaned))


async def remove_stale_locks(job: BackupJob, publish: Callable[[ev.Event], None]) -> None:
    """Run a plain ``restic unlock`` on each repository of ``job``; record what it removed or why not;
    then forget what an interrupted database dump may have left (forget_interrupted_dump).

    Off the start-up path: an unreachable repository must not hold back the services.
    """
    for repo in [job.hot] + ([job.cold] if job.cold is not None else []):
        try:
            before = await repo.locks()
            await repo.unlock()
            removed = len(set(before) - set(await repo.locks()))
        except ResticError as error:
            publish(
                ev.BackupUnlocked(job=job.config.name, repository=repo.repo.name, removed=0, error=str(error))
            )
            continue
        publish(ev.BackupUnlocked(job=job.config.name, repository=repo.repo.name, removed=removed))
    await forget_interrupted_dump(job, publish)
