"""A service's own output, read back: its last lines, following new ones, and the tail before an incident.

Output that goes to the journal is read with ``journalctl`` (``SYSLOG_IDENTIFIER=<unit>``, as
``hasupd.host.output`` connects it), run with ``run_command`` so the loop never blocks. Output that goes to
``STATE_DIR/logs/<unit>.log`` carries no per-line times (hasupd splices the bytes without looking at
them), so times are estimated from *marks*: the file's size when each start and exit of the service
was recorded. A line gets the time of the first mark that found it in the file; bytes that arrive
between an exit and the next start were written before the exit (nothing of the service runs in
between); lines after the last mark get the file's modification time. Marks are kept in memory, so
lines written before hasupd started are all placed at that modification time.

When an incident opens, ``IncidentOutputCapture`` waits a moment (journald and the file drain need it
to take in the last bytes), reads the last lines the service wrote *before* the failure (bounded by its
next start, if one came first) and publishes them as an ``incident.output`` record.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, BinaryIO, Protocol

from hasupd import events as ev
from hasupd.host.reaper import Reaper
from hasupd.runtimes.command import run_command
from hasupd.service import Service
from hasupd.states import OutputMode

TAIL_LINES = 20
CAPTURE_DELAY_SEC = 0.3  # journald and the drain take in the last bytes meanwhile
JOURNALCTL_TIMEOUT_SEC = 30.0
FOLLOW_POLL_SEC = 0.5  # file mode only, and only while someone follows
_MARKS_KEPT = 512
_TAIL_READ_BYTES = 256 * 1024
_MAX_LINE = 8192  # longer lines are cut in what hasupd shows (the file keeps them whole)
_SCAN_BLOCK = 1024 * 1024  # looking back for where a line cut by the read window began

# A line of output: (wall-clock time, the JSON object shown for it)
Line = tuple[float, dict[str, Any]]


class JournalctlError(Exception):
    """journalctl could not run or exited non-zero (its exit-code table: 0 ok, anything else failed)."""


def iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="microseconds")


def journal_value(value: Any) -> str:
    """Return a field of ``journalctl -o json`` as text (it gives bytes as a list of numbers and repeated
    fields as a list of values)."""
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        if all(isinstance(v, int) for v in value):
            return bytes(value).decode("utf-8", "replace")
        return journal_value(value[-1]) if value else ""
    return "" if value is None else str(value)


async def journalctl(
    args: list[str],
    reaper: Reaper | None,
    on_entry: Callable[[dict[str, Any]], None],
    *,
    through: Sequence[str] = (),
) -> None:
    """Run ``journalctl -o json`` with ``args``, calling ``on_entry`` per entry as it arrives.

    ``through``: a command line that runs journalctl's (appended after it) and writes JSON lines (the
    error groups' ``hasupd.observe.journal_filter``).

    Raise JournalctlError if it cannot run or fails. Runs until journalctl ends (with ``-f``: until
    cancelled, which stops journalctl too).
    """

    def line(raw: bytes) -> None:
        if raw.strip():
            try:
                entry = json.loads(raw)
            except json.JSONDecodeError:
                return  # journalctl wrote a note, not an entry
            if isinstance(entry, dict):
                on_entry(entry)

    # Not --quiet: its warning is how a reader without the rights to the journal learns that it saw
    # only part of it (it still exits 0).
    argv = [*through, "journalctl", "--no-pager", "--output=json", "--all", *args]
    follow = "--follow" in args
    try:
        result = await run_command(
            argv,
            reaper=reaper,
            timeout=None if follow else JOURNALCTL_TIMEOUT_SEC,
            max_output=64 * 1024,  # entries are parsed as they come; this keeps stderr for errors
            on_stdout_line=line,
            parent_death_signal=signal.SIGTERM if through else None,
        )
    except OSError as e:
        raise JournalctlError(f"cannot run journalctl: {e.strerror or e}") from e
    if not result.ok:
        raise JournalctlError(f"journalctl {result.describe()}: {result.tail(500)}")
    if b"insufficient permissions" in result.stderr or b"not seeing messages" in result.stderr:
        raise JournalctlError(
            f"not allowed to read the whole journal (run hasupd as root or in group systemd-journal): "
            f"{result.stderr.decode('utf-8', 'replace').strip()[:500]}"
        )


class Services(Protocol):
    """Where the services are (the Manager)."""

    @property
    def services(self) -> dict[str, Service]: ...


@dataclass(frozen=True)
class Mark:
    """What was known about a service's log file when one of its records was written."""

    time: float
    exit: bool  # an exit (else a start)
    inode: int
    size: int


