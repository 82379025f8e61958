"""The database part of a backup job: each dump of ``databases:`` streamed into a snapshot of its own.

A snapshot holds one file, ``/NAME.pgdump`` (``.sql``, ``.sqlite``), and carries the job's tags plus
``db:NAME``, so ``hasupctl backup list`` names it and a restore finds it. A dump that fails or is cut
short leaves no snapshot (see ``streams.py``) and a ``backup.failed`` record; the other dumps still run.
While a dump streams, the job's journal names it (``dumping.json``): if hasupd dies meanwhile, its next
start forgets any snapshot of that dump made since (``leftovers.forget_interrupted_dump``).
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
import time
from pathlib import Path
from typing import Protocol

from hasupd import events as ev
from hasupd.backup.compat import ResticError
from hasupd.backup.databases import DatabaseConfigError, DumpItem, dump_items, sqlite_online_backup
from hasupd.backup.restore import RestoreSource
from hasupd.backup.streams import StreamFailed
from hasupd.host.procfs import DEFAULT_PATH


class DumpingJob(RestoreSource, Protocol):
    """What dumping needs of a backup job (``hasupd.backup.jobs.BackupJob`` is one): what a restore
    needs of it, and a way to record."""

    def record(self, event: ev.Event) -> None: ...


async def dump_databases(job: DumpingJob, scratch: Path) -> list[str]:
    """Dump every database of ``job`` into its own snapshot; return one line per failed dump."""
    failed: list[str] = []
    for spec in job.config.databases:
        try:
            items = dump_items(spec, os.environ.get("PATH", DEFAULT_PATH))
        except DatabaseConfigError as error:
            failed.append(f"{spec.name}: {error}")
            job.record(ev.BackupFailed(job=job.config.name, step=f"database {spec.name}", error=str(error)))
            continue
        for item in items:
            error_text = await _dump_one(job, item, scratch)
            if error_text is not None:
                failed.append(f"{item.name}: {error_text}")
                job.record(
                    ev.BackupFailed(job=job.config.name, step=f"database {item.name}", error=error_text)
                )
    return failed


async def _dump_one(job: DumpingJob, item: DumpItem, scratch: Path) -> str | None:
    """Make the snapshot of ``item``; return None, or why it failed (no snapshot is left then)."""
    started = time.monotonic()
    tags = [*job.tags, item.tag]
    try:
        # If hasupd dies mid-dump, its next start forgets what restic may have made of the stream.
        job.journal.begin_dump(item.tag)
    except OSError as error:
        return f"cannot write {job.journal.dump_file}: {error}"
    try:
        if item.command is not None:
            summary = await job.hot.backup_stdin(item.filename, tags, command=item.command)
        else:
            copy = scratch / item.filename
            try:
                await asyncio.to_thread(sqlite_online_backup, item.spec.database, copy)
                fd = os.open(copy, os.O_RDONLY | os.O_CLOEXEC)
                summary = await job.hot.backup_stdin(item.filename, tags, source_fd=fd)
            finally:
                copy.unlink(missing_ok=True)
    except (StreamFailed, ResticError, OSError, sqlite3.Error) as error:
        return str(error) or type(error).__name__
    finally:
        job.journal.end_dump()
    job.record(
        ev.DatabaseDumped(
            job=job.config.name,
            database=item.name,
            snapshot=summary.snapshot_id,
            bytes_added=summary.data_added,
            duration_sec=round(time.monotonic() - started, 3),
        )
    )
    return None
