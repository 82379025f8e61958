"""Queries over hasupd's records: events, the most common errors, one incident's chain, a service's log.

Records are read from where they were written (``hasupd.observe.logs``): the journal (``journalctl -o json``
with ``SYSLOG_IDENTIFIER=hasupd`` and ``HASUPD_*`` matches, run without blocking the loop), or else the
JSON-line files under ``STATE_DIR/records`` (read in a worker thread). A service's own output comes from
``hasupd.observe.service_output.ServiceOutput``. Every query returns JSON-ready dicts, oldest first.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from hasupd import events as ev
from hasupd.host.reaper import Reaper
from hasupd.observe.logs import IDENTIFIER, RECORDS_FILE, RECORDS_KEEP, LogSetup, event_record
from hasupd.observe.service_output import JournalctlError, Line, ServiceOutput, iso, journal_value, journalctl

EVENTS_DEFAULT_LIMIT = 100
FOLLOW_HEARTBEAT_SEC = 5.0  # a heartbeat tells the server whether the follower is still there
_FOLLOW_QUEUE = 10_000
_WARNING_LEVELS = frozenset({"warning", "error", "critical"})
_LEVEL_BY_PRIORITY = {"0": "critical", "1": "critical", "2": "critical", "3": "error", "4": "warning"}
# Records that restate a failure already counted by the record that caused it (the exit, the spawn
# failure, ...): `errors` counts causes, not hasupd's reactions to them.
REACTIONS = frozenset({"service.restart_scheduled", "incident.opened", "incident.closed", "incident.output"})

_SINCE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(s|sec|m|min|h|d|w)\s*$")
_UNIT_SEC = {"s": 1, "sec": 1, "m": 60, "min": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
# Normalising messages for grouping: paths, then hex ids (incident, invocation), then numbers.
_PATH_RE = re.compile(r"(?<![\w.])/[^\s:;,'\"()\[\]]+")
_HEX_RE = re.compile(r"\b(?=[0-9a-f]*[a-f])(?=[0-9a-f]*[0-9])[0-9a-f]{8,}\b")
_NUMBER_RE = re.compile(r"\b\d+(?:\.\d+)?")  # "1.25s" -> "<n>s"

Item = tuple[float, dict[str, Any]]
Send = Callable[[Any], Awaitable[bool]]


def parse_since(text: str, now: float | None = None) -> float:
    """Return the wall-clock time ``text`` names: an age ("30d", "2h", "15m", "90s", "1w") or an ISO
    date or time (local time unless it says otherwise). Raise ValueError if it is neither."""
    now = time.time() if now is None else now
    match = _SINCE_RE.match(text)
    if match:
        return now - float(match.group(1)) * _UNIT_SEC[match.group(2)]
    try:
        return datetime.fromisoformat(text.strip()).timestamp()
    except ValueError:
        raise ValueError(f"{text!r} is neither an age (30d, 2h, 15m, 90s) nor an ISO date or time") from None


def normalise(message: str) -> str:
    """Return ``message`` with paths, hex ids and numbers replaced by placeholders, for grouping."""
    message = _PATH_RE.sub("<path>", message)
    message = _HEX_RE.sub("<id>", message)
    return _NUMBER_RE.sub("<n>", message)


def _record_time(record: dict[str, Any]) -> float:
    try:
        return datetime.fromisoformat(str(record.get("time"))).timestamp()
    except ValueError:
        return 0.0


def _journal_record(entry: dict[str, Any]) -> Item | None:
    """Return the record in a journal entry written by hasupd, or None for any other entry."""
    if "HASUPD_EVENT" not in entry:
        return None
    ts = int(journal_value(entry.get("__REALTIME_TIMESTAMP")) or 0) / 1e6
    message = journal_value(entry.get("MESSAGE"))
    try:
        record = json.loads(message)
    except json.JSONDecodeError:
        record = None
    if not isinstance(record, dict) or "event" not in record:
        # Not hasupd's JSON (sent by something else with our fields): rebuilt from the fields.
        record = {
            "time": iso(ts),
            "level": _LEVEL_BY_PRIORITY.get(journal_value(entry.get("PRIORITY")), "info"),
            "message": message,
        }
        for key, value in entry.items():
            if key.startswith("HASUPD_"):
                record[key.removeprefix("HASUPD_").lower()] = journal_value(value)
    return ts, record


@dataclass(frozen=True)
class Query:
    """Which records: all of them unless narrowed."""

    since: float | None = None
    service: str | None = None
    incident: str | None = None
    warnings: bool = False  # warning level and above only
    limit: int | None = None  # the newest this many

    def matches(self, ts: float, record: dict[str, Any]) -> bool:
        return (
            (self.since is None or ts >= self.since)
            and (self.service is None or record.get("service") == self.service)
            and (self.incident is None or record.get("incident") == self.incident)
            and (not self.warnings or record.get("level") in _WARNING_LEVELS)
        )

    def journal_args(self) -> list[str]:
        args = [f"SYSLOG_IDENTIFIER={IDENTIFIER}"]
        if self.service is not None:
            args.append(f"HASUPD_SERVICE={self.service}")
        if self.incident is not None:
            args.append(f"HASUPD_INCIDENT={self.incident}")
        if self.warnings:
            args.append("--priority=warning")
        if self.since is not None:
            args.append(f"--since=@{self.since:.6f}")
        if self.limit is not None:
            args.append(f"--lines={self.limit}")
        return args


def scan_files(folder: Path, query: Query) -> list[Item]:
    """Return the records in ``folder``'s JSON-line files that match ``query``, oldest first.

    Blocking: run it in a worker thread. Files are read newest first and reading stops once they are
    older than ``since`` or hold ``limit`` matches.
    """
    current = folder / RECORDS_FILE
    files = [current, *(current.with_name(f"{RECORDS_FILE}.{i}") for i in range(1, RECORDS_KEEP + 1))]
    found: list[Item] = []
    for path in files:
        try:
            if query.since is not None and path.stat().st_mtime < query.since:
                break  # this file and every older one end before `since`
            with open(path, encoding="utf-8", errors="replace") as f:
                lines = f.readlines()
        except FileNotFoundError:
            continue
        chunk: list[Item] = []
        for line in lines:
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line cut by a crash or a full disk
            if isinstance(record, dict):
                ts = _record_time(record)
                if query.matches(ts, record):
                    chunk.append((ts, record))
        found = chunk + found
        if query.limit is not None and len(found) >= query.limit:
            break
    found.sort(key=lambda item: item[0])  # stable: the write order stays within one millisecond
    return found[-query.limit :] if query.limit is not None else found


class RecordStore:
    """Reads records back from the journal or the JSON-line files, as ``setup`` wrote them."""

    def __init__(
        self, setup: LogSetup, output: ServiceOutput, reaper: Reaper | None, bus: ev.EventBus
    ) -> None:
        self._setup = setup
        self.output = output
        self._reaper = reaper
        self.bus = bus
        self._level = setup.logger.getEffectiveLevel()

    @property
    def source(self) -> str:
        """Where records are read from: "journal", the records folder, or "none"."""
        if self._setup.journal:
            return "journal"
        return str(self._setup.records_dir) if self._setup.records_dir is not None else "none"

    async def records(self, query: Query) -> list[Item]:
        """Return the records matching ``query``, oldest first. Raise JournalctlError."""
        if self._setup.journal:
            found: list[Item] = []

            def add(entry: dict[str, Any]) -> None:
                item = _journal_record(entry)
                if item is not None and query.matches(*item):
                    found.append(item)

            await journalctl(query.journal_args(), self._reaper, add)
            return found
        if self._setup.records_dir is None:
            return []
        return await asyncio.to_thread(scan_files, self._setup.records_dir, query)

    async def events(self, query: Query) -> list[dict[str, Any]]:
        """Return the records matching ``query`` (the newest 100 when it names no time or limit)."""
        if query.since is None and query.limit is None:
            query = Query(service=query.service, incident=query.incident, limit=EVENTS_DEFAULT_LIMIT)
        return [record for _, record in await self.records(query)]

    async def errors(self, since: float | None) -> list[dict[str, Any]]:
        """Return warning-and-above records grouped by (event, service, normalised message), most common
        first: count, first and last seen, the latest example message and incident id."""
        groups: dict[tuple[str, str, str], dict[str, Any]] = {}
        for ts, record in await self.records(Query(since=since, warnings=True)):
            event = str(record.get("event", ""))
            if event in REACTIONS:
                continue
            service = str(record.get("service") or "")
            pattern = normalise(str(record.get("message", "")))
            group = groups.setdefault(
                (event, service, pattern),
                {"event": event, "service": service or None, "pattern": pattern, "count": 0,
                 "first_seen": record.get("time"), "level": record.get("level"), "incident": None},
            )  # fmt: skip
            group["count"] += 1
            group["last_seen"] = record.get("time")
            group["last_ts"] = ts
            group["example"] = record.get("message")
            group["incident"] = record.get("incident") or group["incident"]
        ranked = sorted(groups.values(), key=lambda g: (-g["count"], -g["last_ts"]))
        for group in ranked:
            del group["last_ts"]
        return ranked

    async def incident(self, incident: str) -> dict[str, Any] | None:
        """Return one incident: its records in order (first sign to outcome) and the output before it;
        None if no record carries that id."""
        items = await self.records(Query(incident=incident))
        if not items:
            return None
        chain = [r for _, r in items if r.get("event") != ev.IncidentOutput.NAME]
        outputs = [r for _, r in items if r.get("event") == ev.IncidentOutput.NAME]
        opened = next(
            (r for r in chain if r.get("event") == ev.IncidentOpened.NAME), chain[0] if chain else {}
        )
        closed = next((r for r in chain if r.get("event") == ev.IncidentClosed.NAME), None)
        output = outputs[-1] if outputs else None
        return {
            "incident": incident,
            "service": opened.get("service") or items[0][1].get("service"),
            "reason": opened.get("reason"),
            "opened": opened.get("time"),
            "closed": closed.get("time") if closed else None,
            "outcome": closed.get("outcome") if closed else None,
            "records": chain,
            "output": {
                "lines": list(output.get("lines") or []) if output else [],
                "source": output.get("source") if output else None,
                "error": output.get("error") if output else None,
            },
        }

    async def logs(self, name: str, lines: int) -> list[dict[str, Any]]:
        """Return the last ``lines`` of ``name``'s output and records about it, merged in time order.

        Raise JournalctlError if the journal cannot be read, OSError if a log file cannot.
        """
        records = await self.records(Query(service=name, limit=lines))
        output = await self.output.tail(name, lines)
        # At equal times output goes first: it was written before hasupd recorded what followed.
        merged = sorted(
            [(ts, 0, item) for ts, item in output] + [(ts, 1, item) for ts, item in records],
            key=lambda x: (x[0], x[1]),
        )
        return [item for _, _, item in merged[-lines:]] if lines > 0 else []

    def follower(self, name: str) -> Follower:
        """Return a follower of ``name`` that already collects what is published from now on."""
        return Follower(self, name, self._level)


def _key(record: dict[str, Any]) -> tuple[Any, ...]:
    return (record.get("time"), record.get("event"), record.get("output"))


class Follower:
    """``hasupctl logs -f``: records about one service from the bus, its output from the journal or its
    log file, sent as they come until the client goes away (``send`` returns False) or it is cancelled."""

    def __init__(self, store: RecordStore, name: str, level: int) -> None:
        self._store = store
        self._name = name
        self._level = level
        self._queue: asyncio.Queue[Item] = asyncio.Queue(_FOLLOW_QUEUE)
        self.dropped = 0  # records a slow client missed
        self._unsubscribe = store.bus.subscribe(self._on_event)

    def _put(self, item: Item) -> None:
        try:
            self._queue.put_nowait(item)
        except asyncio.QueueFull:
            self.dropped += 1

    def _on_event(self, event: ev.Event) -> None:
        if event.service == self._name and event.level() >= self._level:
            self._put((event.time, event_record(event)))

    def close(self) -> None:
        """Stop collecting (also done when ``run`` ends)."""
        self._unsubscribe()
        self._unsubscribe = lambda: None

    async def run(self, initial: list[dict[str, Any]], send: Send) -> None:
        """Send ``initial``, then every new record and output line, and a heartbeat (None) when quiet."""
        seen = {_key(item) for item in initial if "event" in item}
        try:
            async with asyncio.TaskGroup() as tasks:
                output = tasks.create_task(self._follow_output())
                try:
                    for item in initial:
                        if not await send(item):
                            return
                    while True:
                        try:
                            _, item = await asyncio.wait_for(self._queue.get(), FOLLOW_HEARTBEAT_SEC)
                        except TimeoutError:
                            if not await send(None):
                                return
                            continue
                        if "event" in item and _key(item) in seen:
                            continue  # already in the initial lines
                        if not await send(item):
                            return
                finally:
                    output.cancel()
        finally:
            self.close()

    async def _follow_output(self) -> None:
        def put(line: Line) -> None:
            self._put(line)

        try:
            await self._store.output.follow(self._name, put)
        except (JournalctlError, OSError) as e:
            self._put((time.time(), {"time": iso(time.time()), "service": self._name, "error": str(e)}))
