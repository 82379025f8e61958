"""The alert spool: every message is a file under ``STATE_DIR/alerts/`` until a mail server accepted it.

A message is written to a temporary file, fsynced, renamed to ``<id>.json`` and the directory fsynced
*before* anyone tries to deliver it; it is unlinked (and the directory fsynced) only after the server
answered 250 to its DATA. So a message survives a crash or a restart of hasupd at any moment after
it was spooled, and is sent again on the next start. The remaining window is SMTP's own: a crash
between the server's 250 and the unlink sends it twice (with the same Message-ID, so the receiving
side can tell).

The spool is bounded (messages and bytes). When a new message does not fit, the oldest ones that are
not being delivered right now are dropped, and their number is kept per channel in ``dropped.json``,
so that the next message that gets through on that channel says "N older alerts were dropped".

File operations block (fsync); the ``async`` methods run them in a worker thread. The in-memory index
is changed only on the event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

MAX_MESSAGES = 1000
MAX_BYTES = 32 * 1024 * 1024
DROPPED_FILE = "dropped.json"
_SUFFIX = ".json"


@dataclass(eq=False)  # identity: two messages are never "equal"
class SpoolEntry:
    """One message waiting for delivery. The first block is stored; the rest lives in memory only."""

    id: str  # file stem; ids sort in the order the messages were made
    channel: str
    created: float  # wall clock
    message_id: str  # "<...@host>", the same on every attempt
    kind: str
    subject: str
    body: str
    sender: str
    recipients: tuple[str, ...]  # the envelope: those still owed a copy
    to: tuple[str, ...] = ()  # the To: header (the channel's list when it was made); () = recipients
    service: str | None = None
    incident: str | None = None
    in_reply_to: str | None = None
    level: str = "error"  # the alert's level (a key of ALERT_LEVELS): chat and pager severities
    resolves: bool = False  # it says the incident is resolved (a pager closes the incident)
    # in memory only
    size: int = field(default=0, compare=False)
    attempts: int = field(default=0, compare=False)
    next_try: float = field(default=0.0, compare=False)  # loop time: this message's own backoff
    in_flight: bool = field(default=False, compare=False)
    waiter: asyncio.Future[tuple[bool, str]] | None = field(default=None, compare=False, repr=False)

    _STORED = (
        "id", "channel", "created", "message_id", "kind", "subject", "body", "sender", "recipients", "to",
        "service", "incident", "in_reply_to",
    )  # fmt: skip
    _OPTIONAL = ("level", "resolves")  # stored since channels beyond email; older spool files lack it

    def encode(self) -> bytes:
        """Return the stored form (JSON)."""
        data = {k: getattr(self, k) for k in (*self._STORED, *self._OPTIONAL)}
        return json.dumps(data, ensure_ascii=False, indent=1).encode()

    @classmethod
    def decode(cls, raw: bytes) -> SpoolEntry:
        """Return the entry stored as ``raw``. Raise ValueError if it is not a spool entry."""
        try:
            data: Any = json.loads(raw)
        except (ValueError, RecursionError) as e:  # UnicodeDecodeError too; RecursionError: too deep
            raise ValueError(f"not JSON: {str(e)[:200]}") from None
        if not isinstance(data, dict) or not all(k in data for k in cls._STORED):
            raise ValueError("not a spooled alert (fields missing)")
        wrong = [k for k in (*cls._STORED, *cls._OPTIONAL) if k in data and not _TYPES[k](data[k])]
        if wrong:
            # A wrong type would fail later, at sorting or sending, for every message of the spool.
            raise ValueError(f"not a spooled alert (wrong type: {', '.join(wrong)})")
        entry = cls(**{k: data[k] for k in (*cls._STORED, *cls._OPTIONAL) if k in data})
        entry.recipients = tuple(data["recipients"])
        entry.to = tuple(data["to"])
        entry.size = len(raw)
        return entry


def _text(value: object) -> bool:
    return isinstance(value, str)


def _texts(value: object) -> bool:
    return isinstance(value, list) and all(isinstance(v, str) for v in value)


def _optional_text(value: object) -> bool:
    return value is None or isinstance(value, str)


def _time(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _stem(value: object) -> bool:
    """An id is the file's stem: one plain name (never a path)."""
    return isinstance(value, str) and bool(value) and "/" not in value and value not in (".", "..")


_TYPES: dict[str, Callable[[object], bool]] = {
    "id": _stem,
    "created": _time,
    "recipients": _texts,
    "to": _texts,
    "service": _optional_text,
    "incident": _optional_text,
    "in_reply_to": _optional_text,
    "resolves": lambda v: isinstance(v, bool),
    **dict.fromkeys(("channel", "message_id", "kind", "subject", "body", "sender", "level"), _text),
}


def _read_entry(path: Path) -> SpoolEntry:
    """Return the entry spooled in ``path``. Raise OSError or ValueError if it is not one."""
    entry = SpoolEntry.decode(path.read_bytes())
    if entry.id != path.name.removesuffix(_SUFFIX):
        # Delivered, it would be unlinked under its id: this file would be sent at every start.
        raise ValueError(f"not a spooled alert (its id {entry.id[:80]!r} is not its file name)")
    return entry