class ServiceOutput:
    """Reads services' own output back, from the journal or from their log files (``log_dir``)."""

    def __init__(self, bus: ev.EventBus, log_dir: Path, reaper: Reaper | None, source: Services) -> None:
        self.log_dir = log_dir
        self._reaper = reaper
        self._source = source
        self._marks: dict[str, list[Mark]] = {}  # the last _MARKS_KEPT, oldest first
        bus.subscribe(self._on_event)

    def mode(self, name: str) -> OutputMode | None:
        """Return where ``name``'s output goes; None if there is no such service."""
        service = self._source.services.get(name)
        return service.output if service is not None else None

    def _on_event(self, event: ev.Event) -> None:
        # Per start and exit: one stat of the service's log file.
        if not isinstance(event, ev.ServiceStarted | ev.ServiceExited) or event.service is None:
            return
        inode, size = -1, -1
        if self.mode(event.service) is OutputMode.FILE:
            try:
                st = os.stat(self.log_dir / f"{event.service}.log")
            except OSError:
                pass  # not written yet
            else:
                inode, size = st.st_ino, st.st_size
        # A list per service, not a deque(maxlen): most services start a few times, and an empty deque
        # costs ~600 bytes.
        marks = self._marks.setdefault(event.service, [])
        # At the precision records are written with, so that a line and the record of the same moment tie.
        when = datetime.fromtimestamp(event.time, UTC).timestamp()
        marks.append(Mark(when, isinstance(event, ev.ServiceExited), inode, size))
        if len(marks) > _MARKS_KEPT:
            del marks[0]

    def next_start(self, name: str, after: float) -> Mark | None:
        """Return the first start of ``name`` recorded after ``after``, or None."""
        return next((m for m in self._marks.get(name, ()) if not m.exit and m.time > after), None)

    # ------------------------------------------------------------------ reading

    async def tail(
        self, name: str, lines: int, *, until: float | None = None, size_limit: int = -1
    ) -> list[Line]:
        """Return the last ``lines`` lines of ``name``'s output, oldest first.

        ``until`` (journal) or ``size_limit`` (file) leave out what came later. Raise JournalctlError if
        the journal cannot be read, OSError if the log file cannot.
        """
        match self.mode(name):
            case OutputMode.JOURNAL:
                # Newest first: journalctl 252 prints nothing for --lines with --until unless reversed.
                args = ["--reverse", f"--lines={lines}", f"SYSLOG_IDENTIFIER={name}"]
                if until is not None:
                    args.insert(0, f"--until=@{until:.6f}")
                found: list[Line] = []
                await journalctl(args, self._reaper, lambda e: self._journal_line(name, e, found.append))
                found.reverse()
                return [x for x in found if until is None or x[0] <= until][-lines:]
            case OutputMode.FILE:
                return await asyncio.to_thread(self._file_tail, name, lines, size_limit)
            case _:
                return []

    def _journal_line(self, name: str, entry: dict[str, Any], add: Callable[[Line], None]) -> None:
        if "HASUPD_EVENT" in entry:
            return  # one of hasupd's own records (a service called "hasupd")
        ts = int(journal_value(entry.get("__REALTIME_TIMESTAMP")) or 0) / 1e6
        item: dict[str, Any] = {
            "time": iso(ts),
            "service": name,
            "output": shown_line(journal_value(entry.get("MESSAGE")).encode("utf-8", "replace")),
        }
        if journal_value(entry.get("PRIORITY")) == "3":
            item["stream"] = "stderr"
        add((ts, item))

    def _file_tail(self, name: str, lines: int, size_limit: int) -> list[Line]:
        path = self.log_dir / f"{name}.log"
        out: list[Line] = []
        # The current file, then the one rotated before it, until enough lines are found.
        for candidate in (path, path.with_name(path.name + ".1")):
            try:
                with open(candidate, "rb") as f:
                    st = os.fstat(f.fileno())
                    end = st.st_size if size_limit < 0 or candidate != path else min(size_limit, st.st_size)
                    start = max(0, end - _TAIL_READ_BYTES)
                    f.seek(start)
                    data = f.read(end - start)
                    before = _line_start_distance(f, start)
            except FileNotFoundError:
                continue
            # A line longer than the rotation size began in the files rotated before this one.
            carried = _carried_over(path) if candidate == path and before == start else 0
            chunk = self._timed_lines(
                name, data, start, st.st_ino, st.st_mtime, first_before=before + carried
            )
            out = chunk + out
            if len(out) >= lines or start > 0 or carried:
                break
        return out[-lines:] if lines > 0 else []

    def _timed_lines(
        self, name: str, data: bytes, offset: int, inode: int, mtime: float, *, first_before: int
    ) -> list[Line]:
        """Return the lines of ``data`` (read at ``offset``), each cut to its last ``_MAX_LINE`` bytes;
        the first line began ``first_before`` bytes before the read window (cut too, and said so)."""
        marks = [m for m in self._marks.get(name, ()) if m.inode == inode]
        out: list[Line] = []
        pos = offset
        raw_lines = data.split(b"\n")
        if raw_lines and raw_lines[-1] == b"":
            raw_lines.pop()
        for i, raw in enumerate(raw_lines):
            pos += len(raw) + 1
            ts = self._time_of(marks, pos, mtime)
            text = shown_line(raw, first_before if i == 0 else 0)
            out.append((ts, {"time": iso(ts), "service": name, "output": text, "estimated_time": True}))
        return out

    @staticmethod
    def _time_of(marks: list[Mark], end: int, mtime: float) -> float:
        previous: Mark | None = None
        for mark in marks:
            if mark.size >= end:
                if previous is not None and previous.exit and not mark.exit:
                    return (
                        previous.time
                    )  # arrived between an exit and the next start: written before the exit
                return mark.time
            previous = mark
        if previous is not None and previous.exit:
            return previous.time
        return mtime

    async def follow(self, name: str, put: Callable[[Line], None]) -> None:
        """Call ``put`` for every new line of ``name``'s output, until cancelled.

        Raise JournalctlError if the journal cannot be followed.
        """
        match self.mode(name):
            case OutputMode.JOURNAL:
                args = ["--follow", "--lines=0", f"SYSLOG_IDENTIFIER={name}"]
                await journalctl(args, self._reaper, lambda e: self._journal_line(name, e, put))
            case OutputMode.FILE:
                await self._follow_file(name, put)
            case _:
                await asyncio.Event().wait()  # nothing to follow; records still come

    async def _follow_file(self, name: str, put: Callable[[Line], None]) -> None:
        path = self.log_dir / f"{name}.log"
        inode, pos = -1, 0
        try:
            st = os.stat(path)
            inode, pos = st.st_ino, st.st_size
        except FileNotFoundError:
            pass
        partial = b""
        while True:
            await asyncio.sleep(FOLLOW_POLL_SEC)
            try:
                st = os.stat(path)
            except FileNotFoundError:
                continue
            if st.st_ino != inode:  # rotated (or created): the new file from its start
                inode, pos, partial = st.st_ino, 0, b""
            if st.st_size <= pos:
                continue
            data = await asyncio.to_thread(_read_range, path, pos, st.st_size)
            pos += len(data)
            *complete, partial = (partial + data).split(b"\n")
            now = datetime.now(UTC).timestamp()
            for raw in complete:
                put((now, {"time": iso(now), "service": name, "output": raw.decode("utf-8", "replace")}))


