"""When backup jobs run: cron expressions, a stable per-job delay, last-run stamps, catch-up after downtime.

Times are wall-clock times in the zone of the datetime passed in (use UTC to stay clear of DST; in a DST
gap the wall time is taken as fold=0). The cron parser (Vixie cron's rules) lives in
``hasupd.config.cron`` (validation uses it too); ``CronExpr`` and ``parse_cron`` are re-exported here.
"""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime, timedelta
from pathlib import Path

from hasupd.backup.statefile import check_name, read_text
from hasupd.config.cron import CronExpr, parse_cron
from hasupd.files import atomic_write_text

__all__ = ["CronExpr", "Stamps", "due", "next_due", "next_run", "parse_cron", "stable_offset"]

# A valid expression matches within 28 years (the calendar repeats); the bound only stops a runaway loop.
_SEARCH_YEARS = 30


def next_run(expr: str | CronExpr, after: datetime) -> datetime:
    """Return the first time strictly after ``after`` that ``expr`` names, in ``after``'s zone.

    Raise ValueError if ``after`` is naive or the expression is invalid.
    """
    if after.tzinfo is None:
        raise ValueError("after must be an aware datetime")
    cron = parse_cron(expr) if isinstance(expr, str) else expr
    tz = after.tzinfo
    t = after.replace(tzinfo=None, second=0, microsecond=0) + timedelta(minutes=1)
    limit = t.year + _SEARCH_YEARS
    while t.year <= limit:
        if t.month not in cron.months:
            t = (t.replace(day=1, hour=0, minute=0) + timedelta(days=32)).replace(day=1)
            continue
        if not cron.matches_day(t.date()):
            t = t.replace(hour=0, minute=0) + timedelta(days=1)
            continue
        minute = min((m for m in cron.minutes if m >= t.minute), default=None)
        if t.hour not in cron.hours or minute is None:
            t = t.replace(minute=0) + timedelta(hours=1)
            continue
        candidate = t.replace(minute=minute, tzinfo=tz)
        # Around a DST fold a wall time can map to an instant before ``after``.
        if candidate.astimezone(UTC) > after.astimezone(UTC):
            return candidate
        t = t.replace(minute=minute) + timedelta(minutes=1)
    raise ValueError(f"{cron.text!r} does not match within {_SEARCH_YEARS} years")


def stable_offset(job: str, max_delay_sec: float) -> float:
    """Return the job's randomized delay in [0, max_delay_sec): a hash of its name, so a restart of
    hasupd does not reshuffle when each job runs."""
    if max_delay_sec <= 0:
        return 0.0
    digest = hashlib.sha256(job.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 * max_delay_sec


def next_due(
    expr: str | CronExpr, last_run: datetime | None, now: datetime, *, offset_sec: float = 0.0
) -> datetime:
    """Return when the job is due: the first slot (shifted by ``offset_sec``) after ``last_run``.

    A job that never ran is due at ``now``. A result in the past means a run was missed (hasupd was
    down): it is due at once, and only once. Raise ValueError on naive datetimes or a bad expression.
    """
    if now.tzinfo is None:
        raise ValueError("now must be an aware datetime")
    if last_run is None:
        return now
    if last_run.tzinfo is None:
        raise ValueError("last_run must be an aware datetime")
    shift = timedelta(seconds=offset_sec)
    return next_run(expr, last_run - shift) + shift


def due(expr: str | CronExpr, last_run: datetime | None, now: datetime, *, offset_sec: float = 0.0) -> bool:
    """Return True if the job should run at ``now`` (see ``next_due``)."""
    return next_due(expr, last_run, now, offset_sec=offset_sec) <= now


STAMP_SLACK = timedelta(minutes=5)  # a stamp this far ahead of the clock is still believed (clock steps)


class Stamps:
    """When each job last did each kind of work ("backup", "check", "copy" ...), kept in the state dir
    as ``STATE/backup/JOB/KIND.last``, one ISO 8601 time per file."""

    def __init__(self, state_dir: Path | str) -> None:
        self._dir = Path(state_dir) / "backup"

    def path(self, job: str, kind: str) -> Path:
        """Return the file of one stamp. Raise ValueError for names that are not hasupd names."""
        return self._dir / check_name("job", job) / f"{check_name('stamp', kind)}.last"

    def get(self, job: str, kind: str) -> datetime | None:
        """Return the stamped time, or None if there is none (or it is unreadable, or in the future: it
        was written while the clock was wrong; then the work is treated as never done, which makes it
        run, the safe side for backups; else it would wait until then, or fail past year 9999)."""
        try:
            text = read_text(self.path(job, kind))
            if text is None:
                return None
            when = datetime.fromisoformat(text.strip())
        except (OSError, ValueError):  # not UTF-8 (UnicodeDecodeError), a folder: unreadable
            return None
        if when.tzinfo is None or when > datetime.now(UTC) + STAMP_SLACK:
            return None
        return when

    def set(self, job: str, kind: str, when: datetime) -> None:
        """Record ``when`` atomically and durably. Raise ValueError if naive, OSError if unwritable."""
        if when.tzinfo is None:
            raise ValueError("a stamp must be an aware datetime")
        atomic_write_text(self.path(job, kind), when.isoformat() + "\n")


def schedule_period(expr: str, now: datetime) -> float:
    """Return the seconds between the next two slots of ``expr`` after ``now`` (its period there)."""
    first = next_due(expr, now, now)
    return max(1.0, (next_due(expr, first, first) - first).total_seconds())
