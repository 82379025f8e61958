"""Keep validation, the forget-plan safety net and the long-term selection (restic's policy in Python)."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime, timedelta

import pytest

from hasupd.backup.models import GroupKey, RetentionGroup, RetentionPlan, Snapshot
from hasupd.backup.retention import (
    RetentionRefused,
    _add_date,
    apply_policy,
    keep_args,
    long_term_set,
    safe_plan,
    validate_keep,
)
from hasupd.config.model import Keep


def snap(
    when: datetime, *, host: str = "h", paths: tuple[str, ...] = ("/data",), tags: tuple[str, ...] = ()
) -> Snapshot:
    sid = hashlib.sha256(f"{when.isoformat()}{host}{paths}{tags}".encode()).hexdigest()
    return Snapshot(id=sid, short_id=sid[:8], time=when, paths=paths, tags=tags, hostname=host)


def day(m: int, d: int, h: int = 3) -> datetime:
    return datetime(2025, m, d, h, tzinfo=UTC)


NOW = datetime(2026, 1, 1, tzinfo=UTC)


@pytest.mark.parametrize(
    "keep",
    [
        Keep(),
        Keep(daily=0),
        Keep(daily=-1),
        Keep(weekly=True),
        Keep(monthly="3"),  # type: ignore[arg-type]
        Keep(last=1.5),  # type: ignore[arg-type]
        Keep(within="7"),
        Keep(within="0d"),
        Keep(within="1w"),
        Keep(within="-1d"),
        Keep(within=""),
    ],
)
def test_invalid_keep_is_refused_before_restic(keep: Keep) -> None:
    with pytest.raises(ValueError):
        validate_keep(keep)
    with pytest.raises(ValueError):
        keep_args(keep)


def test_keep_args() -> None:
    assert keep_args(Keep(daily=7, weekly=4, within="1y2m")) == [
        "--keep-daily",
        "7",
        "--keep-weekly",
        "4",
        "--keep-within",
        "1y2m",
    ]


def plan_of(*groups: RetentionGroup, tags: tuple[str, ...] = ()) -> RetentionPlan:
    return RetentionPlan(group_by=("host", "paths"), tags=tags, groups=groups)


KEY = GroupKey(host="h", paths=("/data",), tags=None)


def test_safe_plan_passes_a_sane_plan() -> None:
    a, b, c = snap(day(1, 1)), snap(day(1, 2)), snap(day(1, 3))
    plan = plan_of(RetentionGroup(KEY, keep=(c,), remove=(b, a)))
    assert safe_plan(plan, [a, b, c]) == [a.id, b.id]


def test_safe_plan_with_nothing_to_remove() -> None:
    a = snap(day(1, 1))
    assert safe_plan(plan_of(RetentionGroup(KEY, keep=(a,), remove=())), [a]) == []


def test_refuses_removing_every_snapshot_of_a_group() -> None:
    a, b = snap(day(1, 1)), snap(day(1, 2))
    with pytest.raises(RetentionRefused, match="every snapshot"):
        safe_plan(plan_of(RetentionGroup(KEY, keep=(), remove=(a, b))), [a, b])


def test_refuses_removing_the_newest_snapshot() -> None:
    a, b, c = snap(day(1, 1)), snap(day(1, 2)), snap(day(1, 3))
    with pytest.raises(RetentionRefused, match="newest"):
        safe_plan(plan_of(RetentionGroup(KEY, keep=(a,), remove=(c, b))), [a, b, c])


def test_refuses_when_the_repository_has_a_newer_snapshot_the_plan_removes() -> None:
    # The plan (e.g. filtered or stale) keeps an old one and removes what is really the newest.
    a, b = snap(day(1, 1)), snap(day(1, 2))
    newest = snap(day(1, 9))
    plan = plan_of(RetentionGroup(KEY, keep=(snap(day(1, 10), host="other"),), remove=(newest,)))
    with pytest.raises(RetentionRefused):
        safe_plan(plan, [a, b, newest])


def test_refuses_a_stale_plan() -> None:
    a, b = snap(day(1, 1)), snap(day(1, 2))
    gone = snap(day(1, 1, 1))
    with pytest.raises(RetentionRefused, match="no longer exist"):
        safe_plan(plan_of(RetentionGroup(KEY, keep=(b,), remove=(gone,))), [a, b])


def test_groups_are_judged_separately() -> None:
    a1, a2 = snap(day(1, 1)), snap(day(1, 2))
    b1 = snap(day(1, 3), paths=("/other",))  # the newest overall, but in another group
    key_a = KEY
    key_b = GroupKey(host="h", paths=("/other",), tags=None)
    plan = plan_of(
        RetentionGroup(key_a, keep=(a2,), remove=(a1,)), RetentionGroup(key_b, keep=(b1,), remove=())
    )
    assert safe_plan(plan, [a1, a2, b1]) == [a1.id]
    with pytest.raises(RetentionRefused):
        safe_plan(plan_of(RetentionGroup(key_b, keep=(), remove=(b1,))), [a1, a2, b1])


def test_long_term_set_picks_newest_per_month_and_year() -> None:
    snaps = [snap(day(1, d)) for d in (1, 10, 31)] + [snap(day(2, d)) for d in (1, 9)]
    keep = Keep(monthly=12, yearly=5)
    ids = {s.time: s.id for s in snaps}
    assert long_term_set(snaps, keep, NOW, keep_oldest=False) == {ids[day(2, 9)], ids[day(1, 31)]}
    # restic >= 0.17 also keeps the oldest snapshot while a bucket has counts left
    assert long_term_set(snaps, keep, NOW, keep_oldest=True) == {
        ids[day(2, 9)],
        ids[day(1, 31)],
        ids[day(1, 1)],
    }


def test_long_term_set_groups_like_restic() -> None:
    a = [snap(day(1, d)) for d in (1, 31)]
    b = [snap(day(1, d), paths=("/b",)) for d in (2, 30)]
    got = long_term_set(a + b, Keep(monthly=1), NOW, keep_oldest=False)
    assert got == {a[1].id, b[1].id}
    assert long_term_set(a + b, Keep(monthly=1), NOW, group_by=(), keep_oldest=False) == {a[1].id}


def test_within_is_measured_from_the_newest_past_snapshot() -> None:
    snaps = [snap(day(1, d)) for d in (1, 5, 8, 9, 10)]
    future = snap(NOW + timedelta(days=30))  # not used as the reference, like restic
    got = apply_policy([*snaps, future], Keep(within="2d"), NOW, keep_oldest=False)
    assert set(got) == {future.id, snaps[3].id, snaps[4].id}  # after 01-08 03:00, strictly


def test_last_counts_every_snapshot() -> None:
    snaps = [snap(day(1, 1, h)) for h in (1, 2, 3)]
    assert apply_policy(snaps, Keep(last=2), NOW, keep_oldest=False) == [snaps[2].id, snaps[1].id]


def test_add_date_normalises_like_go() -> None:
    assert _add_date(datetime(2025, 3, 31, tzinfo=UTC), 0, -1, 0) == datetime(2025, 3, 3, tzinfo=UTC)
    assert _add_date(datetime(2024, 2, 29, tzinfo=UTC), -1, 0, 0) == datetime(2023, 3, 1, tzinfo=UTC)
    assert _add_date(datetime(2025, 1, 10, tzinfo=UTC), 0, 0, -10) == datetime(2024, 12, 31, tzinfo=UTC)


def test_long_term_set_validates() -> None:
    with pytest.raises(ValueError):
        long_term_set([], Keep(), NOW)
    with pytest.raises(ValueError):
        long_term_set([], Keep(daily=1), datetime(2025, 1, 1))
    with pytest.raises(ValueError):
        long_term_set([], Keep(daily=1), NOW, group_by=("host", "host"))
