"""Retention as pure functions: validate a keep policy, vet a forget plan, pick the long-term set.

``long_term_set`` re-implements restic's own policy (internal/restic/snapshot_policy.go, ApplyPolicy)
instead of running ``restic forget --dry-run`` on the hot repository. Why:

* forget takes an EXCLUSIVE lock even with ``--dry-run`` (0.14 and 0.18 both refuse to plan while a backup
  or a stale lock holds the repository), so asking restic would contend with every running backup;
* it is computed from the snapshot list the copy step already has, and unit-tested without restic;
* it stays exact: the integration tests compare it with ``forget --dry-run --json`` on 0.14 and 0.18 for
  the same snapshots, and the one behaviour that differs between versions (0.17+ keeps the oldest snapshot
  of a group while a bucket has counts left) is the ``keep_oldest`` argument, set from the binary.
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from datetime import datetime, timedelta

from hasupd.backup.models import GROUP_FIELDS, RetentionPlan, Snapshot, group_key
from hasupd.config.model import Keep

_COUNTS = ("last", "hourly", "daily", "weekly", "monthly", "yearly")
_DURATION = re.compile(r"(?:\d+[ymdh])+\Z")
_DURATION_PART = re.compile(r"(\d+)([ymdh])")


class RetentionRefused(Exception):
    """A forget plan would lose data it must never lose; ``reason`` says which."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(reason)


def validate_keep(keep: Keep) -> None:
    """Raise ValueError unless every given count is an int >= 1, ``within`` is a restic duration such as
    "2y5m7d3h" that is not zero, and at least one rule is given.

    Why so strict: restic 0.14 forgets snapshots for ``--keep-daily -1`` and forget with no rule at all
    means different things across versions.
    """
    given = 0
    for name in _COUNTS:
        value = getattr(keep, name)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"keep.{name} must be an integer >= 1, not {value!r}")
        given += 1
    if keep.within is not None:
        parse_within(keep.within)
        given += 1
    if not given:
        raise ValueError(
            "keep has no rule: give at least one of last, hourly, daily, weekly, monthly, yearly, within"
        )


def parse_within(text: str) -> tuple[int, int, int, int]:
    """Return (years, months, days, hours) of a restic duration. Raise ValueError if malformed or zero."""
    if not isinstance(text, str) or not _DURATION.match(text):
        raise ValueError(f"keep.within must look like 2y5m7d3h, not {text!r}")
    parts = {"y": 0, "m": 0, "d": 0, "h": 0}
    for number, unit in _DURATION_PART.findall(text):
        parts[unit] += int(number)
    if not any(parts.values()):
        raise ValueError(f"keep.within must not be zero: {text!r}")
    return parts["y"], parts["m"], parts["d"], parts["h"]


def keep_args(keep: Keep) -> list[str]:
    """Return the ``--keep-*`` arguments of a policy, after validating it (ValueError if invalid)."""
    validate_keep(keep)
    args: list[str] = []
    for name in _COUNTS:
        value = getattr(keep, name)
        if value is not None:
            args += [f"--keep-{name}", str(value)]
    if keep.within is not None:
        args += ["--keep-within", keep.within]
    return args


def validate_group_by(group_by: Sequence[str]) -> None:
    """Raise ValueError unless ``group_by`` names only host, paths and tags, each once."""
    if len(set(group_by)) != len(group_by) or not set(group_by) <= set(GROUP_FIELDS):
        raise ValueError(f"group_by must be distinct fields of {GROUP_FIELDS}, not {tuple(group_by)}")


def safe_plan(plan: RetentionPlan, snapshots: Sequence[Snapshot]) -> list[str]:
    """Return the ids ``plan`` removes, oldest first, once it is shown to be safe.

    ``snapshots`` is the repository's current list (from ``Restic.snapshots()``). Raise RetentionRefused
    if the plan would remove every snapshot of a group, the newest snapshot of a group (judged both
    within the plan and against ``snapshots``), or names snapshots that no longer exist (a stale plan).
    """
    present = {s.id for s in snapshots}
    considered = [s for s in snapshots if set(plan.tags) <= set(s.tags)]
    for group in plan.groups:
        where = group.key.describe()
        removed = {s.id for s in group.remove}
        if not removed:
            continue
        if not group.keep:
            raise RetentionRefused(f"the plan removes every snapshot of group {where}")
        gone = removed - present
        if gone:
            raise RetentionRefused(f"the plan names snapshots that no longer exist: {sorted(gone)}")
        in_plan = max((*group.keep, *group.remove), key=lambda s: s.time)
        if in_plan.id in removed:
            raise RetentionRefused(f"the plan removes the newest snapshot {in_plan.id[:8]} of group {where}")
        members = [s for s in considered if group.key.matches(s)]
        if members:
            newest = max(members, key=lambda s: s.time)
            if newest.id in removed:
                raise RetentionRefused(
                    f"the plan removes the newest snapshot {newest.id[:8]} of group {where}"
                )
            if {s.id for s in members} <= removed:
                raise RetentionRefused(f"the plan removes every snapshot of group {where}")
    return plan.remove_ids()


