"""The one ranking of errors (hasupd.observe.error_rank): the services' groups and hasupd's own error
records together, most common first, then most recent; one group in detail."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from hasupd import events as ev
from hasupd.observe.error_groups import ErrorGroups
from hasupd.observe.error_lines import ErrorEvent
from hasupd.observe.error_rank import error_group, hasupd_group_id, rank_errors

NOW = 1_796_000_000.0


class Records:
    """hasupd's own error records, as RecordStore.errors groups them."""

    def __init__(self, groups: list[dict[str, Any]]) -> None:
        self.groups = groups
        self.asked: list[float | None] = []

    async def errors(self, since: float | None) -> list[dict[str, Any]]:
        self.asked.append(since)
        return self.groups


class Source:
    services: dict[str, Any] = {}


def record_group(event: str, service: str | None, count: int, pattern: str) -> dict[str, Any]:
    return {
        "event": event, "service": service, "pattern": pattern, "count": count, "level": "warning",
        "first_seen": "2026-12-01T10:00:00+00:00", "last_seen": "2026-12-01T11:00:00+00:00",
        "example": pattern.replace("<n>", "7"), "incident": "abc123def456",
    }  # fmt: skip


async def test_output_groups_and_hasupd_records_ranked_together(tmp_path: Path) -> None:
    groups = ErrorGroups(ev.EventBus(), Source(), tmp_path, None)
    try:
        lines = [ErrorEvent("line", f"ERROR a {i}", NOW + i) for i in range(5)]
        lines += [ErrorEvent("line", f"ERROR b {i}", NOW + 100 + i) for i in range(3)]
        await groups.call(groups.store.record, "app", lines, None)
        await groups.call(groups.store.record, "db", [ErrorEvent("line", "FATAL x", NOW)] * 3, "fedcba987654")
        records = Records(
            [
                record_group("service.exited", "app", 4, "app (pid <n>) exited unexpectedly with SIGKILL"),
                record_group("errors.failed", None, 9, "error groups are not being kept: disk full"),
            ]
        )
        ranked = await rank_errors(groups, records, since=None)  # type: ignore[arg-type]
        assert [(g["source"], g["service"], g["count"]) for g in ranked] == [
            ("output", "app", 5),
            ("hasupd", "app", 4),
            ("output", "app", 3),  # ties on the count: the most recent first
            ("output", "db", 3),
        ]
        assert ranked[1]["group"] == hasupd_group_id("service.exited", "app", ranked[1]["pattern"])
        assert ranked[1]["kind"] == ranked[1]["event"] == "service.exited"
        assert ranked[0]["kind"] == "line" and ranked[0]["event"] is None
        assert [g["service"] for g in await rank_errors(groups, records, since=None, service="db")] == ["db"]  # type: ignore[arg-type]
        assert len(await rank_errors(groups, records, since=None, limit=2)) == 2  # type: ignore[arg-type]
        assert await rank_errors(groups, None, since=NOW + 10 * 86400) == []

        db = await error_group(groups, None, ranked[3]["group"], since=None)
        assert db is not None and db["incidents"][0]["incident"] == "fedcba987654"
        assert [s["text"] for s in db["samples"]] == ["FATAL x"] * 3
        own = await error_group(groups, records, ranked[1]["group"], since=None)  # type: ignore[arg-type]
        assert own is not None and own["samples"][0]["text"].startswith("app (pid 7)")
        assert own["incidents"] == [{"incident": "abc123def456", "time": own["last_seen"]}]
        assert await error_group(groups, records, "0" * 12, since=None) is None  # type: ignore[arg-type]
    finally:
        await asyncio.sleep(0)
        groups.close()
