"""Cron parsing, next runs (UTC: no DST), catch-up after downtime, stable delays, last-run stamps."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest

from hasupd.backup.check_rotation import CheckRotation
from hasupd.backup.schedule import Stamps, due, next_due, next_run, parse_cron, stable_offset


def t(y: int, mo: int, d: int, h: int = 0, mi: int = 0) -> datetime:
    return datetime(y, mo, d, h, mi, tzinfo=UTC)


@pytest.mark.parametrize(
    ("expr", "after", "expected"),
    [
        ("@hourly", t(2025, 3, 1, 10, 0), t(2025, 3, 1, 11, 0)),
        ("@hourly", t(2025, 3, 1, 10, 59), t(2025, 3, 1, 11, 0)),
        ("@daily", t(2025, 12, 31, 0, 0), t(2026, 1, 1)),
        ("@midnight", t(2025, 1, 1, 12), t(2025, 1, 2)),
        ("@weekly", t(2025, 3, 5), t(2025, 3, 9)),  # the next Sunday
        ("@monthly", t(2025, 1, 31, 23, 59), t(2025, 2, 1)),
        ("@yearly", t(2025, 6, 1), t(2026, 1, 1)),
        ("@annually", t(2025, 1, 1), t(2026, 1, 1)),  # strictly after
        ("30 3 * * *", t(2025, 3, 1, 3, 30), t(2025, 3, 2, 3, 30)),
        ("30 3 * * *", t(2025, 3, 1, 3, 29), t(2025, 3, 1, 3, 30)),
        ("*/15 * * * *", t(2025, 3, 1, 10, 16), t(2025, 3, 1, 10, 30)),
        ("5/20 * * * *", t(2025, 3, 1, 10, 26), t(2025, 3, 1, 10, 45)),
        ("0 9-17/4 * * *", t(2025, 3, 1, 13, 1), t(2025, 3, 1, 17, 0)),
        ("0 0 1,15 * *", t(2025, 3, 2), t(2025, 3, 15)),
        ("0 0 * feb mon", t(2025, 1, 15), t(2025, 2, 3)),
        ("0 0 * * 7", t(2025, 3, 5), t(2025, 3, 9)),  # 7 is Sunday too
        ("0 0 * * Fri-Sat", t(2025, 3, 3), t(2025, 3, 7)),
        ("0 0 29 2 *", t(2025, 1, 1), t(2028, 2, 29)),  # leap years only
        ("59 23 31 12 *", t(2025, 12, 31, 23, 59), t(2026, 12, 31, 23, 59)),
    ],
)
def test_next_run(expr: str, after: datetime, expected: datetime) -> None:
    assert next_run(expr, after) == expected


def test_day_of_month_or_day_of_week_when_both_restricted() -> None:
    # "the 13th OR any Friday", as cron does: from 2025-06-01 the first is Friday 06-06, then 06-13.
    assert next_run("0 0 13 * fri", t(2025, 6, 1)) == t(2025, 6, 6)
    assert next_run("0 0 13 * fri", t(2025, 6, 6)) == t(2025, 6, 13)
    # A field starting with "*" is unrestricted even with a step: then both must match (AND).
    assert next_run("0 0 */2 * fri", t(2025, 6, 1)) == t(2025, 6, 13)  # odd days that are Fridays


def test_seconds_are_ignored_and_zone_is_kept() -> None:
    tz = timezone(timedelta(hours=2))
    after = datetime(2025, 3, 1, 10, 0, 30, 5, tzinfo=tz)
    got = next_run("0 11 * * *", after)
    assert got == datetime(2025, 3, 1, 11, 0, tzinfo=tz) and got.tzinfo is tz


@pytest.mark.parametrize(
    "expr",
    [
        "",
        "* * * *",
        "* * * * * *",
        "60 * * * *",
        "* 24 * * *",
        "* * 0 * *",
        "* * * 13 *",
        "* * * * 8",
        "*/0 * * * *",
        "5-1 * * * *",
        "x * * * *",
        "* * * foo *",
        "@reboot",
        "@often",
        "1,,2 * * * *",
        "0 0 30 2 *",
        "0 0 31 4,6,9,11 *",
    ],
)
def test_invalid_expressions(expr: str) -> None:
    with pytest.raises(ValueError):
        parse_cron(expr)


def test_naive_datetimes_are_refused() -> None:
    with pytest.raises(ValueError):
        next_run("@daily", datetime(2025, 1, 1))
    with pytest.raises(ValueError):
        due("@daily", datetime(2025, 1, 1), t(2025, 1, 2))


def test_never_run_is_due_now() -> None:
    now = t(2025, 3, 1, 10)
    assert due("@daily", None, now) and next_due("@daily", None, now) == now


def test_missed_run_is_due_once_after_downtime() -> None:
    last = t(2025, 3, 1, 3, 0)  # ran at its slot; hasupd then down until 03-03 10:00
    now = t(2025, 3, 3, 10, 0)
    assert due("0 3 * * *", last, now)  # two slots were missed: one run catches up
    ran = now
    assert not due("0 3 * * *", ran, now + timedelta(hours=1))
    assert next_due("0 3 * * *", ran, now) == t(2025, 3, 4, 3, 0)


def test_not_due_before_the_slot() -> None:
    last = t(2025, 3, 1, 3, 0)
    assert not due("0 3 * * *", last, t(2025, 3, 2, 2, 59))
    assert due("0 3 * * *", last, t(2025, 3, 2, 3, 0))


def test_randomized_delay_is_stable_per_job() -> None:
    a = stable_offset("app-data", 1800)
    assert a == stable_offset("app-data", 1800) and 0 <= a < 1800
    assert a != stable_offset("other-job", 1800)
    assert stable_offset("app-data", 0) == 0.0
    spread = {int(stable_offset(f"job{i}", 3600) // 360) for i in range(100)}
    assert len(spread) >= 8  # spread over the window, not bunched


def test_offset_shifts_the_slot_and_survives_the_run() -> None:
    offset = 600.0
    last = t(2025, 3, 1, 3, 10)  # ran at 03:00 + 10 min
    assert next_due("0 3 * * *", last, last, offset_sec=offset) == t(2025, 3, 2, 3, 10)
    assert not due("0 3 * * *", last, t(2025, 3, 2, 3, 9), offset_sec=offset)
    assert due("0 3 * * *", last, t(2025, 3, 2, 3, 10), offset_sec=offset)


def test_stamps_round_trip_atomically(tmp_path: Path) -> None:
    stamps = Stamps(tmp_path)
    assert stamps.get("app-data", "backup") is None
    when = datetime(2025, 3, 1, 3, 0, 12, 345, tzinfo=UTC)
    stamps.set("app-data", "backup", when)
    assert stamps.get("app-data", "backup") == when
    assert Stamps(tmp_path).get("app-data", "backup") == when  # a restarted hasupd sees it
    assert stamps.get("app-data", "check") is None
    files = sorted(p.name for p in (tmp_path / "backup" / "app-data").iterdir())
    assert files == ["backup.last"]  # no temp file left behind


def test_stamps_refuse_bad_input(tmp_path: Path) -> None:
    stamps = Stamps(tmp_path)
    for job in ("../etc", "A", "", "a/b", ".."):
        with pytest.raises(ValueError):
            stamps.set(job, "backup", t(2025, 1, 1))
    with pytest.raises(ValueError):
        stamps.set("job", "backup", datetime(2025, 1, 1))


def test_unreadable_stamp_counts_as_never(tmp_path: Path) -> None:
    stamps = Stamps(tmp_path)
    path = stamps.path("job", "backup")
    path.parent.mkdir(parents=True)
    path.write_text("garbage\n")
    assert stamps.get("job", "backup") is None


@pytest.mark.parametrize("text", ["9999-12-31T23:59:00+00:00", "in three years"])
def test_a_stamp_from_the_future_counts_as_never(tmp_path: Path, text: str) -> None:
    """Written while the clock was wrong: believed, the job would not run until then (and a slot after
    9999-12-31 cannot be computed at all)."""
    stamps = Stamps(tmp_path)
    path = stamps.path("job", "backup")
    path.parent.mkdir(parents=True)
    if text == "in three years":
        text = (datetime.now(UTC) + timedelta(days=3 * 365)).isoformat()
    path.write_text(text + "\n")
    last = stamps.get("job", "backup")
    assert last is None
    now = datetime.now(UTC)
    assert due("@daily", last, now)


def test_a_stamp_that_is_not_utf8_counts_as_never(tmp_path: Path) -> None:
    stamps = Stamps(tmp_path)
    path = stamps.path("job", "backup")
    path.parent.mkdir(parents=True)
    path.write_bytes(b"\xff2025-01-01T00:00:00+00:00\n")
    assert stamps.get("job", "backup") is None


def test_a_stamp_that_is_a_folder_counts_as_never(tmp_path: Path) -> None:
    stamps = Stamps(tmp_path)
    stamps.path("job", "backup").mkdir(parents=True)
    assert stamps.get("job", "backup") is None


@pytest.mark.parametrize("content", [b"\xff3/12\n", b"\xc2\xb2/12\n", b"1/" + b"1" * 5000, b"3/12\n"])
def test_a_damaged_check_subset_starts_again_at_the_first(tmp_path: Path, content: bytes) -> None:
    rotation = CheckRotation(tmp_path, "job", 12)
    path = tmp_path / "backup" / "job" / "check-subset"
    path.parent.mkdir(parents=True)
    path.write_bytes(content)
    assert rotation.current() == ("3/12" if content == b"3/12\n" else "1/12")
    path.unlink()
    path.mkdir()  # a folder where the file was
    assert rotation.current() == "1/12"
