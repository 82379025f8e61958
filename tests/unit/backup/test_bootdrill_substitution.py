"""The boot drill's config substitution (documented in hasupd/backup/bootdrill.py) and the drill period."""

from __future__ import annotations

from datetime import UTC, datetime

from hasupd.backup.bootdrill import Substitution
from hasupd.backup.schedule import schedule_period


def test_paths_anywhere_longest_first_and_database_names_as_whole_values() -> None:
    sub = Substitution(
        paths={"/srv/app": "/scratch/files/srv/app", "/srv/app/db.sqlite": "/scratch/db/db.sqlite"},
        databases={"shop": "shop_drill_1"},
    )
    assert sub.argv(
        ("--data=/srv/app/uploads", "/srv/app/db.sqlite", "-d", "shop", "postgresql://u@/shop", "dbname=shop")
    ) == (
        "--data=/scratch/files/srv/app/uploads",
        "/scratch/db/db.sqlite",
        "-d",
        "shop_drill_1",
        "postgresql://u@/shop_drill_1",
        "dbname=shop_drill_1",
    )
    # Not a database name: a word that merely contains it, or a path segment in the middle.
    assert sub.argv(("shopping", "/shop/x", "workshop")) == ("shopping", "/shop/x", "workshop")


def test_schedule_period() -> None:
    now = datetime(2026, 3, 4, 5, 6, tzinfo=UTC)
    assert schedule_period("@weekly", now) == 7 * 86400
    assert schedule_period("@daily", now) == 86400
    assert schedule_period("*/15 * * * *", now) == 900
