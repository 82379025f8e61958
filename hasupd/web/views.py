"""What each dashboard page shows, as JSON-ready dicts: built on the control commands' own queries
(``status``, ``backup status``/``list``, ``incident``, ``errors``/``errors show``) and the record store,
never on a copy of them.

Every function here reads; none changes anything.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from hasupd import events as ev
from hasupd.control.commands import backup as backup_commands
from hasupd.control.commands import records as record_commands
from hasupd.control.commands.services import service_status
from hasupd.control.context import CommandError, Context
from hasupd.control.protocol import Exit
from hasupd.observe.error_rank import error_group, rank_errors
from hasupd.observe.queries import Query, RecordStore, parse_since
from hasupd.observe.service_output import JournalctlError

OUTPUT_LINES = 30
INCIDENTS_SHOWN = 20
# The ranges the errors page offers, by their label (an age ``parse_since`` reads).
ERROR_RANGES = ("1h", "24h", "7d", "30d", "90d")
DEFAULT_ERROR_RANGE = record_commands.DEFAULT_ERRORS_SINCE  # as `hasupctl errors`
# Records that say a unit ended or began a run: the restart/exit timeline counts them.
_EXITS = frozenset({ev.ServiceExited.NAME, ev.ServiceSpawnFailed.NAME})
_STARTS = frozenset({ev.ServiceStarted.NAME})
_BACKUP_EVENTS = frozenset(
    {
        ev.BackupFinished.NAME,
        ev.BackupFailed.NAME,
        ev.BackupChecked.NAME,
        ev.BackupCheckFailed.NAME,
        ev.BackupCopied.NAME,
        ev.DrillFinished.NAME,
    }
)


def unit_row(ctx: Context, unit: str) -> dict[str, Any]:
    """Return one unit's overview row: ``hasupctl status`` of it, plus its start time for a live uptime."""
    service = ctx.manager.services[unit]
    row = service_status(service)
    # The uptime ticks in the page from this (wall clock), so the server sends nothing while it grows.
    row["active_since"] = service.status().active_since
    return row


def unit_rows(ctx: Context) -> list[dict[str, Any]]:
    """Return every unit's row, by name."""
    return [unit_row(ctx, unit) for unit in sorted(ctx.manager.services)]


async def backup_rows(ctx: Context) -> list[dict[str, Any]]:
    """Return ``hasupctl backup status`` of every job ([] before backups are set up)."""
    if ctx.backups is None:
        return []
    rows: list[dict[str, Any]] = await backup_commands.status(ctx, {})
    for row in rows:
        age, max_age = row.get("age_sec"), row.get("max_age_sec")
        row["stale"] = max_age is not None and (age is None or age > max_age)
        drill = row.get("last", {}).get("drill")
        row["last_drill"] = drill
    return rows


def daemon_summary(ctx: Context, started: float) -> dict[str, Any]:
    """Return hasupd's version, pid and uptime, and the alert spool's depth."""
    info = ctx.reloader.daemon_info()
    return {
        "version": info.get("version"),
        "pid": info.get("pid"),
        "started": started,
        "uptime_sec": round(time.time() - started),
        "spool_depth": ctx.alerts.depth if ctx.alerts is not None else None,
    }


async def overview(ctx: Context, started: float) -> dict[str, Any]:
    """Return the overview page: units, backups, hasupd itself."""
    return {
        "units": unit_rows(ctx),
        "backups": await backup_rows(ctx),
        "daemon": daemon_summary(ctx, started),
    }