def _dropped(raw: bytes) -> dict[str, int]:
    """Return the per-channel dropped counts ``dropped.json`` holds. Raise ValueError if it is not an
    object of counts."""
    try:
        data: Any = json.loads(raw)
    except (ValueError, RecursionError) as e:
        raise ValueError(f"not JSON: {str(e)[:200]}") from None
    if not isinstance(data, dict) or not all(
        isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in data.values()
    ):
        raise ValueError("not an object of dropped counts per channel")
    return {str(k): v for k, v in data.items() if v > 0}


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_durably(path: Path, data: bytes) -> None:
    """Replace ``path`` with ``data``: temp file, fsync, rename, fsync of the directory."""
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    _fsync_dir(path.parent)


class Spool:
    """The spooled messages of every channel, oldest first, and the per-channel dropped counts."""

    def __init__(self, folder: Path, max_messages: int = MAX_MESSAGES, max_bytes: int = MAX_BYTES) -> None:
        self.folder = folder
        self.max_messages = max_messages
        self.max_bytes = max_bytes
        self.entries: list[SpoolEntry] = []
        self.dropped: dict[str, int] = {}  # channel -> messages dropped and not yet reported
        self._bytes = 0

    def __len__(self) -> int:
        return len(self.entries)

    def of_channel(self, channel: str) -> list[SpoolEntry]:
        """Return the channel's messages, oldest first."""
        return [e for e in self.entries if e.channel == channel]

    # ------------------------------------------------------------------ loading

    def _load(self) -> tuple[list[SpoolEntry], dict[str, int], list[tuple[str, str]]]:
        self.folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        entries: list[SpoolEntry] = []
        bad: list[tuple[str, str]] = []
        for path in sorted(self.folder.iterdir()):
            if path.name.endswith(".tmp"):
                path.unlink(missing_ok=True)  # never renamed into place: never spooled
                continue
            if not path.name.endswith(_SUFFIX) or path.name == DROPPED_FILE:
                continue
            try:
                entries.append(_read_entry(path))
            except (OSError, ValueError) as e:
                bad.append((path.name, str(e)))
                with contextlib.suppress(OSError):
                    path.rename(path.with_name(path.name + ".bad"))
        dropped: dict[str, int] = {}
        try:
            dropped = _dropped((self.folder / DROPPED_FILE).read_bytes())
        except FileNotFoundError:
            pass
        except (OSError, ValueError) as e:
            # The counts are lost (the next alerts do not say how many were dropped before): said here.
            bad.append((DROPPED_FILE, str(e)))
            with contextlib.suppress(OSError):
                (self.folder / DROPPED_FILE).rename(self.folder / (DROPPED_FILE + ".bad"))
        return entries, dropped, bad

    async def open(self) -> list[tuple[str, str]]:
        """Create the folder (0700) and load what is spooled; return (file, problem) of unreadable files
        (renamed to ``*.bad``). Raise OSError if the folder cannot be created or listed."""
        entries, dropped, bad = await asyncio.to_thread(self._load)
        self.entries = sorted(entries, key=lambda e: e.id)
        self.dropped = dropped
        self._bytes = sum(e.size for e in self.entries)
        return bad

    # ------------------------------------------------------------------ changes

    async def add(self, entry: SpoolEntry) -> list[SpoolEntry]:
        """Store ``entry`` durably, then drop the oldest messages (not in flight) while over the bounds;
        return the dropped ones. Raise OSError if it cannot be written (it is then not in the spool)."""
        data = entry.encode()
        entry.size = len(data)
        await asyncio.to_thread(_write_durably, self._path(entry), data)
        self.entries.append(entry)
        self.entries.sort(key=lambda e: e.id)
        self._bytes += entry.size
        victims: list[SpoolEntry] = []
        for old in list(self.entries):
            if len(self.entries) <= self.max_messages and self._bytes <= self.max_bytes:
                break
            if old.in_flight or old is entry:
                continue
            self._forget(old)
            victims.append(old)
            self.dropped[old.channel] = self.dropped.get(old.channel, 0) + 1
        if victims:
            await asyncio.to_thread(self._unlink_many, [self._path(v) for v in victims], self._dropped_copy())
        return victims

    async def remove(self, entry: SpoolEntry) -> None:
        """Delete ``entry`` (delivered, or dropped) from the index and the disk. Raise OSError."""
        if entry in self.entries:
            self._forget(entry)
        await asyncio.to_thread(self._unlink_many, [self._path(entry)], None)

    async def rewrite(self, entry: SpoolEntry) -> None:
        """Store ``entry`` again after a change (fewer recipients left). Raise OSError."""
        data = entry.encode()
        await asyncio.to_thread(_write_durably, self._path(entry), data)
        self._bytes += len(data) - entry.size
        entry.size = len(data)

    async def reported(self, channel: str, count: int) -> None:
        """``count`` drops of ``channel`` were announced in a delivered message. Raise OSError."""
        left = self.dropped.get(channel, 0) - count
        if left > 0:
            self.dropped[channel] = left
        else:
            self.dropped.pop(channel, None)
        await asyncio.to_thread(self._unlink_many, [], self._dropped_copy())

    # ------------------------------------------------------------------ helpers

    def _path(self, entry: SpoolEntry) -> Path:
        return self.folder / f"{entry.id}{_SUFFIX}"

    def _forget(self, entry: SpoolEntry) -> None:
        self.entries.remove(entry)
        self._bytes -= entry.size

    def _dropped_copy(self) -> dict[str, int]:
        return dict(self.dropped)

    def _unlink_many(self, paths: list[Path], dropped: dict[str, int] | None) -> None:
        if dropped is not None:
            _write_durably(self.folder / DROPPED_FILE, json.dumps(dropped).encode())
        for path in paths:
            path.unlink(missing_ok=True)
        if paths:
            _fsync_dir(self.folder)
