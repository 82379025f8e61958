"""Cron expressions as Vixie cron reads them.

Five fields ``minute hour day-of-month month day-of-week`` with ``*``, lists, ranges, steps (``*/15``,
``1-10/2``, ``5/10`` = ``5-max/10``) and English names (``jan``, ``mon``); day of week 0 and 7 are Sunday.
When both day fields are restricted a day matches if EITHER matches; a field that starts with ``*`` (``*/2``
included) counts as unrestricted, and then both must match. Shorthands: ``@hourly @daily @midnight @weekly
@monthly @yearly @annually``. Times are wall-clock times in the zone of the datetime passed in (use UTC to
stay clear of DST; in a DST gap the wall time is taken as fold=0).

Here in config/ because validation parses every schedule (a bad field fails at load, with its
location); the backup scheduler imports it from here. Written here (~100 lines) rather than depending
on croniter, which Debian 12 packages but the project does not declare.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date

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
