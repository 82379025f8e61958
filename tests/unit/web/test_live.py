"""The live feed: bus events mark what changed; open pages get only those rows, in one message per burst;
with no page open nothing is collected."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from hasupd import events as ev
from hasupd.web.live import LiveFeed


class Source:
    """Rows of units u0..u499 and a count of how often each part was read."""

    def __init__(self) -> None:
        self.rows_read: list[list[str]] = []
        self.backups_read = 0

    def rows(self, units: list[str]) -> list[dict[str, Any]]:
        self.rows_read.append(units)
        return [{"name": u, "state": "running"} for u in units if u != "gone"]

    async def backups(self) -> list[dict[str, Any]]:
        self.backups_read += 1
        return [{"job": "nightly"}]

    def summary(self) -> dict[str, Any]:
        return {"spool_depth": 0}


def decode(data: bytes | None) -> dict[str, Any]:
    assert data is not None and data.startswith(b"data: ") and data.endswith(b"\n\n")
    message: dict[str, Any] = json.loads(data[6:])
    return message


async def test_only_what_changed_goes_out_in_one_message() -> None:
    bus, source = ev.EventBus(), Source()
    feed = LiveFeed(bus, source.rows, source.backups, source.summary)
    runner = asyncio.create_task(feed.run())
    try:
        page = feed.connect(10)
        bus.publish(ev.ServiceExited(service="u7", pid=1, result="signal", status="SIGKILL"))
        bus.publish(
            ev.ServiceRestartScheduled(service="u7", delay_sec=0.1, reason="r", restarts=1, result="signal")
        )
        bus.publish(ev.ServiceStarted(service="u9", pid=2, invocation="x"))
        bus.publish(ev.ServiceStateChanged(service="gone", old="running", new="dead", result="success"))
        message = decode(await asyncio.wait_for(page.get(), 5))
        assert [row["name"] for row in message["units"]] == ["u7", "u9"]
        assert message["removed"] == ["gone"]
        assert [e["event"] for e in message["events"]] == [
            "service.exited", "service.restart_scheduled", "service.started"
        ]  # fmt: skip
        assert "backups" not in message and message["daemon"] == {"spool_depth": 0}
        assert source.rows_read == [["gone", "u7", "u9"]]
        bus.publish(ev.BackupChecked(job="nightly", subset=""))
        message = decode(await asyncio.wait_for(page.get(), 5))
        assert message == {"backups": [{"job": "nightly"}]}
        assert page.empty()
    finally:
        runner.cancel()


async def test_nothing_is_collected_without_a_page_and_close_ends_streams() -> None:
    bus, source = ev.EventBus(), Source()
    feed = LiveFeed(bus, source.rows, source.backups, source.summary)
    runner = asyncio.create_task(feed.run())
    try:
        bus.publish(ev.ServiceStarted(service="u1", pid=2, invocation="x"))
        await asyncio.sleep(0.2)
        assert source.rows_read == []
        page = feed.connect(10)
        feed.close()
        assert await asyncio.wait_for(page.get(), 5) is None
        bus.publish(ev.ServiceStarted(service="u1", pid=3, invocation="y"))
        assert page.empty()
    finally:
        runner.cancel()


async def test_a_page_too_far_behind_is_dropped_and_told_so() -> None:
    bus, source = ev.EventBus(), Source()
    feed = LiveFeed(bus, source.rows, source.backups, source.summary)
    page = feed.connect(10)
    for i in range(1000):
        feed.broadcast({"n": i})
    assert page not in feed.clients
    assert page.qsize() == 1 and page.get_nowait() is None


async def test_beyond_the_limit_the_oldest_stream_ends() -> None:
    bus, source = ev.EventBus(), Source()
    feed = LiveFeed(bus, source.rows, source.backups, source.summary)
    pages = [feed.connect(3) for _ in range(3)]
    feed.broadcast({"n": 1})
    newest = feed.connect(3)
    assert list(feed.clients) == [pages[1], pages[2], newest]
    assert pages[0].get_nowait() is None and pages[0].empty()  # its unsent message dropped
    assert decode(pages[1].get_nowait()) == {"n": 1}
