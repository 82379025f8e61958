"""The errors page's ranking and the service timeline's buckets, on records given directly."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from hasupd.observe.queries import Query
from hasupd.web import views
from hasupd.web.charts import bars, ranking
from hasupd.web.filters import duration


def record(ts: float, event: str, level: str = "error", **tags: Any) -> tuple[float, dict[str, Any]]:
    when = datetime.fromtimestamp(ts, UTC).isoformat()
    return ts, {"time": when, "event": event, "level": level, "message": f"{event} at {ts}", **tags}


class Store:
    """Stands in for the RecordStore: answers ``records`` from a list, as the real one filters."""

    def __init__(self, items: list[tuple[float, dict[str, Any]]]) -> None:
        self.items = sorted(items, key=lambda item: item[0])
        self.queries: list[Query] = []

    async def records(self, query: Query) -> list[tuple[float, dict[str, Any]]]:
        self.queries.append(query)
        return [item for item in self.items if query.matches(*item)]


async def test_rank_errors_counts_error_records_by_event_and_service() -> None:
    store = Store(
        [
            record(100, "health.failed", service="api"),
            record(110, "health.failed", service="api", incident="abc123"),
            record(105, "backup.failed", job="nightly"),
            record(106, "backup.failed", job="nightly"),
            record(90, "service.failed", service="api"),
            record(91, "service.failed", service="api"),
            record(120, "service.exited", level="warning", service="api"),  # a warning: not counted
            record(130, "limit.exceeded", level="critical", service="db"),
            record(10, "health.failed", service="api"),  # before `since`
            record(500, "health.failed", service="api"),  # after `until`
        ]
    )
    ranked = await views.rank_errors(store, since=50, until=200)  # type: ignore[arg-type]
    assert [(g["event"], g["service"], g["count"]) for g in ranked] == [
        ("health.failed", "api", 2),
        ("backup.failed", None, 2),  # as often as service.failed, seen later: first
        ("service.failed", "api", 2),
        ("limit.exceeded", "db", 1),
    ]
    top = ranked[0]
    assert top["first_seen"].startswith("1970-01-01T00:01:40") and top["last_seen"].startswith(
        "1970-01-01T00:01:50"
    )
    assert top["incident"] == "abc123" and top["example"] == "health.failed at 110"
    assert store.queries == [Query(since=50, warnings=True)]


def test_timeline_buckets_exits_and_starts() -> None:
    axis = views.Buckets(end=1000.0, width=100.0, count=9)  # from 100 to 1000
    items = [
        record(5, "service.exited"),  # before the axis
        record(1001, "service.exited"),  # after it
        record(950, "service.exited"),
        record(951, "service.started"),
        record(120, "service.spawn_failed"),
        record(130, "service.state"),
    ]
    out = views.timeline(list(items), axis)
    assert out[8] == {"exits": 1, "starts": 1} and out[0] == {"exits": 1, "starts": 0}
    assert sum(b["exits"] for b in out) == 2


def test_charts_say_what_they_show() -> None:
    svg = bars([{"exits": 3, "starts": 1}, {"exits": 0, "starts": 2}], ["a", "b<"],
               (("exits", "s-bad", "exits"), ("starts", "s-info", "starts")), "web & co")  # fmt: skip
    assert 'aria-label="web &amp; co: 3 exits, 3 starts"' in svg
    assert svg.count("<rect") == 3 and "b&lt;: 2 starts" in svg
    svg = ranking([("backup.failed · hasupd", 5), ("<x>", 1)], "errors")
    assert svg.count("<rect") == 2 and "&lt;x&gt;: 1" in svg


def test_durations_read_as_people_write_them() -> None:
    assert [duration(x) for x in (None, 0, 0.2, 12, 310, 7200, 93784)] == [
        "\N{EN DASH}", "0s", "200ms", "12s", "5m 10s", "2h", "1d 2h"
    ]  # fmt: skip
