"""Error groups from the services' own output: read it after it was written, never in its way.

hasupd does not look at output on its way out (``hasupd.host.output`` splices it into a file or the
service writes straight to journald), so it is read back:

- ``output: file``: the drain calls ``wake(unit)`` once per loop wake-up that moved bytes (not per line);
  ``SCAN_DELAY_SEC`` later the new bytes of ``LOG_DIR/UNIT.log`` (and the rest of ``UNIT.log.1`` after
  a rotation) are read in one batch.
- ``output: journal``: ONE ``journalctl --follow`` for all such units (``SYSLOG_IDENTIFIER=`` matches,
  restarted from its cursor when the set of units changes); entries are collected and handled in
  batches the same way.

A batch is split into lines, assembled into error events (``hasupd.observe.error_lines``), fingerprinted
and counted in ``ErrorStore`` in one transaction, all on ONE worker thread; then, on the loop,
``errors.new_group``, ``errors.seen`` and ``output.seen`` are published for the rules
(``hasupd.alerts.rules``). What has been read is saved, so a restart of hasupd neither counts a line
twice nor skips one written while it was down (files; the journal from its saved cursor). A log file
that has no saved position when hasupd starts is read from its end: its history is not imported.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import sqlite3
import sys
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, TypeVar

from hasupd import events as ev
from hasupd.config.model import ServiceConfig
from hasupd.host.reaper import Reaper
from hasupd.observe.error_lines import Assembler, Classifier, ErrorEvent
from hasupd.observe.error_store import RESTART_KEY, ErrorStore, Seen
from hasupd.observe.service_output import JournalctlError, journal_value, journalctl
from hasupd.states import OutputMode

SCAN_DELAY_SEC = 0.2  # output is read at most this often per unit: batches, not lines
READ_MAX = 8 * 1024 * 1024  # bytes read per batch; more is read in the next one at once
PRUNE_EVERY_SEC = 3600.0
JOURNAL_RETRY_SEC = 5.0
JOURNAL_KEY = "journal"  # the journal's cursor is saved under this "unit"
_JOURNAL_FIELDS = "MESSAGE,PRIORITY,SYSLOG_IDENTIFIER,_TRANSPORT,_STREAM_ID"
T = TypeVar("T")


class Unit(Protocol):
    @property
    def config(self) -> ServiceConfig: ...

    @property
    def output(self) -> OutputMode: ...


class Source(Protocol):
    """The services (the Manager)."""

    @property
    def services(self) -> Mapping[str, Unit]: ...


# A line from the journal: text, time, PRIORITY when the program set it, stream id
JournalLine = tuple[str, float, int | None, str]


@dataclass
class _Reader:
    """How far one unit's output has been read, and its unfinished events."""

    service: str
    patterns: tuple[str, ...]
    assembler: Assembler
    inode: int = -1
    pos: int = 0
    partial: bytes = b""
    entries: list[JournalLine] = field(default_factory=list)  # journal lines not handled yet
    skipped: int = 0  # journal lines the filter only counted (nothing in them for the error groups)
    # The journal: one assembler per stream (stdout and stderr arrive apart, and may interleave).
    streams: dict[str, Assembler] = field(default_factory=dict)


@dataclass(frozen=True)
class Batch:
    unit: str
    service: str
    lines: int
    seen: list[Seen]
    more: bool = False  # the log file holds more than one batch read


