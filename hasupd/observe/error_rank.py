"""The most common errors: the services' error groups and hasupd's own error records, ranked together.

``rank_errors`` is THE ranking (``hasupctl errors`` and the web dashboard's errors page both call it);
``error_group`` is one group in detail (``hasupctl errors show``).
"""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime
from typing import Any

from hasupd.observe.error_groups import ErrorGroups
from hasupd.observe.queries import RecordStore


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="microseconds")


def _ts(iso: str | None) -> float:
    try:
        return datetime.fromisoformat(iso).timestamp() if iso else 0.0
    except ValueError:
        return 0.0


def hasupd_group_id(event: str, service: str | None, pattern: str) -> str:
    """Return the id of a group of hasupd's own records: 12 hex digits, like the services' groups."""
    return hashlib.sha256(f"hasupd\0{event}\0{service or ''}\0{pattern}".encode()).hexdigest()[:12]


async def rank_errors(
    groups: ErrorGroups | None,
    records: RecordStore | None,
    *,
    since: float | None,
    service: str | None = None,
    limit: int | None = None,
) -> list[dict[str, Any]]:
    """Return the error groups seen since ``since`` (wall-clock seconds; None: all that is kept), most
    common first (then the most recent first, then by id, so the order is stable), at most ``limit``.

    Two sources are ranked together: the groups of the services' own output (``source: "output"``,
    counted by the hour in ``STATE_DIR/errors.sqlite``) and hasupd's own records at warning level and
    above (``source: "hasupd"``, grouped by event, service and normalised message; reactions such as
    ``incident.opened`` restate a cause and are left out). ``service`` keeps only that service's.

    Each group is a JSON-ready dict with the same keys whatever its source: ``group`` (id), ``source``,
    ``service`` (None for hasupd itself), ``kind`` ("line", "python", "java", or hasupd's event name),
    ``pattern``, ``count`` (in the time asked), ``first_seen`` and ``last_seen`` (ISO times, UTC),
    ``sample`` (one occurrence in full), ``incident`` (the latest incident it appeared in, or None) and
    ``event`` (hasupd's event name; None for the services' groups).

    Raise JournalctlError or OSError if hasupd's records cannot be read; sqlite3.Error if the groups
    cannot be.
    """
    ranked: list[dict[str, Any]] = []
    if groups is not None:
        for group in await groups.call(groups.store.groups, since, service):
            if group["count"] <= 0:
                continue
            group.pop("total", None)
            group["first_seen"] = _iso(group["first_seen"])
            group["last_seen"] = _iso(group["last_seen"])
            group["event"] = None
            ranked.append(group)
    if records is not None:
        for record in await records.errors(since):
            if record["event"].startswith(("errors.", "rule.")):
                continue  # about the services' errors, which are counted above
            if service is not None and record["service"] != service:
                continue
            ranked.append(
                {
                    "group": hasupd_group_id(record["event"], record["service"], record["pattern"]),
                    "source": "hasupd",
                    "service": record["service"],
                    "kind": record["event"],
                    "event": record["event"],
                    "pattern": record["pattern"],
                    "count": record["count"],
                    "first_seen": record["first_seen"],
                    "last_seen": record["last_seen"],
                    "sample": record["example"],
                    "incident": record["incident"],
                }
            )
    ranked.sort(key=lambda g: (-g["count"], -_ts(g["last_seen"]), g["group"]))
    return ranked[:limit] if limit is not None else ranked


async def error_group(
    groups: ErrorGroups | None, records: RecordStore | None, group: str, *, since: float | None
) -> dict[str, Any] | None:
    """Return one group: the keys of ``rank_errors`` plus ``samples`` (newest first, each with its time
    and text) and ``incidents`` (oldest first, each with its id and when the group first appeared in
    it); None if no group has that id. hasupd's own groups are looked for among those since ``since``."""
    if groups is not None:
        found = await groups.call(groups.store.group, group)
        if found is not None:
            found.pop("total", None)
            found["first_seen"] = _iso(found["first_seen"])
            found["last_seen"] = _iso(found["last_seen"])
            found["event"] = None
            for item in (*found["samples"], *found["incidents"]):
                item["time"] = _iso(item["time"])
            return found
    for item in await rank_errors(None, records, since=since):
        if item["group"] == group:
            item["samples"] = [{"time": item["last_seen"], "text": item["sample"]}]
            item["incidents"] = (
                [{"incident": item["incident"], "time": item["last_seen"]}] if item["incident"] else []
            )
            return item
    return None
