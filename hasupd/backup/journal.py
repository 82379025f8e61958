"""What a job or a restore is doing, written (and fsynced) before each step, so that a hasupd that
died mid-way can finish or undo it on its next start.

Two files per job under ``STATE_DIR/backup/JOB/``: ``running.json`` while the job's restic work runs
(its stale locks are removed on the next start), and ``restore.json`` while a restore runs: the phase,
and for each live path its staging folder, where the original is moved aside and whether it existed.
``undo_restore`` puts the live data back as it was before the restore from that file alone.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from hasupd.files import atomic_write_text

# Phases of an in-place restore, in order. Up to STOP nothing live was touched.
STAGE, STOP, SWAP, STARTED, ROLLBACK = "stage", "stop", "swap", "started", "rollback"


@dataclass
class SwapPath:
    """One live path of an in-place restore: where its restored copy is staged, where the original
    goes aside, and whether there was an original at all."""

    live: str
    staging: str
    kept: str
    existed: bool = True


@dataclass
class RestoreEntry:
    job: str
    user: str
    stamp: str
    mode: str  # "in-place" | "target"
    phase: str
    paths: list[SwapPath] = field(default_factory=list)
    target: str | None = None  # mode "target": the folder restored into
    target_existed: bool = False


class Journal:
    """The journal files of one job. Writing raises OSError (the step must not start unrecorded)."""

    def __init__(self, state_dir: Path, job: str) -> None:
        self.dir = state_dir / "backup" / job
        self.run_file = self.dir / "running.json"
        self.restore_file = self.dir / "restore.json"
        self.dump_file = self.dir / "dumping.json"

    def begin_run(self, kinds: list[str]) -> None:
        started = datetime.now(UTC).isoformat()
        atomic_write_text(self.run_file, json.dumps({"kinds": kinds, "pid": os.getpid(), "started": started}))

    def end_run(self) -> None:
        self.run_file.unlink(missing_ok=True)

    def interrupted_run(self) -> list[str] | None:
        """Return the kinds of work an earlier hasupd left unfinished (and forget them), or None."""
        data = _read(self.run_file)
        self.run_file.unlink(missing_ok=True)
        if not isinstance(data, dict):
            return None if data is None else []
        kinds = data.get("kinds")
        return [str(k) for k in kinds] if isinstance(kinds, list) else []

    def begin_dump(self, tag: str) -> None:
        """Record that a database dump tagged ``tag`` streams into restic from now on."""
        since = datetime.now(UTC).isoformat()
        atomic_write_text(self.dump_file, json.dumps({"tag": tag, "since": since}))

    def end_dump(self) -> None:
        self.dump_file.unlink(missing_ok=True)

    def interrupted_dump(self) -> tuple[str, datetime] | None:
        """Return (tag, start) of a dump an earlier hasupd left streaming, or None (kept until
        ``end_dump``: the snapshots it may have left are forgotten first)."""
        data = _read(self.dump_file)
        if not isinstance(data, dict) or not isinstance(data.get("tag"), str):
            self.dump_file.unlink(missing_ok=True)  # torn before the rename: the dump had not started
            return None
        try:
            since = datetime.fromisoformat(str(data.get("since")))
        except ValueError:
            return None
        return data["tag"], since

    def write_restore(self, entry: RestoreEntry) -> None:
        atomic_write_text(self.restore_file, json.dumps(asdict(entry)))

    def end_restore(self) -> None:
        self.restore_file.unlink(missing_ok=True)

    def interrupted_restore(self) -> RestoreEntry | None:
        """Return the restore an earlier hasupd left unfinished, or None. Raise ValueError if the file
        is unreadable as a journal (it is then left in place for an admin)."""
        data = _read(self.restore_file)
        if data is None:
            return None
        try:
            paths = [SwapPath(**p) for p in data.pop("paths")]
            return RestoreEntry(**data, paths=paths)
        except (TypeError, KeyError, AttributeError) as e:
            raise ValueError(f"{self.restore_file}: not a restore journal: {e}") from e


def _read(path: Path) -> Any:
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return None
    try:
        return json.loads(raw)
    except (ValueError, RecursionError):  # not UTF-8 too (UnicodeDecodeError); nested too deep
        return {}  # torn by a crash before the rename: the step had not started


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink()


def undo_restore(entry: RestoreEntry) -> list[str]:
    """Put the live data back as it was before the interrupted restore ``entry``; remove its staging.

    Return what was done, one line per change. Restored data that services never ran on is removed
    (it is a copy of the snapshot); restored data they ran on (phase ``started``/``rollback``) is kept
    aside as ``PATH.interrupted-restore-STAMP``. Raise OSError if the file system refuses a step.
    """
    done: list[str] = []
    if entry.mode == "target":
        if entry.target is not None and os.path.lexists(entry.target):
            target = Path(entry.target)
            if entry.target_existed:  # it was empty before: only what the restore wrote goes
                for child in target.iterdir():
                    _remove(child)
                done.append(f"removed the partial restore inside {target}")
            else:
                _remove(target)
                done.append(f"removed the partial restore {target}")
        return done
    swapped = entry.phase in (SWAP, STARTED, ROLLBACK)
    services_ran = entry.phase in (STARTED, ROLLBACK)
    for p in entry.paths:
        live, kept, staging = Path(p.live), Path(p.kept), Path(p.staging)
        original_aside = p.existed and os.path.lexists(kept)
        restored_live = swapped and os.path.lexists(live) and (original_aside or not p.existed)
        if restored_live:
            if services_ran:
                aside = live.with_name(f"{live.name}.interrupted-restore-{entry.stamp}")
                os.rename(live, aside)
                done.append(f"{live}: the restored data the services had started on is kept at {aside}")
            else:
                _remove(live)
                done.append(f"{live}: removed the restored data (not yet used)")
        if original_aside:
            os.rename(kept, live)
            done.append(f"{live}: the original data is live again (it was moved aside to {kept})")
        if os.path.lexists(staging):
            _remove(staging)
            done.append(f"removed the staging folder {staging}")
    return done
