"""The error groups on disk: ``STATE_DIR/errors.sqlite`` (Python's sqlite3, WAL).

Tables: ``groups`` (one row per group: service, kind, pattern, count, first and last seen, first
sample), ``hourly`` (counts per hour per key: a group id, or ``restart:SERVICE``; the history the rules'
baselines are computed from, and what ``--since`` counts), ``samples`` (the last ``SAMPLES_KEPT``
occurrences of each group), ``incidents`` (which incidents a group appeared in) and ``offsets`` (how far
each log file, and the journal, has been read, so a restarted hasupd neither counts twice nor skips).

Every method blocks: ``ErrorStore`` is used from one worker thread at a time (``hasupd.observe.
error_groups`` runs it on a single-thread executor), except ``hourly`` which the rules may read from the
loop through their own connection (``open_reader``): one indexed query of a few rows, and WAL readers
never wait for the writer. Times are wall-clock seconds. Old data goes after ``retention_sec``.
"""

from __future__ import annotations

import logging
import sqlite3
import time
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hasupd.observe.error_lines import ErrorEvent
from hasupd.observe.fingerprint import fingerprint

FILE_NAME = "errors.sqlite"
RETENTION_SEC = 90 * 86400
SAMPLES_KEPT = 5
HOUR = 3600
RESTART_KEY = "restart:"
MAX_CURSOR = 4096  # a journal cursor is ~100 characters; a longer one is damaged
log = logging.getLogger(__name__)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS groups (
    id TEXT PRIMARY KEY, service TEXT NOT NULL, kind TEXT NOT NULL, pattern TEXT NOT NULL,
    count INTEGER NOT NULL, first_seen REAL NOT NULL, last_seen REAL NOT NULL, sample TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS groups_last ON groups (last_seen);
CREATE TABLE IF NOT EXISTS hourly (
    key TEXT NOT NULL, hour INTEGER NOT NULL, count INTEGER NOT NULL, PRIMARY KEY (key, hour)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS samples (grp TEXT NOT NULL, time REAL NOT NULL, text TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS samples_grp ON samples (grp, time);
CREATE TABLE IF NOT EXISTS incidents (
    grp TEXT NOT NULL, incident TEXT NOT NULL, time REAL NOT NULL, PRIMARY KEY (grp, incident)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS offsets (unit TEXT PRIMARY KEY, inode INTEGER NOT NULL, pos INTEGER NOT NULL,
    cursor TEXT);
"""


@dataclass(frozen=True)
class Seen:
    """What one batch added to one group."""

    group: str
    service: str
    kind: str
    pattern: str
    count: int
    new: bool
    sample: str


def _connect(path: Path, *, readonly: bool = False) -> sqlite3.Connection:
    if readonly:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, check_same_thread=False, timeout=0.2)
    else:
        conn = sqlite3.connect(path, check_same_thread=False, timeout=10.0)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")  # WAL: a power cut may lose the last batch, no more
        conn.executescript(_SCHEMA)
    return conn


def hourly_counts(conn: sqlite3.Connection, key: str, first_hour: int, last_hour: int) -> dict[int, int]:
    """Return ``{hour: count}`` of ``key`` for the hours ``first_hour`` .. ``last_hour`` (hours since the
    epoch); hours without a row are left out (they count 0)."""
    rows = conn.execute(
        "SELECT hour, count FROM hourly WHERE key = ? AND hour BETWEEN ? AND ?", (key, first_hour, last_hour)
    )
    return {int(hour): int(count) for hour, count in rows}


class ErrorStore:
    """The tables above, read and written through one connection (see the module docstring)."""

    def __init__(self, folder: Path, retention_sec: float = RETENTION_SEC) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self.path = folder / FILE_NAME
        self.retention_sec = retention_sec
        self.set_aside: Path | None = None  # where a broken database was moved to, if one was
        try:
            self._conn = _connect(self.path)
        except sqlite3.DatabaseError:
            # Not a database (a crash mid-write on a broken disk, a stray file): kept for a look, and
            # a new one started; error groups never keep hasupd from supervising.
            self.set_aside = self.path.with_name(f"{FILE_NAME}.broken-{int(time.time())}")
            self.path.rename(self.set_aside)
            for suffix in ("-wal", "-shm"):
                self.path.with_name(FILE_NAME + suffix).unlink(missing_ok=True)
            self._conn = _connect(self.path)

    def open_reader(self) -> sqlite3.Connection:
        """Return a second, read-only connection (for ``hourly_counts`` from another thread)."""
        return _connect(self.path, readonly=True)

    def close(self) -> None:
        self._conn.close()

    # ------------------------------------------------------------------ writing

    def record(self, service: str, events: Iterable[ErrorEvent], incident: str | None) -> list[Seen]:
        """Group and count ``events`` of ``service`` (one transaction); link each group to ``incident``
        (the service's open incident, if any). Return what each group got, in first-occurrence order."""
        batch: dict[str, list[Any]] = {}  # id -> [fingerprint, count, first, last, samples, hours]
        for event in events:
            fp = fingerprint(event.kind, event.text)
            gid = fp.group_id(service)
            entry = batch.get(gid)
            if entry is None:
                samples = deque([(event.time, event.text)], maxlen=SAMPLES_KEPT)
                batch[gid] = [fp, 1, event.time, event.time, samples, {int(event.time // HOUR): 1}]
            else:
                entry[1] += 1
                entry[3] = max(entry[3], event.time)
                entry[4].append((event.time, event.text))
                hour = int(event.time // HOUR)
                entry[5][hour] = entry[5].get(hour, 0) + 1
        seen: list[Seen] = []
        with self._conn:
            for gid, (fp, count, first, last, samples, hours) in batch.items():
                text = samples[-1][1]
                updated = self._conn.execute(
                    "UPDATE groups SET count = count + ?, last_seen = max(last_seen, ?) WHERE id = ?",
                    (count, last, gid),
                ).rowcount
                if not updated:
                    self._conn.execute(
                        "INSERT INTO groups VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                        (gid, service, fp.kind, fp.pattern, count, first, last, samples[0][1]),
                    )
                self._conn.executemany(
                    "INSERT INTO hourly VALUES (?, ?, ?) "
                    "ON CONFLICT (key, hour) DO UPDATE SET count = count + excluded.count",
                    [(gid, hour, n) for hour, n in hours.items()],
                )
                self._conn.executemany(
                    "INSERT INTO samples VALUES (?, ?, ?)", [(gid, t, sample) for t, sample in samples]
                )
                self._conn.execute(
                    "DELETE FROM samples WHERE grp = ? AND rowid NOT IN "
                    "(SELECT rowid FROM samples WHERE grp = ? ORDER BY time DESC, rowid DESC LIMIT ?)",
                    (gid, gid, SAMPLES_KEPT),
                )
                if incident is not None:
                    self._link(gid, incident, first)
                seen.append(Seen(gid, service, fp.kind, fp.pattern, count, not updated, text))
        return seen

    def count(self, key: str, when: float, n: int = 1) -> None:
        """Add ``n`` to ``key``'s count of the hour of ``when`` (restarts: ``RESTART_KEY + service``)."""
        with self._conn:
            self._conn.execute(
                "INSERT INTO hourly VALUES (?, ?, ?) "
                "ON CONFLICT (key, hour) DO UPDATE SET count = count + excluded.count",
                (key, int(when // HOUR), n),
            )

    def link(self, group: str, incident: str, when: float) -> None:
        """Remember that ``group`` appeared in ``incident``."""
        with self._conn:
            self._link(group, incident, when)

    def _link(self, group: str, incident: str, when: float) -> None:
        self._conn.execute("INSERT OR IGNORE INTO incidents VALUES (?, ?, ?)", (group, incident, when))

    def prune(self, now: float) -> int:
        """Delete what is older than the retention; return how many groups went."""
        cut = now - self.retention_sec
        with self._conn:
            gone = self._conn.execute("DELETE FROM groups WHERE last_seen < ?", (cut,)).rowcount
            self._conn.execute("DELETE FROM hourly WHERE hour < ?", (int(cut // HOUR),))
            self._conn.execute("DELETE FROM samples WHERE time < ?", (cut,))
            self._conn.execute("DELETE FROM incidents WHERE time < ?", (cut,))
        return int(gone)

    def offset(self, unit: str) -> tuple[int, int, str | None] | None:
        """Return (inode, position, journal cursor) saved for ``unit``, or None if none is.

        A damaged one (a negative or non-integer position or inode, a cursor that is not text) is
        recorded as a warning and repaired to a safe start: position 0 of the file (an unknown inode:
        -1, the current file), no cursor (the journal from when hasupd started). Counted twice rather
        than lost.
        """
        row = self._conn.execute("SELECT inode, pos, cursor FROM offsets WHERE unit = ?", (unit,)).fetchone()
        if row is None:
            return None
        inode, pos, cursor = row
        # sqlite3 returns int, float, str, bytes or None (never bool): exact types, no conversion.
        good_inode = type(inode) is int
        good_pos = type(pos) is int and pos >= 0
        good_cursor = cursor is None or (isinstance(cursor, str) and 0 < len(cursor) <= MAX_CURSOR)
        if good_inode and good_pos and good_cursor:
            return inode, pos, cursor
        repaired = (
            inode if good_inode else -1,
            pos if good_pos and good_inode else 0,
            cursor if good_cursor else None,
        )
        self._forget(unit, f"inode {inode!r:.40}, position {pos!r:.40}, cursor {cursor!r:.80}", repaired)
        return repaired

    def forget_cursor(self, key: str, why: str) -> None:
        """Forget the journal cursor saved under ``key`` (``why``: journalctl rejected it), recorded as
        a warning."""
        self._forget(key, why, None)

    def _forget(self, unit: str, why: str, repaired: tuple[int, int, str | None] | None) -> None:
        log.warning(
            "%s: the saved read position of %s is damaged (%s); read again from a safe start",
            self.path,
            unit,
            why,
        )
        with self._conn:
            self._conn.execute("DELETE FROM offsets WHERE unit = ?", (unit,))
            if repaired is not None:
                self._conn.execute("INSERT INTO offsets VALUES (?, ?, ?, ?)", (unit, *repaired))

    def save_offset(self, unit: str, inode: int, pos: int, cursor: str | None = None) -> None:
        with self._conn:
            self._conn.execute(
                "INSERT OR REPLACE INTO offsets VALUES (?, ?, ?, ?)", (unit, inode, pos, cursor)
            )

    # ------------------------------------------------------------------ reading

    def groups(
        self, since: float | None, service: str | None, group: str | None = None
    ) -> list[dict[str, Any]]:
        """Return the groups seen since ``since`` (all: None), of ``service`` (all: None), each with its
        count in that time (counted by the hour: the hour ``since`` falls in counts whole), unranked;
        only the group ``group`` if given."""
        where: list[str] = ["1 = 1"]
        args: list[Any] = []
        if group is not None:
            where.append("g.id = ?")
            args.append(group)
        if since is not None:
            where.append("g.last_seen >= ?")
            args.append(since)
        if service is not None:
            where.append("g.service = ?")
            args.append(service)
        hour = int(since // HOUR) if since is not None else None
        rows = self._conn.execute(
            "SELECT g.id, g.service, g.kind, g.pattern, g.count, g.first_seen, g.last_seen, g.sample, "
            "(SELECT max(i.incident) FROM incidents i WHERE i.grp = g.id AND i.time = "
            " (SELECT max(time) FROM incidents WHERE grp = g.id)), "
            "(SELECT sum(h.count) FROM hourly h WHERE h.key = g.id AND h.hour >= ?) "
            f"FROM groups g WHERE {' AND '.join(where)}",
            [hour if hour is not None else -1, *args],
        ).fetchall()
        out = []
        for gid, svc, kind, pattern, total, first, last, sample, incident, in_window in rows:
            count = int(total) if since is None or first >= since else min(int(in_window or 0), int(total))
            out.append(
                {
                    "group": gid,
                    "source": "output",
                    "service": svc,
                    "kind": kind,
                    "pattern": pattern,
                    "count": count,
                    "total": int(total),
                    "first_seen": float(first),
                    "last_seen": float(last),
                    "sample": sample,
                    "incident": incident,
                }
            )
        return out

    def group(self, gid: str) -> dict[str, Any] | None:
        """Return one group with its samples (newest first) and incidents (oldest first); None if unknown."""
        found = self.groups(None, None, gid)
        if not found:
            return None
        group = found[0]
        group["samples"] = [
            {"time": float(t), "text": text}
            for t, text in self._conn.execute(
                "SELECT time, text FROM samples WHERE grp = ? ORDER BY time DESC, rowid DESC", (gid,)
            )
        ]
        group["incidents"] = [
            {"incident": inc, "time": float(t)}
            for inc, t in self._conn.execute(
                "SELECT incident, time FROM incidents WHERE grp = ? ORDER BY time", (gid,)
            )
        ]
        return group

    def hourly(self, key: str, first_hour: int, last_hour: int) -> dict[int, int]:
        """``hourly_counts`` on this store's connection."""
        return hourly_counts(self._conn, key, first_hour, last_hour)