def shown_line(raw: bytes, before: int = 0) -> str:
    """Return a line of output as hasupd shows it: its last ``_MAX_LINE`` bytes, after
    ``"[cut: N bytes] "`` when N bytes of it (``before`` of them not even read) are left out. The end
    is kept: that is where a program says what went wrong."""
    cut = before + max(0, len(raw) - _MAX_LINE)
    text = raw[-_MAX_LINE:].decode("utf-8", "replace")
    return f"[cut: {cut} bytes] {text}" if cut else text


def _line_start_distance(f: BinaryIO, offset: int) -> int:
    """Return how many bytes before ``offset`` the line holding ``offset`` began (0: at ``offset``).

    Reads backwards in blocks: linear in the length of that line, which the log rotation bounds.
    """
    pos = offset
    while pos > 0:
        n = min(_SCAN_BLOCK, pos)
        f.seek(pos - n)
        newline = f.read(n).rfind(b"\n")
        if newline >= 0:
            return offset - (pos - n + newline + 1)
        pos -= n
    return offset


def _carried_over(path: Path) -> int:
    """Return how many bytes of the first line of the log file ``path`` are in its rotated files
    (``.1``, ``.2`` ...): the rotation cuts by size, not at line ends."""
    total = 0
    older = 1
    while True:
        try:
            with open(path.with_name(f"{path.name}.{older}"), "rb") as f:
                size = os.fstat(f.fileno()).st_size
                part = _line_start_distance(f, size)
        except FileNotFoundError:
            return total
        total += part
        if part < size:  # the line began in this file
            return total
        older += 1


