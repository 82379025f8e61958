"""The few names of the backup stack that hasupd needs with no backup job configured: the kinds of
work, a job's failure, and the environment mark on restic processes (found again after a crash).

Kept apart from ``hasupd.backup.jobs`` (restic, plumbum, databases, drills): the daemon and the
control commands import this at start; the rest is imported once a job exists or a command needs it.
"""

from __future__ import annotations

from enum import StrEnum

# Set in every restic process hasupd starts: the absolute state dir of the hasupd that started it.
OWNER_ENV = "HASUPD_RESTIC_OWNER"


class Kind(StrEnum):
    """The kinds of work a job does, each on its own schedule (the stamps use these names)."""

    BACKUP = "backup"
    LONG_TERM = "long_term"
    CHECK = "check"
    PRUNE = "prune"
    DRILL = "drill"


class JobFailed(Exception):
    """A step failed; ``retry`` says whether running the job again may help."""

    def __init__(self, step: str, message: str, *, retry: bool) -> None:
        super().__init__(f"{step}: {message}")
        self.step = step
        self.retry = retry
