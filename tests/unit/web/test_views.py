"""The errors page (the ranking of ``hasupctl errors`` on a real error store, rendered and escaped), an
error group's page, and the service timeline's buckets, on records given directly."""

from __future__ import annotations

import re
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import make_mocked_request

from hasupd import events as ev
from hasupd.config.model import WebConfig
from hasupd.control.context import Context
from hasupd.observe.error_groups import ErrorGroups
from hasupd.observe.error_lines import ErrorEvent
from hasupd.observe.error_rank import rank_errors
from hasupd.observe.queries import parse_since
from hasupd.web import views
from hasupd.web.charts import bars, ranking
from hasupd.web.filters import duration
from hasupd.web.server import Dashboard


def record(ts: float, event: str, level: str = "error", **tags: Any) -> tuple[float, dict[str, Any]]:
    when = datetime.fromtimestamp(ts, UTC).isoformat()
    return ts, {"time": when, "event": event, "level": level, "message": f"{event} at {ts}", **tags}


class Source:
    services: dict[str, Any] = {}


class Records:
    """hasupd's own error records, as RecordStore.errors groups them (``since`` is honoured)."""

    def __init__(self, groups: list[tuple[float, dict[str, Any]]]) -> None:
        self.groups = groups
        self.asked: list[float | None] = []

    async def errors(self, since: float | None) -> list[dict[str, Any]]:
        self.asked.append(since)
        return [dict(g) for ts, g in self.groups if since is None or ts >= since]


class Reloader:
    def daemon_info(self) -> dict[str, object]:
        return {"version": "test"}


def own_group(ts: float, event: str, service: str | None, count: int, pattern: str) -> tuple[float, Any]:
    when = datetime.fromtimestamp(ts, UTC).isoformat()
    return ts, {
        "event": event, "service": service, "pattern": pattern, "count": count, "level": "error",
        "first_seen": when, "last_seen": when, "example": pattern.replace("<n>", "7"),
        "incident": "abc123def456" if service else None,
    }  # fmt: skip


@pytest.fixture
async def dashboard(tmp_path: Path) -> AsyncIterator[tuple[Dashboard, Context]]:
    """A dashboard on a real error store (two services' output groups) and hasupd's own records."""
    now = time.time()
    groups = ErrorGroups(ev.EventBus(), Source(), tmp_path, None)
    api = [ErrorEvent("line", f"ERROR <b>db</b> query {i} failed", now - 60 + i) for i in range(6)]
    api += [ErrorEvent("python", TRACEBACK.format(i=i), now - 30 + i) for i in range(4)]
    await groups.call(groups.store.record, "api", api, "0123456789ab")
    await groups.call(groups.store.record, "db", [ErrorEvent("line", "FATAL x", now - 40 * 86400)] * 8, None)
    records = Records(
        [
            own_group(now - 120, "backup.failed", None, 5, "backup nightly failed: <n>"),
            own_group(now - 3 * 3600, "service.exited", "api", 4, "api (pid <n>) exited with SIGKILL"),
        ]
    )
    ctx = Context(manager=None, reloader=Reloader(), records=records, errors=groups)  # type: ignore[arg-type]
    try:
        yield Dashboard(WebConfig(listen="127.0.0.1:1"), ctx, ev.EventBus()), ctx
    finally:
        groups.close()


TRACEBACK = """Traceback (most recent call last):
  File "/srv/app.py", line 3, in handle
    lookup(key)
KeyError: 'user-{i}'"""


def cells(html: str, field: str) -> list[str]:
    return re.findall(rf'data-field="{field}"[^>]*>(.*?)</t[dh]>', html, re.S)


async def test_errors_page_shows_the_ranking_of_hasupctl_errors(
    dashboard: tuple[Dashboard, Context],
) -> None:
    web, ctx = dashboard
    for label in ("1h", "90d", "30d"):
        response = await web.errors(make_mocked_request("GET", f"/errors?range={label}"))
        html = response.text or ""
        want = await rank_errors(ctx.errors, ctx.records, since=parse_since(label))
        assert re.findall(r'data-group="([0-9a-f]{12})"', html) == [g["group"] for g in want], label
        assert [int(c) for c in cells(html, "count")] == [g["count"] for g in want], label
        for g in want:
            assert f'href="/errors/{g["group"]}?range={label}"' in html
    # 30 days: api's line shape (6) over hasupd's backup.failed (5), then api's traceback and its exit
    # records (4 each: the more recent first); db's group is 40 days old.
    assert [(g["service"], g["kind"], g["count"]) for g in want] == [
        ("api", "line", 6),
        (None, "backup.failed", 5),
        ("api", "python", 4),
        ("api", "service.exited", 4),
    ]
    response = await web.errors(make_mocked_request("GET", "/errors"))
    html = response.text or ""
    assert 'aria-current="page">30d<' in html
    # Every value is escaped: the pattern and the sample carry markup.
    assert "<b>" not in html and "ERROR &lt;b&gt;db&lt;/b&gt; query &lt;n&gt; failed" in html
    # A traceback's sample cell shows its exception; the latest incident is linked.
    assert "KeyError: &#39;user-0&#39;" in html and 'href="/incident/0123456789ab"' in html
    assert "svg" in html and "api · ERROR &lt;b&gt;db&lt;/b&gt;" in html  # the chart stays
    response = await web.errors(make_mocked_request("GET", "/errors?range=<script>"))
    assert 'aria-current="page">30d<' in (response.text or "")  # an unknown range: the default


async def group_page(web: Dashboard, group: str, query: str = "") -> tuple[int, str]:
    """Return the status and the HTML of ``/errors/GROUP?QUERY``."""
    request = make_mocked_request("GET", f"/errors/{group}?{query}", match_info={"group": group})
    response = await web.error_group(request)
    return response.status, response.text or ""


async def test_error_group_page_shows_samples_and_incidents(dashboard: tuple[Dashboard, Context]) -> None:
    web, ctx = dashboard
    ranked = await rank_errors(ctx.errors, ctx.records, since=parse_since("30d"))
    python = next(g for g in ranked if g["kind"] == "python")
    status, html = await group_page(web, python["group"])
    assert status == 200 and html.count('<pre class="output sample"') == 4
    assert html.index("KeyError: &#39;user-3&#39;") < html.index("KeyError: &#39;user-0&#39;")  # newest first
    assert 'href="/incident/0123456789ab"' in html and f"hasupctl errors show {python['group']}" in html
    own = next(g for g in ranked if g["kind"] == "backup.failed")
    status, html = await group_page(web, own["group"])
    assert "backup nightly failed: 7" in html and "It appeared in no incident." in html
    for bad in ("0" * 12, "<script>", "ABCDEF012345"):
        status, html = await group_page(web, bad)
        assert status == 404 and "<script>" not in html
    # hasupd's own groups are looked for in the range asked for: backup.failed is 2 minutes old, the
    # exit records 3 hours.
    assert (await group_page(web, own["group"], "range=1h"))[0] == 200
    exits = next(g for g in ranked if g["kind"] == "service.exited")
    assert (await group_page(web, exits["group"], "range=1h"))[0] == 404
    assert (await group_page(web, exits["group"], "range=24h"))[0] == 200


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