def _read_range(path: Path, start: int, end: int) -> bytes:
    with open(path, "rb") as f:
        f.seek(start)
        return f.read(end - start)


class IncidentOutputCapture:
    """On ``incident.opened``, publishes ``incident.output``: the service's last lines before the failure.

    ``run()`` does the reading (in its own TaskGroup); it runs until cancelled.
    """

    def __init__(self, bus: ev.EventBus, output: ServiceOutput, lines: int = TAIL_LINES) -> None:
        self._bus = bus
        self._output = output
        self._lines = lines
        self._queue: asyncio.Queue[ev.IncidentOpened] = asyncio.Queue()
        bus.subscribe(self._on_event)

    def _on_event(self, event: ev.Event) -> None:
        if isinstance(event, ev.IncidentOpened) and event.service is not None and event.incident is not None:
            mode = self._output.mode(event.service)
            if mode in (OutputMode.JOURNAL, OutputMode.FILE):
                self._queue.put_nowait(event)

    async def run(self) -> None:
        """Capture each incident's output as it opens; return only when cancelled."""
        async with asyncio.TaskGroup() as tasks:
            while True:
                opened = await self._queue.get()
                tasks.create_task(self._capture(opened))

    async def _capture(self, opened: ev.IncidentOpened) -> None:
        assert opened.service is not None
        await asyncio.sleep(CAPTURE_DELAY_SEC)
        name = opened.service
        mode = self._output.mode(name)
        after = self._output.next_start(name, opened.time)
        error = None
        found: list[Line] = []
        try:
            if mode is OutputMode.JOURNAL:
                until = after.time if after is not None else None
                found = await self._output.tail(name, self._lines, until=until)
            else:
                found = await self._output.tail(
                    name, self._lines, size_limit=after.size if after is not None else -1
                )
        except (JournalctlError, OSError) as e:
            error = str(e)
        source = "journal" if mode is OutputMode.JOURNAL else str(self._output.log_dir / f"{name}.log")
        self._bus.publish(
            ev.IncidentOutput(
                service=name,
                incident=opened.incident,
                lines=tuple(item["output"] for _, item in found),
                source=source,
                error=error,
            )
        )
