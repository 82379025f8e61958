"""When backup jobs run: cron expressions, a stable per-job delay, last-run stamps, catch-up after downtime.

Cron as Vixie cron reads it: five fields ``minute hour day-of-month month day-of-week`` with ``*``, lists,
ranges, steps (``*/15``, ``1-10/2``, ``5/10`` = ``5-max/10``) and English names (``jan``, ``mon``); day of
week 0 and 7 are Sunday. When both day fields are restricted a day matches if EITHER matches; a field that
starts with ``*`` (``*/2`` included) counts as unrestricted, and then both must match. Shorthands:
``@hourly @daily @midnight @weekly @monthly @yearly @annually``. Times are wall-clock times in the zone of
the datetime passed in (use UTC to stay clear of DST; in a DST gap the wall time is taken as fold=0).

Written here (~150 lines) rather than depending on croniter, which Debian 12 packages but the project
does not declare.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

from hasupd.backup.statefile import check_name, read_text
from hasupd.files import atomic_write_text

SHORTHANDS = {
    "@hourly": "0 * * * *",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@weekly": "0 0 * * 0",
    "@monthly": "0 0 1 * *",
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
}
_MONTHS = {
    n: i + 1
    for i, n in enumerate(
        ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec")
    )
}
_DAYS = {n: i for i, n in enumerate(("sun", "mon", "tue", "wed", "thu", "fri", "sat"))}
_MAX_DAYS = {1: 31, 2: 29, 3: 31, 4: 30, 5: 31, 6: 30, 7: 31, 8: 31, 9: 30, 10: 31, 11: 30, 12: 31}
# A valid expression matches within 28 years (the calendar repeats); the bound only stops a runaway loop.
_SEARCH_YEARS = 30


@dataclass(frozen=True)
class CronExpr:
    text: str
    minutes: frozenset[int]
    hours: frozenset[int]
    days: frozenset[int]
    months: frozenset[int]
    weekdays: frozenset[int]  # 0 = Sunday
    dom_star: bool
    dow_star: bool

    def matches_day(self, day: date) -> bool:
        """Return True if jobs of this expression run on ``day`` (day-of-month/day-of-week OR rule)."""
        dom = day.day in self.days
        dow = day.isoweekday() % 7 in self.weekdays
        return (dom and dow) if (self.dom_star or self.dow_star) else (dom or dow)


def parse_cron(text: str) -> CronExpr:
    """Return the parsed expression. Raise ValueError naming the bad field if it is malformed or can
    never match (such as ``0 0 30 2 *``)."""
    expanded = SHORTHANDS.get(text.strip().lower(), text)
    if expanded.startswith("@"):
        raise ValueError(f"unknown schedule shorthand {text!r}; use one of {', '.join(SHORTHANDS)}")
    fields = expanded.split()
    if len(fields) != 5:
        raise ValueError(f"{text!r}: a cron expression has 5 fields (minute hour day month weekday)")
    minute, hour, dom, month, dow = fields
    weekdays = _field("day-of-week", dow, 0, 7, _DAYS)
    expr = CronExpr(
        text=text,
        minutes=_field("minute", minute, 0, 59, {}),
        hours=_field("hour", hour, 0, 23, {}),
        days=_field("day-of-month", dom, 1, 31, {}),
        months=_field("month", month, 1, 12, _MONTHS),
        weekdays=frozenset(d % 7 for d in weekdays),
        dom_star=dom.startswith("*"),
        dow_star=dow.startswith("*"),
    )
    if expr.dow_star and not any(d <= _MAX_DAYS[m] for m in expr.months for d in expr.days):
        raise ValueError(f"{text!r} never matches: no such day in those months")
    return expr


def _field(name: str, text: str, lo: int, hi: int, names: dict[str, int]) -> frozenset[int]:
    values: set[int] = set()
    for item in text.split(","):
        span, slash, step_text = item.partition("/")
        step = _number(name, step_text, {}) if slash else 1
        if step < 1:
            raise ValueError(f"{name}: step must be >= 1 in {item!r}")
        if span == "*":
            first, last = lo, hi
        elif "-" in span:
            a, _, b = span.partition("-")
            first, last = _number(name, a, names), _number(name, b, names)
        else:
            first = _number(name, span, names)
            last = hi if slash else first
        if not lo <= first <= last <= hi:
            raise ValueError(f"{name}: {item!r} is outside {lo}-{hi} or reversed")
        values.update(range(first, last + 1, step))
    return frozenset(values)


def _number(name: str, text: str, names: dict[str, int]) -> int:
    key = text.lower()
    if key in names:
        return names[key]
    if not text.isdigit():
        raise ValueError(f"{name}: {text!r} is not a number" + (" or a name" if names else ""))
    return int(text)


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


class Stamps:
    """When each job last did each kind of work ("backup", "check", "copy" ...), kept in the state dir
    as ``STATE/backup/JOB/KIND.last``, one ISO 8601 time per file."""

    def __init__(self, state_dir: Path | str) -> None:
        self._dir = Path(state_dir) / "backup"

    def path(self, job: str, kind: str) -> Path:
        """Return the file of one stamp. Raise ValueError for names that are not hasupd names."""
        return self._dir / check_name("job", job) / f"{check_name('stamp', kind)}.last"

    def get(self, job: str, kind: str) -> datetime | None:
        """Return the stamped time, or None if there is none (or it is unreadable: then the work is
        treated as never done, which makes it run, the safe side for backups)."""
        text = read_text(self.path(job, kind))
        if text is None:
            return None
        try:
            when = datetime.fromisoformat(text.strip())
        except ValueError:
            return None
        return when if when.tzinfo is not None else None

    def set(self, job: str, kind: str, when: datetime) -> None:
        """Record ``when`` atomically and durably. Raise ValueError if naive, OSError if unwritable."""
        if when.tzinfo is None:
            raise ValueError("a stamp must be an aware datetime")
        atomic_write_text(self.path(job, kind), when.isoformat() + "\n")