class ErrorGroups:
    """Reads services' output back and keeps its error groups (see the module docstring).

    ``run()`` reads (in its own TaskGroup) until cancelled; ``close()`` then closes the store.
    """

    def __init__(
        self,
        bus: ev.EventBus,
        source: Source,
        state_dir: Path,
        reaper: Reaper | None,
        *,
        log_dir: Path | None = None,
        store: ErrorStore | None = None,
    ) -> None:
        self._bus = bus
        self._source = source
        self.log_dir = log_dir or state_dir / "logs"
        self.store = store or ErrorStore(state_dir)
        self._reaper = reaper
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="hasupd-errors")
        self._readers: dict[str, _Reader] = {}
        self._incidents: dict[str, str] = {}  # unit -> its open incident
        self._queue: asyncio.Queue[str] = asyncio.Queue()
        self._due: set[str] = set()
        self._journal_units: frozenset[str] = frozenset()
        self._journal_changed = asyncio.Event()
        self.failure: str | None = None  # why the last batch could not be kept, if it could not
        self.journal_failure: str | None = None  # why journalctl last failed (cleared by an entry)
        self._journal_cursor = ""
        self._started = time.time()
        # Now, before any service starts (and writes what would then be taken for history).
        try:
            self._prime()
        except (sqlite3.Error, OSError) as error:
            self.failure = f"{type(error).__name__}: {error}"
        bus.subscribe(self._on_event)

    # ------------------------------------------------------------------ from the drains and the bus

    def wake(self, unit: str) -> None:
        """New output of ``unit`` is in its log file (called by the drain; cheap, never blocks)."""
        if unit not in self._due:
            self._due.add(unit)
            asyncio.get_running_loop().call_later(SCAN_DELAY_SEC, self._queue.put_nowait, unit)

    def _on_event(self, event: ev.Event) -> None:
        if event.service is None:
            return
        if isinstance(event, ev.IncidentOpened) and event.incident is not None:
            self._incidents.setdefault(event.service, event.incident)
        elif isinstance(event, ev.IncidentClosed):
            if self._incidents.get(event.service) == event.incident:
                del self._incidents[event.service]
        elif isinstance(event, ev.ServiceRestartScheduled):
            service = self._service_name(event.service)
            self.submit(self.store.count, RESTART_KEY + service, event.time)
        elif isinstance(event, ev.ServiceStarted):
            unit = self._source.services.get(event.service)
            if (
                unit is not None
                and unit.output is OutputMode.JOURNAL
                and event.service not in self._journal_units
            ):
                self._journal_changed.set()

    def _service_name(self, unit: str) -> str:
        found = self._source.services.get(unit)
        return found.config.name if found is not None else unit.split("@", 1)[0]

    # ------------------------------------------------------------------ running

    def submit(self, fn: Callable[..., object], *args: Any) -> None:
        """Run ``fn(*args)`` on the store's worker thread, without waiting for it."""
        self._executor.submit(fn, *args)

    async def call(self, fn: Callable[..., T], *args: Any) -> T:
        """Run ``fn(*args)`` on the store's worker thread (queries, writes: one at a time)."""
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    async def run(self) -> None:
        """Read output and keep the groups until cancelled."""
        async with asyncio.TaskGroup() as tasks:
            tasks.create_task(self._follow_journal())
            tasks.create_task(self._prune())
            while True:
                unit = await self._queue.get()
                self._due.discard(unit)
                reader = self._reader(unit)
                if reader is None:
                    continue
                entries, reader.entries = reader.entries, []  # on the loop, where they are added
                skipped, reader.skipped = reader.skipped, 0
                if skipped and not entries:  # journal lines the filter only counted: nothing to scan
                    self._bus.publish(ev.OutputSeen(service=reader.service, lines=skipped))
                    continue
                cursor = self._journal_cursor if entries else None
                incident = self._incidents.get(unit)
                batch = await self._guarded(self._scan, unit, reader, entries, cursor, incident)
                if batch is not None:
                    if skipped:
                        batch = dataclasses.replace(batch, lines=batch.lines + skipped)
                    self._publish(batch)

    def close(self) -> None:
        """Stop the worker and close the store (after ``run`` ended)."""
        self._executor.shutdown(wait=True)
        self.store.close()

    def _reader(self, unit: str) -> _Reader | None:
        """Return the reader of ``unit`` with its current patterns; None if the unit is gone."""
        found = self._source.services.get(unit)
        if found is None:
            self._readers.pop(unit, None)
            return None
        patterns = found.config.errors.match
        reader = self._readers.get(unit)
        if reader is None:
            reader = _Reader(found.config.name, patterns, Assembler(Classifier(patterns)))
            self._readers[unit] = reader
        elif reader.patterns != patterns:  # a reload changed them: in place, the service runs on
            if bool(reader.patterns) != bool(patterns) and found.output is OutputMode.JOURNAL:
                self._journal_changed.set()  # the journal filter passes all its lines on, or no longer
            reader.patterns = patterns
            reader.assembler.classifier = Classifier(patterns)
            for assembler in reader.streams.values():
                assembler.classifier = reader.assembler.classifier
        return reader

    def _publish(self, batch: Batch) -> None:
        for seen in batch.seen:
            if seen.new:
                self._bus.publish(
                    ev.ErrorGroupNew(
                        service=batch.service,
                        incident=None,
                        group=seen.group,
                        kind=seen.kind,
                        pattern=seen.pattern,
                        sample=seen.sample[:2000],
                    )
                )
            self._bus.publish(
                ev.ErrorsSeen(
                    service=batch.service, group=seen.group, count=seen.count, sample=seen.sample[:2000]
                )
            )
        if batch.lines:
            self._bus.publish(ev.OutputSeen(service=batch.service, lines=batch.lines))
        if batch.more:
            self.wake(batch.unit)

    async def _guarded(self, fn: Callable[..., T], *args: Any) -> T | None:
        """``call``, but a failure of the disk or the database is recorded (once until it works
        again) and None returned: error groups are an observer, supervision must go on."""
        try:
            result = await self.call(fn, *args)
        except (sqlite3.Error, OSError) as error:
            text = f"{type(error).__name__}: {error}"
            if self.failure is None:
                self._bus.publish(ev.ErrorGroupsFailed(error=text))
            self.failure = text
            return None
        self.failure = None
        return result

    async def _prune(self) -> None:
        while True:
            await self._guarded(self.store.prune, time.time())
            await asyncio.sleep(PRUNE_EVERY_SEC)

    # ------------------------------------------------------------------ on the worker thread

    def _prime(self) -> None:
        """Log files that have no saved position are read from their end (history is not imported).
        Blocking; runs once, when hasupd starts."""
        try:
            names = os.listdir(self.log_dir)
        except FileNotFoundError:
            names = []
        for name in names:
            if name.endswith(".log") and self.store.offset(name[:-4]) is None:
                st = os.stat(self.log_dir / name)
                self.store.save_offset(name[:-4], st.st_ino, st.st_size)

    def _scan(
        self,
        unit: str,
        reader: _Reader,
        entries: list[JournalLine],
        cursor: str | None,
        incident: str | None,
    ) -> Batch:
        more = False
        events: list[ErrorEvent] = []
        if entries:
            for text, when, priority, stream in entries:
                assembler = reader.streams.get(stream)
                if assembler is None:
                    assembler = reader.streams[stream] = Assembler(reader.assembler.classifier)
                assembler.feed(text, when, priority)
            lines = len(entries)
            for stream, assembler in list(reader.streams.items()):
                assembler.flush()
                events += assembler.take()
                if assembler.idle:
                    del reader.streams[stream]
        else:
            lines, more = self._scan_file(unit, reader)
            reader.assembler.flush()
            events = reader.assembler.take()
        seen = self.store.record(reader.service, events, incident) if events else []
        if reader.inode >= 0:
            self.store.save_offset(unit, reader.inode, reader.pos - len(reader.partial))
        if cursor:
            self.store.save_offset(JOURNAL_KEY, -1, 0, cursor)
        return Batch(unit, reader.service, lines, seen, more)

    def _scan_file(self, unit: str, reader: _Reader) -> tuple[int, bool]:
        """Read what was added to the unit's log file; return the lines read and whether more waits."""
        path = self.log_dir / f"{unit}.log"
        try:
            st = os.stat(path)
        except FileNotFoundError:
            return 0, False
        if reader.inode < 0:
            saved = self.store.offset(unit)
            reader.inode, reader.pos = (saved[0], saved[1]) if saved else (st.st_ino, 0)
        data = b""
        if st.st_ino != reader.inode:  # rotated: the rest of the file it was, then the new one
            rotated = path.with_name(path.name + ".1")
            try:
                if os.stat(rotated).st_ino == reader.inode:
                    data = _read(rotated, reader.pos, READ_MAX)
            except FileNotFoundError:
                pass
            reader.inode, reader.pos = st.st_ino, 0
        elif st.st_size < reader.pos:  # truncated by someone else
            reader.pos = 0
        new = _read(path, reader.pos, READ_MAX - len(data))
        reader.pos += len(new)
        return self._feed(reader, data + new, time.time()), reader.pos < st.st_size

    @staticmethod
    def _feed(reader: _Reader, data: bytes, when: float) -> int:
        *complete, reader.partial = (reader.partial + data).split(b"\n")
        feed = reader.assembler.feed
        for raw in complete:
            feed(raw.decode("utf-8", "replace"), when)
        return len(complete)

    # ------------------------------------------------------------------ the journal

    async def _follow_journal(self) -> None:
        """Follow the journal for the units with ``output: journal``; restart when they change."""
        while True:
            self._journal_changed.clear()
            units = frozenset(n for n, u in self._source.services.items() if u.output is OutputMode.JOURNAL)
            self._journal_units = units
            if not units:
                await self._journal_changed.wait()
                continue
            saved = await self.call(self.store.offset, JOURNAL_KEY)
            args = ["--follow", f"--output-fields={_JOURNAL_FIELDS}"]
            # Without a cursor (the first run): from when this hasupd started, so nothing a service wrote
            # before journalctl was up is missed.
            args.append(
                f"--after-cursor={saved[2]}" if saved and saved[2] else f"--since=@{self._started:.6f}"
            )
            args += [f"SYSLOG_IDENTIFIER={unit}" for unit in sorted(units)]
            # Through hasupd.observe.journal_filter (a process of its own): only lines that can be
            # errors reach hasupd; reading the journal back costs the supervising process nothing per line.
            through = [sys.executable, "-m", "hasupd.observe.journal_filter"]
            for unit in sorted(units):
                through += ["--unit", unit]
                found = self._source.services.get(unit)
                if found is not None and found.config.errors.match:
                    through += ["--every-line-of", unit]
            through.append("--")
            async with asyncio.TaskGroup() as tasks:
                follower = tasks.create_task(self._journal_once(args, through))
                changed = tasks.create_task(self._journal_changed.wait())
                await asyncio.wait({follower, changed}, return_when=asyncio.FIRST_COMPLETED)
                follower.cancel()
                changed.cancel()
            if not changed.done() or changed.cancelled():
                await asyncio.sleep(JOURNAL_RETRY_SEC)  # journalctl ended by itself: not in a tight loop

    async def _journal_once(self, args: list[str], through: list[str]) -> None:
        try:
            await journalctl(args, self._reaper, self._on_journal_entry, through=through)
        except JournalctlError as error:  # journald gone for now; the cursor is kept
            if "seek to cursor" in str(error) and any(a.startswith("--after-cursor=") for a in args):
                # A saved cursor journalctl rejects (damaged): retried as it is, it would fail forever.
                await self._guarded(self.store.forget_cursor, JOURNAL_KEY, f"journalctl: {error}")
            if self.journal_failure is None:
                self._bus.publish(ev.ErrorGroupsFailed(error=f"reading the journal: {error}"))
            self.journal_failure = str(error)

    def _on_journal_entry(self, entry: dict[str, Any]) -> None:
        self.journal_failure = None
        skipped = entry.get("__hasupd_skipped")
        if isinstance(skipped, dict):  # the filter's summary of lines it did not pass on
            for name, count in skipped.items():
                if isinstance(count, int) and (counted := self._reader(str(name))) is not None:
                    counted.skipped += count
                    self._make_due(str(name))
            self._journal_cursor = journal_value(entry.get("__CURSOR")) or self._journal_cursor
            return
        unit = journal_value(entry.get("SYSLOG_IDENTIFIER"))
        if "HASUPD_EVENT" in entry:
            return
        reader = self._reader(unit)
        if reader is None:
            return
        text = journal_value(entry.get("MESSAGE"))
        when = int(journal_value(entry.get("__REALTIME_TIMESTAMP")) or 0) / 1e6
        priority = None
        if journal_value(entry.get("_TRANSPORT")) != "stdout":  # the program set it itself
            with contextlib.suppress(ValueError):
                priority = int(journal_value(entry.get("PRIORITY")))
        stream = journal_value(entry.get("_STREAM_ID"))
        for line in text.split("\n"):
            reader.entries.append((line, when, priority, stream))
        self._journal_cursor = journal_value(entry.get("__CURSOR")) or self._journal_cursor
        self._make_due(unit)

    def _make_due(self, unit: str) -> None:
        if unit not in self._due:
            self._due.add(unit)
            asyncio.get_running_loop().call_later(SCAN_DELAY_SEC, self._queue.put_nowait, unit)


def _read(path: Path, start: int, limit: int) -> bytes:
    with open(path, "rb") as f:
        f.seek(start)
        return f.read(max(0, limit))