@dataclass(frozen=True)
class Buckets:
    """A time axis cut into equal buckets: ``count`` of ``width`` seconds ending at ``end``."""

    end: float
    width: float
    count: int

    def index(self, ts: float) -> int | None:
        """Return the bucket of ``ts``, or None when it is outside the axis."""
        i = int((ts - (self.end - self.width * self.count)) // self.width)
        return i if 0 <= i < self.count else None


def timeline(items: list[tuple[float, dict[str, Any]]], axis: Buckets) -> list[dict[str, int]]:
    """Return per bucket of ``axis`` how many exits (crash or failure to spawn) and starts it holds."""
    out = [{"exits": 0, "starts": 0} for _ in range(axis.count)]
    for ts, record in items:
        i = axis.index(ts)
        event = record.get("event")
        if i is None:
            continue
        if event in _EXITS:
            out[i]["exits"] += 1
        elif event in _STARTS:
            out[i]["starts"] += 1
    return out


def _store(ctx: Context) -> RecordStore:
    if ctx.records is None:
        raise CommandError(Exit.FAILED, "this hasupd keeps no records it can read back")
    return ctx.records


async def service_page(ctx: Context, name: str, now: float | None = None) -> dict[str, Any] | None:
    """Return the page of service (or unit) ``name``: its units, timelines over 24 h (hourly) and 30 d
    (daily), probes with their latest results, its last output lines and incidents; None if unknown."""
    units = [u for u in ctx.manager.resolve(name) if u in ctx.manager.services] if name else []
    if not units:
        return None
    now = time.time() if now is None else now
    store = _store(ctx)
    items: list[tuple[float, dict[str, Any]]] = []
    for unit in units:
        items += await store.records(Query(since=now - 30 * 86400, service=unit))
    items.sort(key=lambda item: item[0])
    day = Buckets(end=now, width=3600, count=24)
    month = Buckets(end=now, width=86400, count=30)
    config = ctx.manager.services[units[0]].config
    latest: dict[str, dict[str, Any]] = {}
    for _, record in items:
        if record.get("event") in (ev.HealthFailed.NAME, ev.HealthRecovered.NAME):
            latest[str(record.get("probe"))] = record
    probes = [
        {
            "kind": str(p.kind),
            "target": p.target or " ".join(p.argv),
            "interval_sec": p.interval_sec,
            "latest": latest.get(str(p.kind)),
        }
        for p in config.health
    ]
    incidents: dict[str, dict[str, Any]] = {}
    for _, record in items:
        incident = record.get("incident")
        if incident:
            entry = incidents.setdefault(
                str(incident),
                {"id": incident, "unit": record.get("service"), "opened": record.get("time"), "closed": None},
            )
            if record.get("event") == ev.IncidentOpened.NAME:
                entry["reason"] = record.get("reason")
            if record.get("event") == ev.IncidentClosed.NAME:
                entry["closed"] = record.get("time")
                entry["outcome"] = record.get("outcome")
    output: list[dict[str, Any]] = []
    for unit in units:
        try:
            output += [item for _, item in await store.output.tail(unit, OUTPUT_LINES)]
        except (JournalctlError, OSError) as e:
            output.append({"service": unit, "error": str(e)})
    return {
        "name": name,
        "description": config.description,
        "units": [unit_row(ctx, u) for u in units],
        "day": timeline(items, day),
        "month": timeline(items, month),
        "now": now,
        "probes": probes,
        "output": output,
        "incidents": sorted(incidents.values(), key=lambda i: str(i["opened"]), reverse=True)[
            :INCIDENTS_SHOWN
        ],
    }


async def incident_page(ctx: Context, incident: str) -> dict[str, Any] | None:
    """Return ``hasupctl incident ID`` (the chain, the output tail) plus the alerts sent for it; None if
    no record carries that id."""
    try:
        found: dict[str, Any] = await record_commands.incident(ctx, {"id": incident})
    except CommandError as error:
        if error.code is Exit.NOT_FOUND:
            return None
        raise
    alerts = (ev.AlertSent.NAME, ev.AlertFailed.NAME, ev.AlertDropped.NAME)
    found["alerts"] = [r for r in found["records"] if r.get("event") in alerts]
    return found


async def errors_page(ctx: Context, label: str) -> list[dict[str, Any]]:
    """Return ``hasupctl errors --since LABEL``: THE ranking (``hasupd.observe.error_rank.rank_errors``)
    of the services' error groups and hasupd's own error records, most common first.

    Raise JournalctlError or OSError if hasupd's records cannot be read; sqlite3.Error if the groups
    cannot be.
    """
    return await rank_errors(ctx.errors, ctx.records, since=parse_since(label))


async def error_group_page(ctx: Context, group: str, label: str) -> dict[str, Any] | None:
    """Return ``hasupctl errors show GROUP --since LABEL``: the group with its samples and the incidents
    it appeared in; None if no group has that id (hasupd's own groups are looked for in ``label``)."""
    return await error_group(ctx.errors, ctx.records, group, since=parse_since(label))


def error_label(group: dict[str, Any]) -> str:
    """Return how the ranking chart names a group: its owner and its pattern."""
    return f"{group['service'] or 'hasupd'} · {group['pattern']}"


async def backups_page(ctx: Context, now: float | None = None) -> list[dict[str, Any]]:
    """Return per job: its status, snapshots (``hasupctl backup list``), the bytes each backup added
    over 90 days, and its checks, drills and long-term copies from the records."""
    now = time.time() if now is None else now
    jobs = await backup_rows(ctx)
    store = _store(ctx)
    history = [
        (ts, r)
        for ts, r in await store.records(Query(since=now - 90 * 86400))
        if r.get("event") in _BACKUP_EVENTS
    ]
    for job in jobs:
        name = job["job"]
        try:
            job["snapshots"] = await backup_commands.list_snapshots(ctx, {"job": name})
            job["snapshots_error"] = None
        except CommandError as error:
            job["snapshots"], job["snapshots_error"] = [], str(error)
        mine = [(ts, r) for ts, r in history if r.get("job") == name]
        job["sizes"] = [
            {"ts": ts, "time": r.get("time"), "bytes": int(r.get("bytes_added") or 0)}
            for ts, r in mine
            if r.get("event") == ev.BackupFinished.NAME
        ]
        job["checks"] = [
            r for _, r in mine if r.get("event") in (ev.BackupChecked.NAME, ev.BackupCheckFailed.NAME)
        ][-10:]
        job["drills"] = [r for _, r in mine if r.get("event") == ev.DrillFinished.NAME][-10:]
        job["copies"] = [r for _, r in mine if r.get("event") == ev.BackupCopied.NAME][-10:]
    return jobs