def long_term_set(
    snapshots: Iterable[Snapshot],
    keep: Keep,
    now: datetime,
    *,
    group_by: Sequence[str] = ("host", "paths"),
    keep_oldest: bool = True,
) -> set[str]:
    """Return the ids of the snapshots the long-term policy ``keep`` selects, per group like restic.

    ``now`` only bounds which snapshot counts as the newest for ``keep.within`` (restic ignores snapshots
    dated in the future there). ``keep_oldest`` is restic >= 0.17's rule that the oldest snapshot of a
    group is kept while a bucket has counts left (``Features.forget_keeps_oldest``). Raise ValueError if
    ``keep`` or ``group_by`` is invalid or ``now`` is naive.
    """
    validate_keep(keep)
    validate_group_by(group_by)
    if now.tzinfo is None:
        raise ValueError("now must be an aware datetime")
    groups: dict[object, list[Snapshot]] = defaultdict(list)
    for snap in snapshots:
        groups[group_key(snap, group_by)].append(snap)
    chosen: set[str] = set()
    for members in groups.values():
        chosen.update(apply_policy(members, keep, now, keep_oldest=keep_oldest))
    return chosen


def apply_policy(snapshots: Sequence[Snapshot], keep: Keep, now: datetime, *, keep_oldest: bool) -> list[str]:
    """Return the ids restic's ApplyPolicy keeps from one group, newest first (``keep`` is validated)."""
    ordered = sorted(snapshots, key=lambda s: s.time, reverse=True)  # stable, newest first, like restic
    buckets: list[tuple[int, Callable[[datetime, int], int]]] = []
    for name, bucketer in zip(_COUNTS, _BUCKETERS, strict=True):
        count = getattr(keep, name)
        if count:
            buckets.append((count, bucketer))
    counts = [count for count, _ in buckets]
    last_values = [-1] * len(buckets)
    within_since = _within_since(ordered, keep.within, now) if keep.within else None
    kept = []
    for nr, snap in enumerate(ordered):
        keep_it = within_since is not None and snap.time > within_since
        oldest = keep_oldest and nr == len(ordered) - 1
        for i, (_, bucketer) in enumerate(buckets):
            if counts[i] <= 0:
                continue
            value = bucketer(snap.time, nr)
            if value != last_values[i] or oldest:
                keep_it = True
                last_values[i] = value
                counts[i] -= 1
        if keep_it:
            kept.append(snap.id)
    return kept


def _within_since(ordered: Sequence[Snapshot], within: str, now: datetime) -> datetime | None:
    """Return the time after which snapshots are "within" (None: there is no past snapshot to measure
    from, and restic then keeps all of them: it measures from Go's zero time)."""
    past = [s.time for s in ordered if s.time < now]
    if not past:
        return datetime.min.replace(tzinfo=now.tzinfo)
    latest = max(past)
    years, months, days, hours = parse_within(within)
    return _add_date(latest, -years, -months, -days) - timedelta(hours=hours)


def _add_date(t: datetime, years: int, months: int, days: int) -> datetime:
    """Return Go's ``t.AddDate(years, months, days)``: month overflow first, then day overflow."""
    total = (t.year + years) * 12 + (t.month - 1) + months
    year, month0 = divmod(total, 12)
    return t.replace(year=year, month=month0 + 1, day=1) + timedelta(days=t.day - 1 + days)


def _ymdh(t: datetime, _nr: int) -> int:
    return t.year * 1000000 + t.month * 10000 + t.day * 100 + t.hour


def _ymd(t: datetime, _nr: int) -> int:
    return t.year * 10000 + t.month * 100 + t.day


def _yw(t: datetime, _nr: int) -> int:
    year, week, _ = t.isocalendar()
    return year * 100 + week


def _ym(t: datetime, _nr: int) -> int:
    return t.year * 100 + t.month


def _y(t: datetime, _nr: int) -> int:
    return t.year


def _always(_t: datetime, nr: int) -> int:
    return nr


_BUCKETERS: tuple[Callable[[datetime, int], int], ...] = (_always, _ymdh, _ymd, _yw, _ym, _y)
